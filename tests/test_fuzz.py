"""Fuzzing the thread-service through real processes (tests/fuzz.py), in a
short form, and one test for each thing the fuzzer found, each through real
servers too.

The fuzz test's seed is fixed, so the suite gives the same answer every run;
SPINDLE_FUZZ_SEED=N runs another (`random` for a new one, printed on failure).
`python -m tests.fuzz --cases 10000` is the long run.
"""

from __future__ import annotations

import collections
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from spindle.v1 import common_pb2 as c
from spindle.v1 import thread_service_pb2 as pb
from spindle.v1 import thread_service_pb2_grpc as pb_grpc
from tests import fuzz
from tests.harness import service_pair
from tests.rpc import fork, raises_status, start, turn, user

CASES = 400
DEFAULT_SEED = 20261126
LONG = 20_000


def fuzz_seed() -> int:
    chosen = os.environ.get("SPINDLE_FUZZ_SEED", "")
    if chosen == "random":
        return secrets.randbits(32)
    return int(chosen) if chosen else DEFAULT_SEED


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[fuzz.Target]:
    with fuzz.running_target(tmp_path_factory.mktemp("fuzz")) as running:
        yield running


def test_fuzzed_calls_get_a_status_never_unknown_internal_or_a_traceback(
    target: fuzz.Target,
) -> None:
    report = fuzz.fuzz(target, cases=CASES, seed=fuzz_seed(), max_seconds=60)
    summary = report.summary()
    assert report.cases + report.skipped == CASES, summary
    assert report.cases >= CASES // 2, summary
    assert report.count("UNKNOWN") == 0, summary
    assert report.count("INTERNAL") == 0, summary
    assert not any(report.tracebacks.values()), summary
    assert not report.down, summary
    # The run reached past validation: turns ran, threads were made.
    assert report.statuses[("RunTurn", "OK")] > 0, summary
    assert report.statuses[("StartThread", "OK")] > 0, summary


KINDS = {"ascii": "x", "latin": "é", "euro": "€", "emoji": "😀", "control": "\x01"}


@pytest.mark.parametrize("kind", KINDS)
def test_long_values_are_invalid_argument_with_a_short_message(
    target: fuzz.Target, kind: str
) -> None:
    """The issue's finding: a 20,000-character thread id, cwd, tool name or
    call id was echoed whole, so its error's trailer passed the client's
    metadata limit (RESOURCE_EXHAUSTED in Python)."""
    long = KINDS[kind] * LONG
    with grpc.insecure_channel(target.thread.address) as channel:
        stub = pb_grpc.ThreadServiceStub(channel)
        # A thread of its own: the fuzzer may have archived any other.
        thread_id = start(stub, Path(target.pool.cwd)).id
        attempts: list[Callable[[], object]] = [
            lambda: stub.GetThread(pb.GetThreadRequest(thread_id=long), timeout=10),
            lambda: stub.SpawnThread(pb.SpawnThreadRequest(parent_id=long), timeout=10),
            lambda: stub.StartThread(pb.StartThreadRequest(cwd=long), timeout=10),
            lambda: stub.StartThread(pb.StartThreadRequest(cwd="/" + long), timeout=10),
            lambda: turn(stub, thread_id, user("hi"), tools=[c.Tool(name=long)]),
            lambda: turn(
                stub,
                thread_id,
                c.Item(function_call_output=c.FunctionCallOutput(call_id=long, output="o")),
            ),
        ]
        for attempt in attempts:
            with raises_status(grpc.StatusCode.INVALID_ARGUMENT) as info:
                attempt()
            assert len(info.value.details()) <= 1000
            stub.GetThread(pb.GetThreadRequest(thread_id=thread_id), timeout=10)


# --- What the fuzzer found, each fixed since --------------------------------------------


def test_undecodable_payloads_to_health_and_reflection_are_invalid_argument(
    tmp_path: Path,
) -> None:
    identity = fuzz.identity
    with service_pair(tmp_path) as (model, thread):
        for process in (thread, model):
            with grpc.insecure_channel(process.address) as channel:
                check = channel.unary_unary(
                    "/grpc.health.v1.Health/Check",
                    request_serializer=identity,
                    response_deserializer=identity,
                )
                with raises_status(grpc.StatusCode.INVALID_ARGUMENT):
                    check(b"\xff\xff\xff", timeout=10)
                watch = channel.unary_stream(
                    "/grpc.health.v1.Health/Watch",
                    request_serializer=identity,
                    response_deserializer=identity,
                )
                with raises_status(grpc.StatusCode.INVALID_ARGUMENT):
                    list(watch(b"\xff\xff\xff", timeout=10))
                reflect = channel.stream_stream(
                    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                    request_serializer=identity,
                    response_deserializer=identity,
                )
                with raises_status(grpc.StatusCode.INVALID_ARGUMENT):
                    list(reflect(iter([b"\xff\xff\xff"]), timeout=10))
        assert "Traceback" not in thread.log_text()
        assert "Traceback" not in model.log_text()


