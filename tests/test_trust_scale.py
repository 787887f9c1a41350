"""Project trust at scale: what a thread start costs as config.toml fills up.

The tests check the behaviours that keep that cost flat, without timing
anything. Run as a program, the module measures it and prints a table:

    .venv/bin/python -m tests.test_trust_scale          # direct calls
    .venv/bin/python -m tests.test_trust_scale --grpc   # and StartThread over gRPC
    .venv/bin/python -m tests.test_trust_scale --quick  # a smoke run

Each figure is the median time of one call of what a thread start does for
trust (`check_cwd`, then `ProjectTrust.mark_trusted`) on a real file whose
`projects` number the first column (plus the one the case starts in), or of
one StartThread through the services in-process (their default bound, 1000).
Run from a checkout of older code, it measures that code (it passes
`max_projects` only where ProjectTrust takes it).
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import tomlkit

from tests.test_trust import files_opened_under
from thread_service.records import TrustSource
from thread_service.trust import Marked, ProjectTrust
from thread_service.validation import check_cwd

HEADER = """# Spindle settings
[thread_service]
max_spawn_depth = 4

[model_service]
provider = "embedded"

"""
SIZES = (0, 100, 1000, 1500)
UNBOUNDED = 1_000_000


def entries(count: int, prefix: str = "/home/user/src/project") -> str:
    """`count` trusted projects, as the service appends them."""
    return "".join(
        f'[projects."{prefix}-{i:05d}"]\ntrust_level = "trusted"\n\n' for i in range(count)
    )


def trusting(size: int, trusted: Path) -> str:
    """A config.toml of `size` projects, then `trusted`."""
    return HEADER + entries(size) + f'[projects."{trusted}"]\ntrust_level = "trusted"\n'


def write_config(home: Path, text: str, *, age_s: float = 0.0) -> Path:
    """config.toml holding `text`, last modified `age_s` seconds ago."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / "config.toml"
    path.write_text(text, encoding="utf-8")
    if age_s:
        then = time.time() - age_s
        os.utime(path, (then, then))
    return path


def make_trust(home: Path, max_projects: int | None = None) -> ProjectTrust:
    """A ProjectTrust; `max_projects` only where the code measured has a bound
    (so that this module also measures the code before it, for comparison)."""
    if max_projects is not None and "max_projects" in inspect.signature(ProjectTrust).parameters:
        return ProjectTrust(home, max_projects=max_projects)
    return ProjectTrust(home)


def start(project_trust: ProjectTrust, cwd: Path) -> Marked:
    """What StartThread does for trust, in its worker thread."""
    return project_trust.mark_trusted(check_cwd(str(cwd)))


# --- what keeps the cost flat -----------------------------------------------


@pytest.fixture
def big_home(tmp_path: Path) -> Path:
    """A config home whose file trusts 1,500 projects, written a minute ago."""
    home = tmp_path / "home"
    write_config(home, HEADER + entries(1500), age_s=60)
    return home


