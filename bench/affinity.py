"""Spindle cache-affinity benchmark: does a fork's first turn hit its parent's prompt cache?

Issue 14. Three model-service processes on loopback (the embedded provider,
whose prompt cache follows OpenAI's published rules) behind one
thread-service whose `--model-service` target lists all three, once with
`--model-service-balancing ring_hash`, then with `round_robin`; each policy on
fresh processes, so its prompt caches start empty, and on its own data dir.
Both run the same workload in the same order: parents whose history grows to
several thousand tokens over a few turns, then a fork of each (`SpawnThread`
with `fork`) and the fork's first turn, all steps of all parents in one
seeded random order (so that round robin's rotation does not fall in step
with the workload). What it prints, per policy: the share of the forks'
inherited prompt tokens that the model-service reported cached, the forks'
first turns' cached share overall, and how the keys spread over the three
replicas (from each model-service's `generate ...` log lines). Nothing is
asserted.

    python -m bench.affinity [--quick] [--seed N] [--json PATH]
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import random
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.toolkit import (
    Process,
    Table,
    arguments,
    channel,
    load_line,
    load_text,
    machine_line,
    markdown_report,
    print_report,
    run_turn,
    write_json,
)
from model_service.prompt_cache import BLOCK_TOKENS, MIN_CACHED_TOKENS
from model_service.tokenizer import count_tokens
from spindle.v1 import thread_service_pb2 as pb
from spindle.v1 import thread_service_pb2_grpc as pb_grpc

POLICIES = ("ring_hash", "round_robin")
REPLICAS = 3
TARGET_SHARE = 0.95  # ring hash: inherited prompt tokens cached (issue 14)
EXPECTED_ROUND_ROBIN = 1 / REPLICAS  # the chance of reaching the parent's replica
FORK_TEXT = "Now check the second part of this on your own and report back briefly."
SEED = 14

# One line per model request, written by model_service/servicer.py as it ends.
NAME = "Spindle cache-affinity benchmark"
_GENERATE = re.compile(
    r"generate thread_id=(?P<thread>\S+) window_id=\S+ prompt_cache_key=(?P<key>\S+) "
    r".* status=(?P<status>\S+) input_tokens=(?P<input>\d+) cached_tokens=(?P<cached>\d+) "
)


@dataclass(frozen=True)
class Counts:
    """The workload's size; `--quick` shrinks it for a smoke run."""

    parents: int
    turns: int  # turns of each parent before it is forked
    input_tokens: tuple[int, int]  # a parent turn's user message: tokens, drawn between these


FULL = Counts(parents=60, turns=4, input_tokens=(650, 1150))
QUICK = Counts(parents=6, turns=2, input_tokens=(600, 700))


def cacheable(tokens: int) -> int:
    """The most of a prompt of `tokens` tokens that the embedded prompt cache
    can ever report cached: whole 128-token blocks, and nothing below 1,024."""
    blocks = tokens // BLOCK_TOKENS * BLOCK_TOKENS
    return blocks if blocks >= MIN_CACHED_TOKENS else 0


# -- the workload ------------------------------------------------------------

_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def prose(rng: random.Random, tokens: int) -> str:
    """Made-up words and sentences of about `tokens` tokens by the embedded
    provider's tokenizer (a word of up to four letters is one token)."""
    words: list[str] = []
    total = 0
    while total < tokens:
        word = "".join(rng.choices(_LETTERS, k=rng.randint(2, 9)))
        if rng.random() < 0.08:
            word += "."
        words.append(word)
        total += count_tokens(" " + word)
    return " ".join(words)


