"""compose.yaml for real: the image built from this tree, the services in
containers on a Docker engine, and calls from the host to the published port.

Skipped when no Docker engine answers, unless SPINDLE_REQUIRE_DOCKER=1 (set by
.ci/run) makes that a failure. Where scripts/docker-ci made the CI base images
(no image registry is reachable there), compose.ci.yaml maps the standard
images to them. The image is built once per session; every test runs its own
compose project, on free host ports, and removes it with its volumes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from spindle.v1 import common_pb2 as c
from spindle.v1 import thread_service_pb2 as pb
from spindle.v1 import thread_service_pb2_grpc as pb_grpc
from tests.harness import ROOT, wait_until
from tests.rpc import events_of
from thread_service.access import model_cache_key

# The lead flips this once the thread-service serves SPINDLE_STORE=postgresql://...
POSTGRES_STORE_MERGED = True

CI_BASE_IMAGES = ("spindle-ci/python:3.11-bookworm", "spindle-ci/postgres:15-bookworm")
TEST_IMAGE = "spindle:compose-test"
SHUTDOWN_GRACE = 3  # seconds; compose.yaml's stop_grace_period is 30
SECRETS = "/var/lib/spindle-secrets"
TENANT = "default"  # the tenant of the client token secrets-init makes
CWD = "/tmp"  # StartThread's cwd is a folder inside the thread-service's container

_REQUEST = re.compile(
    r"generate thread_id=(\S+) window_id=(\S+) prompt_cache_key=(\S+) sub_agent_kind=(\S+)"
)


def _run(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 600) -> str:
    result = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode:
        raise AssertionError(
            f"`{' '.join(cmd)}` exited {result.returncode}:\n{result.stdout}{result.stderr}"
        )
    return result.stdout


def _succeeds(cmd: list[str]) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=60, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Compose:
    """One compose project of this repository's compose files."""

    command: list[str]
    files: list[Path]
    env: dict[str, str]
    project: str = field(default_factory=lambda: f"spindle-test-{uuid.uuid4().hex[:10]}")
    profiles: list[str] = field(default_factory=list)

    def __call__(self, *args: str, timeout: float = 600) -> str:
        cmd = [*self.command, "-p", self.project, "--project-directory", str(ROOT)]
        cmd += [arg for f in self.files for arg in ("-f", str(f))]
        cmd += [arg for p in self.profiles for arg in ("--profile", p)]
        return _run([*cmd, *args], self.env, timeout)

    def with_profiles(self, *profiles: str) -> Compose:
        return Compose(self.command, self.files, self.env, self.project, list(profiles))

    def container(self, service: str) -> str:
        container_id = self("ps", "-a", "-q", service).strip()
        assert container_id, f"{service} has no container"
        return container_id

    def inspect(self, service: str) -> dict[str, Any]:
        return _inspect(self.container(service))

    def wait_healthy(self, *services: str) -> None:
        for service in services:
            _wait_healthy(self.container(service), partial(self.logs, service))

    def logs(self, service: str) -> str:
        return self("logs", "--no-color", service)


