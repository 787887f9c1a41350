"""Every thread-service RPC through a real in-process gRPC server, with the
real model-service behind it: results, and each error's status and message."""

from __future__ import annotations

import base64
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from spindle.v1 import common_pb2 as c
from spindle.v1 import thread_service_pb2 as pb
from spindle.v1 import thread_service_pb2_grpc as pb_grpc
from tests.harness import LoopThread, Stack, start_stack, wait_until
from tests.rpc import (
    assert_kept_only_input,
    events_of,
    fork,
    only_turn,
    raises_status,
    start,
    turn,
    user,
)
from thread_service import servicer
from thread_service.servicer import WARNING_METADATA_KEY, WARNING_METADATA_MAX_BYTES
from thread_service.stores import sql_store

MISSING = "00000000-0000-4000-8000-000000000000"


def test_start_thread_returns_a_root_thread(stack: Stack, tmp_path: Path) -> None:
    thread = start(
        stack.threads,
        tmp_path,
        model="spindle-echo",
        instructions="hi",
        agent_nickname="Root",
        agent_role="lead",
    )
    assert thread.id and thread.parent_id == ""
    assert thread.origin == pb.THREAD_ORIGIN_START
    assert thread.session_origin == pb.THREAD_ORIGIN_START
    assert thread.prompt_cache_key == thread.id
    assert (thread.depth, thread.agent_nickname, thread.agent_role) == (0, "Root", "lead")
    assert thread.cwd == str(tmp_path) and thread.model == "spindle-echo"
    assert thread.status == pb.THREAD_STATUS_ACTIVE
    assert thread.trust.trusted and thread.trust.source == pb.TRUST_SOURCE_PERSISTED
    assert thread.create_time.seconds > 0


@pytest.mark.parametrize("cwd", ["", "relative/dir", "/no/such/dir/anywhere"])
def test_start_thread_refuses_a_bad_cwd(stack: Stack, cwd: str) -> None:
    with raises_status(grpc.StatusCode.INVALID_ARGUMENT, "cwd"):
        stack.threads.StartThread(pb.StartThreadRequest(cwd=cwd))


def test_spawn_fresh_and_fork(stack: Stack, tmp_path: Path) -> None:
    stub = stack.threads
    root = start(stub, tmp_path)
    fresh = stub.SpawnThread(
        pb.SpawnThreadRequest(parent_id=root.id, agent_nickname="Ada", sub_agent_kind="explorer")
    ).thread
    assert fresh.origin == pb.THREAD_ORIGIN_SPAWN and fresh.depth == 1
    assert fresh.prompt_cache_key == fresh.id != root.id
    assert (fresh.parent_id, fresh.sub_agent_kind) == (root.id, "explorer")
    child = stub.SpawnThread(fork(root.id)).thread
    assert child.origin == pb.THREAD_ORIGIN_FORK
    assert child.prompt_cache_key == root.id and child.id != root.id
    assert child.parent_spawn_call_id == "call_1"
    grandchild = stub.SpawnThread(fork(child.id, "call_2")).thread
    assert grandchild.prompt_cache_key == root.id and grandchild.depth == 2


