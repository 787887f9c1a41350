"""Spindle fairness benchmark: a small turn's latency while another client works a huge thread.

Issue 10. One model-service and one thread-service (SQLite, every setting at
its default) on loopback; a thread of 50,000 items written through the store
before the thread-service starts (`bench.history`). Each round runs three
phases, each on a freshly started thread-service (same data), so that every
loaded phase begins with the huge thread's history out of the
thread-service's cache:

- unloaded: this process, the small client, runs small turns one at a time,
  each on a fresh thread (`StartThread`, not timed, then the timed `RunTurn`);
- busy core: the same, while a process of no concern to Spindle burns one
  core: for scale, what CPU contention alone does to a small turn here;
- loaded: the same, while another client, a process of its own
  (`--heavy-client`), works the huge thread without pause, one call at a
  time: a turn on it (the first after the restart reads its whole history
  from the store), `ListThreadItems` through all of it, a full-history fork
  of it and the fork's first turn (a cold read of every inherited item, and
  all of them sent to the model-service), `GetThread` and `ResumeThread`.

It prints the small turns' p50 and p99 in each phase, the ratio of the
loaded p99 to the unloaded one against the target (at most 2x), what the
heavy client got done (calls per second and latency, by kind), and how many
cores each process used. Nothing is asserted about timing.

    python -m bench.fairness [--quick] [--json PATH]
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
import time
import uuid
from collections.abc import Awaitable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from bench.history import Where, build_threads
from bench.toolkit import (
    CpuMeter,
    Process,
    Series,
    Table,
    arguments,
    channel,
    load_line,
    load_text,
    machine_line,
    ms,
    print_report,
    run_turn,
    write_json,
)
from spindle.v1 import thread_service_pb2 as pb
from spindle.v1 import thread_service_pb2_grpc as pb_grpc

T = TypeVar("T")

NAME = "Spindle fairness benchmark"
TARGET_RATIO = 2.0  # loaded p99 / unloaded p99 of a small turn (issue 10)
PHASES = ("unloaded", "busy core", "loaded")
SMALL_TEXT = "hello, how are you today?"
HEAVY_TEXT = "and what does the next step of the plan change?"
WORKING = "heavy client: working"
BURNING = "busy core: burning"
HEAVY_KINDS = (
    "first turn on the huge thread",
    "turn on the huge thread",
    "ListThreadItems page",
    "fork of the huge thread",
    "fork's first turn",
    "GetThread",
    "ResumeThread",
)


@dataclass(frozen=True)
class Counts:
    """The run's size; `--quick` shrinks it for a smoke run."""

    items: int  # the huge thread's history
    rounds: int  # of the three phases
    seconds: float  # each phase's timed small turns run this long...
    turns: int  # ...and at least this many
    warmup: int  # untimed small turns at the start of each phase
    page_size: int  # ListThreadItems, the heavy client's pages


FULL = Counts(items=50_000, rounds=3, seconds=10.0, turns=200, warmup=20, page_size=1000)
QUICK = Counts(items=50_000, rounds=1, seconds=2.5, turns=20, warmup=5, page_size=1000)


# -- calls -------------------------------------------------------------------


async def timed(into: list[float], call: Awaitable[T]) -> T:
    begin = time.perf_counter()
    result = await call
    into.append(time.perf_counter() - begin)
    return result


# -- the heavy client (a process of its own) ---------------------------------


async def work_huge_thread(
    stub: pb_grpc.ThreadServiceStub,
    thread_id: str,
    page_size: int,
    latencies: dict[str, list[float]],
    cycles: list[int],
) -> None:
    """The heavy client's calls, one at a time, round after round, until
    cancelled. The first turn on the huge thread reads its whole history (the
    thread-service just started), later ones find it in its cache."""
    kinds = iter(HEAVY_KINDS)
    first, turn, listing, forking, fork_turn, get, resume = (latencies[k] for k in kinds)
    cold = True
    while True:
        await timed(first if cold else turn, run_turn(stub, thread_id, HEAVY_TEXT))
        cold = False
        token, listed = "", 0
        while True:
            request = pb.ListThreadItemsRequest(
                thread_id=thread_id, page_size=page_size, page_token=token
            )
            page = await timed(listing, stub.ListThreadItems(request))
            listed += len(page.items)
            token = page.next_page_token
            if not token:
                break
        fork = pb.ForkOptions(
            parent_spawn_call_id=f"call_{uuid.uuid4().hex[:12]}", mode=pb.FORK_MODE_FULL_HISTORY
        )
        spawn = pb.SpawnThreadRequest(parent_id=thread_id, fork=fork)
        child = await timed(forking, stub.SpawnThread(spawn))
        await timed(fork_turn, run_turn(stub, child.thread.id, HEAVY_TEXT))
        await timed(get, stub.GetThread(pb.GetThreadRequest(thread_id=thread_id)))
        await timed(resume, stub.ResumeThread(pb.ResumeThreadRequest(thread_id=thread_id)))
        cycles.append(listed)


