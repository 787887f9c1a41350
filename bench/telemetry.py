"""What observability costs a turn: the CPU time of the whole stack in one
process (a sync gRPC client, the thread-service on SQLite, the model-service
on the embedded provider), per short turn, with metrics and tracing off (the
default), with metrics on, and with tracing on too (spans exported over
OTLP/HTTP to a receiver in another process, tests/otlp.py). The modes take
turns, round after round, each on a fresh thread; what a mode adds is the
median over rounds of its difference from the "off" run of the same round,
so that a machine busy for a while weighs on both sides. Nothing is
asserted about timing.

    python -m bench.telemetry [--turns N] [--rounds R] [--hooks-only]

The modes are switched inside the one process (the metrics endpoint started
and stopped, the tracer set and unset), so the same servers serve them all.

On a busy machine a few tens of microseconds drown in that figure, so the
hooks are also timed alone: what one short turn calls of them (the edge's
observation of RunTurn and Generate, the turn's watch with a check per
event, six timed store transactions, the model call's record), in a loop,
with metrics off and on.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc

from model_service.telemetry import ModelCalls
from spindle import metrics, tracing
from spindle.model import Completed, ModelRequest, TextDelta, Usage
from spindle.v1 import thread_service_pb2_grpc as pb_grpc
from tests.harness import ROOT, LoopThread, start_stack
from tests.rpc import start, turn, user
from thread_service.events import TurnCompleted, TurnLog
from thread_service.records import TurnRecord, TurnStatus
from thread_service.telemetry import TurnWatch, timed

MODES = ("off", "metrics", "metrics+tracing")


@contextmanager
def receiver() -> Iterator[str]:
    """An OTLP/HTTP receiver in a process of its own: its endpoint."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.otlp"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    try:
        yield proc.stdout.readline().strip()
    finally:
        proc.stdin.close()
        proc.wait(30)


def switch(mode: str, tracer: object) -> Callable[[], None]:
    """Turn `mode` on; the function that turns it off again."""
    server = metrics.serve("127.0.0.1:0") if mode != "off" else None
    tracing.tracer = tracer if mode == "metrics+tracing" else None  # type: ignore[assignment]

    def off() -> None:
        tracing.tracer = None
        if server is not None:
            metrics.stop(server)

    return off


def cpu_per_turn(stub: pb_grpc.ThreadServiceStub, cwd: Path, turns: int) -> float:
    """CPU milliseconds of this process per turn, over `turns` turns of a new thread."""
    thread = start(stub, cwd)
    turn(stub, thread.id, user("warm up"))
    started = time.process_time()
    for n in range(turns):
        turn(stub, thread.id, user(f"hello, how are you today? {n}"))
    return (time.process_time() - started) * 1000 / turns


async def hooks_of_turns(turns: int) -> float:
    """Microseconds of CPU the observability hooks of one short turn take."""
    request = ModelRequest("spindle-echo", "", (), "key", "thread", "thread:0")
    usage = Usage(19, 0, 6)
    stream = [TextDelta("echo: ")] * 12 + [Completed(usage)]
    calls = ModelCalls(())
    rpc = [metrics.RpcMetrics(f"/spindle.v1.{name}") for name in ("T/RunTurn", "M/Generate")]

    async def transaction(script: Iterator[None]) -> None:
        pass

    def begin_turn() -> Iterator[None]:
        yield None

    store = timed(transaction)
    started = time.process_time()
    for n in range(turns):
        watch = TurnWatch(TurnRecord(str(n), "thread", TurnStatus.RUNNING, 0.0), request)
        log = TurnLog()

        async def play(watch: TurnWatch = watch, log: TurnLog = log) -> None:
            for event in stream:
                if watch.awaiting_first_token:
                    watch.first_token(event)
            log.append(TurnCompleted("turn", TurnStatus.COMPLETED, usage))

        for _ in range(6):
            await store(begin_turn())
        await watch.around(play(), log)
        call = calls.started(request)
        call.ended("embedded", "OK", usage, "")
        if metrics.on:
            for method in rpc:
                method.observe(grpc.StatusCode.OK, 0.001)
    return (time.process_time() - started) * 1e6 / turns


def print_hooks(turns: int) -> None:
    off = asyncio.run(hooks_of_turns(turns))
    server = metrics.serve("127.0.0.1:0")
    try:
        on = asyncio.run(hooks_of_turns(turns))
    finally:
        metrics.stop(server)
    print(f"\nThe hooks alone, per short turn ({turns} turns, the loop's own cost included)")
    print("| metrics | CPU us per turn | of a 1 ms turn |")
    print("|---|---:|---:|")
    for name, figure in (("off", off), ("on", on)):
        print(f"| {name} | {figure:.1f} | {figure / 1000:.1%} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.telemetry")
    parser.add_argument("--turns", type=int, default=200, help="turns per mode and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--hooks-only", action="store_true", help="only time the hooks alone")
    args = parser.parse_args(argv)
    if args.hooks_only:
        print_hooks(args.turns * 100)
        return
    figures: dict[str, list[float]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory() as tmp, receiver() as endpoint:
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
        tracing.setup("otlp", "bench")
        tracer = tracing.tracer
        tracing.tracer = None
        loop = LoopThread()
        stack = start_stack(loop, Path(tmp))
        try:
            with grpc.insecure_channel(f"127.0.0.1:{stack.thread_port}") as channel:
                stub = pb_grpc.ThreadServiceStub(channel)
                cpu_per_turn(stub, Path(tmp), 20)  # warm every path once
                for _ in range(args.rounds):
                    for mode in MODES:
                        off = switch(mode, tracer)
                        try:
                            figures[mode].append(cpu_per_turn(stub, Path(tmp), args.turns))
                        finally:
                            off()
        finally:
            stack.stop()
            loop.close()
            tracing.tracer = tracer
            tracing.shutdown()
    base = statistics.median(figures["off"])
    print(f"CPU per short turn, whole stack in one process ({args.rounds} rounds of {args.turns})")
    print("| mode | CPU ms per turn (median round) | added per turn (median of rounds) | vs off |")
    print("|---|---:|---:|---:|")
    for mode in MODES:
        median = statistics.median(figures[mode])
        added = statistics.median(
            ours - off for ours, off in zip(figures[mode], figures["off"], strict=True)
        )
        ratio = (base + added) / base
        print(f"| {mode} | {median:.3f} | {added * 1000:+.0f} us | {ratio:.3f}x |")
    print_hooks(args.turns * 100)
    print(f"load average (1 min) after the run: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
