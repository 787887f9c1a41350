"""Spindle model-service overhead: the same streamed request, direct and through the gateway.

Four processes on loopback: a local SSE upstream (`tests.upstream`, run by this
module with `--serve-upstream`), the model-service (`python -m model_service`,
its default provider pointed at the upstream), a floor (`python -m bench.floor`)
and this client. The client sends the same Responses-wire request directly with
httpx and through the model-service with `grpc.aio`, reads each stream to its
end, and reports what the gateway adds: sequentially (alternating blocks, so
drift weighs on both paths alike) and with 32 concurrent callers. The floor is
a bare `grpc.aio` server streaming the same messages with nothing behind it:
what the gRPC hop alone costs.

With `--paced-ms MS` it measures instead what the gateway adds to each text
delta when the upstream paces its events MS apart: the upstream records when
it wrote each event (`RecordedRequest.written_at`, CLOCK_MONOTONIC, shared by
the processes of one machine) and the client when it holds each delta's text,
on both paths; also the time to first token and how many gRPC messages a reply
takes (one per delta: none held back). Nothing is asserted about timing.

    python -m bench.model_overhead [--quick] [--json PATH] [--paced-ms MS]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import json
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx

from bench import floor
from bench.toolkit import (
    ROOT,
    Call,
    CpuMeter,
    Process,
    Series,
    Table,
    arguments,
    free_port,
    load_line,
    load_text,
    machine_line,
    median_ci,
    percentile,
    run_concurrent,
    run_sequential,
    write_json,
)
from model_service.providers import responses_wire
from model_service.providers.sse import SseLines, SseParser
from spindle import convert
from spindle.items import Message, Role
from spindle.model import ModelRequest, Usage
from spindle.serving import CHANNEL_OPTIONS
from spindle.v1 import model_service_pb2_grpc

TARGET_P50_MS = 1.0
TARGET_DELTA_P50_MS = 0.3  # added latency per delta, paced upstream
ANCHORS = "LiteLLM about 4 ms, Portkey about 2.5 ms, Bifrost about 0.5 ms"
PARTS = ("Sure", " - here", " is a", " short", " answer.")
USAGE = Usage(input_tokens=42, cached_input_tokens=0, output_tokens=6)
INSTRUCTIONS = "You are a concise assistant. Answer in one short sentence."
USER_TEXT = "hello, how are you today?"
THREAD_ID = "0197a3c1-5e2b-7c4d-8e9f-0a1b2c3d4e5f"
RESPONSE_ID = "resp_bench"
LAST_BODY_PATH = "/bench/last-body"
WRITES_PATH = "/bench/writes"  # when the upstream wrote each text delta
DELTA_EVENT = "response.output_text.delta"
GENERATE_METHOD = "/spindle.v1.ModelService/Generate"


@dataclass(frozen=True)
class Counts:
    """How many of each measurement; `--quick` shrinks them for a smoke run."""

    sequential: int  # calls per path
    block: int  # calls per alternating block
    clients: int
    per_client: int  # calls per client per concurrent batch
    rounds: int  # concurrent batches per path
    warmup: int  # sequential warm-up calls per path
    paced: int = 150  # paced calls per path (`--paced-ms`)
    paced_block: int = 10  # paced calls per alternating block
    paced_warmup: int = 10  # paced warm-up calls per path


FULL = Counts(sequential=5000, block=50, clients=32, per_client=100, rounds=2, warmup=300)
QUICK = Counts(
    sequential=400,
    block=25,
    clients=32,
    per_client=10,
    rounds=1,
    warmup=50,
    paced=20,
    paced_block=5,
    paced_warmup=3,
)


@dataclass(frozen=True)
class Setup:
    """What one run measures, and how it was asked for."""

    counts: Counts
    command: str
    service_root: Path
    log_level: str | None  # passed to the model-service; None keeps its default
    event_delay_ms: float  # the upstream's pause between two events
    paced: bool = False  # measure each delta's latency (`--paced-ms`) instead


@dataclass
class Mode:
    """One mode's figures: both paths and the floor, and the per-pair
    differences when the paths ran in paired blocks."""

    title: str
    direct: Series = field(default_factory=lambda: Series("direct (httpx)"))
    through: Series = field(default_factory=lambda: Series("through model-service"))
    floor: Series = field(default_factory=lambda: Series("grpc.aio floor"))
    pairs: list[float] = field(default_factory=list)
    paced: bool = False  # the upstream paused between events; the floor never does

    def p50_delta(self) -> float:
        return self.through.p(50) - self.direct.p(50)

    def p99_delta(self) -> float:
        return self.through.p(99) - self.direct.p(99)

    def series(self) -> list[Series]:
        return [self.direct, self.through, self.floor]


# -- the upstream (its own process) ------------------------------------------


def serve_upstream(event_delay: float) -> None:
    """Run `tests.upstream.UpstreamServer` until SIGTERM: it parses each request
    as a provider must and answers `POST .../responses` with the stream
    `text_reply` builds (10 events), `GET /bench/last-body` with the last body
    it read, `GET /bench/writes` with when it wrote each text delta
    (time.monotonic()) of each reply since the last such GET (a JSON list of
    lists, oldest reply first). Its port goes to stderr, as the services log
    theirs."""
    # tests.upstream imports pytest: only this process needs it.
    from tests.upstream import RecordedRequest, Reply, UpstreamServer, error_reply, text_reply

    reply = dataclasses.replace(
        text_reply("responses", PARTS, usage=USAGE, response_id=RESPONSE_ID),
        event_delay=event_delay,
    )
    last_body: list[Any] = [None]
    deltas = [n for n, e in enumerate(reply.events) if e.startswith(f"event: {DELTA_EVENT}\n")]
    replied: list[RecordedRequest] = []  # since the last GET of WRITES_PATH

    def answer(request: RecordedRequest) -> Reply:
        if request.method == "POST" and request.path.endswith("/responses"):
            if not isinstance(request.body, dict) or request.body.get("stream") is not True:
                return error_reply(400, "expected a JSON body with stream: true")
            last_body[0] = request.body
            replied.append(request)
            return reply
        if request.path == LAST_BODY_PATH:
            body = json.dumps(last_body[0]).encode()
            return Reply(headers=(("content-type", "application/json"),), body=body)
        if request.path == WRITES_PATH:
            # Asked once the client had the whole replies: every write is recorded.
            writes = [[r.written_at[n] for n in deltas if n < len(r.written_at)] for r in replied]
            replied.clear()
            return Reply(
                headers=(("content-type", "application/json"),), body=json.dumps(writes).encode()
            )
        return error_reply(404, f"no route {request.method} {request.path}")

    # The server's thread inherits the mask, so the signal reaches sigwait alone.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    with UpstreamServer(fallback=answer) as server:
        print(f"upstream listening on 127.0.0.1:{server.port}", file=sys.stderr, flush=True)
        signal.sigwait({signal.SIGTERM, signal.SIGINT})


def recorded_messages(address: str) -> list[bytes]:
    """The messages the model-service streams for the request, from one real
    call, which the floor then streams byte for byte: how the events come in
    batches depends on how the provider reads the upstream's stream, so they
    are recorded rather than rebuilt here."""
    with grpc.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        replies = stub.Generate(convert.request_to_pb(model_request()), timeout=30)
        return [message.SerializeToString() for message in replies]


# -- processes ---------------------------------------------------------------


@dataclass
class Stack:
    processes: dict[str, Process]
    upstream_base: str
    model_address: str
    floor_address: str


def write_config(home: Path, base_url: str) -> None:
    """The model-service's config.toml: its default provider is the upstream, on the
    Responses wire, every other provider setting left at its default."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        '[model_service]\ndefault_provider = "bench"\n\n'
        f'[model_service.providers.bench]\nbase_url = "{base_url}"\nwire_api = "responses"\n'
    )


