"""A property-based fuzzer of the thread-service's public API, against real
processes: no call may end UNKNOWN or INTERNAL, no traceback may reach
either service's log, and both services must answer health checks to the end.

Hypothesis builds every public request message, of all 14 methods (ids of
threads and turns that exist, deleted threads, request ids sent before,
random UUIDs, 20,000+ character strings of every kind of character, deep and
odd JSON schemas, labels, field masks, enum values out of range, the
embedded model's `/call`, `/slow` and `/fail` commands) and raw byte
payloads sent to every method, plus pairs of calls racing on one thread: a
slow turn and an interrupt or a watch of that turn, another turn (rejected,
interrupting or queued), a fork at it, or an archive, delete or update of
its thread. Every call has a deadline. Tracebacks are counted, and the
first few printed.

    python -m tests.fuzz --cases 10000 [--seed N] [--max-seconds S] [--store postgres]

prints the seed (to repeat a run), the status distribution per method, and
the counts of UNKNOWN, INTERNAL and tracebacks; it exits 1 if any is not 0
or a service stopped answering. tests/test_fuzz.py runs a short form.
"""

from __future__ import annotations

import argparse
import base64
import collections
import concurrent.futures
import dataclasses
import json
import secrets
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory
from threading import Lock
from typing import Any, TypeVar, cast

import grpc
import hypothesis
from google.protobuf import field_mask_pb2
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import strategies as st

from spindle.v1 import common_pb2 as c
from spindle.v1 import thread_service_pb2 as pb
from tests.crash import store_arguments
from tests.harness import ServiceProcess, service_pair

T = TypeVar("T")
SERVICE = "/spindle.v1.ThreadService/"
# Each public method: its request type, and whether it streams responses.
METHODS: dict[str, tuple[type[Message], bool]] = {
    "StartThread": (pb.StartThreadRequest, False),
    "SpawnThread": (pb.SpawnThreadRequest, False),
    "ResumeThread": (pb.ResumeThreadRequest, False),
    "GetThread": (pb.GetThreadRequest, False),
    "ListThreads": (pb.ListThreadsRequest, False),
    "UpdateThread": (pb.UpdateThreadRequest, False),
    "ListThreadItems": (pb.ListThreadItemsRequest, False),
    "ArchiveThread": (pb.ArchiveThreadRequest, False),
    "UnarchiveThread": (pb.UnarchiveThreadRequest, False),
    "DeleteThread": (pb.DeleteThreadRequest, False),
    "RunTurn": (pb.RunTurnRequest, True),
    "WatchTurn": (pb.WatchTurnRequest, True),
    "InterruptTurn": (pb.InterruptTurnRequest, False),
    "ListTurns": (pb.ListTurnsRequest, False),
}
# Methods every gRPC server here also serves, to every caller (no authentication).
OPEN_METHODS: dict[str, str] = {
    "/grpc.health.v1.Health/Check": "unary",
    "/grpc.health.v1.Health/Watch": "stream",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": "bidi",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": "bidi",
}
# Paths no service here serves: UNIMPLEMENTED.
UNSERVED = ("/spindle.v1.ThreadService/Nope", "/spindle.v1.ModelService/Generate", "/x")
BAD_CODES = ("UNKNOWN", "INTERNAL")
CALL_DEADLINE = 15.0
OPEN_DEADLINE = 1.0
HEALTH_EVERY = 250
CHUNK = 500


# --- What exists on the server, as the run goes -------------------------------------------


