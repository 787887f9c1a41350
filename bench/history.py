"""Long threads for the thread benchmark, written through the store before the
thread-service starts: 100,000 items through gRPC would take 50,000 turns.

Each thread is started as the service starts one (`Threads.start`), then
grows by turns of a user message and a final answer (so that every item is
one a fork inherits), each turn written by the store's own operations
(`begin_turn`, `finish_turn`), many turns to a transaction.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from spindle.items import Message, Phase, Role
from spindle.model import Usage
from thread_service.records import Entry, TurnRecord, TurnStatus
from thread_service.settings import ThreadServiceSettings
from thread_service.stores import operations as ops
from thread_service.stores.backend import SQLITE_FILE_NAME
from thread_service.stores.postgres import PostgresStore
from thread_service.stores.sql_store import SqlStore
from thread_service.stores.sqlite import SQLiteStore
from thread_service.threads import Threads
from thread_service.trust import ProjectTrust

TURNS_PER_TRANSACTION = 500


@dataclass(frozen=True)
class Where:
    """The store the thread-service will open: a PostgreSQL URL, or else the
    default SQLite file in `data_dir`; and its config home (project trust)."""

    data_dir: Path
    config_home: Path
    postgres_url: str = ""

    def thread_args(self, model_address: str) -> list[str]:
        """The flags of a thread-service on this store, calling `model_address`."""
        store = ["--store", self.postgres_url] if self.postgres_url else []
        return [
            *("--model-service", model_address),
            *("--data-dir", str(self.data_dir)),
            *("--config-home", str(self.config_home)),
            *store,
        ]

    async def open(self) -> SqlStore:
        if self.postgres_url:
            return await PostgresStore.open(self.postgres_url)
        # No fsync while building: nothing here needs to survive a power cut.
        return await SQLiteStore.open(self.data_dir / SQLITE_FILE_NAME, "OFF")


def _turns(thread_id: str, first: int, count: int) -> ops.Script[None]:
    """`count` completed turns, as one script: the operations the service runs
    for each turn, chained in one transaction."""
    for i in range(first, first + count):
        now = time.time()
        turn = TurnRecord(str(uuid.uuid4()), thread_id, TurnStatus.RUNNING, now)
        question = f"question {i}: what does step {i} of the plan change?"
        yield from ops.begin_turn(turn, [Entry.of(Message(Role.USER, question))], now, None, None)
        answer = Message(Role.ASSISTANT, f"echo: {question}", Phase.FINAL_ANSWER)
        yield from ops.finish_turn(
            turn.id, TurnStatus.COMPLETED, Usage(), None, [Entry.of(answer)], [], now
        )


async def build_threads(where: Where, cwd: Path, lengths: Sequence[int]) -> list[str]:
    """Root threads of `lengths` items each (even numbers); their ids, in order."""
    store = await where.open()
    settings = ThreadServiceSettings()
    threads = Threads(
        store,
        ProjectTrust(where.config_home),
        default_model=settings.default_model,
        max_spawn_depth=settings.max_spawn_depth,
    )
    ids = []
    try:
        for length in lengths:
            thread_id = (await threads.start(str(cwd))).thread.id
            for first in range(0, length // 2, TURNS_PER_TRANSACTION):
                count = min(TURNS_PER_TRANSACTION, length // 2 - first)
                # The store runs one script per transaction; this one holds many turns.
                await store._run(_turns(thread_id, first, count))
            ids.append(thread_id)
    finally:
        await store.close()
    return ids
