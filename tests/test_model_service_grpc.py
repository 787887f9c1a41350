"""The model-service's Generate RPC on the embedded provider, through a real
in-process gRPC server: events, cache accounting, errors and deadlines."""

from __future__ import annotations

import grpc
import pytest

from spindle.v1 import common_pb2 as c
from spindle.v1 import model_service_pb2 as pb
from tests.harness import Stack
from tests.rpc import raises_status, user


def request(text: str, **kwargs: object) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        prompt_cache_key=str(kwargs.pop("key", "key-1")),
        thread_id="thread-1",
        window_id="thread-1:0",
        input=[user(text)],
        **kwargs,  # type: ignore[arg-type]
    )


def generate(
    stack: Stack, message: pb.GenerateRequest, **kwargs: object
) -> list[pb.GenerateResponse]:
    return list(stack.models.Generate(message, **kwargs))


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
