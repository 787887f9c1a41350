"""What `bench.threads` prints: the stores side by side, the floors, the long
threads, replicas and interrupts, and every ratio against its target (issues
9 and 12), as text, as markdown to paste into a note, and as JSON."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from bench.toolkit import (
    Series,
    Table,
    load_line,
    machine_line,
    markdown_report,
    ms,
    p50_ratio,
    print_report,
    write_json,
)

FIGURE_COLUMNS = ["figure", "n", "p50 ms", "p99 ms", "per s", "CPU ms per call", "note"]
FIGURE_RIGHT = [False, True, True, True, True, False, False]
SMALL_ITEMS = 10  # the small fork parent
# CPU per short turn, by process (issue 12).
CPU_TARGETS_MS = {"thread-service": 1.0, "model-service": 0.5}
NAME = "Spindle thread benchmark"


@dataclass
class SQLiteRun:
    """What was measured beside the SQLite thread-service (the floors and the
    long threads depend on no store, or are measured on the default one)."""

    store: list[Series]
    floors: list[Series]
    long: list[Series]
    turn_messages: int


@dataclass
class PostgresRun:
    store: list[Series]
    replicas: list[Series]
    interrupts: list[Series]


@dataclass(frozen=True)
class Check:
    """A ratio or figure, with its target when the issues set one."""

    what: str
    value: float
    target: float | None = None
    at_most: bool = True
    unit: str = ""

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        return self.value <= self.target if self.at_most else self.value >= self.target

    def text(self) -> str:
        line = f"{self.what}: {self.value:.2f}{self.unit}"
        if self.target is None:
            return line
        sign = "<=" if self.at_most else ">="
        return (
            f"{line} (target {sign} {self.target:g}{self.unit}: {'met' if self.met else 'missed'})"
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "what": self.what,
            "value": round(self.value, 3),
            "target": self.target,
            "at_most": self.at_most,
            "met": self.met,
        }


def by_name(series: Sequence[Series]) -> dict[str, Series]:
    return {s.name: s for s in series}


def figures_table(series: Sequence[Series]) -> Table:
    table = Table(FIGURE_COLUMNS, FIGURE_RIGHT)
    for s in series:
        table.add(
            s.name,
            len(s.latencies),
            ms(s.p(50)),
            ms(s.p(99)),
            f"{s.per_second:.0f}",
            s.cpu_text(),
            s.note,
        )
    return table


@dataclass
class Report:
    counts: dict[str, Any]
    command: str
    synchronous: str
    load_before: str
    built: dict[str, float]
    sqlite: SQLiteRun
    postgres: PostgresRun | None
    header: list[str] = field(init=False)

    def __post_init__(self) -> None:
        built = ", ".join(f"{store} in {seconds:.1f} s" for store, seconds in self.built.items())
        long = ", ".join(f"{n:,}" for n in self.counts["long_items"])
        self.header = [
            machine_line(psycopg=psycopg.__version__),
            f"command: {self.command}",
            "processes on loopback: one model-service (embedded provider) for the whole run; "
            f"a thread-service on SQLite (synchronous={self.synchronous})"
            + (
                "; on PostgreSQL (a fresh database), one, then three replicas"
                if self.postgres
                else ""
            )
            + "; the floors (python -m bench.floor); the client: one grpc.aio channel per "
            "server, one asyncio loop",
            f"threads of {self.counts['large_items']:,} (fork parent) and {long} items were "
            "written through the store before the thread-service started (Threads.start, then "
            f"the store's begin_turn/finish_turn operations, many turns a transaction): {built}",
            load_line(self.load_before),
        ]

    # -- the figures side by side ----------------------------------------

    def stores(self) -> dict[str, list[Series]]:
        found = {"SQLite": self.sqlite.store}
        if self.postgres:
            found["PostgreSQL"] = self.postgres.store
        return found

    def stores_table(self) -> Table:
        stores = self.stores()
        headers = ["figure", "n"]
        for store in stores:
            headers += [f"{store} p50 ms", "p99 ms", "per s"]
        table = Table(headers, [False, *[True] * (len(headers) - 1)])
        named = {store: by_name(series) for store, series in stores.items()}
        for s in self.sqlite.store:
            cells: list[object] = [s.name, len(s.latencies)]
            for store in stores:
                o = named[store][s.name]
                cells += [ms(o.p(50)), ms(o.p(99)), f"{o.per_second:.0f}"]
            table.add(*cells)
        return table

    def cpu_table(self) -> Table:
        table = Table(["figure", "store", "CPU ms per call, by process"])
        for store, series in self.stores().items():
            for s in series:
                if s.cpu:
                    table.add(s.name, store, s.cpu_text())
        return table

    # -- ratios and targets ------------------------------------------------

    def checks(self) -> list[Check]:
        floors = by_name(self.sqlite.floors)
        clients = self.counts["clients"]
        size = self.sqlite.turn_messages
        two_hops_seq = floors[f"stream of {size}, 2 hops, sequential"]
        two_hops_conc = floors[f"stream of {size}, 2 hops, {clients} concurrent"]
        large = f"{self.counts['large_items']:,}"
        checks: list[Check] = []
        for store, series in self.stores().items():
            named = by_name(series)
            fork = p50_ratio(
                named[f"fork, parent of {large} items"],
                named[f"fork, parent of {SMALL_ITEMS} items"],
            )
            resume = p50_ratio(
                named[f"resume, {large} items"], named[f"resume, {SMALL_ITEMS} items"]
            )
            seq, conc = named["turn, sequential"], named[f"turn, {clients} concurrent"]
            checks += [
                Check(
                    f"{store}: fork p50, parent of {large} / of {SMALL_ITEMS}", fork, 1.5, unit="x"
                ),
                Check(f"{store}: resume p50, {large} items / {SMALL_ITEMS}", resume, unit="x"),
                Check(
                    f"{store}: turn p50 sequential / 2-hop stream p50",
                    p50_ratio(seq, two_hops_seq),
                    1.5,
                    unit="x",
                ),
                Check(
                    f"{store}: turns/s, {clients} clients / 2-hop calls/s, {clients} callers",
                    conc.per_second / two_hops_conc.per_second,
                    0.67,
                    at_most=False,
                    unit="x",
                ),
                Check(
                    f"{store}: turn p50 sequential / unary echo p50",
                    p50_ratio(seq, floors["unary echo, sequential"]),
                    unit="x",
                ),
            ]
            cpu = seq.cpu_ms_per_call()
            checks += [
                Check(
                    f"{store}: CPU per short turn, {process}",
                    cpu.get(process, 0.0),
                    target,
                    unit=" ms",
                )
                for process, target in CPU_TARGETS_MS.items()
            ]
        short, *long = self.sqlite.long
        for s, n in zip(long, self.counts["long_items"], strict=True):
            target = 3.0 if n == 10_000 else None
            checks.append(
                Check(
                    f"SQLite: turn p50 on {n:,} items / on 2 items",
                    p50_ratio(s, short),
                    target,
                    unit="x",
                )
            )
        if self.postgres:
            one, three = self.postgres.replicas
            other = self.postgres.interrupts[1]
            checks += [
                Check(
                    "PostgreSQL: turns/s, 3 replicas / 1",
                    three.per_second / one.per_second,
                    unit="x",
                ),
                Check(
                    "PostgreSQL: InterruptTurn p50, other replica",
                    other.p(50) * 1e3,
                    200,
                    unit=" ms",
                ),
            ]
        return checks

    # -- output ------------------------------------------------------------

    def sections(self) -> list[tuple[str, Table]]:
        clients = self.counts["clients"]
        found = [
            ("Forks, resumes, reads and turns, one thread-service per store", self.stores_table()),
            (
                "CPU per call of the same figures (the sequential turns are the short-turn figure)",
                self.cpu_table(),
            ),
            (
                f"Floors: bare grpc.aio servers, raw bytes, {self.sqlite.turn_messages} messages "
                "a stream (those of a real short turn), and the model hop alone",
                figures_table(self.sqlite.floors),
            ),
            (
                "Turns on long threads (SQLite), taking turns with a 2-item thread",
                figures_table(self.sqlite.long),
            ),
        ]
        if self.postgres:
            found += [
                (
                    f"PostgreSQL replicas: {clients} clients on 1 replica, or spread over 3 (round "
                    "robin), alternating batches, one model-service",
                    figures_table(self.postgres.replicas),
                ),
                (
                    "InterruptTurn across replicas (PostgreSQL): a /slow 30 turn on replica A, "
                    "InterruptTurn on A or on B",
                    figures_table(self.postgres.interrupts),
                ),
            ]
        return found

    def print(self) -> None:
        print_report(NAME, self.header, self.sections(), [c.text() for c in self.checks()])

    def markdown(self) -> str:
        lines = [check.text() for check in self.checks()]
        return markdown_report(NAME, self.header, self.sections(), lines)

    def write_json(self, path: Path) -> None:
        write_json(
            path,
            {
                "header": self.header,
                "counts": self.counts,
                "sections": {
                    title: [s.as_json() | {"name": s.name} for s in series]
                    for title, series in self.all_series().items()
                },
                "checks": [check.as_json() for check in self.checks()],
            },
        )

    def all_series(self) -> dict[str, list[Series]]:
        found = {f"{store}": series for store, series in self.stores().items()}
        found |= {"floors": self.sqlite.floors, "long threads": self.sqlite.long}
        if self.postgres:
            found |= {"replicas": self.postgres.replicas, "interrupts": self.postgres.interrupts}
        return found
