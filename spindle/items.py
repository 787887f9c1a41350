"""Conversation items: the entries of a thread's history, and the fork rule.

Items are plain frozen dataclasses so that the domain, the store and the
providers share them without depending on protobuf.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


class Role(enum.StrEnum):
    SYSTEM = "system"
    DEVELOPER = "developer"
    USER = "user"
    ASSISTANT = "assistant"


class Phase(enum.StrEnum):
    """What an assistant message is; a message without a phase is a final answer."""

    COMMENTARY = "commentary"
    FINAL_ANSWER = "final_answer"


@dataclass(frozen=True, slots=True)
class Message:
    role: Role
    text: str
    phase: Phase | None = None


@dataclass(frozen=True, slots=True)
class Reasoning:
    summary: str = ""
    encrypted_content: str = ""


@dataclass(frozen=True, slots=True)
class FunctionCall:
    call_id: str
    name: str
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class FunctionCallOutput:
    call_id: str
    output: str


@dataclass(frozen=True, slots=True)
class AgentMessage:
    """A message between agent threads (a sub-agent's report, a parent's note)."""

    sender_thread_id: str
    recipient_thread_id: str
    text: str


Item = Message | Reasoning | FunctionCall | FunctionCallOutput | AgentMessage

_KINDS: dict[type[Any], str] = {
    Message: "message",
    Reasoning: "reasoning",
    FunctionCall: "function_call",
    FunctionCallOutput: "function_call_output",
    AgentMessage: "agent_message",
}
_TYPES = {kind: cls for cls, kind in _KINDS.items()}


def kind_of(item: Item) -> str:
    return _KINDS[type(item)]


def inherited_by_fork(item: Item) -> bool:
    """Whether a forked child keeps this parent item.

    A fork keeps what makes up the conversation itself: system, developer and
    user messages and the assistant's final answers. It drops what belonged to
    the parent's own work: reasoning, assistant commentary, function calls and
    their outputs (the child could not answer a dangling call), and messages
    between agents (they were addressed to the parent).
    """
    if not isinstance(item, Message):
        return False
    if item.role is Role.ASSISTANT:
        return item.phase in (None, Phase.FINAL_ANSWER)
    return True


def size_of(item: Item) -> int:
    """About how many bytes an item takes on the wire: its text fields in
    UTF-8 and some framing. Limits and page budgets count with it."""
    total = 16
    for name in item.__slots__:
        value = getattr(item, name)
        if isinstance(value, str):
            total += len(value.encode("utf-8", "surrogatepass")) + 4
    return total


def to_json(item: Item) -> dict[str, Any]:
    """A JSON-ready dict with a `type` tag; the storage format of an item."""
    data: dict[str, Any] = {"type": kind_of(item)}
    for name in item.__slots__:
        value = getattr(item, name)
        if value is not None:
            data[name] = value.value if isinstance(value, enum.Enum) else value
    return data


_ROLES = {role.value: role for role in Role}
_PHASES = {phase.value: phase for phase in Phase}


def from_json(data: dict[str, Any]) -> Item:
    """The item `to_json` wrote; a string field it lacks reads as empty.
    (A long history decodes every item: the enums are looked up in dicts,
    which costs a third of calling them.)"""
    cls = _TYPES[data["type"]]
    if cls is Message:
        role, phase = data["role"], data.get("phase")
        return Message(
            role=_ROLES.get(role) or Role(role),
            text=data.get("text", ""),
            phase=(_PHASES.get(phase) or Phase(phase)) if phase else None,
        )
    values = {name: data.get(name, "") for name in cls.__slots__}
    item: Item = cls(**values)
    return item
