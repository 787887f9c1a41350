"""The container health probe against a real in-process gRPC server: exit 0
only for SERVING, otherwise exit 1 with one line saying why."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2

from spindle import healthcheck, serving
from tests.harness import ROOT, LoopThread

SERVICE = "spindle.v1.ThreadService"


@pytest.fixture
def server(loop_thread: LoopThread) -> Iterator[serving.RunningServer]:
    def register(_: grpc.aio.Server) -> None:
        pass

    async def close() -> None:
        pass

    running = loop_thread.run(
        serving.start(serving.Service([SERVICE], register, close), "127.0.0.1:0")
    )
    yield running
    loop_thread.run(running.server.stop(0))


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def lines(text: str) -> list[str]:
    return text.splitlines()


def test_serving_exits_0_quietly(
    server: serving.RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert healthcheck.main([f"127.0.0.1:{server.port}"]) == 0
    assert healthcheck.main([f"0.0.0.0:{server.port}", SERVICE]) == 0
    assert capsys.readouterr().out == ""


def test_not_serving_exits_1_with_one_line(
    server: serving.RunningServer, loop_thread: LoopThread, capsys: pytest.CaptureFixture[str]
) -> None:
    # What a service does when SIGTERM arrives.
    loop_thread.run(server.health.enter_graceful_shutdown())
    assert healthcheck.main([f"127.0.0.1:{server.port}"]) == 1
    assert lines(capsys.readouterr().out) == [f"127.0.0.1:{server.port}: NOT_SERVING"]


def test_unknown_service_exits_1(
    server: serving.RunningServer, loop_thread: LoopThread, capsys: pytest.CaptureFixture[str]
) -> None:
    assert healthcheck.main([f"127.0.0.1:{server.port}", "no.such.Service"]) == 1
    assert lines(capsys.readouterr().out) == [
        f"127.0.0.1:{server.port} no.such.Service: SERVICE_UNKNOWN"
    ]
    loop_thread.run(server.health.set(SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING))
    assert healthcheck.main([f"127.0.0.1:{server.port}", SERVICE]) == 1
    assert "NOT_SERVING" in capsys.readouterr().out


def test_unreachable_exits_1_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    port = unused_port()
    assert healthcheck.main([f"127.0.0.1:{port}"]) == 1
    [line] = lines(capsys.readouterr().out)
    assert line.startswith(f"127.0.0.1:{port}: unreachable")


def test_bad_arguments_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert healthcheck.main(["--help"]) == 1
    assert healthcheck.main(["a:1", "b", "c"]) == 1
    assert capsys.readouterr().err.count("usage:") == 2


def test_without_an_address_it_probes_the_listen_variables(
    server: serving.RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """In a container of either service, the one of the two that answers."""
    free = unused_port()
    as_model = {
        "SPINDLE_THREAD_LISTEN": f"0.0.0.0:{free}",
        "SPINDLE_MODEL_LISTEN": f"0.0.0.0:{server.port}",
    }
    assert healthcheck.main([], as_model) == 0
    as_thread = {"SPINDLE_THREAD_LISTEN": f"0.0.0.0:{server.port}"}
    assert healthcheck.main([], as_thread) == 0
    nothing = {"SPINDLE_THREAD_LISTEN": f"0.0.0.0:{free}", "SPINDLE_MODEL_LISTEN": f":{free}"}
    assert healthcheck.main([], nothing) == 1
    [line] = lines(capsys.readouterr().out)
    assert line.count("unreachable") == 2


def test_runs_as_a_module(server: serving.RunningServer) -> None:
    """The command a HEALTHCHECK runs, in a process of its own."""
    ok = subprocess.run(
        [sys.executable, "-m", "spindle.healthcheck", f"127.0.0.1:{server.port}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (ok.returncode, ok.stdout) == (0, "")
    down = subprocess.run(
        [sys.executable, "-m", "spindle.healthcheck", f"127.0.0.1:{unused_port()}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert down.returncode == 1
    assert len(down.stdout.splitlines()) == 1
