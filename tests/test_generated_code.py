"""The committed code in spindle/v1 is what grpcio-tools makes of protos/ now."""

from __future__ import annotations

import filecmp
from pathlib import Path

from scripts.generate_protos import ROOT, generate


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    generate(tmp_path)
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.py*"))
    committed_dir = ROOT / "spindle" / "v1"
    committed = sorted(p.relative_to(ROOT) for p in committed_dir.glob("*_pb2*.py*"))
    assert fresh == committed, "run: python scripts/generate_protos.py"
    stale = [str(p) for p in fresh if not filecmp.cmp(tmp_path / p, ROOT / p, shallow=False)]
    assert not stale, f"stale generated code {stale}; run: python scripts/generate_protos.py"