async def heavy_client(address: str, thread_id: str, page_size: int) -> dict[str, Any]:
    """Work the huge thread until SIGTERM; what got done."""
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    latencies: dict[str, list[float]] = {kind: [] for kind in HEAVY_KINDS}
    cycles: list[int] = []
    async with channel(address) as ch:
        stub = pb_grpc.ThreadServiceStub(ch)
        print(WORKING, file=sys.stderr, flush=True)
        begin = time.perf_counter()
        worker = asyncio.create_task(
            work_huge_thread(stub, thread_id, page_size, latencies, cycles)
        )
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait([worker, stopped], return_when=asyncio.FIRST_COMPLETED)
        wall = time.perf_counter() - begin
        worker.cancel()
        failure = ""
        try:
            await worker
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # reported, and the run stops on it
            failure = f"{type(exc).__name__}: {exc}"
    return {"wall": wall, "latencies": latencies, "cycles": cycles, "failure": failure}


# -- the small client, one phase ---------------------------------------------


@dataclass
class Heavy:
    """What the heavy client got done in one loaded phase."""

    wall: float
    series: dict[str, Series]
    cycles: int
    items_listed: int

    @classmethod
    def read(cls, path: Path) -> Heavy:
        data = json.loads(path.read_text())
        if data["failure"]:
            raise RuntimeError(f"the heavy client failed: {data['failure']}")
        series = {kind: Series(kind, data["latencies"][kind], data["wall"]) for kind in HEAVY_KINDS}
        return cls(data["wall"], series, len(data["cycles"]), sum(data["cycles"]))


@dataclass
class Phase:
    round: int
    kind: str  # one of PHASES
    small: Series
    cores: dict[str, float]  # CPU seconds per second of the phase, by process
    load: str  # the machine's, as the phase began
    heavy: Heavy | None = None

    @property
    def name(self) -> str:
        return f"round {self.round}, {self.kind}"


@dataclass
class Services:
    tmp: Path
    where: Where
    model: Process
    huge: str
    counts: Counts
    started: int = 0

    def thread_service(self) -> Process:
        """A fresh thread-service on the run's data: nothing in its history cache."""
        self.started += 1
        args = ["--listen", "127.0.0.1:0", *self.where.thread_args(self.model.address)]
        process = Process(f"thread-service-{self.started}", "thread_service", args, self.tmp)
        _ = process.port()
        return process

    def heavy_client(self, address: str, out: Path) -> Process:
        args = [
            *("--heavy-client", address),
            *("--thread", self.huge),
            *("--page-size", str(self.counts.page_size)),
            *("--out", str(out)),
        ]
        return self._helper(f"heavy-client-{self.started}", args, WORKING)

    def busy_core(self) -> Process:
        """A process that burns one core until stopped (`--burn-core`)."""
        return self._helper(f"busy-core-{self.started}", ["--burn-core"], BURNING)

    def _helper(self, label: str, args: Sequence[str], ready: str) -> Process:
        """`python -m bench.fairness ARGS`, once it logged `ready`."""
        process = Process(label, "bench.fairness", args, self.tmp)
        deadline = time.monotonic() + 30
        while ready not in process.log_text():
            if process.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{label} did not start:\n{process.log_text()}")
            time.sleep(0.01)
        return process


async def small_turns(
    stub: pb_grpc.ThreadServiceStub,
    cwd: Path,
    count: int,
    into: list[float] | None,
    *,
    seconds: float = 0.0,
) -> None:
    """Small turns one at a time, each on a fresh thread (started untimed),
    until `count` are done and `seconds` have passed; timings into `into`."""
    begin = time.perf_counter()
    done = 0
    while done < count or time.perf_counter() - begin < seconds:
        started = await stub.StartThread(pb.StartThreadRequest(cwd=str(cwd)))
        turn = run_turn(stub, started.thread.id, SMALL_TEXT)
        if into is None:
            await turn
        else:
            await timed(into, turn)
        done += 1