def test_a_start_in_a_trusted_project_reads_nothing_however_many_there_are(
    tmp_path: Path, big_home: Path
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    write_config(big_home, trusting(1500, project), age_s=60)
    project_trust = ProjectTrust(big_home)
    assert start(project_trust, project).warning is None
    with files_opened_under(big_home) as opened:
        for _ in range(5):
            assert start(project_trust, project).state.source is TrustSource.PERSISTED
    assert opened == []


def test_adding_a_project_needs_no_tomlkit_parse_of_the_file(
    tmp_path: Path, big_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_full_parse(text: str) -> object:
        raise AssertionError(f"tomlkit parsed {len(text)} characters")

    monkeypatch.setattr(tomlkit, "parse", no_full_parse)
    original = (big_home / "config.toml").read_bytes()
    project_trust = ProjectTrust(big_home, max_projects=UNBOUNDED)
    added = []
    for name in ("one", "two", "three"):
        project = tmp_path / name
        project.mkdir()
        assert start(project_trust, project).warning is None
        added.append(f'[projects."{project}"]\ntrust_level = "trusted"\n'.encode())
    assert (big_home / "config.toml").read_bytes() == original + b"\n".join(added)


def test_at_the_bound_a_new_project_costs_no_read_of_the_file(
    tmp_path: Path, big_home: Path
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    before = (big_home / "config.toml").stat()
    project_trust = ProjectTrust(big_home, max_projects=1500)
    assert start(project_trust, project).state.source is TrustSource.IN_MEMORY
    with files_opened_under(big_home) as opened:
        outcome = start(project_trust, project)
    assert outcome.warning is not None and "max_trusted_projects = 1500" in outcome.warning
    assert opened == [big_home / "config.toml.lock"]
    after = (big_home / "config.toml").stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (
        before.st_ino,
        before.st_mtime_ns,
        before.st_size,
    )


def test_the_measurement_runs(tmp_path: Path) -> None:
    """A smoke run of what `python -m tests.test_trust_scale` prints."""
    figures = measure(tmp_path, (0, 20), calls=3, adds=2) + measure_bound(tmp_path, 20, 3)
    assert {f.case: f.outcome for f in figures if f.size == 20} == {
        "(a) trusted project": "saved",
        "(a) trusted, the file changed < 2 s ago": "saved",
        "(a) trusted, the file changed by another process": "saved",
        "(b) new project": "saved",
        "(b) new project, the file changed by another process": "saved",
        "(b) new project at the bound (20)": "in memory: "
        "it already trusts 20 projects (max_trusted_projects = 20)",
    }


# --- measuring ----------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    case: str
    size: int
    calls: int
    median_ms: float
    outcome: str


Sample = tuple[float, str]


def timed(call: Callable[[], str | None]) -> Sample:
    """How long `call` took in ms, and its warning ("saved" without one)."""
    began = time.perf_counter()
    warning = call()
    elapsed = (time.perf_counter() - began) * 1e3
    if warning is None:
        return elapsed, "saved"
    reason = warning.rpartition('": ')[2].partition("; the project is trusted in memory")[0]
    return elapsed, f"in memory: {reason}"


def timed_start(project_trust: ProjectTrust, cwd: Path) -> Sample:
    return timed(lambda: start(project_trust, cwd).warning)


def figure(case: str, size: int, samples: list[Sample]) -> Figure:
    median = statistics.median(ms for ms, _ in samples)
    return Figure(case, size, len(samples), median, " / ".join(sorted({o for _, o in samples})))


def measure(root: Path, sizes: tuple[int, ...], calls: int, adds: int) -> list[Figure]:
    """Every figure at every size, each in a config home of its own under `root`."""
    figures: list[Figure] = []
    trusted = root / "trusted"
    trusted.mkdir()
    for size in sizes:
        body = trusting(size, trusted)
        # (a) an already-trusted project; the file was written a while ago.
        home = root / f"a-{size}"
        write_config(home, body, age_s=60)
        project_trust = make_trust(home)
        start(project_trust, trusted)
        samples = [timed_start(project_trust, trusted) for _ in range(calls)]
        figures.append(figure("(a) trusted project", size, samples))
        # (a) the same within 2 s of a change: the bytes are read again, not parsed.
        write_config(home, body)
        samples = [timed_start(project_trust, trusted) for _ in range(calls)]
        figures.append(figure("(a) trusted, the file changed < 2 s ago", size, samples))
        # (a) the same, each call after another process changed the file.
        samples = []
        for i in range(max(calls // 10, 3)):
            write_config(home, body + "\n" * (i % 2 + 1), age_s=60)  # new bytes each time
            samples.append(timed_start(project_trust, trusted))
        figures.append(figure("(a) trusted, the file changed by another process", size, samples))
        # (b) new projects one after another in one process, with no bound.
        home = root / f"b-{size}"
        write_config(home, body, age_s=60)
        project_trust = make_trust(home, UNBOUNDED)
        samples = []
        for i in range(adds):
            cwd = root / f"new-{size}-{i}"
            cwd.mkdir()
            samples.append(timed_start(project_trust, cwd))
        figures.append(figure("(b) new project", size, samples))
        # (b) a new project, each after another process changed the file.
        home = root / f"c-{size}"
        samples = []
        for i in range(max(adds // 3, 3)):
            write_config(home, body, age_s=60)
            project_trust = make_trust(home, UNBOUNDED)
            cwd = root / f"other-{size}-{i}"
            cwd.mkdir()
            samples.append(timed_start(project_trust, cwd))
        figures.append(
            figure("(b) new project, the file changed by another process", size, samples)
        )
    return figures


def measure_bound(root: Path, bound: int, calls: int) -> list[Figure]:
    """A new project when the file already trusts `bound` projects."""
    home = root / "bound"
    write_config(home, HEADER + entries(bound), age_s=60)
    project_trust = make_trust(home, bound)
    cwd = root / "over-the-bound"
    cwd.mkdir()
    start(project_trust, cwd)
    samples = [timed_start(project_trust, cwd) for _ in range(calls)]
    return [figure(f"(b) new project at the bound ({bound})", bound, samples)]


def measure_grpc(root: Path, sizes: tuple[int, ...], calls: int, adds: int) -> list[Figure]:
    """StartThread through the real services (in-process, default settings)."""
    from spindle.v1 import thread_service_pb2 as pb
    from spindle.v1 import thread_service_pb2_grpc as pb_grpc
    from tests.harness import LoopThread, start_stack

    def start_thread(stub: pb_grpc.ThreadServiceStub, cwd: Path) -> Sample:
        def call() -> str | None:
            response = stub.StartThread(pb.StartThreadRequest(cwd=str(cwd)))
            return str(response.warnings[0]) if response.warnings else None

        return timed(call)

    figures: list[Figure] = []
    loop = LoopThread()
    try:
        for size in sizes:
            tmp = root / f"grpc-{size}"
            trusted = tmp / "trusted"
            trusted.mkdir(parents=True)
            write_config(tmp / "home", trusting(size, trusted), age_s=60)
            stack = start_stack(loop, tmp)
            try:
                stub = stack.threads
                start_thread(stub, trusted)
                samples = [start_thread(stub, trusted) for _ in range(calls)]
                figures.append(figure("(a) StartThread, trusted project", size, samples))
                samples = []
                for i in range(adds):
                    cwd = tmp / f"new-{i}"
                    cwd.mkdir()
                    samples.append(start_thread(stub, cwd))
                figures.append(figure("(b) StartThread, new project", size, samples))
            finally:
                stack.stop()
    finally:
        loop.close()
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few calls, for a smoke run")
    parser.add_argument("--grpc", action="store_true", help="also StartThread over gRPC")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # the warnings at the bound, one per call
    load_before = os.getloadavg()[0]
    calls, adds = (20, 6) if args.quick else (300, 30)
    with tempfile.TemporaryDirectory(prefix="trust-scale-") as folder:
        root = Path(folder).resolve()
        figures = measure(root, SIZES, calls, adds)
        figures += measure_bound(root, 1000, calls)
        if args.grpc:
            figures += measure_grpc(root, SIZES, calls // 3, adds)
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
        f"load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after"
    )
    print("| case | projects | calls | median ms | outcome |\n|---|---:|---:|---:|---|")
    for f in figures:
        print(f"| {f.case} | {f.size} | {f.calls} | {f.median_ms:.3f} | {f.outcome} |")


if __name__ == "__main__":
    main()
