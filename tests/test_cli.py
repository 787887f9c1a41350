"""The `spindle` command as people and scripts use it: run in a real
pseudo-terminal (pexpect), against real services started as processes.

Human output is read as a person would (tables, colour on a terminal only),
`--json` as a script would (one object per line), and `spindle chat` is
typed at: answers stream, Ctrl-C interrupts a turn, function calls are
answered by the user."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pexpect
import pytest

from spindle.auth import new_token, token_hash
from tests.certs import Authority
from tests.harness import ServiceProcess, service_pair, thread_process, wait_until

SPINDLE = Path(sys.executable).with_name("spindle")
UNKNOWN = "00000000-0000-4000-8000-000000000000"
# Wide enough that no table row wraps.
DIMENSIONS = (50, 250)
# Colour escape sequences: a foreground colour (30-37, 90-97, or 38;...).
COLOUR = re.compile(r"\x1b\[(?:[0-9;]*;)?(?:3[0-8]|9[0-7])(?:;[0-9;]*)?m")
USAGE_LINE = re.compile(r"completed · \d+ input tokens \(\d+ cached\), \d+ output tokens")


@dataclass
class Ran:
    """What a finished `spindle` printed on its terminal, and its exit status."""

    output: str
    status: int

    def json_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.output.splitlines() if line.startswith("{")]

    def json(self) -> dict[str, Any]:
        (only,) = self.json_lines()
        return only


def base_env(target: str = "", **extra: str) -> dict[str, str]:
    """The test's environment without SPINDLE_* or colour settings, on an xterm."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("SPINDLE_")
        and key not in ("NO_COLOR", "FORCE_COLOR", "COLUMNS", "TTY_COMPATIBLE")
    }
    env["TERM"] = "xterm-256color"
    if target:
        env["SPINDLE_TARGET"] = target
    return {**env, **extra}


def spawn(*args: str, env: dict[str, str], cwd: Path | None = None) -> pexpect.spawn[str]:
    if not SPINDLE.exists():
        pytest.fail(f"{SPINDLE} is missing: reinstall the package (pip install -e .)")
    return pexpect.spawn(
        str(SPINDLE),
        list(args),
        env=env,
        cwd=str(cwd) if cwd else None,
        encoding="utf-8",
        timeout=60,
        dimensions=DIMENSIONS,
    )


def finish(child: pexpect.spawn[str]) -> Ran:
    child.expect(pexpect.EOF)
    child.close()
    output = str(child.before).replace("\r\n", "\n")
    if child.exitstatus is not None:
        return Ran(output, child.exitstatus)
    assert child.signalstatus is not None
    return Ran(output, 128 + child.signalstatus)


def matched(child: pexpect.spawn[str], pattern: str) -> re.Match[str]:
    """What a regular expression matched in the terminal's output, once it appears."""
    child.expect(pattern)
    assert isinstance(child.match, re.Match)
    return child.match


def spindle(*args: str, env: dict[str, str], cwd: Path | None = None) -> Ran:
    """Run `spindle ARGS` to its end in a pseudo-terminal."""
    return finish(spawn(*args, env=env, cwd=cwd))


def plain(text: str) -> str:
    """Terminal output without its escape sequences, as a person reads it."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def chat(thread_id: str, *lines: str, env: dict[str, str]) -> Ran:
    """`spindle chat THREAD`, each line typed once the previous turn ended, then Ctrl-D."""
    child = spawn("chat", thread_id, env=env)
    for line in lines:
        child.expect_exact("you> ")
        child.sendline(line)
    child.expect_exact("you> ")
    child.sendeof()
    return finish(child)


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServiceProcess, str]]:
    """A model-service and a thread-service as processes; the thread-service's target."""
    with service_pair(tmp_path_factory.mktemp("services")) as (model, thread):
        yield model, thread.address


@pytest.fixture
def env(services: tuple[ServiceProcess, str]) -> dict[str, str]:
    return base_env(services[1])


@pytest.fixture
def work(tmp_path: Path) -> Path:
    folder = tmp_path / "work"
    folder.mkdir()
    return folder


