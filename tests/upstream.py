"""A scripted OpenAI-compatible provider: a real HTTP/1.1 server on 127.0.0.1.

Tests of the HTTP provider, gRPC-level tests and benchmarks need a provider
that fails on purpose (429, 5xx, a cut or stalled stream, a slow first byte)
and that shows what it received, over a real socket so that timeouts,
connection reuse and disconnects are real too.

    server = UpstreamServer().start()        # or the `upstream` fixture below
    server.script(error_reply(429, "slow down", retry_after="0.2"), text_reply("chat", ["Hi"]))
    settings = server.provider_settings("chat", idle_timeout=1.0)
    ...                                      # call a provider with these settings
    server.requests[1].body["prompt_cache_key"]
    server.stop()

To use the fixture, load this module as a plugin in a conftest.py:
`pytest_plugins = ["tests.upstream"]`.

Each request takes the next scripted `Reply`; when none is left, the
`fallback` answers (by default a 500 saying so; `echo_reply` answers any
request in its wire, handy for benchmarks). Streamed replies are sent with
chunked encoding, so connections are kept alive between requests exactly as
a real provider does, and `connections` counts the TCP connections accepted.
The server runs its own event loop in a thread, so it serves sync and async
tests alike, whatever loop they use.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import pytest

from model_service.settings import ProviderSettings
from spindle.model import Usage

Fallback = Callable[["RecordedRequest"], "Reply"]

TEXT_USAGE = Usage(input_tokens=12, cached_input_tokens=0, output_tokens=3)
TOOL_USAGE = Usage(input_tokens=20, cached_input_tokens=0, output_tokens=7)


@dataclass
class RecordedRequest:
    """One request as the server read it; `headers` has lower-case names."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    raw_body: bytes
    body: Any  # the parsed JSON body, or None
    received_at: float  # time.monotonic() when the request was read
    # Set when the client closed the connection before the reply was complete.
    disconnected: threading.Event = field(default_factory=threading.Event)
    # time.monotonic() right after each event of a streamed reply was written,
    # one per event sent (CLOCK_MONOTONIC: comparable across the processes of
    # one Linux machine, so a benchmark can time each event's way to a client).
    written_at: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Reply:
    """What the server answers to one request.

    A reply with `events` is a server-sent event stream (each item one framed
    event, see `sse`); otherwise `body` is sent with a Content-Length.
    """

    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    events: tuple[str, ...] = ()
    first_byte_delay: float = 0.0  # seconds before the status line
    event_delay: float = 0.0  # seconds between two events
    cut_after: int | None = None  # close the connection after this many events
    stall_after: int | None = None  # after this many events, send nothing more


def sse(data: object, event: str | None = None) -> str:
    """One event frame: `data` as JSON (a str is sent as it is)."""
    text = data if isinstance(data, str) else json.dumps(data)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {text}\n\n"


def responses_event(data: dict[str, Any]) -> str:
    """A Responses API event, framed as OpenAI does (with an `event:` line)."""
    return sse(data, event=str(data["type"]))


def error_reply(
    status: int, message: str, *, code: str | None = None, retry_after: str | None = None
) -> Reply:
    """An OpenAI-style error body, `{"error": {"message", "type", "code"}}`."""
    body = {"error": {"message": message, "type": "test_error", "code": code}}
    headers = (("retry-after", retry_after),) if retry_after is not None else ()
    return Reply(
        status=status,
        headers=(("content-type", "application/json"), *headers),
        body=json.dumps(body).encode(),
    )


def text_reply(
    wire_api: str,
    parts: Sequence[str],
    *,
    usage: Usage = TEXT_USAGE,
    response_id: str = "resp_test",
    phase: str | None = None,
) -> Reply:
    """A streamed assistant message of `parts`, then its usage."""
    if wire_api == "chat":
        chunks = [_chat_chunk(response_id, {"role": "assistant", "content": ""})]
        chunks += [_chat_chunk(response_id, {"content": part}) for part in parts]
        chunks.append(_chat_chunk(response_id, {}, finish_reason="stop"))
        return Reply(events=(*chunks, *_chat_end(response_id, usage)))
    message: dict[str, Any] = {
        "type": "message",
        "id": "msg_1",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": "".join(parts), "annotations": []}],
    }
    if phase is not None:
        message["phase"] = phase
    events = [
        *_responses_start(response_id),
        responses_event(
            {
                "type": "response.output_item.added",
                "output_index": 0,
                "item": {**message, "status": "in_progress", "content": []},
            }
        ),
        *(
            responses_event(
                {
                    "type": "response.output_text.delta",
                    "item_id": "msg_1",
                    "output_index": 0,
                    "content_index": 0,
                    "delta": part,
                }
            )
            for part in parts
        ),
        responses_event({"type": "response.output_item.done", "output_index": 0, "item": message}),
        responses_completed(response_id, usage),
    ]
    return Reply(events=tuple(events))


