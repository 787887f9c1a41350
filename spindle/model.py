"""A model call as plain values: the request, the tools, the streamed events.

The thread-service builds a `ModelRequest`; the model-service hands it to a
provider, whose `stream()` yields batches of `ModelEvent`s. Neither side sees protobuf
here; `spindle.convert` translates at the gRPC edge.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import AsyncGenerator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from spindle import items
from spindle.errors import InvalidArgument, quoted
from spindle.items import Item

_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}")
MAX_SCHEMA_BYTES = 64 << 10
MAX_SCHEMA_DEPTH = 32
MAX_TOOLS = 128
# The ErrorInfo reason of a request whose `base` the model-service does not hold.
WINDOW_NOT_HELD = "WINDOW_NOT_HELD"


@dataclass(frozen=True, slots=True)
class Tool:
    """A function the model may call. `parameters_json` is a JSON Schema object
    as text; empty means the function takes no arguments."""

    name: str
    description: str = ""
    parameters_json: str = ""

    def parameters(self) -> dict[str, Any] | None:
        """The parsed schema, None when none is given; InvalidArgument when it
        is not a JSON object."""
        if not self.parameters_json.strip():
            return None
        where = f"tools: {quoted(self.name, 64)}"
        if len(self.parameters_json) > MAX_SCHEMA_BYTES:
            raise InvalidArgument(f"{where}: parameters_json is over {MAX_SCHEMA_BYTES} bytes")
        try:
            schema = json.loads(self.parameters_json)
        except (ValueError, RecursionError):
            raise InvalidArgument(f"{where}: parameters_json is not JSON") from None
        if not isinstance(schema, dict):
            raise InvalidArgument(f"{where}: parameters_json must be a JSON object")
        if _depth(schema) > MAX_SCHEMA_DEPTH:
            raise InvalidArgument(f"{where}: parameters_json nests deeper than {MAX_SCHEMA_DEPTH}")
        return schema


def _depth(value: Any) -> int:
    """How deeply JSON arrays and objects nest in `value` (without recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, depth)
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children)
    return deepest


def check_model(model: str) -> None:
    """A model name: what every provider's names look like, nothing to inject."""
    if not _MODEL.fullmatch(model):
        raise InvalidArgument(
            "model must be 1 to 128 letters, digits or . _ : / @ + -, starting with a "
            "letter or digit",
            field="model",
        )


def check_tools(tools: Sequence[Tool]) -> None:
    """What every provider accepts, checked where a request comes in, so that a
    bad declaration is the caller's error and never reaches a provider."""
    if len(tools) > MAX_TOOLS:
        raise InvalidArgument(f"tools: at most {MAX_TOOLS} tools")
    names = [tool.name for tool in tools]
    if len(set(names)) != len(names):
        raise InvalidArgument("tools: names must be unique")
    for tool in tools:
        if not _TOOL_NAME.fullmatch(tool.name):
            raise InvalidArgument(
                f"tools: name {quoted(tool.name, 64)} must be 1 to 64 letters, digits, '_' or '-'"
            )
        tool.parameters()


@dataclass(frozen=True, slots=True)
class ModelRequest:
    """One model call. `prompt_cache_key` is required and sent on unchanged."""

    model: str
    instructions: str
    input: tuple[Item, ...]
    prompt_cache_key: str
    thread_id: str
    window_id: str
    sub_agent_kind: str = ""
    tools: tuple[Tool, ...] = ()
    # The digest of `input` (see `history_digest`); b"" when nobody keeps it.
    history_digest: bytes = b""
    # The history of this window's previous request, which `input` extends.
    base: WindowBase | None = None


@dataclass(frozen=True, slots=True)
class WindowBase:
    """The history an earlier request of a window carried: its first
    `item_count` items, with digest `history_digest`. It lets the thread-service
    send only what is new, and a provider keep what it derived from the rest."""

    item_count: int
    history_digest: bytes


def history_digest(new_items: Iterable[Item], digest: bytes = b"") -> bytes:
    """The digest of a history, chained item by item: the digest of a history
    extended by `new_items`, given the digest of what came before (b"": none).
    Over each item's JSON form, so it does not depend on protobuf's encoding."""
    for item in new_items:
        body = json.dumps(items.to_json(item), ensure_ascii=False, sort_keys=True)
        digest = hashlib.blake2b(digest + body.encode(), digest_size=16).digest()
    return digest


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ItemDone:
    item: Item


@dataclass(frozen=True, slots=True)
class Completed:
    usage: Usage = field(default_factory=Usage)
    response_id: str = ""


ModelEvent = TextDelta | ItemDone | Completed


def joined(events: Iterable[ModelEvent]) -> list[ModelEvent]:
    """The events with each run of consecutive text deltas joined into one: the
    same text, fewer messages."""
    result: list[ModelEvent] = []
    for event in events:
        if isinstance(event, TextDelta) and result and isinstance(result[-1], TextDelta):
            result[-1] = TextDelta(result[-1].text + event.text)
        else:
            result.append(event)
    return result


class ModelStreamer(Protocol):
    """Anything that turns a request into a stream of events: a provider on the
    model-service side, the gRPC client of the model-service on the thread side.

    Events come in batches, each a non-empty list of those ready at the same
    moment (one message on the wire, instead of one per event); none is held
    back to wait for more. Errors are raised as `spindle.errors.SpindleError`
    (usually `ModelError`). The stream ends with exactly one `Completed`, last
    in its batch. `aclose` releases connections.
    """

    def stream(self, request: ModelRequest) -> AsyncGenerator[list[ModelEvent], None]: ...

    async def aclose(self) -> None: ...
