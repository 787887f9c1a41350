"""Three thread-service processes on one PostgreSQL database behind one
model-service, as replicas behind a load balancer would run: any replica
serves any call, and what must be exclusive lives in the database."""

from __future__ import annotations

import itertools
import signal
import threading
import time
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from spindle.v1 import common_pb2 as c
from spindle.v1 import thread_service_pb2 as pb
from spindle.v1 import thread_service_pb2_grpc as pb_grpc
from tests.harness import ServiceProcess, service_pair, wait_until
from tests.proxy import TcpProxy
from tests.rpc import events_of, raises_status

LEASE = 2.0  # seconds: short, so that a killed replica's turns end quickly here


@dataclass
class Cluster:
    model: ServiceProcess
    replicas: list[ServiceProcess]
    stubs: list[pb_grpc.ThreadServiceStub]
    args: list[str]

    def start_replica(self) -> pb_grpc.ThreadServiceStub:
        replica = ServiceProcess("thread_service", self.args)
        self.replicas.append(replica)
        stub = pb_grpc.ThreadServiceStub(grpc.insecure_channel(replica.address))
        self.stubs.append(stub)
        return stub


@pytest.fixture
def cluster(tmp_path: Path, postgres_url: str) -> Iterator[Cluster]:
    with ExitStack() as stack:
        model = ServiceProcess("model_service", ["--config-home", str(tmp_path / "model-home")])
        stack.callback(model.stop)
        args = [
            "--model-service",
            model.address,
            "--store",
            postgres_url,
            "--turn-lease",
            str(LEASE),
            "--config-home",
            str(tmp_path / "home"),
        ]
        running = Cluster(model, [], [], args)
        for _ in range(3):
            running.start_replica()
        for replica in running.replicas:
            _ = replica.port
        yield running
        for replica in running.replicas:
            replica.stop(signal.SIGKILL if replica.proc.poll() is None else signal.SIGTERM)


def user(text: str) -> c.Item:
    return c.Item(message=c.Message(role=c.ROLE_USER, text=text))


def run_turn(stub: pb_grpc.ThreadServiceStub, thread_id: str, text: str) -> pb.TurnCompleted:
    request = pb.RunTurnRequest(thread_id=thread_id, input=[user(text)])
    events = events_of(stub.RunTurn(request, timeout=60))
    return events[-1].turn_completed


def start_slow_turn(
    stub: pb_grpc.ThreadServiceStub, thread_id: str, seconds: float
) -> tuple[Iterator[pb.RunTurnResponse], str]:
    """A turn that streams for `seconds`; its stream and turn id once it runs."""
    request = pb.RunTurnRequest(thread_id=thread_id, input=[user(f"/slow {seconds} a b c d e")])
    stream: Iterator[pb.RunTurnResponse] = stub.RunTurn(request, timeout=60)
    first = next(stream)
    return stream, first.events[0].turn_started.turn_id


def texts(stub: pb_grpc.ThreadServiceStub, thread_id: str) -> list[str]:
    found: list[str] = []
    token = ""
    while True:
        page = stub.ListThreadItems(
            pb.ListThreadItemsRequest(thread_id=thread_id, page_size=1000, page_token=token)
        )
        found.extend(item.message.text for item in page.items)
        token = page.next_page_token
        if not token:
            return found


def turn_status(stub: pb_grpc.ThreadServiceStub, thread_id: str, turn_id: str) -> int:
    turns = stub.ListTurns(pb.ListTurnsRequest(thread_id=thread_id)).turns
    status: int = next(t.status for t in turns if t.id == turn_id)
    return status


def test_a_turn_runs_on_one_replica_at_a_time(cluster: Cluster, tmp_path: Path) -> None:
    a, b, c_ = cluster.stubs
    root = a.StartThread(pb.StartThreadRequest(cwd=str(tmp_path))).thread
    stream, _ = start_slow_turn(a, root.id, 2)
    for other in (b, c_, a):
        with raises_status(grpc.StatusCode.FAILED_PRECONDITION, "already running"):
            run_turn(other, root.id, "me too")
    assert events_of(stream)[-1].turn_completed.status == pb.TURN_STATUS_COMPLETED

    # Started at once on two replicas: exactly one runs.
    outcomes: list[str] = []

    def attempt(stub: pb_grpc.ThreadServiceStub) -> None:
        try:
            run_turn(stub, root.id, "/slow 0.5 race")
            outcomes.append("ran")
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION, exc.details()
            outcomes.append("refused")

    for _ in range(5):
        outcomes.clear()
        racers = [threading.Thread(target=attempt, args=(stub,)) for stub in (b, c_)]
        for racer in racers:
            racer.start()
        for racer in racers:
            racer.join()
        assert sorted(outcomes) == ["ran", "refused"]


def test_interrupt_turn_works_from_any_replica(cluster: Cluster, tmp_path: Path) -> None:
    a, b, _ = cluster.stubs
    root = a.StartThread(pb.StartThreadRequest(cwd=str(tmp_path))).thread
    stream, turn_id = start_slow_turn(a, root.id, 30)
    asked = time.monotonic()
    interrupt = pb.InterruptTurnRequest(thread_id=root.id, turn_id=turn_id)
    assert b.InterruptTurn(interrupt).turn_id == turn_id
    last = events_of(stream)[-1]
    elapsed = time.monotonic() - asked
    assert last.turn_completed.status == pb.TURN_STATUS_INTERRUPTED
    assert elapsed < 5, elapsed
    (turn,) = b.ListTurns(pb.ListTurnsRequest(thread_id=root.id)).turns
    assert turn.error.message == "interrupted by InterruptTurn"
    assert texts(b, root.id) == ["/slow 30 a b c d e"]


