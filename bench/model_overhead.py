"""Spindle model-service overhead: the same streamed request, direct and through the gateway.

Four processes on loopback: a local SSE upstream (`tests.upstream`, run by this
module with `--serve-upstream`), the model-service (`python -m model_service`,
its default provider pointed at the upstream), a floor (`python -m bench.floor`)
and this client. The client sends the same Responses-wire request directly with
httpx and through the model-service with `grpc.aio`, reads each stream to its
end, and reports what the gateway adds: sequentially (alternating blocks, so
drift weighs on both paths alike) and with 32 concurrent callers. The floor is
a bare `grpc.aio` server streaming the same messages with nothing behind it:
what the gRPC hop alone costs. Nothing is asserted about timing.

    python -m bench.model_overhead [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import signal
import sys
import tempfile
from collections.abc import Iterator, Sequence
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
from spindle import convert
from spindle.items import Message, Phase, Role
from spindle.model import (
    Completed,
    ItemDone,
    ModelEvent,
    ModelRequest,
    TextDelta,
    Usage,
    joined,
)
from spindle.serving import CHANNEL_OPTIONS
from spindle.v1 import model_service_pb2_grpc

TARGET_P50_MS = 1.0
ANCHORS = "LiteLLM about 4 ms, Portkey about 2.5 ms, Bifrost about 0.5 ms"
PARTS = ("Sure", " - here", " is a", " short", " answer.")
USAGE = Usage(input_tokens=42, cached_input_tokens=0, output_tokens=6)
INSTRUCTIONS = "You are a concise assistant. Answer in one short sentence."
USER_TEXT = "hello, how are you today?"
THREAD_ID = "0197a3c1-5e2b-7c4d-8e9f-0a1b2c3d4e5f"
RESPONSE_ID = "resp_bench"
LAST_BODY_PATH = "/bench/last-body"
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
    it read. Its port goes to stderr, as the services log theirs."""
    # tests.upstream imports pytest: only this process needs it.
    from tests.upstream import RecordedRequest, Reply, UpstreamServer, error_reply, text_reply

    reply = dataclasses.replace(
        text_reply("responses", PARTS, usage=USAGE, response_id=RESPONSE_ID),
        event_delay=event_delay,
    )
    last_body: list[Any] = [None]

    def answer(request: RecordedRequest) -> Reply:
        if request.method == "POST" and request.path.endswith("/responses"):
            if not isinstance(request.body, dict) or request.body.get("stream") is not True:
                return error_reply(400, "expected a JSON body with stream: true")
            last_body[0] = request.body
            return reply
        if request.path == LAST_BODY_PATH:
            body = json.dumps(last_body[0]).encode()
            return Reply(headers=(("content-type", "application/json"),), body=body)
        return error_reply(404, f"no route {request.method} {request.path}")

    # The server's thread inherits the mask, so the signal reaches sigwait alone.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    with UpstreamServer(fallback=answer) as server:
        print(f"upstream listening on 127.0.0.1:{server.port}", file=sys.stderr, flush=True)
        signal.sigwait({signal.SIGTERM, signal.SIGINT})


def floor_messages(endpoint: str) -> list[bytes]:
    """The message the model-service streams for the upstream's reply when it
    arrives in one read (its events in one batch, the text joined), which the
    floor streams byte for byte (`Completed` names the serving endpoint, as the
    model-service's does)."""
    answer = Message(Role.ASSISTANT, "".join(PARTS), Phase.FINAL_ANSWER)
    events: list[ModelEvent] = [TextDelta(part) for part in PARTS]
    events += [ItemDone(answer), Completed(USAGE, RESPONSE_ID)]
    message = convert.events_to_pb(joined(events))
    message.events[-1].completed.endpoint = endpoint
    return [message.SerializeToString()]


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
    """The upstream, the floor, then the model-service pointed at the upstream,
    each its own process, so that no two of them share a GIL."""
    with ExitStack() as stack:

        def start(label: str, module: str, args: list[str], cwd: Path = ROOT) -> Process:
            process = Process(label, module, args, tmp, cwd=cwd)
            stack.callback(process.stop)
            return process

        delay = ["--event-delay-ms", str(setup.event_delay_ms)]
        upstream = start("upstream", "bench.model_overhead", ["--serve-upstream", *delay])
        base = f"http://{upstream.address}/v1"
        floor.write_replies(tmp / "replies.json", floor_messages(base))
        floor_args = ["--replies", str(tmp / "replies.json"), "--method", GENERATE_METHOD]
        floor_process = start("floor", "bench.floor", floor_args)
        write_config(tmp / "model-home", base)
        # Below INFO the model-service never logs its port: choose it here.
        address = f"127.0.0.1:{free_port()}"
        model_args = ["--listen", address, "--config-home", str(tmp / "model-home")]
        model_args += ["--log-level", setup.log_level] if setup.log_level else []
        model = start("model-service", "model_service", model_args, setup.service_root)
        model.wait_serving(address)
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


