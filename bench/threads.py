"""Spindle thread benchmark: fork, resume and turn latency through real gRPC.

Both services run as real processes on loopback (`python -m model_service`,
`python -m thread_service`), and so does a bare `grpc.aio` echo server, so
that the turn figures can be read against the floor a gRPC round trip sets
on this machine. The client is one `grpc.aio` channel per server, driven
from one asyncio loop. Everything is measured in one run and printed as a
table and as markdown; nothing is asserted about timing.

    PYTHONPATH=. python bench/threads.py [--quick] [--json PATH]
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
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from bench.machine import cpu_model, cpu_seconds, load_text
from spindle.items import Message, Phase, Role
from spindle.model import Usage
from spindle.serving import CHANNEL_OPTIONS, SERVER_OPTIONS
from spindle.v1 import common_pb2, model_service_pb2, model_service_pb2_grpc
from spindle.v1 import thread_service_pb2 as pb
from spindle.v1 import thread_service_pb2_grpc as pb_grpc
from tests.harness import ServiceProcess
from thread_service.records import Entry, TurnRecord, TurnStatus
from thread_service.settings import ThreadServiceSettings
from thread_service.stores.sqlite import SQLiteStore
from thread_service.threads import Threads
from thread_service.trust import ProjectTrust

FORK_RATIO_TARGET = 1.5
ECHO_METHOD = "/spindle.bench.Echo/Echo"
USER_TEXT = "hello, how are you today?"

Call = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class Counts:
    """How many of each measurement; `--quick` shrinks them for a smoke run."""

    forks: int
    resumes: int
    seq_turns: int
    seq_threads: int
    clients: int
    turns_per_client: int
    echo_seq: int
    echo_per_client: int
    probes: int
    warmup: int
    large_items: int


FULL = Counts(200, 200, 300, 10, 32, 20, 1000, 50, 200, 20, 10_000)
QUICK = Counts(30, 30, 40, 4, 32, 2, 200, 10, 30, 5, 10_000)


@dataclass
class Series:
    """Latencies of one figure, and the wall time of the whole batch."""

    name: str
    latencies: list[float]
    wall: float
    note: str = ""
    # CPU milliseconds per call, by process (Linux only; empty elsewhere).
    cpu_ms: dict[str, float] = field(default_factory=dict)

    def percentile(self, p: float) -> float:
        """Nearest-rank percentile, in seconds: no interpolation to flatter p99."""
        ordered = sorted(self.latencies)
        return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]

    @property
    def per_second(self) -> float:
        return len(self.latencies) / self.wall if self.wall else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "n": len(self.latencies),
            "p50_ms": round(self.percentile(50) * 1e3, 3),
            "p99_ms": round(self.percentile(99) * 1e3, 3),
            "per_second": round(self.per_second, 1),
            "wall_s": round(self.wall, 3),
            "note": self.note,
            "cpu_ms_per_call": {k: round(v, 3) for k, v in self.cpu_ms.items()},
        }

    def cpu_text(self) -> str:
        return ", ".join(f"{k} {v:.2f}" for k, v in self.cpu_ms.items())


@dataclass
class Report:
    """Everything one run measured, in print order."""

    header: list[str] = field(default_factory=list)
    sections: list[tuple[str, list[Series]]] = field(default_factory=list)
    ratios: dict[str, float] = field(default_factory=dict)

    def series(self) -> list[Series]:
        return [s for _, group in self.sections for s in group]


# -- timing ------------------------------------------------------------------


async def run_sequential(name: str, calls: Sequence[Call], note: str = "") -> Series:
    """Each call alone: latency is the service's, not a queue's."""
    latencies: list[float] = []
    start = time.perf_counter()
    for call in calls:
        begin = time.perf_counter()
        await call()
        latencies.append(time.perf_counter() - begin)
    return Series(name, latencies, time.perf_counter() - start, note)


async def run_concurrent(name: str, clients: Sequence[Sequence[Call]], note: str = "") -> Series:
    """One task per client, each running its calls back to back, all at once."""
    latencies: list[float] = []

    async def client(calls: Sequence[Call]) -> None:
        for call in calls:
            begin = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - begin)

    start = time.perf_counter()
    await asyncio.gather(*(client(calls) for calls in clients))
    return Series(name, latencies, time.perf_counter() - start, note)


@dataclass(frozen=True)
class CpuMeter:
    """Which processes a figure's CPU cost is read from: on 2 cores, latency
    under load is mostly a matter of who burns the CPU."""

    pids: dict[str, int]

    def only(self, *labels: str) -> CpuMeter:
        return CpuMeter({k: v for k, v in self.pids.items() if k in labels})

    def snapshot(self) -> dict[str, float]:
        values = {label: cpu_seconds(pid) for label, pid in self.pids.items()}
        return {label: v for label, v in values.items() if v is not None}

    async def measure(self, batch: Awaitable[Series]) -> Series:
        before = self.snapshot()
        series = await batch
        after = self.snapshot()
        calls = max(1, len(series.latencies))
        series.cpu_ms = {k: (after[k] - before[k]) * 1e3 / calls for k in before if k in after}
        return series


async def warm(calls: Sequence[Call]) -> None:
    """Run calls and drop their timings: first calls pay for connections and caches."""
    for call in calls:
        await call()


# -- building the parents ----------------------------------------------------


async def build_parent(data_dir: Path, config_home: Path, cwd: Path, items: int) -> str:
    """A root thread of `items` items (user message + final answer per turn),
    written through the store API, as the service would write them."""
    store = await SQLiteStore.open(data_dir / "spindle.sqlite3", "OFF")
    try:
        threads = Threads(
            store,
            ProjectTrust(config_home),
            default_model=ThreadServiceSettings().default_model,
            max_spawn_depth=ThreadServiceSettings().max_spawn_depth,
        )
        thread = (await threads.start(str(cwd))).thread
        for i in range(items // 2):
            turn = TurnRecord(str(uuid.uuid4()), thread.id, TurnStatus.RUNNING, time.time())
            question = f"question {i}: what does step {i} of the plan change?"
            await store.begin_turn(turn, [Entry.of(Message(Role.USER, question))])
            answer = Message(Role.ASSISTANT, f"echo: {question}", Phase.FINAL_ANSWER)
            await store.finish_turn(
                turn.id, TurnStatus.COMPLETED, Usage(), None, [Entry.of(answer)]
            )
        return thread.id
    finally:
        await store.close()


# -- servers -----------------------------------------------------------------


@dataclass
class Services:
    model: ServiceProcess
    thread: ServiceProcess
    echo: ServiceProcess


@contextmanager
def running_services(tmp: Path, synchronous: str) -> Iterator[Services]:
    """Model-service, thread-service and echo server, each its own process."""
    started: list[ServiceProcess] = []
    try:
        model = ServiceProcess("model_service", ["--config-home", str(tmp / "model-home")])
        started.append(model)
        thread_args = [
            *("--model-service", model.address),
            *("--data-dir", str(tmp / "data")),
            *("--config-home", str(tmp / "home")),
            *("--sqlite-synchronous", synchronous),
        ]
        thread = ServiceProcess("thread_service", thread_args)
        started.append(thread)
        echo = ServiceProcess("bench.threads", ["--serve-echo"])
        started.append(echo)
        for process in started:
            _ = process.port
        yield Services(model, thread, echo)
    finally:
        for process in reversed(started):
            process.stop()


def _identity(data: bytes) -> bytes:
    return data


async def _echo(request: bytes, context: Any) -> bytes:
    return request


async def serve_echo(listen: str) -> None:
    """The baseline: a unary echo of raw bytes, nothing else on the server."""
    server = grpc.aio.server(options=SERVER_OPTIONS)
    handler = grpc.unary_unary_rpc_method_handler(
        _echo, request_deserializer=_identity, response_serializer=_identity
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("spindle.bench.Echo", {"Echo": handler}),)
    )
    port = server.add_insecure_port(listen)
    await server.start()
    print(f"echo listening on 127.0.0.1:{port}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(0)


@asynccontextmanager
async def channel(address: str) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as ch:
        await ch.channel_ready()
        yield ch


# -- calls -------------------------------------------------------------------


def user_input(text: str = USER_TEXT) -> common_pb2.Item:
    return common_pb2.Item(message=common_pb2.Message(role=common_pb2.ROLE_USER, text=text))


def fork_call(stub: pb_grpc.ThreadServiceStub, parent_id: str) -> Call:
    async def call() -> None:
        fork = pb.ForkOptions(
            parent_spawn_call_id=f"call_{uuid.uuid4().hex[:12]}", mode=pb.FORK_MODE_FULL_HISTORY
        )
        await stub.SpawnThread(pb.SpawnThreadRequest(parent_id=parent_id, fork=fork))

    return call


def resume_call(stub: pb_grpc.ThreadServiceStub, thread_id: str) -> Call:
    async def call() -> None:
        await stub.ResumeThread(pb.ResumeThreadRequest(thread_id=thread_id))

    return call


def turn_call(stub: pb_grpc.ThreadServiceStub, thread_id: str) -> Call:
    """One RunTurn, its whole stream read; a turn that did not complete is an error."""

    async def call() -> None:
        last = None
        async for event in stub.RunTurn(
            pb.RunTurnRequest(thread_id=thread_id, input=[user_input()])
        ):
            last = event
        if last is None or last.turn_completed.status != pb.TURN_STATUS_COMPLETED:
            raise RuntimeError(f"turn on {thread_id} did not complete: {last}")

    return call


def get_thread_call(stub: pb_grpc.ThreadServiceStub, thread_id: str) -> Call:
    async def call() -> None:
        await stub.GetThread(pb.GetThreadRequest(thread_id=thread_id))

    return call


def generate_call(stub: model_service_pb2_grpc.ModelServiceStub, thread_id: str) -> Call:
    """The model-service hop alone, with a first turn's prompt."""
    request = model_service_pb2.GenerateRequest(
        input=[user_input()],
        prompt_cache_key=thread_id,
        thread_id=thread_id,
        window_id=f"{thread_id}:0",
    )

    async def call() -> None:
        async for _ in stub.Generate(request):
            pass

    return call


