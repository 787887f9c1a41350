"""Project trust: starting a thread in a directory marks its project trusted.

Trust is saved in `{config_home}/config.toml` as

    [projects."/abs/path/to/project"]
    trust_level = "trusted"

and saving it is best effort: a read-only file or folder, a full disk, a
malformed file or a file already holding the most trusted projects allowed
must not stop a thread from starting, so `ProjectTrust.mark_trusted` never
raises for them. It returns trust held in memory only, with a warning naming
the paths and the reason, and logs that warning once.

Behaviours callers may rely on:
- The trust target is the root of the git repository holding the thread's
  directory (the main repository's root for a linked worktree, see
  `git_root`), or the directory itself outside any repository. The caller
  passes the directory resolved (`validation.check_cwd`), so a symlinked
  `cwd` trusts the real project, and the saved key is that resolved path.
- The file is edited, never rewritten from scratch: a new project becomes a
  table appended after the file's last byte, an existing entry (a table, an
  inline table or dotted keys) only has its `trust_level` value changed, and
  an inline `projects = {...}` gains an inline entry. Every other byte stays.
- A project the file already trusts causes no write at all (not even of the
  lock file), so repeated starts leave the file's bytes and mtime alone.
- Nor does it cause a read while the file is unchanged: its trusted keys are
  kept in memory with its identity (device, inode, size, mtime, ctime), and
  a change by anyone, in any process, makes the next start read it again. A
  file changed less than 2 s before it was read has its bytes read again at
  each start until it is older (a change within one timestamp tick would
  keep its stat), but not parsed again while they are the same. So a start
  in a trusted project costs the same whatever the number of projects.
- The service writes at most `max_projects` trusted projects (the setting
  `max_trusted_projects`): when the file already trusts that many, a start in
  any other project is trusted in memory, with a warning naming the setting.
  No entry is ever removed: the file is the user's.
- An edit is written only if the new text parses with tomllib (the parser
  the services read their settings with) and reads back as exactly the old
  data plus this one trust; a file tomllib rejects is never touched. A new
  project is appended as a table rendered by tomlkit and checked with
  tomllib alone, so adding one costs no tomlkit parse of the whole file (a
  few hundred ms at a thousand projects, against about 10 ms for tomllib).
  Edits in place (an existing entry, an inline `projects`) are tomlkit's,
  and the file must parse with tomlkit before and after them too.
- Writes are atomic (temporary file in the same folder, fsync, `os.replace`,
  fsync of the folder), keep the old file's permission bits (new files get
  0o600: the file may hold settings worth keeping private) and its owner
  when allowed, and go through a symlinked `config.toml` to its target.
- Read-modify-write runs under `fcntl.flock` on `config.toml.lock` in the
  config home, so concurrent starts in any number of processes keep each
  other's entries. The lock file is left in place: deleting it would race.
- A `config.toml` or folder without any write bit is treated as read-only
  even for root, because that is what the user who removed the bits meant.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import logging
import math
import os
import re
import stat
import tempfile
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import tomlkit
from tomlkit.container import OutOfOrderTableProxy
from tomlkit.exceptions import ParseError, TOMLKitError
from tomlkit.items import InlineTable, Table

from spindle.settings import CONFIG_FILE_NAME
from thread_service.git_root import repository_root
from thread_service.records import TrustSource, TrustState

__all__ = [
    "DEFAULT_MAX_PROJECTS",
    "LOCK_FILE_NAME",
    "MAX_PROJECTS_SETTING",
    "Marked",
    "ProjectTrust",
    "trust_target",
]

logger = logging.getLogger(__name__)

TRUSTED = "trusted"
PROJECTS_KEY = "projects"
TRUST_LEVEL_KEY = "trust_level"
LOCK_FILE_NAME = f"{CONFIG_FILE_NAME}.lock"
NEW_FILE_MODE = 0o600
DEFAULT_LOCK_TIMEOUT_S = 10.0
DEFAULT_MAX_PROJECTS = 1000
# The setting a warning names when the bound is reached; the service wires it to `max_projects`.
MAX_PROJECTS_SETTING = "max_trusted_projects"
# Timestamps move in ticks (a few ms on ext4, 1 s or 2 s on some file systems):
# a file modified this shortly before it was read could change again within
# the same tick, keeping its stat, so its view is checked again.
_SETTLE_NS = 2_000_000_000
_ANY_WRITE_BIT = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
_TABLES = (Table, InlineTable, OutOfOrderTableProxy)
_TOMLLIB_POSITION = re.compile(r"\(at line (\d+), column (\d+)\)")

_Identity = tuple[int, int, int, int, int]


class Marked(NamedTuple):
    """What `mark_trusted` did; `warning` is set exactly when the write failed."""

    state: TrustState
    warning: str | None


class _NotSaved(Exception):
    """Trust could not be written; the message is the reason shown to the user."""


@dataclass(frozen=True, slots=True)
class _View:
    """config.toml as last read, kept so that an unchanged file is not read again.

    `data` is what tomllib read (None with a `problem`: the file cannot be
    edited, and why); nothing may mutate it, views are shared between threads.
    """

    identity: _Identity | None  # None: not known (just written), so not to be trusted
    settled: bool  # read long enough after its last change for `identity` to tell
    raw: bytes
    text: str
    data: dict[str, Any] | None
    problem: str | None
    trusted: frozenset[str]


_ABSENT = _View(None, False, b"", "", {}, None, frozenset())


def trust_target(directory: Path) -> Path:
    """The folder to trust for a thread started in `directory` (resolved)."""
    return repository_root(directory) or directory


class ProjectTrust:
    """Marks and reads project trust in `{config_home}/config.toml`."""

    def __init__(
        self,
        config_home: Path,
        *,
        max_projects: int = DEFAULT_MAX_PROJECTS,
        lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
    ) -> None:
        if max_projects < 1:
            raise ValueError(f"max_projects must be at least 1, not {max_projects}")
        self._home = config_home
        self._config = config_home / CONFIG_FILE_NAME
        self._lock = config_home / LOCK_FILE_NAME
        self._max_projects = max_projects
        self._lock_timeout_s = lock_timeout_s
        # Replaced whole, never changed: threads share it without a lock.
        self._view: _View | None = None

    @property
    def config_path(self) -> Path:
        """The file trust is written to."""
        return self._config

    def mark_trusted(self, directory: Path) -> Marked:
        """Trust the project holding `directory` (resolved), in the file when
        possible, else in memory. Blocking (file I/O, a lock wait of at most
        `lock_timeout_s`); never raises."""
        project = str(trust_target(directory))
        try:
            self._persist(project)
        except _NotSaved as exc:
            return self._in_memory(project, str(exc))
        except Exception as exc:  # best effort: no failure may stop a thread start
            return self._in_memory(project, f"unexpected {type(exc).__name__}", exc_info=True)
        return Marked(TrustState(project, True, TrustSource.PERSISTED), None)

    def is_trusted(self, project_path: str) -> bool:
        """Whether config.toml trusts exactly this key; False when it cannot be read.

        Costs a stat while the file is unchanged; it is read again when it changed.
        """
        try:
            view, _ = self._current(self._config)
        except _NotSaved:
            return False
        return project_path in view.trusted

    def _persist(self, project: str) -> None:
        """Write trust for `project` unless the file already holds it."""
        if self.is_trusted(project):
            return
        with _failing_as("cannot create the config folder"):
            self._home.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Checked before the lock file is created: it must not appear in a read-only folder.
        _require_writable(self._home, "the config folder")
        with self._locked():
            self._update(project)

    def _update(self, project: str) -> None:
        """Read, edit and replace config.toml; call only under the lock."""
        target = self._config.resolve()  # edit a symlink's target, keep the link
        if target.parent != self._home.resolve():
            _require_writable(target.parent, "the folder of config.toml")
        if target.exists():
            _require_writable(target, "config.toml")
        view, previous = self._current(target)
        if view.problem is not None or view.data is None:
            raise _NotSaved(view.problem or "config.toml cannot be read")
        if project in view.trusted:
            return
        if len(view.trusted) >= self._max_projects:
            raise _NotSaved(
                f"it already trusts {len(view.trusted)} projects "
                f"({MAX_PROJECTS_SETTING} = {self._max_projects})"
            )
        edit = _edited_config(view.text, view.data, project)
        if edit is None:
            return
        new_text, after = edit
        raw = new_text.encode("utf-8")
        _replace_atomically(target, raw, previous)
        # Its identity is left unknown: the next look reads the file and compares the bytes.
        self._view = _View(None, False, raw, new_text, after, None, _trusted_keys(after))

    def _current(self, path: Path) -> tuple[_View, os.stat_result | None]:
        """The file at `path` as it is now, and its stat (None when it does not exist).

        The last view is reused while the file's identity is the same, without
        reading; otherwise the file is read, and parsed unless its bytes are
        those of the last view.
        """
        view = self._view
        try:
            status = os.stat(path)
        except FileNotFoundError:
            return _ABSENT, None
        except OSError as exc:
            raise _NotSaved(f"cannot read config.toml: {_reason(exc)}") from exc
        if view is not None and view.settled and view.identity == _identity(status):
            return view, status
        fresh, status_read = _read_view(path, view)
        if status_read is not None:
            self._view = fresh
        return fresh, status_read

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the cross-process lock that serializes edits of config.toml."""
        with _failing_as(f"cannot open the lock file {_show(self._lock)}"):
            fd = os.open(self._lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, NEW_FILE_MODE)
        try:
            _acquire(fd, self._lock_timeout_s, self._lock)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _in_memory(self, project: str, reason: str, *, exc_info: bool = False) -> Marked:
        """The outcome of a failed write, with its warning logged once."""
        warning = (
            f"could not save trust for project {_show(project)} in {_show(self._config)}: "
            f"{reason}; the project is trusted in memory for this thread only"
        )
        logger.warning("%s", warning, exc_info=exc_info)
        return Marked(TrustState(project, True, TrustSource.IN_MEMORY), warning)