@dataclass
class Pool:
    """Thread ids, turn ids, request ids, open function call ids and page
    tokens the fuzzer has seen, so that requests name things that exist.
    Strategies read it at draw time by index, so a run with one seed draws the
    same choices."""

    cwd: str
    dirs: list[str]
    active: list[str] = field(default_factory=list)
    archived: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    call_ids: list[str] = field(default_factory=lambda: ["call_none"])
    tokens: list[str] = field(default_factory=lambda: [""])
    turn_ids: list[str] = field(default_factory=list)
    request_ids: list[str] = field(default_factory=list)
    # Each thread's newest turn, as its turn_started said.
    newest_turn: dict[str, str] = field(default_factory=dict)
    lock: Lock = field(default_factory=Lock)
    # The newest threads are picked from; the seeded ones always stay.
    keep: int = 64

    def thread(self, index: int) -> str:
        with self.lock:
            return self.active[index % len(self.active)] if self.active else ""

    def archived_thread(self, index: int) -> str:
        with self.lock:
            return self.archived[index % len(self.archived)] if self.archived else ""

    def deleted_thread(self, index: int) -> str:
        with self.lock:
            return self.deleted[index % len(self.deleted)] if self.deleted else ""

    def call_id(self, index: int) -> str:
        with self.lock:
            return self.call_ids[index % len(self.call_ids)]

    def token(self, index: int) -> str:
        with self.lock:
            return self.tokens[index % len(self.tokens)]

    def turn_id(self, index: int) -> str:
        with self.lock:
            return self.turn_ids[index % len(self.turn_ids)] if self.turn_ids else ""

    def request_id(self, index: int) -> str:
        with self.lock:
            return self.request_ids[index % len(self.request_ids)] if self.request_ids else ""

    def turn_of(self, thread_id: str) -> str:
        """The thread's newest turn (running or not), "" if none was seen."""
        with self.lock:
            return self.newest_turn.get(thread_id, "")

    def add_thread(self, thread_id: str) -> None:
        with self.lock:
            self.active.append(thread_id)
            if len(self.active) > self.keep:
                del self.active[self.keep // 2]

    def archive(self, thread_id: str) -> None:
        with self.lock:
            if thread_id in self.active and len(self.active) > 4:
                self.active.remove(thread_id)
            self.archived = [*self.archived[-self.keep :], thread_id]

    def unarchive(self, thread_id: str) -> None:
        with self.lock:
            if thread_id in self.archived:
                self.archived.remove(thread_id)
            if thread_id not in self.active:
                self.active.append(thread_id)

    def delete(self, thread_id: str) -> None:
        with self.lock:
            if thread_id in self.active and len(self.active) > 4:
                self.active.remove(thread_id)
            if thread_id in self.archived:
                self.archived.remove(thread_id)
            self.deleted = [*self.deleted[-self.keep :], thread_id]

    def add_token(self, token: str) -> None:
        with self.lock:
            self.tokens = [*self.tokens[-self.keep :], token]

    def add_call_ids(self, call_ids: Sequence[str]) -> None:
        with self.lock:
            self.call_ids = [*self.call_ids[-self.keep :], *call_ids]

    def add_turn(self, thread_id: str, turn_id: str) -> None:
        with self.lock:
            self.newest_turn[thread_id] = turn_id
            if len(self.newest_turn) > 4 * self.keep:
                del self.newest_turn[next(iter(self.newest_turn))]
            self.turn_ids = [*self.turn_ids[-self.keep :], turn_id]

    def add_request_id(self, request_id: str) -> None:
        with self.lock:
            if request_id not in self.request_ids:
                self.request_ids = [*self.request_ids[-self.keep :], request_id]


# --- Strategies ---------------------------------------------------------------------------

# Units that long values repeat: one to four bytes in UTF-8, control
# characters, NUL, a right-to-left override, a combining mark. The embedded
# model's commands come too, but never `/fail INTERNAL`: a model's INTERNAL
# is passed on to the caller by design.
UNITS = ("x", "é", "€", "😀", "\x01", "\x00", "\n", "\u202e", "e\u0301", "\\", '"', "%")
SPECIAL_TEXTS = (
    "",
    " ",
    "\x00",
    "hi",
    "/call tool_a {}",
    "/call tool_a",
    '/call tool_a {"x": 1}',
    "/call missing {}",
    "/slow 0.05 slowly",
    "/slow 0.3 slowly",
    "/slow -1 x",
    "/slow nan x",
    "/slow inf x",
    "/slow 1e309 x",
    "/slow abc",
    "/fail UNAVAILABLE upstream down",
    "/fail RESOURCE_EXHAUSTED quota",
    "/fail DEADLINE_EXCEEDED slow",
    "/fail NOT_FOUND model",
    "/fail CANCELLED gone",
    "/fail NOT_A_CODE x",
    "/fail",
)


def weighted(*choices: tuple[int, st.SearchStrategy[T]]) -> st.SearchStrategy[T]:
    """One of the strategies, each drawn about as often as its weight says."""
    total = sum(weight for weight, _ in choices)

    def pick(number: int) -> st.SearchStrategy[T]:
        for weight, strategy in choices:
            if number < weight:
                return strategy
            number -= weight
        raise AssertionError(number)

    return st.integers(0, total - 1).flatmap(pick)


def huge_texts() -> st.SearchStrategy[str]:
    """20,000 to 70,000 characters of a repeated unit; rarely, just past max_item_bytes."""
    unit = st.sampled_from(UNITS) | st.text(min_size=1, max_size=3)
    count = weighted((19, st.integers(20_000, 70_000)), (1, st.just(1_048_600)))
    return st.builds(lambda u, n: (u * n)[:n], unit, count)


def texts() -> st.SearchStrategy[str]:
    """Short, special and huge strings (no lone surrogates: protobuf strings are UTF-8)."""
    prefixes = st.sampled_from(["/slow ", "/fail UNAVAILABLE ", "/fail INVALID_ARGUMENT ", ""])
    return weighted(
        (3, st.sampled_from(SPECIAL_TEXTS)),
        (4, st.text(max_size=40)),
        (2, st.builds(lambda p, t: p + t, prefixes, huge_texts())),
    )


def mostly_empty(strategy: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """An optional field: usually unset, so that the rest of a request is what counts."""
    return weighted((3, st.just("")), (1, st.text(max_size=20)), (2, strategy))


def uuid_forms() -> st.SearchStrategy[str]:
    """Random UUIDs in the spellings Python's uuid module also reads."""
    forms: list[Callable[[uuid.UUID], str]] = [
        str,
        lambda u: str(u).upper(),
        lambda u: u.hex,
        lambda u: "{" + str(u) + "}",
        lambda u: "urn:uuid:" + str(u),
        lambda u: str(u) + " ",
        lambda u: str(u)[:-1],
    ]
    return st.builds(lambda u, f: f(u), st.uuids(), st.sampled_from(forms))


def thread_ids(pool: Pool) -> st.SearchStrategy[str]:
    """Mostly threads that exist; else archived or deleted ones, unknown UUIDs and junk."""
    return weighted(
        (12, st.builds(pool.thread, st.integers(0, 1 << 20))),
        (2, st.builds(pool.archived_thread, st.integers(0, 1 << 20))),
        (1, st.builds(pool.deleted_thread, st.integers(0, 1 << 20))),
        (2, uuid_forms()),
        (1, st.just("00000000-0000-0000-0000-000000000000")),
        (3, texts()),
    )


def turn_ids(pool: Pool) -> st.SearchStrategy[str]:
    """Turns that exist (of any thread), unknown UUIDs and junk."""
    return weighted(
        (6, st.builds(pool.turn_id, st.integers(0, 1 << 20))),
        (2, uuid_forms()),
        (1, st.just("")),
        (1, texts()),
    )


def thread_turns(pool: Pool) -> st.SearchStrategy[tuple[str, str]]:
    """A thread and a turn: mostly the thread's own newest turn (perhaps still
    running), else any thread and any turn id."""

    def own(index: int) -> tuple[str, str]:
        thread_id = pool.thread(index)
        return thread_id, pool.turn_of(thread_id)

    return weighted(
        (5, st.builds(own, st.integers(0, 1 << 20))),
        (3, st.tuples(thread_ids(pool), turn_ids(pool))),
    )


def request_ids(pool: Pool) -> st.SearchStrategy[str]:
    """Usually none; else fresh UUIDs, ones sent before (a retry, or a reuse
    with another request) and junk."""
    return weighted(
        (8, st.just("")),
        (2, st.uuids().map(str)),
        (2, st.builds(pool.request_id, st.integers(0, 1 << 20))),
        (1, uuid_forms()),
        (1, texts()),
    )


METADATA_KEY = st.from_regex(r"[A-Za-z0-9_.\-/]{1,64}", fullmatch=True)


def metadata_maps() -> st.SearchStrategy[dict[str, str]]:
    """Labels: usually none; valid ones, too many, bad keys, long or multi-line values."""
    return weighted(
        (6, st.just({})),
        (3, st.dictionaries(METADATA_KEY, st.text(max_size=20), max_size=4)),
        (1, st.dictionaries(texts(), texts(), max_size=3)),
        (1, st.integers(17, 40).map(lambda n: {f"k{i}": "v" for i in range(n)})),
        (1, st.builds(lambda k, v: {k: v}, METADATA_KEY, huge_texts() | st.just("a\nb"))),
    )


def order_bys() -> st.SearchStrategy[str]:
    return weighted(
        (4, st.just("")),
        (
            3,
            st.sampled_from(
                [
                    "create_time",
                    "update_time",
                    "create_time desc",
                    "update_time desc",
                    "update_time asc",
                    "  update_time   desc ",
                    "create_time desc x",
                    "id",
                    "desc",
                ]
            ),
        ),
        (1, texts()),
    )


UPDATE_PATHS = ("agent_nickname", "agent_role", "metadata", "instructions")


def update_masks() -> st.SearchStrategy[list[str]]:
    """Field mask paths: the updatable ones, and others (fields that may not
    change, unknown names, Python attribute names, junk)."""
    others = st.sampled_from(
        [
            "id",
            "cwd",
            "model",
            "status",
            "depth",
            "trust",
            "metadata.k",
            "thread.instructions",
            "__class__",
            "DESCRIPTOR",
            "Clear",
            "",
            "*",
        ]
    )
    return weighted(
        (6, st.lists(st.sampled_from(UPDATE_PATHS), min_size=1, max_size=4)),
        (2, st.lists(st.sampled_from(UPDATE_PATHS) | others, max_size=4)),
        (1, st.lists(texts(), max_size=2)),
    )


def cwds(pool: Pool) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(pool.dirs),
        st.sampled_from(pool.dirs),
        st.sampled_from(["/", "/nonexistent/dir", "relative/dir", "/proc/self/cwd", "/dev/null"]),
        st.builds(lambda d, t: f"{d}/{t}", st.sampled_from(pool.dirs), texts()),
        st.builds(lambda t: "/" + t, huge_texts()),
        texts(),
    )


def tool_names() -> st.SearchStrategy[str]:
    return st.one_of(st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True), texts())


