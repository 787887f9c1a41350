"""Find the git repository that holds a directory, from the files alone.

Trust is given to a whole repository, not to the folder a thread happens to
start in, so the root must be found the way git finds it: walk up until a
`.git` entry appears. No `git` binary is run (it may be missing, slow, or
configured by the user in surprising ways); only `.git`, `gitdir:` files and
`commondir` files are read.

The rules, nearest `.git` entry first:
- `.git` is a directory: the folder holding it is the root.
- `.git` is a file `gitdir: <path>` whose git dir has a `commondir` file: a
  linked worktree; the root is the main repository's, the folder holding the
  common `.git` directory. A bare main repository has no such folder, so the
  worktree itself is the root then.
- any other `.git` file (a submodule, `--separate-git-dir`, a dangling or
  unreadable pointer): the folder holding the `.git` file is the root, since
  that is where git itself stops.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

GIT_ENTRY = ".git"
_GITDIR_PREFIX = "gitdir:"
# A gitfile or commondir file is one short line; never read a stray big file.
_MAX_POINTER_BYTES = 64 * 1024


def repository_root(directory: Path) -> Path | None:
    """The trust root of the repository holding `directory`, or None outside any.

    `directory` must be absolute and already resolved; the answer is resolved too.
    """
    for folder in (directory, *directory.parents):
        kind = _entry_kind(folder / GIT_ENTRY)
        if kind == "dir":
            return folder
        if kind == "file":
            return _root_from_gitfile(folder)
    return None


def _entry_kind(path: Path) -> str | None:
    """'dir', 'file' or None; an entry that cannot be stat'ed is not a repository."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISREG(mode):
        return "file"
    return None


def _root_from_gitfile(folder: Path) -> Path:
    """The root for a `.git` file in `folder`: the main repository's for a worktree."""
    git_dir = _read_gitdir(folder / GIT_ENTRY)
    if git_dir is None:
        return folder
    common_dir = _read_commondir(folder / git_dir)
    if common_dir is None or common_dir.name != GIT_ENTRY:
        return folder
    return common_dir.parent


def _read_gitdir(gitfile: Path) -> str | None:
    """The path after `gitdir:` in a gitfile, or None when it has none."""
    first_line = _read_pointer(gitfile)
    if first_line is None or not first_line.startswith(_GITDIR_PREFIX):
        return None
    target = first_line[len(_GITDIR_PREFIX) :].strip()
    return target or None


def _read_commondir(git_dir: Path) -> Path | None:
    """The resolved common git dir named by `git_dir/commondir`, or None without one.

    Only linked worktrees have a `commondir` file; its path is relative to the
    worktree's own git dir unless absolute.
    """
    common = _read_pointer(git_dir / "commondir")
    if not common:
        return None
    try:
        return (git_dir / common).resolve(strict=True)
    except (OSError, RuntimeError):
        return None


def _read_pointer(path: Path) -> str | None:
    """The first line of a small pointer file, trailing whitespace removed."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(_MAX_POINTER_BYTES)
    except (OSError, ValueError):
        return None
    first_line = raw.split(b"\n", 1)[0].rstrip()
    return os.fsdecode(first_line) if first_line else None
