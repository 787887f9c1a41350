"""The cache-affinity benchmark runs end to end: `python -m bench.affinity
--quick` as a process, from the project root, both policies on real services.
Only that it completes and reports each policy is checked; its figures are
the benchmark's to print, not the test's to judge."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from tests.harness import ROOT

POLICIES = ("ring_hash", "round_robin")


def test_the_quick_run_completes_and_reports_both_policies(tmp_path: Path) -> None:
    figures = tmp_path / "affinity.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.affinity", "--quick", "--json", str(figures)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,  # a hang guard, not a timing assertion
    )
    assert done.returncode == 0, done.stderr[-4000:]
    for policy in POLICIES:
        # Its row in each table, and its line under "Ratios and targets".
        assert len(re.findall(rf"^  {policy}  ", done.stdout, re.MULTILINE)) == 2, done.stdout
        line = rf"^  {policy}: inherited prompt tokens cached: [\d.]+%"
        assert re.search(line, done.stdout, re.MULTILINE), done.stdout
    assert "ratio ring_hash / round_robin" in done.stdout
    assert set(json.loads(figures.read_text())["policies"]) == set(POLICIES)
