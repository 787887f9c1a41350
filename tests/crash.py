"""Crash test: kill -9 the services while clients run turns, restart them on
the same data, and count what a crash cost.

Several client threads run turns on threads of their own. A turn counts as
acknowledged only when its client received `turn_completed` with COMPLETED;
its input and answer must then be in the thread's history, the answer right
after the input, whatever was killed later (else the turn is *lost*). Rounds
alternate: kill -9 the thread-service, or the model-service, at a random
moment while turns run, then start it again on the same port and data (a
thread-service ends, as it starts, the turns its killed predecessor left
running). At the end every thread must take a new turn within a bound (else
it is *wedged*: RunTurn keeps answering "already running"). Then every
thread's record must be consistent (no turn left RUNNING, each turn's items
together, a turn that did not complete without the model's output, a
completed one with its answer, its kept events replaying 1, 2, 3... to its
end), and on SQLite the database must pass `PRAGMA integrity_check` and
`foreign_key_check` once the service is stopped (else it is *inconsistent*).

    python -m tests.crash --kills 20 [--clients 4] [--store postgres] [--seed N]

kills each service `--kills` times, prints a table of the rounds and the
totals, and exits 1 if a turn was lost, a thread wedged or a record is
inconsistent.
tests/test_crash.py runs a short form.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import signal
import sqlite3
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory

import grpc

from spindle.v1 import common_pb2 as c
from spindle.v1 import thread_service_pb2 as pb
from spindle.v1 import thread_service_pb2_grpc as pb_grpc
from tests.harness import ServiceProcess, thread_process
from tests.postgres import SERVER_ENV, fresh_database
from tests.rpc import user

# Clients retry at once against a service that is back, rather than after
# gRPC's default reconnect backoff (up to two minutes).
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]
TURN_DEADLINE = 30.0
# How long a thread may keep answering "already running" after the last restart.
WEDGE_BOUND = 30.0
# How long a round waits for a turn to be acknowledged after a restart.
PROGRESS_BOUND = 60.0


@dataclass(frozen=True)
class Acknowledged:
    thread_id: str
    input_text: str
    answer: str


@dataclass
class Tally:
    """What the clients saw, shared between their threads."""

    acknowledged: list[Acknowledged] = field(default_factory=list)
    attempted: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    threads: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def acked(self) -> int:
        with self.lock:
            return len(self.acknowledged)


@dataclass
class Round:
    killed: str
    after_seconds: float
    acked_before: int
    down_seconds: float = 0.0
    # From the restart to the next acknowledged turn.
    recovery_seconds: float = 0.0


class Services:
    """A model-service and a thread-service that can be killed and started
    again on the same ports and data."""

    def __init__(self, tmp: Path, store: Sequence[str]) -> None:
        self.tmp = tmp
        self.store = list(store)
        self.logs: list[ServiceProcess] = []
        self.model = self._start_model("127.0.0.1:0")
        self.model_listen = self.model.address
        try:
            self.thread = self._start_thread("127.0.0.1:0")
        except BaseException:
            self.model.stop()
            raise
        self.thread_listen = self.thread.address

    def _start_model(self, listen: str) -> ServiceProcess:
        process = ServiceProcess(
            "model_service", ["--listen", listen, "--config-home", str(self.tmp / "model-home")]
        )
        self.logs.append(process)
        _ = process.port
        return process

    def _start_thread(self, listen: str) -> ServiceProcess:
        process = thread_process(
            self.model_listen,
            self.tmp / "data",
            self.tmp / "home",
            "--listen",
            listen,
            # On PostgreSQL a killed replica's turns end after its lease: soon.
            "--turn-lease",
            "1",
            *self.store,
        )
        self.logs.append(process)
        _ = process.port
        return process

    def kill_and_restart(self, which: str, pause: float) -> float:
        """kill -9 one service, wait `pause`, start it again; seconds it was down."""
        process = self.thread if which == "thread-service" else self.model
        killed = time.monotonic()
        process.stop(signal.SIGKILL)
        time.sleep(pause)
        if which == "thread-service":
            self.thread = self._start_thread(self.thread_listen)
        else:
            self.model = self._start_model(self.model_listen)
        return time.monotonic() - killed

    def stop(self) -> None:
        self.thread.stop()
        self.model.stop()

    def tracebacks(self) -> list[str]:
        """Each traceback in the services' logs (see `ServiceProcess.tracebacks`)."""
        return [f"{p.module} log:\n{tb}" for p in self.logs for tb in p.tracebacks()]

    def model_calls(self) -> tuple[int, int]:
        """Model calls the model-services logged, and how many of them it
        refused for want of their window's base (WINDOW_NOT_HELD, after a
        restart): the thread-service then sent the whole history again."""
        lines = [
            line
            for process in self.logs
            if process.module == "model_service"
            for line in process.log_lines
            if "generate thread_id=" in line
        ]
        return len(lines), sum("status=FAILED_PRECONDITION" in line for line in lines)


