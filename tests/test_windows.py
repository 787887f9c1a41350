"""A turn sends the model-service only what is new since the window's last
request, through real in-process servers; when the model-service does not
hold that history any more, the turn sends all of it and is none the worse."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from model_service.settings import ModelServiceSettings
from spindle.v1 import thread_service_pb2 as pb
from tests.harness import LoopThread, start_stack
from tests.rpc import start, turn, user

_LINE = re.compile(r"input_items=(\d+) status=(\S+) .* sent_items=(\d+)")


def requests(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str, int]]:
    """(items of the whole history, status, items sent) per model request."""
    found = (_LINE.search(r.getMessage()) for r in caplog.records if r.name.endswith("requests"))
    return [(int(m[1]), m[2], int(m[3])) for m in found if m]


def three_turns(
    loop_thread: LoopThread, tmp_path: Path, model_settings: ModelServiceSettings
) -> list[pb.TurnCompleted]:
    stack = start_stack(loop_thread, tmp_path, model_settings=model_settings)
    try:
        thread = start(stack.threads, tmp_path)
        long = "the same words again " * 80
        return [
            turn(stack.threads, thread.id, user(f"{long} {n}"))[-1].turn_completed for n in range(3)
        ]
    finally:
        stack.stop()


def test_each_turn_sends_only_its_new_items(
    loop_thread: LoopThread, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="model_service.requests")
    settings = ModelServiceSettings(config_home=tmp_path / "model-home")
    done = three_turns(loop_thread, tmp_path, settings)
    assert [d.status for d in done] == [pb.TURN_STATUS_COMPLETED] * 3
    # The history grows by two items a turn; after the first, two are sent.
    assert requests(caplog) == [(1, "OK", 1), (3, "OK", 2), (5, "OK", 2)]
    # The prompt cache sees the whole history all the same.
    assert done[2].usage.cached_input_tokens >= 1024


def test_a_model_service_that_kept_nothing_gets_the_whole_history(
    loop_thread: LoopThread, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="model_service.requests")
    keeping = three_turns(
        loop_thread, tmp_path / "a", ModelServiceSettings(config_home=tmp_path / "a" / "home")
    )
    caplog.clear()
    forgetting = ModelServiceSettings(config_home=tmp_path / "b" / "home", window_cache_bytes=0)
    done = three_turns(loop_thread, tmp_path / "b", forgetting)
    assert requests(caplog) == [
        (1, "OK", 1),
        (2, "FAILED_PRECONDITION", 2),  # the base is not held: refused at once
        (3, "OK", 3),  # and sent whole
        (2, "FAILED_PRECONDITION", 2),
        (5, "OK", 5),
    ]
    assert [d.usage for d in done] == [d.usage for d in keeping]
