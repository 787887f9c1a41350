"""Spindle model-service overhead: the same streamed request, direct and through the gateway.

Three real processes on loopback: a local SSE upstream (this module with
`--serve-upstream`), the model-service (`python -m model_service`, its default
provider pointed at the upstream) and this client. The client sends the same
Responses-wire request directly with httpx and through the model-service with
`grpc.aio`, reads each stream to its end, and reports what the gateway adds:
sequentially (alternating blocks, so drift weighs on both paths alike) and
with 32 concurrent callers. A third path, the floor, is a bare `grpc.aio`
servicer (in the upstream's process) streaming the same messages with nothing
behind it: what the gRPC hop alone costs. Nothing is asserted about timing.

    PYTHONPATH=. python bench/model_overhead.py [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import json
import math
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import grpc
import httpx

from bench.machine import cpu_model, cpu_seconds, load_text
from model_service.providers import responses_wire
from spindle import convert
from spindle.items import Message, Phase, Role
from spindle.model import Completed, ItemDone, ModelEvent, ModelRequest, TextDelta, Usage
from spindle.serving import CHANNEL_OPTIONS, SERVER_OPTIONS
from spindle.v1 import model_service_pb2, model_service_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
TARGET_P50_MS = 1.0
ANCHORS = "LiteLLM about 4 ms, Portkey about 2.5 ms, Bifrost about 0.5 ms"
PARTS = ("Sure", " - here", " is a", " short", " answer.")
USAGE = Usage(input_tokens=42, cached_input_tokens=0, output_tokens=6)
INSTRUCTIONS = "You are a concise assistant. Answer in one short sentence."
USER_TEXT = "hello, how are you today?"
THREAD_ID = "0197a3c1-5e2b-7c4d-8e9f-0a1b2c3d4e5f"
STATS_PATH = "/bench/stats"

Call = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class Counts:
    """How many of each measurement; `--quick` shrinks them for a smoke run."""

    sequential: int  # calls per path
    block: int  # calls per alternating block
    clients: int
    per_client: int  # calls per client per concurrent batch
    rounds: int  # concurrent batches per path
    warmup: int  # sequential warm-up calls per path


FULL = Counts(sequential=5000, block=50, clients=32, per_client=100, rounds=2, warmup=300)
QUICK = Counts(sequential=400, block=25, clients=32, per_client=10, rounds=1, warmup=50)


@dataclass(frozen=True)
class Setup:
    """What one run measures, and how it was asked for."""

    counts: Counts
    command: str
    service_root: Path
    log_level: str | None  # passed to the model-service; None keeps its default
    event_delay_ms: float  # the upstream's pause between two events


# -- statistics --------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile: no interpolation to flatter p99."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def median_ci(values: Sequence[float]) -> tuple[float, float]:
    """A distribution-free 95% interval for the median (binomial order statistics)."""
    ordered = sorted(values)
    n = len(ordered)
    k = max(0, math.floor(n / 2 - 1.96 * math.sqrt(n) / 2))
    return ordered[k], ordered[min(n - 1, n - 1 - k)]


@dataclass
class Series:
    """Latencies of one figure (seconds), the wall time they took, and CPU per call."""

    name: str
    latencies: list[float] = field(default_factory=list)
    wall: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds by process

    def p(self, q: float) -> float:
        return percentile(self.latencies, q)

    @property
    def per_second(self) -> float:
        return len(self.latencies) / self.wall if self.wall else 0.0

    def cpu_ms_per_call(self) -> dict[str, float]:
        calls = max(1, len(self.latencies))
        return {k: v * 1e3 / calls for k, v in self.cpu.items()}

    def add_cpu(self, spent: dict[str, float]) -> None:
        for label, seconds in spent.items():
            self.cpu[label] = self.cpu.get(label, 0.0) + seconds

    def as_json(self) -> dict[str, Any]:
        return {
            "n": len(self.latencies),
            "p50_ms": round(self.p(50) * 1e3, 4),
            "p99_ms": round(self.p(99) * 1e3, 4),
            "per_second": round(self.per_second, 1),
            "cpu_ms_per_call": {k: round(v, 4) for k, v in self.cpu_ms_per_call().items()},
        }


@dataclass
class Mode:
    """One mode's figures: both paths and the floor, the per-pair differences if
    paired, and the upstream's own service time for the same calls."""

    title: str
    direct: Series = field(default_factory=lambda: Series("direct (httpx)"))
    through: Series = field(default_factory=lambda: Series("through model-service"))
    floor: Series = field(default_factory=lambda: Series("grpc.aio floor"))
    upstream: list[float] = field(default_factory=list)
    pairs: list[float] = field(default_factory=list)
    paced: bool = False  # the upstream paused between events; the floor never does

    def p50_delta(self) -> float:
        return self.through.p(50) - self.direct.p(50)

    def p99_delta(self) -> float:
        return self.through.p(99) - self.direct.p(99)

    def series(self) -> list[Series]:
        return [self.direct, self.through, self.floor]


