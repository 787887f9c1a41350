from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import LoopThread, Stack, start_stack

pytest_plugins = ["tests.postgres"]


@pytest.fixture(scope="session")
def loop_thread() -> Iterator[LoopThread]:
    loop = LoopThread()
    yield loop
    loop.close()


@pytest.fixture
def stack(loop_thread: LoopThread, tmp_path: Path) -> Iterator[Stack]:
    running = start_stack(loop_thread, tmp_path)
    yield running
    running.stop()


from tests.upstream import upstream  # noqa: E402, F401  (the `upstream` fixture)


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"
