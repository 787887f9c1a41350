"""Translation between the shared protobuf messages and the domain types.

Only the gRPC edge (servicers and the model-service client) imports this.
Bad input raises `InvalidArgument`, so a caller gets a clear status.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

from spindle import items, model
from spindle.errors import InvalidArgument
from spindle.slices import slices
from spindle.v1 import common_pb2 as pb
from spindle.v1 import model_service_pb2 as model_pb

_ROLES = {
    pb.ROLE_SYSTEM: items.Role.SYSTEM,
    pb.ROLE_DEVELOPER: items.Role.DEVELOPER,
    pb.ROLE_USER: items.Role.USER,
    pb.ROLE_ASSISTANT: items.Role.ASSISTANT,
}
_ROLES_PB = {v: k for k, v in _ROLES.items()}
_PHASES = {
    pb.MESSAGE_PHASE_COMMENTARY: items.Phase.COMMENTARY,
    pb.MESSAGE_PHASE_FINAL_ANSWER: items.Phase.FINAL_ANSWER,
}
_PHASES_PB = {v: k for k, v in _PHASES.items()}


def item_from_pb(message: pb.Item) -> items.Item:
    kind = message.WhichOneof("kind")
    if kind == "message":
        m = message.message
        if m.role not in _ROLES:
            raise InvalidArgument("message item: role is required")
        return items.Message(_ROLES[m.role], m.text, _PHASES.get(m.phase))
    if kind == "reasoning":
        return items.Reasoning(message.reasoning.summary, message.reasoning.encrypted_content)
    if kind == "function_call":
        c = message.function_call
        if not c.call_id or not c.name:
            raise InvalidArgument("function_call item: call_id and name are required")
        return items.FunctionCall(c.call_id, c.name, c.arguments)
    if kind == "function_call_output":
        o = message.function_call_output
        if not o.call_id:
            raise InvalidArgument("function_call_output item: call_id is required")
        return items.FunctionCallOutput(o.call_id, o.output)
    if kind == "agent_message":
        a = message.agent_message
        return items.AgentMessage(a.sender_thread_id, a.recipient_thread_id, a.text)
    raise InvalidArgument("item has no kind set")


def item_to_pb(item: items.Item) -> pb.Item:
    if isinstance(item, items.Message):
        phase = _PHASES_PB.get(item.phase) if item.phase else pb.MESSAGE_PHASE_UNSPECIFIED
        return pb.Item(message=pb.Message(role=_ROLES_PB[item.role], text=item.text, phase=phase))
    if isinstance(item, items.Reasoning):
        return pb.Item(
            reasoning=pb.Reasoning(summary=item.summary, encrypted_content=item.encrypted_content)
        )
    if isinstance(item, items.FunctionCall):
        return pb.Item(
            function_call=pb.FunctionCall(
                call_id=item.call_id, name=item.name, arguments=item.arguments
            )
        )
    if isinstance(item, items.FunctionCallOutput):
        return pb.Item(
            function_call_output=pb.FunctionCallOutput(call_id=item.call_id, output=item.output)
        )
    return pb.Item(
        agent_message=pb.AgentMessage(
            sender_thread_id=item.sender_thread_id,
            recipient_thread_id=item.recipient_thread_id,
            text=item.text,
        )
    )


def tool_from_pb(tool: pb.Tool) -> model.Tool:
    return model.Tool(tool.name, tool.description, tool.parameters_json)


def tool_to_pb(tool: model.Tool) -> pb.Tool:
    return pb.Tool(
        name=tool.name, description=tool.description, parameters_json=tool.parameters_json
    )


def usage_to_pb(usage: model.Usage) -> pb.Usage:
    return pb.Usage(
        input_tokens=usage.input_tokens,
        cached_input_tokens=usage.cached_input_tokens,
        output_tokens=usage.output_tokens,
    )


def usage_from_pb(usage: pb.Usage) -> model.Usage:
    return model.Usage(usage.input_tokens, usage.cached_input_tokens, usage.output_tokens)


def request_to_pb(
    request: model.ModelRequest, *, with_base: bool = True
) -> model_pb.GenerateRequest:
    """The request on the wire: with its base (unless `with_base` is False),
    only the items after the base's."""
    message, sent = _request_head(request, with_base)
    message.input.extend(item_to_pb(i) for i in sent)
    return message


# Items `request_to_pb_in_slices` converts at a time: about 1 ms.
REQUEST_SLICE = 500


async def request_to_pb_in_slices(
    request: model.ModelRequest, *, with_base: bool = True
) -> model_pb.GenerateRequest:
    """`request_to_pb`, a slice of the items at a time (see `spindle.slices`):
    a whole history of 50,000 items (a fork's first turn) takes about 100 ms
    to convert."""
    message, sent = _request_head(request, with_base)
    async for part in slices(sent, REQUEST_SLICE):
        message.input.extend(item_to_pb(i) for i in part)
    return message