def json_schemas() -> st.SearchStrategy[str]:
    """Empty, valid JSON of every shape, deep nesting, and JSON-like junk."""
    leaves = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10)
    values = st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner),
        max_leaves=20,
    )
    depth = st.integers(1, 100_000)
    return st.one_of(
        st.just(""),
        st.just("   "),
        st.just('{"type": "object", "properties": {"x": {"type": "integer"}}}'),
        values.map(json.dumps),
        st.dictionaries(st.text(max_size=5), values).map(json.dumps),
        st.builds(lambda d: '{"a":' * d + "1" + "}" * d, depth),
        st.builds(lambda d: "[" * d + "]" * d, depth),
        st.builds(lambda d: "[" * d, depth),
        st.builds(lambda d: '{"a": ' + "9" * d + "}", st.integers(4000, 20_000)),
        st.sampled_from(['{"a": NaN}', '{"a": Infinity}', "{'a': 1}", "{", "null", "[]", "1e999"]),
        texts(),
    )


def enums(valid: Sequence[int]) -> st.SearchStrategy[int]:
    """A valid value mostly; else one out of range (proto3 enums are open)."""
    return st.sampled_from(valid) | st.integers(-(2**31), 2**31 - 1)


def items(pool: Pool) -> st.SearchStrategy[c.Item]:
    roles = enums([c.ROLE_USER, c.ROLE_DEVELOPER, c.ROLE_SYSTEM, c.ROLE_ASSISTANT])
    phases = enums([0, c.MESSAGE_PHASE_COMMENTARY, c.MESSAGE_PHASE_FINAL_ANSWER])
    call_ids = st.builds(pool.call_id, st.integers(0, 1 << 20)) | texts()
    user = st.builds(lambda t: c.Item(message=c.Message(role=c.ROLE_USER, text=t)), texts())
    return st.one_of(
        user,
        user,
        st.builds(
            lambda r, t, p: c.Item(message=c.Message(role=r, text=t, phase=p)),
            roles,
            texts(),
            phases,
        ),
        st.builds(
            lambda i, o: c.Item(function_call_output=c.FunctionCallOutput(call_id=i, output=o)),
            call_ids,
            texts(),
        ),
        st.builds(
            lambda i, n, a: c.Item(function_call=c.FunctionCall(call_id=i, name=n, arguments=a)),
            call_ids,
            tool_names(),
            texts(),
        ),
        st.builds(
            lambda s, e: c.Item(reasoning=c.Reasoning(summary=s, encrypted_content=e)),
            texts(),
            texts(),
        ),
        st.builds(
            lambda s, r, t: c.Item(
                agent_message=c.AgentMessage(sender_thread_id=s, recipient_thread_id=r, text=t)
            ),
            thread_ids(pool),
            thread_ids(pool),
            texts(),
        ),
        st.just(c.Item()),
    )