def _identity(status: os.stat_result) -> _Identity:
    """What changes when the file does: replaced (inode), written (size, mtime), or
    touched in any way, its mtime set back included (ctime, which no one can set)."""
    return (
        status.st_dev,
        status.st_ino,
        status.st_size,
        status.st_mtime_ns,
        status.st_ctime_ns,
    )


def _read_view(path: Path, last: _View | None) -> tuple[_View, os.stat_result | None]:
    """Read config.toml; parse it unless its bytes are `last`'s."""
    read_at = time.time_ns()  # before reading: a change after this has a later mtime
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
            status = os.fstat(fh.fileno())
    except FileNotFoundError:
        return _ABSENT, None
    except OSError as exc:
        raise _NotSaved(f"cannot read config.toml: {_reason(exc)}") from exc
    identity = _identity(status)
    settled = read_at - status.st_mtime_ns >= _SETTLE_NS
    if last is not None and last.raw == raw:
        return dataclasses.replace(last, identity=identity, settled=settled), status
    return _parsed_view(raw, identity, settled), status


def _parsed_view(raw: bytes, identity: _Identity, settled: bool) -> _View:
    """A view of new bytes: what tomllib reads, or why the file cannot be edited."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        problem = f"config.toml is not valid UTF-8 (at byte {exc.start}); it was left unchanged"
        return _View(identity, settled, raw, "", None, problem, frozenset())
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = _TOMLLIB_POSITION.search(str(exc))
        line, column = (int(found[1]), int(found[2])) if found else (None, None)
        return _View(identity, settled, raw, text, None, _malformed(line, column), frozenset())
    return _View(identity, settled, raw, text, data, None, _trusted_keys(data))


def _trusted_keys(data: dict[str, Any]) -> frozenset[str]:
    """The projects `data` trusts: the ones the bound counts and a start needs no write for."""
    projects = data.get(PROJECTS_KEY)
    if not isinstance(projects, dict):
        return frozenset()
    return frozenset(
        key
        for key, entry in projects.items()
        if isinstance(entry, dict) and entry.get(TRUST_LEVEL_KEY) == TRUSTED
    )


def _edited_config(
    text: str, before: dict[str, Any], project: str
) -> tuple[str, dict[str, Any]] | None:
    """`text` (which tomllib reads as `before`) with `project` trusted, and what
    it reads as; None when it already is trusted."""
    try:
        project.encode("utf-8")
    except UnicodeEncodeError:
        raise _NotSaved("the project path is not valid UTF-8, which TOML cannot hold") from None
    projects = before.get(PROJECTS_KEY)
    if projects is not None and not isinstance(projects, dict):
        raise _NotSaved("`projects` in config.toml is not a table; it was left unchanged")
    entry = None if projects is None else projects.get(project)
    if entry is None:
        new_text = _appended(text, project)
        try:
            after = tomllib.loads(new_text)
        except tomllib.TOMLDecodeError:
            # An inline `projects = {...}` cannot gain a table; tomlkit adds an inline entry.
            return _edited_in_place(text, before, project)
        _check_read_back(before, after, project)
        return new_text, after
    if not isinstance(entry, dict):
        raise _NotSaved("this project's entry in config.toml is not a table; it was left unchanged")
    if entry.get(TRUST_LEVEL_KEY) == TRUSTED:
        return None
    return _edited_in_place(text, before, project)


def _edited_in_place(
    text: str, before: dict[str, Any], project: str
) -> tuple[str, dict[str, Any]] | None:
    """The edit tomlkit makes in the file's own layout, checked with both parsers."""
    try:
        doc = tomlkit.parse(text)
    except ParseError as exc:  # tomlkit counts columns from 0
        raise _NotSaved(_malformed(exc.line, exc.col + 1)) from exc
    except TOMLKitError as exc:
        raise _NotSaved(f"tomlkit cannot edit config.toml ({type(exc).__name__})") from exc
    new_text = _with_trust(doc, text, project)
    if new_text is None:
        return None
    try:
        tomlkit.parse(new_text)
        after = tomllib.loads(new_text)
    except (TOMLKitError, tomllib.TOMLDecodeError) as exc:
        raise _NotSaved("the edited config.toml would not parse; it was left unchanged") from exc
    _check_read_back(before, after, project)
    return new_text, after