@contextmanager
def store_arguments(store: str) -> Iterator[list[str]]:
    """thread-service flags for `store`: `sqlite` (the default file in the data
    folder), `postgres` (a fresh database on SPINDLE_TEST_POSTGRES, dropped
    afterwards) or a store URL."""
    if store == "sqlite":
        yield []
        return
    if store != "postgres":
        yield ["--store", store]
        return
    server = os.environ.get(SERVER_ENV, "")
    if not server:
        raise SystemExit(f"--store postgres needs {SERVER_ENV} (scripts/postgres-test-server)")
    with fresh_database(server, "spindle_fuzz_") as url:
        yield ["--store", url]


def run_turn(
    stub: pb_grpc.ThreadServiceStub, thread_id: str, text: str
) -> tuple[str, pb.TurnCompleted | None]:
    """The answer's text and the turn's end as the client received them."""
    answer = ""
    request = pb.RunTurnRequest(thread_id=thread_id, input=[user(text)])
    for response in stub.RunTurn(request, timeout=TURN_DEADLINE):
        for event in response.events:
            if event.HasField("item_done") and event.item_done.item.HasField("message"):
                answer = event.item_done.item.message.text
            if event.HasField("turn_completed"):
                return answer, event.turn_completed
    return answer, None


class Client(threading.Thread):
    """Runs turns on threads of its own until told to stop."""

    def __init__(self, number: int, address: str, cwd: Path, tally: Tally, seed: int) -> None:
        super().__init__(name=f"crash-client-{number}", daemon=True)
        self.number = number
        self.address = address
        self.cwd = cwd
        self.tally = tally
        self.random = random.Random(seed)
        self.stopping = threading.Event()
        self.thread_ids: list[str] = []

    def run(self) -> None:
        with grpc.insecure_channel(self.address, options=CHANNEL_OPTIONS) as channel:
            stub = pb_grpc.ThreadServiceStub(channel)
            count = 0
            while not self.stopping.is_set():
                count += 1
                try:
                    self._step(stub, count)
                except grpc.RpcError as error:
                    with self.tally.lock:
                        name = error.code().name
                        self.tally.failed[name] = self.tally.failed.get(name, 0) + 1
                    time.sleep(0.05)

    def _step(self, stub: pb_grpc.ThreadServiceStub, count: int) -> None:
        if len(self.thread_ids) < 2 or self.random.random() < 0.05:
            started = stub.StartThread(pb.StartThreadRequest(cwd=str(self.cwd)), timeout=10)
            self.thread_ids.append(started.thread.id)
            with self.tally.lock:
                self.tally.threads.add(started.thread.id)
            return
        thread_id = self.random.choice(self.thread_ids)
        words = f"client {self.number} turn {count}"
        # Some turns stream slowly, so that kills land in the middle of turns.
        slow = self.random.choice(["", "", "/slow 0.1 ", "/slow 0.3 "])
        with self.tally.lock:
            self.tally.attempted += 1
        answer, completed = run_turn(stub, thread_id, slow + words)
        if completed is not None and completed.status == pb.TURN_STATUS_COMPLETED:
            with self.tally.lock:
                self.tally.acknowledged.append(Acknowledged(thread_id, slow + words, answer))