async def measure(stack: Stack, setup: Setup, meter: CpuMeter) -> tuple[list[Mode], Shape]:
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
        paths = Paths(
            direct_call(client, url, request),
            through_call(stubs[0], request),
            through_call(stubs[1], request),
            meter,
        )
        await warm(paths, counts)
        modes = []
        for run in (measure_sequential, measure_concurrent):
            mode = await run(paths, counts)
            mode.paced = setup.event_delay_ms > 0
            modes.append(mode)
    return modes, shape


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
        low, high = median_ci(mode.pairs)
        lines.append(
            f"per-pair difference, {mode.title} (n={len(mode.pairs)}): "
            f"p50 {ms(percentile(mode.pairs, 50))} ms (95% CI {ms(low)}-{ms(high)}), "
            f"p99 {ms(percentile(mode.pairs, 99))} ms"
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


def markdown(header: Sequence[str], modes: Sequence[Mode]) -> str:
    lines = [f"**Spindle model-service overhead** ({header[0]})", "", table(modes).markdown(), ""]
    lines += [f"- {line}" for line in [*notes(modes), *header[1:]]]
    return "\n".join(lines)


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


def header(setup: Setup, load_before: str, shape: Shape) -> list[str]:
    counts = setup.counts
    log_level = setup.log_level or os.environ.get("SPINDLE_LOG_LEVEL", "INFO (its default)")
    return [
        machine_line(httpx=httpx.__version__),
        f"command: {setup.command}",
        "processes: upstream (tests.upstream.UpstreamServer, run by python -m "
        "bench.model_overhead --serve-upstream), model-service (python -m model_service from "
        f"{setup.service_root}, log level {log_level}), floor (python -m bench.floor), this "
        "client; loopback",
        f"{shape.text()}; the upstream sends them one write each, {setup.event_delay_ms:g} ms "
        "apart",
        f"sequential: {counts.sequential} calls per path in alternating blocks of "
        f"{counts.block} (ABBA); concurrent: {counts.clients} tasks x {counts.per_client} calls, "
        f"{counts.rounds} batch(es) per path (ABBA); warm-up {counts.warmup} calls per path",
        "latency: request start to the last byte of the stream (httpx) or the end of the "
        "gRPC stream; percentiles nearest-rank",
        load_line(load_before),
    ]


# -- main --------------------------------------------------------------------


def run(setup: Setup) -> tuple[list[str], list[Mode]]:
    load_before = load_text()
    with (
        tempfile.TemporaryDirectory(prefix="spindle-bench-") as name,
        running_stack(Path(name), setup) as stack,
    ):
        pids = {label: process.pid for label, process in stack.processes.items()}
        meter = CpuMeter({**pids, "client": os.getpid()})
        modes, shape = asyncio.run(measure(stack, setup, meter))
    return header(setup, load_before, shape), modes


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = arguments(__doc__)
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
        event_delay_ms=args.event_delay_ms,
    )
    head, modes = run(setup)
    print("\n" + "\n".join(head) + "\n")
    print(table(modes).text())
    print()
    print("\n".join(notes(modes)))
    print("\n--- markdown ---\n")
    print(markdown(head, modes))
    if args.json is not None:
        write_json(args.json, as_json(head, modes, setup.counts))


if __name__ == "__main__":
    main()