@dataclass(frozen=True)
class Workload:
    """What both policies run: each parent's user messages, and the order in
    which the parents take their steps (a step is a parent's next turn, or,
    once its turns are done, its fork and the fork's first turn)."""

    inputs: list[list[str]]
    order: list[int]

    @classmethod
    def make(cls, counts: Counts, seed: int) -> Workload:
        rng = random.Random(seed)
        low, high = counts.input_tokens
        inputs = [
            [prose(rng, rng.randint(low, high)) for _ in range(counts.turns)]
            for _ in range(counts.parents)
        ]
        # A uniformly random interleaving of the parents' steps.
        order = [p for p in range(counts.parents) for _ in range(counts.turns + 1)]
        rng.shuffle(order)
        return cls(inputs, order)


# -- one policy --------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    input: int
    cached: int


@dataclass
class Family:
    """A parent, its turns' usage, its fork and the fork's first turn's usage."""

    parent: str
    key: str
    turns: list[Usage] = field(default_factory=list)
    fork: str = ""
    fork_turn: Usage = Usage(0, 0)


@dataclass(frozen=True)
class Served:
    """One model request, as a model-service logged it."""

    replica: int
    thread: str
    key: str
    input: int
    cached: int


async def turn_usage(stub: pb_grpc.ThreadServiceStub, thread_id: str, text: str) -> Usage:
    """One RunTurn: the usage its turn_completed reports."""
    usage = (await run_turn(stub, thread_id, text)).usage
    return Usage(usage.input_tokens, usage.cached_input_tokens)


async def drive(address: str, workload: Workload, cwd: Path) -> list[Family]:
    """Run the workload against one thread-service, one call at a time."""
    async with channel(address) as ch:
        stub = pb_grpc.ThreadServiceStub(ch)
        families = []
        for _ in workload.inputs:
            thread = (await stub.StartThread(pb.StartThreadRequest(cwd=str(cwd)))).thread
            families.append(Family(thread.id, thread.prompt_cache_key))
        for p in workload.order:
            family, inputs = families[p], workload.inputs[p]
            if len(family.turns) < len(inputs):
                text = inputs[len(family.turns)]
                family.turns.append(await turn_usage(stub, family.parent, text))
                continue
            fork = pb.ForkOptions(parent_spawn_call_id=f"call_{p}", mode=pb.FORK_MODE_FULL_HISTORY)
            spawned = await stub.SpawnThread(
                pb.SpawnThreadRequest(parent_id=family.parent, fork=fork)
            )
            child = spawned.thread
            if child.prompt_cache_key != family.key:
                raise RuntimeError(f"fork {child.id} has key {child.prompt_cache_key}")
            family.fork = child.id
            family.fork_turn = await turn_usage(stub, child.id, FORK_TEXT)
        return families


def served_by(models: Sequence[Process]) -> list[Served]:
    """Every model request the replicas logged (read once they stopped)."""
    found = []
    for n, model in enumerate(models):
        for match in _GENERATE.finditer(model.log_text()):
            if match["status"] == "FAILED_PRECONDITION":
                # A turn that named a window base this replica does not hold
                # (another served the window's last request): refused before any
                # work, and sent again whole, which is the request counted here.
                continue
            if match["status"] != "OK":
                raise RuntimeError(f"replica {n + 1} logged a failed request: {match[0]}")
            found.append(
                Served(n, match["thread"], match["key"], int(match["input"]), int(match["cached"]))
            )
    return found


