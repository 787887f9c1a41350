"""The crash test (tests/crash.py) in a short form: kill -9 each service three
times while clients run turns; no acknowledged turn may be lost, no thread
may stay wedged, no record may be inconsistent and no service may log a
traceback. `python -m tests.crash --kills 20` is the long run."""

from __future__ import annotations

from pathlib import Path

from tests import crash


def test_kills_lose_no_acknowledged_turn_and_wedge_no_thread(
    tmp_path: Path, store_args: list[str]
) -> None:
    result = crash.crash(tmp_path, kills=3, clients=3, seed=20261126, store=store_args)
    table = result.table()
    assert (result.kills("thread-service"), result.kills("model-service")) == (3, 3), table
    assert len(result.tally.acknowledged) > 0, table
    assert result.lost == [], table
    assert result.wedged == [], table
    assert result.inconsistent == [], table
    assert result.tracebacks == [], table