def tools() -> st.SearchStrategy[list[c.Tool]]:
    tool = st.builds(c.Tool, name=tool_names(), description=texts(), parameters_json=json_schemas())
    tool_a = st.just(c.Tool(name="tool_a"))
    many = st.integers(100, 200).map(lambda n: [c.Tool(name=f"t{i}") for i in range(n)])
    return weighted(
        (8, st.just([])),
        (2, st.just([c.Tool(name="tool_a")])),
        (6, st.lists(tool_a | tool, max_size=3)),
        (1, st.just([c.Tool(name="tool_a")] * 2)),
        (1, many),
    )


def page_tokens(pool: Pool) -> st.SearchStrategy[str]:
    """Empty, tokens the service gave out, and forged ones (base64url JSON)."""
    forged_positions = st.dictionaries(
        st.sampled_from(["l", "o", "c", "i", "x"]),
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    )
    forged = forged_positions.map(
        lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")
    )
    return st.one_of(st.just(""), st.builds(pool.token, st.integers(0, 1 << 20)), forged, texts())


def page_sizes() -> st.SearchStrategy[int]:
    return st.sampled_from([0, 1, 2, 100, 1000, 1001]) | st.integers(0, 2**32 - 1)


def requests(pool: Pool) -> dict[str, st.SearchStrategy[Message]]:
    """A strategy for each public method's request message."""
    ids = thread_ids(pool)
    labels = mostly_empty(texts())
    instructions = mostly_empty(texts())
    models = mostly_empty(st.sampled_from(["spindle-echo", "no-such-model", "a/b@c:d+e"]) | texts())
    # A fork at a turn: none, the parent's newest, any turn, or junk (resolved
    # against the parent when the request is built).
    at_turns = weighted((6, st.just("")), (3, st.just("newest")), (1, turn_ids(pool)), (1, texts()))
    forks = st.builds(
        lambda call_id, mode, last_n, at: (call_id, mode, last_n, at),
        st.sampled_from(["", "call_1"]) | texts(),
        enums([0, pb.FORK_MODE_FULL_HISTORY, pb.FORK_MODE_LAST_N_TURNS]),
        st.sampled_from([0, 1, 3]) | st.integers(0, 2**32 - 1),
        at_turns,
    )

    def spawn(
        parent: str,
        fork: tuple[str, int, int, str] | None,
        nickname: str,
        role: str,
        kind: str,
        model: str,
        instructions: str,
        request_id: str,
        metadata: dict[str, str],
    ) -> pb.SpawnThreadRequest:
        request = pb.SpawnThreadRequest(
            parent_id=parent,
            agent_nickname=nickname,
            agent_role=role,
            sub_agent_kind=kind,
            model=model,
            instructions=instructions,
            request_id=request_id,
            metadata=metadata,
        )
        if fork is not None:
            call_id, mode, last_n, at = fork
            at = pool.turn_of(parent) if at == "newest" else at
            request.fork.CopyFrom(
                pb.ForkOptions(
                    parent_spawn_call_id=call_id,
                    mode=cast(Any, mode),
                    last_n_turns=last_n,
                    at_turn_id=at,
                )
            )
        return request

    def update(
        thread_id: str,
        nickname: str,
        role: str,
        instructions: str,
        metadata: dict[str, str],
        paths: list[str],
    ) -> pb.UpdateThreadRequest:
        thread = pb.Thread(
            id=thread_id,
            agent_nickname=nickname,
            agent_role=role,
            instructions=instructions,
            metadata=metadata,
        )
        return pb.UpdateThreadRequest(
            thread=thread, update_mask=field_mask_pb2.FieldMask(paths=paths)
        )

    plain = st.builds(lambda t: c.Item(message=c.Message(role=c.ROLE_USER, text=t)), texts())
    inputs = weighted(
        (6, st.lists(plain, min_size=1, max_size=2)),
        (4, st.lists(items(pool), max_size=4)),
    )
    pairs = thread_turns(pool)
    return {
        "StartThread": st.builds(
            pb.StartThreadRequest,
            cwd=cwds(pool),
            model=models,
            instructions=instructions,
            agent_nickname=labels,
            agent_role=labels,
            request_id=request_ids(pool),
            metadata=metadata_maps(),
        ),
        "SpawnThread": st.builds(
            spawn,
            ids,
            st.none() | forks,
            labels,
            labels,
            mostly_empty(st.just("explorer") | texts()),
            models,
            instructions,
            request_ids(pool),
            metadata_maps(),
        ),
        "ResumeThread": st.builds(pb.ResumeThreadRequest, thread_id=ids),
        "GetThread": st.builds(pb.GetThreadRequest, thread_id=ids),
        "ListThreads": st.builds(
            pb.ListThreadsRequest,
            page_size=page_sizes(),
            page_token=page_tokens(pool),
            parent_id=st.just("") | ids,
            include_archived=st.booleans(),
            status=enums([0, pb.THREAD_STATUS_ACTIVE, pb.THREAD_STATUS_ARCHIVED]),
            metadata=metadata_maps(),
            order_by=order_bys(),
        ),
        "UpdateThread": st.builds(
            update, ids, labels, labels, instructions, metadata_maps(), update_masks()
        ),
        "ListThreadItems": st.builds(
            pb.ListThreadItemsRequest,
            thread_id=ids,
            page_size=page_sizes(),
            page_token=page_tokens(pool),
        ),
        "ArchiveThread": st.builds(
            pb.ArchiveThreadRequest, thread_id=ids, interrupt_running=st.booleans()
        ),
        "UnarchiveThread": st.builds(
            pb.UnarchiveThreadRequest,
            thread_id=weighted(
                (3, st.builds(pool.archived_thread, st.integers(0, 1 << 20))), (2, ids)
            ),
        ),
        # Mostly threads that are gone already: deleting the pool's threads
        # as often as other calls name them would leave most calls NOT_FOUND.
        "DeleteThread": st.builds(
            pb.DeleteThreadRequest,
            thread_id=weighted(
                (1, ids), (2, st.builds(pool.deleted_thread, st.integers(0, 1 << 20))), (1, texts())
            ),
            interrupt_running=st.booleans(),
        ),
        "RunTurn": st.builds(
            pb.RunTurnRequest,
            thread_id=ids,
            input=inputs,
            tools=tools(),
            request_id=request_ids(pool),
            on_disconnect=weighted(
                (3, st.just(0)),
                (2, enums([pb.DISCONNECT_POLICY_CANCEL, pb.DISCONNECT_POLICY_CONTINUE])),
            ),
            when_busy=weighted(
                (3, st.just(0)),
                (
                    2,
                    enums(
                        [pb.BUSY_POLICY_REJECT, pb.BUSY_POLICY_INTERRUPT, pb.BUSY_POLICY_ENQUEUE]
                    ),
                ),
            ),
        ),
        "WatchTurn": st.builds(
            lambda pair, after: pb.WatchTurnRequest(
                thread_id=pair[0], turn_id=pair[1], after_sequence=after
            ),
            pairs,
            st.sampled_from([0, 0, 1, 2, 3, 100]) | st.integers(0, 2**64 - 1),
        ),
        "InterruptTurn": st.builds(
            lambda pair: pb.InterruptTurnRequest(thread_id=pair[0], turn_id=pair[1]), pairs
        ),
        "ListTurns": st.builds(
            pb.ListTurnsRequest, thread_id=ids, page_size=page_sizes(), page_token=page_tokens(pool)
        ),
    }