@dataclass
class Outcome:
    """One policy's figures."""

    policy: str
    families: list[Family]
    served: list[Served]
    wall: float
    logged: dict[tuple[str, int], Served] = field(init=False)

    def __post_init__(self) -> None:
        # A thread's requests differ in prompt length (its history grows), so
        # (thread, input tokens) names one request.
        self.logged = {(s.thread, s.input): s for s in self.served}
        expected = sum(len(f.turns) + 1 for f in self.families)
        if len(self.served) != expected or len(self.logged) != expected:
            raise RuntimeError(f"{self.policy}: {len(self.served)} requests logged, not {expected}")
        for f in self.families:
            requests = [(f.parent, u) for u in f.turns] + [(f.fork, f.fork_turn)]
            for thread, usage in requests:
                found = self.logged.get((thread, usage.input))
                if found is None or found.cached != usage.cached:
                    raise RuntimeError(f"{self.policy}: {thread} reported {usage}, logged {found}")
            if f.fork_turn.input <= f.turns[-1].input:
                raise RuntimeError(
                    f"{self.policy}: fork {f.fork}'s prompt is no longer than its parent's"
                )

    def replica(self, thread: str, usage: Usage) -> int:
        """The replica that served the request of `thread` that reported `usage`."""
        return self.logged[(thread, usage.input)].replica

    def reached_parents_replica(self, f: Family) -> bool:
        return self.replica(f.fork, f.fork_turn) == self.replica(f.parent, f.turns[-1])

    # -- the forks' first turns --------------------------------------------

    @property
    def inherited(self) -> int:
        """What the parents' last requests sent: the prefix each fork's first
        request repeats."""
        return sum(f.turns[-1].input for f in self.families)

    @property
    def inherited_cached(self) -> int:
        return sum(min(f.fork_turn.cached, f.turns[-1].input) for f in self.families)

    @property
    def share(self) -> float:
        return self.inherited_cached / self.inherited

    @property
    def ceiling(self) -> float:
        return sum(cacheable(f.turns[-1].input) for f in self.families) / self.inherited

    @property
    def first_turn_share(self) -> float:
        return sum(f.fork_turn.cached for f in self.families) / sum(
            f.fork_turn.input for f in self.families
        )

    def predicted(self) -> int:
        """The inherited tokens the cache rules say the forks' first turns get,
        from where each parent's turns ran: each parent turn's prompt is a
        prefix of its fork's first prompt, so a fork gets the cacheable part
        of the longest one its replica served."""
        total = 0
        for f in self.families:
            replica = self.replica(f.fork, f.fork_turn)
            there = [u.input for u in f.turns if self.replica(f.parent, u) == replica]
            total += max((cacheable(n) for n in there), default=0)
        return total

    def cached_on_parents_replica(self) -> int:
        """Inherited tokens cached for the forks that reached the replica of the
        parent's last turn (the rest came from the parent's earlier turns)."""
        return sum(
            min(f.fork_turn.cached, f.turns[-1].input)
            for f in self.families
            if self.reached_parents_replica(f)
        )

    def on_parents_replica(self) -> int:
        """Forks whose first turn went to the replica that served the parent's last turn."""
        return sum(self.reached_parents_replica(f) for f in self.families)

    def hits(self) -> tuple[int, int, int]:
        """Forks whose first turn got all of the cacheable inherited prefix,
        part of it, or none."""
        full = partial = 0
        for f in self.families:
            cached, most = f.fork_turn.cached, cacheable(f.turns[-1].input)
            full += most > 0 and cached >= most
            partial += 0 < cached < most
        return full, partial, len(self.families) - full - partial

    # -- the parents' own turns and the replicas ---------------------------

    @property
    def later_turns_share(self) -> float:
        """The parents' turns after their first: cached share of their prompts."""
        later = [u for f in self.families for u in f.turns[1:]]
        return sum(u.cached for u in later) / max(1, sum(u.input for u in later))

    def requests_per_replica(self) -> list[int]:
        counts = collections.Counter(s.replica for s in self.served)
        return [counts[n] for n in range(REPLICAS)]

    def keys_per_replica(self) -> list[int]:
        return [len({s.key for s in self.served if s.replica == n}) for n in range(REPLICAS)]

    def replicas_per_key(self) -> list[int]:
        """How many keys were served by 1, 2, ... replicas."""
        holders: dict[str, set[int]] = collections.defaultdict(set)
        for s in self.served:
            holders[s.key].add(s.replica)
        counts = collections.Counter(len(h) for h in holders.values())
        return [counts[n] for n in range(1, REPLICAS + 1)]

    def as_json(self) -> dict[str, Any]:
        full, partial, none = self.hits()
        return {
            "forks": len(self.families),
            "inherited_tokens": self.inherited,
            "inherited_cached_tokens": self.inherited_cached,
            "inherited_cached_share": round(self.share, 4),
            "predicted_share": round(self.predicted() / self.inherited, 4),
            "cacheable_ceiling": round(self.ceiling, 4),
            "cached_share_on_parents_replica": round(
                self.cached_on_parents_replica() / self.inherited, 4
            ),
            "first_turn_input_tokens": sum(f.fork_turn.input for f in self.families),
            "first_turn_cached_tokens": sum(f.fork_turn.cached for f in self.families),
            "first_turn_cached_share": round(self.first_turn_share, 4),
            "forks_on_parents_replica": self.on_parents_replica(),
            "forks_full_partial_no_hit": [full, partial, none],
            "parents_later_turns_cached_share": round(self.later_turns_share, 4),
            "requests_per_replica": self.requests_per_replica(),
            "keys_per_replica": self.keys_per_replica(),
            "keys_on_1_2_3_replicas": self.replicas_per_key(),
            "workload_s": round(self.wall, 2),
        }