def tool_call_reply(
    wire_api: str,
    name: str,
    argument_parts: Sequence[str],
    *,
    call_id: str = "call_1",
    usage: Usage = TOOL_USAGE,
    response_id: str = "resp_tool",
    arguments_in_done: bool = True,
) -> Reply:
    """A streamed function call whose arguments arrive in `argument_parts`.

    With `arguments_in_done=False` the Responses wire's `output_item.done`
    leaves the arguments out, so only the deltas carry them.
    """
    if wire_api == "chat":
        first = {"index": 0, "id": call_id, "type": "function"}
        chunks = [
            _chat_chunk(response_id, {"role": "assistant", "content": None}),
            _chat_chunk(
                response_id,
                {"tool_calls": [{**first, "function": {"name": name, "arguments": ""}}]},
            ),
        ]
        chunks += [
            _chat_chunk(
                response_id, {"tool_calls": [{"index": 0, "function": {"arguments": part}}]}
            )
            for part in argument_parts
        ]
        chunks.append(_chat_chunk(response_id, {}, finish_reason="tool_calls"))
        return Reply(events=(*chunks, *_chat_end(response_id, usage)))
    item = {"type": "function_call", "id": "fc_1", "call_id": call_id, "name": name}
    done_item = {**item, "status": "completed"}
    if arguments_in_done:
        done_item["arguments"] = "".join(argument_parts)
    events = [
        *_responses_start(response_id),
        responses_event(
            {
                "type": "response.output_item.added",
                "output_index": 0,
                "item": {**item, "arguments": "", "status": "in_progress"},
            }
        ),
        *(
            responses_event(
                {
                    "type": "response.function_call_arguments.delta",
                    "item_id": "fc_1",
                    "output_index": 0,
                    "delta": part,
                }
            )
            for part in argument_parts
        ),
        responses_event(
            {"type": "response.output_item.done", "output_index": 0, "item": done_item}
        ),
        responses_completed(response_id, usage),
    ]
    return Reply(events=tuple(events))


def responses_completed(response_id: str, usage: Usage) -> str:
    return responses_event(
        {
            "type": "response.completed",
            "response": {
                "id": response_id,
                "status": "completed",
                "usage": {
                    "input_tokens": usage.input_tokens,
                    "input_tokens_details": {"cached_tokens": usage.cached_input_tokens},
                    "output_tokens": usage.output_tokens,
                    "output_tokens_details": {"reasoning_tokens": 0},
                    "total_tokens": usage.input_tokens + usage.output_tokens,
                },
            },
        }
    )