def history(stub: pb_grpc.ThreadServiceStub, thread_id: str) -> list[c.Item]:
    found: list[c.Item] = []
    token = ""
    while True:
        page = stub.ListThreadItems(
            pb.ListThreadItemsRequest(thread_id=thread_id, page_size=1000, page_token=token),
            timeout=30,
        )
        found.extend(page.items)
        token = page.next_page_token
        if not token:
            return found


def turns_of(stub: pb_grpc.ThreadServiceStub, thread_id: str) -> list[pb.Turn]:
    found: list[pb.Turn] = []
    token = ""
    while True:
        page = stub.ListTurns(
            pb.ListTurnsRequest(thread_id=thread_id, page_size=1000, page_token=token),
            timeout=30,
        )
        found.extend(page.turns)
        token = page.next_page_token
        if not token:
            return found


def lost_turns(stub: pb_grpc.ThreadServiceStub, acknowledged: list[Acknowledged]) -> list[str]:
    """Acknowledged turns whose input, with the answer right after it, is not in the history."""
    texts: dict[str, list[str]] = {}
    lost = []
    for turn in acknowledged:
        if turn.thread_id not in texts:
            texts[turn.thread_id] = [item.message.text for item in history(stub, turn.thread_id)]
        items = texts[turn.thread_id]
        where = [i for i, text in enumerate(items) if text == turn.input_text]
        if len(where) != 1 or items[where[0] + 1 : where[0] + 2] != [turn.answer]:
            lost.append(f"{turn.thread_id}: {turn.input_text!r} -> {turn.answer!r}")
    return lost


def recorded_turns(stub: pb_grpc.ThreadServiceStub, thread_ids: set[str]) -> Counter[str]:
    """How the service recorded the threads' turns: status, and why one did not complete."""
    counts: Counter[str] = Counter()
    for thread_id in thread_ids:
        for turn in turns_of(stub, thread_id):
            status = pb.TurnStatus.Name(turn.status).removeprefix("TURN_STATUS_")
            why = f" ({turn.error.message})" if turn.error.message else ""
            counts[status + why[:70]] += 1
    return counts


def inconsistencies(stub: pb_grpc.ThreadServiceStub, thread_ids: set[str]) -> list[str]:
    """What a thread's record says that cannot be, read through the API after
    the last restart: a turn still RUNNING, items naming no turn of the
    thread or out of their turn's order, a turn that did not complete with
    more than its input, a completed one without its answer, and kept events
    that do not replay whole (sequence 1, 2, 3... ending as the turn ended)."""
    found: list[str] = []
    for thread_id in sorted(thread_ids):
        turns = {turn.id: turn for turn in turns_of(stub, thread_id)}
        by_turn: dict[str, list[c.Item]] = {}
        order: list[str] = []
        for item in history(stub, thread_id):
            if item.turn_id not in turns:
                found.append(f"{thread_id}: item of unknown turn {item.turn_id!r}")
                continue
            if item.turn_id in by_turn and order[-1] != item.turn_id:
                found.append(f"{thread_id}: items of turn {item.turn_id} are not together")
            if item.turn_id not in by_turn:
                order.append(item.turn_id)
            by_turn.setdefault(item.turn_id, []).append(item)
        for turn in turns.values():
            where = f"{thread_id}: turn {turn.id} ({pb.TurnStatus.Name(turn.status)})"
            kept = by_turn.get(turn.id, [])
            said = [i for i in kept if i.message.role == c.ROLE_ASSISTANT]
            if turn.status == pb.TURN_STATUS_RUNNING:
                found.append(f"{where} is still running")
            elif turn.status == pb.TURN_STATUS_COMPLETED and len(said) != 1:
                found.append(f"{where} has {len(said)} answers")
            elif turn.status != pb.TURN_STATUS_COMPLETED and said:
                found.append(f"{where} kept the model's output")
            if not kept or kept[0].message.role != c.ROLE_USER:
                found.append(f"{where} does not start with its input")
            found.extend(f"{where}: {problem}" for problem in _replay_problems(stub, turn))
    return found


