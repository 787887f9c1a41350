"""What every Spindle benchmark needs, in one place: the machine facts printed
beside the figures, series of latencies and their percentiles, a per-process
CPU meter, a runner for the processes under test, timing loops, and tables
printed for the terminal and as markdown.

The benchmarks print figures and assert nothing about timing, so that they can
run anywhere; what they compare is measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
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
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import grpc

from spindle.serving import CHANNEL_OPTIONS
from spindle.v1 import common_pb2
from spindle.v1 import thread_service_pb2 as thread_pb
from spindle.v1 import thread_service_pb2_grpc as thread_grpc

ROOT = Path(__file__).resolve().parent.parent

Call = Callable[[], Awaitable[None]]

# -- the machine -------------------------------------------------------------


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU of a process so far (all its threads, live or gone),
    from /proc; None where there is none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pids_matching(fragment: str) -> list[int]:
    """Processes whose command line holds `fragment` (say, the PostgreSQL
    backends serving one database, whose titles name it)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if fragment in entry.joinpath("cmdline").read_bytes().decode(errors="replace"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load_text() -> str:
    """The 1-minute load average: other work on the machine shows in every figure."""
    return f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "n/a"


def machine_line(**versions: str) -> str:
    """Date, cores, CPU and versions: the line a figure is meaningless without."""
    parts = [f"Python {platform.python_version()}", f"grpcio {grpc.__version__}"]
    parts += [f"{name} {version}" for name, version in versions.items()]
    return (
        f"{datetime.date.today().isoformat()}, {os.cpu_count()} cores ({cpu_model()}), "
        + ", ".join(parts)
    )


def load_line(before: str) -> str:
    return f"load average (1 min): {before} before the run, {load_text()} after"


# -- series ------------------------------------------------------------------


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


def ms(seconds: float, digits: int = 2) -> str:
    return f"{seconds * 1e3:.{digits}f}"


@dataclass
class Series:
    """Latencies of one figure (seconds), the wall time they took, and the CPU
    each process burned meanwhile (seconds, by label)."""

    name: str
    latencies: list[float] = field(default_factory=list)
    wall: float = 0.0
    note: str = ""
    cpu: dict[str, float] = field(default_factory=dict)

    def p(self, q: float) -> float:
        return percentile(self.latencies, q)

    @property
    def per_second(self) -> float:
        return len(self.latencies) / self.wall if self.wall else 0.0

    def cpu_ms_per_call(self) -> dict[str, float]:
        calls = max(1, len(self.latencies))
        return {k: v * 1e3 / calls for k, v in self.cpu.items()}

    def add_cpu(self, spent: Mapping[str, float]) -> None:
        for label, seconds in spent.items():
            self.cpu[label] = self.cpu.get(label, 0.0) + seconds

    def cpu_text(self, digits: int = 2) -> str:
        return ", ".join(f"{k} {v:.{digits}f}" for k, v in self.cpu_ms_per_call().items())

    def as_json(self, digits: int = 3) -> dict[str, Any]:
        return {
            "n": len(self.latencies),
            "p50_ms": round(self.p(50) * 1e3, digits),
            "p99_ms": round(self.p(99) * 1e3, digits),
            "per_second": round(self.per_second, 1),
            "wall_s": round(self.wall, 3),
            "note": self.note,
            "cpu_ms_per_call": {k: round(v, digits) for k, v in self.cpu_ms_per_call().items()},
        }


def p50_ratio(a: Series, b: Series) -> float:
    return a.p(50) / b.p(50)


# -- CPU ---------------------------------------------------------------------

Pids = int | Callable[[], Iterable[int]]


@dataclass(frozen=True)
class CpuMeter:
    """The CPU each labelled process burns during a figure: on a few cores,
    latency is mostly a matter of who burns the CPU. A label names one pid, or
    a function finding a group of them (CPU of a process that ends between two
    readings is lost; one that starts counts whole)."""

    pids: Mapping[str, Pids] = field(default_factory=dict)

    def only(self, *labels: str) -> CpuMeter:
        return CpuMeter({k: v for k, v in self.pids.items() if k in labels})

    def snapshot(self) -> dict[str, dict[int, float]]:
        readings: dict[str, dict[int, float]] = {}
        for label, pids in self.pids.items():
            found = [pids] if isinstance(pids, int) else list(pids())
            values = {pid: cpu_seconds(pid) for pid in found}
            readings[label] = {pid: v for pid, v in values.items() if v is not None}
        return readings

    @staticmethod
    def spent(
        before: Mapping[str, Mapping[int, float]], after: Mapping[str, Mapping[int, float]]
    ) -> dict[str, float]:
        return {
            label: sum(v - before[label].get(pid, 0.0) for pid, v in after[label].items())
            for label in before
            if after.get(label)
        }

    async def settle(self, quiet: float = 0.05, limit: float = 2.0) -> None:
        """Wait (up to `limit` seconds) until the watched processes other than
        this one burn no CPU for `quiet` seconds: what a call leaves behind
        (freeing a long history, a collection) is then charged to it, and the
        next figure starts on a quiet machine."""
        others = CpuMeter({k: v for k, v in self.pids.items() if v != os.getpid()})
        deadline = time.monotonic() + limit
        last = others.snapshot()
        while time.monotonic() < deadline:
            await asyncio.sleep(quiet)
            now = others.snapshot()
            if not any(others.spent(last, now).values()):
                return
            last = now

    @asynccontextmanager
    async def charging(self, series: Series, *, settle: bool = False) -> AsyncIterator[None]:
        """Charge the block's wall time and each process's CPU to `series`;
        with `settle`, only once the processes are quiet, before and after
        (the wall time stays the block's own)."""
        if settle:
            await self.settle()
        before = self.snapshot()
        start = time.perf_counter()
        yield
        series.wall += time.perf_counter() - start
        if settle:
            await self.settle()
        series.add_cpu(self.spent(before, self.snapshot()))


# -- timing ------------------------------------------------------------------


async def timed(call: Call, into: list[float]) -> None:
    begin = time.perf_counter()
    await call()
    into.append(time.perf_counter() - begin)


async def warm(calls: Iterable[Call]) -> None:
    """Run calls and drop their timings: first calls pay for connections and caches."""
    for call in calls:
        await call()


async def run_sequential(
    calls: Iterable[Call], series: Series, meter: CpuMeter | None = None, *, settle: bool = False
) -> list[float]:
    """Each call alone, one after another: latency is the service's, not a
    queue's. Adds to `series`; returns this block's latencies."""
    latencies: list[float] = []
    async with (meter or CpuMeter()).charging(series, settle=settle):
        for call in calls:
            await timed(call, latencies)
    series.latencies += latencies
    return latencies


async def run_concurrent(
    clients: Sequence[Sequence[Call]],
    series: Series,
    meter: CpuMeter | None = None,
    *,
    settle: bool = False,
) -> None:
    """One asyncio task per client, each making its calls back to back, all at once."""

    async def client(calls: Sequence[Call]) -> None:
        for call in calls:
            await timed(call, series.latencies)

    async with (meter or CpuMeter()).charging(series, settle=settle):
        await asyncio.gather(*(client(calls) for calls in clients))


@asynccontextmanager
async def channel(address: str) -> AsyncIterator[grpc.aio.Channel]:
    """The client style of every benchmark: one grpc.aio channel per server,
    with the services' own options, used from one asyncio loop."""
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as ch:
        await ch.channel_ready()
        yield ch


# -- processes ---------------------------------------------------------------

_LISTENING = re.compile(rb"listening on [^\s:]+:(\d+)")


class Process:
    """`python -m MODULE ARGS`, run from `cwd` (the project root by default, so
    that `bench` and `tests` import without PYTHONPATH), its stderr in a log
    file rather than a pipe: a pipe needs a reader thread in the client, which
    would take the GIL from its event loop on every log line."""

    def __init__(
        self,
        label: str,
        module: str,
        args: Sequence[str],
        log_dir: Path,
        *,
        cwd: Path = ROOT,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.label = label
        self.log = log_dir / f"{label}.log"
        self._log_file: IO[bytes] = self.log.open("wb")
        self._port: int | None = None
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=cwd,
            env={**os.environ, **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=self._log_file,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def port(self, timeout: float = 30.0) -> int:
        """The port of the first `listening on HOST:PORT` line the process logs."""
        deadline = time.monotonic() + timeout
        while self._port is None:
            match = _LISTENING.search(self.log.read_bytes())
            if match:
                self._port = int(match.group(1))
            elif self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.label} did not start:\n{self.log_text()}")
            else:
                time.sleep(0.02)
        return self._port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port()}"

    def wait_serving(self, address: str, timeout: float = 30.0) -> None:
        """Wait until the gRPC port answers, for a process that does not log
        its port (a service logging at WARNING or above)."""
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(address) as ch:
            while self.proc.poll() is None and time.monotonic() < deadline:
                try:
                    grpc.channel_ready_future(ch).result(timeout=0.2)
                    return
                except grpc.FutureTimeoutError:
                    continue
        raise RuntimeError(f"{self.label} did not start:\n{self.log_text()}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._log_file.close()


def free_port() -> int:
    """A free loopback port, for a process that will not log the one it took."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- tables ------------------------------------------------------------------

Row = tuple[str, ...] | str  # cells, or the title of a section


@dataclass
class Table:
    """Rows under headers, aligned for the terminal or as markdown to paste
    into a note; `right` marks the columns that hold figures."""

    headers: Sequence[str]
    right: Sequence[bool] = ()
    rows: list[Row] = field(default_factory=list)

    def add(self, *cells: object) -> None:
        self.rows.append(tuple(str(c) for c in cells))

    def section(self, title: str) -> None:
        self.rows.append(title)

    def _is_right(self, column: int) -> bool:
        return column < len(self.right) and self.right[column]

    def text(self) -> str:
        cells = [tuple(self.headers), *(r for r in self.rows if isinstance(r, tuple))]
        widths = [max(len(r[i]) for r in cells if i < len(r)) for i in range(len(self.headers))]

        def line(row: tuple[str, ...]) -> str:
            parts = [
                c.rjust(widths[i]) if self._is_right(i) else c.ljust(widths[i])
                for i, c in enumerate(row)
            ]
            return "  " + "  ".join(parts).rstrip()

        out = [line(tuple(self.headers))]
        out += [row if isinstance(row, str) else line(row) for row in self.rows]
        return "\n".join(out)

    def markdown(self) -> str:
        rule = ["---:" if self._is_right(i) else "---" for i in range(len(self.headers))]
        out = [f"| {' | '.join(self.headers)} |", f"|{'|'.join(rule)}|"]
        for row in self.rows:
            cells = (f"**{row}**", *[""] * (len(self.headers) - 1)) if isinstance(row, str) else row
            out.append(f"| {' | '.join(cells)} |")
        return "\n".join(out)


def user_input(text: str) -> common_pb2.Item:
    return common_pb2.Item(message=common_pb2.Message(role=common_pb2.ROLE_USER, text=text))


def turn_request(thread_id: str, text: str) -> thread_pb.RunTurnRequest:
    """A RunTurn of one user message."""
    return thread_pb.RunTurnRequest(thread_id=thread_id, input=[user_input(text)])


async def run_turn(
    stub: thread_grpc.ThreadServiceStub, thread_id: str, text: str
) -> thread_pb.TurnCompleted:
    """One RunTurn, its whole stream read: its end; a turn that did not
    complete is an error."""
    last = None
    async for response in stub.RunTurn(turn_request(thread_id, text)):
        if response.events:
            last = response.events[-1]
    if last is None or last.turn_completed.status != thread_pb.TURN_STATUS_COMPLETED:
        raise RuntimeError(f"turn on {thread_id} did not complete: {last}")
    completed: thread_pb.TurnCompleted = last.turn_completed
    return completed


def print_report(
    name: str,
    header: Sequence[str],
    sections: Sequence[tuple[str, Table]],
    lines: Sequence[str],
    lines_title: str = "Ratios and targets",
) -> None:
    """A benchmark's report: for the terminal, then as markdown for a note.
    `header[0]` is the machine line; `lines` are the ratios and targets."""
    print("\n" + "\n".join(header))
    for title, table in sections:
        print(f"\n{title}\n{table.text()}")
    print(f"\n{lines_title}")
    for line in lines:
        print(f"  {line}")
    print("\n--- markdown ---\n")
    print(markdown_report(name, header, sections, lines))


def markdown_report(
    name: str, header: Sequence[str], sections: Sequence[tuple[str, Table]], lines: Sequence[str]
) -> str:
    text = [f"**{name}** ({header[0]})"]
    for title, table in sections:
        text += ["", f"{title}:", "", table.markdown()]
    text += ["", *(f"- {line}" for line in lines)]
    text += [f"- {line}" for line in header[1:]]
    return "\n".join(text)


def arguments(doc: str | None) -> argparse.ArgumentParser:
    """The options every benchmark takes: `--quick` and `--json PATH`."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write figures here")
    return parser


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"\nfigures written to {path}")
