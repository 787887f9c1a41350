"""Three model-service processes behind one thread-service: each request goes
to the replica that the ring hash of its prompt_cache_key picks, so a key's
requests (a fork's first turn included) land where its prompt cache is warm,
and a replica going down hands its keys on without failing turns."""

from __future__ import annotations

import collections
import re
import signal
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from spindle.v1 import thread_service_pb2 as pb
from spindle.v1 import thread_service_pb2_grpc as pb_grpc
from tests.harness import ServiceProcess, thread_process, wait_until
from tests.rpc import fork, turn, user

_KEY = re.compile(r"generate thread_id=(\S+) window_id=\S+ prompt_cache_key=(\S+) .* status=(\S+)")


@dataclass
class Gateway:
    models: list[ServiceProcess]
    thread: ServiceProcess
    stub: pb_grpc.ThreadServiceStub

    def keys_by_replica(self) -> list[collections.Counter[str]]:
        """How many requests of each prompt_cache_key each replica served (not
        counting those it refused for a window base it did not hold, which the
        thread-service sent again whole)."""
        return [
            collections.Counter(
                m[2] for m in map(_KEY.search, model.log_lines) if m and m[3] == "OK"
            )
            for model in self.models
        ]

    def served(self) -> int:
        return sum(sum(c.values()) for c in self.keys_by_replica())


@contextmanager
def gateway(tmp_path: Path, balancing: str) -> Iterator[Gateway]:
    with ExitStack() as stack:
        models = []
        for n in range(3):
            model = ServiceProcess("model_service", ["--config-home", str(tmp_path / f"m{n}")])
            stack.callback(model.stop, signal.SIGKILL)
            models.append(model)
        target = "ipv4:" + ",".join(model.address for model in models)
        thread = thread_process(
            target, tmp_path / "data", tmp_path / "home", "--model-service-balancing", balancing
        )
        stack.callback(thread.stop)
        channel = grpc.insecure_channel(thread.address)
        stack.callback(channel.close)
        yield Gateway(models, thread, pb_grpc.ThreadServiceStub(channel))


@pytest.fixture
def ring(tmp_path: Path) -> Iterator[Gateway]:
    with gateway(tmp_path, "ring_hash") as running:
        yield running


def run(stub: pb_grpc.ThreadServiceStub, thread_id: str, text: str = "hello") -> None:
    events = turn(stub, thread_id, user(text))
    assert events[-1].turn_completed.status == pb.TURN_STATUS_COMPLETED


def test_a_keys_requests_and_its_forks_land_on_one_replica(ring: Gateway, tmp_path: Path) -> None:
    roots = [
        ring.stub.StartThread(pb.StartThreadRequest(cwd=str(tmp_path))).thread for _ in range(24)
    ]
    for root in roots:
        run(ring.stub, root.id)
        run(ring.stub, root.id, "again")
        child = ring.stub.SpawnThread(fork(root.id)).thread
        assert child.prompt_cache_key == root.id
        run(ring.stub, child.id, "the fork's first turn")
    wait_until(lambda: ring.served() == 24 * 3)
    by_replica = ring.keys_by_replica()
    for root in roots:
        holders = [n for n, counts in enumerate(by_replica) if counts[root.id]]
        assert len(holders) == 1, (root.id, holders)
        assert by_replica[holders[0]][root.id] == 3
    assert sum(1 for counts in by_replica if counts) >= 2  # keys spread


def test_round_robin_spreads_one_keys_requests(tmp_path: Path) -> None:
    with gateway(tmp_path, "round_robin") as spread:
        root = spread.stub.StartThread(pb.StartThreadRequest(cwd=str(tmp_path))).thread
        for n in range(9):
            run(spread.stub, root.id, f"turn {n}")
        wait_until(lambda: spread.served() == 9)
        assert sum(1 for counts in spread.keys_by_replica() if counts[root.id]) >= 2


def test_a_replica_going_down_hands_its_keys_on_without_failing_turns(
    ring: Gateway, tmp_path: Path
) -> None:
    roots = [
        ring.stub.StartThread(pb.StartThreadRequest(cwd=str(tmp_path))).thread for _ in range(24)
    ]
    for root in roots:
        run(ring.stub, root.id)
    wait_until(lambda: ring.served() == 24)
    before = ring.keys_by_replica()
    victim = max(range(3), key=lambda n: len(before[n]))
    ring.models[victim].stop(signal.SIGKILL)
    for root in roots:  # every turn after the replica is gone completes
        run(ring.stub, root.id, "after")
    wait_until(lambda: ring.served() == 48)
    since = [now - then for now, then in zip(ring.keys_by_replica(), before, strict=True)]
    for root in roots:
        first = next(n for n in range(3) if before[n][root.id])
        now = [n for n in range(3) if since[n][root.id]]
        if first == victim:
            assert len(now) == 1 and now[0] != victim  # moved, to one replica
        else:
            assert now == [first]  # the others' keys stayed put
