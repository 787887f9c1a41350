"""A model call as plain values: the request, the tools, the streamed events.

The thread-service builds a `ModelRequest`; the model-service hands it to a
provider, whose `stream()` yields `ModelEvent`s. Neither side sees protobuf
here; `spindle.convert` translates at the gRPC edge.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from spindle.items import Item


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    description: str = ""
    parameters_json: str = ""


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


class ModelStreamer(Protocol):
    """Anything that turns a request into a stream of events: a provider on the
    model-service side, the gRPC client of the model-service on the thread side.

    Errors are raised as `spindle.errors.SpindleError` (usually `ModelError`).
    The stream ends with exactly one `Completed`.
    """

    def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]: ...