def echo_call(ch: grpc.aio.Channel) -> Call:
    method = ch.unary_unary(ECHO_METHOD, request_serializer=_identity)
    payload = pb.RunTurnRequest(thread_id=str(uuid.uuid4()), input=[user_input()])
    body = payload.SerializeToString()

    async def call() -> None:
        await method(body)

    return call


async def start_threads(stub: pb_grpc.ThreadServiceStub, cwd: Path, count: int) -> list[str]:
    replies = [await stub.StartThread(pb.StartThreadRequest(cwd=str(cwd))) for _ in range(count)]
    return [reply.thread.id for reply in replies]


# -- the measurements --------------------------------------------------------


async def run_alternating(named: Sequence[tuple[str, Call]], rounds: int) -> list[Series]:
    """The calls take turns, so drift over the run (WAL growth, page cache,
    CPU frequency) weighs on each of them alike."""
    latencies: dict[str, list[float]] = {name: [] for name, _ in named}
    for _ in range(rounds):
        for name, call in named:
            begin = time.perf_counter()
            await call()
            latencies[name].append(time.perf_counter() - begin)
    return [Series(name, values, sum(values)) for name, values in latencies.items()]


@dataclass(frozen=True)
class Parents:
    small: str
    large: str
    small_items: int
    large_items: int