@dataclass(frozen=True)
class Call:
    """One call to make: a method path and the bytes to send."""

    method: str
    payload: bytes
    kind: str = "unary"  # unary, stream (server streaming) or bidi
    deadline: float = CALL_DEADLINE
    # For streams: cancel the call after this many responses.
    cancel_after: int | None = None
    # Names the table row (with the method), e.g. "raw" or "race".
    note: str = ""
    # Said only in examples: how the payload was made.
    how: str = ""
    # Makes the payload when the call is sent (a race's second call names
    # the turn the first one started), instead of `payload`.
    late: Callable[[], bytes] | None = field(default=None, compare=False)

    @property
    def name(self) -> str:
        short = self.method.rsplit("/", 1)[-1]
        return f"{short} ({self.note})" if self.note else short

    def describe(self, limit: int = 300) -> str:
        text = (
            f"{self.method} {self.note} {self.how} deadline={self.deadline} "
            f"cancel_after={self.cancel_after} payload={self.payload!r}"
        )
        return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class Race:
    """Two calls on one thread, the second started `delay` seconds after the first."""

    first: Call
    second: Call
    delay: float


def deadlines() -> st.SearchStrategy[float]:
    """Mostly one that every answer meets; sometimes one that cuts calls short."""
    return weighted((9, st.just(CALL_DEADLINE)), (1, st.sampled_from([0.001, 0.01, 0.05, 0.2])))


# How often each method is called, against 1 for the others: turns do the most.
METHOD_WEIGHTS = {"RunTurn": 5, "StartThread": 2, "SpawnThread": 2}


def message_calls(pool: Pool) -> st.SearchStrategy[Call]:
    strategies: list[tuple[int, st.SearchStrategy[Call]]] = []
    for name, strategy in requests(pool).items():
        streaming = METHODS[name][1]
        strategies.append(
            (
                METHOD_WEIGHTS.get(name, 1),
                st.builds(
                    lambda m, d, k, n=name, s=streaming: Call(
                        SERVICE + n,
                        m.SerializeToString(),
                        "stream" if s else "unary",
                        d,
                        k if s else None,
                    ),
                    strategy,
                    deadlines(),
                    weighted((4, st.none()), (1, st.integers(0, 3))),
                ),
            )
        )
    return weighted(*strategies)


def mutated(payload: bytes, draw: st.DrawFn) -> bytes:
    """A valid payload truncated, with bytes flipped, or with junk inserted."""
    how = draw(st.sampled_from(["truncate", "flip", "insert", "append"]))
    if not payload:
        return draw(st.binary(min_size=1, max_size=8))
    at = draw(st.integers(0, len(payload) - 1))
    if how == "truncate":
        return payload[:at]
    if how == "flip":
        return payload[:at] + bytes([payload[at] ^ draw(st.integers(1, 255))]) + payload[at + 1 :]
    junk = draw(st.binary(min_size=1, max_size=16))
    return payload[:at] + junk + payload[at:] if how == "insert" else payload + junk


def raw_calls(pool: Pool, *, include_open: bool) -> st.SearchStrategy[Call]:
    """Bytes that may not decode as the method's request, to any method."""
    paths = [SERVICE + name for name in METHODS] + list(UNSERVED)
    if include_open:
        paths += list(OPEN_METHODS)
    messages = requests(pool)

    @st.composite
    def raw(draw: st.DrawFn) -> Call:
        method = draw(st.sampled_from(paths))
        name = method.rsplit("/", 1)[-1]
        if name in METHODS:
            kind = "stream" if METHODS[name][1] else "unary"
        else:
            kind = OPEN_METHODS.get(method, "unary")
        source = draw(st.sampled_from(["random", "mutated", "wrong type", "empty"]))
        if source == "random":
            payload = draw(st.binary(max_size=256))
        elif source == "empty":
            payload = b""
        else:
            other = draw(st.sampled_from(sorted(METHODS)))
            message = draw(messages[other])
            payload = message.SerializeToString()
            if source == "mutated":
                payload = mutated(payload, draw)
        # A valid Watch or reflection request streams until its deadline.
        deadline = OPEN_DEADLINE if method in OPEN_METHODS else draw(deadlines())
        return Call(method, payload, kind, deadline, note="raw", how=source)

    return raw()


RACE_SECONDS = ("0.05", "0.2", "0.5")
RACE_OTHERS = (
    "InterruptTurn",
    "RunTurn",
    "WatchTurn",
    "ArchiveThread",
    "UnarchiveThread",
    "DeleteThread",
    "UpdateThread",
    "ResumeThread",
    "SpawnThread",
    "ListThreadItems",
)