def _malformed(line: int | None, column: int | None) -> str:
    """The reason for a file that does not parse; its text is not quoted, it may hold secrets."""
    where = f"line {line}, column {column}" if line is not None else "end of file"
    return f"config.toml is not valid TOML (at {where}); it was left unchanged"


def _with_trust(doc: tomlkit.TOMLDocument, text: str, project: str) -> str | None:
    """`text` edited to trust `project`, or None when it already does."""
    projects = doc.get(PROJECTS_KEY)
    if projects is None:
        return _appended(text, project)
    if not isinstance(projects, _TABLES):
        raise _NotSaved("`projects` in config.toml is not a table; it was left unchanged")
    entry = projects.get(project)
    if entry is None and isinstance(projects, InlineTable):
        inline_entry = tomlkit.inline_table()
        inline_entry[TRUST_LEVEL_KEY] = TRUSTED
        projects[project] = inline_entry
        return doc.as_string()
    if entry is None:
        return _appended(text, project)
    if not isinstance(entry, _TABLES):
        raise _NotSaved("this project's entry in config.toml is not a table; it was left unchanged")
    if entry.get(TRUST_LEVEL_KEY) == TRUSTED:
        return None
    entry[TRUST_LEVEL_KEY] = TRUSTED
    return doc.as_string()


