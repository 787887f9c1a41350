"""`Store` on a SQL database: each method runs one script of `operations` in
one transaction. A backend supplies `_run` (and opening and closing), and may
run scripts that only read, or that it can make again, its own way (`_read`,
`_write`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import ParamSpec

from spindle.model import Usage
from spindle.slices import pause, slices
from thread_service import telemetry
from thread_service.records import (
    Entry,
    RequestKey,
    StoredItem,
    ThreadRecord,
    TurnError,
    TurnRecord,
    TurnStatus,
)
from thread_service.store import ForkSource, ThreadFilter
from thread_service.stores import operations as ops
from thread_service.stores.operations import Script, T

P = ParamSpec("P")
# History items decoded at a time (see `read_history`): about 1 ms.
HISTORY_SLICE = 300


class SqlStore:
    """The domain operations; subclasses run the scripts."""

    exclusive = False

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        # False after a transaction failed for want of the database (a full
        # disk, a lost connection) until one succeeds; health follows it.
        self.healthy = True
        # Every transaction runs through here, timed by operation for the metrics.
        self._run = telemetry.timed(self._run)  # type: ignore[method-assign]

    async def _run(self, script: Script[T]) -> T:
        """Run a script in one transaction."""
        raise NotImplementedError

    async def _read(self, make: Callable[P, Script[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a script that only reads. Its statements need no transaction of
        their own: at READ COMMITTED each sees what was committed when it began,
        in a transaction or not. `make(*args, **kwargs)` makes the script, again
        if the backend must run it again."""
        return await self._run(make(*args, **kwargs))

    async def _lookup(self, make: Callable[P, Script[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a read of a row or two by key: what every call does first, so a
        backend may run it more cheaply still (see `sqlite.py`)."""
        return await self._read(make, *args, **kwargs)

    async def _write(self, make: Callable[P, Script[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a script in one transaction, making it again (`make(*args,
        **kwargs)`) if the backend must start the transaction over: what a
        script does depends only on its arguments and what its statements
        return, so a transaction that did not commit can run again."""
        return await self._run(make(*args, **kwargs))

    async def close(self) -> None:
        raise NotImplementedError

    async def create_thread(
        self, thread: ThreadRecord, request: RequestKey | None = None
    ) -> ThreadRecord:
        return await self._write(ops.create_thread, thread, request, self.clock())

    async def create_fork(
        self,
        child: ThreadRecord,
        source: ForkSource,
        request: RequestKey | None = None,
        spawn_fingerprint: str = "",
    ) -> ThreadRecord:
        return await self._write(
            ops.create_fork, child, source, request, spawn_fingerprint, self.clock()
        )

    async def get_thread(self, thread_id: str) -> ThreadRecord | None:
        return await self._lookup(ops.get_thread, thread_id)

    async def update_thread(self, thread: ThreadRecord) -> None:
        await self._write(ops.update_thread, thread)

    async def delete_thread(self, thread_id: str) -> None:
        await self._write(ops.delete_thread, thread_id)

    async def list_threads(
        self, which: ThreadFilter, after: tuple[float, str] | None, limit: int
    ) -> list[ThreadRecord]:
        return await self._read(ops.list_threads, which, after, limit)

    async def read_history(
        self,
        thread_id: str,
        offset: int = 0,
        limit: int | None = None,
        *,
        version: int | None = None,
    ) -> list[StoredItem]:
        """Reading rows is cheap; decoding them is not (50,000 items take
        about 150 ms of CPU). So the scripts only read, and the items are
        decoded here on the event loop, `HISTORY_SLICE` at a time with the loop
        free between slices: in one piece, on the loop, a long history would
        stall every other call of the process that long; in SQLite's store
        thread it would hold the GIL, and the loop would wait for it after
        each of its own system calls. A whole history (a turn's) is also read
        a slice at a time, each slice a read of its own: what a history is
        made of never changes once written (a fork's runs, a thread's own
        items below its version), so the slices make what one read would."""
        if offset or limit is not None:
            raw = await self._read(ops.read_history, thread_id, offset, limit, version)
            return [
                stored
                async for part in slices(raw, HISTORY_SLICE)
                for stored in ops.decode_items(part)
            ]
        return await self._read_whole_history(thread_id, version)

    async def _read_whole_history(self, thread_id: str, version: int | None) -> list[StoredItem]:
        found: list[StoredItem] = []
        for run in await self._read(ops.history_runs, thread_id, version):
            start, end = run.start, run.end
            assert end is not None  # history_runs gives each run its end
            while start < end:
                if found:
                    await pause()
                raw, start = await self._read(ops.read_run, run, start, HISTORY_SLICE)
                found += ops.decode_items(raw)
        return found

    async def history_length(self, thread_id: str) -> int:
        return await self._read(ops.history_length, thread_id)

    async def begin_turn(
        self,
        turn: TurnRecord,
        input_items: Sequence[Entry],
        *,
        request: RequestKey | None = None,
        version: int | None = None,
    ) -> tuple[TurnRecord, bool]:
        return await self._write(ops.begin_turn, turn, input_items, self.clock(), request, version)

    async def finish_turn(
        self,
        turn_id: str,
        status: TurnStatus,
        usage: Usage,
        error: TurnError | None,
        output_items: Sequence[Entry],
        events: Sequence[tuple[int, str]] = (),
    ) -> TurnRecord:
        return await self._write(
            ops.finish_turn, turn_id, status, usage, error, output_items, events, self.clock()
        )

    async def append_events(self, turn_id: str, events: Sequence[tuple[int, str]]) -> None:
        await self._write(ops.append_events, turn_id, events)

    async def read_events(self, turn_id: str, after: int = 0) -> list[tuple[int, str]]:
        return await self._read(ops.read_events, turn_id, after)

    async def get_turn(self, turn_id: str) -> TurnRecord | None:
        return await self._lookup(ops.get_turn, turn_id)

    async def running_turn(self, thread_id: str) -> TurnRecord | None:
        return await self._lookup(ops.running_turn, thread_id)

    async def list_turns(self, thread_id: str, offset: int, limit: int) -> list[TurnRecord]:
        return await self._read(ops.list_turns, thread_id, offset, limit)

    async def request_interrupt(self, turn_id: str, reason: str) -> bool:
        return await self._write(ops.request_interrupt, turn_id, reason)

    async def find_request(self, request: RequestKey) -> tuple[str, str] | None:
        return await self._lookup(ops.find_request, request)

    async def interrupts_requested(self, owner: str) -> list[tuple[str, str]]:
        return await self._read(ops.interrupts_requested, owner)

    async def heartbeat(self, owner: str) -> None:
        await self._write(ops.heartbeat, owner, self.clock())

    async def end_orphaned_turns(self, reason: str, *, lease: float, alive: str) -> int:
        return await self._write(
            ops.end_orphaned_turns,
            reason,
            self.clock(),
            lease=lease,
            alive=alive,
            exclusive=self.exclusive,
        )

    async def forget_requests(self, older_than: float) -> int:
        return await self._write(ops.forget_requests, self.clock() - older_than)
