"""Spindle thread benchmark: forks, resumes and turns through real gRPC.

They are measured on SQLite and (with `--store`) on PostgreSQL, side by side,
against floors measured in the same run. Every server is a real process on
loopback: one model-service for the whole run, a thread-service per store
(three replicas on PostgreSQL), and the floors, bare `grpc.aio` servers
(`bench.floor`): a unary echo, and 1-hop and 2-hop (client, hop, echo)
streams of the messages a real short turn streams. The client is one
`grpc.aio` channel per server, driven from one asyncio loop. Long threads are
written through the store before the thread-service starts. Nothing is
asserted about timing.

    python -m bench.threads [--quick] [--store postgresql://USER@HOST:PORT/DB] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from bench import floor
from bench.history import Where, build_threads
from bench.report import SMALL_ITEMS, PostgresRun, Report, SQLiteRun
from bench.toolkit import (
    Call,
    CpuMeter,
    Pids,
    Process,
    Series,
    arguments,
    channel,
    load_text,
    pids_matching,
    run_concurrent,
    run_sequential,
    run_turn,
    turn_request,
    user_input,
    warm,
)
from spindle.v1 import model_service_pb2, model_service_pb2_grpc
from spindle.v1 import thread_service_pb2 as pb
from spindle.v1 import thread_service_pb2_grpc as pb_grpc
from tests.postgres import fresh_database
from thread_service.settings import ThreadServiceSettings

USER_TEXT = "hello, how are you today?"
SLOW_TEXT = "/slow 30 some text"  # the embedded provider streams it over 30 s
TURN_CPU = ("thread-service", "model-service", "client")


@dataclass(frozen=True)
class Counts:
    """How many of each measurement; `--quick` shrinks them for a smoke run."""

    forks: int
    resumes: int
    seq_turns: int
    seq_threads: int
    clients: int
    turns_per_client: int
    threads_per_client: int
    floor_seq: int
    floor_per_client: int
    probes: int
    warmup: int
    large_items: int
    long_items: tuple[int, ...]
    long_rounds: int
    replica_rounds: int
    interrupts: int


FULL = Counts(
    forks=200,
    resumes=200,
    seq_turns=300,
    seq_threads=100,
    clients=32,
    turns_per_client=20,
    threads_per_client=5,
    floor_seq=1000,
    floor_per_client=50,
    probes=200,
    warmup=20,
    large_items=10_000,
    long_items=(1_000, 10_000, 100_000),
    long_rounds=10,
    replica_rounds=2,
    interrupts=20,
)
QUICK = Counts(
    forks=30,
    resumes=30,
    seq_turns=40,
    seq_threads=20,
    clients=32,
    turns_per_client=2,
    threads_per_client=2,
    floor_seq=200,
    floor_per_client=10,
    probes=30,
    warmup=5,
    large_items=10_000,
    long_items=(1_000, 10_000),
    long_rounds=3,
    replica_rounds=1,
    interrupts=5,
)


# -- calls -------------------------------------------------------------------


def fork_call(stub: pb_grpc.ThreadServiceStub, parent_id: str) -> Call:
    async def call() -> None:
        fork = pb.ForkOptions(
            parent_spawn_call_id=f"call_{uuid.uuid4().hex[:12]}", mode=pb.FORK_MODE_FULL_HISTORY
        )
        await stub.SpawnThread(pb.SpawnThreadRequest(parent_id=parent_id, fork=fork))

    return call


def unary_call(method: Callable[[Any], Awaitable[object]], request: object) -> Call:
    """A unary call whose answer is dropped (ResumeThread, GetThread, the echo)."""

    async def call() -> None:
        await method(request)

    return call


def turn_call(stub: pb_grpc.ThreadServiceStub, thread_id: str) -> Call:
    """One RunTurn, its whole stream read; a turn that did not complete is an error."""

    async def call() -> None:
        await run_turn(stub, thread_id, USER_TEXT)

    return call


def stream_call(ch: grpc.aio.Channel, request: bytes) -> Call:
    method = ch.unary_stream(floor.STREAM_METHOD, request_serializer=floor.raw)

    async def call() -> None:
        async for _ in method(request):
            pass

    return call


async def start_threads(stub: pb_grpc.ThreadServiceStub, cwd: Path, count: int) -> list[str]:
    replies = [await stub.StartThread(pb.StartThreadRequest(cwd=str(cwd))) for _ in range(count)]
    return [reply.thread.id for reply in replies]


async def run_alternating(
    named: Sequence[tuple[str, Call]], rounds: int, meter: CpuMeter | None = None
) -> list[Series]:
    """The calls take turns, so drift over the run (WAL growth, page cache,
    CPU frequency) weighs on each of them alike; per s is one over the mean.
    With a meter, each call's CPU is read once the processes are quiet, so
    that a long call's aftermath is not charged to the next."""
    series = [Series(name) for name, _ in named]
    for _ in range(rounds):
        for s, (_, call) in zip(series, named, strict=True):
            await run_sequential([call], s, meter, settle=meter is not None)
    for s in series:
        s.wall = sum(s.latencies)
    return series


