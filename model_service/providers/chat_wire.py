"""The OpenAI Chat Completions wire (`POST {base_url}/chat/completions`, streamed).

For servers that speak only the older API. It cannot carry everything the
Responses wire can, so the mapping makes choices (README material):
- `instructions` become a leading `system` message; `developer` messages are
  sent as `system` messages too, which OpenAI treats alike and other servers
  accept.
- An assistant message and the function calls right after it become one
  assistant message with `tool_calls`, as the model produced them; outputs
  become `tool` messages. `phase` has no place here and is not sent.
- A `Reasoning` item with encrypted content is refused (INVALID_ARGUMENT):
  the content only the original provider can read would be lost silently.
  One without encrypted content is skipped, as on the Responses wire.
- An `AgentMessage` is a user message, worded as on the Responses wire.
- `stream_options.include_usage` asks for the final usage chunk.

Stream choices: text deltas pass through as they come; tool call fragments
are joined by their index; the assistant message (commentary when it also
called tools, else the final answer) and the calls are reported when the
usage chunk after the finish reason arrives, or at `[DONE]` from a server
that sends no usage. A finish reason of `length` or `content_filter` is an
error, as `response.incomplete` is on the Responses wire.
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
    Message,
    Phase,
    Reasoning,
    Role,
)
from spindle.model import Completed, ItemDone, ModelEvent, ModelRequest, TextDelta, Tool, Usage

DONE = "[DONE]"
_INCOMPLETE_REASONS = ("length", "content_filter")


def encode_request(request: ModelRequest) -> wire.JsonObject:
    """The JSON body of a streamed `POST /chat/completions` for `request`."""
    body: wire.JsonObject = {"model": request.model, "messages": _encode_messages(request)}
    if request.tools:
        body["tools"] = [_encode_tool(tool) for tool in request.tools]
    body["stream"] = True
    body["stream_options"] = {"include_usage": True}
    body["prompt_cache_key"] = request.prompt_cache_key
    return body


def _encode_messages(request: ModelRequest) -> list[wire.JsonObject]:
    messages: list[wire.JsonObject] = []
    if request.instructions:
        messages.append({"role": "system", "content": request.instructions})
    # The assistant message that function calls right after it are attached to.
    assistant: wire.JsonObject | None = None
    for item in request.input:
        match item:
            case Message(role=Role.ASSISTANT, text=text):
                assistant = {"role": "assistant", "content": text}
                messages.append(assistant)
            case Message(role=role, text=text):
                chat_role = "system" if role is Role.DEVELOPER else role.value
                messages.append({"role": chat_role, "content": text})
                assistant = None
            case FunctionCall(call_id=call_id, name=name, arguments=arguments):
                if assistant is None:
                    assistant = {"role": "assistant", "content": None}
                    messages.append(assistant)
                assistant.setdefault("tool_calls", []).append(
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": name, "arguments": arguments},
                    }
                )
            case FunctionCallOutput(call_id=call_id, output=output):
                messages.append({"role": "tool", "tool_call_id": call_id, "content": output})
                assistant = None
            case AgentMessage():
                messages.append({"role": "user", "content": wire.agent_message_text(item)})
                assistant = None
            case Reasoning(encrypted_content=encrypted):
                if encrypted:
                    raise ModelError(
                        "the chat wire cannot carry reasoning items with encrypted content;"
                        " use a provider with wire_api = 'responses' for this thread",
                        code=ErrorCode.INVALID_ARGUMENT,
                    )
    return messages


def _encode_tool(tool: Tool) -> wire.JsonObject:
    function: wire.JsonObject = {"name": tool.name}
    if tool.description:
        function["description"] = tool.description
    function["parameters"] = wire.tool_parameters(tool)
    return {"type": "function", "function": function}


@dataclass(slots=True)
class _ToolCall:
    call_id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass(slots=True)
class ChatDecoder:
    """Turns chat completion chunks into Spindle events, one chunk at a time."""

    _response_id: str = ""
    _text: list[str] = field(default_factory=list)
    _calls: dict[int, _ToolCall] = field(default_factory=dict)
    _finish_reason: str = ""
    _usage: Usage | None = None
    _done: bool = False

    def feed(self, event: SseEvent) -> list[ModelEvent]:
        """The events `event` produces; a `Completed` is always the last one."""
        if self._done:
            return []  # the [DONE] after the usage chunk
        if event.data.strip() == DONE:
            return self._final()
        chunk = wire.parse_event_data(event.data)
        error = chunk.get("error")
        if error:
            error = wire.as_object(error) or {"message": str(error)}
            message = wire.as_str(error.get("message")) or "stream error"
            raise ModelError(message, code=wire.error_code_for(error.get("code")))
        self._response_id = self._response_id or wire.as_str(chunk.get("id"))
        events: list[ModelEvent] = []
        for choice in chunk.get("choices") or []:
            choice = wire.as_object(choice)
            if wire.as_int(choice.get("index")) != 0:
                continue  # Spindle asks for one choice
            delta = wire.as_object(choice.get("delta"))
            text = wire.as_str(delta.get("content"))
            if text:
                self._text.append(text)
                events.append(TextDelta(text))
            for fragment in delta.get("tool_calls") or []:
                self._add_fragment(wire.as_object(fragment))
            self._finish_reason = wire.as_str(choice.get("finish_reason")) or self._finish_reason
        usage = wire.as_object(chunk.get("usage"))
        if usage:
            details = wire.as_object(usage.get("prompt_tokens_details"))
            self._usage = Usage(
                input_tokens=wire.as_int(usage.get("prompt_tokens")),
                cached_input_tokens=wire.as_int(details.get("cached_tokens")),
                output_tokens=wire.as_int(usage.get("completion_tokens")),
            )
            # Usage after the finish reason is OpenAI's last chunk. Some servers
            # report running usage on every chunk; those complete at [DONE].
            if self._finish_reason:
                events.extend(self._final())
        return events

    def _add_fragment(self, fragment: wire.JsonObject) -> None:
        call = self._calls.setdefault(wire.as_int(fragment.get("index")), _ToolCall())
        call.call_id = call.call_id or wire.as_str(fragment.get("id"))
        function = wire.as_object(fragment.get("function"))
        call.name = call.name or wire.as_str(function.get("name"))
        call.arguments.append(wire.as_str(function.get("arguments")))

    def _final(self) -> list[ModelEvent]:
        self._done = True
        if self._finish_reason in _INCOMPLETE_REASONS:
            raise wire.incomplete_error(self._finish_reason)
        events: list[ModelEvent] = []
        if self._text:
            phase = Phase.COMMENTARY if self._calls else Phase.FINAL_ANSWER
            events.append(ItemDone(Message(Role.ASSISTANT, "".join(self._text), phase)))
        for index, call in sorted(self._calls.items()):
            call_id = call.call_id or f"call_{self._response_id}_{index}"
            events.append(ItemDone(FunctionCall(call_id, call.name, "".join(call.arguments))))
        events.append(Completed(usage=self._usage or Usage(), response_id=self._response_id))
        return events
