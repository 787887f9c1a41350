"""Checking what callers send, before anything is stored: ids, working
directories, names, sizes and a turn's input. Each check raises
`InvalidArgument` (or PermissionDenied, FailedPrecondition) with a message
that names the field and never echoes a long value whole."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Literal

from spindle import items
from spindle.errors import FailedPrecondition, InvalidArgument, PermissionDenied, quoted
from spindle.model import Tool, check_tools

_SUB_AGENT_KIND = re.compile(r"[!-~]{1,64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_LABEL_CHARS = 256
OUTSIDE_ROOTS = "cwd is outside the folders this caller may work in"
_INPUT_ROLES = (items.Role.USER, items.Role.DEVELOPER, items.Role.SYSTEM)


def parse_thread_id(value: str, field: str = "thread_id", what: str = "a thread id") -> str:
    """Thread and turn ids are UUIDs; anything else is a caller's mistake, not a miss."""
    if not value:
        raise InvalidArgument(f"{field} is required", field=field)
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise InvalidArgument(
            f"{field} {quoted(value)} is not {what} (a UUID)", field=field
        ) from None


MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512
_METADATA_KEY = re.compile(rf"[A-Za-z0-9_.\-/]{{1,{MAX_METADATA_KEY}}}")
ORDERS = ("create_time", "update_time")


def check_metadata(metadata: Mapping[str, str], field: str = "metadata") -> None:
    """Labels as OpenAI keeps them: at most 16 pairs, keys of 1 to 64 characters
    (letters, digits, '_', '-', '.', '/'), values of at most 512."""
    if len(metadata) > MAX_METADATA_PAIRS:
        raise InvalidArgument(f"{field} holds at most {MAX_METADATA_PAIRS} pairs", field=field)
    for key, value in metadata.items():
        if not _METADATA_KEY.fullmatch(key):
            raise InvalidArgument(
                f"{field}: key {quoted(key, 80)} must be 1 to {MAX_METADATA_KEY} letters, "
                "digits, '_', '-', '.' or '/'",
                field=field,
            )
        if len(value) > MAX_METADATA_VALUE or _CONTROL.search(value):
            raise InvalidArgument(
                f"{field}: the value of {quoted(key)} must be one line of at most "
                f"{MAX_METADATA_VALUE} characters",
                field=field,
            )


def parse_order_by(order_by: str) -> tuple[Literal["create_time", "update_time"], bool]:
    """(field, descending) of an AIP-132 order_by: "create_time" (the default),
    "update_time", either followed by " desc"."""
    words = order_by.split()
    if not words:
        return "create_time", False
    if words[0] in ORDERS and (
        len(words) == 1 or (len(words) == 2 and words[1] in ("asc", "desc"))
    ):
        order: Literal["create_time", "update_time"] = (
            "create_time" if words[0] == "create_time" else "update_time"
        )
        return order, len(words) == 2 and words[1] == "desc"
    raise InvalidArgument(
        'order_by must be "create_time" or "update_time", optionally followed by " desc"',
        field="order_by",
    )


def check_sub_agent_kind(kind: str) -> None:
    if kind and not _SUB_AGENT_KIND.fullmatch(kind):
        raise InvalidArgument(
            "sub_agent_kind must be 1 to 64 printable ASCII characters without spaces "
            "(it travels as an HTTP header)"
        )


def check_label(value: str, field: str) -> None:
    """A short human label (nickname, role): one line of at most 256 characters."""
    if len(value) > MAX_LABEL_CHARS or _CONTROL.search(value):
        raise InvalidArgument(
            f"{field} must be one line of at most {MAX_LABEL_CHARS} characters", field=field
        )


def check_text_size(text: str, limit: int, field: str) -> None:
    """Free text (instructions): at most `limit` bytes, and no NUL, which no
    store keeps."""
    if "\0" in text:
        raise InvalidArgument(f"{field} must not contain a NUL character", field=field)
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > limit:
        raise InvalidArgument(f"{field} is {size} bytes; the limit is {limit}", field=field)


