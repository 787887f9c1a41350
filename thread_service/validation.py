"""Checking what callers send, before anything is stored: ids, working
directories, sub-agent kinds and a turn's input. Each check raises
`InvalidArgument` with a message that names the field."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Sequence
from pathlib import Path

from spindle import items
from spindle.errors import InvalidArgument, quoted
from spindle.model import Tool, check_tools

_SUB_AGENT_KIND = re.compile(r"[!-~]{1,64}")
_INPUT_ROLES = (items.Role.USER, items.Role.DEVELOPER, items.Role.SYSTEM)


def parse_thread_id(value: str, field: str = "thread_id") -> str:
    """Thread ids are UUIDs; anything else is a caller's mistake, not a miss."""
    if not value:
        raise InvalidArgument(f"{field} is required")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise InvalidArgument(f"{field} {quoted(value)} is not a thread id (a UUID)") from None


def check_sub_agent_kind(kind: str) -> None:
    if kind and not _SUB_AGENT_KIND.fullmatch(kind):
        raise InvalidArgument(
            "sub_agent_kind must be 1 to 64 printable ASCII characters without spaces "
            "(it travels as an HTTP header)"
        )


def check_cwd(cwd: str) -> Path:
    """`cwd` resolved, or InvalidArgument saying what is wrong with it. Blocking."""
    if not cwd:
        raise InvalidArgument("cwd is empty; give the absolute path of an existing directory")
    if "\0" in cwd:
        raise InvalidArgument("cwd must not contain a NUL character")
    if not os.path.isabs(cwd):
        raise InvalidArgument(f"cwd must be an absolute path, got {quoted(cwd)}")
    try:
        resolved = Path(cwd).resolve(strict=True)
        is_dir = resolved.is_dir()
    except FileNotFoundError:
        raise InvalidArgument(f"cwd {quoted(cwd)} does not exist") from None
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "a symlink loop"
        raise InvalidArgument(f"cwd {quoted(cwd)} cannot be used: {reason}") from None
    if not is_dir:
        raise InvalidArgument(f"cwd {quoted(cwd)} is not a directory")
    return resolved


def check_turn_input(
    input_items: Sequence[items.Item], history: Sequence[items.Item], tools: Sequence[Tool]
) -> None:
    """A turn's input: messages from the user side, and outputs of open calls."""
    if not input_items:
        raise InvalidArgument("input must hold at least one item")
    check_tools(tools)
    open_calls = {i.call_id for i in history if isinstance(i, items.FunctionCall)}
    open_calls -= {i.call_id for i in history if isinstance(i, items.FunctionCallOutput)}
    for index, item in enumerate(input_items):
        where = f"input[{index}]"
        if isinstance(item, items.Message):
            if item.role not in _INPUT_ROLES:
                raise InvalidArgument(
                    f"{where}: a turn's messages come from user, developer "
                    "or system, not the assistant"
                )
        elif isinstance(item, items.FunctionCallOutput):
            if item.call_id not in open_calls:
                raise InvalidArgument(
                    f"{where}: call_id {quoted(item.call_id)} names no open function call "
                    "of this thread"
                )
            open_calls.discard(item.call_id)
        else:
            raise InvalidArgument(
                f"{where}: a turn's input holds messages and function call outputs only"
            )
