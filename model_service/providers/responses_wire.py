"""The OpenAI Responses wire (`POST {base_url}/responses`, streamed).

Spindle's items are shaped after this API, so the mapping is nearly one to
one. What both wires share lives in `wire_common`.

Request choices (README material):
- `instructions` is sent as `instructions`; system, developer and user
  messages become `message` items with `input_text` content.
- An assistant message is replayed in the API's input form for it (the
  "easy input message"): `{"type": "message", "role": "assistant",
  "content": TEXT, "phase": ...}` with string content. Not the output-message
  form (`output_text` parts), whose published type requires an `id`, a
  `status` and `annotations` that Spindle does not keep.
- An assistant message's `phase` (commentary or final_answer) is sent as the
  item's `phase`, a field of OpenAI's Responses API that OpenAI asks callers
  to resend; messages without a phase are sent without one.
- A `Reasoning` item is sent as a `reasoning` item with its summary and
  `encrypted_content`. One without encrypted content is skipped: OpenAI finds
  a reasoning item's content by its id or its encrypted content, Spindle keeps
  no id, so such an item would carry nothing the model reads (and OpenAI
  refuses a reasoning item that has neither).
- An `AgentMessage` becomes a user message whose text starts with
  `[message from agent thread <sender id>]` and a newline.
- Tools are `function` tools with `strict: false`: OpenAI's default is strict
  validation, which refuses most hand-written JSON schemas.

Stream choices: `response.incomplete` is an error, not a completion, so that
a cut-short answer is never recorded as a final answer: RESOURCE_EXHAUSTED
when the output token limit cut it, FAILED_PRECONDITION for any other reason
(content filter). `response.failed` and `error` events raise with the
provider's message and a code derived from the provider's error code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from model_service.providers import wire_common as wire
from model_service.providers.sse import SseEvent
from spindle.errors import ErrorCode, ModelError
from spindle.items import (
    AgentMessage,
    FunctionCall,
    FunctionCallOutput,
    Item,
    Message,
    Phase,
    Reasoning,
    Role,
)
from spindle.model import Completed, ItemDone, ModelEvent, ModelRequest, TextDelta, Tool, Usage

_PHASES = {phase.value: phase for phase in Phase}


def encode_request(request: ModelRequest) -> wire.JsonObject:
    """The JSON body of a streamed `POST /responses` for `request`."""
    body: wire.JsonObject = {"model": request.model}
    if request.instructions:
        body["instructions"] = request.instructions
    body["input"] = [encoded for item in request.input if (encoded := _encode_item(item))]
    if request.tools:
        body["tools"] = [_encode_tool(tool) for tool in request.tools]
    body["stream"] = True
    body["prompt_cache_key"] = request.prompt_cache_key
    return body


def _message(role: str, text: str) -> wire.JsonObject:
    return {"type": "message", "role": role, "content": [{"type": "input_text", "text": text}]}


def _assistant_message(text: str, phase: Phase | None) -> wire.JsonObject:
    encoded: wire.JsonObject = {"type": "message", "role": "assistant", "content": text}
    if phase is not None:
        encoded["phase"] = phase.value
    return encoded


def _encode_item(item: Item) -> wire.JsonObject | None:
    match item:
        case Message(role=Role.ASSISTANT, text=text, phase=phase):
            return _assistant_message(text, phase)
        case Message(role=role, text=text):
            return _message(role.value, text)
        case Reasoning(summary=summary, encrypted_content=encrypted):
            if not encrypted:
                return None
            parts = [{"type": "summary_text", "text": summary}] if summary else []
            return {"type": "reasoning", "summary": parts, "encrypted_content": encrypted}
        case FunctionCall(call_id=call_id, name=name, arguments=arguments):
            return {
                "type": "function_call",
                "call_id": call_id,
                "name": name,
                "arguments": arguments,
            }
        case FunctionCallOutput(call_id=call_id, output=output):
            return {"type": "function_call_output", "call_id": call_id, "output": output}
        case AgentMessage():
            return _message(Role.USER.value, wire.agent_message_text(item))
    raise ModelError(f"cannot send item {item!r}", code=ErrorCode.INVALID_ARGUMENT)


def _encode_tool(tool: Tool) -> wire.JsonObject:
    encoded: wire.JsonObject = {"type": "function", "name": tool.name}
    if tool.description:
        encoded["description"] = tool.description
    encoded["parameters"] = wire.tool_parameters(tool)
    encoded["strict"] = False
    return encoded


@dataclass(slots=True)
class ResponsesDecoder:
    """Turns Responses stream events into Spindle events, one event at a time."""

    _response_id: str = ""
    _arguments: dict[str, list[str]] = field(default_factory=dict)

    def feed(self, event: SseEvent) -> list[ModelEvent]:
        """The events `event` produces; a `Completed` is always the last one."""
        data = wire.parse_event_data(event.data)
        kind = wire.as_str(data.get("type")) or event.event
        if kind == "response.created":
            self._response_id = wire.as_str(wire.as_object(data.get("response")).get("id"))
        elif kind in ("response.output_text.delta", "response.refusal.delta"):
            delta = wire.as_str(data.get("delta"))
            return [TextDelta(delta)] if delta else []
        elif kind == "response.function_call_arguments.delta":
            key = wire.as_str(data.get("item_id")) or str(data.get("output_index"))
            self._arguments.setdefault(key, []).append(wire.as_str(data.get("delta")))
        elif kind == "response.output_item.done":
            raw = wire.as_object(data.get("item"))
            if raw.get("status") == "incomplete":
                return []  # cut short: `response.incomplete` follows and fails the call
            item = self._item(raw, data.get("output_index"))
            return [ItemDone(item)] if item is not None else []
        elif kind == "response.completed":
            return [self._completed(wire.as_object(data.get("response")))]
        elif kind == "response.failed":
            error = wire.as_object(wire.as_object(data.get("response")).get("error"))
            raise _provider_error(error, "response failed")
        elif kind == "error":
            raise _provider_error(wire.as_object(data.get("error")) or data, "stream error")
        elif kind == "response.incomplete":
            details = wire.as_object(wire.as_object(data.get("response")).get("incomplete_details"))
            raise wire.incomplete_error(wire.as_str(details.get("reason")))
        return []

    def _item(self, item: wire.JsonObject, output_index: object) -> Item | None:
        kind = item.get("type")
        if kind == "message":
            return _output_message(item)
        if kind == "function_call":
            key = wire.as_str(item.get("id")) or str(output_index)
            streamed = "".join(self._arguments.pop(key, []))
            return FunctionCall(
                call_id=wire.as_str(item.get("call_id")),
                name=wire.as_str(item.get("name")),
                arguments=wire.as_str(item.get("arguments")) or streamed,
            )
        if kind == "reasoning":
            summary = item.get("summary")
            texts = [wire.as_str(wire.as_object(part).get("text")) for part in summary or []]
            return Reasoning(
                summary="\n\n".join(text for text in texts if text),
                encrypted_content=wire.as_str(item.get("encrypted_content")),
            )
        return None  # hosted tools and other item types have no Spindle form

    def _completed(self, response: wire.JsonObject) -> Completed:
        usage = wire.as_object(response.get("usage"))
        details = wire.as_object(usage.get("input_tokens_details"))
        return Completed(
            usage=Usage(
                input_tokens=wire.as_int(usage.get("input_tokens")),
                cached_input_tokens=wire.as_int(details.get("cached_tokens")),
                output_tokens=wire.as_int(usage.get("output_tokens")),
            ),
            response_id=wire.as_str(response.get("id")) or self._response_id,
        )


def _output_message(item: wire.JsonObject) -> Message:
    texts = []
    for part in item.get("content") or []:
        part = wire.as_object(part)
        if part.get("type") == "output_text":
            texts.append(wire.as_str(part.get("text")))
        elif part.get("type") == "refusal":
            texts.append(wire.as_str(part.get("refusal")))
    phase = _PHASES.get(wire.as_str(item.get("phase")), Phase.FINAL_ANSWER)
    return Message(Role.ASSISTANT, "".join(texts), phase)


def _provider_error(error: wire.JsonObject, fallback: str) -> ModelError:
    message = wire.as_str(error.get("message")) or fallback
    return ModelError(message, code=wire.error_code_for(error.get("code")))
