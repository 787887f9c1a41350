"""The model-service's Generate RPC on the embedded provider, through a real
in-process gRPC server: events, cache accounting, errors and deadlines."""

from __future__ import annotations

import grpc
import pytest

from spindle.v1 import common_pb2 as c
from spindle.v1 import model_service_pb2 as pb
from tests.harness import Stack
from tests.rpc import error_details, model_events, raises_status, user


def request(text: str, **kwargs: object) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        prompt_cache_key=str(kwargs.pop("key", "key-1")),
        thread_id="thread-1",
        window_id="thread-1:0",
        input=[user(text)],
        **kwargs,  # type: ignore[arg-type]
    )


def responses(
    stack: Stack, message: pb.GenerateRequest, **kwargs: object
) -> list[pb.GenerateResponse]:
    return list(stack.models.Generate(message, **kwargs))


def generate(stack: Stack, message: pb.GenerateRequest, **kwargs: object) -> list[pb.GenerateEvent]:
    return model_events(responses(stack, message, **kwargs))


def test_generate_streams_text_then_the_item_then_usage(stack: Stack) -> None:
    events = generate(stack, request("hello"))
    text = "".join(e.text_delta.text for e in events if e.HasField("text_delta"))
    assert text == "echo: hello"
    assert events[-2].item_done.item.message.text == "echo: hello"
    assert events[-2].item_done.item.message.phase == c.MESSAGE_PHASE_FINAL_ANSWER
    usage = events[-1].completed.usage
    assert usage.input_tokens > 0 and usage.output_tokens == 4  # "echo", ":", " hell", "o"
    assert events[-1].completed.response_id.startswith("resp_embedded_")


def test_repeated_long_prompts_are_served_from_cache_per_key(stack: Stack) -> None:
    long_text = "cache me if you can " * 400
    first = generate(stack, request(long_text))[-1].completed.usage
    again = generate(stack, request(long_text))[-1].completed.usage
    other_key = generate(stack, request(long_text, key="key-2"))[-1].completed.usage
    assert first.cached_input_tokens == 0
    assert again.input_tokens == first.input_tokens > 1024
    assert again.cached_input_tokens == (first.input_tokens // 128) * 128
    assert other_key.cached_input_tokens == 0


def test_a_declared_tool_can_be_called(stack: Stack) -> None:
    tools = [c.Tool(name="search")]
    events = generate(stack, request('/call search {"q":"x"}', tools=tools))
    call = events[0].item_done.item.function_call
    assert (call.name, call.arguments) == ("search", '{"q":"x"}')
    assert call.call_id.startswith("call_")
    undeclared = generate(stack, request("/call search {}"))
    assert undeclared[-2].item_done.item.message.text == "echo: /call search {}"


@pytest.mark.parametrize(
    ("message", "code", "text"),
    [
        (pb.GenerateRequest(thread_id="t"), grpc.StatusCode.INVALID_ARGUMENT, "prompt_cache_key"),
        (pb.GenerateRequest(prompt_cache_key="k"), grpc.StatusCode.INVALID_ARGUMENT, "thread_id"),
        (
            pb.GenerateRequest(prompt_cache_key="k", thread_id="t", input=[c.Item()]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "no kind",
        ),
        (request("/fail PERMISSION_DENIED nope"), grpc.StatusCode.PERMISSION_DENIED, "nope"),
        (request("/slow soon"), grpc.StatusCode.INVALID_ARGUMENT, "not a number"),
        (request("/fail BOGUS x"), grpc.StatusCode.INVALID_ARGUMENT, "unknown code"),
    ],
)
def test_bad_requests_get_clear_statuses(
    stack: Stack, message: pb.GenerateRequest, code: grpc.StatusCode, text: str
) -> None:
    with raises_status(code, text):
        generate(stack, message)


def test_the_callers_deadline_bounds_the_call(stack: Stack) -> None:
    with raises_status(grpc.StatusCode.DEADLINE_EXCEEDED):
        generate(stack, request("/slow 30 a b c d e f"), timeout=0.5)


def test_events_ready_together_travel_in_one_message_with_their_text_joined(
    stack: Stack,
) -> None:
    (only,) = responses(stack, request("hello there"))
    kinds = [event.WhichOneof("event") for event in only.events]
    assert kinds == ["text_delta", "item_done", "completed"]
    assert only.events[0].text_delta.text == "echo: hello there"


def test_text_that_comes_slowly_is_sent_as_it_comes(stack: Stack) -> None:
    """Nothing is held back to wait for more: a reply streamed over time comes
    in several messages, one per piece of text, then the end."""
    streamed = responses(stack, request("/slow 0.3 one two three"))
    pieces = [r.events[0].text_delta.text for r in streamed]
    assert pieces == ["echo", ":", " one", " two", " thre", "e"]  # one token at a time
    # The last token and the end were ready together: they travel together.
    kinds = [e.WhichOneof("event") for e in streamed[-1].events]
    assert kinds == ["text_delta", "item_done", "completed"]


def _assistant(text: str) -> c.Item:
    return c.Item(
        message=c.Message(role=c.ROLE_ASSISTANT, text=text, phase=c.MESSAGE_PHASE_FINAL_ANSWER)
    )


LONG = "every turn of a long thread repeats what came before " * 120


def _window(
    window_id: str, history: list[c.Item], digest: bytes, key: str = "key-w", **kwargs: object
) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        prompt_cache_key=key,
        thread_id=window_id.split(":")[0],
        window_id=window_id,
        input=history,
        history_digest=digest,
        **kwargs,  # type: ignore[arg-type]
    )


def test_a_request_with_a_base_sends_only_new_items_and_is_served_as_the_whole(
    stack: Stack,
) -> None:
    """Each request of a window after the first names the previous one's
    history and carries only what followed; it is served exactly as the whole
    history would be, prompt cache included (compared with the same turns sent
    whole under another key)."""
    turns = [
        [user(LONG)],
        [_assistant("echo: ..."), user(LONG + " and once more")],
        [_assistant("echo: ..."), user("short")],
    ]
    history: list[c.Item] = []
    for n, new in enumerate(turns):
        message = _window("w1:0", new, f"d{n + 1}".encode())
        if history:
            message.base.item_count, message.base.history_digest = len(history), f"d{n}".encode()
        sent = generate(stack, message)
        history += new
        whole = generate(stack, _window(f"w2:{n}", history, b"", key="key-whole"))
        assert sent[-1].completed.usage == whole[-1].completed.usage
        assert sent[-1].completed.usage.input_tokens > 1024
    assert whole[-1].completed.usage.cached_input_tokens > 1024


@pytest.mark.parametrize(
    "base",
    [
        pb.WindowBase(item_count=1, history_digest=b"other"),  # another history
        pb.WindowBase(item_count=2, history_digest=b"d1"),  # another length
    ],
)
def test_a_base_the_model_service_does_not_hold_is_refused_before_any_event(
    stack: Stack, base: pb.WindowBase
) -> None:
    generate(stack, _window("w3:0", [user("hi")], b"d1"))
    with raises_status(grpc.StatusCode.FAILED_PRECONDITION, "whole history") as info:
        generate(stack, _window("w3:0", [user("more")], b"d2", base=base))
    assert error_details(info.value)[0] == "WINDOW_NOT_HELD"
    # Unknown windows too.
    with raises_status(grpc.StatusCode.FAILED_PRECONDITION):
        generate(stack, _window("w4:0", [user("more")], b"x", base=base))