def _appended(text: str, project: str) -> str:
    """`text` followed by a new `[projects."<project>"]` table.

    Appending leaves every existing byte where it was. TOML lets a sub-table
    of `projects` be declared anywhere, and tomlkit renders the header, so
    the key is quoted and escaped by a TOML library, not by hand.
    """
    entry = tomlkit.table()
    entry.add(TRUST_LEVEL_KEY, TRUSTED)
    projects = tomlkit.table(is_super_table=True)
    projects.add(project, entry)
    fragment = tomlkit.document()
    fragment.add(PROJECTS_KEY, projects)
    newline = "\r\n" if "\r\n" in text else "\n"
    return text + _separator(text, newline) + fragment.as_string().replace("\n", newline)


def _separator(text: str, newline: str) -> str:
    """What puts one blank line between `text` and an appended table."""
    if not text or text.endswith(("\n\n", "\r\n\r\n")):
        return ""
    return newline if text.endswith("\n") else newline * 2


def _check_read_back(before: dict[str, Any], after: dict[str, Any], project: str) -> None:
    """Refuse an edit unless it reads back as the old data plus this one trust."""
    # Copies along the edited path only: `before` is a shared view's, and may be large.
    expected = dict(before)
    projects = dict(expected.get(PROJECTS_KEY, {}))
    entry = dict(projects.get(project, {}))
    entry[TRUST_LEVEL_KEY] = TRUSTED
    projects[project] = entry
    expected[PROJECTS_KEY] = projects
    if not _same(after, expected):
        raise _NotSaved("the edited config.toml would not read back as expected; left unchanged")