async def measure_phase(
    services: Services, thread: Process, round_: int, kind: str, cwd: Path
) -> Phase:
    counts = services.counts
    pids = {"thread-service": thread.pid, "model-service": services.model.pid}
    pids["small client"] = os.getpid()
    small = Series(f"small turn, {kind}")
    heavy: Process | None = None
    burner: Process | None = None
    out = services.tmp / f"heavy-{services.started}.json"
    async with channel(thread.address) as ch:
        stub = pb_grpc.ThreadServiceStub(ch)
        await small_turns(stub, cwd, counts.warmup, None)
        await CpuMeter(pids).settle()
        load = load_text()
        if kind == "loaded":
            heavy = services.heavy_client(thread.address, out)
            pids["heavy client"] = heavy.pid
        elif kind == "busy core":
            burner = services.busy_core()
            pids["busy core"] = burner.pid
        meter = CpuMeter(pids)
        try:
            async with meter.charging(small):
                await small_turns(stub, cwd, counts.turns, small.latencies, seconds=counts.seconds)
        finally:
            for process in (heavy, burner):
                if process is not None:
                    process.stop()
    cores = {label: spent / small.wall for label, spent in small.cpu.items()}
    phase = Phase(round_, kind, small, cores, load)
    if heavy is not None:
        phase.heavy = Heavy.read(out)
    return phase


# -- the report --------------------------------------------------------------


def pooled(phases: Sequence[Phase], kind: str) -> Series:
    series = Series(f"small turn, {kind}, all rounds")
    for phase in phases:
        if phase.kind == kind:
            series.latencies += phase.small.latencies
            series.wall += phase.small.wall
    return series


def heavy_pooled(phases: Sequence[Phase]) -> dict[str, Series]:
    found = {kind: Series(kind) for kind in HEAVY_KINDS}
    for phase in phases:
        if phase.heavy is None:
            continue
        for kind, series in phase.heavy.series.items():
            found[kind].latencies += series.latencies
            found[kind].wall += phase.heavy.wall
    return found


def figures(series: Series) -> dict[str, Any]:
    """A series as JSON; one with no calls (a kind a short phase never got to) as n = 0."""
    return series.as_json() if series.latencies else {"n": 0, "wall_s": round(series.wall, 3)}


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


@dataclass
class Report:
    counts: Counts
    command: str
    load_before: str
    built: float
    phases: list[Phase]
    header: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.header = [
            machine_line(),
            f"command: {self.command}",
            "processes on loopback: one model-service (embedded provider) for the whole run; "
            "a thread-service (SQLite, default settings) started afresh for each phase on "
            "the same data; the small client (this process, one grpc.aio channel, one call "
            "at a time); in loaded phases the heavy client (a process of its own, one call "
            "at a time); in busy-core phases a process spinning a Python loop",
            f"the huge thread: {self.counts.items:,} items (user messages and final "
            f"answers) written through the store before the services started, in "
            f"{self.built:.1f} s",
            f"small turn: StartThread (not timed), then RunTurn with one short user "
            f"message on that fresh thread, timed from the request to the end of its "
            f"stream; {self.counts.warmup} untimed first in each phase, then for "
            f"{self.counts.seconds:g} s (and at least {self.counts.turns} turns)",
            f"heavy client, round after round: a turn on the huge thread, "
            f"ListThreadItems through all of it ({self.counts.page_size} a page), a "
            "full-history fork of it, the fork's first turn, GetThread, ResumeThread",
            load_line(self.load_before),
        ]

    def small_table(self) -> Table:
        table = Table(
            ["phase", "n", "p50 ms", "p99 ms", "max ms", "load", "cores used, by process"],
            [False, True, True, True, True, True, False],
        )
        for phase in self.phases:
            s = phase.small
            cores = ", ".join(f"{k} {v:.2f}" for k, v in phase.cores.items())
            table.add(phase.name, *self._figures(s), phase.load, cores)
        for kind in PHASES:
            s = pooled(self.phases, kind)
            table.add(s.name, *self._figures(s), "", "")
        return table

    @staticmethod
    def _figures(s: Series) -> tuple[str, ...]:
        return (str(len(s.latencies)), ms(s.p(50)), ms(s.p(99)), ms(max(s.latencies)))

    def heavy_table(self) -> Table:
        table = Table(
            ["call", "n", "p50 ms", "p99 ms", "max ms", "per s"],
            [False, True, True, True, True, True],
        )
        for kind, s in heavy_pooled(self.phases).items():
            if s.latencies:
                table.add(
                    kind,
                    len(s.latencies),
                    ms(s.p(50)),
                    ms(s.p(99)),
                    ms(max(s.latencies)),
                    f"{s.per_second:.2f}",
                )
            else:
                table.add(kind, 0, "", "", "", "0")
        return table

    def lines(self) -> list[str]:
        unloaded, busy, loaded = (pooled(self.phases, kind) for kind in PHASES)
        target = loaded.p(99) / unloaded.p(99) <= TARGET_RATIO
        found = [
            f"small turn p99, loaded / unloaded: {ratio(loaded.p(99), unloaded.p(99))} "
            f"({ms(loaded.p(99))} / {ms(unloaded.p(99))} ms; target <= {TARGET_RATIO:g}x: "
            f"{'met' if target else 'missed'})",
            f"small turn p50, loaded / unloaded: {ratio(loaded.p(50), unloaded.p(50))} "
            f"({ms(loaded.p(50))} / {ms(unloaded.p(50))} ms)",
        ]
        unloaded_by_round = {p.round: p for p in self.phases if p.kind == "unloaded"}
        per_round = [
            ratio(p.small.p(99), unloaded_by_round[p.round].small.p(99))
            for p in self.phases
            if p.kind == "loaded"
        ]
        found.append(f"p99 ratio of each round (loaded / its unloaded): {', '.join(per_round)}")
        found.append(
            f"for scale, one core busy in another process: small turn p99 "
            f"{ratio(busy.p(99), unloaded.p(99))} unloaded ({ms(busy.p(99))} ms), p50 "
            f"{ratio(busy.p(50), unloaded.p(50))} ({ms(busy.p(50))} ms)"
        )
        heavies = [p.heavy for p in self.phases if p.heavy is not None]
        wall = sum(h.wall for h in heavies)
        cycles = sum(h.cycles for h in heavies)
        listed = sum(h.items_listed for h in heavies)
        found.append(
            f"heavy client: {cycles} whole rounds in {wall:.1f} s of loaded phases "
            f"({listed:,} items listed)"
        )
        return found

    def sections(self) -> list[tuple[str, Table]]:
        return [
            (
                "Small turns on fresh threads, one at a time (load: the machine's 1-minute "
                "load average as the phase began; cores used: CPU seconds per second of the "
                "phase)",
                self.small_table(),
            ),
            (
                f"The heavy client on the {self.counts.items:,}-item thread, loaded phases "
                "together (per s: calls over the loaded phases' wall time)",
                self.heavy_table(),
            ),
        ]

    def print(self) -> None:
        print_report(NAME, self.header, self.sections(), self.lines(), lines_title="Target")

    def write_json(self, path: Path) -> None:
        unloaded, busy, loaded = (pooled(self.phases, kind) for kind in PHASES)
        write_json(
            path,
            {
                "header": self.header,
                "counts": dataclasses.asdict(self.counts),
                "target_p99_ratio": TARGET_RATIO,
                "p99_ratio": loaded.p(99) / unloaded.p(99),
                "p50_ratio": loaded.p(50) / unloaded.p(50),
                "small": {
                    "unloaded": unloaded.as_json(),
                    "busy core": busy.as_json(),
                    "loaded": loaded.as_json(),
                },
                "phases": [
                    {
                        "round": p.round,
                        "phase": p.kind,
                        "small": p.small.as_json(),
                        "cores": {k: round(v, 3) for k, v in p.cores.items()},
                        "load": p.load,
                        "heavy": None
                        if p.heavy is None
                        else {k: figures(s) for k, s in p.heavy.series.items()},
                    }
                    for p in self.phases
                ],
                "heavy": {k: figures(s) for k, s in heavy_pooled(self.phases).items()},
                "lines": self.lines(),
            },
        )