def test_health_watch_streams_the_status_on_both_services(tmp_path: Path) -> None:
    """The long fuzz run's finding: every valid Health/Watch call was UNKNOWN
    with a traceback. Watch writes its responses with `context.write` (gRPC's
    reader/writer style) and the edge had wrapped it as an async generator."""
    with service_pair(tmp_path) as (model, thread):
        for process in (thread, model):
            with grpc.insecure_channel(process.address) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                watch = stub.Watch(health_pb2.HealthCheckRequest(), timeout=10)
                first = next(watch)
                assert first.status == health_pb2.HealthCheckResponse.SERVING
                watch.cancel()
                # The raw form the fuzzer sent: an empty payload is a valid request.
                raw = channel.unary_stream(
                    "/grpc.health.v1.Health/Watch",
                    request_serializer=fuzz.identity,
                    response_deserializer=fuzz.identity,
                )
                with raises_status(grpc.StatusCode.DEADLINE_EXCEEDED):
                    answers = raw(b"", timeout=0.5)
                    assert health_pb2.HealthCheckResponse.FromString(next(answers)).status == (
                        health_pb2.HealthCheckResponse.SERVING
                    )
                    list(answers)
                unknown = stub.Watch(health_pb2.HealthCheckRequest(service="nope"), timeout=10)
                assert next(unknown).status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
                unknown.cancel()
        assert "Traceback" not in thread.log_text()
        assert "Traceback" not in model.log_text()


def test_a_thread_deleted_as_a_turn_begins_loses_no_turn_record(tmp_path: Path) -> None:
    """The long fuzz run's finding: DeleteThread looked for a running turn,
    found none, and deleted the thread with the turn that began meanwhile;
    that turn's end then failed (NOT_FOUND in the store), INTERNAL for its
    caller with a traceback. Now the delete refuses in its own transaction, or
    (interrupt_running) interrupts that turn too. Many rounds, at slightly
    different moments, since the window is narrow."""
    answers: collections.Counter[tuple[str, str, bool]] = collections.Counter()
    with (
        service_pair(tmp_path) as (_, thread),
        grpc.insecure_channel(thread.address) as channel,
    ):
        stub = pb_grpc.ThreadServiceStub(channel)
        for round_number in range(80):
            thread_id = start(stub, tmp_path).id
            interrupt = round_number % 2 == 1
            ran: dict[str, str] = {}

            def run_turn(thread_id: str = thread_id, ran: dict[str, str] = ran) -> None:
                try:
                    found = turn(stub, thread_id, user("/slow 0.05 racing"))
                    assert found[-1].HasField("turn_completed")
                    ran["status"] = "OK"
                except grpc.RpcError as error:
                    ran["status"] = error.code().name

            runner = threading.Thread(target=run_turn)
            runner.start()
            time.sleep((round_number // 2 % 8) * 0.001)
            try:
                stub.DeleteThread(
                    pb.DeleteThreadRequest(thread_id=thread_id, interrupt_running=interrupt),
                    timeout=10,
                )
                deleted = "OK"
            except grpc.RpcError as error:
                deleted = error.code().name
                assert not interrupt, error.details()
                assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
                assert "a turn is running" in (error.details() or "")
            runner.join(15)
            answers[(ran["status"], deleted, interrupt)] += 1
    assert all(status in ("OK", "NOT_FOUND") for status, _, _ in answers), answers
    assert "Traceback" not in thread.log_text(), answers


NUL_CASES = ["start instructions", "spawn instructions", "fork call id", "model error"]


@pytest.mark.parametrize("case", NUL_CASES)
def test_nul_characters_are_no_internal_error_on_postgresql(
    tmp_path: Path, postgres_url: str, case: str
) -> None:
    with (
        service_pair(tmp_path, ["--store", postgres_url]) as (_, thread),
        grpc.insecure_channel(thread.address) as channel,
    ):
        stub = pb_grpc.ThreadServiceStub(channel)
        root = start(stub, tmp_path)
        try:
            if case == "start instructions":
                start(stub, tmp_path, instructions="a\x00b")
            elif case == "spawn instructions":
                stub.SpawnThread(pb.SpawnThreadRequest(parent_id=root.id, instructions="a\x00b"))
            elif case == "fork call id":
                stub.SpawnThread(fork(root.id, "call\x00"))
            else:
                turn(stub, root.id, user("/fail UNAVAILABLE a\x00b"))
        except grpc.RpcError as error:
            assert error.code() != grpc.StatusCode.INTERNAL, error.details()
        assert "Traceback" not in thread.log_text()


def test_the_public_ports_message_limits_hold(tmp_path: Path) -> None:
    """A request past max_turn_bytes is refused as it arrives, not read whole;
    and a spawn call id cannot make Threads too large to list."""
    with (
        service_pair(tmp_path) as (_, thread),
        grpc.insecure_channel(
            thread.address, options=[("grpc.max_send_message_length", 64 << 20)]
        ) as channel,
    ):
        stub = pb_grpc.ThreadServiceStub(channel)
        root = start(stub, tmp_path)
        with raises_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max"):
            turn(stub, root.id, user("x" * (30 << 20)))
        with raises_status(grpc.StatusCode.INVALID_ARGUMENT, "parent_spawn_call_id"):
            stub.SpawnThread(fork(root.id, "c" * (2 << 20)))


def test_a_model_error_echoing_long_non_ascii_text_keeps_its_status(
    target: fuzz.Target,
) -> None:
    with grpc.insecure_channel(target.thread.address) as channel:
        stub = pb_grpc.ThreadServiceStub(channel)
        thread_id = start(stub, Path(target.pool.cwd)).id
        # Three times: near the limit gRPC refuses at random.
        for _ in range(3):
            with raises_status(grpc.StatusCode.INVALID_ARGUMENT, "/slow"):
                turn(stub, thread_id, user("/slow " + "😀" * 5000))