def _inspect(container: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = json.loads(_run(["docker", "inspect", container]))
    return found[0]


def _container_logs(container: str) -> str:
    """What the container wrote to stdout and stderr (the services log to stderr)."""
    result = subprocess.run(
        ["docker", "logs", container],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=60,
        check=False,
    )
    return result.stdout


def _wait_healthy(container: str, logs: Callable[[], str], timeout: float = 240) -> None:
    """Until Docker's health check reports the container healthy."""
    deadline = time.monotonic() + timeout
    while True:
        state = _inspect(container)["State"]
        health = state.get("Health", {}).get("Status")
        if health == "healthy":
            return
        if not state["Running"] or state["Restarting"] or time.monotonic() > deadline:
            raise AssertionError(f"{state['Status']}, health {health}:\n{logs()}")
        time.sleep(0.5)


@pytest.fixture(scope="session")
def compose_base() -> Compose:
    """The compose command, files and environment, with the image built."""
    problem = _docker_problem()
    if problem:
        if os.environ.get("SPINDLE_REQUIRE_DOCKER") == "1":
            pytest.fail(f"SPINDLE_REQUIRE_DOCKER=1 but {problem}")
        pytest.skip(problem)
    command = ["docker-compose"] if shutil.which("docker-compose") else ["docker", "compose"]
    files = [ROOT / "compose.yaml"]
    if all(_succeeds(["docker", "image", "inspect", image]) for image in CI_BASE_IMAGES):
        files.append(ROOT / "compose.ci.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "SPINDLE_"))}
    env.update(
        SPINDLE_IMAGE=TEST_IMAGE,
        SPINDLE_SHUTDOWN_GRACE=str(SHUTDOWN_GRACE),
        SPINDLE_HEALTH_INTERVAL="2s",
    )
    if not _succeeds(["docker", "buildx", "version"]):
        env["DOCKER_BUILDKIT"] = "0"  # the classic builder: no BuildKit without buildx
    base = Compose(command, files, env)
    # Both services use the one image; building it for one builds it for all.
    base("build", "model-service", timeout=1800)
    return base


def _docker_problem() -> str:
    """Why the compose tests cannot run here, or ""."""
    if not shutil.which("docker"):
        return "no docker command"
    if not (shutil.which("docker-compose") or _succeeds(["docker", "compose", "version"])):
        return "neither docker-compose nor `docker compose` is installed"
    if not _succeeds(["docker", "info"]):
        return "no Docker engine answers (`docker info` failed)"
    return ""


@pytest.fixture
def compose(compose_base: Compose) -> Iterator[Compose]:
    """A project of its own, on free ports, removed with its volumes at the end."""
    env = {**compose_base.env, "SPINDLE_PORT": str(_free_port())}
    env["SPINDLE_PG_PORT"] = str(_free_port())
    env["SPINDLE_METRICS_PORT"] = str(_free_port())
    env["SPINDLE_PG_METRICS_PORT"] = str(_free_port())
    project = Compose(compose_base.command, compose_base.files, env)
    try:
        yield project
    finally:
        project.with_profiles("postgres")("down", "--volumes", "--remove-orphans")


def _text(text: str) -> list[c.Item]:
    return [c.Item(message=c.Message(role=c.ROLE_USER, text=text))]


def _run_turn(stub: pb_grpc.ThreadServiceStub, thread_id: str, text: str) -> pb.TurnCompleted:
    request = pb.RunTurnRequest(thread_id=thread_id, input=_text(text))
    events = events_of(stub.RunTurn(request, timeout=60))
    return events[-1].turn_completed


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Prometheus samples by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def check_metrics(compose: Compose, thread_service: str, completed_turns: int) -> None:
    """The thread-service's metrics from the host, on its loopback only; the
    model-service's from inside its container (nothing of it is published)."""
    metrics_port = compose.env[
        "SPINDLE_PG_METRICS_PORT" if thread_service.endswith("-pg") else "SPINDLE_METRICS_PORT"
    ]
    published = _run(["docker", "port", compose.container(thread_service), "9464"]).split()
    assert published == [f"127.0.0.1:{metrics_port}"]
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=30) as response:
        thread_metrics = _samples(response.read().decode())
    completed = ("spindle_turns_total", frozenset({("status", "completed")}))
    assert thread_metrics[completed] == completed_turns
    run_turn = {"service": "spindle.v1.ThreadService", "method": "RunTurn", "code": "OK"}
    assert thread_metrics[("spindle_rpc_requests_total", frozenset(run_turn.items()))] == (
        completed_turns
    )
    scrape = (
        "import urllib.request; "
        "print(urllib.request.urlopen('http://127.0.0.1:9464/metrics').read().decode())"
    )
    model_metrics = _samples(compose("exec", "-T", "model-service", "python3", "-c", scrape))
    generated = {"provider": "embedded", "model": "spindle-echo", "code": "OK"}
    assert model_metrics[("spindle_model_requests_total", frozenset(generated.items()))] == (
        completed_turns
    )


def _requests_seen(log: str) -> list[tuple[str, ...]]:
    """(thread_id, window_id, prompt_cache_key, sub_agent_kind) per model request."""
    return [m.groups() for m in _REQUEST.finditer(log)]


def _drain(stream: Iterator[pb.RunTurnResponse]) -> str:
    """How a RunTurn stream ended: the final turn status or the RPC's code."""
    try:
        events = events_of(stream)
    except grpc.RpcError as exc:
        return str(exc.code())
    return pb.TurnStatus.Name(events[-1].turn_completed.status)


class _Bearer(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """Sends the deployment's client token with every call."""

    def __init__(self, token: str) -> None:
        self.metadata = [("authorization", f"Bearer {token}")]

    def _with_token(self, details: Any) -> Any:
        return details._replace(metadata=[*(details.metadata or []), *self.metadata])

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)


def client_token(compose: Compose, thread_service: str) -> str:
    """The token secrets-init made for clients, read inside the container."""
    return compose("exec", "-T", thread_service, "cat", SECRETS + "/client-token").strip()


def _channel(port: int, token: str) -> grpc.Channel:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    grpc.channel_ready_future(channel).result(timeout=30)
    return grpc.intercept_channel(channel, _Bearer(token))


def exercise_stack(compose: Compose, thread_service: str, port: int) -> None:
    """Start, fork and run turns through the published port, stop a turn midway
    with `docker stop`, replace the containers, and read the history back."""
    compose("up", "-d", thread_service)
    compose.wait_healthy("model-service", thread_service)

    # Only the thread-service is published (and its metrics, on loopback);
    # the model-service is internal.
    assert _run(["docker", "port", compose.container("model-service")]).strip() == ""
    published = _run(["docker", "port", compose.container(thread_service), "50051"])
    assert published.strip().endswith(f":{port}")
    backend = f"{compose.project}_backend"
    assert _run(["docker", "network", "inspect", "-f", "{{.Internal}}", backend]).strip() == "true"

    # Without the token secrets-init made, the published port refuses the call.
    token = client_token(compose, thread_service)
    assert token.startswith("spx_")
    with grpc.insecure_channel(f"127.0.0.1:{port}") as bare:
        anonymous = pb_grpc.ThreadServiceStub(bare)
        with pytest.raises(grpc.RpcError) as refused:
            anonymous.StartThread(pb.StartThreadRequest(cwd=CWD), timeout=30)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED

    with _channel(port, token) as channel:
        stub = pb_grpc.ThreadServiceStub(channel)
        root = stub.StartThread(pb.StartThreadRequest(cwd=CWD)).thread
        assert _run_turn(stub, root.id, "root turn").status == pb.TURN_STATUS_COMPLETED
        fork = stub.SpawnThread(
            pb.SpawnThreadRequest(
                parent_id=root.id, fork=pb.ForkOptions(parent_spawn_call_id="call_1")
            )
        ).thread
        assert fork.prompt_cache_key == root.id
        assert _run_turn(stub, fork.id, "fork turn").status == pb.TURN_STATUS_COMPLETED

    check_metrics(compose, thread_service, completed_turns=2)

    # The fork's model request carried its parent's key: the model-service says so.
    # (Under auth the key the model-service sees is scoped to the tenant.)
    key = model_cache_key(TENANT, root.id)
    fork_request = (fork.id, f"{fork.id}:0", key, "thread_spawn")
    wait_until(lambda: fork_request in _requests_seen(compose.logs("model-service")))

    # `docker stop` during a turn: the graceful stop records it as interrupted.
    thread_container = compose.container(thread_service)
    with _channel(port, token) as channel, ThreadPoolExecutor(1) as pool:
        stub = pb_grpc.ThreadServiceStub(channel)
        request = pb.RunTurnRequest(thread_id=root.id, input=_text("/slow 20 a slow answer"))
        stream = stub.RunTurn(request, timeout=60)
        assert next(stream).events[0].HasField("turn_started")
        ended = pool.submit(_drain, stream)
        time.sleep(1)
        started = time.monotonic()
        _run(["docker", "stop", thread_container])  # no -t: compose set the grace period
        stop_seconds = time.monotonic() - started
        how_it_ended = ended.result(timeout=30)
    # The stream ends when the turn is interrupted or when the server closes.
    assert how_it_ended in (
        "TURN_STATUS_INTERRUPTED",
        "StatusCode.UNAVAILABLE",
        "StatusCode.CANCELLED",
    )
    state = _inspect(thread_container)["State"]
    assert state["ExitCode"] == 0, compose.logs(thread_service)
    assert stop_seconds < SHUTDOWN_GRACE + 10, "the turn's grace did not bound the stop"
    assert "thread-service stopped" in compose.logs(thread_service)

    compose("start", thread_service)
    compose.wait_healthy(thread_service)
    with _channel(port, token) as channel:
        stub = pb_grpc.ThreadServiceStub(channel)
        turns = stub.ListTurns(pb.ListTurnsRequest(thread_id=root.id)).turns
        assert [t.status for t in turns] == [pb.TURN_STATUS_COMPLETED, pb.TURN_STATUS_INTERRUPTED]
        assert "shutting down" in turns[-1].error.message

    # New containers on the same volumes: the history is still there.
    compose("down")
    compose("up", "-d", thread_service)
    compose.wait_healthy("model-service", thread_service)
    with _channel(port, token) as channel:
        stub = pb_grpc.ThreadServiceStub(channel)
        items = stub.ListThreadItems(pb.ListThreadItemsRequest(thread_id=fork.id)).items
        assert [i.message.text for i in items] == [
            "root turn",
            "echo: root turn",
            "fork turn",
            "echo: fork turn",
        ]
        root_items = stub.ListThreadItems(pb.ListThreadItemsRequest(thread_id=root.id)).items
        assert [i.message.text for i in root_items][-1] == "/slow 20 a slow answer"
        assert stub.GetThread(pb.GetThreadRequest(thread_id=fork.id)).thread.prompt_cache_key == (
            root.id
        )
        assert _run_turn(stub, fork.id, "after restart").status == pb.TURN_STATUS_COMPLETED
    # The trust StartThread recorded lives in the config volume.
    config = compose("exec", "-T", thread_service, "cat", "/home/spindle/.spindle/config.toml")
    assert f'[projects."{CWD}"]' in config


def test_compose_stack_on_sqlite(compose: Compose) -> None:
    exercise_stack(compose, "thread-service", int(compose.env["SPINDLE_PORT"]))


@pytest.mark.skipif(not POSTGRES_STORE_MERGED, reason="PostgreSQL store not merged yet")
def test_compose_stack_on_postgres(compose: Compose) -> None:
    exercise_stack(
        compose.with_profiles("postgres"), "thread-service-pg", int(compose.env["SPINDLE_PG_PORT"])
    )


def test_model_service_replicas_keep_each_key_on_one(compose: Compose) -> None:
    """`--scale model-service=3`: the thread-service spreads the keys over the
    replicas, and every request of one key (a root's and its forks') reaches
    the same replica, whose prompt cache holds that key's prefix."""
    compose("up", "-d", "--scale", "model-service=3", "thread-service")
    replicas = compose("ps", "-q", "model-service").split()
    assert len(replicas) == 3
    for replica in replicas:
        _wait_healthy(replica, partial(_container_logs, replica))
    compose.wait_healthy("thread-service")
    port = int(compose.env["SPINDLE_PORT"])
    family: dict[str, str] = {}  # thread id -> its prompt_cache_key
    with _channel(port, client_token(compose, "thread-service")) as channel:
        stub = pb_grpc.ThreadServiceStub(channel)
        for n in range(12):
            root = stub.StartThread(pb.StartThreadRequest(cwd=CWD)).thread
            assert _run_turn(stub, root.id, f"root {n}").status == pb.TURN_STATUS_COMPLETED
            fork = stub.SpawnThread(
                pb.SpawnThreadRequest(
                    parent_id=root.id, fork=pb.ForkOptions(parent_spawn_call_id=f"call_{n}")
                )
            ).thread
            assert _run_turn(stub, fork.id, f"fork {n}").status == pb.TURN_STATUS_COMPLETED
            key = model_cache_key(TENANT, root.id)
            family.update({root.id: key, fork.id: key})

    def served() -> dict[str, set[str]]:
        """Per replica, the keys of the requests it logged."""
        seen = {r: {key for _, _, key, _ in _requests_seen(_container_logs(r))} for r in replicas}
        return seen

    wait_until(lambda: set().union(*served().values()) == set(family.values()))
    by_replica = served()
    for key in set(family.values()):
        holders = [r for r, keys in by_replica.items() if key in keys]
        assert len(holders) == 1, f"key {key} reached {len(holders)} replicas"
    assert sum(1 for keys in by_replica.values() if keys) >= 2, "one replica got every key"
    # Each fork's requests went where its parent's did, under the parent's key.
    for replica in replicas:
        for thread_id, _, key, _ in _requests_seen(_container_logs(replica)):
            assert family[thread_id] == key


def test_postgres_profile_database_keeps_its_data(compose: Compose) -> None:
    """The profile's PostgreSQL: healthy by pg_isready, reached by password over
    TCP as the thread-service would, and its volume outlives the container."""
    pg = compose.with_profiles("postgres")
    pg("up", "-d", "postgres")
    pg.wait_healthy("postgres")

    def sql(query: str) -> str:
        return pg(
            "exec", "-T", "-e", "PGPASSWORD=spindle", "postgres",
            "psql", "-h", "127.0.0.1", "-U", "spindle", "-d", "spindle", "-Atc", query,
        )  # fmt: skip

    sql("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('still here')")
    pg("down")
    pg("up", "-d", "postgres")
    pg.wait_healthy("postgres")
    assert sql("SELECT v FROM kept").strip() == "still here"
    assert pg.inspect("postgres")["Config"]["StopSignal"] == "SIGINT"


def test_image_alone(compose_base: Compose) -> None:
    """`docker run IMAGE model-service` without compose: its own user, healthy
    by the image's HEALTHCHECK (the probe finds the port), nothing of the build
    left behind, and `docker stop` ends it at once with status 0."""
    config = _inspect(TEST_IMAGE)["Config"]
    assert (config["User"], config["StopSignal"], config["Cmd"]) == (
        "spindle",
        "SIGTERM",
        ["thread-service"],
    )
    assert config["Healthcheck"]["Test"] == ["CMD", "python3", "-m", "spindle.healthcheck"]
    container = f"spindle-test-{uuid.uuid4().hex[:10]}"
    try:
        run = ["docker", "run", "-d", "--name", container, "--health-interval=1s"]
        run += ["-e", "SPINDLE_INSECURE_NO_AUTH=true"]  # it listens on 0.0.0.0
        _run([*run, TEST_IMAGE, "model-service"])
        _wait_healthy(container, lambda: _container_logs(container))
        assert _run(["docker", "exec", container, "id", "-un"]).strip() == "spindle"
        leftovers = _run(
            ["docker", "exec", "-u", "0", container, "sh", "-c",
             "ls -d /src /app-root /requirements.txt /root/.cache /home/spindle/.cache"
             " /opt/spindle/bin/pip /usr/bin/gcc /usr/bin/cc 2>/dev/null; true"],
        )  # fmt: skip
        assert leftovers == ""
        started = time.monotonic()
        _run(["docker", "stop", container])
        assert time.monotonic() - started < 10
        assert _inspect(container)["State"]["ExitCode"] == 0
        assert "model-service stopped" in _container_logs(container)
    finally:
        subprocess.run(["docker", "rm", "-f", "-v", container], capture_output=True, check=False)
