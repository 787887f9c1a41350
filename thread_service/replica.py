"""This process as one of the thread-service replicas sharing a store.

Each process has an id, the `owner` of the turns it runs. On a shared store
(PostgreSQL) it keeps a lease on them with a heartbeat every `lease / 3`
seconds, ends the running turns of replicas whose lease ran out (a process
that was killed), and watches for interrupts other replicas asked of its own
turns. On an exclusive store (SQLite) no other process can run turns, so it
only ends, at start, the turns a previous process left running.

A dead replica's turns are ended within `lease + lease / 3` seconds of its
last heartbeat; a replica starting up never ends turns of a live one.
Replicas' clocks must agree to well within the lease (NTP does).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable

from spindle.errors import SpindleError
from thread_service.store import Store

log = logging.getLogger(__name__)

ORPHANED = "the thread-service running the turn stopped"
INTERRUPT_POLL_SECONDS = 0.05


class Replica:
    def __init__(
        self,
        store: Store,
        *,
        lease: float,
        interrupt: Callable[[str, str], None],
        has_turns: Callable[[], bool],
        request_ttl: float = 86400.0,
    ) -> None:
        self.id = str(uuid.uuid4())
        self.store = store
        self.lease = lease
        self._interrupt = interrupt
        self._has_turns = has_turns
        self.request_ttl = request_ttl
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self.store.heartbeat(self.id)
        await self._end_orphans()
        if self.store.exclusive:
            self._tasks = [asyncio.create_task(self._probe())]
        else:
            self._tasks = [
                asyncio.create_task(self._keep_lease()),
                asyncio.create_task(self._watch_interrupts()),
            ]
        self._tasks.append(asyncio.create_task(self._forget_old_requests()))

    async def _forget_old_requests(self) -> None:
        """Drop request ids past their time, now and every tenth of it."""
        while True:
            try:
                await self.store.forget_requests(self.request_ttl)
            except SpindleError as exc:
                log.warning("could not drop old request ids: %s", exc.message)
            await asyncio.sleep(min(self.request_ttl / 10, 600.0))

    async def _probe(self) -> None:
        """While the store cannot write, try a small write every second, so
        that health turns back to SERVING as soon as it can."""
        while True:
            await asyncio.sleep(1.0)
            if not self.store.healthy:
                with contextlib.suppress(SpindleError):
                    await self.store.heartbeat(self.id)

    async def _end_orphans(self) -> None:
        ended = await self.store.end_orphaned_turns(ORPHANED, lease=self.lease, alive=self.id)
        if ended:
            log.warning("marked %d turn(s) of a stopped thread-service as interrupted", ended)

    async def _keep_lease(self) -> None:
        while True:
            await asyncio.sleep(self.lease / 3)
            try:
                await self.store.heartbeat(self.id)
                await self._end_orphans()
            except SpindleError as exc:
                log.warning("could not renew the turn lease: %s", exc.message)

    async def _watch_interrupts(self) -> None:
        while True:
            await asyncio.sleep(INTERRUPT_POLL_SECONDS)
            if not self._has_turns():
                continue
            try:
                requested = await self.store.interrupts_requested(self.id)
            except SpindleError as exc:
                log.warning("could not read interrupt requests: %s", exc.message)
                continue
            for turn_id, reason in requested:
                self._interrupt(turn_id, reason)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
