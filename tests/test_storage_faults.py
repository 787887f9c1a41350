"""Storage and dependency faults, on real processes: a full disk, a database
file removed under a running service, an unusable data folder, a second
process on the same data, a model-service that freezes. Whatever happens,
nothing acknowledged is lost, no thread stays wedged, health tells the truth
and start-up failures are one line."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from spindle.v1 import thread_service_pb2 as pb
from spindle.v1 import thread_service_pb2_grpc as pb_grpc
from tests.harness import ServiceProcess, service_pair, thread_process, wait_until
from tests.rpc import raises_status, turn, user

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs: a real file system that really fills up."""
    folder = tmp_path / "disk"
    folder.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        if os.geteuid() != 0:
            pytest.skip("mounting a small tmpfs needs root: " + done.stderr.strip())
        pytest.fail("mount of a tmpfs failed: " + done.stderr.strip())
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path) -> Path:
    """Take every free byte of `folder`'s file system with one file."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as fh:
        for size in (65536, 4096, 512, 1):  # down to the last scraps
            try:
                while True:
                    fh.write(b"\0" * size)
            except OSError:
                continue
    return filler


def health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        status: int = response.status
        return status


def test_a_full_disk_fails_writes_clearly_and_nothing_stays_wedged(
    tmp_path: Path, small_disk: Path
) -> None:
    with service_pair(tmp_path, ["--data-dir", str(small_disk / "data")]) as (_, thread):
        with grpc.insecure_channel(thread.address) as channel:
            stub = pb_grpc.ThreadServiceStub(channel)
            root = stub.StartThread(pb.StartThreadRequest(cwd=str(tmp_path))).thread
            assert turn(stub, root.id, user("before"))[-1].turn_completed.status == (
                pb.TURN_STATUS_COMPLETED
            )
            filler = fill(small_disk)
            with raises_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "is full"):
                turn(stub, root.id, user("x" * 200_000))
            wait_until(lambda: health(thread.address) == NOT_SERVING, timeout=5)
            filler.unlink()
            wait_until(lambda: health(thread.address) == SERVING, timeout=10)
            assert turn(stub, root.id, user("after"))[-1].turn_completed.status == (
                pb.TURN_STATUS_COMPLETED
            )

            # The disk fills while a turn streams: its end cannot be saved yet.
            stream = stub.RunTurn(
                pb.RunTurnRequest(thread_id=root.id, input=[user("/slow 1.5 a b c d")])
            )
            assert next(stream).events[0].HasField("turn_started")
            filler = fill(small_disk)
            with raises_status(grpc.StatusCode.UNAVAILABLE, "could not save its end"):
                list(stream)
            with raises_status(grpc.StatusCode.FAILED_PRECONDITION, "already running"):
                turn(stub, root.id, user("meanwhile"))
            filler.unlink()
            # The service kept trying: the end is saved, the thread goes on.
            wait_until(
                lambda: (
                    stub.ListTurns(pb.ListTurnsRequest(thread_id=root.id)).turns[-1].status
                    == pb.TURN_STATUS_COMPLETED
                ),
                timeout=20,
            )
            assert turn(stub, root.id, user("last"))[-1].turn_completed.status == (
                pb.TURN_STATUS_COMPLETED
            )
            texts = [
                i.message.text
                for i in stub.ListThreadItems(pb.ListThreadItemsRequest(thread_id=root.id)).items
            ]
            assert texts == [
                *("before", "echo: before", "after", "echo: after"),
                *("/slow 1.5 a b c d", "echo: a b c d", "last", "echo: last"),
            ]
        assert "Traceback" not in thread.log_text()


def test_events_a_full_disk_kept_from_being_kept_as_a_turn_ran_are_replayed_whole(
    tmp_path: Path, small_disk: Path
) -> None:
    """A running turn keeps its events every 250 ms, for WatchTurn. A write
    of them that failed (here the disk was full for a moment) counted them
    as kept all the same: the turn's end kept only the later ones, and a
    replay began at event 8. Now a failed write is tried again, and what is
    still not kept goes with the turn's end."""
    with service_pair(tmp_path, ["--data-dir", str(small_disk / "data")]) as (_, thread):
        with grpc.insecure_channel(thread.address) as channel:
            stub = pb_grpc.ThreadServiceStub(channel)
            root = stub.StartThread(pb.StartThreadRequest(cwd=str(tmp_path))).thread
            words = " ".join(f"w{n}" for n in range(60))
            stream = stub.RunTurn(
                pb.RunTurnRequest(thread_id=root.id, input=[user(f"/slow 3 {words}")]),
                timeout=60,
            )
            live = list(next(stream).events)
            turn_id = live[0].turn_started.turn_id
            filler = fill(small_disk)  # before the first keeping, 250 ms in
            # A write failed (health says so), then another.
            wait_until(lambda: health(thread.address) == NOT_SERVING, timeout=10)
            time.sleep(0.3)
            filler.unlink()
            live += [event for response in stream for event in response.events]
            assert live[-1].turn_completed.status == pb.TURN_STATUS_COMPLETED
            replayed = [
                event
                for response in stub.WatchTurn(
                    pb.WatchTurnRequest(thread_id=root.id, turn_id=turn_id), timeout=10
                )
                for event in response.events
            ]
            assert [e.sequence for e in replayed] == list(range(1, len(live) + 1))
            assert replayed == live
        assert "Traceback" not in thread.log_text()


