"""Project trust on thread start: the trust target, the config.toml edit, and its failures.

Everything runs on real files in tmp_path; the one fake is the full disk.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import logging
import multiprocessing
import os
import stat
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import pytest
import tomlkit

from spindle.errors import InvalidArgument
from thread_service import trust
from thread_service.records import TrustSource, TrustState
from thread_service.stores.sqlite import SQLiteStore
from thread_service.threads import Threads
from thread_service.trust import LOCK_FILE_NAME, Marked, ProjectTrust, trust_target
from thread_service.validation import check_cwd

HAND_WRITTEN = b"""# Spindle settings, edited by hand.
#   keep   this    spacing

[thread_service]
listen   =   "127.0.0.1:50051"   # loopback only
data_dir = '~/spindle-data'

\t# an indented comment, with a tab
[extras]
max_threads=8
ratios = [ 1.5,
  2.5 , ]  # trailing comma
"quoted key" = { a = 1, b = "two" }


[projects."/already/there"]
trust_level = "untrusted"   # ask first

[[hooks]]
name = "first"

[model_service]
provider = "embedded"
"""


@pytest.fixture
def home(tmp_path: Path) -> Path:
    folder = tmp_path / "home"
    folder.mkdir()
    return folder


@pytest.fixture
def project(tmp_path: Path) -> Path:
    folder = tmp_path / "project"
    folder.mkdir()
    return folder


@pytest.fixture
def writable_again() -> Iterator[list[Path]]:
    """Paths a test made read-only, given their write bits back so tmp_path can be removed."""
    paths: list[Path] = []
    yield paths
    for path in paths:
        path.chmod(0o755)


def config(home: Path) -> Path:
    return home / "config.toml"


def table_for(path: Path) -> bytes:
    """The exact bytes a new trust entry adds, for paths that need no escaping."""
    return f'[projects."{path}"]\ntrust_level = "trusted"\n'.encode()


def load(home: Path) -> dict[str, Any]:
    return tomllib.loads(config(home).read_text(encoding="utf-8"))


def mark(project_trust: ProjectTrust, cwd: str | Path) -> Marked:
    """What a thread start does: check the cwd, then trust its project."""
    return project_trust.mark_trusted(check_cwd(str(cwd)))


def resolve_trust_target(cwd: str) -> Path:
    return trust_target(check_cwd(cwd))


def assert_persisted(outcome: Marked, target: Path) -> None:
    assert outcome == Marked(TrustState(str(target), True, TrustSource.PERSISTED), None)


def assert_in_memory(
    outcome: Marked, target: Path, caplog: pytest.LogCaptureFixture, *reason: str
) -> None:
    """The failure shape: in memory, a warning naming both paths and the reason, logged once."""
    assert outcome.state == TrustState(str(target), True, TrustSource.IN_MEMORY)
    assert outcome.warning is not None
    assert str(target) in outcome.warning
    for words in reason:
        assert words in outcome.warning
    logged = [r for r in caplog.records if r.name == trust.__name__]
    assert [(r.levelno, r.getMessage()) for r in logged] == [(logging.WARNING, outcome.warning)]


def folder_listing(folder: Path) -> set[str]:
    return {entry.name for entry in folder.iterdir()}


def make_repo(root: Path) -> Path:
    (root / ".git").mkdir(parents=True)
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    return root


def make_worktree(main: Path, worktree: Path, *, relative: bool) -> None:
    """A linked worktree as `git worktree add` lays it out."""
    git_dir = main / ".git" / "worktrees" / worktree.name
    git_dir.mkdir(parents=True)
    (git_dir / "commondir").write_text("../..\n")
    (git_dir / "gitdir").write_text(f"{worktree}/.git\n")
    worktree.mkdir(parents=True)
    pointer = os.path.relpath(git_dir, worktree) if relative else str(git_dir)
    (worktree / ".git").write_text(f"gitdir: {pointer}\n")


# --- the trust target -------------------------------------------------------


def test_a_directory_in_no_repository_is_its_own_target(tmp_path: Path) -> None:
    cwd = tmp_path / "plain" / "dir"
    cwd.mkdir(parents=True)
    assert not any((p / ".git").exists() for p in (cwd, *cwd.parents)), "precondition"
    assert resolve_trust_target(str(cwd)) == cwd.resolve()


def test_a_nested_directory_trusts_its_repository_root(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    cwd = repo / "src" / "pkg" / "deep"
    cwd.mkdir(parents=True)
    assert resolve_trust_target(str(cwd)) == repo.resolve()
    assert resolve_trust_target(str(repo)) == repo.resolve()


@pytest.mark.parametrize("relative", [False, True], ids=["absolute-gitdir", "relative-gitdir"])
def test_a_linked_worktree_trusts_the_main_repository(tmp_path: Path, relative: bool) -> None:
    main = make_repo(tmp_path / "main")
    worktree = tmp_path / "elsewhere" / "feature"
    make_worktree(main, worktree, relative=relative)
    cwd = worktree / "src"
    cwd.mkdir()
    assert resolve_trust_target(str(cwd)) == main.resolve()


def test_a_worktree_of_a_bare_repository_is_its_own_root(tmp_path: Path) -> None:
    bare = tmp_path / "repo.git"
    (bare / "worktrees" / "wt").mkdir(parents=True)
    (bare / "worktrees" / "wt" / "commondir").write_text("../..\n")
    worktree = tmp_path / "wt"
    worktree.mkdir()
    (worktree / ".git").write_text(f"gitdir: {bare / 'worktrees' / 'wt'}\n")
    assert resolve_trust_target(str(worktree)) == worktree.resolve()


def test_a_submodule_is_its_own_root_not_the_superproject(tmp_path: Path) -> None:
    superproject = make_repo(tmp_path / "super")
    (superproject / ".git" / "modules" / "sub").mkdir(parents=True)
    submodule = superproject / "libs" / "sub"
    submodule.mkdir(parents=True)
    (submodule / ".git").write_text("gitdir: ../../.git/modules/sub\n")
    cwd = submodule / "src"
    cwd.mkdir()
    assert resolve_trust_target(str(cwd)) == submodule.resolve()


@pytest.mark.parametrize("content", ["", "not a pointer\n", "gitdir: /nowhere/at/all\n"])
def test_an_odd_git_file_still_marks_the_repository_boundary(tmp_path: Path, content: str) -> None:
    make_repo(tmp_path / "outer")
    inner = tmp_path / "outer" / "inner"
    inner.mkdir()
    (inner / ".git").write_text(content)
    assert resolve_trust_target(str(inner)) == inner.resolve()


def test_a_symlinked_cwd_trusts_the_real_repository(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "real" / "repo")
    (repo / "src").mkdir()
    link = tmp_path / "link"
    link.symlink_to(repo / "src")
    assert resolve_trust_target(str(link)) == repo.resolve()


def _empty(tmp_path: Path) -> str:
    return ""


def _relative(tmp_path: Path) -> str:
    return "relative/path"


def _missing(tmp_path: Path) -> str:
    return str(tmp_path / "missing")


def _file(tmp_path: Path) -> str:
    (tmp_path / "a-file").write_text("x")
    return str(tmp_path / "a-file")


def _under_a_file(tmp_path: Path) -> str:
    (tmp_path / "a-file").write_text("x")
    return str(tmp_path / "a-file" / "sub")


def _nul(tmp_path: Path) -> str:
    return f"{tmp_path}/a\0b"


def _symlink_loop(tmp_path: Path) -> str:
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    return str(tmp_path / "loop")


@pytest.mark.parametrize(
    ("make_cwd", "message"),
    [
        (_empty, "empty"),
        (_relative, "absolute"),
        (_missing, "does not exist"),
        (_file, "not a directory"),
        (_under_a_file, "cannot be used"),
        (_nul, "NUL"),
        (_symlink_loop, "cannot be used"),
    ],
)
def test_a_bad_cwd_is_an_invalid_argument_and_writes_nothing(
    tmp_path: Path, home: Path, make_cwd: Callable[[Path], str], message: str
) -> None:
    cwd = make_cwd(tmp_path)
    with pytest.raises(InvalidArgument, match=message):
        resolve_trust_target(cwd)
    with pytest.raises(InvalidArgument, match=message):
        mark(ProjectTrust(home), cwd)
    assert folder_listing(home) == set()


# --- writing trust ----------------------------------------------------------


def test_a_first_start_creates_the_config_home_and_file(tmp_path: Path, project: Path) -> None:
    home = tmp_path / "new" / "home"
    project_trust = ProjectTrust(home)
    assert not project_trust.is_trusted(str(project))
    outcome = mark(project_trust, str(project))
    assert_persisted(outcome, project)
    assert config(home).read_bytes() == table_for(project)
    assert stat.S_IMODE(config(home).stat().st_mode) == 0o600
    assert project_trust.is_trusted(str(project))


def test_the_worktree_cwd_writes_the_main_repository(tmp_path: Path, home: Path) -> None:
    main = make_repo(tmp_path / "main")
    make_worktree(main, tmp_path / "wt", relative=True)
    outcome = mark(ProjectTrust(home), str(tmp_path / "wt"))
    assert_persisted(outcome, main)
    assert load(home) == {"projects": {str(main): {"trust_level": "trusted"}}}


def test_a_hand_written_file_keeps_every_byte_and_gains_only_the_table(
    home: Path, project: Path
) -> None:
    config(home).write_bytes(HAND_WRITTEN)
    before = load(home)
    assert_persisted(mark(ProjectTrust(home), str(project)), project)
    assert config(home).read_bytes() == HAND_WRITTEN + b"\n" + table_for(project)
    after = load(home)
    assert after.pop("projects").pop(str(project)) == {"trust_level": "trusted"}
    before.pop("projects")
    assert after == before


@pytest.mark.parametrize(
    ("original", "separator"),
    [
        (b"x = 1 # no final newline", b"\n\n"),
        (b"x = 1\n\n", b""),
        (b"# only a comment\n", b"\n"),
    ],
)
def test_the_new_table_follows_one_blank_line(
    home: Path, project: Path, original: bytes, separator: bytes
) -> None:
    config(home).write_bytes(original)
    mark(ProjectTrust(home), str(project))
    assert config(home).read_bytes() == original + separator + table_for(project)


def test_a_crlf_file_gets_a_crlf_table(home: Path, project: Path) -> None:
    original = b"# windows\r\n[thread_service]\r\nx = 1\r\n"
    config(home).write_bytes(original)
    mark(ProjectTrust(home), str(project))
    assert config(home).read_bytes() == original + b"\r\n" + table_for(project).replace(
        b"\n", b"\r\n"
    )


def test_a_different_trust_level_is_changed_in_place(home: Path, project: Path) -> None:
    original = (
        f"[projects.'{project}']\n# why not yet\n"
        "trust_level   =   'untrusted'   # keep this comment\nnote = 1\n\n[after]\nx = 2\n"
    ).encode()
    config(home).write_bytes(original)
    assert_persisted(mark(ProjectTrust(home), str(project)), project)
    assert config(home).read_bytes() == original.replace(b"'untrusted'", b'"trusted"')


def test_an_entry_without_trust_level_gains_it(home: Path, project: Path) -> None:
    config(home).write_text(f'[projects."{project}"]\nnote = 1\n\n[after]\nx = 2\n')
    mark(ProjectTrust(home), str(project))
    assert load(home) == {
        "projects": {str(project): {"note": 1, "trust_level": "trusted"}},
        "after": {"x": 2},
    }


def test_an_inline_projects_table_gains_an_inline_entry(home: Path, project: Path) -> None:
    head = b'a = 1\nprojects = { "/other" = { trust_level = "untrusted" } }'
    tail = b"  # inline\n\n[later]\nb = 2\n"
    config(home).write_bytes(head + tail)
    assert_persisted(mark(ProjectTrust(home), str(project)), project)
    text = config(home).read_bytes()
    # Only the inline table itself is re-rendered (tomlkit drops the space before its `}`).
    assert text.startswith(head[: -len(b" }")]) and text.endswith(b"}" + tail)
    assert load(home) == {
        "a": 1,
        "projects": {
            "/other": {"trust_level": "untrusted"},
            str(project): {"trust_level": "trusted"},
        },
        "later": {"b": 2},
    }


@pytest.mark.parametrize(
    "entry",
    [
        'projects = {{ "{p}" = {{ trust_level = "untrusted", keep = true }} }}',
        '[projects]\n"{p}" = {{ trust_level = "untrusted", keep = true }}',
        'projects."{p}".trust_level = "untrusted"\nprojects."{p}".keep = true',
    ],
    ids=["inline-projects", "inline-entry", "dotted-keys"],
)
def test_other_forms_of_the_entry_are_updated_in_place(
    home: Path, project: Path, entry: str
) -> None:
    original = (entry.format(p=project) + "  # mine\n\n[later]\nb = 2\n").encode()
    config(home).write_bytes(original)
    assert_persisted(mark(ProjectTrust(home), str(project)), project)
    assert config(home).read_bytes() == original.replace(b'"untrusted"', b'"trusted"')
    assert load(home)["projects"] == {str(project): {"trust_level": "trusted", "keep": True}}


def test_a_second_start_writes_nothing(home: Path, project: Path) -> None:
    config(home).write_bytes(HAND_WRITTEN)
    project_trust = ProjectTrust(home)
    mark(project_trust, str(project))
    before = config(home).stat()
    written = config(home).read_bytes()
    assert_persisted(mark(project_trust, f"{project}/./"), project)
    after = config(home).stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert config(home).read_bytes() == written


def test_trust_written_by_another_process_while_waiting_is_not_written_again(
    home: Path, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config(home).write_bytes(HAND_WRITTEN + b"\n" + table_for(project))
    before = config(home).stat()
    # The unlocked first look misses it, as when another process writes in between.
    monkeypatch.setattr(ProjectTrust, "is_trusted", lambda self, path: False)
    assert_persisted(mark(ProjectTrust(home), str(project)), project)
    after = config(home).stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_an_already_trusted_project_needs_no_writable_file(
    home: Path, project: Path, writable_again: list[Path]
) -> None:
    config(home).write_bytes(table_for(project))
    config(home).chmod(0o444)
    home.chmod(0o555)
    writable_again.extend([home, config(home)])
    assert_persisted(mark(ProjectTrust(home), str(project)), project)
    assert folder_listing(home) == {"config.toml"}


def test_the_permission_bits_are_kept(home: Path, project: Path) -> None:
    config(home).write_bytes(HAND_WRITTEN)
    config(home).chmod(0o640)
    mark(ProjectTrust(home), str(project))
    assert stat.S_IMODE(config(home).stat().st_mode) == 0o640


def test_a_symlinked_config_is_edited_through_the_link(
    tmp_path: Path, home: Path, project: Path
) -> None:
    dotfiles = tmp_path / "dotfiles"
    dotfiles.mkdir()
    (dotfiles / "spindle.toml").write_bytes(HAND_WRITTEN)
    config(home).symlink_to(dotfiles / "spindle.toml")
    assert_persisted(mark(ProjectTrust(home), str(project)), project)
    assert config(home).is_symlink()
    assert (dotfiles / "spindle.toml").read_bytes() == HAND_WRITTEN + b"\n" + table_for(project)


# --- paths TOML must quote --------------------------------------------------

ODD_NAMES = [
    'double"quote',
    "back\\slash",
    "new\nline",
    "ünïcødé-日本語-emoji-🙂",
    "tab\tand\x7fdel\x01ctl",
    "'single'#hash[brackets].dots = x",
    'x"]\ntrust_level = "untrusted"\n[evil',
]


@pytest.mark.parametrize("name", ODD_NAMES)
def test_an_odd_path_is_quoted_as_exactly_one_new_key(
    tmp_path: Path, home: Path, name: str
) -> None:
    cwd = tmp_path / name
    cwd.mkdir()
    config(home).write_bytes(HAND_WRITTEN)
    before = load(home)
    project_trust = ProjectTrust(home)
    assert_persisted(mark(project_trust, str(cwd)), cwd)
    assert_added_exactly(home, before, str(cwd))
    written = config(home).read_bytes()
    assert mark(project_trust, str(cwd)).state.source is TrustSource.PERSISTED
    assert config(home).read_bytes() == written


def test_a_very_long_path_is_written(tmp_path: Path, home: Path) -> None:
    cwd = tmp_path.joinpath(*[f"{i:02d}" + "x" * 198 for i in range(15)])
    cwd.mkdir(parents=True)
    assert len(str(cwd)) > 3000
    config(home).write_bytes(HAND_WRITTEN)
    before = load(home)
    assert_persisted(mark(ProjectTrust(home), str(cwd)), cwd)
    assert_added_exactly(home, before, str(cwd))


def assert_added_exactly(home: Path, before: dict[str, Any], key: str) -> None:
    """The file reads back as `before` plus one trusted key, in both parsers."""
    after = load(home)
    tomlkit.parse(config(home).read_text(encoding="utf-8"))
    assert set(after["projects"]) - set(before["projects"]) == {key}
    assert after["projects"].pop(key) == {"trust_level": "trusted"}
    assert after == before


# --- failures: trusted in memory, file untouched ----------------------------


def test_a_read_only_config_file_is_left_alone(
    home: Path, project: Path, caplog: pytest.LogCaptureFixture, writable_again: list[Path]
) -> None:
    config(home).write_bytes(HAND_WRITTEN)
    config(home).chmod(0o444)
    writable_again.append(config(home))
    outcome = mark(ProjectTrust(home), str(project))
    assert_in_memory(outcome, project, caplog, str(config(home)), "read-only")
    assert config(home).read_bytes() == HAND_WRITTEN
    assert folder_listing(home) == {"config.toml", LOCK_FILE_NAME}


@pytest.mark.parametrize("with_file", [True, False], ids=["with-config", "without-config"])
def test_a_read_only_config_folder_is_left_alone(
    home: Path,
    project: Path,
    caplog: pytest.LogCaptureFixture,
    writable_again: list[Path],
    with_file: bool,
) -> None:
    if with_file:
        config(home).write_bytes(HAND_WRITTEN)
    listing = folder_listing(home)
    home.chmod(0o555)
    writable_again.append(home)
    outcome = mark(ProjectTrust(home), str(project))
    assert_in_memory(outcome, project, caplog, str(home), "read-only")
    assert folder_listing(home) == listing
    if with_file:
        assert config(home).read_bytes() == HAND_WRITTEN


def test_a_config_home_that_cannot_be_created(
    tmp_path: Path, project: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    home = tmp_path / "a-file" / "home"
    outcome = mark(ProjectTrust(home), str(project))
    assert_in_memory(outcome, project, caplog, str(home), "cannot create the config folder")
    assert (tmp_path / "a-file").read_text() == "not a folder"


@pytest.mark.parametrize(
    ("original", "where"),
    [
        (b"# fine\n[thread_service]\nport = = 1\n", "line 3, column 8"),
        (b"a = 1\na = 2\n", "line 2"),
        (b'name = "unterminated\n', "line 1, column 21"),
    ],
)
def test_a_malformed_config_is_never_overwritten(
    home: Path, project: Path, caplog: pytest.LogCaptureFixture, original: bytes, where: str
) -> None:
    config(home).write_bytes(original)
    outcome = mark(ProjectTrust(home), str(project))
    assert_in_memory(outcome, project, caplog, str(config(home)), "not valid TOML", where)
    assert config(home).read_bytes() == original
    assert folder_listing(home) == {"config.toml", LOCK_FILE_NAME}


def test_a_config_that_is_not_utf8_is_never_overwritten(
    home: Path, project: Path, caplog: pytest.LogCaptureFixture
) -> None:
    original = b"# caf\xe9\nx = 1\n"
    config(home).write_bytes(original)
    outcome = mark(ProjectTrust(home), str(project))
    assert_in_memory(outcome, project, caplog, "not valid UTF-8")
    assert config(home).read_bytes() == original


@pytest.mark.parametrize(
    "original",
    [b"projects = 3\n", b'[[projects]]\npath = "/x"\n', b'[projects]\n"{p}" = "trusted"\n'],
    ids=["integer", "array-of-tables", "string-entry"],
)
def test_a_projects_value_of_another_shape_is_left_alone(
    home: Path, project: Path, caplog: pytest.LogCaptureFixture, original: bytes
) -> None:
    original = original.replace(b"{p}", str(project).encode())
    config(home).write_bytes(original)
    outcome = mark(ProjectTrust(home), str(project))
    assert_in_memory(outcome, project, caplog, "not a table")
    assert config(home).read_bytes() == original


def test_a_full_disk_leaves_the_file_and_no_temporary_file(
    home: Path, project: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def half_then_full(fd: int, data: bytes) -> None:
        os.write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(trust, "_write_all", half_then_full)
    config(home).write_bytes(HAND_WRITTEN)
    outcome = mark(ProjectTrust(home), str(project))
    assert_in_memory(outcome, project, caplog, str(config(home)), "No space left on device")
    assert config(home).read_bytes() == HAND_WRITTEN
    assert folder_listing(home) == {"config.toml", LOCK_FILE_NAME}


def loses_a_table(text: str, project: str) -> str:
    """A broken edit: the new table is there, and a table is renamed."""
    return text.replace("[model_service]", "[renamed]") + table_for(Path(project)).decode()


@pytest.mark.parametrize("in_place", [False, True], ids=["append", "edit-in-place"])
def test_an_edit_that_would_not_read_back_is_refused(
    home: Path,
    project: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    in_place: bool,
) -> None:
    original = HAND_WRITTEN
    if in_place:  # an untrusted entry is edited by tomlkit, a new project is appended
        original += f'\n[projects."{project}"]\ntrust_level = "untrusted"\n'.encode()
        real_edit = trust._with_trust

        def edits_and_renames(doc: tomlkit.TOMLDocument, text: str, project: str) -> str | None:
            edited = real_edit(doc, text, project)
            return edited and edited.replace("[model_service]", "[renamed]")

        monkeypatch.setattr(trust, "_with_trust", edits_and_renames)
    else:
        monkeypatch.setattr(trust, "_appended", loses_a_table)
    config(home).write_bytes(original)
    outcome = mark(ProjectTrust(home), str(project))
    assert_in_memory(outcome, project, caplog, "would not read back as expected")
    assert config(home).read_bytes() == original


def test_a_lock_held_too_long_gives_up(
    home: Path, project: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config(home).write_bytes(HAND_WRITTEN)
    with open(home / LOCK_FILE_NAME, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        outcome = mark(ProjectTrust(home, lock_timeout_s=0.2), str(project))
    assert_in_memory(outcome, project, caplog, "timed out", LOCK_FILE_NAME)
    assert config(home).read_bytes() == HAND_WRITTEN


def test_an_unexpected_error_still_starts_the_thread(
    home: Path, project: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(text: str, before: dict[str, Any], project: str) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(trust, "_edited_config", broken)
    outcome = mark(ProjectTrust(home), str(project))
    assert_in_memory(outcome, project, caplog, "unexpected RuntimeError")


def test_is_trusted_is_false_for_what_it_cannot_read(home: Path, project: Path) -> None:
    project_trust = ProjectTrust(home)
    assert not project_trust.is_trusted(str(project))
    config(home).write_text(f'[projects."{project}"]\ntrust_level = "untrusted"\n')
    assert not project_trust.is_trusted(str(project))
    config(home).write_text("not toml = = =")
    assert not project_trust.is_trusted(str(project))


# --- the bound on trusted projects ------------------------------------------


def trusted_entries(*names: str) -> bytes:
    return b"".join(b"\n" + table_for(Path(f"/p/{name}")) for name in names)


def test_at_the_bound_a_new_project_is_trusted_in_memory_and_the_file_untouched(
    home: Path, project: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # HAND_WRITTEN's untrusted "/already/there" does not count.
    original = HAND_WRITTEN + trusted_entries("one", "two")
    config(home).write_bytes(original)
    before = config(home).stat()
    outcome = mark(ProjectTrust(home, max_projects=2), str(project))
    assert_in_memory(
        outcome,
        project,
        caplog,
        str(config(home)),
        "already trusts 2 projects",
        "max_trusted_projects",
    )
    after = config(home).stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert config(home).read_bytes() == original


def test_below_the_bound_untrusted_entries_do_not_count(home: Path, project: Path) -> None:
    config(home).write_bytes(HAND_WRITTEN + trusted_entries("one"))
    assert_persisted(mark(ProjectTrust(home, max_projects=2), str(project)), project)
    saved = load(home)["projects"]
    assert [key for key, entry in saved.items() if entry["trust_level"] == "trusted"] == [
        "/p/one",
        str(project),
    ]


def test_over_the_bound_trusted_projects_still_start_and_no_entry_is_removed(
    tmp_path: Path, home: Path, project: Path, caplog: pytest.LogCaptureFixture
) -> None:
    known = tmp_path / "known"
    known.mkdir()
    original = HAND_WRITTEN + trusted_entries("one", "two", "three") + b"\n" + table_for(known)
    config(home).write_bytes(original)
    project_trust = ProjectTrust(home, max_projects=2)
    assert_persisted(mark(project_trust, known), known)
    outcome = mark(project_trust, project)
    assert_in_memory(
        outcome, project, caplog, "already trusts 4 projects (max_trusted_projects = 2)"
    )
    assert config(home).read_bytes() == original


def test_at_the_bound_an_untrusted_entry_is_not_raised_either(
    home: Path, project: Path, caplog: pytest.LogCaptureFixture
) -> None:
    original = trusted_entries("one") + b"\n" + table_for(project).replace(b'"trusted"', b'"no"')
    config(home).write_bytes(original)
    outcome = mark(ProjectTrust(home, max_projects=1), project)
    assert_in_memory(outcome, project, caplog, "max_trusted_projects")
    assert config(home).read_bytes() == original


def test_once_the_user_removes_entries_new_projects_are_saved_again(
    home: Path, project: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config(home).write_bytes(trusted_entries("one"))
    project_trust = ProjectTrust(home, max_projects=1)
    assert mark(project_trust, project).state.source is TrustSource.IN_MEMORY
    config(home).write_bytes(b"# cleaned up\n")
    assert_persisted(mark(project_trust, project), project)
    assert config(home).read_bytes() == b"# cleaned up\n\n" + table_for(project)


@pytest.mark.anyio
async def test_a_thread_started_at_the_bound_is_trusted_in_memory(
    tmp_path: Path, home: Path, project: Path
) -> None:
    config(home).write_bytes(trusted_entries("one"))
    store = await SQLiteStore.open(tmp_path / "data" / "spindle.sqlite3", "NORMAL")
    try:
        threads = Threads(
            store, ProjectTrust(home, max_projects=1), default_model="m", max_spawn_depth=1
        )
        started = await threads.start(str(project))
        expected = TrustState(str(project), True, TrustSource.IN_MEMORY)
        assert started.thread.trust == expected
        assert len(started.warnings) == 1 and "max_trusted_projects" in started.warnings[0]
        stored = await store.get_thread(started.thread.id)
        assert stored is not None and stored.trust == expected
    finally:
        await store.close()
    assert config(home).read_bytes() == trusted_entries("one")


@pytest.mark.parametrize("bound", [0, -1])
def test_the_bound_is_at_least_one(home: Path, bound: int) -> None:
    with pytest.raises(ValueError, match="max_projects"):
        ProjectTrust(home, max_projects=bound)


# --- the in-memory view: unchanged files are not read again -----------------

_recorders: list[list[str]] = []


def _record_opens(event: str, args: tuple[Any, ...]) -> None:
    if event == "open" and _recorders and isinstance(args[0], str | bytes | os.PathLike):
        for found in _recorders:
            found.append(os.fsdecode(args[0]))


@functools.cache
def _install_open_recorder() -> None:
    """An audit hook sees every open(), by any API; hooks stay for the process, so once."""
    sys.addaudithook(_record_opens)


@contextmanager
def files_opened_under(folder: Path) -> Iterator[list[Path]]:
    """The files under `folder` opened within the block (as a list filled on exit)."""
    _install_open_recorder()
    found: list[str] = []
    under: list[Path] = []
    _recorders.append(found)
    try:
        yield under
    finally:
        _recorders.remove(found)
        under.extend(Path(p) for p in found if Path(p).is_relative_to(folder))


def written_a_minute_ago(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    then = time.time() - 60
    os.utime(path, (then, then))


def test_a_start_in_a_trusted_project_reads_nothing_while_the_file_is_unchanged(
    home: Path, project: Path
) -> None:
    written_a_minute_ago(config(home), HAND_WRITTEN + b"\n" + table_for(project))
    project_trust = ProjectTrust(home)
    with files_opened_under(home) as first:
        assert_persisted(mark(project_trust, project), project)
    with files_opened_under(home) as later:
        for _ in range(3):
            assert_persisted(mark(project_trust, project), project)
        assert project_trust.is_trusted(str(project))
    assert first == [config(home)]
    assert later == []


def test_a_file_changed_just_before_it_was_read_is_read_again(home: Path, project: Path) -> None:
    # A change within the same timestamp tick would keep the stat: until the
    # file is older than that, every start looks at its bytes again.
    config(home).write_bytes(table_for(project))
    project_trust = ProjectTrust(home)
    assert_persisted(mark(project_trust, project), project)
    with files_opened_under(home) as opened:
        assert_persisted(mark(project_trust, project), project)
    assert opened == [config(home)]
    then = time.time() - 60
    os.utime(config(home), (then, then))
    assert_persisted(mark(project_trust, project), project)
    with files_opened_under(home) as opened:
        assert_persisted(mark(project_trust, project), project)
    assert opened == []


def _rewritten(path: Path, data: bytes) -> None:
    """Another program replacing the file, as editors and `mv` do."""
    (path.parent / "new.toml").write_bytes(data)
    os.replace(path.parent / "new.toml", path)


def _rewritten_in_place_keeping_mtime(path: Path, data: bytes) -> None:
    """Another program writing into the file and setting its mtime back."""
    before = path.stat()
    assert len(data) == before.st_size, "precondition: same size"
    with open(path, "r+b") as fh:
        fh.write(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


@pytest.mark.parametrize("rewrite", [_rewritten, _rewritten_in_place_keeping_mtime])
def test_an_outside_edit_removing_the_trust_is_noticed(
    home: Path,
    project: Path,
    rewrite: Callable[[Path, bytes], None],
    caplog: pytest.LogCaptureFixture,
) -> None:
    original = HAND_WRITTEN + b"\n" + table_for(project)
    written_a_minute_ago(config(home), original)
    project_trust = ProjectTrust(home)
    assert_persisted(mark(project_trust, project), project)
    # Same size, so only the stat's inode or ctime can tell.
    untrusted = original.replace(b'"trusted"', b'"Trusted"')
    rewrite(config(home), untrusted)
    assert not project_trust.is_trusted(str(project))
    assert_persisted(mark(project_trust, project), project)
    assert config(home).read_bytes() == original
    assert not caplog.records


def test_trust_written_by_another_process_is_seen_and_kept(
    tmp_path: Path, home: Path, project: Path
) -> None:
    other = tmp_path / "other"
    other.mkdir()
    written_a_minute_ago(config(home), HAND_WRITTEN)
    here, elsewhere = ProjectTrust(home), ProjectTrust(home)
    assert not here.is_trusted(str(other))
    assert_persisted(mark(elsewhere, other), other)
    assert here.is_trusted(str(other))
    assert_persisted(mark(here, project), project)
    assert config(home).read_bytes() == HAND_WRITTEN + b"\n" + table_for(other) + b"\n" + (
        table_for(project)
    )


def test_a_deleted_file_is_noticed(home: Path, project: Path) -> None:
    written_a_minute_ago(config(home), table_for(project))
    project_trust = ProjectTrust(home)
    assert_persisted(mark(project_trust, project), project)
    config(home).unlink()
    assert not project_trust.is_trusted(str(project))
    assert_persisted(mark(project_trust, project), project)
    assert config(home).read_bytes() == table_for(project)


def test_a_file_that_became_malformed_is_noticed(
    home: Path, project: Path, caplog: pytest.LogCaptureFixture
) -> None:
    written_a_minute_ago(config(home), table_for(project))
    project_trust = ProjectTrust(home)
    assert_persisted(mark(project_trust, project), project)
    broken = table_for(project) + b"oops = = 1\n"
    config(home).write_bytes(broken)
    outcome = mark(project_trust, project)
    assert_in_memory(outcome, project, caplog, "not valid TOML", "line 3, column 8")
    assert config(home).read_bytes() == broken


# --- concurrency ------------------------------------------------------------

PROCESSES = 5
PROJECTS_PER_PROCESS = 10


def mark_many(
    home: str, cwds: list[str], start: Barrier, results: Queue[tuple[int, str, str]]
) -> None:
    """Run in a spawned process: mark each cwd from a few threads at once."""
    project_trust = ProjectTrust(Path(home))
    start.wait()
    with ThreadPoolExecutor(max_workers=3) as pool:
        for outcome in pool.map(functools.partial(mark, project_trust), cwds):
            results.put((os.getpid(), outcome.state.project_path, outcome.state.source.value))


def test_concurrent_starts_in_many_processes_keep_every_entry(tmp_path: Path, home: Path) -> None:
    config(home).write_bytes(HAND_WRITTEN)
    cwds = [tmp_path / f"project-{i:02d}" for i in range(PROCESSES * PROJECTS_PER_PROCESS)]
    for cwd in cwds:
        cwd.mkdir()
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(PROCESSES)
    results: Queue[tuple[int, str, str]] = context.Queue()
    workers = [
        context.Process(
            target=mark_many,
            args=(str(home), [str(c) for c in cwds[i::PROCESSES]], start, results),
        )
        for i in range(PROCESSES)
    ]
    for worker in workers:
        worker.start()
    parse_errors: list[str] = []
    done = threading.Event()
    watcher = threading.Thread(target=watch_parses, args=(config(home), done, parse_errors))
    watcher.start()
    outcomes = [results.get(timeout=60) for _ in cwds]
    done.set()
    watcher.join(timeout=60)
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0

    assert len({pid for pid, _, _ in outcomes}) == PROCESSES
    assert {(path, source) for _, path, source in outcomes} == {
        (str(c), TrustSource.PERSISTED.value) for c in cwds
    }
    assert set(load(home)["projects"]) == {"/already/there"} | {str(c) for c in cwds}
    assert config(home).read_bytes().startswith(HAND_WRITTEN)
    assert parse_errors == []


def watch_parses(path: Path, done: threading.Event, errors: list[str]) -> None:
    """Parse `path` over and over until `done`; a torn write would show here."""
    while not done.is_set():
        try:
            tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            errors.append(repr(exc))
