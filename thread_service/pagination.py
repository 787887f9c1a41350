"""Opaque page tokens and page sizes, the same rules for every List call.

A token is base64url JSON that names the listing it belongs to, so a token
from one listing given to another is refused instead of silently misread.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from spindle.errors import InvalidArgument

T = TypeVar("T")
Position = dict[str, Any]

DEFAULT_PAGE_SIZE = 100
# Bytes a page may hold, below the 4 MiB that gRPC clients receive by default.
PAGE_BYTES = 3 << 20
MAX_PAGE_SIZE = 1000
MAX_TOKEN_LENGTH = 1024
MAX_POSITION = 2**62


def page_size_of(requested: int) -> int:
    """0 means the default; larger than the maximum is lowered to it."""
    if requested < 0:
        raise InvalidArgument("page_size must not be negative")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


async def page(
    listing: str,
    page_size: int,
    page_token: str,
    fetch: Callable[[Position | None, int], Awaitable[list[T]]],
    next_position: Callable[[Position | None, Sequence[T]], Position],
    *,
    size_of: Callable[[T], int] = lambda _: 0,
    budget: int = PAGE_BYTES,
) -> tuple[list[T], str]:
    """One page of a listing: `fetch(position, limit)` reads from a position
    (None: the start), and `next_position(position, page)` says where the
    page after `page` begins. One more row than the page is read, so the last
    page gets no token. A page also ends before its entries pass `budget`
    bytes (by `size_of`), so that it fits the 4 MiB a gRPC client takes by
    default; it holds at least one entry."""
    size = page_size_of(page_size)
    position = decode(listing, page_token)
    found = await fetch(position, size + 1)
    kept, total = 0, 0
    for entry in found[:size]:
        total += size_of(entry)
        if kept and total > budget:
            break
        kept += 1
    if kept == len(found):
        return found, ""
    found = found[:kept]
    return found, encode(listing, next_position(position, found))


def next_offset(position: Position | None, found: Sequence[object]) -> Position:
    """Where the page after `found` begins, in a listing paged by offset."""
    return {"o": (position_int(position, "o") if position else 0) + len(found)}


def encode(listing: str, position: Position) -> str:
    raw = json.dumps({"l": listing, **position}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(listing: str, token: str) -> Position | None:
    """The position a token names, or None for an empty token (the first page)."""
    if not token:
        return None
    if len(token) > MAX_TOKEN_LENGTH:
        raise InvalidArgument("page_token is malformed")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
    except (binascii.Error, ValueError, RecursionError):
        raise InvalidArgument("page_token is malformed") from None
    if not isinstance(data, dict) or data.pop("l", None) != listing:
        raise InvalidArgument("page_token does not belong to this listing")
    return data


def position_int(position: Position, key: str) -> int:
    """A whole number a token holds, within what any store can take."""
    value = position.get(key)
    if type(value) is not int or not 0 <= value < MAX_POSITION:
        raise InvalidArgument("page_token is malformed")
    return value


def position_float(position: Position, key: str) -> float:
    value = position.get(key)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise InvalidArgument("page_token is malformed")
    if not 0 <= value < MAX_POSITION:
        raise InvalidArgument("page_token is malformed")
    return float(value)


def position_str(position: Position, key: str) -> str:
    value = position.get(key)
    if not isinstance(value, str):
        raise InvalidArgument("page_token is malformed")
    return value