@contextmanager
def running_stack(tmp: Path, setup: Setup) -> Iterator[Stack]:
    """The upstream, the model-service pointed at it, then the floor streaming
    what the model-service streamed for one call, each its own process, so that
    no two of them share a GIL."""
    with ExitStack() as stack:

        def start(label: str, module: str, args: list[str], cwd: Path = ROOT) -> Process:
            process = Process(label, module, args, tmp, cwd=cwd)
            stack.callback(process.stop)
            return process

        delay = ["--event-delay-ms", str(setup.event_delay_ms)]
        upstream = start("upstream", "bench.model_overhead", ["--serve-upstream", *delay])
        base = f"http://{upstream.address}/v1"
        write_config(tmp / "model-home", base)
        # Below INFO the model-service never logs its port: choose it here.
        address = f"127.0.0.1:{free_port()}"
        model_args = ["--listen", address, "--config-home", str(tmp / "model-home")]
        model_args += ["--log-level", setup.log_level] if setup.log_level else []
        model = start("model-service", "model_service", model_args, setup.service_root)
        model.wait_serving(address)
        floor.write_replies(tmp / "replies.json", recorded_messages(address))
        floor_args = ["--replies", str(tmp / "replies.json"), "--method", GENERATE_METHOD]
        floor_process = start("floor", "bench.floor", floor_args)
        processes = {"model-service": model, "upstream": upstream, "floor": floor_process}
        yield Stack(processes, base, address, floor_process.address)


# -- the request and the two paths -------------------------------------------


def model_request() -> ModelRequest:
    """The one request both paths send: what a first turn of a thread sends."""
    return ModelRequest(
        model="bench-model",
        instructions=INSTRUCTIONS,
        input=(Message(Role.USER, USER_TEXT),),
        prompt_cache_key=THREAD_ID,
        thread_id=THREAD_ID,
        window_id=f"{THREAD_ID}:0",
    )


def direct_headers(request: ModelRequest) -> dict[str, str]:
    """The headers the model-service's provider sends, so that both requests match."""
    return {
        "accept": "text/event-stream",
        "session_id": request.thread_id,
        "x-spindle-thread-id": request.thread_id,
        "x-spindle-window-id": request.window_id,
    }