def echo_reply(request: RecordedRequest) -> Reply:
    """Answers `echo: <last user text>` in the wire of the request's path."""
    wire_api = "chat" if request.path.endswith("/chat/completions") else "responses"
    body = request.body if isinstance(request.body, dict) else {}
    entries = body.get("messages" if wire_api == "chat" else "input") or []
    text = ""
    for entry in entries:
        if isinstance(entry, dict) and entry.get("role") == "user":
            content = entry.get("content")
            if isinstance(content, list):
                content = "".join(str(part.get("text", "")) for part in content)
            text = str(content)
    usage = Usage(len(request.raw_body) // 4, 0, len(text) // 4 + 1)
    return text_reply(wire_api, ["echo: ", text], usage=usage)


def _responses_start(response_id: str) -> list[str]:
    response = {"id": response_id, "object": "response", "status": "in_progress", "output": []}
    return [
        responses_event({"type": "response.created", "response": response}),
        responses_event({"type": "response.in_progress", "response": response}),
    ]


def _chat_chunk(response_id: str, delta: dict[str, Any], finish_reason: str | None = None) -> str:
    choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
    return sse(
        {
            "id": response_id,
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "test-model",
            "choices": [choice],
            "usage": None,
        }
    )


def _chat_end(response_id: str, usage: Usage) -> list[str]:
    usage_chunk = {
        "id": response_id,
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "test-model",
        "choices": [],
        "usage": {
            "prompt_tokens": usage.input_tokens,
            "completion_tokens": usage.output_tokens,
            "total_tokens": usage.input_tokens + usage.output_tokens,
            "prompt_tokens_details": {"cached_tokens": usage.cached_input_tokens},
        },
    }
    return [sse(usage_chunk), sse("[DONE]")]


def _no_reply(request: RecordedRequest) -> Reply:
    return error_reply(500, f"upstream test server: no reply scripted for {request.path}")


class UpstreamServer:
    """The server; see the module docstring. Thread-safe to script and inspect."""

    def __init__(self, fallback: Fallback = _no_reply, port: int = 0) -> None:
        """`port` 0 picks a free one; a given port brings a stopped server back."""
        self.fallback = fallback
        self.connections = 0
        self.port = port
        self._lock = threading.Lock()
        self._replies: deque[Reply] = deque()
        self._requests: list[RecordedRequest] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="upstream", daemon=True)
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._stopped = False

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def script(self, *replies: Reply) -> None:
        """Queue replies, answered in order, one per request."""
        with self._lock:
            self._replies.extend(replies)

    def provider_settings(self, wire_api: str = "responses", **overrides: Any) -> ProviderSettings:
        """Settings of a provider pointed at this server (name `test`)."""
        values: dict[str, Any] = {"name": "test", "base_url": self.base_url, "wire_api": wire_api}
        return ProviderSettings(**{**values, **overrides})

    def start(self) -> UpstreamServer:
        """Listen; raises OSError (and leaves nothing running) when the port is taken."""
        self._thread.start()
        started = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True),
            self._loop,
        )
        try:
            self._server = started.result(timeout=5)
        except BaseException:
            self.stop()
            raise
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        """Close the port and every connection; a test may stop a server early."""
        if self._stopped:
            return
        self._stopped = True
        if self._server is not None:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def __enter__(self) -> UpstreamServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    def _next_reply(self, request: RecordedRequest) -> Reply:
        with self._lock:
            self._requests.append(request)
            if self._replies:
                return self._replies.popleft()
        return self.fallback(request)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.connections += 1
        try:
            while (request := await _read_request(reader)) is not None:
                reply = self._next_reply(request)
                try:
                    outcome = await _send(reply, reader, writer, request.written_at)
                except ConnectionError:
                    outcome = _LEFT
                if outcome == _LEFT:
                    request.disconnected.set()
                if outcome != _SENT or request.headers.get("connection") == "close":
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def _read_request(reader: asyncio.StreamReader) -> RecordedRequest | None:
    """The next request on a connection, or None when the client closed it."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    method, target, _ = request_line.split(" ", 2)
    headers: dict[str, str] = {}
    for line in header_lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    raw_body = await reader.readexactly(length) if length else b""
    try:
        body = json.loads(raw_body) if raw_body else None
    except ValueError:
        body = None
    url = urllib.parse.urlsplit(target)
    return RecordedRequest(
        method=method,
        path=url.path,
        query=dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True)),
        headers=headers,
        raw_body=raw_body,
        body=body,
        received_at=time.monotonic(),
    )


async def _client_left(reader: asyncio.StreamReader, seconds: float | None) -> bool:
    """Wait up to `seconds` (None: for ever); True if the client closed meanwhile."""
    try:
        return not await asyncio.wait_for(reader.read(1), seconds)
    except TimeoutError:
        return False
    except ConnectionError:
        return True


_SENT, _CUT, _LEFT = "sent", "cut", "left"


async def _send(
    reply: Reply,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    written_at: list[float],
) -> str:
    """Send `reply`: _SENT whole, _CUT on purpose, or _LEFT when the client went
    away; each event's write time goes to `written_at`."""
    if reply.first_byte_delay and await _client_left(reader, reply.first_byte_delay):
        return _LEFT
    head = [f"HTTP/1.1 {reply.status} {http.HTTPStatus(reply.status).phrase}"]
    if not reply.events:
        head.append(f"content-length: {len(reply.body)}")
        head += [f"{name}: {value}" for name, value in reply.headers]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + reply.body)
        await writer.drain()
        return _SENT
    head += ["content-type: text/event-stream", "cache-control: no-cache"]
    head += ["transfer-encoding: chunked", *(f"{n}: {v}" for n, v in reply.headers)]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
    for index, event in enumerate(reply.events):
        if index == reply.cut_after:
            return _CUT
        if index == reply.stall_after:
            while not await _client_left(reader, None):
                pass
            return _LEFT
        if index and reply.event_delay and await _client_left(reader, reply.event_delay):
            return _LEFT
        data = event.encode()
        writer.write(b"%x\r\n%s\r\n" % (len(data), data))
        await writer.drain()
        written_at.append(time.monotonic())
    if reply.cut_after is not None and reply.cut_after >= len(reply.events):
        return _CUT
    writer.write(b"0\r\n\r\n")
    await writer.drain()
    return _SENT


@pytest.fixture
def upstream() -> Iterator[UpstreamServer]:
    """A started `UpstreamServer`, stopped after the test."""
    with UpstreamServer() as server:
        yield server