def test_spawn_errors(loop_thread: LoopThread, tmp_path: Path) -> None:
    stack = start_stack(loop_thread, tmp_path, max_spawn_depth=1)
    try:
        stub = stack.threads
        root = start(stub, tmp_path)
        cases = [
            (
                pb.SpawnThreadRequest(parent_id=root.id, fork=pb.ForkOptions()),
                grpc.StatusCode.FAILED_PRECONDITION,
                "parent_spawn_call_id",
            ),
            (fork(MISSING), grpc.StatusCode.NOT_FOUND, f"parent thread {MISSING} does not exist"),
            (fork("not-a-uuid"), grpc.StatusCode.INVALID_ARGUMENT, "not a thread id"),
            (pb.SpawnThreadRequest(), grpc.StatusCode.INVALID_ARGUMENT, "parent_id is required"),
            (
                pb.SpawnThreadRequest(
                    parent_id=root.id,
                    fork=pb.ForkOptions(parent_spawn_call_id="c", mode=pb.FORK_MODE_LAST_N_TURNS),
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
                "last_n_turns",
            ),
            (
                pb.SpawnThreadRequest(
                    parent_id=root.id,
                    fork=pb.ForkOptions(parent_spawn_call_id="c", mode=99),  # type: ignore[arg-type]
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
                "fork.mode",
            ),
        ]
        for request, code, text in cases:
            with raises_status(code, text):
                stub.SpawnThread(request)
        child = stub.SpawnThread(pb.SpawnThreadRequest(parent_id=root.id)).thread
        with raises_status(grpc.StatusCode.FAILED_PRECONDITION, "depth limit"):
            stub.SpawnThread(fork(child.id))
        stub.ArchiveThread(pb.ArchiveThreadRequest(thread_id=root.id))
        with raises_status(grpc.StatusCode.FAILED_PRECONDITION, "archived"):
            stub.SpawnThread(pb.SpawnThreadRequest(parent_id=root.id))
    finally:
        stack.stop()


def test_resume_get_archive(stack: Stack, tmp_path: Path) -> None:
    stub = stack.threads
    root = start(stub, tmp_path)
    turn(stub, root.id, user("hello"))
    child = stub.SpawnThread(fork(root.id, agent_nickname="Bo", agent_role="r")).thread
    resumed = stub.ResumeThread(pb.ResumeThreadRequest(thread_id=child.id))
    assert resumed.thread.id == child.id
    assert resumed.thread.prompt_cache_key == child.id
    assert resumed.thread.session_origin == pb.THREAD_ORIGIN_RESUME
    assert resumed.thread.origin == pb.THREAD_ORIGIN_FORK
    assert (resumed.thread.agent_nickname, resumed.thread.agent_role) == ("Bo", "r")
    assert resumed.history_length == 2
    got = stub.GetThread(pb.GetThreadRequest(thread_id=child.id)).thread
    assert got.prompt_cache_key == child.id
    archived = stub.ArchiveThread(pb.ArchiveThreadRequest(thread_id=child.id)).thread
    assert archived.status == pb.THREAD_STATUS_ARCHIVED
    again = stub.ArchiveThread(pb.ArchiveThreadRequest(thread_id=child.id)).thread
    assert again.status == pb.THREAD_STATUS_ARCHIVED
    for call, request, code, text in [
        (
            stub.ResumeThread,
            pb.ResumeThreadRequest(thread_id=child.id),
            grpc.StatusCode.FAILED_PRECONDITION,
            "archived",
        ),
        (
            stub.ResumeThread,
            pb.ResumeThreadRequest(thread_id=MISSING),
            grpc.StatusCode.NOT_FOUND,
            MISSING,
        ),
        (
            stub.GetThread,
            pb.GetThreadRequest(thread_id=MISSING),
            grpc.StatusCode.NOT_FOUND,
            MISSING,
        ),
        (
            stub.GetThread,
            pb.GetThreadRequest(),
            grpc.StatusCode.INVALID_ARGUMENT,
            "thread_id is required",
        ),
        (
            stub.ArchiveThread,
            pb.ArchiveThreadRequest(thread_id="x"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "not a thread id",
        ),
    ]:
        with raises_status(code, text):
            call(request)
    with raises_status(grpc.StatusCode.FAILED_PRECONDITION, "archived"):
        turn(stub, child.id, user("no"))


def test_list_threads_pages_and_filters(stack: Stack, tmp_path: Path) -> None:
    stub = stack.threads
    root = start(stub, tmp_path)
    children = [stub.SpawnThread(pb.SpawnThreadRequest(parent_id=root.id)).thread for _ in range(4)]
    stub.ArchiveThread(pb.ArchiveThreadRequest(thread_id=children[0].id))
    seen: list[str] = []
    token = ""
    while True:
        page = stub.ListThreads(pb.ListThreadsRequest(page_size=2, page_token=token))
        assert len(page.threads) <= 2
        seen += [t.id for t in page.threads]
        token = page.next_page_token
        if not token:
            break
    assert seen == [root.id] + [c.id for c in children[1:]]
    by_parent = stub.ListThreads(
        pb.ListThreadsRequest(parent_id=root.id, include_archived=True)
    ).threads
    assert [t.id for t in by_parent] == [c.id for c in children]
    first = stub.ListThreads(pb.ListThreadsRequest(page_size=1))
    for bad_token, text in [("%%%", "malformed"), (first.next_page_token, "does not belong")]:
        with raises_status(grpc.StatusCode.INVALID_ARGUMENT, text):
            stub.ListThreads(pb.ListThreadsRequest(parent_id=root.id, page_token=bad_token))


def test_list_thread_items_pages_through_inherited_and_own_items(
    stack: Stack, tmp_path: Path
) -> None:
    stub = stack.threads
    root = start(stub, tmp_path)
    for i in range(3):
        turn(stub, root.id, user(f"q{i}"))
    child = stub.SpawnThread(fork(root.id)).thread
    turn(stub, child.id, user("mine"))
    texts: list[str] = []
    token = ""
    while True:
        page = stub.ListThreadItems(
            pb.ListThreadItemsRequest(thread_id=child.id, page_size=3, page_token=token)
        )
        texts += [i.message.text for i in page.items]
        token = page.next_page_token
        if not token:
            break
    assert texts == ["q0", "echo: q0", "q1", "echo: q1", "q2", "echo: q2", "mine", "echo: mine"]
    with raises_status(grpc.StatusCode.NOT_FOUND):
        stub.ListThreadItems(pb.ListThreadItemsRequest(thread_id=MISSING))
    root_token = stub.ListThreadItems(
        pb.ListThreadItemsRequest(thread_id=root.id, page_size=1)
    ).next_page_token
    with raises_status(grpc.StatusCode.INVALID_ARGUMENT):
        stub.ListThreadItems(pb.ListThreadItemsRequest(thread_id=child.id, page_token=root_token))


def test_long_histories_are_read_and_listed_a_slice_at_a_time(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Slices of 2 items: the fork's first turn reads its history in several
    # (see `SqlStore.read_history`), and each page is converted in several.
    monkeypatch.setattr(sql_store, "HISTORY_SLICE", 2)
    monkeypatch.setattr(servicer, "ITEMS_SLICE", 2)
    stub = stack.threads
    root = start(stub, tmp_path)
    for i in range(4):
        turn(stub, root.id, user(f"q{i}"))
    child = stub.SpawnThread(fork(root.id)).thread
    assert turn(stub, child.id, user("mine"))[-1].turn_completed.status == pb.TURN_STATUS_COMPLETED
    expected = [text for i in range(4) for text in (f"q{i}", f"echo: q{i}")]
    expected += ["mine", "echo: mine"]
    whole = stub.ListThreadItems(pb.ListThreadItemsRequest(thread_id=child.id)).items
    assert [i.message.text for i in whole] == expected
    first = stub.ListThreadItems(pb.ListThreadItemsRequest(thread_id=child.id, page_size=5))
    rest = stub.ListThreadItems(
        pb.ListThreadItemsRequest(thread_id=child.id, page_token=first.next_page_token)
    )
    assert [i.message.text for i in [*first.items, *rest.items]] == expected
    assert [i.id for i in [*first.items, *rest.items]] == [i.id for i in whole]


def test_run_turn_streams_deltas_items_and_usage(stack: Stack, tmp_path: Path) -> None:
    stub = stack.threads
    root = start(stub, tmp_path)
    events = turn(stub, root.id, user("hello there"))
    kinds = [e.WhichOneof("kind") for e in events]
    assert kinds[0] == "turn_started" and kinds[-1] == "turn_completed"
    assert set(kinds[1:-2]) == {"text_delta"}
    assert kinds[-2] == "item_done"
    text = "".join(e.text_delta.text for e in events if e.HasField("text_delta"))
    assert text == "echo: hello there" == events[-2].item_done.item.message.text
    done = events[-1].turn_completed
    assert done.status == pb.TURN_STATUS_COMPLETED
    assert done.turn_id == events[0].turn_started.turn_id
    assert done.usage.input_tokens > 0 and done.usage.output_tokens > 0
    turns = stub.ListTurns(pb.ListTurnsRequest(thread_id=root.id)).turns
    assert [(t.id, t.status) for t in turns] == [(done.turn_id, pb.TURN_STATUS_COMPLETED)]
    assert turns[0].usage == done.usage


def test_function_calls_go_to_the_client_and_come_back_as_input(
    stack: Stack, tmp_path: Path
) -> None:
    stub = stack.threads
    root = start(stub, tmp_path)
    tool = c.Tool(name="lookup", description="find", parameters_json='{"type":"object"}')
    events = turn(stub, root.id, user('/call lookup {"q": 1}'), tools=[tool])
    done = events[-1].turn_completed
    (call,) = done.pending_function_calls
    assert (call.name, call.arguments) == ("lookup", '{"q": 1}')
    for bad, text in [
        (
            c.Item(function_call_output=c.FunctionCallOutput(call_id="nope", output="x")),
            "names no open function call",
        ),
        (c.Item(message=c.Message(role=c.ROLE_ASSISTANT, text="x")), "not the assistant"),
        (c.Item(), "no kind"),
    ]:
        with raises_status(grpc.StatusCode.INVALID_ARGUMENT, text):
            turn(stub, root.id, bad)
    output = c.Item(function_call_output=c.FunctionCallOutput(call_id=call.call_id, output="42"))
    events = turn(stub, root.id, output)
    assert events[-2].item_done.item.message.text == f"received output of {call.call_id}: 42"
    with raises_status(grpc.StatusCode.INVALID_ARGUMENT, "at least one item"):
        turn(stub, root.id)


def test_a_failed_model_call_fails_the_turn_and_keeps_the_input(
    stack: Stack, tmp_path: Path
) -> None:
    stub = stack.threads
    root = start(stub, tmp_path)
    with raises_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down"):
        turn(stub, root.id, user("/fail RESOURCE_EXHAUSTED slow down"))
    assert_kept_only_input(
        stub,
        root.id,
        "/fail RESOURCE_EXHAUSTED slow down",
        status=pb.TURN_STATUS_FAILED,
        error_code=grpc.StatusCode.RESOURCE_EXHAUSTED,
    )


def test_interrupt_turn_records_an_interrupted_turn(stack: Stack, tmp_path: Path) -> None:
    stub = stack.threads
    root = start(stub, tmp_path)
    with raises_status(grpc.StatusCode.INVALID_ARGUMENT, "turn_id is required"):
        stub.InterruptTurn(pb.InterruptTurnRequest(thread_id=root.id))
    responses: list[pb.RunTurnResponse] = []
    stream = stub.RunTurn(pb.RunTurnRequest(thread_id=root.id, input=[user("/slow 30 a b c d")]))
    reader = threading.Thread(target=lambda: responses.extend(stream))
    reader.start()
    wait_until(lambda: len(responses) >= 1)
    turn_id = responses[0].events[0].turn_started.turn_id
    with raises_status(grpc.StatusCode.FAILED_PRECONDITION, "already running"):
        turn(stub, root.id, user("second"))
    interrupted = stub.InterruptTurn(
        pb.InterruptTurnRequest(thread_id=root.id, turn_id=turn_id)
    ).turn_id
    reader.join(10)
    events = events_of(responses)
    assert interrupted == turn_id == events[0].turn_started.turn_id
    assert events[-1].turn_completed.status == pb.TURN_STATUS_INTERRUPTED
    record = only_turn(stub, root.id)
    assert record.status == pb.TURN_STATUS_INTERRUPTED
    assert "InterruptTurn" in record.error.message
    # The thread takes turns again.
    assert turn(stub, root.id, user("next"))[-1].turn_completed.status == pb.TURN_STATUS_COMPLETED


def test_a_client_cancelling_the_call_interrupts_the_turn(stack: Stack, tmp_path: Path) -> None:
    stub = stack.threads
    root = start(stub, tmp_path)
    stream = stub.RunTurn(pb.RunTurnRequest(thread_id=root.id, input=[user("/slow 30 x y z")]))
    next(stream)
    stream.cancel()

    def recorded() -> bool:
        turns = stub.ListTurns(pb.ListTurnsRequest(thread_id=root.id)).turns
        return bool(turns[0].status == pb.TURN_STATUS_INTERRUPTED)

    wait_until(recorded)
    assert_kept_only_input(stub, root.id, "/slow 30 x y z")


def test_list_turns_pages(stack: Stack, tmp_path: Path) -> None:
    stub = stack.threads
    root = start(stub, tmp_path)
    ids = [turn(stub, root.id, user(str(i)))[0].turn_started.turn_id for i in range(3)]
    first = stub.ListTurns(pb.ListTurnsRequest(thread_id=root.id, page_size=2))
    rest = stub.ListTurns(
        pb.ListTurnsRequest(thread_id=root.id, page_size=2, page_token=first.next_page_token)
    )
    assert [t.id for t in [*first.turns, *rest.turns]] == ids
    assert rest.next_page_token == ""


def test_fork_hits_the_parents_prompt_cache_and_a_fresh_spawn_does_not(
    stack: Stack, tmp_path: Path
) -> None:
    stub = stack.threads
    root = start(stub, tmp_path, instructions="You are a careful assistant.")
    paragraph = "The quick brown fox jumps over the lazy dog near the river bank. " * 12
    for i in range(12):
        turn(stub, root.id, user(f"part {i}: {paragraph}"))
    parent_last = turn(stub, root.id, user("summarize"))[-1].turn_completed.usage
    assert parent_last.input_tokens > 3000
    child = stub.SpawnThread(fork(root.id)).thread
    forked = turn(stub, child.id, user("continue"))[-1].turn_completed.usage
    inherited_prefix = parent_last.input_tokens  # the parent's last prompt, all inherited
    assert forked.cached_input_tokens >= 0.9 * inherited_prefix
    fresh = stub.SpawnThread(pb.SpawnThreadRequest(parent_id=root.id)).thread
    spawned = turn(stub, fresh.id, user(f"continue {paragraph * 20}"))[-1].turn_completed.usage
    assert spawned.input_tokens > 1024
    assert spawned.cached_input_tokens == 0


def test_an_unreachable_model_service_is_unavailable(stack: Stack, tmp_path: Path) -> None:
    stub = stack.threads
    root = start(stub, tmp_path)
    stack.loop.run(stack.servers[0].stop(0))  # the model-service goes away
    with raises_status(grpc.StatusCode.UNAVAILABLE):
        turn(stub, root.id, user("anyone?"))
    record = only_turn(stub, root.id)
    assert record.status == pb.TURN_STATUS_FAILED


def test_health_and_reflection(stack: Stack) -> None:
    for port, service in [
        (stack.thread_port, "spindle.v1.ThreadService"),
        (stack.model_port, "spindle.v1.ModelService"),
    ]:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for name in ("", service):
                status = health.Check(health_pb2.HealthCheckRequest(service=name)).status
                assert status == health_pb2.HealthCheckResponse.SERVING
            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            (answer,) = reflection.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            )
            names = {s.name for s in answer.list_services_response.service}
            assert {service, "grpc.health.v1.Health"} <= names


def test_a_turn_in_flight_at_shutdown_is_recorded_interrupted(
    loop_thread: LoopThread, tmp_path: Path
) -> None:
    stack = start_stack(loop_thread, tmp_path)
    stub = stack.threads
    root = start(stub, tmp_path)
    stream = stub.RunTurn(pb.RunTurnRequest(thread_id=root.id, input=[user("/slow 60 zzz")]))
    responses = [next(stream)]
    reader = threading.Thread(target=lambda: responses.extend(stream))
    reader.start()
    started = time.monotonic()
    stack.stop(grace=0.2)
    assert time.monotonic() - started < 10
    reader.join(10)
    # The stream says how the turn ended before the call closes.
    final = events_of(responses)[-1].turn_completed
    assert final.status == pb.TURN_STATUS_INTERRUPTED
    assert "shutting down" in final.error.message
    restarted = start_stack(loop_thread, tmp_path)
    try:
        record = only_turn(restarted.threads, root.id)
        assert record.status == pb.TURN_STATUS_INTERRUPTED
        assert "shutting down" in record.error.message
    finally:
        restarted.stop()


def test_a_turn_past_its_deadline_is_interrupted_and_recorded(stack: Stack, tmp_path: Path) -> None:
    stub = stack.threads
    root = start(stub, tmp_path)
    request = pb.RunTurnRequest(thread_id=root.id, input=[user("/slow 30 a b c d")])
    with raises_status(grpc.StatusCode.DEADLINE_EXCEEDED):
        list(stub.RunTurn(request, timeout=0.5))

    def recorded() -> bool:
        turns = stub.ListTurns(pb.ListTurnsRequest(thread_id=root.id)).turns
        return bool(turns and turns[0].status == pb.TURN_STATUS_INTERRUPTED)

    wait_until(recorded)
    record = only_turn(stub, root.id)
    assert record.error.message == "the call's deadline passed"
    assert record.error.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]


def test_an_empty_function_output_is_kept_and_the_thread_goes_on(
    stack: Stack, tmp_path: Path
) -> None:
    stub = stack.threads
    root = start(stub, tmp_path)
    events = turn(stub, root.id, user("/call ls"), tools=[c.Tool(name="ls")])
    (call,) = events[-1].turn_completed.pending_function_calls
    empty = c.Item(function_call_output=c.FunctionCallOutput(call_id=call.call_id, output=""))
    turn(stub, root.id, empty)
    assert turn(stub, root.id, user("next"))[-1].turn_completed.status == pb.TURN_STATUS_COMPLETED
    items = stub.ListThreadItems(pb.ListThreadItemsRequest(thread_id=root.id)).items
    assert items[2].function_call_output == c.FunctionCallOutput(call_id=call.call_id, output="")


@pytest.mark.parametrize("value", ["1e400", str(2**70), "-1", '"0"', "true", "[[[[[[0]]]]]]"])
def test_crafted_page_tokens_are_invalid_arguments(
    stack: Stack, tmp_path: Path, value: str
) -> None:
    stub = stack.threads
    root = start(stub, tmp_path)

    def token(raw: str) -> str:
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    items = f'"l":"items:{root.id}"'
    requests = [
        (
            stub.ListThreadItems,
            pb.ListThreadItemsRequest(
                thread_id=root.id, page_token=token(f'{{{items},"s":{value},"q":0}}')
            ),
        ),
        (
            stub.ListThreadItems,
            pb.ListThreadItemsRequest(
                thread_id=root.id, page_token=token(f'{{{items},"s":0,"q":{value}}}')
            ),
        ),
        (
            stub.ListTurns,
            pb.ListTurnsRequest(
                thread_id=root.id, page_token=token(f'{{"l":"turns:{root.id}","o":{value}}}')
            ),
        ),
        (
            stub.ListThreads,
            pb.ListThreadsRequest(page_token=token(f'{{"l":"threads::0","c":{value},"i":"x"}}')),
        ),
        (stub.ListThreads, pb.ListThreadsRequest(page_token=token("[" * 5000 + "]" * 5000))),
    ]
    for call, request in requests:
        with raises_status(grpc.StatusCode.INVALID_ARGUMENT, "page_token"):
            call(request)


def test_every_failure_code_can_be_listed_back(stack: Stack, tmp_path: Path) -> None:
    stub = stack.threads
    root = start(stub, tmp_path)
    with raises_status(grpc.StatusCode.ALREADY_EXISTS):
        turn(stub, root.id, user("/fail ALREADY_EXISTS duplicate"))
    failed = only_turn(stub, root.id)
    assert failed.error.code == grpc.StatusCode.ALREADY_EXISTS.value[0]


def test_a_double_interrupt_still_ends_the_stream(stack: Stack, tmp_path: Path) -> None:
    stub = stack.threads
    root = start(stub, tmp_path)
    for _ in range(5):
        stream = stub.RunTurn(
            pb.RunTurnRequest(thread_id=root.id, input=[user("/slow 30 a b c d")]), timeout=10
        )
        turn_id = next(stream).events[0].turn_started.turn_id
        request = pb.InterruptTurnRequest(thread_id=root.id, turn_id=turn_id)
        with ThreadPoolExecutor(2) as pool:
            interrupts = [pool.submit(_interrupt_or_ended, stub, request) for _ in range(2)]
        assert turn_id in {i.result() for i in interrupts}
        rest = events_of(stream)
        assert rest[-1].turn_completed.status == pb.TURN_STATUS_INTERRUPTED


def _interrupt_or_ended(stub: pb_grpc.ThreadServiceStub, request: pb.InterruptTurnRequest) -> str:
    """The interrupted turn's id, or "" when it had ended already."""
    try:
        response: pb.InterruptTurnResponse = stub.InterruptTurn(request)
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION, exc.details()
        return ""
    return response.turn_id


def test_warning_metadata_stays_small_for_any_path(stack: Stack, tmp_path: Path) -> None:
    home = stack.thread_settings.config_home
    home.mkdir()
    (home / "config.toml").write_text("")
    (home / "config.toml").chmod(0o444)
    folder = tmp_path.joinpath(*["\x01\x02\x03" * 60] * 4)
    folder.mkdir(parents=True)
    response, call = stack.threads.StartThread.with_call(pb.StartThreadRequest(cwd=str(folder)))
    (value,) = [v for k, v in call.initial_metadata() if k == WARNING_METADATA_KEY]
    assert len(value) <= WARNING_METADATA_MAX_BYTES
    assert value.decode("utf-8").endswith("…")
    assert response.warnings[0].startswith(value.decode("utf-8")[:-1])


def test_a_short_turn_streams_three_messages(stack: Stack, tmp_path: Path) -> None:
    """Events ready together travel together: the start at once, then the
    answer (its text joined, and the finished item), then the end once saved."""
    thread = start(stack.threads, tmp_path)
    request = pb.RunTurnRequest(thread_id=thread.id, input=[user("hello there")])
    messages = list(stack.threads.RunTurn(request))
    kinds = [[event.WhichOneof("kind") for event in m.events] for m in messages]
    assert kinds == [["turn_started"], ["text_delta", "item_done"], ["turn_completed"]]
    assert messages[1].events[0].text_delta.text == "echo: hello there"
    assert [e.sequence for m in messages for e in m.events] == [1, 2, 3, 4]
