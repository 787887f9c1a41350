"""Where a turn's CPU goes: both services under cProfile, real turns, the
functions that cost the most.

    python -m bench.profile                 # 500 short turns
    python -m bench.profile --items 10000   # turns on a thread of 10,000 items

Each service runs as `python -m cProfile -o FILE -m SERVICE`, so the figures
include cProfile's own overhead (it slows Python code by about 1.5-2x):
compare shares, not absolute times, and compare with `bench.threads` for
those. The profiles stay in the temporary folder printed at the end, for
`python -m pstats FILE` or snakeviz.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import pstats
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.history import Where, build_threads
from bench.threads import start_threads, turn_call
from bench.toolkit import Process, channel, free_port, warm
from spindle.v1 import thread_service_pb2_grpc as pb_grpc

SORTS = ("tottime", "cumulative")


def start_profiled(label: str, module: str, args: Sequence[str], tmp: Path) -> Process:
    out = tmp / f"{label}.prof"
    return Process(label, "cProfile", ["-o", str(out), "-m", module, *args], tmp)


async def drive(address: str, thread_ids: Sequence[str], turns: int) -> None:
    async with channel(address) as ch:
        stub = pb_grpc.ThreadServiceStub(ch)
        calls = [turn_call(stub, thread_ids[i % len(thread_ids)]) for i in range(turns)]
        await warm(calls)


def summary(path: Path, turns: int, top: int) -> str:
    """The top functions by own time and by cumulative time, per turn."""
    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    total = stats.total_tt  # type: ignore[attr-defined]
    print(f"{path.stem}: {total / turns * 1000:.2f} ms of profiled CPU per turn", file=out)
    for sort in SORTS:
        print(f"\n-- by {sort}", file=out)
        stats.sort_stats(sort).print_stats(top)
    return out.getvalue()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--turns", type=int, default=500)
    parser.add_argument("--items", type=int, default=0, help="history length; 0: short threads")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="spindle-profile-"))
    where = Where(tmp / "data", tmp / "home")
    long_ids: list[str] = []
    if args.items:
        long_ids = asyncio.run(build_threads(where, tmp, [args.items]))
    model_address = f"127.0.0.1:{free_port()}"
    model = start_profiled("model-service", "model_service", ["--listen", model_address], tmp)
    model.wait_serving(model_address)
    thread_args = [*where.thread_args(model_address), "--listen", "127.0.0.1:0"]
    thread = start_profiled("thread-service", "thread_service", thread_args, tmp)
    try:

        async def run() -> None:
            async with channel(thread.address) as ch:
                ids = long_ids or await start_threads(pb_grpc.ThreadServiceStub(ch), tmp, 10)
            await drive(thread.address, ids, args.turns)

        asyncio.run(run())
    finally:
        thread.stop()
        model.stop()
    for label in ("thread-service", "model-service"):
        print(summary(tmp / f"{label}.prof", args.turns, args.top))
    print(f"profiles: {tmp}")


if __name__ == "__main__":
    main()