def test_a_removed_database_stops_writes_and_its_log_refuses_a_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with service_pair(tmp_path) as (model, thread):
        with grpc.insecure_channel(thread.address) as channel:
            stub = pb_grpc.ThreadServiceStub(channel)
            root = stub.StartThread(pb.StartThreadRequest(cwd=str(tmp_path))).thread
            turn(stub, root.id, user("kept in the log"))
            (data / "spindle.sqlite3").unlink()
            with raises_status(grpc.StatusCode.UNAVAILABLE, "was removed"):
                stub.StartThread(pb.StartThreadRequest(cwd=str(tmp_path)))
            wait_until(lambda: health(thread.address) == NOT_SERVING, timeout=5)
        thread.stop(signal.SIGTERM)
        assert (data / "spindle.sqlite3-wal").exists()  # not checkpointed into the void
        again = thread_process(model, data, tmp_path / "home")
        assert again.proc.wait(30) == 2
        again.stop()
        assert "is missing but its write-ahead log is there" in again.log_text()
        assert "Traceback" not in again.log_text()


@pytest.mark.parametrize("make", ["a file", "under a file"])
def test_an_unusable_data_folder_is_one_line_and_exit_2(tmp_path: Path, make: str) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    data = blocker if make == "a file" else blocker / "data"
    process = ServiceProcess(
        "thread_service", ["--data-dir", str(data), "--config-home", str(tmp_path / "home")]
    )
    assert process.proc.wait(30) == 2
    process.stop()
    errors = [line for line in process.log_lines if "ERROR" in line]
    assert len(errors) == 1 and str(blocker) in errors[0]
    assert "Traceback" not in process.log_text()


def test_a_second_thread_service_on_the_same_data_refuses_to_start(tmp_path: Path) -> None:
    with service_pair(tmp_path) as (model, thread):
        second = thread_process(model, tmp_path / "data", tmp_path / "home")
        assert second.proc.wait(30) == 2
        second.stop()
        assert f"in use by process {thread.proc.pid}" in second.log_text()
        assert health(thread.address) == SERVING


def test_a_frozen_model_service_fails_the_turn_instead_of_holding_it(tmp_path: Path) -> None:
    with (
        service_pair(tmp_path, ["--model-timeout", "2"]) as (model, thread),
        grpc.insecure_channel(thread.address) as channel,
    ):
        stub = pb_grpc.ThreadServiceStub(channel)
        root = stub.StartThread(pb.StartThreadRequest(cwd=str(tmp_path))).thread
        os.kill(model.proc.pid, signal.SIGSTOP)
        started = time.monotonic()
        try:
            with raises_status(grpc.StatusCode.DEADLINE_EXCEEDED):
                turn(stub, root.id, user("hello?"))
        finally:
            os.kill(model.proc.pid, signal.SIGCONT)
        assert time.monotonic() - started < 10
        (recorded,) = stub.ListTurns(pb.ListTurnsRequest(thread_id=root.id)).turns
        assert recorded.status == pb.TURN_STATUS_FAILED
        assert recorded.error.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
        assert turn(stub, root.id, user("back"))[-1].turn_completed.status == (
            pb.TURN_STATUS_COMPLETED
        )