def _replay_problems(stub: pb_grpc.ThreadServiceStub, turn: pb.Turn) -> list[str]:
    """Whether the turn's kept events replay whole, ending as the turn ended."""
    events: list[pb.TurnEvent] = []
    request = pb.WatchTurnRequest(thread_id=turn.thread_id, turn_id=turn.id)
    failure: grpc.RpcError | None = None
    try:
        for response in stub.WatchTurn(request, timeout=30):
            events.extend(response.events)
    except grpc.RpcError as error:
        failure = error
    problems = []
    if [event.sequence for event in events] != list(range(1, len(events) + 1)):
        problems.append(f"events numbered {[event.sequence for event in events][:20]}")
    if turn.status == pb.TURN_STATUS_FAILED:
        if failure is None or failure.code().value[0] != turn.error.code:
            problems.append(f"replay of a failed turn ended {failure and failure.code().name}")
    elif failure is not None:
        problems.append(f"replay failed: {failure.code().name}: {failure.details()}")
    elif not events or not events[-1].HasField("turn_completed"):
        problems.append("replay does not end with turn_completed")
    elif events[-1].turn_completed.status != turn.status:
        problems.append("replay ends " + pb.TurnStatus.Name(events[-1].turn_completed.status))
    return problems


def sqlite_problems(database: Path) -> list[str]:
    """SQLite's own checks of the database file, once the service has stopped."""
    with closing(sqlite3.connect(database)) as conn:
        checked = [row[0] for row in conn.execute("PRAGMA integrity_check")]
        keys = conn.execute("PRAGMA foreign_key_check").fetchall()
    problems = [] if checked == ["ok"] else [f"integrity_check: {checked[:5]}"]
    return problems + [f"foreign_key_check: {row}" for row in keys[:5]]


def wedged_threads(stub: pb_grpc.ThreadServiceStub, thread_ids: set[str]) -> list[str]:
    """Threads that take no new turn within WEDGE_BOUND seconds."""
    wedged = []
    deadline = time.monotonic() + WEDGE_BOUND
    for thread_id in sorted(thread_ids):
        while True:
            try:
                _, completed = run_turn(stub, thread_id, "after the crashes")
                if completed is not None and completed.status == pb.TURN_STATUS_COMPLETED:
                    break
                problem = f"ended {completed}"
            except grpc.RpcError as error:
                problem = f"{error.code().name}: {error.details()}"
            if time.monotonic() > deadline:
                wedged.append(f"{thread_id}: {problem}")
                break
            time.sleep(0.2)
    return wedged


@dataclass
class Result:
    rounds: list[Round]
    tally: Tally
    lost: list[str]
    wedged: list[str]
    recorded: Counter[str]
    # Records that cannot be (see `inconsistencies`), and SQLite's own checks.
    inconsistent: list[str]
    tracebacks: list[str]
    model_calls: tuple[int, int]
    seconds: float
    seed: int

    @property
    def failed(self) -> bool:
        return bool(self.lost or self.wedged or self.inconsistent or self.tracebacks)

    def kills(self, which: str) -> int:
        return sum(1 for r in self.rounds if r.killed == which)

    def table(self) -> str:
        lines = [
            "round  killed          after (s)  down (s)  next ack (s)  acknowledged before",
            "-----  --------------  ---------  --------  ------------  -------------------",
        ]
        for number, r in enumerate(self.rounds, 1):
            lines.append(
                f"{number:>5}  {r.killed:<14}  {r.after_seconds:>9.2f}  "
                f"{r.down_seconds:>8.2f}  {r.recovery_seconds:>12.2f}  {r.acked_before:>19}"
            )
        failures = ", ".join(f"{k} {v}" for k, v in sorted(self.tally.failed.items())) or "none"
        lines += [
            "",
            f"seed {self.seed}: {self.seconds:.0f} s, kills: thread-service "
            f"{self.kills('thread-service')}, model-service {self.kills('model-service')}",
            f"turns: attempted {self.tally.attempted}, acknowledged "
            f"{len(self.tally.acknowledged)}; calls that failed: {failures}",
            f"threads: {len(self.tally.threads)}; tracebacks in the logs: {len(self.tracebacks)}",
            f"model calls: {self.model_calls[0]}, of which refused WINDOW_NOT_HELD (the "
            f"whole history sent again): {self.model_calls[1]}",
            "turns as recorded (before the wedge check):",
            *(f"  {n:>6}  {what}" for what, n in self.recorded.most_common()),
            "",
            "what                      count  goal",
            "------------------------  -----  ----",
            f"acknowledged turns lost   {len(self.lost):>5}     0",
            f"wedged threads            {len(self.wedged):>5}     0",
            f"inconsistent records      {len(self.inconsistent):>5}     0",
            f"tracebacks in the logs    {len(self.tracebacks):>5}     0",
        ]
        lines += [f"lost: {x}" for x in self.lost[:10]] + [f"wedged: {x}" for x in self.wedged[:10]]
        lines += [f"inconsistent: {x}" for x in self.inconsistent[:10]]
        lines += [f"traceback:\n{x}" for x in self.tracebacks[:3]]
        return "\n".join(lines)