def test_threads_in_json_output(env: dict[str, str], work: Path) -> None:
    run = uuid.uuid4().hex
    started = spindle(
        "threads", "start", "--cwd", str(work), "--label", f"run={run}", "--json", env=env
    )
    assert started.status == 0, started.output
    parent = started.json()["thread"]
    assert (parent["cwd"], parent["origin"]) == (str(work), "THREAD_ORIGIN_START")
    assert parent["metadata"] == {"run": run}
    assert parent["prompt_cache_key"] == parent["id"]
    assert chat(parent["id"], "first", "second", env=env).status == 0

    forked = spindle("threads", "fork", parent["id"], "--nickname", "Fay", "--json", env=env)
    fork = forked.json()["thread"]
    assert (fork["origin"], fork["parent_id"], fork["depth"]) == (
        "THREAD_ORIGIN_FORK",
        parent["id"],
        1,
    )
    assert fork["prompt_cache_key"] == parent["id"]
    assert fork["agent_nickname"] == "Fay"
    last = spindle("threads", "fork", parent["id"], "--last-n", "1", "--json", env=env).json()
    spawned = spindle("threads", "spawn", parent["id"], "--kind", "explorer", "--json", env=env)
    fresh = spawned.json()["thread"]
    assert (fresh["origin"], fresh["sub_agent_kind"]) == ("THREAD_ORIGIN_SPAWN", "explorer")
    assert fresh["prompt_cache_key"] == fresh["id"]

    # Lists are one object a line.
    children = spindle("threads", "list", "--parent", parent["id"], "--json", env=env)
    assert [t["id"] for t in children.json_lines()] == [
        fork["id"],
        last["thread"]["id"],
        fresh["id"],
    ]
    labelled = spindle("threads", "list", "--label", f"run={run}", "--json", env=env)
    assert [t["id"] for t in labelled.json_lines()] == [parent["id"]]

    # The fork inherited both turns, the last-1 fork one, the fresh spawn none.
    def texts(thread_id: str) -> list[str]:
        listed = spindle("threads", "items", thread_id, "--json", env=env)
        assert listed.status == 0, listed.output
        return [item["message"]["text"] for item in listed.json_lines()]

    assert texts(fork["id"]) == ["first", "echo: first", "second", "echo: second"]
    assert texts(last["thread"]["id"]) == ["second", "echo: second"]
    assert texts(fresh["id"]) == []

    shown = spindle("threads", "show", fork["id"], "--json", env=env).json()["thread"]
    assert (shown["id"], shown["prompt_cache_key"]) == (fork["id"], parent["id"])
    resumed = spindle("threads", "resume", fork["id"], "--json", env=env).json()
    assert resumed["thread"]["session_origin"] == "THREAD_ORIGIN_RESUME"
    assert resumed["thread"]["prompt_cache_key"] == fork["id"]
    assert resumed["history_length"] == "4"

    archived = spindle("threads", "archive", parent["id"], "--json", env=env).json()
    assert archived["thread"]["status"] == "THREAD_STATUS_ARCHIVED"
    assert spindle("threads", "list", "--label", f"run={run}", "--json", env=env).output == ""
    listed = spindle(
        "threads", "list", "--label", f"run={run}", "--status", "archived", "--json", env=env
    )
    assert [t["id"] for t in listed.json_lines()] == [parent["id"]]
    unarchived = spindle("threads", "unarchive", parent["id"], "--json", env=env).json()
    assert unarchived["thread"]["status"] == "THREAD_STATUS_ACTIVE"


