"""The embedded provider's tokenizer and prompt rendering, both deterministic.

Tokenizer rule: a token is an optional single leading space followed by
either up to four word characters or one other non-space character; any
other run of whitespace is one token. English text comes out at roughly
four characters a token, like the byte-pair encoders of hosted models.

Rendering puts the instructions first and then every item in order, each
under a fixed header, so two histories that share a beginning render to
prompts that share a beginning: what prefix caching needs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from spindle import items

_TOKEN = re.compile(r" ?\w{1,4}| ?[^\w\s]|\s+")


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text)


def count_tokens(text: str) -> int:
    return len(tokenize(text))


def render_item(item: items.Item) -> str:
    if isinstance(item, items.Message):
        phase = f" ({item.phase.value})" if item.phase else ""
        return f"<|{item.role.value}{phase}|>\n{item.text}\n"
    if isinstance(item, items.Reasoning):
        return f"<|reasoning|>\n{item.summary}\n"
    if isinstance(item, items.FunctionCall):
        return f"<|function_call {item.name} {item.call_id}|>\n{item.arguments}\n"
    if isinstance(item, items.FunctionCallOutput):
        return f"<|function_call_output {item.call_id}|>\n{item.output}\n"
    return f"<|agent_message from {item.sender_thread_id}|>\n{item.text}\n"


def render_instructions(instructions: str) -> str:
    return f"<|instructions|>\n{instructions}\n"


def render_prompt(instructions: str, history: Iterable[items.Item]) -> str:
    """The whole prompt. Every part ends with a newline and the next begins
    with `<|`, so no token spans two parts: the prompt's tokens are its parts'
    tokens one after another, and a prompt can be tokenized part by part."""
    parts = [render_instructions(instructions)]
    parts.extend(render_item(item) for item in history)
    return "".join(parts)