def run_policy(policy: str, workload: Workload, tmp: Path) -> Outcome:
    """Fresh model-services (empty prompt caches) and a fresh thread-service on
    its own data dir; the workload; then every process stopped, and the
    requests read from the model-services' logs."""
    root = tmp / policy
    root.mkdir()
    with ExitStack() as stack:

        def start(label: str, module: str, args: list[str]) -> Process:
            process = Process(label, module, ["--listen", "127.0.0.1:0", *args], root)
            stack.callback(process.stop)
            return process

        models = [
            start(f"model-service-{n + 1}", "model_service", ["--config-home", str(root / f"m{n}")])
            for n in range(REPLICAS)
        ]
        target = "ipv4:" + ",".join(model.address for model in models)
        thread = start(
            "thread-service",
            "thread_service",
            [
                *("--model-service", target),
                *("--model-service-balancing", policy),
                *("--data-dir", str(root / "data")),
                *("--config-home", str(root / "home")),
            ],
        )
        begin = time.perf_counter()
        families = asyncio.run(drive(thread.address, workload, tmp / "work"))
        wall = time.perf_counter() - begin
        stack.close()  # the logs are whole once the processes have stopped
        return Outcome(policy, families, served_by(models), wall)


# -- the report --------------------------------------------------------------


def percent(value: float) -> str:
    return f"{value * 100:.1f}%"


