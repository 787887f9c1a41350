"""Project trust through the public API: a failed trust write never fails a
thread start; the warning reaches the caller in the response and in the
`spindle-warning-bin` metadata, and config.toml is left as it was."""

from __future__ import annotations

import errno
import json
import os
import stat
import tomllib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from spindle.v1 import thread_service_pb2 as pb
from spindle.v1 import thread_service_pb2_grpc as pb_grpc
from tests.harness import LoopThread, ServiceProcess, Stack, start_stack, thread_process
from thread_service import trust
from thread_service.servicer import WARNING_METADATA_KEY


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def trust_stack(loop_thread: LoopThread, tmp_path: Path, home: Path) -> Iterator[Stack]:
    running = start_stack(loop_thread, tmp_path, config_home=home)
    yield running
    running.stop()
    for folder in (home, home.parent):
        if folder.is_dir():
            folder.chmod(0o755)


def start_with_metadata(stack: Stack, cwd: Path) -> tuple[pb.StartThreadResponse, list[str]]:
    response, call = stack.threads.StartThread.with_call(pb.StartThreadRequest(cwd=str(cwd)))
    warnings = [
        value.decode("utf-8")
        for key, value in call.initial_metadata()
        if key == WARNING_METADATA_KEY
    ]
    return response, warnings


def project(tmp_path: Path, name: str = "project") -> Path:
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    return folder


def assert_started_in_memory(
    response: pb.StartThreadResponse, warnings: list[str], project_path: Path, *reasons: str
) -> None:
    assert response.thread.id
    assert response.thread.trust.trusted
    assert response.thread.trust.source == pb.TRUST_SOURCE_IN_MEMORY
    assert response.thread.trust.project_path == str(project_path)
    assert len(warnings) == 1
    assert list(response.warnings) == warnings
    # Paths are quoted JSON-style in warnings, so a newline cannot split one.
    assert json.dumps(str(project_path), ensure_ascii=False) in warnings[0]
    for reason in reasons:
        assert reason in warnings[0]


def test_a_successful_start_persists_trust_and_sends_no_warning(
    trust_stack: Stack, tmp_path: Path, home: Path
) -> None:
    folder = project(tmp_path)
    response, warnings = start_with_metadata(trust_stack, folder)
    assert warnings == [] and list(response.warnings) == []
    assert response.thread.trust.source == pb.TRUST_SOURCE_PERSISTED
    saved = tomllib.loads((home / "config.toml").read_text())
    assert saved["projects"][str(folder)]["trust_level"] == "trusted"


def test_read_only_config_file(trust_stack: Stack, tmp_path: Path, home: Path) -> None:
    home.mkdir()
    config = home / "config.toml"
    config.write_text("# mine\n[thread_service]\nmax_spawn_depth = 4\n")
    config.chmod(0o444)
    before = config.read_bytes()
    folder = project(tmp_path)
    response, warnings = start_with_metadata(trust_stack, folder)
    assert_started_in_memory(response, warnings, folder, json.dumps(str(config)), "read-only")
    assert config.read_bytes() == before


def test_read_only_config_folder(trust_stack: Stack, tmp_path: Path, home: Path) -> None:
    home.mkdir()
    home.chmod(0o555)
    folder = project(tmp_path)
    response, warnings = start_with_metadata(trust_stack, folder)
    assert_started_in_memory(response, warnings, folder, json.dumps(str(home)), "read-only")
    assert list(home.iterdir()) == []