def races(pool: Pool) -> st.SearchStrategy[Race]:
    """A slow turn on a thread and, meanwhile, another call on the same thread:
    one that names the running turn (interrupt, watch, a fork at it), another
    turn (rejected, interrupting or queued), or a change to the thread."""

    @st.composite
    def race(draw: st.DrawFn) -> Race:
        thread_id = pool.thread(draw(st.integers(0, 1 << 20)))
        seconds = draw(st.sampled_from(RACE_SECONDS))
        turn = pb.RunTurnRequest(
            thread_id=thread_id,
            input=[c.Item(message=c.Message(role=c.ROLE_USER, text=f"/slow {seconds} racing"))],
            on_disconnect=cast(Any, draw(st.sampled_from([0, pb.DISCONNECT_POLICY_CONTINUE]))),
        )
        first = Call(
            SERVICE + "RunTurn",
            turn.SerializeToString(),
            "stream",
            cancel_after=draw(weighted((4, st.none()), (1, st.integers(0, 2)))),
            note="race",
        )
        other = draw(st.sampled_from(RACE_OTHERS))
        interrupt = draw(st.booleans())
        late: Callable[[], bytes] | None = None
        second_request: Message
        if other == "RunTurn":
            second_turn: Any = pb.RunTurnRequest()
            second_turn.CopyFrom(turn)
            second_request = second_turn
            second_turn.when_busy = draw(
                st.sampled_from(
                    [0, pb.BUSY_POLICY_INTERRUPT, pb.BUSY_POLICY_ENQUEUE, pb.BUSY_POLICY_REJECT]
                )
            )
        elif other in ("InterruptTurn", "WatchTurn"):
            after = draw(st.sampled_from([0, 1, 2]))

            def late_turn(kind: str = other, after: int = after) -> bytes:
                turn_id = pool.turn_of(thread_id)
                if kind == "WatchTurn":
                    return pb.WatchTurnRequest(
                        thread_id=thread_id, turn_id=turn_id, after_sequence=after
                    ).SerializeToString()
                return pb.InterruptTurnRequest(
                    thread_id=thread_id, turn_id=turn_id
                ).SerializeToString()

            late = late_turn
            second_request = METHODS[other][0](thread_id=thread_id)
        elif other == "SpawnThread":
            call_id = f"call_race_{draw(st.integers(0, 20))}"
            at_newest = draw(st.booleans())

            def late_spawn(call_id: str = call_id, at_newest: bool = at_newest) -> bytes:
                fork = pb.ForkOptions(
                    parent_spawn_call_id=call_id,
                    at_turn_id=pool.turn_of(thread_id) if at_newest else "",
                )
                return pb.SpawnThreadRequest(parent_id=thread_id, fork=fork).SerializeToString()

            late = late_spawn
            second_request = pb.SpawnThreadRequest(parent_id=thread_id)
        elif other in ("ArchiveThread", "DeleteThread"):
            second_request = METHODS[other][0](thread_id=thread_id, interrupt_running=interrupt)
        elif other == "UpdateThread":
            second_request = pb.UpdateThreadRequest(
                thread=pb.Thread(id=thread_id, instructions="raced", metadata={"race": "1"}),
                update_mask=field_mask_pb2.FieldMask(
                    paths=draw(st.lists(st.sampled_from(UPDATE_PATHS), min_size=1, max_size=2))
                ),
            )
        else:
            second_request = METHODS[other][0](thread_id=thread_id)
        kind = "stream" if METHODS[other][1] else "unary"
        second = Call(
            SERVICE + other, second_request.SerializeToString(), kind, note="race", late=late
        )
        return Race(first, second, draw(st.sampled_from([0.0, 0.02, 0.1, 0.3])))

    return race()


def fuzz_cases(pool: Pool, *, include_open: bool) -> st.SearchStrategy[Call | Race]:
    return weighted(
        (14, message_calls(pool)),
        (4, raw_calls(pool, include_open=include_open)),
        (1, races(pool)),
    )


# --- Running calls and keeping the score --------------------------------------------------


@dataclass
class Report:
    seed: int
    statuses: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    examples: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    cases: int = 0
    skipped: int = 0
    seconds: float = 0.0
    tracebacks: dict[str, int] = field(default_factory=dict)
    # The first few tracebacks themselves, with the log lines before each.
    traceback_excerpts: list[str] = field(default_factory=list)
    down: list[str] = field(default_factory=list)

    def count(self, code: str) -> int:
        return sum(n for (_, status), n in self.statuses.items() if status == code)

    @property
    def failed(self) -> bool:
        return bool(
            any(self.count(code) for code in BAD_CODES)
            or any(self.tracebacks.values())
            or self.down
        )

    def examples_of(self, codes: Sequence[str]) -> list[str]:
        return [
            f"{method} {code}: {example}"
            for (method, code), found in sorted(self.examples.items())
            if code in codes
            for example in found
        ]

    def table(self) -> str:
        """The status distribution: one row per method, one column per status."""
        methods = sorted({m for m, _ in self.statuses})
        codes = sorted({s for _, s in self.statuses}, key=lambda s: (s != "OK", s))
        width = max([len(m) for m in methods] + [6])
        head = f"{'method':<{width}} " + " ".join(f"{code:>{max(len(code), 5)}}" for code in codes)
        lines = [head, "-" * len(head)]
        for method in methods:
            cells = " ".join(
                f"{self.statuses[(method, code)]:>{max(len(code), 5)}}" for code in codes
            )
            lines.append(f"{method:<{width}} {cells}")
        totals = " ".join(f"{self.count(code):>{max(len(code), 5)}}" for code in codes)
        lines.append(f"{'total':<{width}} {totals}")
        return "\n".join(lines)

    def summary(self, show: Sequence[str] = ()) -> str:
        traces = ", ".join(f"{name} {n}" for name, n in self.tracebacks.items())
        lines = [
            self.table(),
            "",
            f"seed {self.seed}: {self.cases} cases in {self.seconds:.1f} s"
            + (f" ({self.skipped} past the time limit, not sent)" if self.skipped else ""),
            f"UNKNOWN {self.count('UNKNOWN')}, INTERNAL {self.count('INTERNAL')}, "
            f"tracebacks in the logs: {traces}",
            "services up throughout: "
            + ("yes" if not self.down else "NO: " + "; ".join(self.down)),
        ]
        for codes in (BAD_CODES, tuple(show)):
            examples = self.examples_of(codes)
            if examples:
                lines += ["", f"examples of {', '.join(codes)}:", *examples]
        for excerpt in self.traceback_excerpts:
            lines += ["", excerpt]
        return "\n".join(lines)