async def measure_forks(
    stub: pb_grpc.ThreadServiceStub, parents: Parents, counts: Counts
) -> list[Series]:
    named = [
        (f"fork, parent of {parents.small_items:,} items", fork_call(stub, parents.small)),
        (f"fork, parent of {parents.large_items:,} items", fork_call(stub, parents.large)),
    ]
    await warm([call for _, call in named] * counts.warmup)
    return await run_alternating(named, counts.forks)


async def fork_child_length(stub: pb_grpc.ThreadServiceStub, parent_id: str) -> tuple[str, int]:
    """A fresh fork of the parent and its history length, as ResumeThread reports it."""
    fork = pb.ForkOptions(parent_spawn_call_id="call_check", mode=pb.FORK_MODE_FULL_HISTORY)
    reply = await stub.SpawnThread(pb.SpawnThreadRequest(parent_id=parent_id, fork=fork))
    resumed = await stub.ResumeThread(pb.ResumeThreadRequest(thread_id=reply.thread.id))
    return reply.thread.id, int(resumed.history_length)


async def measure_resumes(
    stub: pb_grpc.ThreadServiceStub, parents: Parents, counts: Counts
) -> list[Series]:
    child, length = await fork_child_length(stub, parents.large)
    if length != parents.large_items:
        # Not a timing check: a fork that lost history would make every figure moot.
        raise RuntimeError(
            f"a fork of the large parent holds {length} items, not {parents.large_items}"
        )
    named = [
        (f"resume, {parents.small_items:,} items", resume_call(stub, parents.small)),
        (f"resume, {parents.large_items:,} items", resume_call(stub, parents.large)),
        (f"resume, fork of the {parents.large_items:,} parent", resume_call(stub, child)),
    ]
    await warm([call for _, call in named] * counts.warmup)
    series = await run_alternating(named, counts.resumes)
    series[2].note = f"{length:,} inherited items"
    return series


