"""The OpenAI-compatible HTTP provider against a real local server (tests/upstream.py).

Every test runs both wires where the wire matters. Timeouts and delays are a
few tenths of a second so that the file stays fast; httpx.MockTransport is
used only for bodies the server would not send (malformed events).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import logging
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from model_service.providers.http import HttpProvider, retry_after_seconds
from model_service.providers.sse import SseEvent, SseParser
from model_service.settings import ProviderSettings
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
from tests.upstream import (
    Reply,
    UpstreamServer,
    error_reply,
    responses_completed,
    responses_event,
    sse,
    text_reply,
    tool_call_reply,
)

# Most tests here are async; the mark leaves the few plain ones as they are.
pytestmark = pytest.mark.anyio

KEY_ENV = "SPINDLE_TEST_PROVIDER_KEY"
KEY = "sk-test-Zq8Yx7Wv6Ut5"
ENV = {KEY_ENV: KEY}
WIRES = ("responses", "chat")
REQUEST = ModelRequest(
    model="gpt-test",
    instructions="Be brief.",
    input=(Message(Role.USER, "hi"),),
    prompt_cache_key="pck-root-thread",
    thread_id="thread-1",
    window_id="thread-1:0",
)
USAGE = Usage(input_tokens=1200, cached_input_tokens=1024, output_tokens=9)
HELLO = [
    TextDelta("Hel"),
    TextDelta("lo"),
    ItemDone(Message(Role.ASSISTANT, "Hello", Phase.FINAL_ANSWER)),
    Completed(USAGE, "resp_test"),
]
# How many events of `text_reply(wire, ["Hel", "lo"])` come before the first delta.
EVENTS_BEFORE_FIRST_DELTA = {"responses": 3, "chat": 1}


@pytest.fixture
def server() -> Iterator[UpstreamServer]:
    with UpstreamServer() as running:
        yield running


def settings(
    server: UpstreamServer, wire_api: str = "responses", **changes: Any
) -> ProviderSettings:
    values: dict[str, Any] = {
        "api_key_env": KEY_ENV,
        "connect_timeout": 1.0,
        "read_timeout": 2.0,
        "pool_timeout": 1.0,
        "idle_timeout": 1.0,
        "max_retries": 2,
        "backoff_initial": 0.01,
        "backoff_max": 1.0,
    }
    return server.provider_settings(wire_api, **{**values, **changes})


def hello(wire_api: str, **changes: Any) -> Reply:
    return dataclasses.replace(text_reply(wire_api, ["Hel", "lo"], usage=USAGE), **changes)


async def consume(
    provider: HttpProvider, request: ModelRequest
) -> tuple[list[ModelEvent], ModelError | None]:
    events: list[ModelEvent] = []
    try:
        async for batch in provider.stream(request):
            events.extend(batch)
    except ModelError as exc:
        return events, exc
    return events, None


async def run(
    provider_settings: ProviderSettings,
    request: ModelRequest = REQUEST,
    environ: dict[str, str] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> tuple[list[ModelEvent], ModelError | None]:
    provider = HttpProvider(provider_settings, ENV if environ is None else environ, transport)
    try:
        return await consume(provider, request)
    finally:
        await provider.aclose()


async def collect(
    provider_settings: ProviderSettings, request: ModelRequest = REQUEST
) -> list[ModelEvent]:
    events, error = await run(provider_settings, request)
    assert error is None, error
    return events


async def fail(
    provider_settings: ProviderSettings, request: ModelRequest = REQUEST, **kwargs: Any
) -> tuple[list[ModelEvent], ModelError]:
    events, error = await run(provider_settings, request, **kwargs)
    assert error is not None, events
    return events, error


# Ordinary streams


@pytest.mark.parametrize("wire_api", WIRES)
async def test_streams_text_then_item_then_usage(server: UpstreamServer, wire_api: str) -> None:
    server.script(hello(wire_api))
    assert await collect(settings(server, wire_api)) == HELLO


@pytest.mark.parametrize("wire_api", WIRES)
async def test_tool_call_arguments_are_assembled(server: UpstreamServer, wire_api: str) -> None:
    parts = ['{"path": ', '"a.txt", ', '"limit": 3}']
    server.script(tool_call_reply(wire_api, "read_file", parts, arguments_in_done=False))
    assert await collect(settings(server, wire_api)) == [
        ItemDone(FunctionCall("call_1", "read_file", '{"path": "a.txt", "limit": 3}')),
        Completed(Usage(20, 0, 7), "resp_tool"),
    ]


async def test_responses_wire_reads_reasoning_phase_and_skips_unknown_events(
    server: UpstreamServer,
) -> None:
    reasoning = {
        "type": "reasoning",
        "id": "rs_1",
        "summary": [
            {"type": "summary_text", "text": "First."},
            {"type": "summary_text", "text": "Then."},
        ],
        "encrypted_content": "gAAAA-opaque",
    }
    message = {
        "type": "message",
        "id": "msg_1",
        "role": "assistant",
        "phase": "commentary",
        "content": [{"type": "output_text", "text": "Looking."}],
    }
    events = (
        responses_event({"type": "response.created", "response": {"id": "resp_9"}}),
        ": keep-alive\n\n",
        responses_event(
            {"type": "response.output_item.done", "output_index": 0, "item": reasoning}
        ),
        responses_event({"type": "response.content_part.added", "output_index": 1}),
        responses_event({"type": "response.some_future_event", "anything": [1, 2]}),
        responses_event({"type": "response.output_item.done", "output_index": 1, "item": message}),
        responses_event(
            {
                "type": "response.output_item.done",
                "output_index": 2,
                "item": {"type": "web_search_call"},
            }
        ),
        responses_completed("resp_9", Usage(5, 0, 2)),
    )
    server.script(Reply(events=events))
    assert await collect(settings(server)) == [
        ItemDone(Reasoning("First.\n\nThen.", "gAAAA-opaque")),
        ItemDone(Message(Role.ASSISTANT, "Looking.", Phase.COMMENTARY)),
        Completed(Usage(5, 0, 2), "resp_9"),
    ]


async def test_responses_wire_refusal_streams_as_text(server: UpstreamServer) -> None:
    refusal = {"type": "refusal", "refusal": "I can't help with that."}
    message = {"type": "message", "id": "msg_1", "role": "assistant", "content": [refusal]}
    events = (
        responses_event({"type": "response.refusal.delta", "delta": "I can't help with that."}),
        responses_event({"type": "response.output_item.done", "output_index": 0, "item": message}),
        responses_completed("resp_r", Usage(5, 0, 6)),
    )
    server.script(Reply(events=events))
    assert await collect(settings(server)) == [
        TextDelta("I can't help with that."),
        ItemDone(Message(Role.ASSISTANT, "I can't help with that.", Phase.FINAL_ANSWER)),
        Completed(Usage(5, 0, 6), "resp_r"),
    ]


async def test_chat_wire_text_with_tool_calls_is_commentary(server: UpstreamServer) -> None:
    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> str:
        return sse(
            {"id": "c1", "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}
        )

    events = (
        chunk({"role": "assistant", "content": "Let me look."}),
        chunk(
            {
                "tool_calls": [
                    {"index": 1, "id": "call_b", "function": {"name": "b", "arguments": "{}"}}
                ]
            }
        ),
        chunk(
            {
                "tool_calls": [
                    {"index": 0, "id": "call_a", "function": {"name": "a", "arguments": ""}}
                ]
            }
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"x": 1}'}}]}),
        chunk({}, "tool_calls"),
        sse("[DONE]"),  # a server that ignores stream_options sends no usage
    )
    server.script(Reply(events=events))
    assert await collect(settings(server, "chat")) == [
        TextDelta("Let me look."),
        ItemDone(Message(Role.ASSISTANT, "Let me look.", Phase.COMMENTARY)),
        ItemDone(FunctionCall("call_a", "a", '{"x": 1}')),
        ItemDone(FunctionCall("call_b", "b", "{}")),
        Completed(Usage(), "c1"),
    ]


@pytest.mark.parametrize("wire_api", WIRES)
async def test_connection_is_reused_between_calls(server: UpstreamServer, wire_api: str) -> None:
    server.script(hello(wire_api), hello(wire_api))
    provider = HttpProvider(settings(server, wire_api), ENV)
    try:
        for _ in range(2):
            assert await consume(provider, REQUEST) == (HELLO, None)
    finally:
        await provider.aclose()
    assert server.connections == 1


# What arrives upstream


@pytest.mark.parametrize("wire_api", WIRES)
async def test_prompt_cache_key_and_identity_headers_arrive(
    server: UpstreamServer, wire_api: str
) -> None:
    server.script(hello(wire_api), hello(wire_api))
    await collect(settings(server, wire_api), dataclasses.replace(REQUEST, sub_agent_kind="review"))
    await collect(settings(server, wire_api))
    sub_agent, root = server.requests
    path = "/v1/responses" if wire_api == "responses" else "/v1/chat/completions"
    assert (sub_agent.method, sub_agent.path) == ("POST", path)
    assert sub_agent.body["prompt_cache_key"] == "pck-root-thread"
    assert sub_agent.body["model"] == "gpt-test"
    assert sub_agent.body["stream"] is True
    if wire_api == "chat":
        assert sub_agent.body["stream_options"] == {"include_usage": True}
    assert sub_agent.headers["authorization"] == f"Bearer {KEY}"
    assert sub_agent.headers["session_id"] == "thread-1"
    assert sub_agent.headers["x-spindle-thread-id"] == "thread-1"
    assert sub_agent.headers["x-spindle-window-id"] == "thread-1:0"
    assert sub_agent.headers["x-openai-subagent"] == "review"
    assert sub_agent.headers["accept"] == "text/event-stream"
    assert "x-openai-subagent" not in root.headers


async def test_query_params_and_extra_headers_arrive(server: UpstreamServer) -> None:
    server.script(hello("responses"))
    await collect(
        settings(
            server,
            query_params={"api-version": "2025-04-01-preview"},
            headers={"x-extra": "yes", "session_id": "overridden?"},
        )
    )
    [request] = server.requests
    assert request.query == {"api-version": "2025-04-01-preview"}
    assert request.headers["x-extra"] == "yes"
    assert request.headers["session_id"] == "thread-1"


async def test_no_authorization_without_api_key_env(server: UpstreamServer) -> None:
    server.script(hello("responses"))
    await collect(settings(server, api_key_env=""))
    assert "authorization" not in server.requests[0].headers


HISTORY = ModelRequest(
    model="gpt-test",
    instructions="Be brief.",
    input=(
        Message(Role.DEVELOPER, "dev rules"),
        Message(Role.USER, "read a.txt"),
        Reasoning("thinking", "gAAAA-opaque"),
        Reasoning("no payload"),
        Message(Role.ASSISTANT, "Reading it.", Phase.COMMENTARY),
        FunctionCall("call_1", "read_file", '{"path": "a.txt"}'),
        FunctionCall("call_2", "stat", "{}"),
        FunctionCallOutput("call_1", "contents"),
        FunctionCallOutput("call_2", "size 8"),
        Message(Role.ASSISTANT, "It says contents."),
        AgentMessage("thread-child", "thread-1", "done with my part"),
    ),
    prompt_cache_key="pck-root-thread",
    thread_id="thread-1",
    window_id="thread-1:3",
    tools=(
        Tool(
            "read_file",
            "Reads a file.",
            '{"type": "object", "properties": {"path": {"type": "string"}}}',
        ),
        Tool("stat"),
    ),
)
READ_FILE_SCHEMA = {"type": "object", "properties": {"path": {"type": "string"}}}
EMPTY_SCHEMA = {"type": "object", "properties": {}}


async def test_responses_wire_request_mapping(server: UpstreamServer) -> None:
    server.script(hello("responses"))
    await collect(settings(server), HISTORY)
    body = server.requests[0].body

    def message(role: str, text: str, **extra: str) -> dict[str, Any]:
        if role == "assistant":  # the input form of replayed text: string content, phase
            return {"type": "message", "role": role, "content": text, **extra}
        return {"type": "message", "role": role, "content": [{"type": "input_text", "text": text}]}

    assert body["instructions"] == "Be brief."
    assert body["input"] == [
        message("developer", "dev rules"),
        message("user", "read a.txt"),
        {
            "type": "reasoning",
            "summary": [{"type": "summary_text", "text": "thinking"}],
            "encrypted_content": "gAAAA-opaque",
        },
        message("assistant", "Reading it.", phase="commentary"),
        {
            "type": "function_call",
            "call_id": "call_1",
            "name": "read_file",
            "arguments": '{"path": "a.txt"}',
        },
        {"type": "function_call", "call_id": "call_2", "name": "stat", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "contents"},
        {"type": "function_call_output", "call_id": "call_2", "output": "size 8"},
        message("assistant", "It says contents."),
        message("user", "[message from agent thread thread-child]\ndone with my part"),
    ]
    assert body["tools"] == [
        {
            "type": "function",
            "name": "read_file",
            "description": "Reads a file.",
            "parameters": READ_FILE_SCHEMA,
            "strict": False,
        },
        {"type": "function", "name": "stat", "parameters": EMPTY_SCHEMA, "strict": False},
    ]


async def test_chat_wire_request_mapping(server: UpstreamServer) -> None:
    server.script(hello("chat"))
    without_encrypted = tuple(
        item
        for item in HISTORY.input
        if not (isinstance(item, Reasoning) and item.encrypted_content)
    )
    await collect(settings(server, "chat"), dataclasses.replace(HISTORY, input=without_encrypted))
    body = server.requests[0].body

    def call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
        return {
            "id": call_id,
            "type": "function",
            "function": {"name": name, "arguments": arguments},
        }

    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "system", "content": "dev rules"},
        {"role": "user", "content": "read a.txt"},
        {
            "role": "assistant",
            "content": "Reading it.",
            "tool_calls": [
                call("call_1", "read_file", '{"path": "a.txt"}'),
                call("call_2", "stat", "{}"),
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "contents"},
        {"role": "tool", "tool_call_id": "call_2", "content": "size 8"},
        {"role": "assistant", "content": "It says contents."},
        {"role": "user", "content": "[message from agent thread thread-child]\ndone with my part"},
    ]
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "read_file",
                "description": "Reads a file.",
                "parameters": READ_FILE_SCHEMA,
            },
        },
        {"type": "function", "function": {"name": "stat", "parameters": EMPTY_SCHEMA}},
    ]


async def test_chat_wire_refuses_encrypted_reasoning(server: UpstreamServer) -> None:
    _, error = await fail(settings(server, "chat"), HISTORY)
    assert error.code is ErrorCode.INVALID_ARGUMENT
    assert "encrypted content" in error.message
    assert server.requests == []


@pytest.mark.parametrize("schema", ["{not json", "[1, 2]"])
async def test_invalid_tool_schema_is_refused(server: UpstreamServer, schema: str) -> None:
    request = dataclasses.replace(REQUEST, tools=(Tool("broken", "", schema),))
    _, error = await fail(settings(server), request)
    assert error.code is ErrorCode.INVALID_ARGUMENT
    assert '"broken"' in error.message
    assert server.requests == []


# Retries


@pytest.mark.parametrize("wire_api", WIRES)
async def test_429_waits_for_retry_after_then_succeeds(
    server: UpstreamServer, wire_api: str
) -> None:
    server.script(error_reply(429, "Rate limit reached", retry_after="0.3"), hello(wire_api))
    assert await collect(settings(server, wire_api)) == HELLO
    first, second = server.requests
    assert second.received_at - first.received_at >= 0.29


async def test_500_then_success(server: UpstreamServer) -> None:
    server.script(error_reply(500, "boom"), error_reply(502, "bad gateway"), hello("responses"))
    assert await collect(settings(server)) == HELLO
    assert len(server.requests) == 3


@pytest.mark.parametrize(
    ("status", "code"), [(503, ErrorCode.UNAVAILABLE), (429, ErrorCode.RESOURCE_EXHAUSTED)]
)
async def test_retries_exhausted(server: UpstreamServer, status: int, code: ErrorCode) -> None:
    server.script(*[error_reply(status, "try later")] * 3, hello("responses"))
    _, error = await fail(settings(server, max_retries=2))
    assert error.code is code
    assert error.message == f"provider 'test': HTTP {status}: try later"
    assert len(server.requests) == 3


async def test_retry_after_beyond_backoff_max_fails_at_once(server: UpstreamServer) -> None:
    server.script(error_reply(429, "Rate limit reached", retry_after="30"), hello("responses"))
    started = time.monotonic()
    _, error = await fail(settings(server, backoff_max=1.0))
    assert time.monotonic() - started < 1.0
    assert error.code is ErrorCode.RESOURCE_EXHAUSTED
    assert len(server.requests) == 1


async def test_insufficient_quota_is_not_retried(server: UpstreamServer) -> None:
    server.script(error_reply(429, "You exceeded your current quota", code="insufficient_quota"))
    _, error = await fail(settings(server))
    assert error.code is ErrorCode.RESOURCE_EXHAUSTED
    assert len(server.requests) == 1


async def test_connection_refused_is_unavailable_after_retries() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    refused = ProviderSettings(
        name="down", base_url=f"http://127.0.0.1:{port}/v1", max_retries=2, backoff_initial=0.01
    )
    _, error = await fail(refused)
    assert error.code is ErrorCode.UNAVAILABLE
    assert error.message == (
        "provider 'down': cannot connect to the provider: All connection attempts failed"
    )


async def test_cut_before_the_first_event_is_retried(server: UpstreamServer) -> None:
    # response.created and response.in_progress yield nothing to the caller.
    server.script(hello("responses", cut_after=2), hello("responses"))
    assert await collect(settings(server)) == HELLO
    assert len(server.requests) == 2


# Broken streams


@pytest.mark.parametrize("wire_api", WIRES)
async def test_stream_cut_after_events_fails_and_is_not_retried(
    server: UpstreamServer, wire_api: str
) -> None:
    server.script(
        hello(wire_api, cut_after=EVENTS_BEFORE_FIRST_DELTA[wire_api] + 1), hello(wire_api)
    )
    events, error = await fail(settings(server, wire_api))
    assert events == [TextDelta("Hel")]
    assert error.code is ErrorCode.UNAVAILABLE
    assert len(server.requests) == 1


@pytest.mark.parametrize("wire_api", WIRES)
async def test_stream_ending_without_completion_fails(
    server: UpstreamServer, wire_api: str
) -> None:
    reply = hello(wire_api)
    # Drop response.completed, or the usage chunk and [DONE].
    server.script(
        dataclasses.replace(reply, events=reply.events[: -1 if wire_api == "responses" else -2])
    )
    events, error = await fail(settings(server, wire_api))
    assert events[:2] == [TextDelta("Hel"), TextDelta("lo")]
    assert not any(isinstance(event, Completed) for event in events)
    assert error.code is ErrorCode.UNAVAILABLE
    assert error.message == "provider 'test': stream ended before completion"
    assert len(server.requests) == 1


@pytest.mark.parametrize("wire_api", WIRES)
async def test_stalled_stream_hits_idle_timeout(server: UpstreamServer, wire_api: str) -> None:
    server.script(hello(wire_api, stall_after=EVENTS_BEFORE_FIRST_DELTA[wire_api] + 1))
    started = time.monotonic()
    events, error = await fail(settings(server, wire_api, idle_timeout=0.3))
    elapsed = time.monotonic() - started
    assert events == [TextDelta("Hel")]
    assert error.code is ErrorCode.DEADLINE_EXCEEDED
    assert "idle" in error.message
    assert 0.3 <= elapsed < 1.5
    assert server.requests[0].disconnected.wait(1.0)
    assert len(server.requests) == 1


async def test_slow_first_byte_within_read_timeout_succeeds(server: UpstreamServer) -> None:
    server.script(hello("responses", first_byte_delay=0.4, event_delay=0.05))
    assert await collect(settings(server, read_timeout=2.0, idle_timeout=0.5)) == HELLO


@pytest.mark.parametrize("wire_api", WIRES)
async def test_upstream_records_when_it_wrote_each_event(
    server: UpstreamServer, wire_api: str
) -> None:
    reply = hello(wire_api, event_delay=0.05)
    server.script(reply, hello(wire_api, cut_after=2))
    started = time.monotonic()
    assert await collect(settings(server, wire_api)) == HELLO
    finished = time.monotonic()
    written = server.requests[0].written_at
    assert len(written) == len(reply.events)
    assert started <= server.requests[0].received_at <= written[0] <= finished
    assert all(0.045 <= b - a < 1.0 for a, b in itertools.pairwise(written))
    await fail(settings(server, wire_api, max_retries=0))
    assert len(server.requests[1].written_at) == 2  # only the events sent


async def test_first_byte_later_than_read_timeout_is_deadline_exceeded(
    server: UpstreamServer,
) -> None:
    server.script(hello("responses", first_byte_delay=1.0), hello("responses"))
    _, error = await fail(settings(server, read_timeout=0.3))
    assert error.code is ErrorCode.DEADLINE_EXCEEDED
    assert len(server.requests) == 1


FAILURES = [
    (
        "responses",
        responses_event(
            {
                "type": "response.failed",
                "response": {"error": {"code": "rate_limit_exceeded", "message": "Slow down."}},
            }
        ),
        ErrorCode.RESOURCE_EXHAUSTED,
        "Slow down.",
    ),
    (
        "responses",
        responses_event(
            {"type": "error", "code": "server_error", "message": "Oops.", "param": None}
        ),
        ErrorCode.UNAVAILABLE,
        "Oops.",
    ),
    (
        "responses",
        responses_event(
            {
                "type": "response.incomplete",
                "response": {"incomplete_details": {"reason": "max_output_tokens"}},
            }
        ),
        ErrorCode.RESOURCE_EXHAUSTED,
        "response incomplete: output token limit reached (max_output_tokens)",
    ),
    (
        "responses",
        responses_event(
            {
                "type": "response.incomplete",
                "response": {"incomplete_details": {"reason": "content_filter"}},
            }
        ),
        ErrorCode.FAILED_PRECONDITION,
        "response incomplete: content_filter",
    ),
    (
        "chat",
        sse({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}) + sse("[DONE]"),
        ErrorCode.RESOURCE_EXHAUSTED,
        "response incomplete: output token limit reached (length)",
    ),
    (
        "chat",
        sse({"error": {"message": "Bad prompt.", "code": "invalid_prompt"}}),
        ErrorCode.INVALID_ARGUMENT,
        "Bad prompt.",
    ),
]


@pytest.mark.parametrize(("wire_api", "event", "code", "message"), FAILURES)
async def test_failure_events_raise_with_provider_message(
    server: UpstreamServer, wire_api: str, event: str, code: ErrorCode, message: str
) -> None:
    server.script(Reply(events=(event,)))
    _, error = await fail(settings(server, wire_api))
    assert error.code is code
    assert error.message == f"provider 'test': {message}"
    assert len(server.requests) == 1


# HTTP errors


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, ErrorCode.INVALID_ARGUMENT),
        (401, ErrorCode.UNAUTHENTICATED),
        (403, ErrorCode.PERMISSION_DENIED),
        (404, ErrorCode.NOT_FOUND),
        (422, ErrorCode.INVALID_ARGUMENT),
    ],
)
async def test_error_status_maps_to_code_with_provider_message(
    server: UpstreamServer, status: int, code: ErrorCode
) -> None:
    server.script(error_reply(status, "The model `gpt-test` is not what you want."))
    _, error = await fail(settings(server))
    assert error.code is code
    assert (
        error.message
        == f"provider 'test': HTTP {status}: The model `gpt-test` is not what you want."
    )
    assert len(server.requests) == 1


async def test_json_answer_to_a_streamed_request_is_failed_precondition(
    server: UpstreamServer,
) -> None:
    json_answer = Reply(headers=(("content-type", "application/json"),), body=b'{"id": "resp"}')
    server.script(json_answer, hello("responses"))
    _, error = await fail(settings(server))
    assert error.code is ErrorCode.FAILED_PRECONDITION
    assert "event stream" in error.message
    assert len(server.requests) == 1


async def test_plain_text_error_body_is_the_message(server: UpstreamServer) -> None:
    server.script(Reply(status=404, body=b"no such route\n"))
    _, error = await fail(settings(server))
    assert error.message == "provider 'test': HTTP 404: no such route"


# Secrets


async def test_api_key_is_never_in_errors_or_logs(
    server: UpstreamServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server.script(
        error_reply(429, f"Rate limited for key {KEY}", retry_after="0"),
        error_reply(401, f"Incorrect API key provided: {KEY}."),
    )
    _, error = await fail(settings(server))
    assert server.requests[0].headers["authorization"] == f"Bearer {KEY}"
    assert error.code is ErrorCode.UNAUTHENTICATED
    assert error.message == "provider 'test': HTTP 401: Incorrect API key provided: [redacted]."
    assert KEY not in repr(error)
    assert "Rate limited for key [redacted]" in caplog.text
    assert KEY not in caplog.text


# A secret header, a secret query parameter and the token of a Bearer header.
HEADER_SECRET = "hdr-Q2w3E4r5T6y7U8i9"
QUERY_SECRET = "qp-Zx9Cv8Bn7Mm6Ll5K"
BEARER_TOKEN = "tok-Pp1Oo2Ii3Uu4Yy5T"
SECRETS = (KEY, HEADER_SECRET, QUERY_SECRET, BEARER_TOKEN)
# Offsets of a secret in a provider's message, all around the 500-character cut.
OFFSETS = range(440, 520)


def secret_settings(server: UpstreamServer, **changes: Any) -> ProviderSettings:
    return settings(
        server,
        headers={"x-api-key": HEADER_SECRET, "x-upstream-auth": f"Bearer {BEARER_TOKEN}"},
        query_params={"access_token": QUERY_SECRET},
        **changes,
    )


def assert_no_secret_prefix(text: str) -> None:
    """No secret, and no beginning of one of 3 characters or more, is in `text`."""
    for secret in SECRETS:
        for length in range(3, len(secret) + 1):
            assert secret[:length] not in text, (secret[:length], text)


async def test_secrets_are_redacted_before_the_message_is_cut(
    server: UpstreamServer, caplog: pytest.LogCaptureFixture
) -> None:
    # Reproduced: 488 characters and then the key used to leave the key's first
    # 12 characters in the error (and the client, ListTurns and the database).
    caplog.set_level(logging.DEBUG)
    provider = HttpProvider(secret_settings(server, max_retries=1), ENV)
    try:
        for offset in OFFSETS:
            for secret in SECRETS:
                text = "." * offset + secret + " is not valid"
                # A retried 503 puts the message in a log line, the 401 in the error.
                server.script(error_reply(503, text, retry_after="0"), error_reply(401, text))
                _, error = await consume(provider, REQUEST)
                assert error is not None and error.code is ErrorCode.UNAUTHENTICATED
                assert_no_secret_prefix(error.message)
                assert len(error.message) <= len("provider 'test': ") + 500
    finally:
        await provider.aclose()
    assert "[redacted]" in caplog.text
    assert_no_secret_prefix(caplog.text)


async def test_a_secret_cut_off_by_the_error_body_limit_is_masked(server: UpstreamServer) -> None:
    # Whitespace collapses, so the end of the 64 KiB read starts the message.
    for cut in (3, 10, len(KEY) - 1):
        body = b" " * (64 * 1024 - cut) + KEY.encode() + b" rest of the message"
        server.script(Reply(status=401, body=body))
        _, error = await fail(settings(server))
        assert error.message == "provider 'test': HTTP 401: [redacted]"


@pytest.mark.parametrize("offset", [0, 190, 195, 199, 470, 480, 490])
async def test_a_secret_in_a_malformed_event_is_masked(server: UpstreamServer, offset: int) -> None:
    server.script(Reply(events=(sse("x" * offset + KEY),)))
    _, error = await fail(settings(server))
    assert error.message.startswith("provider 'test': malformed stream event: '")
    assert_no_secret_prefix(error.message)


async def test_missing_api_key_is_failed_precondition(server: UpstreamServer) -> None:
    _, error = await fail(settings(server), environ={})
    assert error.code is ErrorCode.FAILED_PRECONDITION
    assert KEY_ENV in error.message
    assert server.requests == []


# Cancellation


@pytest.mark.parametrize("wire_api", WIRES)
async def test_cancelled_consumer_closes_upstream_connection(
    server: UpstreamServer, wire_api: str
) -> None:
    server.script(hello(wire_api, stall_after=EVENTS_BEFORE_FIRST_DELTA[wire_api] + 1))
    provider = HttpProvider(settings(server, wire_api, idle_timeout=30.0, read_timeout=30.0), ENV)
    first_event = asyncio.Event()

    async def consumer() -> None:
        async for _ in provider.stream(REQUEST):
            first_event.set()

    task = asyncio.create_task(consumer())
    await asyncio.wait_for(first_event.wait(), 2.0)
    cancelled_at = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    noticed = await asyncio.to_thread(server.requests[0].disconnected.wait, 2.0)
    assert noticed
    await provider.aclose()
    assert time.monotonic() - cancelled_at < 0.5


async def test_consumer_that_stops_iterating_closes_upstream_connection(
    server: UpstreamServer,
) -> None:
    server.script(hello("responses", stall_after=EVENTS_BEFORE_FIRST_DELTA["responses"] + 1))
    provider = HttpProvider(settings(server, idle_timeout=30.0, read_timeout=30.0), ENV)
    stream = provider.stream(REQUEST)
    assert await anext(stream) == [TextDelta("Hel")]
    await stream.aclose()
    noticed = await asyncio.to_thread(server.requests[0].disconnected.wait, 0.5)
    assert noticed
    await provider.aclose()


# Edge cases without the server


async def test_malformed_event_is_unavailable_and_not_retried() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        body = b"event: response.created\ndata: {not json\n\n"
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    provider_settings = ProviderSettings(name="mock", base_url="http://mock.invalid/v1")
    _, error = await fail(provider_settings, transport=httpx.MockTransport(handler))
    assert error.code is ErrorCode.UNAVAILABLE
    assert "malformed stream event" in error.message
    assert len(calls) == 1


async def test_retry_after_as_http_date_is_honoured() -> None:
    replies = [
        httpx.Response(429, headers={"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, json={}),
        httpx.Response(200, content="".join(hello("responses").events).encode()),
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        return replies.pop(0)

    provider_settings = ProviderSettings(name="mock", base_url="http://mock.invalid/v1")
    events, error = await run(provider_settings, transport=httpx.MockTransport(handler))
    assert (events, error) == (HELLO, None)
    assert replies == []


def test_retry_after_parsing() -> None:
    now = datetime(2015, 10, 21, 7, 27, 58, tzinfo=UTC)
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now) == 2.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:00:00 GMT", now) == 0.0
    assert retry_after_seconds("1.5") == 1.5
    assert retry_after_seconds("-3") == 0.0
    assert retry_after_seconds("nan") is None
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds(None) is None


def test_sse_parser_framing() -> None:
    parser = SseParser()
    lines = [": comment", "event: one", "data: {", 'data:  "a": 1}', "id: 7", "", "", "data:x", ""]
    events = [event for line in lines if (event := parser.feed(line)) is not None]
    assert events == [SseEvent("one", '{\n "a": 1}'), SseEvent("", "x")]
    assert json.loads(events[0].data) == {"a": 1}