# -- processes ---------------------------------------------------------------


@dataclass
class Bench:
    """One run: its folder, its counts, and the processes it started, each
    stopped when the run ends (thread-services as soon as their store is done)."""

    tmp: Path
    counts: Counts
    synchronous: str
    stack: ExitStack
    cwd: Path = field(init=False)
    thread_services: list[Process] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.cwd = self.tmp / "work"
        self.cwd.mkdir()

    def start(self, label: str, module: str, args: Sequence[str]) -> Process:
        process = Process(label, module, ["--listen", "127.0.0.1:0", *args], self.tmp)
        self.stack.callback(process.stop)
        _ = process.port()
        return process

    def thread_service(self, model: Process, where: Where) -> Process:
        """One more thread-service on the store `where` names."""
        args = [*where.thread_args(model.address), "--sqlite-synchronous", self.synchronous]
        kind = "postgres" if where.postgres_url else "sqlite"
        label = f"thread-service-{kind}-{len(self.thread_services) + 1}"
        self.thread_services.append(self.start(label, "thread_service", args))
        return self.thread_services[-1]

    def stop_thread_services(self) -> None:
        for process in self.thread_services:
            process.stop()
        self.thread_services = []


# -- one store: forks, resumes, reads and turns ------------------------------


@dataclass(frozen=True)
class Parents:
    small: str
    large: str
    large_items: int


async def fork_child_length(stub: pb_grpc.ThreadServiceStub, parent_id: str) -> tuple[str, int]:
    """A fresh fork of the parent and its history length, as ResumeThread reports it."""
    fork = pb.ForkOptions(parent_spawn_call_id="call_check", mode=pb.FORK_MODE_FULL_HISTORY)
    reply = await stub.SpawnThread(pb.SpawnThreadRequest(parent_id=parent_id, fork=fork))
    resumed = await stub.ResumeThread(pb.ResumeThreadRequest(thread_id=reply.thread.id))
    return reply.thread.id, int(resumed.history_length)


async def measure_forks_and_resumes(
    stub: pb_grpc.ThreadServiceStub, parents: Parents, counts: Counts
) -> list[Series]:
    large = f"{parents.large_items:,}"
    forks = [
        (f"fork, parent of {SMALL_ITEMS} items", fork_call(stub, parents.small)),
        (f"fork, parent of {large} items", fork_call(stub, parents.large)),
    ]
    await warm([call for _, call in forks] * counts.warmup)
    series = await run_alternating(forks, counts.forks)
    child, length = await fork_child_length(stub, parents.large)
    if length != parents.large_items:
        # Not a timing check: a fork that lost history would make every figure moot.
        raise RuntimeError(f"a fork of the large parent holds {length} items, not {large}")
    resumes = [
        (f"resume, {SMALL_ITEMS} items", parents.small),
        (f"resume, {large} items", parents.large),
        (f"resume, fork of the {large} parent", child),
    ]
    named = [
        (name, unary_call(stub.ResumeThread, pb.ResumeThreadRequest(thread_id=thread_id)))
        for name, thread_id in resumes
    ]
    await warm([call for _, call in named] * counts.warmup)
    series += await run_alternating(named, counts.resumes)
    series[-1].note = f"{length:,} inherited items"
    return series


