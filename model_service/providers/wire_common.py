"""What both OpenAI wires share: JSON helpers, tool schemas, the text of a
message between agents, and the meaning of provider error codes, so that
`responses_wire` and `chat_wire` say the same thing the same way."""

from __future__ import annotations

import json
from typing import Any

from spindle.errors import ErrorCode, ModelError, SpindleError
from spindle.items import AgentMessage
from spindle.model import Tool

JsonObject = dict[str, Any]

# The wires a provider can speak (`wire_api`), each a module of its own.
WIRE_APIS = ("responses", "chat")

# Body fields Spindle sets itself; a provider's `extra_body` cannot replace them.
RESERVED_BODY_FIELDS = frozenset(
    {
        "model",
        "input",
        "messages",
        "instructions",
        "tools",
        "stream",
        "stream_options",
        "prompt_cache_key",
    }
)

EMPTY_PARAMETERS: JsonObject = {"type": "object", "properties": {}}

# Provider error codes (`error.code`) whose meaning is clear; other codes that
# name bad input map to INVALID_ARGUMENT, the rest to UNAVAILABLE.
_PROVIDER_CODES = {
    "rate_limit_exceeded": ErrorCode.RESOURCE_EXHAUSTED,
    "insufficient_quota": ErrorCode.RESOURCE_EXHAUSTED,
    "server_error": ErrorCode.UNAVAILABLE,
    "vector_store_timeout": ErrorCode.UNAVAILABLE,
    "context_length_exceeded": ErrorCode.INVALID_ARGUMENT,
    "invalid_api_key": ErrorCode.UNAUTHENTICATED,
    "model_not_found": ErrorCode.NOT_FOUND,
}
_BAD_INPUT_WORDS = ("invalid", "image", "unsupported", "too_large", "too_small")
_TOKEN_LIMIT_REASONS = ("max_output_tokens", "length")


def tool_parameters(tool: Tool) -> JsonObject:
    """The JSON schema of a tool's parameters; an empty one means "no parameters"."""
    try:
        schema = tool.parameters()
    except SpindleError as exc:
        raise ModelError(exc.message, code=exc.code) from None
    return dict(EMPTY_PARAMETERS) if schema is None else schema


def agent_message_text(item: AgentMessage) -> str:
    """How a message from another agent thread reads to the model (both wires)."""
    return f"[message from agent thread {item.sender_thread_id}]\n{item.text}"


def error_code_for(provider_code: object) -> ErrorCode:
    """The status for a provider's error code (`rate_limit_exceeded`, ...)."""
    name = str(provider_code or "").lower()
    if name in _PROVIDER_CODES:
        return _PROVIDER_CODES[name]
    if any(word in name for word in _BAD_INPUT_WORDS):
        return ErrorCode.INVALID_ARGUMENT
    return ErrorCode.UNAVAILABLE


def incomplete_error(reason: str) -> ModelError:
    """The error for an answer the provider stopped early (see the module docstring)."""
    reason = reason or "unknown reason"
    if reason in _TOKEN_LIMIT_REASONS:
        return ModelError(
            f"response incomplete: output token limit reached ({reason})",
            code=ErrorCode.RESOURCE_EXHAUSTED,
        )
    return ModelError(f"response incomplete: {reason}", code=ErrorCode.FAILED_PRECONDITION)


def parse_event_data(data: str) -> JsonObject:
    """The JSON object an event carries; anything else is a broken stream."""
    try:
        value = json.loads(data)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        # Not cut here: the provider cuts messages only once it has redacted them.
        raise ModelError(f"malformed stream event: {data!r}", code=ErrorCode.UNAVAILABLE)
    return value


def as_object(value: object) -> JsonObject:
    """`value` if it is a JSON object, else an empty one (missing or null fields)."""
    return value if isinstance(value, dict) else {}


def as_int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def as_str(value: object) -> str:
    return value if isinstance(value, str) else ""
