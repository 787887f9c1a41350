"""Items survive storage exactly, and the shared enums stay in step with the protos."""

from __future__ import annotations

import asyncio
import json

import pytest

from spindle import convert, items, model
from spindle.errors import ErrorCode, SpindleError
from spindle.grpc_errors import rich_status, status_code

EVERY_KIND: list[items.Item] = [
    items.Message(items.Role.USER, ""),
    items.Message(items.Role.ASSISTANT, "answer", items.Phase.COMMENTARY),
    items.Reasoning(),
    items.Reasoning("summary", "opaque"),
    items.FunctionCall("call_1", "ls"),
    items.FunctionCall("call_2", "grep", '{"q": "é"}'),
    items.FunctionCallOutput("call_1", ""),
    items.AgentMessage("", "", ""),
    items.AgentMessage("a", "b", "hello\nthere"),
]


@pytest.mark.parametrize("item", EVERY_KIND)
def test_every_item_round_trips_through_storage_and_protobuf(item: items.Item) -> None:
    stored = json.loads(json.dumps(items.to_json(item)))
    assert items.from_json(stored) == item
    assert convert.item_from_pb(convert.item_to_pb(item)) == item


def test_items_stored_without_empty_fields_still_read() -> None:
    # Rows written before empty strings were kept.
    assert items.from_json({"type": "function_call_output", "call_id": "c"}) == (
        items.FunctionCallOutput("c", "")
    )


def test_every_error_code_is_a_grpc_status_code() -> None:
    for code in ErrorCode:
        assert status_code(code).name == code.value
        status = rich_status(SpindleError("m", code=code))
        assert status.code == status_code(code).value[0]


def test_a_request_converted_a_slice_at_a_time_is_the_request_converted_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(convert, "REQUEST_SLICE", 3)
    history = tuple(EVERY_KIND) * 2
    request = model.ModelRequest(
        model="spindle-echo",
        instructions="be brief",
        input=history,
        prompt_cache_key="key",
        thread_id="thread",
        window_id="thread:0",
        history_digest=b"digest",
        base=model.WindowBase(4, b"base"),
    )
    for with_base in (True, False):
        sliced = asyncio.run(convert.request_to_pb_in_slices(request, with_base=with_base))
        assert sliced == convert.request_to_pb(request, with_base=with_base)
        assert len(sliced.input) == len(history) - (4 if with_base else 0)


def test_a_request_read_a_slice_at_a_time_is_the_request_read_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(convert, "REQUEST_SLICE", 3)
    message = convert.request_to_pb(
        model.ModelRequest(
            model="spindle-echo",
            instructions="be brief",
            input=tuple(EVERY_KIND) * 2,
            prompt_cache_key="key",
            thread_id="thread",
            window_id="thread:0",
            history_digest=b"digest",
        )
    )
    assert asyncio.run(convert.request_from_pb_in_slices(message)) == convert.request_from_pb(
        message
    )