def direct_client() -> httpx.AsyncClient:
    """A pooled HTTP/1.1 client shaped like the provider's (no retries, 64 kept alive)."""
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=64)
    return httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(retries=0, limits=limits))


def direct_call(client: httpx.AsyncClient, url: str, request: ModelRequest) -> Call:
    """POST the Responses body and read the SSE stream to its last byte."""
    headers = direct_headers(request)

    async def call() -> None:
        # Encoded per call, as the model-service does.
        body = responses_wire.encode_request(request)
        async with client.stream("POST", url, json=body, headers=headers) as response:
            if response.status_code != 200:
                raise RuntimeError(f"upstream answered HTTP {response.status_code}")
            async for _ in response.aiter_raw():
                pass

    return call


def through_call(
    stub: model_service_pb2_grpc.ModelServiceStub,
    request: ModelRequest,
    messages: Counter[int] | None = None,
) -> Call:
    """Generate through the model-service, its whole stream read; `messages`
    counts the replies by how many gRPC messages each took."""
    message = convert.request_to_pb(request)

    async def call() -> None:
        n = 0
        async for _ in stub.Generate(message):
            n += 1
        if messages is not None:
            messages[n] += 1

    return call


@dataclass(frozen=True)
class Shape:
    """What one call carries, for the header: figures mean little without it."""

    body_bytes: int
    sse_events: int
    grpc_messages: int
    floor_same: bool  # the floor streams byte for byte what the model-service does

    def text(self) -> str:
        same = "the same" if self.floor_same else "NOT the same"
        return (
            f"request: {self.body_bytes}-byte Responses body, identical on both paths (checked "
            f"at the upstream); reply: {self.sse_events} SSE events ({len(PARTS)} text deltas), "
            f"which the model-service streams as {self.grpc_messages} gRPC messages ({same} "
            "bytes as the floor's)"
        )


async def check_paths(
    client: httpx.AsyncClient, stubs: tuple[Any, Any], url: str, last_body_url: str
) -> Shape:
    """One call each way: both complete, and the upstream read the same body from both."""
    request = model_request()
    body = responses_wire.encode_request(request)
    async with client.stream("POST", url, json=body, headers=direct_headers(request)) as response:
        sse = [line async for line in response.aiter_lines() if line.startswith("data:")]
    direct_body = (await client.get(last_body_url)).json()
    stub, floor_stub = stubs
    messages = [m async for m in stub.Generate(convert.request_to_pb(request))]
    floor_messages = [m async for m in floor_stub.Generate(convert.request_to_pb(request))]
    same = [m.SerializeToString() for m in messages] == [
        m.SerializeToString() for m in floor_messages
    ]
    through_body = (await client.get(last_body_url)).json()
    events = [event for message in messages for event in message.events]
    text = "".join(e.text_delta.text for e in events if e.HasField("text_delta"))
    kinds = [e.WhichOneof("event") for e in events if not e.HasField("text_delta")]
    if text != "".join(PARTS) or kinds != ["item_done", "completed"]:
        raise RuntimeError(f"the model-service streamed {events}")
    if direct_body != through_body:
        raise RuntimeError(f"bodies differ:\ndirect  {direct_body}\nthrough {through_body}")
    size = len(json.dumps(direct_body, ensure_ascii=False, separators=(",", ":")).encode())
    return Shape(size, len(sse), len(messages), same)


# -- timing ------------------------------------------------------------------


@dataclass(frozen=True)
class Paths:
    """The three calls, in the order of `Mode.series()`, each with the meter of
    the processes it runs through."""

    direct: Call
    through: Call
    floor: Call
    meter: CpuMeter

    def runs(self, mode: Mode, forward: bool) -> list[tuple[Call, Series, CpuMeter]]:
        """Each call with its series and meter; every other round runs backwards (ABBA)."""
        meters = (
            self.meter.only("upstream", "client"),
            self.meter.only("model-service", "upstream", "client"),
            self.meter.only("floor", "client"),
        )
        calls = (self.direct, self.through, self.floor)
        runs = list(zip(calls, mode.series(), meters, strict=True))
        return runs if forward else runs[::-1]


