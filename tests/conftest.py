from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import LoopThread, Stack, start_stack

pytest_plugins = ["tests.upstream", "tests.postgres"]  # the `upstream` and PostgreSQL fixtures

# The shared checks in tests/rpc.py explain their failures as a test's asserts do.
pytest.register_assert_rewrite("tests.rpc")


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """Async tests (marked `anyio`) run on asyncio, as the services do."""
    return "asyncio"


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