async def measure_turns(
    stubs: Sequence[pb_grpc.ThreadServiceStub],
    meter: CpuMeter,
    cwd: Path,
    counts: Counts,
    series: Series,
) -> None:
    """32 clients at once, each on threads of its own (a thread runs one turn
    at a time), client i on replica i mod len(stubs); fresh threads, warmed by
    one turn each, so histories stay short."""
    per = counts.threads_per_client
    owned = [await start_threads(stubs[i % len(stubs)], cwd, per) for i in range(counts.clients)]
    clients = [
        [turn_call(stubs[i % len(stubs)], ids[k % per]) for k in range(counts.turns_per_client)]
        for i, ids in enumerate(owned)
    ]
    await asyncio.gather(*(warm(calls[:per]) for calls in clients))
    end = 2 + 2 * -(-counts.turns_per_client // per)
    series.note = f"{per} threads per client, 2->{end} items"
    await run_concurrent(clients, series, meter, settle=True)


async def measure_store(
    stub: pb_grpc.ThreadServiceStub, meter: CpuMeter, parents: Parents, bench: Bench
) -> list[Series]:
    """The figures compared across stores, with one thread-service."""
    counts = bench.counts
    series = await measure_forks_and_resumes(stub, parents, counts)
    get = unary_call(stub.GetThread, pb.GetThreadRequest(thread_id=parents.small))
    await warm([get] * counts.warmup)
    series.append(Series("GetThread", note="unary read"))
    get_meter = meter.only("thread-service", "client")
    await run_sequential([get] * counts.probes, series[-1], get_meter, settle=True)
    # Sequential turns: one at a time over many threads, warmed by one turn each.
    ids = await start_threads(stub, bench.cwd, counts.seq_threads)
    await warm([turn_call(stub, t) for t in ids])
    calls = [turn_call(stub, ids[i % len(ids)]) for i in range(counts.seq_turns)]
    end = 2 + 2 * -(-counts.seq_turns // len(ids))
    series.append(Series("turn, sequential", note=f"{len(ids)} threads in turn, 2->{end} items"))
    await run_sequential(calls, series[-1], meter, settle=True)
    series.append(Series(f"turn, {counts.clients} concurrent"))
    await measure_turns([stub], meter, bench.cwd, counts, series[-1])
    return series


# -- floors, long threads and the model hop (run once, beside SQLite) --------


async def record_turn(stub: pb_grpc.ThreadServiceStub, cwd: Path) -> list[bytes]:
    """The messages a short turn streams, byte for byte, for the floors to stream."""
    (thread_id,) = await start_threads(stub, cwd, 1)
    return [e.SerializeToString() async for e in stub.RunTurn(turn_request(thread_id, USER_TEXT))]


def start_floors(bench: Bench, replies: Sequence[bytes]) -> tuple[Process, Process]:
    """The echo floor, and the hop that relays its stream."""
    path = bench.tmp / "turn-replies.json"
    floor.write_replies(path, replies)
    echo = bench.start("echo", "bench.floor", ["--replies", str(path)])
    hop = bench.start("hop", "bench.floor", ["--relay", echo.address])
    return echo, hop


async def measure_floors(
    echo: grpc.aio.Channel, hop: grpc.aio.Channel, meter: CpuMeter, counts: Counts, size: int
) -> list[Series]:
    """Each floor sequentially and with as many callers as the turns had clients."""
    request = turn_request(str(uuid.uuid4()), USER_TEXT).SerializeToString()
    unary = echo.unary_unary(floor.ECHO_METHOD, request_serializer=floor.raw)
    got = [
        m
        async for m in hop.unary_stream(floor.STREAM_METHOD, request_serializer=floor.raw)(request)
    ]
    if len(got) != size:
        raise RuntimeError(f"the 2-hop floor streamed {len(got)} messages, not {size}")
    floors = [
        ("unary echo", unary_call(unary, request), meter.only("echo", "client")),
        (f"stream of {size}, 1 hop", stream_call(echo, request), meter.only("echo", "client")),
        (
            f"stream of {size}, 2 hops",
            stream_call(hop, request),
            meter.only("echo", "hop", "client"),
        ),
    ]
    series = []
    for name, call, floor_meter in floors:
        await warm([call] * counts.warmup * 5)
        seq = Series(f"{name}, sequential")
        await run_sequential([call] * counts.floor_seq, seq, floor_meter, settle=True)
        conc = Series(f"{name}, {counts.clients} concurrent")
        clients = [[call] * counts.floor_per_client] * counts.clients
        await run_concurrent(clients, conc, floor_meter, settle=True)
        series += [seq, conc]
    return series


async def measure_model_hop(ch: grpc.aio.Channel, meter: CpuMeter, counts: Counts) -> Series:
    """The model-service alone, called directly with a first turn's prompt: the
    second hop of a turn, with its work."""
    stub = model_service_pb2_grpc.ModelServiceStub(ch)
    thread_id = str(uuid.uuid4())
    request = model_service_pb2.GenerateRequest(
        input=[user_input(USER_TEXT)],
        prompt_cache_key=thread_id,
        thread_id=thread_id,
        window_id=f"{thread_id}:0",
    )

    async def call() -> None:
        async for _ in stub.Generate(request):
            pass

    await warm([call] * counts.warmup)
    series = Series("Generate, model-service alone", note="1 hop, the embedded provider")
    model_meter = meter.only("model-service", "client")
    await run_sequential([call] * counts.probes, series, model_meter, settle=True)
    return series


async def measure_long_threads(
    stub: pb_grpc.ThreadServiceStub, meter: CpuMeter, long_ids: Sequence[str], bench: Bench
) -> list[Series]:
    """Turns on threads of growing length, taking turns with a short one (a
    fresh thread each round, warmed by one turn: 2 items)."""
    counts = bench.counts
    short = await start_threads(stub, bench.cwd, counts.long_rounds)
    await warm([turn_call(stub, t) for t in [*short, *long_ids]])
    shorts = iter(short)

    async def short_turn() -> None:
        await turn_call(stub, next(shorts))()

    named: list[tuple[str, Call]] = [("turn, 2-item thread", short_turn)]
    named += [
        (f"turn, {n:,}-item thread", turn_call(stub, thread_id))
        for n, thread_id in zip(counts.long_items, long_ids, strict=True)
    ]
    series = await run_alternating(named, counts.long_rounds, meter.only(*TURN_CPU))
    for s, n in zip(series[1:], counts.long_items, strict=True):
        s.note = f"{n + 2:,}->{n + 2 * counts.long_rounds:,} items"
    return series


async def measure_sqlite(
    bench: Bench, model: Process, parents: Parents, long_ids: Sequence[str]
) -> SQLiteRun:
    """The store's figures, then, beside the same thread-service: the floors
    (their stream is a real turn's), the model hop alone, and the long threads."""
    counts = bench.counts
    thread = bench.thread_service(model, Where(bench.tmp / "data", bench.tmp / "home"))
    pids = {"thread-service": thread.pid, "model-service": model.pid, "client": os.getpid()}
    async with channel(thread.address) as thread_ch, channel(model.address) as model_ch:
        stub = pb_grpc.ThreadServiceStub(thread_ch)
        store = await measure_store(stub, CpuMeter(pids), parents, bench)
        replies = await record_turn(stub, bench.cwd)
        echo, hop = start_floors(bench, replies)
        meter = CpuMeter({**pids, "echo": echo.pid, "hop": hop.pid})
        async with channel(echo.address) as echo_ch, channel(hop.address) as hop_ch:
            floors = await measure_floors(echo_ch, hop_ch, meter, counts, len(replies))
        floors.append(await measure_model_hop(model_ch, meter, counts))
        long = await measure_long_threads(stub, meter, long_ids, bench)
    return SQLiteRun(store, floors, long, len(replies))


# -- PostgreSQL: replicas and interrupts -------------------------------------


async def interrupt_once(
    runner: pb_grpc.ThreadServiceStub, asker: pb_grpc.ThreadServiceStub, cwd: Path
) -> float:
    """A 30-second turn on `runner`, interrupted through `asker` once it runs:
    seconds from sending InterruptTurn to the end of the turn's stream."""
    (thread_id,) = await start_threads(runner, cwd, 1)
    events = aiter(runner.RunTurn(turn_request(thread_id, SLOW_TEXT), timeout=60))
    first = (await anext(events)).events[0]
    if not first.HasField("turn_started"):
        raise RuntimeError(f"expected turn_started, got {first}")
    begin = time.perf_counter()
    interrupt = pb.InterruptTurnRequest(thread_id=thread_id, turn_id=first.turn_started.turn_id)
    await asker.InterruptTurn(interrupt)
    rest = [event async for response in events for event in response.events]
    last = rest[-1] if rest else first
    elapsed = time.perf_counter() - begin
    if last.turn_completed.status != pb.TURN_STATUS_INTERRUPTED:
        raise RuntimeError(f"the slow turn did not end interrupted: {last}")
    return elapsed


async def measure_interrupts(
    stubs: Sequence[pb_grpc.ThreadServiceStub], cwd: Path, tries: int
) -> list[Series]:
    """InterruptTurn sent to the replica running the turn, and to another one
    (which can only ask through the database), taking turns."""
    same = Series("InterruptTurn, same replica")
    other = Series("InterruptTurn, other replica")
    for k in range(tries):
        runner = stubs[k % len(stubs)]
        same.latencies.append(await interrupt_once(runner, runner, cwd))
        other.latencies.append(await interrupt_once(runner, stubs[(k + 1) % len(stubs)], cwd))
    for s in (same, other):
        s.wall = sum(s.latencies)
        s.note = "until the turn's stream ends INTERRUPTED"
    return [same, other]


async def measure_postgres(
    bench: Bench, model: Process, parents: Parents, where: Where
) -> PostgresRun:
    """The store's figures with one thread-service; then, with three on the same
    database, turns spread over them against turns on one, and interrupts."""
    counts = bench.counts
    database = where.postgres_url.rsplit("/", 1)[-1]

    def postgres() -> list[int]:
        # The server's processes serving this run's database (their titles name it).
        return pids_matching(f" {database} ")

    first = bench.thread_service(model, where)
    common: dict[str, Pids] = {
        "model-service": model.pid,
        "postgres": postgres,
        "client": os.getpid(),
    }
    meter = CpuMeter({"thread-service": first.pid, **common})
    async with channel(first.address) as ch:
        store = await measure_store(pb_grpc.ThreadServiceStub(ch), meter, parents, bench)
    replicas = [first, bench.thread_service(model, where), bench.thread_service(model, where)]
    pids = [r.pid for r in replicas]
    meter = CpuMeter({"thread-services": lambda: pids, **common})
    async with (
        channel(replicas[0].address) as a,
        channel(replicas[1].address) as b,
        channel(replicas[2].address) as c,
    ):
        stubs = [pb_grpc.ThreadServiceStub(ch) for ch in (a, b, c)]
        scaled = [
            Series(f"turn, {counts.clients} concurrent, 1 replica"),
            Series(f"turn, {counts.clients} concurrent, 3 replicas"),
        ]
        for _ in range(counts.replica_rounds):
            for n, series in zip((1, 3), scaled, strict=True):
                await measure_turns(stubs[:n], meter, bench.cwd, counts, series)
        interrupts = await measure_interrupts(stubs, bench.cwd, counts.interrupts)
    return PostgresRun(store, scaled, interrupts)


# -- main --------------------------------------------------------------------


def run(counts: Counts, synchronous: str, server_url: str, command: str) -> Report:
    load_before = load_text()
    with (
        tempfile.TemporaryDirectory(prefix="spindle-bench-") as name,
        ExitStack() as stack,
    ):
        bench = Bench(Path(name), counts, synchronous, stack)
        where = Where(bench.tmp / "data", bench.tmp / "home")
        sizes = [SMALL_ITEMS, counts.large_items, *counts.long_items]
        begin = time.perf_counter()
        small, large, *long_ids = asyncio.run(build_threads(where, bench.cwd, sizes))
        built = {"SQLite": time.perf_counter() - begin}
        parents = Parents(small, large, counts.large_items)
        model_home = str(bench.tmp / "model-home")
        model = bench.start("model-service", "model_service", ["--config-home", model_home])
        sqlite = asyncio.run(measure_sqlite(bench, model, parents, long_ids))
        bench.stop_thread_services()
        postgres = None
        if server_url:
            with fresh_database(server_url, "bench_") as url:
                where = Where(bench.tmp / "pg-data", bench.tmp / "pg-home", url)
                begin = time.perf_counter()
                small, large = asyncio.run(build_threads(where, bench.cwd, sizes[:2]))
                built["PostgreSQL"] = time.perf_counter() - begin
                parents = Parents(small, large, counts.large_items)
                try:
                    postgres = asyncio.run(measure_postgres(bench, model, parents, where))
                finally:
                    bench.stop_thread_services()
    return Report(
        counts=dataclasses.asdict(counts),
        command=command,
        synchronous=synchronous,
        load_before=load_before,
        built=built,
        sqlite=sqlite,
        postgres=postgres,
    )


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = arguments(__doc__)
    parser.add_argument(
        "--store",
        default="",
        metavar="postgresql://USER@HOST:PORT/DB",
        help="also measure on PostgreSQL: a server the run makes (and drops) a database on",
    )
    parser.add_argument(
        "--sqlite-synchronous",
        default=ThreadServiceSettings().sqlite_synchronous,
        choices=["FULL", "NORMAL"],
        help="the thread-service's SQLite mode (default: the service's own default)",
    )
    args = parser.parse_args(argv)
    if args.store and not args.store.startswith(("postgresql://", "postgres://")):
        parser.error("--store takes a postgresql:// URL (SQLite is always measured)")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    command = " ".join(["python -m bench.threads", *sys.argv[1:]])
    report = run(QUICK if args.quick else FULL, args.sqlite_synchronous, args.store, command)
    report.print()
    if args.json is not None:
        report.write_json(args.json)


if __name__ == "__main__":
    main()
