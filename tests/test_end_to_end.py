"""Both services as real processes on loopback: spawn, fork and resume through
the public API, restart both, and read at the model-service which
prompt_cache_key every request carried."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import grpc

from spindle.v1 import thread_service_pb2 as pb
from spindle.v1 import thread_service_pb2_grpc as pb_grpc
from tests.harness import ServiceProcess, service_pair, wait_until
from tests.rpc import events_of, fork, user

_REQUEST = re.compile(
    r"generate thread_id=(\S+) window_id=(\S+) prompt_cache_key=(\S+) sub_agent_kind=(\S+)"
)


def requests_seen(model: ServiceProcess) -> list[tuple[str, str, str, str]]:
    """(thread_id, window_id, prompt_cache_key, sub_agent_kind) per model request."""
    return [m.groups() for m in map(_REQUEST.search, model.log_lines) if m]  # type: ignore[misc]


def run_turn(stub: pb_grpc.ThreadServiceStub, thread_id: str, text: str) -> pb.TurnCompleted:
    request = pb.RunTurnRequest(thread_id=thread_id, input=[user(text)])
    events = events_of(stub.RunTurn(request, timeout=30))
    return events[-1].turn_completed


def test_keys_follow_inheritance_across_a_restart_of_both_services(
    tmp_path: Path, store_args: list[str]
) -> None:
    with service_pair(tmp_path, store_args) as (model, thread):
        with grpc.insecure_channel(thread.address) as channel:
            stub = pb_grpc.ThreadServiceStub(channel)
            root = stub.StartThread(pb.StartThreadRequest(cwd=str(tmp_path))).thread
            run_turn(stub, root.id, "root turn")
            fresh = stub.SpawnThread(
                pb.SpawnThreadRequest(parent_id=root.id, sub_agent_kind="explorer")
            ).thread
            run_turn(stub, fresh.id, "fresh turn")
            forked = stub.SpawnThread(
                fork(
                    root.id,
                    "call_7",
                    sub_agent_kind="review",
                    agent_nickname="Fay",
                    agent_role="reviewer",
                )
            ).thread
            run_turn(stub, forked.id, "fork turn")
            fork_of_fork = stub.SpawnThread(fork(forked.id, "call_8")).thread
            run_turn(stub, fork_of_fork.id, "deeper fork turn")
        wait_until(lambda: len(requests_seen(model)) == 4)
        assert requests_seen(model) == [
            (root.id, f"{root.id}:0", root.id, "-"),
            (fresh.id, f"{fresh.id}:0", fresh.id, "explorer"),
            (forked.id, f"{forked.id}:0", root.id, "review"),
            (fork_of_fork.id, f"{fork_of_fork.id}:0", root.id, "thread_spawn"),
        ]
        assert thread.stop(signal.SIGTERM) == 0
        assert model.stop(signal.SIGTERM) == 0
        assert "stopped" in thread.log_text()

    # Both services restarted on the same data: nothing is live any more.
    with service_pair(tmp_path, store_args) as (model, thread):
        with grpc.insecure_channel(thread.address) as channel:
            stub = pb_grpc.ThreadServiceStub(channel)
            # A fork made after the restart still inherits the stored key.
            late = stub.SpawnThread(fork(forked.id, "call_9")).thread
            assert late.prompt_cache_key == root.id
            resumed = stub.ResumeThread(pb.ResumeThreadRequest(thread_id=forked.id))
            assert resumed.thread.prompt_cache_key == forked.id
            assert (resumed.thread.agent_nickname, resumed.thread.agent_role) == (
                "Fay",
                "reviewer",
            )
            # 2 inherited items + the fork's own turn.
            assert resumed.history_length == 4
            run_turn(stub, forked.id, "after resume")
            run_turn(stub, late.id, "late fork turn")
            items = stub.ListThreadItems(pb.ListThreadItemsRequest(thread_id=forked.id)).items
            assert [i.message.text for i in items] == [
                "root turn",
                "echo: root turn",
                "fork turn",
                "echo: fork turn",
                "after resume",
                "echo: after resume",
            ]
        wait_until(lambda: len(requests_seen(model)) == 2)
        assert requests_seen(model) == [
            (forked.id, f"{forked.id}:0", forked.id, "review"),
            (late.id, f"{late.id}:0", root.id, "thread_spawn"),
        ]


def test_services_refuse_bad_settings_with_a_clear_message(tmp_path: Path) -> None:
    bad = ServiceProcess("thread_service", ["--max-spawn-depth", "many"])
    assert bad.proc.wait(30) == 1
    bad.stop()
    assert "--max-spawn-depth: max_spawn_depth must be an integer, not 'many'" in bad.log_text()