def _under(path: Path, roots: tuple[Path, ...]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def check_cwd(cwd: str, roots: tuple[Path, ...] | None = None) -> Path:
    """`cwd` resolved, or an error saying what is wrong with it. Blocking.

    With `roots` (None: anywhere), a cwd outside them is PermissionDenied
    before the file system is asked anything, and again if its real path
    leaves them, so the answer never tells whether a path exists elsewhere.
    """
    if not cwd:
        raise InvalidArgument("cwd is empty; give the absolute path of an existing directory")
    if "\0" in cwd:
        raise InvalidArgument("cwd must not contain a NUL character")
    if not os.path.isabs(cwd):
        raise InvalidArgument(f"cwd must be an absolute path, got {quoted(cwd)}")
    if roots is not None and not _under(Path(os.path.normpath(cwd)), roots):
        raise PermissionDenied(OUTSIDE_ROOTS, field="cwd")
    try:
        resolved = Path(cwd).resolve(strict=True)
        is_dir = resolved.is_dir()
    except FileNotFoundError:
        raise InvalidArgument(f"cwd {quoted(cwd)} does not exist") from None
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "a symlink loop"
        raise InvalidArgument(f"cwd {quoted(cwd)} cannot be used: {reason}") from None
    if roots is not None and not _under(resolved, roots):
        raise PermissionDenied(OUTSIDE_ROOTS, field="cwd")
    if not is_dir:
        raise InvalidArgument(f"cwd {quoted(cwd)} is not a directory")
    try:
        str(resolved).encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument(f"cwd {quoted(cwd)} leads to a path that is not UTF-8") from None
    return resolved


def check_turn_size(
    input_items: Sequence[items.Item],
    tools: Sequence[Tool],
    history_bytes: int,
    *,
    max_item: int,
    max_turn: int,
    max_history: int,
) -> int:
    """The size of a turn's input, checked against the limits; its bytes."""
    total = 0
    for index, item in enumerate(input_items):
        size = items.size_of(item)
        if size > max_item:
            raise InvalidArgument(
                f"input[{index}] is {size} bytes; the limit is {max_item} (max_item_bytes)",
                field=f"input[{index}]",
            )
        total += size
    total += sum(len(t.name) + len(t.description) + len(t.parameters_json) for t in tools)
    if total > max_turn:
        raise InvalidArgument(
            f"the turn's input is {total} bytes; the limit is {max_turn} (max_turn_bytes)",
            field="input",
        )
    if history_bytes + total > max_history:
        raise FailedPrecondition(
            f"this turn would grow the thread's history to {history_bytes + total} bytes, "
            f"past the {max_history} one model request may carry (max_history_bytes); "
            "fork the thread with fewer turns to go on",
            reason="HISTORY_TOO_LARGE",
            metadata={"limit": str(max_history), "history_bytes": str(history_bytes)},
        )
    return total


def check_turn_input(
    input_items: Sequence[items.Item], open_calls: Collection[str], tools: Sequence[Tool]
) -> None:
    """A turn's input: messages from the user side, and outputs of open calls
    (the history's function calls that have no output yet)."""
    if not input_items:
        raise InvalidArgument("input must hold at least one item")
    check_tools(tools)
    open_calls = set(open_calls)
    for index, item in enumerate(input_items):
        where = f"input[{index}]"
        if isinstance(item, items.Message):
            if item.role not in _INPUT_ROLES:
                raise InvalidArgument(
                    f"{where}: a turn's messages come from user, developer "
                    "or system, not the assistant",
                    field=f"{where}.message.role",
                )
            if item.phase is not None:
                raise InvalidArgument(
                    f"{where}: only assistant messages have a phase", field=f"{where}.message.phase"
                )
        elif isinstance(item, items.FunctionCallOutput):
            if item.call_id not in open_calls:
                raise InvalidArgument(
                    f"{where}: call_id {quoted(item.call_id)} names no open function call "
                    "of this thread",
                    reason="UNKNOWN_FUNCTION_CALL",
                    field=f"{where}.function_call_output.call_id",
                )
            open_calls.discard(item.call_id)
        else:
            raise InvalidArgument(
                f"{where}: a turn's input holds messages and function call outputs only"
            )
