"""The examples people copy still work: examples/node/quickstart.mjs, run
with `node` against real services started as processes.

Skipped, saying why, when node or examples/node/node_modules is missing
(`npm ci --prefix examples/node` installs it), unless SPINDLE_REQUIRE_NODE=1
(set by .ci/run) makes that a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import ROOT, service_pair

EXAMPLE = ROOT / "examples" / "node"
REQUIRE_ENV = "SPINDLE_REQUIRE_NODE"
USAGE = re.compile(r"^  completed: \d+ input tokens \(\d+ cached\), \d+ output tokens$")


@pytest.fixture(scope="module")
def node() -> str:
    """The node binary, with examples/node installed; else skip (or fail)."""
    binary = shutil.which("node")
    if binary is None:
        reason = "node is not on PATH"
    elif not (EXAMPLE / "node_modules" / "@grpc" / "grpc-js").is_dir():
        reason = "examples/node/node_modules is missing: run `npm ci --prefix examples/node`"
    else:
        return binary
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1)")
    pytest.skip(reason)


def test_the_node_quickstart_starts_forks_and_streams(node: str, tmp_path: Path) -> None:
    deps = tmp_path / "proto-deps"
    subprocess.run(
        [sys.executable, "scripts/generate_protos.py", "--stage-imports", str(deps)],
        cwd=ROOT,
        check=True,
        timeout=60,
    )
    work = tmp_path / "work"
    work.mkdir()
    with service_pair(tmp_path) as (_, thread):
        env = {key: value for key, value in os.environ.items() if not key.startswith("SPINDLE_")}
        env |= {"SPINDLE_TARGET": thread.address, "SPINDLE_PROTO_DEPS": str(deps)}
        done = subprocess.run(
            [node, str(EXAMPLE / "quickstart.mjs")],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    started = re.fullmatch(r"started thread (\S+) \(prompt_cache_key (\S+)\)", lines[0])
    assert started is not None, done.stdout
    parent_id, parent_key = started.groups()
    assert parent_key == parent_id
    assert lines[1:3] == ["you: Hello from Node.js", "echo: Hello from Node.js"]
    assert USAGE.match(lines[3]), lines[3]
    forked = re.fullmatch(r"forked thread (\S+) \(prompt_cache_key (\S+)\)", lines[4])
    assert forked is not None, done.stdout
    fork_id, fork_key = forked.groups()
    # The fork carries its parent's key.
    assert (fork_key, fork_id != parent_id) == (parent_id, True)
    assert lines[5:7] == ["you: And hello from the fork", "echo: And hello from the fork"]
    assert USAGE.match(lines[7]), lines[7]
    assert len(lines) == 8