def identity(data: bytes) -> bytes:
    """The (de)serializer of generic calls: payloads travel as given, answers come back raw."""
    return data


class Fuzzer:
    """Sends calls over one channel, keeps the pool up to date and the score."""

    def __init__(self, channel: grpc.Channel, pool: Pool, report: Report) -> None:
        self.channel = channel
        self.pool = pool
        self.report = report
        self._lock = Lock()
        self._executor = concurrent.futures.ThreadPoolExecutor(2)

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    def run(self, case: Call | Race) -> None:
        if isinstance(case, Call):
            self.send(case)
            return
        first = self._executor.submit(self.send, case.first)
        time.sleep(case.delay)
        second = self._executor.submit(self.send, case.second)
        first.result()
        second.result()

    def send(self, call: Call) -> str:
        if call.late is not None:
            call = dataclasses.replace(call, payload=call.late(), late=None)
        details = ""
        try:
            responses = self._invoke(call)
            code = "OK"
        except grpc.RpcError as error:
            code, details = error.code().name, error.details() or ""
            responses = []
        self._learn(call, responses)
        with self._lock:
            key = (call.name, code)
            self.report.statuses[key] += 1
            found = self.report.examples.setdefault(key, [])
            if len(found) < 3:
                found.append(f"{call.describe()} -> {details[:200]!r}")
        return code

    def _invoke(self, call: Call) -> list[bytes]:
        if call.kind == "unary":
            unary = self.channel.unary_unary(
                call.method, request_serializer=identity, response_deserializer=identity
            )
            return [unary(call.payload, timeout=call.deadline)]
        if call.kind == "bidi":
            bidi = self.channel.stream_stream(
                call.method, request_serializer=identity, response_deserializer=identity
            )
            return list(bidi(iter([call.payload]), timeout=call.deadline))
        stream = self.channel.unary_stream(
            call.method, request_serializer=identity, response_deserializer=identity
        )
        responses = stream(call.payload, timeout=call.deadline)
        received: list[bytes] = []
        thread_id = ""
        if call.method == SERVICE + "RunTurn" and call.note != "raw":
            thread_id = pb.RunTurnRequest.FromString(call.payload).thread_id
        for response in responses:
            received.append(response)
            if thread_id:
                # As it arrives, so that a race's second call can name the turn.
                for event in pb.RunTurnResponse.FromString(response).events:
                    if event.HasField("turn_started"):
                        self.pool.add_turn(_canonical(thread_id), event.turn_started.turn_id)
            if call.cancel_after is not None and len(received) > call.cancel_after:
                responses.cancel()
        return received

    def _learn(self, call: Call, responses: list[bytes]) -> None:
        """Remember threads, turns, request ids, call ids and page tokens that
        the calls and their answers name."""
        name = call.method.rsplit("/", 1)[-1]
        if not call.method.startswith(SERVICE) or call.note == "raw" or name not in METHODS:
            return
        request: Any = METHODS[name][0].FromString(call.payload)
        if getattr(request, "request_id", ""):
            self.pool.add_request_id(request.request_id)
        if not responses:
            return
        if name in ("StartThread", "SpawnThread"):
            response: Any = getattr(pb, f"{name}Response").FromString(responses[0])
            self.pool.add_thread(response.thread.id)
        elif name == "ArchiveThread":
            self.pool.archive(pb.ArchiveThreadResponse.FromString(responses[0]).thread.id)
        elif name == "UnarchiveThread":
            self.pool.unarchive(pb.UnarchiveThreadResponse.FromString(responses[0]).thread.id)
        elif name == "DeleteThread":
            self.pool.delete(_canonical(request.thread_id))
        elif name in ("ListThreads", "ListThreadItems", "ListTurns"):
            listed: Any = getattr(pb, f"{name}Response").FromString(responses[0])
            if listed.next_page_token:
                self.pool.add_token(listed.next_page_token)
        elif name == "RunTurn":
            for data in responses:
                for event in pb.RunTurnResponse.FromString(data).events:
                    if event.HasField("turn_completed"):
                        calls = event.turn_completed.pending_function_calls
                        self.pool.add_call_ids([call.call_id for call in calls])


def _canonical(thread_id: str) -> str:
    """A thread id as the service spells it (it reads every spelling uuid does)."""
    try:
        return str(uuid.UUID(thread_id))
    except ValueError:
        return thread_id


def healthy(channel: grpc.Channel) -> bool:
    try:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
    except grpc.RpcError:
        return False
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


# --- The services under test --------------------------------------------------------------


@dataclass
class Target:
    model: ServiceProcess
    thread: ServiceProcess
    pool: Pool

    def tracebacks(self) -> dict[str, int]:
        return {
            "model-service": len(self.model.tracebacks()),
            "thread-service": len(self.thread.tracebacks()),
        }

    def traceback_excerpts(self, limit: int = 3) -> list[str]:
        """The first `limit` tracebacks of the logs, each with the line before it."""
        processes = (("thread-service", self.thread), ("model-service", self.model))
        found = [f"{name} log:\n{tb}" for name, p in processes for tb in p.tracebacks()]
        return found[:limit]


