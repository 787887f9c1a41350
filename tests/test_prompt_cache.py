"""The embedded prompt cache follows OpenAI's published rules."""

from __future__ import annotations

import asyncio

import pytest

from model_service.prompt_cache import (
    BLOCK_TOKENS,
    MIN_CACHED_TOKENS,
    Prefixes,
    PromptCache,
    prefix_digests,
)
from model_service.providers import embedded
from model_service.tokenizer import (
    count_tokens,
    render_instructions,
    render_item,
    render_prompt,
    tokenize,
)
from spindle import items
from spindle.model import Completed, ModelRequest, Usage


def tokens(n: int, prefix: str = "t") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def test_prompts_under_1024_tokens_are_never_cached() -> None:
    cache = PromptCache()
    prompt = tokens(MIN_CACHED_TOKENS - 1)
    assert cache.use("k", prompt) == 0
    assert cache.use("k", prompt) == 0
    assert len(cache) == 0


def test_a_1024_token_prompt_is_cached_whole_on_repeat() -> None:
    cache = PromptCache()
    prompt = tokens(MIN_CACHED_TOKENS)
    assert cache.use("k", prompt) == 0
    assert cache.use("k", prompt) == MIN_CACHED_TOKENS


def test_hits_count_the_longest_prefix_in_128_token_steps() -> None:
    cache = PromptCache()
    first = tokens(1500)
    cache.use("k", first)
    # Shares 1400 tokens with the first prompt, then differs.
    second = first[:1400] + tokens(300, prefix="other")
    hit = cache.use("k", second)
    assert hit == 1280  # the longest multiple of 128 within 1400, at least 1024
    assert hit % BLOCK_TOKENS == 0


def test_a_prefix_shorter_than_1024_shared_tokens_is_a_miss() -> None:
    cache = PromptCache()
    first = tokens(2000)
    cache.use("k", first)
    assert cache.use("k", first[:1000] + tokens(1000, prefix="x")) == 0


def test_entries_are_keyed_by_prompt_cache_key() -> None:
    cache = PromptCache()
    prompt = tokens(3000)
    cache.use("parent", prompt)
    assert cache.use("someone-else", prompt) == 0
    assert cache.use("parent", prompt) == 2944  # 23 * 128


def test_entries_expire_after_the_ttl() -> None:
    now = [0.0]
    cache = PromptCache(ttl=60, clock=lambda: now[0])
    prompt = tokens(2048)
    cache.use("k", prompt)
    now[0] = 59
    assert cache.use("k", prompt) == 2048
    now[0] = 59 + 61
    assert cache.use("k", prompt) == 0


def test_least_recently_used_entries_are_evicted() -> None:
    cache = PromptCache(max_entries=2)  # one 1152-token prompt holds 2 entries
    a, b = tokens(1152, "a"), tokens(1152, "b")
    cache.use("k", a)
    cache.use("k", b)  # evicts both of a's entries
    assert len(cache) == 2
    assert cache.use("k", a) == 0
    assert cache.use("k", a) == 1152


def test_tokenizer_is_deterministic_and_documented() -> None:
    assert tokenize("Hello, world") == ["Hell", "o", ",", " worl", "d"]
    assert count_tokens("a  b") == 3  # "a", " ", " b"
    assert tokenize("x" * 9) == ["xxxx", "xxxx", "x"]


def test_rendering_keeps_a_shared_history_a_shared_prefix() -> None:
    history = [
        items.Message(items.Role.USER, "question"),
        items.Message(items.Role.ASSISTANT, "answer", items.Phase.FINAL_ANSWER),
    ]
    longer = render_prompt("be brief", [*history, items.Message(items.Role.USER, "more")])
    assert longer.startswith(render_prompt("be brief", history))


def test_a_prompt_tokenized_part_by_part_is_the_prompt_tokenized_whole() -> None:
    """What lets the embedded provider tokenize only a turn's new items: no
    token spans two parts of a prompt, whatever the items' text."""
    texts = ["", " ", "a\n", "  lead", "trail  ", "\n\n", "<|user|>", "x" * 9, "mixed: ok?\t"]
    history: list[items.Item] = []
    for n, text in enumerate(texts):
        history.append(items.Message(items.Role.USER, text))
        history.append(items.FunctionCall(f"c{n}", "f", text))
        history.append(items.FunctionCallOutput(f"c{n}", text))
    for instructions in ("", "be brief ", "\n"):
        parts = tokenize(render_instructions(instructions))
        for item in history:
            parts += tokenize(render_item(item))
        assert parts == tokenize(render_prompt(instructions, history))


def test_prefixes_extended_bit_by_bit_are_those_of_the_whole() -> None:
    whole = tokens(3000)
    prefixes = Prefixes()
    for start in range(0, 3000, 37):
        prefixes.extend(whole[start : start + 37])
    assert prefixes.count == 3000
    assert prefixes.digests == prefix_digests(whole)
    assert [length for length, _ in prefixes.digests] == list(range(1024, 3000, 128))


def test_the_embedded_provider_tokenizes_a_long_history_a_slice_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Slices of 3 items: the prompt's tokens, and what a later request of the
    same key finds cached, are those of the whole prompt."""
    monkeypatch.setattr(embedded, "TOKENIZE_SLICE", 3)
    provider = embedded.EmbeddedProvider()
    history = tuple(
        items.Message(items.Role.USER, f"question {n}: " + "some words of the plan " * 12)
        for n in range(20)
    )

    def request(thread_id: str, input_items: tuple[items.Item, ...]) -> ModelRequest:
        return ModelRequest("spindle-echo", "be brief", input_items, "key", thread_id, "")

    async def usage(thread_id: str, input_items: tuple[items.Item, ...]) -> Usage:
        batches = [b async for b in provider.stream(request(thread_id, input_items))]
        completed = batches[-1][-1]
        assert isinstance(completed, Completed)
        return completed.usage

    first = asyncio.run(usage("a", history))
    assert first.input_tokens == count_tokens(render_prompt("be brief", history))
    again = asyncio.run(usage("b", (*history, items.Message(items.Role.USER, "and now?"))))
    assert again.cached_input_tokens == first.input_tokens // 128 * 128