# -- the upstream (its own process) ------------------------------------------


def reply_chunks() -> list[bytes]:
    """The streamed answer, pre-framed as HTTP chunks, one event each: the
    upstream does as little as possible so that the figures are the gateway's."""
    from tests.upstream import text_reply  # imports pytest: only the upstream needs it

    events = text_reply("responses", PARTS, usage=USAGE, response_id="resp_bench").events
    frames = [b"%x\r\n%s\r\n" % (len(e.encode()), e.encode()) for e in events]
    return [*frames, b"0\r\n\r\n"]


STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
    b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
)


@dataclass
class Upstream:
    """The upstream's state: the reply, its service times, the last body it read."""

    chunks: list[bytes]
    event_delay: float = 0.0  # seconds between two events, as a model's pace
    durations: list[float] = field(default_factory=list)
    last_body: Any = None

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while (head := await read_head(reader)) is not None:
                await self.answer(head, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def answer(
        self, head: tuple[str, str, int], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        method, path, length = head
        started = time.perf_counter()
        raw = await reader.readexactly(length) if length else b""
        if method == "POST" and path.endswith("/responses"):
            await self.stream(raw, writer)
            self.durations.append(time.perf_counter() - started)
        elif path == STATS_PATH:
            stats = {"durations": self.durations, "last_body": self.last_body}
            self.durations = []
            send_json(writer, 200, stats)
        else:
            send_json(writer, 404, {"error": {"message": f"no route {method} {path}"}})
        await writer.drain()

    async def stream(self, raw: bytes, writer: asyncio.StreamWriter) -> None:
        """Parse the body as a real provider must, then stream the reply event by event."""
        body = json.loads(raw)
        if not isinstance(body, dict) or body.get("stream") is not True:
            send_json(writer, 400, {"error": {"message": "expected stream: true"}})
            return
        self.last_body = body
        writer.write(STREAM_HEAD)
        last = len(self.chunks) - 1  # the end of the body follows the last event at once
        for index, chunk in enumerate(self.chunks):
            if self.event_delay and 0 < index < last:
                await writer.drain()
                await asyncio.sleep(self.event_delay)
            writer.write(chunk)


async def read_head(reader: asyncio.StreamReader) -> tuple[str, str, int] | None:
    """Method, path and content length of the next request; None once the client left."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    request_line, *lines = head.decode("latin-1").split("\r\n")
    method, target, _ = request_line.split(" ", 2)
    length = 0
    for line in lines:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    return method, target.partition("?")[0], length


def send_json(writer: asyncio.StreamWriter, status: int, data: object) -> None:
    body = json.dumps(data).encode()
    head = f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {len(body)}"
    writer.write(head.encode() + b"\r\n\r\n" + body)


def floor_messages() -> list[model_service_pb2.GenerateResponse]:
    """The messages the model-service streams for the upstream's reply."""
    answer = Message(Role.ASSISTANT, "".join(PARTS), Phase.FINAL_ANSWER)
    events: list[ModelEvent] = [TextDelta(part) for part in PARTS]
    events += [ItemDone(answer), Completed(USAGE, "resp_bench")]
    return [convert.event_to_pb(event) for event in events]


class FloorServicer(model_service_pb2_grpc.ModelServiceServicer):  # type: ignore[misc]
    """Generate with nothing behind it: the same messages, no upstream, no work.
    What any grpc.aio gateway that streams one message per event costs at least."""

    def __init__(self) -> None:
        self.messages = floor_messages()

    async def Generate(
        self, request: model_service_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[model_service_pb2.GenerateResponse]:
        for message in self.messages:
            yield message


async def start_floor(host: str) -> grpc.aio.Server:
    server = grpc.aio.server(options=SERVER_OPTIONS)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(FloorServicer(), server)
    port = server.add_insecure_port(f"{host}:0")
    await server.start()
    print(f"floor listening on {host}:{port}", file=sys.stderr, flush=True)
    return server


async def serve_upstream(listen: str, event_delay: float) -> None:
    """Run the upstream and the floor until SIGTERM; ports go to stderr as the services
    log theirs. The floor shares the process: the two are never measured at once."""
    upstream = Upstream(reply_chunks(), event_delay)
    host, _, port = listen.rpartition(":")
    server = await asyncio.start_server(upstream.serve, host, int(port))
    bound = server.sockets[0].getsockname()[1]
    print(f"upstream listening on {host}:{bound}", file=sys.stderr, flush=True)
    floor = await start_floor(host)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    await stop.wait()
    await floor.stop(0)
    server.close()


# -- processes ---------------------------------------------------------------

_LISTENING = rb" listening on [^\s:]+:(\d+)"


class Process:
    """A child process logging to a file, not a pipe: a pipe needs a reader
    thread in this client, which would take the GIL from its event loop on
    every log line (the model-service logs two per call)."""

    def __init__(self, label: str, args: list[str], log: Path, root: Path) -> None:
        self.label = label
        self.log = log
        self._log_file: IO[bytes] = log.open("wb")
        inherited = os.environ.get("PYTHONPATH", "").split(os.pathsep)
        path = os.pathsep.join(dict.fromkeys(p for p in [str(root), str(ROOT), *inherited] if p))
        env = {**os.environ, "PYTHONPATH": path}
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=root,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self._log_file,
        )

    def wait_port(self, name: str, timeout: float = 30.0) -> int:
        """The port of the `name listening on HOST:PORT` line the process logs."""
        pattern = re.compile(re.escape(name.encode()) + _LISTENING)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = pattern.search(self.log.read_bytes())
            if match:
                return int(match.group(1))
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"{self.label} did not start:\n{self.log.read_text(errors='replace')}")

    def wait_serving(self, address: str, timeout: float = 30.0) -> None:
        """Wait until the gRPC port answers: a service logging at WARNING or above
        never prints the line that `wait_port` reads."""
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(address) as channel:
            while self.proc.poll() is None and time.monotonic() < deadline:
                try:
                    grpc.channel_ready_future(channel).result(timeout=0.2)
                    return
                except grpc.FutureTimeoutError:
                    continue
        raise RuntimeError(f"{self.label} did not start:\n{self.log.read_text(errors='replace')}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._log_file.close()


@dataclass
class Stack:
    upstream: Process
    model: Process
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


def free_port() -> int:
    """A port for the model-service, chosen here: below INFO it never logs its own."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def running_stack(tmp: Path, setup: Setup) -> Iterator[Stack]:
    """The upstream, then the model-service pointed at it, each its own process."""
    started: list[Process] = []
    try:
        upstream = Process(
            "upstream",
            [
                *("-m", "bench.model_overhead", "--serve-upstream", "--listen", "127.0.0.1:0"),
                *("--event-delay-ms", str(setup.event_delay_ms)),
            ],
            tmp / "upstream.log",
            ROOT,
        )
        started.append(upstream)
        base = f"http://127.0.0.1:{upstream.wait_port('upstream')}/v1"
        floor = f"127.0.0.1:{upstream.wait_port('floor')}"
        write_config(tmp / "model-home", base)
        address = f"127.0.0.1:{free_port()}"
        model_args = ["--listen", address, "--config-home", str(tmp / "model-home")]
        model_args += ["--log-level", setup.log_level] if setup.log_level else []
        model = Process(
            "model-service",
            ["-m", "model_service", *model_args],
            tmp / "model.log",
            setup.service_root,
        )
        started.append(model)
        model.wait_serving(address)
        yield Stack(upstream, model, base, address, floor)
    finally:
        for process in reversed(started):
            process.stop()


# -- CPU ---------------------------------------------------------------------


@dataclass(frozen=True)
class CpuMeter:
    """Per-process CPU: on a few cores, latency is mostly who burns the CPU."""

    pids: dict[str, int]

    def snapshot(self) -> dict[str, float]:
        values = {label: cpu_seconds(pid) for label, pid in self.pids.items()}
        return {label: v for label, v in values.items() if v is not None}

    @staticmethod
    def spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        return {k: after[k] - before[k] for k in before if k in after}


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


def through_call(stub: model_service_pb2_grpc.ModelServiceStub, request: ModelRequest) -> Call:
    """Generate through the model-service, its whole stream read."""
    message = convert.request_to_pb(request)

    async def call() -> None:
        async for _ in stub.Generate(message):
            pass

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
    client: httpx.AsyncClient, stubs: tuple[Any, Any], url: str, stats_url: str
) -> Shape:
    """One call each way: both complete, and the upstream read the same body from both."""
    request = model_request()
    body = responses_wire.encode_request(request)
    async with client.stream("POST", url, json=body, headers=direct_headers(request)) as response:
        sse = [line async for line in response.aiter_lines() if line.startswith("data:")]
    direct_body = (await fetch_stats(client, stats_url))["last_body"]
    stub, floor_stub = stubs
    events = [e async for e in stub.Generate(convert.request_to_pb(request))]
    floor = [e async for e in floor_stub.Generate(convert.request_to_pb(request))]
    same = [e.SerializeToString() for e in events] == [e.SerializeToString() for e in floor]
    through_body = (await fetch_stats(client, stats_url))["last_body"]
    kinds = [e.WhichOneof("event") for e in events]
    expected = ["text_delta"] * len(PARTS) + ["item_done", "completed"]
    if kinds != expected:
        raise RuntimeError(f"the model-service streamed {kinds}, not {expected}")
    if direct_body != through_body:
        raise RuntimeError(f"bodies differ:\ndirect  {direct_body}\nthrough {through_body}")
    size = len(json.dumps(direct_body, ensure_ascii=False, separators=(",", ":")).encode())
    return Shape(size, len(sse), len(events), same)


async def fetch_stats(client: httpx.AsyncClient, stats_url: str) -> dict[str, Any]:
    """The upstream's service times since the last fetch, and the last body it read."""
    response = await client.get(stats_url)
    response.raise_for_status()
    stats: dict[str, Any] = response.json()
    return stats


# -- timing ------------------------------------------------------------------


async def timed(call: Call, into: list[float]) -> None:
    begin = time.perf_counter()
    await call()
    into.append(time.perf_counter() - begin)


async def run_block(call: Call, n: int, series: Series, meter: CpuMeter) -> list[float]:
    """`n` calls one after another, their CPU charged to `series`."""
    latencies: list[float] = []
    before = meter.snapshot()
    start = time.perf_counter()
    for _ in range(n):
        await timed(call, latencies)
    series.wall += time.perf_counter() - start
    series.add_cpu(meter.spent(before, meter.snapshot()))
    series.latencies += latencies
    return latencies


@dataclass(frozen=True)
class Paths:
    """The three calls, in the order of `Mode.series()`."""

    direct: Call
    through: Call
    floor: Call

    def runs(self, mode: Mode, forward: bool) -> list[tuple[Call, Series]]:
        """Each call with its series; every other round runs backwards (ABBA)."""
        pairs = list(zip((self.direct, self.through, self.floor), mode.series(), strict=True))
        return pairs if forward else pairs[::-1]


async def run_sequential(paths: Paths, counts: Counts, meter: CpuMeter) -> Mode:
    """Blocks in ABBA order (direct, through, floor, floor, through, direct, ...)
    cancel linear drift; the k-th call of a through block pairs with the k-th of
    the direct block next to it, a few milliseconds apart, for the per-pair
    differences."""
    mode = Mode("sequential")
    for b in range(counts.sequential // counts.block):
        got = {
            id(series): await run_block(call, counts.block, series, meter)
            for call, series in paths.runs(mode, b % 2 == 0)
        }
        direct, through = got[id(mode.direct)], got[id(mode.through)]
        mode.pairs += [t - d for d, t in zip(direct, through, strict=True)]
    return mode


async def run_batch(call: Call, counts: Counts, series: Series, meter: CpuMeter) -> None:
    """`clients` tasks at once, each making `per_client` calls back to back."""

    async def client() -> None:
        for _ in range(counts.per_client):
            await timed(call, series.latencies)

    before = meter.snapshot()
    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(counts.clients)))
    series.wall += time.perf_counter() - start
    series.add_cpu(meter.spent(before, meter.snapshot()))


async def run_concurrent(paths: Paths, counts: Counts, meter: CpuMeter) -> Mode:
    """Batches of each path in ABBA order; calls are not paired (they queue)."""
    mode = Mode(f"{counts.clients} concurrent")
    for r in range(counts.rounds):
        for call, series in paths.runs(mode, r % 2 == 0):
            await run_batch(call, counts, series, meter)
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


async def measure(stack: Stack, setup: Setup, pids: dict[str, int]) -> tuple[list[Mode], Shape]:
    request = model_request()
    url = f"{stack.upstream_base}/responses"
    stats_url = stack.upstream_base.removesuffix("/v1") + STATS_PATH
    meter, counts = CpuMeter(pids), setup.counts
    async with (
        direct_client() as client,
        grpc.aio.insecure_channel(stack.model_address, options=CHANNEL_OPTIONS) as channel,
        grpc.aio.insecure_channel(stack.floor_address, options=CHANNEL_OPTIONS) as floor,
    ):
        stubs = (
            model_service_pb2_grpc.ModelServiceStub(channel),
            model_service_pb2_grpc.ModelServiceStub(floor),
        )
        shape = await check_paths(client, stubs, url, stats_url)
        paths = Paths(
            direct_call(client, url, request),
            through_call(stubs[0], request),
            through_call(stubs[1], request),
        )
        await warm(paths, counts)
        modes = []
        for run in (run_sequential, run_concurrent):
            await fetch_stats(client, stats_url)  # drop the service times so far
            mode = await run(paths, counts, meter)
            mode.paced = setup.event_delay_ms > 0
            mode.upstream = (await fetch_stats(client, stats_url))["durations"]
            modes.append(mode)
    return modes, shape


# -- reporting ---------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}"


def cpu_text(series: Series) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in series.cpu_ms_per_call().items())


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
        low, high = median_ci(mode.pairs)
        lines.append(
            f"per-pair difference, {mode.title} (n={len(mode.pairs)}): "
            f"p50 {ms(percentile(mode.pairs, 50))} ms (95% CI {ms(low)}-{ms(high)}), "
            f"p99 {ms(percentile(mode.pairs, 99))} ms"
        )
    if mode.upstream:
        lines.append(
            f"upstream service time, {mode.title} (in the upstream process, request read to "
            f"last byte written, both paths): p50 {ms(percentile(mode.upstream, 50))} ms, "
            f"p99 {ms(percentile(mode.upstream, 99))} ms"
        )
    if mode.pairs and mode.paced:
        lines.append(f"grpc.aio floor, {mode.title}: not comparable, it streams without pauses")
    elif mode.pairs:
        lines.append(
            f"grpc.aio floor, {mode.title}: p50 {ms(mode.floor.p(50))} ms for the same messages "
            "from a servicer with no upstream and no work; p50(through) - p50(direct) - "
            f"p50(floor) = {ms(mode.p50_delta() - mode.floor.p(50))} ms, roughly what the "
            "gateway's own work adds beyond the gRPC hop"
        )
    return lines