def _same(a: object, b: object) -> bool:
    """Equality of parsed TOML where NaN equals NaN and 1 is not True."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[key], b[key]) for key in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def _require_writable(path: Path, label: str) -> None:
    """Refuse a file or folder that is read-only, judged by its mode bits too.

    access(2) says yes to root for anything; a path without any write bit is
    still one its owner wants left alone.
    """
    with _failing_as(f"cannot inspect {label} {_show(path)}"):
        mode = os.stat(path).st_mode
    needed = os.W_OK | os.X_OK if stat.S_ISDIR(mode) else os.W_OK
    if not mode & _ANY_WRITE_BIT or not os.access(path, needed):
        raise _NotSaved(f"{label} {_show(path)} is read-only")


def _replace_atomically(path: Path, data: bytes, previous: os.stat_result | None) -> None:
    """Swap in new contents so that readers see the old file or the new, never half."""
    mode = stat.S_IMODE(previous.st_mode) if previous else NEW_FILE_MODE
    with _failing_as("cannot write config.toml"):
        fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            try:
                _write_all(fd, data)
                os.fchmod(fd, mode)
                _keep_owner(fd, previous)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, path)
        except BaseException:
            _remove_quietly(temp)
            raise
    _fsync_folder(path.parent)


def _write_all(fd: int, data: bytes) -> None:
    """Write every byte; os.write may write fewer than asked."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _keep_owner(fd: int, previous: os.stat_result | None) -> None:
    """Give the new file the old one's owner, when we may (e.g. a service run as root)."""
    if previous is None or (previous.st_uid, previous.st_gid) == (os.geteuid(), os.getegid()):
        return
    # An unprivileged writer owns what it writes; saving the content matters more.
    with suppress(PermissionError):
        os.fchown(fd, previous.st_uid, previous.st_gid)


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable; some file systems cannot sync a folder, which is no failure."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        logger.debug("could not fsync %s: %s", _show(folder), _reason(exc))


def _remove_quietly(path: str) -> None:
    """Delete a temporary file; a failure here must not hide the original error."""
    try:
        os.unlink(path)
    except OSError:
        logger.debug("could not remove temporary file %s", _show(path))


def _acquire(fd: int, timeout_s: float, path: Path) -> None:
    """Take an exclusive flock, polling so that a stuck holder cannot hang a thread start."""
    deadline = time.monotonic() + timeout_s
    delay = 0.001
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise _NotSaved(
                    f"timed out after {timeout_s:g} s waiting for the lock {_show(path)}"
                ) from None
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        except OSError as exc:
            raise _NotSaved(f"cannot lock {_show(path)}: {_reason(exc)}") from exc


@contextmanager
def _failing_as(what: str) -> Iterator[None]:
    """Turn an OSError into a reason: `what` went wrong, and the system's why."""
    try:
        yield
    except OSError as exc:
        raise _NotSaved(f"{what}: {_reason(exc)}") from exc


def _reason(exc: BaseException) -> str:
    """The system's words for an error, without file names (the caller names paths)."""
    if isinstance(exc, OSError):
        return exc.strerror or errno.errorcode.get(exc.errno or 0, type(exc).__name__)
    return str(exc) or type(exc).__name__


def _show(path: str | Path) -> str:
    """A path quoted for a one-line message: control characters escaped, the rest as is."""
    return json.dumps(str(path), ensure_ascii=False)
