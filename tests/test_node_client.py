"""The thread-service as a Node.js (@grpc/grpc-js) client sees it, through
real servers: long values are refused promptly and leave the connection
usable, and error details (ErrorInfo, RetryInfo, BadRequest) decode.

Each test runs tests/node/client.mjs with `node`. The tests skip, saying
why, when node or tests/node/node_modules is missing (`npm ci --prefix
tests/node` installs it), unless SPINDLE_REQUIRE_NODE=1 (set by .ci/run)
makes that a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from google.rpc import status_pb2

from spindle.auth import new_token, token_hash
from tests.harness import ROOT, ServiceProcess, service_pair, thread_process

NODE_DIR = ROOT / "tests" / "node"
REQUIRE_ENV = "SPINDLE_REQUIRE_NODE"
# The folder holding google/rpc/*.proto: googleapis-common-protos ships them.
GOOGLE_PROTOS = Path(status_pb2.__file__).resolve().parents[2]
# A call that takes longer than this is a hang, not a prompt answer.
PROMPT_MS = 5000

Call = dict[str, Any]


@pytest.fixture(scope="session")
def node() -> str:
    """The node binary, with tests/node installed; else skip (or fail)."""
    binary = shutil.which("node")
    if binary is None:
        reason = "node is not on PATH"
    elif not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        reason = "tests/node/node_modules is missing: run `npm ci --prefix tests/node`"
    else:
        return binary
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1)")
    pytest.skip(reason)


def run_client(node: str, target: str, scenario: str, *args: str) -> list[Call]:
    """The calls a scenario of the Node client made, as it reports them."""
    done = subprocess.run(
        [
            node,
            str(NODE_DIR / "client.mjs"),
            "--target",
            target,
            "--scenario",
            scenario,
            "--google-protos",
            str(GOOGLE_PROTOS),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    calls: list[Call] = json.loads(done.stdout)["calls"]
    return calls


def by_label(calls: list[Call]) -> dict[str, Call]:
    return {call["label"]: call for call in calls}


def test_long_values_are_invalid_argument_promptly_and_the_connection_goes_on(
    node: str, tmp_path: Path
) -> None:
    """A 20,000-character thread id, parent id, cwd, tool name or call id, of
    one-, two-, three- and four-byte characters and of control characters."""
    with service_pair(tmp_path) as (_, thread):
        calls = run_client(node, thread.address, "long-values", "--cwd", str(tmp_path))
    refused = [c for c in calls if not c["label"].startswith(("start", "after "))]
    assert len(refused) == 30
    for call in refused:
        assert call["codeName"] == "INVALID_ARGUMENT", call
        assert call["ms"] < PROMPT_MS, call
        # The value is quoted, cut: never echoed whole.
        assert call["detailsLength"] <= 1000, call
    for call in calls:
        if call["label"].startswith("after "):
            assert call["codeName"] == "OK", call
            assert call["ms"] < PROMPT_MS, call


def test_unauthenticated_is_readable_from_node(node: str, tmp_path: Path) -> None:
    token = new_token()
    principals = tmp_path / "principals.toml"
    principals.write_text(f'[principals.alice]\ntoken_sha256 = ["{token_hash(token)}"]\n')
    model = ServiceProcess("model_service", ["--config-home", str(tmp_path / "model-home")])
    try:
        thread = thread_process(
            model, tmp_path / "data", tmp_path / "home", "--auth-file", str(principals)
        )
        try:
            calls = by_label(run_client(node, thread.address, "auth", "--token", token))
        finally:
            thread.stop()
    finally:
        model.stop()
    assert calls["no token"]["codeName"] == "UNAUTHENTICATED"
    assert "credentials are required" in calls["no token"]["details"]
    assert calls["wrong token"]["codeName"] == "UNAUTHENTICATED"
    assert "not valid" in calls["wrong token"]["details"]
    # Past authentication: the thread does not exist, and the details say
    # which field named it.
    found = calls["valid token"]
    assert found["codeName"] == "NOT_FOUND"
    assert found["badRequest"] == [{"field": "thread_id", "description": found["details"]}]


def test_the_request_rate_limit_carries_error_info_and_retry_info(
    node: str, tmp_path: Path
) -> None:
    with service_pair(tmp_path, ["--rate-limit-requests", "1"]) as (_, thread):
        calls = by_label(run_client(node, thread.address, "rate-limit"))
    assert calls["first"]["codeName"] == "NOT_FOUND"
    limited = calls["second"]
    assert limited["codeName"] == "RESOURCE_EXHAUSTED"
    assert limited["errorInfo"] == {
        "reason": "RATE_LIMITED",
        "domain": "spindle.v1",
        "metadata": {"limit": "1 calls/min"},
    }
    # One call a minute: the next is allowed in about a minute.
    assert 30 < limited["retryDelaySeconds"] <= 60
    assert limited["ms"] < PROMPT_MS


def test_bad_request_and_failed_precondition_details_from_node(node: str, tmp_path: Path) -> None:
    limits = [
        "--max-item-bytes",
        "1000",
        "--max-turn-bytes",
        "1000",
        "--max-instructions-bytes",
        "1000",
        "--max-history-bytes",
        "4000",
    ]
    with service_pair(tmp_path, limits) as (_, thread):
        calls = run_client(node, thread.address, "details", "--cwd", str(tmp_path))
    labelled = by_label(calls)
    nickname = labelled["long nickname"]
    assert nickname["codeName"] == "INVALID_ARGUMENT"
    assert [v["field"] for v in nickname["badRequest"]] == ["agent_nickname"]
    unknown = labelled["unknown thread"]
    assert unknown["codeName"] == "NOT_FOUND"
    assert [v["field"] for v in unknown["badRequest"]] == ["thread_id"]
    refused = calls[-2]
    assert refused["label"].startswith("turn ")
    assert refused["codeName"] == "FAILED_PRECONDITION"
    assert "max_history_bytes" in refused["details"]
    info = refused["errorInfo"]
    assert (info["reason"], info["domain"], info["metadata"]["limit"]) == (
        "HISTORY_TOO_LARGE",
        "spindle.v1",
        "4000",
    )
    assert int(info["metadata"]["history_bytes"]) <= 4000
    assert labelled["after"]["codeName"] == "OK"


def test_model_errors_that_echo_long_non_ascii_text_keep_their_status(
    node: str, tmp_path: Path
) -> None:
    with service_pair(tmp_path) as (_, thread):
        calls = by_label(run_client(node, thread.address, "model-error", "--cwd", str(tmp_path)))
    for kind in ("euro", "emoji"):
        assert calls[f"after slow/{kind}"]["codeName"] == "OK"
        assert calls[f"after fail/{kind}"]["codeName"] == "OK"
        assert calls[f"slow/{kind}"]["codeName"] == "INVALID_ARGUMENT", calls[f"slow/{kind}"]
        assert calls[f"fail/{kind}"]["codeName"] == "UNAVAILABLE", calls[f"fail/{kind}"]


def test_watch_turn_and_v1_errors_from_node(node: str, tmp_path: Path) -> None:
    """A Node client whose connection dropped follows its turn with WatchTurn
    (no event lost or repeated) and reads the reasons of the v1 errors."""
    with service_pair(tmp_path) as (_, thread):
        calls = by_label(run_client(node, thread.address, "v1", "--cwd", str(tmp_path)))
    seen, rest = calls["dropped"]["events"], calls["watch"]["events"]
    assert calls["watch"]["codeName"] == "OK"
    whole = seen + rest
    assert [e["sequence"] for e in whole] == list(range(1, len(whole) + 1))
    assert whole[-1]["kind"] == "turn_completed"
    assert whole[-1]["status"] == "TURN_STATUS_COMPLETED"
    text = "".join(e.get("text", "") for e in whole)
    assert text == "echo: one two three four five six"
    ended = calls["interrupt ended"]
    assert (ended["codeName"], ended["errorInfo"]["reason"]) == (
        "FAILED_PRECONDITION",
        "TURN_NOT_RUNNING",
    )
    fork = calls["fork without call id"]
    assert fork["errorInfo"]["reason"] == "FORK_NEEDS_SPAWN_CALL_ID"
    assert fork["badRequest"][0]["field"] == "fork.parent_spawn_call_id"
    assert calls["first start"]["codeName"] == "OK"
    reused = calls["reused id"]
    assert (reused["codeName"], reused["errorInfo"]["reason"]) == (
        "INVALID_ARGUMENT",
        "REQUEST_ID_REUSED",
    )