def _request_head(
    request: model.ModelRequest, with_base: bool
) -> tuple[model_pb.GenerateRequest, tuple[items.Item, ...]]:
    """The request without its items, and the items it carries."""
    base = request.base if with_base else None
    sent = request.input[base.item_count :] if base is not None else request.input
    message = model_pb.GenerateRequest(
        model=request.model,
        instructions=request.instructions,
        tools=[tool_to_pb(t) for t in request.tools],
        prompt_cache_key=request.prompt_cache_key,
        thread_id=request.thread_id,
        window_id=request.window_id,
        sub_agent_kind=request.sub_agent_kind,
        history_digest=request.history_digest,
    )
    if base is not None:
        message.base.item_count = base.item_count
        message.base.history_digest = base.history_digest
    return message, sent


# Identity fields travel as HTTP headers and into log lines: printable ASCII
# without spaces, bounded, so that they can neither break a header nor forge a line.
_IDENTITY = re.compile(r"[!-~]{1,128}")
_MAX_DIGEST = 64


def request_from_pb(message: model_pb.GenerateRequest) -> model.ModelRequest:
    """The request as sent: with a base, `input` holds only the items after
    it (the model-service's `Windows` puts the base's items back in front)."""
    request = _request_without_input(message)
    return dataclasses.replace(request, input=tuple(item_from_pb(i) for i in message.input))


async def request_from_pb_in_slices(message: model_pb.GenerateRequest) -> model.ModelRequest:
    """`request_from_pb`, a slice of the items at a time (see `spindle.slices`):
    a whole history of 50,000 items takes about 100 ms to convert."""
    request = _request_without_input(message)
    found: list[items.Item] = []
    async for part in slices(message.input, REQUEST_SLICE):
        found.extend(item_from_pb(i) for i in part)
    return dataclasses.replace(request, input=tuple(found))


def _request_without_input(message: model_pb.GenerateRequest) -> model.ModelRequest:
    """The request, checked, with its `input` left empty."""
    if not message.prompt_cache_key:
        raise InvalidArgument("prompt_cache_key is required")
    if not message.thread_id:
        raise InvalidArgument("thread_id is required")
    for field in ("prompt_cache_key", "thread_id", "window_id", "sub_agent_kind"):
        value = getattr(message, field)
        if value and not _IDENTITY.fullmatch(value):
            raise InvalidArgument(
                f"{field} must be 1 to 128 printable ASCII characters without spaces",
                field=field,
            )
    if message.model:
        model.check_model(message.model)
    tools = tuple(tool_from_pb(t) for t in message.tools)
    model.check_tools(tools)
    base = None
    if message.HasField("base"):
        if not message.window_id:
            raise InvalidArgument("base needs the window_id it continues", field="base")
        base = model.WindowBase(message.base.item_count, message.base.history_digest)
    if len(message.history_digest) > _MAX_DIGEST:
        raise InvalidArgument(f"history_digest is over {_MAX_DIGEST} bytes", field="history_digest")
    return model.ModelRequest(
        model=message.model,
        instructions=message.instructions,
        input=(),
        prompt_cache_key=message.prompt_cache_key,
        thread_id=message.thread_id,
        window_id=message.window_id,
        sub_agent_kind=message.sub_agent_kind,
        tools=tools,
        history_digest=message.history_digest,
        base=base,
    )


def events_to_pb(events: Sequence[model.ModelEvent]) -> model_pb.GenerateResponse:
    return model_pb.GenerateResponse(events=[_event_to_pb(event) for event in events])


def _event_to_pb(event: model.ModelEvent) -> model_pb.GenerateEvent:
    if isinstance(event, model.TextDelta):
        return model_pb.GenerateEvent(text_delta=pb.TextDelta(text=event.text))
    if isinstance(event, model.ItemDone):
        return model_pb.GenerateEvent(item_done=pb.ItemDone(item=item_to_pb(event.item)))
    return model_pb.GenerateEvent(
        completed=model_pb.Completed(usage=usage_to_pb(event.usage), response_id=event.response_id)
    )


def events_from_pb(message: model_pb.GenerateResponse) -> list[model.ModelEvent]:
    if not message.events:
        raise InvalidArgument("a model response holds no events")
    return [_event_from_pb(event) for event in message.events]


def _event_from_pb(message: model_pb.GenerateEvent) -> model.ModelEvent:
    kind = message.WhichOneof("event")
    if kind == "text_delta":
        return model.TextDelta(message.text_delta.text)
    if kind == "item_done":
        return model.ItemDone(item_from_pb(message.item_done.item))
    if kind == "completed":
        return model.Completed(
            usage_from_pb(message.completed.usage), message.completed.response_id
        )
    raise InvalidArgument("model event has no kind set")
