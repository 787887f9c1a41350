"""Logs: `--log-format json` writes one parseable object a line, with the
thread and turn a line is about, and `--log-stream stdout` moves the logs to
stdout. Both services run as real processes."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc

from spindle.logs import JsonFormatter
from spindle.v1 import thread_service_pb2_grpc as pb_grpc
from tests.harness import ROOT, ServiceProcess, service_pair
from tests.rpc import raises_status, start, turn, user

SAID = "words that stay out of the logs"


def parsed(process: ServiceProcess) -> list[dict[str, Any]]:
    """Every line the process logged, each a JSON object with the four fields."""
    lines = [json.loads(line) for line in process.log_lines]
    for line in lines:
        assert {"time", "level", "logger", "message"} <= set(line), line
    return lines


def test_json_lines_carry_the_thread_and_turn_they_are_about(tmp_path: Path) -> None:
    thread_args = ["--log-format", "json", "--log-level", "DEBUG"]
    with (
        service_pair(tmp_path, thread_args, extra_model_args=["--log-format", "json"]) as pair,
        grpc.insecure_channel(pair[1].address) as channel,
    ):
        model, thread = pair
        stub = pb_grpc.ThreadServiceStub(channel)
        started = start(stub, tmp_path)
        completed = turn(stub, started.id, user(SAID))
        with raises_status(grpc.StatusCode.UNAVAILABLE):
            turn(stub, started.id, user("/fail UNAVAILABLE down for a moment"))
    turn_id = completed[0].turn_started.turn_id

    thread_lines = parsed(thread)
    ended = [line for line in thread_lines if line["message"].startswith("turn ended")]
    assert len(ended) == 2
    assert ended[0]["thread_id"] == started.id
    assert ended[0]["turn_id"] == turn_id
    assert "status=completed" in ended[0]["message"]
    assert ended[1]["thread_id"] == started.id
    assert ended[1]["turn_id"] not in ("", turn_id)  # the failed turn's own id
    assert "status=failed" in ended[1]["message"]
    assert thread_lines[0]["time"].endswith("Z")

    model_lines = parsed(model)
    requests = [line for line in model_lines if line["message"].startswith("generate ")]
    assert [line["thread_id"] for line in requests] == [started.id, started.id]
    assert [line["level"] for line in requests] == ["INFO", "INFO"]
    # Nothing a user said reaches either log, at any level.
    assert SAID not in thread.log_text() + model.log_text()


def test_text_stays_the_default(tmp_path: Path) -> None:
    model = ServiceProcess("model_service", ["--config-home", str(tmp_path)])
    _ = model.port
    model.stop()
    assert " INFO spindle.serving: model-service listening on 127.0.0.1:" in model.log_text()
    assert not model.log_text().startswith("{")


def test_logs_go_to_stdout_when_asked(tmp_path: Path) -> None:
    args = ["--listen", "127.0.0.1:0", "--config-home", str(tmp_path), "--log-stream", "stdout"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "model_service", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if "listening on" in line:
            break
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert "model-service stopped" in out
    assert err == ""


def test_a_json_line_holds_any_text_on_one_line() -> None:
    record = logging.LogRecord(
        "spindle.test",
        logging.WARNING,
        __file__,
        1,
        'a "quoted"\nsecond line %s',
        ("\x1b[2J",),
        None,
    )
    line = JsonFormatter().format(record)
    assert "\n" not in line
    assert json.loads(line)["message"] == 'a "quoted"\nsecond line \x1b[2J'