def test_config_home_that_cannot_be_created(loop_thread: LoopThread, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the config home's parent should be")
    stack = start_stack(loop_thread, tmp_path, config_home=blocker / "home")
    try:
        folder = project(tmp_path)
        response, warnings = start_with_metadata(stack, folder)
        assert_started_in_memory(
            response, warnings, folder, str(blocker / "home"), "cannot create the config folder"
        )
        assert blocker.read_text().startswith("a file")
    finally:
        stack.stop()


def test_malformed_config_is_never_overwritten(
    trust_stack: Stack, tmp_path: Path, home: Path
) -> None:
    home.mkdir()
    config = home / "config.toml"
    config.write_bytes(b"# fine\n[projects\nbroken = \n")
    before = config.read_bytes()
    folder = project(tmp_path)
    response, warnings = start_with_metadata(trust_stack, folder)
    assert_started_in_memory(response, warnings, folder, "line 2", "column")
    assert config.read_bytes() == before


def test_full_disk(
    trust_stack: Stack, tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home.mkdir()
    config = home / "config.toml"
    config.write_text('[projects."/elsewhere"]\ntrust_level = "trusted"\n')
    before = config.read_bytes()

    def no_space(fd: int, data: bytes) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    # A real full disk needs a mount this sandbox cannot make: the one fake.
    monkeypatch.setattr(trust, "_write_all", no_space)
    folder = project(tmp_path)
    response, warnings = start_with_metadata(trust_stack, folder)
    assert_started_in_memory(response, warnings, folder, os.strerror(errno.ENOSPC))
    assert config.read_bytes() == before
    assert sorted(p.name for p in home.iterdir()) == ["config.toml", "config.toml.lock"]


@pytest.mark.parametrize("name", ['say "hi"', "two\nlines", "naïve-日本", "back\\slash"])
def test_odd_paths_travel_intact(trust_stack: Stack, tmp_path: Path, home: Path, name: str) -> None:
    folder = project(tmp_path, name)
    response, warnings = start_with_metadata(trust_stack, folder)
    assert warnings == []
    assert response.thread.trust.project_path == str(folder)
    saved = tomllib.loads((home / "config.toml").read_text(encoding="utf-8"))
    assert list(saved["projects"]) == [str(folder)]
    # The same odd path in a warning arrives intact through binary metadata.
    (home / "config.toml").chmod(0o444)
    other = project(tmp_path, name + " 2")
    response, warnings = start_with_metadata(trust_stack, other)
    assert_started_in_memory(response, warnings, other)
    (home / "config.toml").chmod(0o644)


def test_the_repository_root_is_trusted(trust_stack: Stack, tmp_path: Path, home: Path) -> None:
    repo = project(tmp_path, "repo")
    (repo / ".git").mkdir()
    nested = repo / "src" / "deep"
    nested.mkdir(parents=True)
    response, _ = start_with_metadata(trust_stack, nested)
    assert response.thread.trust.project_path == str(repo)
    assert response.thread.cwd == str(nested)


def test_fifty_concurrent_starts_from_four_processes_all_land(tmp_path: Path) -> None:
    home = tmp_path / "home"
    model = ServiceProcess("model_service", ["--config-home", str(tmp_path / "model-home")])
    services = [thread_process(model, tmp_path / f"data-{i}", home) for i in range(4)]
    folders = [project(tmp_path, f"project-{i:02d}") for i in range(50)]
    channels = [grpc.insecure_channel(s.address) for s in services]
    try:
        stubs = [pb_grpc.ThreadServiceStub(ch) for ch in channels]

        def start(i: int) -> pb.StartThreadResponse:
            request = pb.StartThreadRequest(cwd=str(folders[i]))
            response: pb.StartThreadResponse = stubs[i % 4].StartThread(request, timeout=30)
            return response

        with ThreadPoolExecutor(16) as pool:
            responses = list(pool.map(start, range(50)))
    finally:
        for channel in channels:
            channel.close()
        for service in services:
            service.stop()
        model.stop()
    assert all(r.thread.trust.source == pb.TRUST_SOURCE_PERSISTED for r in responses)
    assert all(not r.warnings for r in responses)
    saved = tomllib.loads((home / "config.toml").read_text())
    assert sorted(saved["projects"]) == sorted(str(f) for f in folders)
    assert stat.S_IMODE((home / "config.toml").stat().st_mode) == 0o600
