"""The embedded provider's prompt cache, following OpenAI's published rules.

- Prompts shorter than 1024 tokens are never cached.
- A hit covers the longest cached prefix, counted in steps of 128 tokens
  from 1024 on (1024, 1152, 1280, ...).
- An entry is the pair (prompt_cache_key, prefix): the same prefix under
  another key is a miss. That is why a fork, which inherits its parent's
  key, hits the parent's cache and a fresh spawn does not.
- Entries are evicted least-recently-used past `max_entries`, and expire
  `ttl` seconds after their last use.

A prefix is identified by a chained hash over its 128-token blocks, so
finding the longest hit costs one pass over the prompt.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

MIN_CACHED_TOKENS = 1024
BLOCK_TOKENS = 128


class Prefixes:
    """A prompt's cacheable prefixes, built as its tokens come: (length, digest)
    of each 128-token prefix from 1024 tokens on. Extending it costs only the
    new tokens, so a window's prompt is not hashed again every turn."""

    __slots__ = ("_chain", "_tail", "count", "digests")

    def __init__(self) -> None:
        self.count = 0
        self.digests: list[tuple[int, bytes]] = []
        self._chain = b""
        self._tail: list[str] = []

    def extend(self, tokens: Sequence[str]) -> None:
        self.count += len(tokens)
        tail = self._tail
        tail.extend(tokens)
        done = self.count - len(tail)
        while len(tail) >= BLOCK_TOKENS:
            block = "\x00".join(tail[:BLOCK_TOKENS]).encode()
            del tail[:BLOCK_TOKENS]
            done += BLOCK_TOKENS
            self._chain = hashlib.blake2b(self._chain + block, digest_size=16).digest()
            if done >= MIN_CACHED_TOKENS:
                self.digests.append((done, self._chain))


def prefix_digests(tokens: Sequence[str]) -> list[tuple[int, bytes]]:
    """(prefix length, digest) for every cacheable prefix length of `tokens`."""
    prefixes = Prefixes()
    prefixes.extend(tokens)
    return prefixes.digests


class PromptCache:
    def __init__(
        self,
        max_entries: int = 100_000,
        ttl: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.ttl = ttl
        self._clock = clock
        self._entries: OrderedDict[tuple[str, bytes], float] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def use(self, key: str, tokens: Sequence[str] | Prefixes) -> int:
        """Serve a prompt (its tokens, or its `Prefixes`): return its cached
        tokens, then cache its prefixes."""
        prefixes = tokens.digests if isinstance(tokens, Prefixes) else prefix_digests(tokens)
        now = self._clock()
        cached = 0
        with self._lock:
            for length, digest in prefixes:
                last_used = self._entries.get((key, digest))
                if last_used is not None and now - last_used <= self.ttl:
                    cached = length
            for _, digest in prefixes:
                self._entries[(key, digest)] = now
                self._entries.move_to_end((key, digest))
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return cached