def row(mode: Mode, s: Series) -> str:
    return (
        f"  {mode.title:<14} {s.name:<22} {len(s.latencies):>6} {ms(s.p(50)):>9} "
        f"{ms(s.p(99)):>9} {s.per_second:>8.0f}  {cpu_text(s)}"
    )


def table(modes: Sequence[Mode]) -> str:
    lines = [
        f"  {'mode':<14} {'path':<22} {'n':>6} {'p50 ms':>9} {'p99 ms':>9} {'per s':>8}  "
        "CPU ms per call"
    ]
    for mode in modes:
        lines += [row(mode, s) for s in mode.series()]
    lines.append("")
    for mode in modes:
        lines += delta_lines(mode)
    lines += ["", verdict(modes)]
    return "\n".join(lines)


def markdown(header: Sequence[str], modes: Sequence[Mode]) -> str:
    lines = [f"**Spindle model-service overhead** ({header[0]})", ""]
    lines += [
        "| mode | path | n | p50 ms | p99 ms | per s | CPU ms per call |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for mode in modes:
        for s in mode.series():
            lines.append(
                f"| {mode.title} | {s.name} | {len(s.latencies)} | {ms(s.p(50))} "
                f"| {ms(s.p(99))} | {s.per_second:.0f} | {cpu_text(s)} |"
            )
    lines.append("")
    lines += [f"- {line}" for mode in modes for line in delta_lines(mode)]
    lines += [f"- {verdict(modes)}", *(f"- {line}" for line in header[1:])]
    return "\n".join(lines)


def mode_json(mode: Mode) -> dict[str, Any]:
    data: dict[str, Any] = {
        "direct": mode.direct.as_json(),
        "through": mode.through.as_json(),
        "floor": mode.floor.as_json(),
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
    if mode.upstream:
        data["upstream_service_ms"] = {
            "n": len(mode.upstream),
            "p50": round(percentile(mode.upstream, 50) * 1e3, 4),
            "p99": round(percentile(mode.upstream, 99) * 1e3, 4),
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


def header(setup: Setup, load_before: str, shape: Shape) -> list[str]:
    today = datetime.date.today().isoformat()
    counts = setup.counts
    log_level = setup.log_level or os.environ.get("SPINDLE_LOG_LEVEL", "INFO (its default)")
    return [
        f"{today}, {os.cpu_count()} cores ({cpu_model()}), Python {platform.python_version()}, "
        f"grpcio {grpc.__version__}, httpx {httpx.__version__}",
        f"command: {setup.command}",
        "processes: upstream (python -m bench.model_overhead --serve-upstream), model-service "
        f"(python -m model_service from {setup.service_root}, log level {log_level}), "
        "this client; loopback",
        f"{shape.text()}; the upstream sends them one write each, {setup.event_delay_ms:g} ms "
        "apart",
        f"sequential: {counts.sequential} calls per path in alternating blocks of "
        f"{counts.block} (ABBA); concurrent: {counts.clients} tasks x {counts.per_client} calls, "
        f"{counts.rounds} batch(es) per path (ABBA); warm-up {counts.warmup} calls per path",
        "latency: request start to the last byte of the stream (httpx) or the end of the "
        "gRPC stream; percentiles nearest-rank",
        f"load average (1 min): {load_before} before the run, {load_text()} after",
    ]


# -- main --------------------------------------------------------------------


def run(setup: Setup) -> tuple[list[str], list[Mode]]:
    load_before = load_text()
    with (
        tempfile.TemporaryDirectory(prefix="spindle-bench-") as name,
        running_stack(Path(name), setup) as stack,
    ):
        pids = {
            "model-service": stack.model.proc.pid,
            "upstream+floor": stack.upstream.proc.pid,
            "client": os.getpid(),
        }
        modes, shape = asyncio.run(measure(stack, setup, pids))
    return header(setup, load_before, shape), modes


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write figures here")
    parser.add_argument(
        "--service-root",
        type=Path,
        default=ROOT,
        metavar="DIR",
        help="run the model-service from this checkout (to compare a change; default: this one)",
    )
    parser.add_argument(
        "--event-delay-ms",
        type=float,
        default=0.0,
        metavar="MS",
        help="the upstream's pause between two events (default 0: the whole answer at once)",
    )
    parser.add_argument(
        "--service-log-level",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="the model-service's log level (default: its own; INFO logs one line per call)",
    )
    # The upstream runs this module in a child process.
    parser.add_argument("--serve-upstream", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--listen", default="127.0.0.1:0", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.serve_upstream:
        asyncio.run(serve_upstream(args.listen, args.event_delay_ms / 1e3))
        return
    setup = Setup(
        counts=QUICK if args.quick else FULL,
        command=" ".join(["PYTHONPATH=. python bench/model_overhead.py", *sys.argv[1:]]),
        service_root=args.service_root.resolve(),
        log_level=args.service_log_level,
        event_delay_ms=args.event_delay_ms,
    )
    head, modes = run(setup)
    print("\n" + "\n".join(head) + "\n")
    print(table(modes))
    print("\n--- markdown ---\n")
    print(markdown(head, modes))
    if args.json is not None:
        args.json.write_text(json.dumps(as_json(head, modes, setup.counts), indent=2) + "\n")
        print(f"\nfigures written to {args.json}")


if __name__ == "__main__":
    main()