def test_a_fork_on_one_replica_inherits_what_another_wrote(
    cluster: Cluster, tmp_path: Path
) -> None:
    a, b, c_ = cluster.stubs
    root = a.StartThread(pb.StartThreadRequest(cwd=str(tmp_path))).thread
    run_turn(a, root.id, "written on a")
    fork = b.SpawnThread(
        pb.SpawnThreadRequest(parent_id=root.id, fork=pb.ForkOptions(parent_spawn_call_id="c1"))
    ).thread
    assert fork.prompt_cache_key == root.id
    run_turn(c_, fork.id, "then on c")
    assert texts(a, fork.id) == [
        "written on a",
        "echo: written on a",
        "then on c",
        "echo: then on c",
    ]


def test_a_killed_replicas_turn_is_ended_by_the_others(cluster: Cluster, tmp_path: Path) -> None:
    a, b, _ = cluster.stubs
    root = b.StartThread(pb.StartThreadRequest(cwd=str(tmp_path))).thread
    _, turn_id = start_slow_turn(a, root.id, 60)
    # A replica starting up leaves the live replica's turn alone.
    late = cluster.start_replica()
    time.sleep(LEASE * 2)
    assert turn_status(late, root.id, turn_id) == pb.TURN_STATUS_RUNNING

    cluster.replicas[0].stop(signal.SIGKILL)
    killed = time.monotonic()
    wait_until(lambda: turn_status(b, root.id, turn_id) != pb.TURN_STATUS_RUNNING, timeout=15)
    # Within the documented bound: lease + lease / 3, plus a poll.
    assert time.monotonic() - killed < LEASE * 4 / 3 + 2
    assert turn_status(b, root.id, turn_id) == pb.TURN_STATUS_INTERRUPTED
    (turn,) = b.ListTurns(pb.ListTurnsRequest(thread_id=root.id)).turns
    assert turn.error.message == "the thread-service running the turn stopped"
    # The thread is not wedged: the next turn runs on any replica.
    assert run_turn(late, root.id, "again").status == pb.TURN_STATUS_COMPLETED


def test_a_thousand_turns_over_three_replicas_lose_and_repeat_nothing(
    cluster: Cluster, tmp_path: Path
) -> None:
    stubs = cluster.stubs
    threads = [
        stubs[0].StartThread(pb.StartThreadRequest(cwd=str(tmp_path))).thread.id for _ in range(40)
    ]
    turns_per_thread = 25
    replica_of = itertools.count()

    def work(thread_id: str) -> None:
        # Each thread's turns go round the replicas, so consecutive turns of one
        # thread land on different processes.
        for n in range(turns_per_thread):
            stub = stubs[next(replica_of) % len(stubs)]
            assert run_turn(stub, thread_id, f"{thread_id[:8]} turn {n}").status == (
                pb.TURN_STATUS_COMPLETED
            )

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(work, threads))
    total = 0
    for thread_id in threads:
        found = texts(stubs[1], thread_id)
        expected = []
        for n in range(turns_per_thread):
            question = f"{thread_id[:8]} turn {n}"
            expected += [question, f"echo: {question}"]
        assert found == expected
        total += len(found)
    assert total == 2 * 40 * turns_per_thread == 2000


def test_an_unreachable_database_is_unavailable_and_the_service_recovers(
    tmp_path: Path, postgres_url: str
) -> None:
    url = urllib.parse.urlsplit(postgres_url)
    with (
        TcpProxy(url.hostname or "127.0.0.1", url.port or 5432) as proxy,
        service_pair(
            tmp_path,
            [
                "--store",
                url._replace(netloc=f"{url.username}@127.0.0.1:{proxy.port}").geturl(),
                "--store-timeout",
                "1",
            ],
        ) as (_, thread),
        grpc.insecure_channel(thread.address) as channel,
    ):
        stub = pb_grpc.ThreadServiceStub(channel)
        root = stub.StartThread(pb.StartThreadRequest(cwd=str(tmp_path))).thread
        run_turn(stub, root.id, "before")
        proxy.cut()
        for call in (
            lambda: stub.GetThread(pb.GetThreadRequest(thread_id=root.id), timeout=10),
            lambda: run_turn(stub, root.id, "during"),
        ):
            with raises_status(grpc.StatusCode.UNAVAILABLE, "the database", "is unavailable"):
                call()
        proxy.restore()
        wait_until(lambda: _answers(stub, root.id), timeout=15)
        assert run_turn(stub, root.id, "after").status == pb.TURN_STATUS_COMPLETED
        assert texts(stub, root.id) == ["before", "echo: before", "after", "echo: after"]
        assert "Traceback" not in thread.log_text()


def _answers(stub: pb_grpc.ThreadServiceStub, thread_id: str) -> bool:
    try:
        stub.GetThread(pb.GetThreadRequest(thread_id=thread_id), timeout=5)
    except grpc.RpcError:
        return False
    return True
