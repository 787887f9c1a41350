"""The fairness benchmark runs end to end: `python -m bench.fairness --quick`
as a process, from the project root, on real services with a 50,000-item
thread. Only that it completes and prints its lines is checked; its figures
are the benchmark's to print, not the test's to judge."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from bench.fairness import HEAVY_KINDS
from tests.harness import ROOT


def test_the_quick_run_completes_and_prints_its_lines(tmp_path: Path) -> None:
    figures = tmp_path / "fairness.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.fairness", "--quick", "--json", str(figures)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,  # a hang guard, not a timing assertion
    )
    assert done.returncode == 0, done.stderr[-4000:]
    out = done.stdout
    for phase in ("round 1, unloaded", "round 1, busy core", "round 1, loaded"):
        assert re.search(rf"^  {phase} +\d+ +[\d.]+ +[\d.]+", out, re.MULTILINE), out
    for kind in HEAVY_KINDS:
        assert re.search(rf"^  {re.escape(kind)} +\d+", out, re.MULTILINE), out
    target = r"^  small turn p99, loaded / unloaded: [\d.]+x \(.*target <= 2x: (met|missed)\)"
    assert re.search(target, out, re.MULTILINE), out
    assert re.search(r"^  heavy client: \d+ whole rounds", out, re.MULTILINE), out
    assert re.search(r"^  for scale, one core busy in another process: ", out, re.MULTILINE), out
    assert "load average (1 min):" in out
    data = json.loads(figures.read_text())
    assert all(data["small"][phase]["n"] > 0 for phase in ("unloaded", "busy core", "loaded"))
    assert set(data["heavy"]) == set(HEAVY_KINDS)
