"""The embedded offline provider: deterministic replies, no network.

It is the default so that Spindle runs and is tested on one machine. Its
prompt cache follows OpenAI's rules (see `model_service.prompt_cache`), so
cache behaviour measured against it is the behaviour to expect upstream.

It serves the model names starting `spindle-` (the thread-service's default
model is `spindle-echo`) and an empty name; any other name is served here only
when `default_provider` says so, so that a misspelt model name is NOT_FOUND
rather than quietly answered by an echo.

Replies, from the last input item:
- a user message `/call NAME ARGS` where NAME is a declared tool: a function
  call of NAME with ARGS (JSON text, `{}` when empty);
- a user message `/slow SECONDS TEXT`: the echo of TEXT, streamed evenly over
  SECONDS (for exercising interruption and deadlines);
- a user message `/fail CODE MESSAGE`: the call fails with that gRPC code name
  (for example `/fail UNAVAILABLE upstream down`);
- any other user message: `echo: ` and its text, cut to 200 characters;
- a function call output: `received output of CALL_ID: ` and the output.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from model_service.prompt_cache import Prefixes, PromptCache
from model_service.providers.base import Served
from model_service.tokenizer import render_instructions, render_item, tokenize
from spindle import items
from spindle.errors import ErrorCode, InvalidArgument, ModelError
from spindle.lru import WeightedLRU
from spindle.model import (
    Completed,
    ItemDone,
    ModelEvent,
    ModelRequest,
    TextDelta,
    Usage,
    WindowBase,
)
from spindle.slices import slices

MAX_SLOW_SECONDS = 600.0
# Items tokenized at a time: about 1 ms.
TOKENIZE_SLICE = 200
MODEL_PREFIX = "spindle-"


class EmbeddedProvider:
    def __init__(self, cache: PromptCache | None = None, max_blocks: int = 1 << 20) -> None:
        self.cache = cache if cache is not None else PromptCache()
        # Each window's last prompt, by window id, so that the next request of
        # the window tokenizes only its new items; at most `max_blocks` prefix
        # digests in all (about 100 bytes each), least recently used dropped.
        self.max_blocks = max_blocks
        self._prompts: WeightedLRU[str, _Prompt] = WeightedLRU(max_blocks)

    @staticmethod
    def serves(model: str) -> bool:
        """Whether `model` is one of this provider's own names (see the module docstring)."""
        return not model or model.startswith(MODEL_PREFIX)

    async def stream(
        self, request: ModelRequest, served: Served | None = None
    ) -> AsyncGenerator[list[ModelEvent], None]:
        last = request.input[-1] if request.input else None
        call = _function_call(request, last)
        # The reply is settled (a /fail raises here) before the prompt is cached.
        text, seconds = ("", 0.0) if call else _reply(last)
        prefixes = await self._prefixes(request)
        reply_tokens = tokenize(call.name + call.arguments if call else text)
        cached = self.cache.use(request.prompt_cache_key, prefixes)
        completed = _completed(request, prefixes.count, cached, len(reply_tokens))
        if call is not None:
            yield [ItemDone(call), completed]
            return
        done = ItemDone(items.Message(items.Role.ASSISTANT, text, items.Phase.FINAL_ANSWER))
        if not seconds:
            yield [TextDelta(text), done, completed] if text else [done, completed]
            return
        pause = seconds / max(len(reply_tokens), 1)
        for token in reply_tokens:
            await asyncio.sleep(pause)
            yield [TextDelta(token)]
        yield [done, completed]

    async def _prefixes(self, request: ModelRequest) -> Prefixes:
        """The prompt's prefixes: those of the window's last prompt extended by
        the new items when this request continues it, else from the start."""
        kept = self._prompts.pop(request.window_id) if request.window_id else None
        base, new = request.base, request.input
        if kept is not None and base is not None and kept.continued_by(request, base):
            prefixes, new = kept.prefixes, request.input[base.item_count :]
        else:
            prefixes = Prefixes()
            prefixes.extend(tokenize(render_instructions(request.instructions)))
        # Tokenizing a whole history of 50,000 items (a fork's first request)
        # takes about 250 ms: a slice at a time (see `spindle.slices`).
        async for part in slices(new, TOKENIZE_SLICE):
            for item in part:
                prefixes.extend(tokenize(render_item(item)))
        if request.window_id and request.history_digest:
            prompt = _Prompt(
                request.instructions, len(request.input), request.history_digest, prefixes
            )
            self._prompts.put(request.window_id, prompt, len(prefixes.digests))
        return prefixes

    async def aclose(self) -> None:
        return None


@dataclass(slots=True)
class _Prompt:
    """A window's last prompt: what it was made of, and its prefixes."""

    instructions: str
    item_count: int
    history_digest: bytes
    prefixes: Prefixes

    def continued_by(self, request: ModelRequest, base: WindowBase) -> bool:
        return (
            base.item_count == self.item_count
            and base.history_digest == self.history_digest
            and request.instructions == self.instructions
        )


def _request_digest(request: ModelRequest) -> str:
    """Stable per thread and history length, so replies are deterministic."""
    key = f"{request.thread_id}\x00{len(request.input)}".encode()
    return hashlib.blake2b(key, digest_size=8).hexdigest()


def _completed(request: ModelRequest, prompt: int, cached: int, output: int) -> Completed:
    return Completed(
        Usage(prompt, cached, output), response_id=f"resp_embedded_{_request_digest(request)}"
    )


def _function_call(request: ModelRequest, last: items.Item | None) -> items.FunctionCall | None:
    if not (isinstance(last, items.Message) and last.text.startswith("/call ")):
        return None
    name, _, arguments = last.text[len("/call ") :].strip().partition(" ")
    if name not in {tool.name for tool in request.tools}:
        return None
    return items.FunctionCall(f"call_{_request_digest(request)}", name, arguments.strip() or "{}")


def _reply(last: items.Item | None) -> tuple[str, float]:
    """The reply text and how many seconds to spread its streaming over."""
    if isinstance(last, items.FunctionCallOutput):
        return f"received output of {last.call_id}: {last.output}", 0.0
    if not isinstance(last, items.Message):
        return "echo: ", 0.0
    text = last.text
    if text.startswith("/fail "):
        code_name, _, message = text[len("/fail ") :].strip().partition(" ")
        try:
            code = ErrorCode[code_name]
        except KeyError:
            raise InvalidArgument(f"/fail: unknown code {code_name!r}") from None
        raise ModelError(message or "failure requested by /fail", code=code)
    if text.startswith("/slow "):
        seconds_text, _, rest = text[len("/slow ") :].strip().partition(" ")
        try:
            seconds = float(seconds_text)
        except ValueError:
            raise InvalidArgument(f"/slow: {seconds_text!r} is not a number of seconds") from None
        if not 0 <= seconds <= MAX_SLOW_SECONDS:
            raise InvalidArgument(f"/slow: seconds must be within 0..{MAX_SLOW_SECONDS:g}")
        return f"echo: {_cut(rest)}", seconds
    return f"echo: {_cut(text)}", 0.0


def _cut(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