@contextmanager
def clients_running(
    count: int, address: str, cwd: Path, tally: Tally, seed: int
) -> Iterator[list[Client]]:
    clients = [Client(n, address, cwd, tally, seed * 1000 + n) for n in range(count)]
    for client in clients:
        client.start()
    try:
        yield clients
    finally:
        for client in clients:
            client.stopping.set()
        for client in clients:
            client.join(TURN_DEADLINE + 10)


def wait_for_progress(tally: Tally, since: int) -> float:
    """Until a turn past the first `since` is acknowledged (or PROGRESS_BOUND); seconds."""
    started = time.monotonic()
    while tally.acked() <= since and time.monotonic() < started + PROGRESS_BOUND:
        time.sleep(0.02)
    return time.monotonic() - started


def crash(
    tmp: Path, *, kills: int, clients: int = 4, seed: int = 0, store: Sequence[str] = ()
) -> Result:
    """`kills` rounds for each service, alternating; then count lost and wedged."""
    rng = random.Random(seed)
    tally = Tally()
    rounds: list[Round] = []
    started = time.monotonic()
    cwd = tmp / "work"
    cwd.mkdir(parents=True, exist_ok=True)
    services = Services(tmp, store)
    try:
        with clients_running(clients, services.thread_listen, cwd, tally, seed):
            wait_for_progress(tally, 0)
            for number in range(2 * kills):
                which = "thread-service" if number % 2 == 0 else "model-service"
                after = rng.uniform(0.05, 1.0)
                time.sleep(after)
                current = Round(which, after, tally.acked())
                current.down_seconds = services.kill_and_restart(which, rng.uniform(0, 0.5))
                current.recovery_seconds = wait_for_progress(tally, tally.acked())
                rounds.append(current)
        with grpc.insecure_channel(services.thread_listen, options=CHANNEL_OPTIONS) as channel:
            stub = pb_grpc.ThreadServiceStub(channel)
            lost = lost_turns(stub, tally.acknowledged)
            recorded = recorded_turns(stub, tally.threads)
            wedged = wedged_threads(stub, tally.threads)
            inconsistent = inconsistencies(stub, tally.threads)
    finally:
        services.stop()
    if not store:
        inconsistent += sqlite_problems(tmp / "data" / "spindle.sqlite3")
    return Result(
        rounds,
        tally,
        lost,
        wedged,
        recorded,
        inconsistent,
        services.tracebacks(),
        services.model_calls(),
        time.monotonic() - started,
        seed,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.crash", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--kills", type=int, default=20, help="kill -9 of each service")
    parser.add_argument("--clients", type=int, default=4, help="client threads running turns")
    parser.add_argument("--seed", type=int, default=None, help="the kill schedule's seed")
    parser.add_argument(
        "--store",
        default="sqlite",
        help="sqlite (default), postgres (a fresh database on SPINDLE_TEST_POSTGRES) or a URL",
    )
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else secrets.randbits(32)
    print(f"crash: seed {seed}, {args.kills} kills of each service, store {args.store}", flush=True)
    with (
        TemporaryDirectory(prefix="spindle-crash-") as tmp,
        store_arguments(args.store) as store,
    ):
        result = crash(Path(tmp), kills=args.kills, clients=args.clients, seed=seed, store=store)
    print(result.table())
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