def _prepare_folders(work: Path) -> list[str]:
    """Folders StartThread may be given: plain, nested, a git repository and
    its linked worktree, odd names; also a file and a symlink loop."""
    folders = [work, work / "nested" / "deeper", work / "repo", work / "odd name ü \\ %"]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    (work / "repo" / ".git").mkdir(exist_ok=True)
    (work / "linked").mkdir(exist_ok=True)
    (work / "linked" / ".git").write_text(f"gitdir: {work / 'repo' / '.git' / 'worktrees' / 'x'}\n")
    (work / "file").write_text("not a folder")
    loop = work / "loop"
    if not loop.is_symlink():
        loop.symlink_to(loop)
    return [str(f) for f in [*folders, work / "linked", work / "file", loop]]


def _seed_threads(channel: grpc.Channel, pool: Pool) -> None:
    """A root, a child, a fork, an archived thread and one with an open call."""
    fuzzer = Fuzzer(channel, pool, Report(0))
    try:
        start = pb.StartThreadRequest(cwd=pool.cwd)
        root = pb.StartThreadResponse.FromString(
            fuzzer._invoke(Call(SERVICE + "StartThread", start.SerializeToString()))[0]
        ).thread.id
        pool.add_thread(root)
        for spawn in (
            pb.SpawnThreadRequest(parent_id=root),
            pb.SpawnThreadRequest(parent_id=root, fork=pb.ForkOptions(parent_spawn_call_id="c1")),
        ):
            fuzzer.send(Call(SERVICE + "SpawnThread", spawn.SerializeToString()))
        fuzzer.send(Call(SERVICE + "StartThread", start.SerializeToString()))
        archived = pool.thread(-1)
        fuzzer.send(
            Call(
                SERVICE + "ArchiveThread",
                pb.ArchiveThreadRequest(thread_id=archived).SerializeToString(),
            )
        )
        with_call = pb.RunTurnRequest(
            thread_id=root,
            input=[c.Item(message=c.Message(role=c.ROLE_USER, text="/call tool_a {}"))],
            tools=[c.Tool(name="tool_a")],
        )
        fuzzer.send(Call(SERVICE + "RunTurn", with_call.SerializeToString(), "stream"))
    finally:
        fuzzer.close()


@contextmanager
def running_target(tmp: Path, thread_args: Sequence[str] = ()) -> Iterator[Target]:
    """A model-service and a thread-service as processes, with seeded threads."""
    with service_pair(tmp, thread_args) as (model, thread):
        dirs = _prepare_folders(tmp / "work")
        pool = Pool(cwd=dirs[0], dirs=dirs)
        with grpc.insecure_channel(thread.address) as channel:
            _seed_threads(channel, pool)
        yield Target(model, thread, pool)


def fuzz(
    target: Target,
    *,
    cases: int,
    seed: int,
    max_seconds: float = 600.0,
    include_open: bool = True,
) -> Report:
    """Run `cases` hypothesis cases against `target` and score them."""
    report = Report(seed)
    started = time.monotonic()
    with (
        grpc.insecure_channel(target.thread.address) as channel,
        grpc.insecure_channel(target.thread.address) as probe,
        grpc.insecure_channel(target.model.address) as model_probe,
    ):
        fuzzer = Fuzzer(channel, target.pool, report)

        def check_up() -> None:
            for name, process, health in (
                ("thread-service", target.thread, probe),
                ("model-service", target.model, model_probe),
            ):
                if process.proc.poll() is not None or not healthy(health):
                    report.down.append(f"{name} after case {report.cases}")

        def one(case: Call | Race) -> None:
            if report.down or time.monotonic() - started > max_seconds:
                report.skipped += 1
                return
            report.cases += 1
            fuzzer.run(case)
            if report.cases % HEALTH_EVERY == 0:
                check_up()

        strategy = fuzz_cases(target.pool, include_open=include_open)
        try:
            # In chunks, each with its own seed drawn from `seed`: hypothesis
            # keeps what it generated for the length of one run.
            for chunk, first in enumerate(range(0, cases, CHUNK)):
                run = hypothesis.given(strategy)(one)
                run = hypothesis.settings(
                    max_examples=min(CHUNK, cases - first),
                    database=None,
                    deadline=None,
                    phases=[hypothesis.Phase.generate],
                    suppress_health_check=list(hypothesis.HealthCheck),
                    print_blob=False,
                )(run)
                hypothesis.seed(seed * 100_003 + chunk)(run)()
        finally:
            fuzzer.close()
        check_up()
    report.seconds = time.monotonic() - started
    report.tracebacks = target.tracebacks()
    report.traceback_excerpts = target.traceback_excerpts()
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fuzz", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--cases", type=int, default=1000, help="hypothesis cases to run")
    parser.add_argument("--seed", type=int, default=None, help="repeat a run (default: random)")
    parser.add_argument("--max-seconds", type=float, default=3600.0, help="stop sending after this")
    parser.add_argument(
        "--store",
        default="sqlite",
        help="sqlite (default), postgres (a fresh database on "
        "SPINDLE_TEST_POSTGRES) or a store URL",
    )
    parser.add_argument(
        "--no-open-methods",
        action="store_true",
        help="send no raw payloads to health checking and reflection",
    )
    parser.add_argument(
        "--show",
        action="append",
        default=[],
        metavar="STATUS",
        help="also print examples of calls that ended so (repeatable), e.g. RESOURCE_EXHAUSTED",
    )
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else secrets.randbits(32)
    print(f"fuzz: seed {seed}, {args.cases} cases, store {args.store}", flush=True)
    with (
        TemporaryDirectory(prefix="spindle-fuzz-") as tmp,
        store_arguments(args.store) as store,
        running_target(Path(tmp), store) as target,
    ):
        report = fuzz(
            target,
            cases=args.cases,
            seed=seed,
            max_seconds=args.max_seconds,
            include_open=not args.no_open_methods,
        )
    print(report.summary(args.show))
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