TURN_CPU = ("thread-service", "model-service", "client")


async def measure_turns(
    stub: pb_grpc.ThreadServiceStub, meter: CpuMeter, cwd: Path, counts: Counts
) -> list[Series]:
    """Sequential turns over a few threads, then one thread per concurrent client."""
    meter = meter.only(*TURN_CPU)
    seq_ids = await start_threads(stub, cwd, counts.seq_threads)
    warm_rounds = max(1, counts.warmup // len(seq_ids))
    await warm([turn_call(stub, t) for t in seq_ids] * warm_rounds)
    calls = [turn_call(stub, seq_ids[i % len(seq_ids)]) for i in range(counts.seq_turns)]
    # A turn sends the whole history to the model, so say how long it grew.
    end = 2 * (warm_rounds + math.ceil(counts.seq_turns / len(seq_ids)))
    note = f"{len(seq_ids)} threads in turn, {2 * warm_rounds}->{end} items"
    seq = await meter.measure(run_sequential("turn, sequential", calls, note))
    client_ids = await start_threads(stub, cwd, counts.clients)
    await asyncio.gather(*(turn_call(stub, t)() for t in client_ids))
    clients = [[turn_call(stub, t)] * counts.turns_per_client for t in client_ids]
    note = f"{counts.clients} tasks, a thread each, 2->{2 + 2 * counts.turns_per_client} items"
    name = f"turn, {counts.clients} concurrent"
    conc = await meter.measure(run_concurrent(name, clients, note))
    return [seq, conc]


async def measure_echo(ch: grpc.aio.Channel, meter: CpuMeter, counts: Counts) -> list[Series]:
    meter = meter.only("echo-server", "client")
    call = echo_call(ch)
    await warm([call] * counts.warmup * 5)
    seq = await meter.measure(run_sequential("echo, sequential", [call] * counts.echo_seq))
    clients = [[call] * counts.echo_per_client] * counts.clients
    conc = await meter.measure(run_concurrent(f"echo, {counts.clients} concurrent", clients))
    return [seq, conc]


async def measure_probes(
    threads: pb_grpc.ThreadServiceStub,
    models: model_service_pb2_grpc.ModelServiceStub,
    meter: CpuMeter,
    parents: Parents,
    counts: Counts,
) -> list[Series]:
    """Pieces of a turn measured alone, and a turn on a long thread, to see
    where a turn's time goes."""
    get = get_thread_call(threads, parents.small)
    generate = generate_call(models, parents.small)
    long_id, length = await fork_child_length(threads, parents.large)
    long_turn = turn_call(threads, long_id)
    await warm([get, generate] * counts.warmup + [long_turn])
    note = f"fork of the {parents.large_items:,}-item parent, {length:,} items at start"
    return [
        await meter.only("thread-service", "client").measure(
            run_sequential("GetThread", [get] * counts.probes, "unary read, no write")
        ),
        await meter.only("model-service", "client").measure(
            run_sequential("Generate, model-service", [generate] * counts.probes, "direct")
        ),
        await meter.only(*TURN_CPU).measure(
            run_sequential("turn, long thread", [long_turn] * max(5, counts.probes // 10), note)
        ),
    ]


async def measure(services: Services, parents: Parents, cwd: Path, counts: Counts) -> Report:
    report = Report()
    meter = CpuMeter(
        {
            "thread-service": services.thread.proc.pid,
            "model-service": services.model.proc.pid,
            "echo-server": services.echo.proc.pid,
            "client": os.getpid(),
        }
    )
    async with (
        channel(services.thread.address) as thread_ch,
        channel(services.model.address) as model_ch,
        channel(services.echo.address) as echo_ch,
    ):
        threads = pb_grpc.ThreadServiceStub(thread_ch)
        models = model_service_pb2_grpc.ModelServiceStub(model_ch)
        forks = await measure_forks(threads, parents, counts)
        report.sections.append(("Fork: SpawnThread, full history", forks))
        resumes = await measure_resumes(threads, parents, counts)
        report.sections.append(("Resume: ResumeThread", resumes))
        turns = await measure_turns(threads, meter, cwd, counts)
        report.sections.append(("Turn: RunTurn, embedded provider, whole stream read", turns))
        echoes = await measure_echo(echo_ch, meter, counts)
        report.sections.append(("Baseline: bare grpc.aio unary echo, raw bytes", echoes))
        probes = await measure_probes(threads, models, meter, parents, counts)
        report.sections.append(("Where a turn's time goes (sequential probes)", probes))
    return report


# -- reporting ---------------------------------------------------------------


def p50_ratio(a: Series, b: Series) -> float:
    return a.percentile(50) / b.percentile(50)


def add_ratios(report: Report) -> None:
    fork, resume, turn, echo, _ = (group for _, group in report.sections)
    report.ratios = {
        "fork_p50_large_over_small": p50_ratio(fork[1], fork[0]),
        "resume_p50_large_over_small": p50_ratio(resume[1], resume[0]),
        "turn_over_echo_p50_sequential": p50_ratio(turn[0], echo[0]),
        "turn_over_echo_p50_concurrent": p50_ratio(turn[1], echo[1]),
    }


def verdict(ratio: float) -> str:
    return "target met" if ratio <= FORK_RATIO_TARGET else "target missed"


def ratio_lines(report: Report) -> list[str]:
    r = report.ratios
    fork = r["fork_p50_large_over_small"]
    return [
        f"fork p50 ratio (10k / 10): {fork:.2f}  (target <= {FORK_RATIO_TARGET}: {verdict(fork)})",
        f"resume p50 ratio (10k / 10): {r['resume_p50_large_over_small']:.2f}",
        f"turn p50 / echo p50: sequential {r['turn_over_echo_p50_sequential']:.1f}x, "
        f"concurrent {r['turn_over_echo_p50_concurrent']:.1f}x",
    ]


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}"


def table_row(s: Series) -> str:
    return (
        f"  {s.name:<34} {len(s.latencies):>5} {ms(s.percentile(50)):>9} "
        f"{ms(s.percentile(99)):>9} {s.per_second:>8.0f}  {s.note}"
    ) + (f"\n{'':<8}CPU ms per call: {s.cpu_text()}" if s.cpu_ms else "")


def print_table(report: Report) -> None:
    print()
    for line in report.header:
        print(line)
    print(f"\n  {'figure':<34} {'n':>5} {'p50 ms':>9} {'p99 ms':>9} {'per s':>8}  note")
    for title, group in report.sections:
        print(f"{title}")
        for s in group:
            print(table_row(s))
    print()
    for line in ratio_lines(report):
        print(line)


def markdown(report: Report) -> str:
    lines = [f"**Spindle thread benchmark** ({report.header[0]})", ""]
    lines += [
        "| figure | n | p50 ms | p99 ms | per s | CPU ms per call |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for s in report.series():
        lines.append(
            f"| {s.name} | {len(s.latencies)} | {ms(s.percentile(50))} "
            f"| {ms(s.percentile(99))} | {s.per_second:.0f} | {s.cpu_text()} |"
        )
    lines.append("")
    lines += [f"- {line}" for line in ratio_lines(report) + report.header[1:]]
    return "\n".join(lines)


def as_json(report: Report, counts: Counts) -> dict[str, Any]:
    fork = report.ratios["fork_p50_large_over_small"]
    return {
        "header": report.header,
        "counts": dataclasses.asdict(counts),
        "figures": {s.name: s.as_json() for s in report.series()},
        "ratios": {k: round(v, 3) for k, v in report.ratios.items()},
        "fork_ratio_target": FORK_RATIO_TARGET,
        "fork_ratio_target_met": fork <= FORK_RATIO_TARGET,
    }


def header(command: str, synchronous: str, load_before: str) -> list[str]:
    today = datetime.date.today().isoformat()
    return [
        f"{today}, {os.cpu_count()} cores ({cpu_model()}), Python {platform.python_version()}, "
        f"grpcio {grpc.__version__}",
        f"command: {command}",
        "services: real processes on loopback (python -m model_service, python -m "
        f"thread_service), embedded provider, SQLite synchronous={synchronous}",
        "client: one grpc.aio channel per server, one asyncio loop; "
        "echo server: its own process too",
        f"load average (1 min): {load_before} before the run, {load_text()} after",
    ]


# -- main --------------------------------------------------------------------


async def build_parents(tmp: Path, cwd: Path, large_items: int) -> Parents:
    small = await build_parent(tmp / "data", tmp / "home", cwd, 10)
    large = await build_parent(tmp / "data", tmp / "home", cwd, large_items)
    return Parents(small, large, 10, large_items)


def run(counts: Counts, synchronous: str, command: str) -> Report:
    load_before = load_text()
    with tempfile.TemporaryDirectory(prefix="spindle-bench-") as name:
        tmp = Path(name)
        cwd = tmp / "work"
        cwd.mkdir()
        begin = time.perf_counter()
        parents = asyncio.run(build_parents(tmp, cwd, counts.large_items))
        built = time.perf_counter() - begin
        with running_services(tmp, synchronous) as services:
            report = asyncio.run(measure(services, parents, cwd, counts))
    report.header = header(command, synchronous, load_before)
    report.header.append(
        f"parents ({parents.small_items:,} and {parents.large_items:,} items) built before "
        "the service started: Threads.start, then SQLiteStore.begin_turn/finish_turn on its "
        f"data dir, a user message and a final answer per turn ({built:.1f} s)"
    )
    add_ratios(report)
    return report


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write figures here")
    parser.add_argument(
        "--sqlite-synchronous",
        default=ThreadServiceSettings().sqlite_synchronous,
        choices=["FULL", "NORMAL"],
        help="the thread-service's SQLite mode (default: the service's own default)",
    )
    # The echo server runs this module in a child process.
    parser.add_argument("--serve-echo", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--listen", default="127.0.0.1:0", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.serve_echo:
        asyncio.run(serve_echo(args.listen))
        return
    command = " ".join(["PYTHONPATH=. python bench/threads.py", *sys.argv[1:]])
    counts = QUICK if args.quick else FULL
    report = run(counts, args.sqlite_synchronous, command)
    print_table(report)
    print("\n--- markdown ---\n")
    print(markdown(report))
    if args.json is not None:
        args.json.write_text(json.dumps(as_json(report, counts), indent=2) + "\n")
        print(f"\nfigures written to {args.json}")


if __name__ == "__main__":
    main()