# -- main --------------------------------------------------------------------


def run(counts: Counts, command: str) -> Report:
    load_before = load_text()
    with tempfile.TemporaryDirectory(prefix="spindle-fairness-") as name, ExitStack() as stack:
        tmp = Path(name)
        cwd = tmp / "work"
        cwd.mkdir()
        where = Where(tmp / "data", tmp / "home")
        begin = time.perf_counter()
        (huge,) = asyncio.run(build_threads(where, cwd, [counts.items]))
        built = time.perf_counter() - begin
        model_args = ["--listen", "127.0.0.1:0", "--config-home", str(tmp / "model-home")]
        model = Process("model-service", "model_service", model_args, tmp)
        stack.callback(model.stop)
        _ = model.port()
        services = Services(tmp, where, model, huge, counts)
        phases = []
        for round_ in range(1, counts.rounds + 1):
            for kind in PHASES:
                thread = services.thread_service()
                try:
                    phases.append(asyncio.run(measure_phase(services, thread, round_, kind, cwd)))
                finally:
                    thread.stop()
    return Report(counts, command, load_before, built, phases)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = arguments(__doc__)
    # The heavy client's own options: `--heavy-client ADDRESS` runs this module as it.
    parser.add_argument("--heavy-client", metavar="ADDRESS", help=argparse.SUPPRESS)
    parser.add_argument("--thread", help=argparse.SUPPRESS)
    parser.add_argument("--page-size", type=int, default=1000, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--burn-core", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.burn_core:
        print(BURNING, file=sys.stderr, flush=True)
        while True:  # until SIGTERM
            pass
    if args.heavy_client:
        done = asyncio.run(heavy_client(args.heavy_client, args.thread, args.page_size))
        args.out.write_text(json.dumps(done))
        return
    command = " ".join(["python -m bench.fairness", *sys.argv[1:]])
    report = run(QUICK if args.quick else FULL, command)
    report.print()
    if args.json is not None:
        report.write_json(args.json)


if __name__ == "__main__":
    main()