async def measure_sequential(paths: Paths, counts: Counts) -> Mode:
    """Blocks in ABBA order (direct, through, floor, floor, through, direct, ...)
    cancel linear drift; the k-th call of a through block pairs with the k-th of
    the direct block next to it, a few milliseconds apart, for the per-pair
    differences."""
    mode = Mode("sequential")
    for b in range(counts.sequential // counts.block):
        got = {
            id(series): await run_sequential([call] * counts.block, series, meter)
            for call, series, meter in paths.runs(mode, b % 2 == 0)
        }
        direct, through = got[id(mode.direct)], got[id(mode.through)]
        mode.pairs += [t - d for d, t in zip(direct, through, strict=True)]
    return mode


async def measure_concurrent(paths: Paths, counts: Counts) -> Mode:
    """Batches of `clients` tasks, each making `per_client` calls back to back,
    of each path in ABBA order; calls are not paired (they queue)."""
    mode = Mode(f"{counts.clients} concurrent")
    for r in range(counts.rounds):
        for call, series, meter in paths.runs(mode, r % 2 == 0):
            await run_concurrent([[call] * counts.per_client] * counts.clients, series, meter)
    return mode


async def warm(paths: Paths, counts: Counts) -> None:
    """First calls pay for connections, imports and caches; fill the pools to
    `clients` connections so concurrent batches do not open any."""
    calls = (paths.direct, paths.through, paths.floor)
    for _ in range(counts.warmup):
        for call in calls:
            await call()
    for call in calls:
        await asyncio.gather(*(call() for _ in range(counts.clients)))


async def measure(
    stack: Stack, setup: Setup, meter: CpuMeter
) -> tuple[list[Mode], Shape, Counter[int]]:
    request = model_request()
    url = f"{stack.upstream_base}/responses"
    last_body_url = stack.upstream_base.removesuffix("/v1") + LAST_BODY_PATH
    counts = setup.counts
    async with (
        direct_client() as client,
        grpc.aio.insecure_channel(stack.model_address, options=CHANNEL_OPTIONS) as channel,
        grpc.aio.insecure_channel(stack.floor_address, options=CHANNEL_OPTIONS) as floor_ch,
    ):
        stubs = (
            model_service_pb2_grpc.ModelServiceStub(channel),
            model_service_pb2_grpc.ModelServiceStub(floor_ch),
        )
        shape = await check_paths(client, stubs, url, last_body_url)
        messages: Counter[int] = Counter()  # through replies by their gRPC messages
        paths = Paths(
            direct_call(client, url, request),
            through_call(stubs[0], request, messages),
            through_call(stubs[1], request),
            meter,
        )
        await warm(paths, counts)
        modes = []
        for run in (measure_sequential, measure_concurrent):
            mode = await run(paths, counts)
            mode.paced = setup.event_delay_ms > 0
            modes.append(mode)
    return modes, shape, messages


# -- paced: each delta's latency ---------------------------------------------

# The k-th upstream delta has reached a client once this much text has: a
# message may carry several deltas, joined.
DELTA_ENDS = list(itertools.accumulate(len(part) for part in PARTS))


@dataclass
class Trace:
    """One paced call: when it started, when the client held each delta's
    text, when the upstream wrote it (time.monotonic(), all three), and how
    the reply came."""

    start: float
    received: list[float] = field(default_factory=list)
    written: list[float] = field(default_factory=list)
    text: str = ""
    messages: int = 0  # gRPC messages; direct: SSE events
    text_messages: int = 0  # of which carry text
    most_deltas: int = 0  # the most upstream deltas one message carried

    def got_text(self, text: str, now: float) -> None:
        """A message carrying `text` arrived at `now`: every delta it completes did."""
        self.text += text
        self.text_messages += 1
        before = len(self.received)
        while len(self.received) < len(DELTA_ENDS) and DELTA_ENDS[len(self.received)] <= len(
            self.text
        ):
            self.received.append(now)
        self.most_deltas = max(self.most_deltas, len(self.received) - before)

    def latencies(self) -> list[float]:
        """Receipt minus write, per delta."""
        return [r - w for r, w in zip(self.received, self.written, strict=True)]

    def first_token(self) -> float:
        return self.received[0] - self.start

    def check(self) -> None:
        n = len(PARTS)
        if self.text != "".join(PARTS) or len(self.received) != n or len(self.written) != n:
            raise RuntimeError(f"a paced call went wrong: {self}")


PacedCall = Callable[[], Awaitable[Trace]]
WriteFetch = Callable[[], Awaitable[list[list[float]]]]


def paced_direct(client: httpx.AsyncClient, url: str, request: ModelRequest) -> PacedCall:
    """POST the Responses body; each text delta is received once the client
    holds its text: its SSE event parsed (the model-service's own `SseLines`
    and `SseParser`, then json.loads) from the text httpx delivers."""
    headers = direct_headers(request)

    async def call() -> Trace:
        trace = Trace(time.monotonic())
        body = responses_wire.encode_request(request)
        lines, parser = SseLines(), SseParser()
        async with client.stream("POST", url, json=body, headers=headers) as response:
            if response.status_code != 200:
                raise RuntimeError(f"upstream answered HTTP {response.status_code}")
            async for chunk in response.aiter_text():
                for line in lines.feed(chunk):
                    event = parser.feed(line)
                    if event is None:
                        continue
                    trace.messages += 1
                    if event.event == DELTA_EVENT:
                        trace.got_text(json.loads(event.data)["delta"], time.monotonic())
        return trace

    return call


def paced_through(
    stub: model_service_pb2_grpc.ModelServiceStub, request: ModelRequest
) -> PacedCall:
    """Generate through the model-service; each text delta is received with
    the GenerateResponse carrying it (deserialized by grpc.aio)."""
    message = convert.request_to_pb(request)

    async def call() -> Trace:
        trace = Trace(time.monotonic())
        async for reply in stub.Generate(message):
            now = time.monotonic()
            trace.messages += 1
            text = "".join(e.text_delta.text for e in reply.events if e.HasField("text_delta"))
            if text:
                trace.got_text(text, now)
        return trace

    return call


@dataclass
class PacedPath:
    """One path's paced calls; `usage` holds the wall time and CPU of its blocks."""

    name: str
    traces: list[Trace] = field(default_factory=list)
    usage: Series = field(default_factory=lambda: Series(""))

    def latencies(self) -> list[float]:
        return [latency for trace in self.traces for latency in trace.latencies()]

    def first_deltas(self) -> list[float]:
        return [trace.latencies()[0] for trace in self.traces]

    def by_index(self, k: int) -> list[float]:
        return [trace.latencies()[k] for trace in self.traces]

    def first_tokens(self) -> list[float]:
        return [trace.first_token() for trace in self.traces]

    def messages(self) -> Counter[tuple[int, int]]:
        """Replies by (messages, messages carrying text)."""
        return Counter((trace.messages, trace.text_messages) for trace in self.traces)

    def messages_text(self) -> str:
        """`7 (5 with text) in 150`, several such when replies differ."""
        counts = sorted(self.messages().items())
        return ", ".join(f"{m} ({t} with text) in {n}" for (m, t), n in counts)

    def most_deltas(self) -> int:
        return max(trace.most_deltas for trace in self.traces)

    def cpu_per_reply(self) -> str:
        calls = max(1, len(self.traces))
        return ", ".join(f"{k} {v * 1e3 / calls:.3f}" for k, v in self.usage.cpu.items())


@dataclass
class Paced:
    """The paced figures: both paths, and their calls paired (direct, through)."""

    delay_ms: float
    direct: PacedPath = field(default_factory=lambda: PacedPath("direct (httpx)"))
    through: PacedPath = field(default_factory=lambda: PacedPath("through model-service"))
    pairs: list[tuple[Trace, Trace]] = field(default_factory=list)

    def paths(self) -> tuple[PacedPath, PacedPath]:
        return self.direct, self.through

    def p50_delta(self) -> float:
        return percentile(self.through.latencies(), 50) - percentile(self.direct.latencies(), 50)

    def p99_delta(self) -> float:
        return percentile(self.through.latencies(), 99) - percentile(self.direct.latencies(), 99)

    def delta_pairs(self) -> list[float]:
        """Per delta, through minus direct, the k-th delta of paired calls."""
        return [
            t - d
            for direct, through in self.pairs
            for d, t in zip(direct.latencies(), through.latencies(), strict=True)
        ]

    def first_token_pairs(self) -> list[float]:
        return [through.first_token() - direct.first_token() for direct, through in self.pairs]

    def gaps(self) -> list[float]:
        """The upstream's pause between two deltas, as written."""
        return [
            b - a
            for path in self.paths()
            for trace in path.traces
            for a, b in itertools.pairwise(trace.written)
        ]


async def paced_block(
    call: PacedCall, path: PacedPath, n: int, meter: CpuMeter, fetch_writes: WriteFetch
) -> list[Trace]:
    """`n` calls one after another, then the upstream's writes of each."""
    traces = []
    async with meter.charging(path.usage):
        for _ in range(n):
            traces.append(await call())
    for trace, written in zip(traces, await fetch_writes(), strict=True):
        trace.written = written
        trace.check()
    path.traces += traces
    return traces


async def measure_paced(stack: Stack, setup: Setup, meter: CpuMeter) -> tuple[Paced, Shape]:
    """Blocks of paced calls in ABBA order (direct, through, through, direct,
    ...); the k-th call of a through block pairs with the k-th of the direct
    block next to it, a second or so apart."""
    request = model_request()
    url = f"{stack.upstream_base}/responses"
    base = stack.upstream_base.removesuffix("/v1")
    counts = setup.counts
    paced = Paced(setup.event_delay_ms)
    async with (
        direct_client() as client,
        grpc.aio.insecure_channel(stack.model_address, options=CHANNEL_OPTIONS) as channel,
        grpc.aio.insecure_channel(stack.floor_address, options=CHANNEL_OPTIONS) as floor_ch,
    ):

        async def fetch_writes() -> list[list[float]]:
            writes: list[list[float]] = (await client.get(base + WRITES_PATH)).json()
            return writes

        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        stubs = (stub, model_service_pb2_grpc.ModelServiceStub(floor_ch))
        shape = await check_paths(client, stubs, url, base + LAST_BODY_PATH)
        calls = {
            id(paced.direct): paced_direct(client, url, request),
            id(paced.through): paced_through(stub, request),
        }
        for _ in range(counts.paced_warmup):
            for call in calls.values():
                await call()
        await fetch_writes()  # forget the warm-up's
        direct_meter = meter.only("upstream", "client")
        through_meter = meter.only("model-service", "upstream", "client")
        meters = {id(paced.direct): direct_meter, id(paced.through): through_meter}
        for b in range(counts.paced // counts.paced_block):
            order = paced.paths() if b % 2 == 0 else paced.paths()[::-1]
            got = {
                id(path): await paced_block(
                    calls[id(path)], path, counts.paced_block, meters[id(path)], fetch_writes
                )
                for path in order
            }
            paced.pairs += zip(got[id(paced.direct)], got[id(paced.through)], strict=True)
    return paced, shape


# -- reporting ---------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}"


def verdict(modes: Sequence[Mode]) -> str:
    seq = modes[0]
    delta = seq.p50_delta() * 1e3
    paired = percentile(seq.pairs, 50) * 1e3
    met = "met" if delta <= TARGET_P50_MS else "missed"
    return (
        f"target p50 overhead <= {TARGET_P50_MS:g} ms sequential: {met} "
        f"(p50(through) - p50(direct) = {delta:.3f} ms; median per-pair difference "
        f"{paired:.3f} ms; anchors: {ANCHORS})"
    )


def delta_lines(mode: Mode) -> list[str]:
    lines = [
        f"overhead, {mode.title}: p50(through) - p50(direct) = {ms(mode.p50_delta())} ms, "
        f"p99(through) - p99(direct) = {ms(mode.p99_delta())} ms"
    ]
    if mode.pairs:
        lines.append(
            f"per-pair difference, {mode.title} (n={len(mode.pairs)}): {ci_text(mode.pairs)}"
        )
    if mode.pairs and mode.paced:
        lines.append(f"grpc.aio floor, {mode.title}: not comparable, it streams without pauses")
    elif mode.pairs:
        lines.append(
            f"grpc.aio floor, {mode.title}: p50 {ms(mode.floor.p(50))} ms for the same messages "
            "from a server with no upstream and no work; p50(through) - p50(direct) - "
            f"p50(floor) = {ms(mode.p50_delta() - mode.floor.p(50))} ms, roughly what the "
            "gateway's own work adds beyond the gRPC hop"
        )
    return lines


def table(modes: Sequence[Mode]) -> Table:
    figures = Table(
        ["mode", "path", "n", "p50 ms", "p99 ms", "per s", "CPU ms per call"],
        [False, False, True, True, True, True, False],
    )
    for mode in modes:
        for s in mode.series():
            figures.add(
                mode.title,
                s.name,
                len(s.latencies),
                ms(s.p(50)),
                ms(s.p(99)),
                f"{s.per_second:.0f}",
                s.cpu_text(3),
            )
    return figures


def notes(modes: Sequence[Mode]) -> list[str]:
    return [*(line for mode in modes for line in delta_lines(mode)), verdict(modes)]


def markdown(name: str, head: Sequence[str], figures: Table, lines: Sequence[str]) -> str:
    text = [f"**{name}** ({head[0]})", "", figures.markdown(), ""]
    text += [f"- {line}" for line in [*lines, *head[1:]]]
    return "\n".join(text)


def show(name: str, head: Sequence[str], figures: Table, lines: Sequence[str]) -> None:
    """The report for the terminal, then as markdown for a note."""
    print("\n" + "\n".join(head) + "\n")
    print(figures.text())
    print()
    print("\n".join(lines))
    print("\n--- markdown ---\n")
    print(markdown(name, head, figures, lines))


def mode_json(mode: Mode) -> dict[str, Any]:
    data: dict[str, Any] = {
        "direct": mode.direct.as_json(4),
        "through": mode.through.as_json(4),
        "floor": mode.floor.as_json(4),
        "p50_delta_ms": round(mode.p50_delta() * 1e3, 4),
        "p99_delta_ms": round(mode.p99_delta() * 1e3, 4),
    }
    if mode.pairs:
        low, high = median_ci(mode.pairs)
        data["pair_diff_ms"] = {
            "n": len(mode.pairs),
            "p50": round(percentile(mode.pairs, 50) * 1e3, 4),
            "p50_ci95": [round(low * 1e3, 4), round(high * 1e3, 4)],
            "p99": round(percentile(mode.pairs, 99) * 1e3, 4),
        }
    return data


def as_json(header: Sequence[str], modes: Sequence[Mode], counts: Counts) -> dict[str, Any]:
    seq = modes[0]
    return {
        "header": list(header),
        "counts": dataclasses.asdict(counts),
        "modes": {mode.title: mode_json(mode) for mode in modes},
        "target_p50_ms": TARGET_P50_MS,
        "target_met": seq.p50_delta() * 1e3 <= TARGET_P50_MS,
    }


def processes_line(setup: Setup) -> str:
    log_level = setup.log_level or os.environ.get("SPINDLE_LOG_LEVEL", "INFO (its default)")
    return (
        "processes: upstream (tests.upstream.UpstreamServer, run by python -m "
        "bench.model_overhead --serve-upstream), model-service (python -m model_service from "
        f"{setup.service_root}, log level {log_level}), floor (python -m bench.floor), this "
        "client; loopback"
    )


def counted(messages: Counter[Any]) -> str:
    """`7 in 150 replies`, or `1 in 9000, 2 in 12 replies` when they differ."""
    return ", ".join(f"{k} in {n}" for k, n in sorted(messages.items())) + " replies"


def header(setup: Setup, load_before: str, shape: Shape, messages: Counter[int]) -> list[str]:
    counts = setup.counts
    return [
        machine_line(httpx=httpx.__version__),
        f"command: {setup.command}",
        processes_line(setup),
        f"{shape.text()}; the upstream sends them one write each, {setup.event_delay_ms:g} ms "
        "apart",
        f"gRPC messages per reply through the model-service, over every call timed or warm-up: "
        f"{counted(messages)}",
        f"sequential: {counts.sequential} calls per path in alternating blocks of "
        f"{counts.block} (ABBA); concurrent: {counts.clients} tasks x {counts.per_client} calls, "
        f"{counts.rounds} batch(es) per path (ABBA); warm-up {counts.warmup} calls per path",
        "latency: request start to the last byte of the stream (httpx) or the end of the "
        "gRPC stream; percentiles nearest-rank",
        load_line(load_before),
    ]


def paced_table(paced: Paced) -> Table:
    figures = Table(
        [
            "path",
            "replies",
            "deltas",
            "per delta p50 ms",
            "p99 ms",
            "1st delta p50 ms",
            "TTFT p50 ms",
            "TTFT p99 ms",
            "messages per reply",
            "CPU ms per reply",
        ],
        [False, True, True, True, True, True, True, True, False, False],
    )
    for path in paced.paths():
        latencies, first_tokens = path.latencies(), path.first_tokens()
        figures.add(
            path.name,
            len(path.traces),
            len(latencies),
            ms(percentile(latencies, 50)),
            ms(percentile(latencies, 99)),
            ms(percentile(path.first_deltas(), 50)),
            ms(percentile(first_tokens, 50)),
            ms(percentile(first_tokens, 99)),
            path.messages_text(),
            path.cpu_per_reply(),
        )
    return figures


def ci_text(values: Sequence[float]) -> str:
    low, high = median_ci(values)
    return (
        f"p50 {ms(percentile(values, 50))} ms (95% CI {ms(low)}-{ms(high)}), "
        f"p99 {ms(percentile(values, 99))} ms"
    )


def paced_verdict(paced: Paced) -> str:
    delta = paced.p50_delta() * 1e3
    paired = percentile(paced.delta_pairs(), 50) * 1e3
    met = "met" if delta <= TARGET_DELTA_P50_MS else "missed"
    return (
        f"target added latency per delta p50 <= {TARGET_DELTA_P50_MS:g} ms "
        f"(upstream paced {paced.delay_ms:g} ms): {met} (p50(through) - p50(direct) = "
        f"{delta:.3f} ms; median per-delta paired difference {paired:.3f} ms)"
    )


def paced_notes(paced: Paced) -> list[str]:
    through = paced.through
    by_index = {
        path.name: " / ".join(ms(percentile(path.by_index(k), 50)) for k in range(len(PARTS)))
        for path in paced.paths()
    }
    first = [percentile(path.first_tokens(), 50) for path in paced.paths()]
    most = through.most_deltas()
    held = "none held back" if most == 1 else f"up to {most} upstream deltas in one message"
    return [
        f"added latency per delta: p50(through) - p50(direct) = {ms(paced.p50_delta())} ms, "
        f"p99(through) - p99(direct) = {ms(paced.p99_delta())} ms",
        f"per-delta paired difference (n={len(paced.delta_pairs())}): "
        f"{ci_text(paced.delta_pairs())}",
        *(f"per delta p50 by index, {name}: {text} ms" for name, text in by_index.items()),
        f"time to first token: p50 through {ms(first[1])} ms, direct {ms(first[0])} ms, "
        f"difference {ms(first[1] - first[0])} ms; paired (n={len(paced.pairs)}): "
        f"{ci_text(paced.first_token_pairs())}",
        f"gRPC messages per reply through the model-service: {through.messages_text()} of "
        f"{len(through.traces)} replies; at most {most} upstream delta per message: {held}",
        f"upstream pause between two delta writes: p50 {ms(percentile(paced.gaps(), 50))} ms, "
        f"p99 {ms(percentile(paced.gaps(), 99))} ms (asked: {paced.delay_ms:g} ms)",
        paced_verdict(paced),
    ]


def paced_header(setup: Setup, load_before: str, shape: Shape) -> list[str]:
    counts = setup.counts
    delay = setup.event_delay_ms
    return [
        machine_line(httpx=httpx.__version__),
        f"command: {setup.command}",
        processes_line(setup),
        f"request: {shape.body_bytes}-byte Responses body, identical on both paths (checked at "
        f"the upstream); reply: {shape.sse_events} SSE events ({len(PARTS)} text deltas), one "
        f"write each, {delay:g} ms apart (the first delta {3 * delay:g} ms after the request)",
        f"paced: {counts.paced} calls per path in alternating blocks of {counts.paced_block} "
        f"(ABBA), warm-up {counts.paced_warmup} calls per path; the k-th call of a through "
        "block pairs with the k-th of the direct block next to it",
        "per-delta latency: from the upstream's time.monotonic() right after writing the "
        "delta's chunk to the client holding the delta's text (gRPC: the GenerateResponse "
        "carrying it, as grpc.aio yields it; direct: its SSE event parsed with SseLines, "
        "SseParser and json.loads from httpx's aiter_text()); TTFT: call start to the first "
        "delta; messages per reply: gRPC messages, SSE events on the direct path; percentiles "
        "nearest-rank",
        load_line(load_before),
    ]


def paced_json(head: Sequence[str], paced: Paced, counts: Counts) -> dict[str, Any]:
    def figures(values: Sequence[float]) -> dict[str, Any]:
        low, high = median_ci(values)
        return {
            "n": len(values),
            "p50_ms": round(percentile(values, 50) * 1e3, 4),
            "p50_ci95_ms": [round(low * 1e3, 4), round(high * 1e3, 4)],
            "p99_ms": round(percentile(values, 99) * 1e3, 4),
        }

    paths = {
        path.name: {
            "per_delta": figures(path.latencies()),
            "per_delta_p50_by_index_ms": [
                round(percentile(path.by_index(k), 50) * 1e3, 4) for k in range(len(PARTS))
            ],
            "first_delta": figures(path.first_deltas()),
            "time_to_first_token": figures(path.first_tokens()),
            "messages_per_reply": {f"{m} ({t} text)": n for (m, t), n in path.messages().items()},
            "most_deltas_per_message": path.most_deltas(),
            "cpu_ms_per_reply": {
                k: round(v * 1e3 / max(1, len(path.traces)), 4) for k, v in path.usage.cpu.items()
            },
        }
        for path in paced.paths()
    }
    return {
        "header": list(head),
        "counts": dataclasses.asdict(counts),
        "delay_ms": paced.delay_ms,
        "paths": paths,
        "p50_delta_ms": round(paced.p50_delta() * 1e3, 4),
        "p99_delta_ms": round(paced.p99_delta() * 1e3, 4),
        "delta_pair_diff": figures(paced.delta_pairs()),
        "first_token_pair_diff": figures(paced.first_token_pairs()),
        "upstream_gap": figures(paced.gaps()),
        "target_delta_p50_ms": TARGET_DELTA_P50_MS,
        "target_met": paced.p50_delta() * 1e3 <= TARGET_DELTA_P50_MS,
    }


# -- main --------------------------------------------------------------------


@contextmanager
def metered_stack(setup: Setup) -> Iterator[tuple[Stack, CpuMeter]]:
    with (
        tempfile.TemporaryDirectory(prefix="spindle-bench-") as name,
        running_stack(Path(name), setup) as stack,
    ):
        pids = {label: process.pid for label, process in stack.processes.items()}
        yield stack, CpuMeter({**pids, "client": os.getpid()})


def run(setup: Setup) -> tuple[list[str], list[Mode]]:
    load_before = load_text()
    with metered_stack(setup) as (stack, meter):
        modes, shape, messages = asyncio.run(measure(stack, setup, meter))
    return header(setup, load_before, shape, messages), modes


def run_paced(setup: Setup) -> tuple[list[str], Paced]:
    load_before = load_text()
    with metered_stack(setup) as (stack, meter):
        paced, shape = asyncio.run(measure_paced(stack, setup, meter))
    return paced_header(setup, load_before, shape), paced


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = arguments(__doc__)
    parser.add_argument(
        "--service-root",
        type=Path,
        default=ROOT,
        metavar="DIR",
        help="run the model-service from this checkout (to compare a change; default: this one)",
    )
    pacing = parser.add_mutually_exclusive_group()
    pacing.add_argument(
        "--event-delay-ms",
        type=float,
        default=0.0,
        metavar="MS",
        help="the upstream's pause between two events (default 0: the whole answer at once)",
    )
    pacing.add_argument(
        "--paced-ms",
        type=float,
        metavar="MS",
        help="measure instead each text delta's latency, the upstream pausing MS between events",
    )
    parser.add_argument(
        "--service-log-level",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="the model-service's log level (default: its own; INFO logs one line per call)",
    )
    # The upstream runs this module in a child process.
    parser.add_argument("--serve-upstream", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.serve_upstream:
        serve_upstream(args.event_delay_ms / 1e3)
        return
    setup = Setup(
        counts=QUICK if args.quick else FULL,
        command=" ".join(["python -m bench.model_overhead", *sys.argv[1:]]),
        service_root=args.service_root.resolve(),
        log_level=args.service_log_level,
        event_delay_ms=args.paced_ms or args.event_delay_ms,
        paced=args.paced_ms is not None,
    )
    if setup.paced:
        head, paced = run_paced(setup)
        name = "Spindle model-service latency per delta"
        show(name, head, paced_table(paced), paced_notes(paced))
        if args.json is not None:
            write_json(args.json, paced_json(head, paced, setup.counts))
        return
    head, modes = run(setup)
    show("Spindle model-service overhead", head, table(modes), notes(modes))
    if args.json is not None:
        write_json(args.json, as_json(head, modes, setup.counts))


if __name__ == "__main__":
    main()