@dataclass
class Report:
    counts: Counts
    seed: int
    command: str
    load_before: str
    outcomes: list[Outcome]
    header: list[str] = field(init=False)

    def __post_init__(self) -> None:
        sent = [f.turns[-1].input for f in self.outcomes[0].families]
        low, high = self.counts.input_tokens
        self.header = [
            machine_line(),
            f"command: {self.command}",
            f"processes on loopback: for each policy, {REPLICAS} fresh model-services "
            "(embedded provider, empty prompt caches) and a fresh thread-service (SQLite, "
            "its own data dir) whose target lists the three; the client: one grpc.aio "
            "channel, one call at a time",
            f"workload (seed {self.seed}, the same for both policies): {self.counts.parents} "
            f"parents of {self.counts.turns} turns each (user messages of {low:,} to "
            f"{high:,} tokens), then a fork of each (FORK_MODE_FULL_HISTORY) and its first "
            "turn, all steps in one random order; the parents' last requests sent "
            f"{min(sent):,} to {max(sent):,} tokens (mean {sum(sent) / len(sent):,.0f})",
            load_line(self.load_before),
        ]

    def forks_table(self) -> Table:
        table = Table(
            [
                "policy",
                "forks",
                "inherited tokens",
                "cached",
                "share",
                "predicted",
                "ceiling",
                "first prompts cached",
                "on parent's replica",
                "full / part / no hit",
            ],
            [False, True, True, True, True, True, True, True, True, True],
        )
        for o in self.outcomes:
            n = len(o.families)
            table.add(
                o.policy,
                n,
                f"{o.inherited:,}",
                f"{o.inherited_cached:,}",
                percent(o.share),
                percent(o.predicted() / o.inherited),
                percent(o.ceiling),
                percent(o.first_turn_share),
                f"{o.on_parents_replica()} ({percent(o.on_parents_replica() / n)})",
                " / ".join(map(str, o.hits())),
            )
        return table

    def replicas_table(self) -> Table:
        table = Table(
            [
                "policy",
                "requests per replica",
                "keys per replica",
                "keys on 1 / 2 / 3 replicas",
                "parents' later turns cached",
                "workload s",
            ],
            [False, True, True, True, True, True],
        )
        for o in self.outcomes:
            table.add(
                o.policy,
                " / ".join(map(str, o.requests_per_replica())),
                " / ".join(map(str, o.keys_per_replica())),
                " / ".join(map(str, o.replicas_per_key())),
                percent(o.later_turns_share),
                f"{o.wall:.1f}",
            )
        return table

    def lines(self) -> list[str]:
        by_policy = {o.policy: o for o in self.outcomes}
        ring, robin = by_policy["ring_hash"], by_policy["round_robin"]
        met = "met" if ring.share >= TARGET_SHARE else "missed"
        ratio = f"{ring.share / robin.share:.2f}x" if robin.share else "n/a (round robin: 0)"
        there = robin.cached_on_parents_replica() / robin.inherited
        return [
            f"ring_hash: inherited prompt tokens cached: {percent(ring.share)} "
            f"(target >= {TARGET_SHARE:.0%}: {met}; ceiling {percent(ring.ceiling)})",
            f"round_robin: inherited prompt tokens cached: {percent(robin.share)} "
            f"(expected about {EXPECTED_ROUND_ROBIN:.0%}): "
            f"{percent(robin.on_parents_replica() / len(robin.families))} of the forks reached "
            f"the parent's replica, {percent(there)} of the tokens; "
            f"{percent(robin.share - there)} came from the parent's earlier, shorter prompts "
            "on the other replicas",
            f"ratio ring_hash / round_robin, inherited prompt tokens cached: {ratio}",
        ]

    def sections(self) -> list[tuple[str, Table]]:
        return [
            (
                "Forks' first turns: the inherited prompt (what the parent's last request "
                "sent) and how much of it the model-service reported cached",
                self.forks_table(),
            ),
            (
                f"How the keys spread over the {REPLICAS} replicas (from their generate log lines)",
                self.replicas_table(),
            ),
        ]

    def print(self) -> None:
        print_report(NAME, self.header, self.sections(), self.lines())

    def markdown(self) -> str:
        return markdown_report(NAME, self.header, self.sections(), self.lines())

    def write_json(self, path: Path) -> None:
        write_json(
            path,
            {
                "header": self.header,
                "counts": dataclasses.asdict(self.counts),
                "seed": self.seed,
                "target_ring_hash_share": TARGET_SHARE,
                "policies": {o.policy: o.as_json() for o in self.outcomes},
                "lines": self.lines(),
            },
        )


# -- main --------------------------------------------------------------------


def run(counts: Counts, seed: int, command: str) -> Report:
    load_before = load_text()
    workload = Workload.make(counts, seed)
    with tempfile.TemporaryDirectory(prefix="spindle-affinity-") as name:
        tmp = Path(name)
        (tmp / "work").mkdir()
        outcomes = [run_policy(policy, workload, tmp) for policy in POLICIES]
    return Report(counts, seed, command, load_before, outcomes)


def main(argv: Sequence[str] | None = None) -> None:
    parser = arguments(__doc__)
    parser.add_argument("--seed", type=int, default=SEED, help="the workload's random seed")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    command = " ".join(["python -m bench.affinity", *sys.argv[1:]])
    report = run(QUICK if args.quick else FULL, args.seed, command)
    report.print()
    if args.json is not None:
        report.write_json(args.json)


if __name__ == "__main__":
    main()