def test_threads_in_human_output(env: dict[str, str], work: Path) -> None:
    run = uuid.uuid4().hex
    started = spindle(
        "threads",
        "start",
        "--cwd",
        str(work),
        "--nickname",
        "Ada",
        "--label",
        f"run={run}",
        env=env,
    )
    assert started.status == 0, started.output
    details = plain(started.output)
    parent_id = re.search(r"^id +(\S+)", details, re.M)
    assert parent_id is not None, details
    parent = parent_id.group(1)
    assert re.search(rf"^prompt cache key +{parent}\s*$", details, re.M)
    assert re.search(r"^nickname +Ada\s*$", details, re.M)
    assert re.search(rf"^cwd +{re.escape(str(work))}\s*$", details, re.M)
    assert chat(parent, "hello there", env=env).status == 0

    fork = plain(spindle("threads", "fork", parent, env=env).output)
    assert re.search(r"^origin +fork\s*$", fork, re.M)
    assert re.search(rf"^parent +{parent}\s*$", fork, re.M)
    assert re.search(rf"^prompt cache key +{parent}\s*$", fork, re.M)
    fresh = plain(spindle("threads", "spawn", parent, "--nickname", "Bo", env=env).output)
    assert re.search(r"^origin +spawn\s*$", fresh, re.M)
    assert re.search(r"^depth +1\s*$", fresh, re.M)

    listed = plain(spindle("threads", "list", "--parent", parent, env=env).output)
    header, *rows = listed.strip().splitlines()
    assert header.split() == [
        "ID",
        "PARENT",
        "ORIGIN",
        "DEPTH",
        "STATUS",
        "NICKNAME",
        "MODEL",
        "CREATED",
    ]
    assert [row.split()[1:5] for row in rows] == [
        [parent, "fork", "1", "active"],
        [parent, "spawn", "1", "active"],
    ]
    assert rows[1].split()[5] == "Bo"

    items = plain(spindle("threads", "items", parent, env=env).output)
    header, *rows = items.strip().splitlines()
    assert header.split() == ["TURN", "KIND", "TEXT"]
    assert [row.rstrip().split(None, 2)[1:] for row in rows] == [
        ["user", "hello there"],
        ["assistant", "echo: hello there"],
    ]

    shown = plain(spindle("threads", "archive", parent, env=env).output)
    assert re.search(r"^status +archived\s*$", shown, re.M)
    empty = spindle("threads", "list", "--label", f"run={run}", env=env)
    assert (empty.status, plain(empty.output).strip()) == (0, "no threads")


def test_colour_only_on_a_terminal_and_never_under_no_color(
    env: dict[str, str], work: Path
) -> None:
    thread = spindle("threads", "start", "--cwd", str(work), "--json", env=env).json()["thread"]
    coloured = spindle("threads", "show", thread["id"], env=env)
    assert COLOUR.search(coloured.output), coloured.output
    no_color = spindle("threads", "show", thread["id"], env=env | {"NO_COLOR": "1"})
    assert no_color.status == 0
    assert "active" in no_color.output
    assert not COLOUR.search(no_color.output), no_color.output
    piped = subprocess.run(
        [str(SPINDLE), "threads", "show", thread["id"]],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "active" in piped.stdout
    assert "\x1b" not in piped.stdout


def test_chat_streams_answers_interrupts_turns_and_answers_function_calls(
    env: dict[str, str], work: Path
) -> None:
    child = spawn("chat", "--tool", "lookup", env=env, cwd=work)
    try:
        thread_id = matched(child, r"thread (\S+) · ").group(1)
        child.expect_exact("you> ")
        child.sendline("hello")
        child.expect_exact("echo: hello")
        child.expect(USAGE_LINE)

        # The model calls a declared tool: the user types its output, which
        # goes back as the next turn's input.
        child.expect_exact("you> ")
        child.sendline('/call lookup {"q": 1}')
        called = matched(child, r"the model calls lookup\(\{\"q\": 1\}\) \[(call_\w+)\]")
        call_id = called.group(1)
        child.expect_exact("output of lookup> ")
        child.sendline("forty-two")
        child.expect_exact(f"received output of {call_id}: forty-two")
        child.expect(USAGE_LINE)

        # A slow answer is seen as it streams; Ctrl-C interrupts its turn.
        child.expect_exact("you> ")
        child.sendline("/slow 30 " + "word " * 100)
        child.expect_exact("echo: word")
        child.sendintr()
        child.expect_exact("interrupting the turn")
        child.expect(r"interrupted · \d+ input tokens \(\d+ cached\).*CANCELLED")
        child.expect_exact("you> ")

        turns = spindle("turns", thread_id, "--json", env=env).json_lines()
        assert [t["status"] for t in turns] == [
            "TURN_STATUS_COMPLETED",
            "TURN_STATUS_COMPLETED",
            "TURN_STATUS_COMPLETED",
            "TURN_STATUS_INTERRUPTED",
        ]
        assert all("cached_input_tokens" in t["usage"] for t in turns)
        items = spindle("threads", "items", thread_id, "--json", env=env).json_lines()
        answered = [item for item in items if "function_call_output" in item]
        assert [(a["function_call_output"], a["turn_id"]) for a in answered] == [
            ({"call_id": call_id, "output": "forty-two"}, turns[2]["id"])
        ]
        thread = spindle("threads", "show", thread_id, "--json", env=env).json()["thread"]
        assert thread["cwd"] == str(work)

        # A second Ctrl-C, here at the prompt, quits.
        child.sendintr()
        ran = finish(child)
    finally:
        child.close(force=True)
    assert ran.status == 130


def test_a_second_ctrl_c_during_a_turn_quits_and_the_turn_ends(
    env: dict[str, str], work: Path
) -> None:
    thread = spindle("threads", "start", "--cwd", str(work), "--json", env=env).json()["thread"]
    child = spawn("chat", thread["id"], env=env)
    try:
        child.expect_exact("you> ")
        child.sendline("/slow 60 " + "word " * 100)
        child.expect_exact("echo: word")
        child.sendintr()
        child.expect_exact("interrupting the turn")
        child.sendintr()
        ran = finish(child)
    finally:
        child.close(force=True)
    assert ran.status == 130

    def turn_ended() -> bool:
        turns = spindle("turns", thread["id"], "--json", env=env).json_lines()
        return [t["status"] for t in turns] == ["TURN_STATUS_INTERRUPTED"]

    wait_until(turn_ended, timeout=30)


def test_errors_are_one_line_with_an_exit_code_per_kind(env: dict[str, str]) -> None:
    missing = spindle("threads", "show", UNKNOWN, env=env)
    assert missing.status == 3
    (line,) = missing.output.strip().splitlines()
    assert line.startswith("spindle: NOT_FOUND: ")
    assert line.endswith("(THREAD_NOT_FOUND)")
    assert UNKNOWN in line
    assert spindle("turns", UNKNOWN, "--json", env=env).status == 3
    bad = spindle("threads", "show", "not-an-id", env=env)
    assert bad.status == 1
    assert bad.output.startswith("spindle: INVALID_ARGUMENT: ")
    assert len(bad.output.strip().splitlines()) == 1
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        nobody = f"127.0.0.1:{closed.getsockname()[1]}"
        unreachable = spindle("threads", "list", "--target", nobody, env=env)
    assert unreachable.status == 5
    assert unreachable.output.startswith("spindle: UNAVAILABLE: ")
    usage = spindle("threads", "fork", env=env)
    assert usage.status == 2
    assert "Missing argument 'PARENT'" in usage.output


def test_tokens_from_the_option_the_file_and_the_environment(
    services: tuple[ServiceProcess, str], tmp_path: Path
) -> None:
    token = new_token()
    principals = tmp_path / "principals.toml"
    principals.write_text(f'[principals.alice]\ntoken_sha256 = ["{token_hash(token)}"]\n')
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    model, _ = services
    thread = thread_process(
        model, tmp_path / "data", tmp_path / "home", "--auth-file", str(principals)
    )
    try:
        env = base_env(thread.address)
        missing = spindle("threads", "list", env=env)
        assert missing.status == 4
        assert missing.output.startswith("spindle: UNAUTHENTICATED: ")
        assert missing.output.strip().endswith("(CREDENTIALS_REQUIRED)")
        wrong = spindle("threads", "list", "--token", "spx_wrong", env=env)
        assert wrong.status == 4
        assert wrong.output.strip().endswith("(CREDENTIALS_INVALID)")
        for ran in (
            spindle("threads", "list", "--token", token, env=env),
            spindle("threads", "list", "--token-file", str(token_file), env=env),
            spindle("threads", "list", env=env | {"SPINDLE_TOKEN": token}),
            spindle("threads", "list", env=env | {"SPINDLE_TOKEN_FILE": str(token_file)}),
            # The command line wins over the environment.
            spindle("threads", "list", "--token", token, env=env | {"SPINDLE_TOKEN_FILE": "/"}),
        ):
            assert (ran.status, plain(ran.output).strip()) == (0, "no threads")
        both = spindle(
            "threads", "list", "--token", token, "--token-file", str(token_file), env=env
        )
        assert both.status == 2
    finally:
        thread.stop()


def test_mutual_tls(services: tuple[ServiceProcess, str], tmp_path: Path) -> None:
    ca = Authority(tmp_path / "pki")
    server = ca.issue("localhost", server=True)
    client = ca.issue("cli.acme.test", server=False)
    principals = tmp_path / "principals.toml"
    principals.write_text('[principals.cli]\nclient_cert_names = ["cli.acme.test"]\n')
    model, _ = services
    thread = thread_process(
        model,
        tmp_path / "data",
        tmp_path / "home",
        "--auth-file",
        str(principals),
        "--tls-cert",
        str(server.cert),
        "--tls-key",
        str(server.key),
        "--tls-client-ca",
        str(ca.path),
    )
    try:
        env = base_env(f"localhost:{thread.port}")
        tls = ["--tls-ca", str(ca.path)]
        mutual = [*tls, "--client-cert", str(client.cert), "--client-key", str(client.key)]
        ran = spindle("threads", "list", *mutual, env=env)
        assert (ran.status, plain(ran.output).strip()) == (0, "no threads")
        # Without a client certificate, or in plaintext, there is no connection.
        assert spindle("threads", "list", *tls, env=env).status == 5
        assert spindle("threads", "list", env=env).status == 5
    finally:
        thread.stop()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def up_env(tmp_path: Path) -> tuple[dict[str, str], int]:
    """An environment for `spindle up` on free ports in tmp_path; the thread-service's port."""
    model_port, thread_port = free_port(), free_port()
    env = base_env(
        f"127.0.0.1:{thread_port}",
        SPINDLE_MODEL_LISTEN=f"127.0.0.1:{model_port}",
        SPINDLE_MODEL_SERVICE=f"127.0.0.1:{model_port}",
        SPINDLE_CONFIG_HOME=str(tmp_path / "home"),
        SPINDLE_SHUTDOWN_GRACE="2",
    )
    return env, thread_port


def test_up_runs_both_services_and_ctrl_c_stops_them_in_order(tmp_path: Path) -> None:
    env, port = up_env(tmp_path)
    # Flags after `up` go to the thread-service.
    child = spawn(
        "up", "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "data"), env=env
    )
    try:
        listening = r"(model|thread)-service listening on (\S+)"
        seen = {}
        for _ in range(2):
            service, address = matched(child, listening).groups()
            seen[service] = address
        assert seen.keys() == {"model", "thread"}
        assert seen["thread"] == f"127.0.0.1:{port}"
        listed = spindle("threads", "list", env=env)
        assert (listed.status, plain(listed.output).strip()) == (0, "no threads")
        # Two presses: the second does not cut the ordered stop short.
        child.sendintr()
        child.sendintr()
        ran = finish(child)
    finally:
        if child.isalive():
            child.kill(signal.SIGTERM)
        child.close(force=True)
    assert ran.status == 0, ran.output
    stopped = [line for line in ran.output.splitlines() if line.endswith(" stopped")]
    assert [line.split()[-2] for line in stopped] == ["thread-service", "model-service"]
    assert (tmp_path / "data" / "spindle.sqlite3").exists()


def test_up_exits_with_the_status_of_a_service_that_failed(tmp_path: Path) -> None:
    env, _ = up_env(tmp_path)
    ran = spindle("up", "--max-spawn-depth", "many", env=env)
    assert ran.status == 1, ran.output
    assert "spindle up: the thread-service exited with status 1" in ran.output
    assert "model-service stopped" in ran.output
