"""Which of a provider's upstream endpoints serves a request, chosen by its prompt_cache_key.

Replicas of a self-hosted server (vLLM, SGLang) each keep their own prefix
cache, so every request of one key should reach the same replica. Each key
ranks the endpoints by rendezvous (highest random weight) hashing: the score
of an endpoint is a stable hash (blake2b, never Python's salted `hash()`) of
the key and the endpoint's URL, and the key goes to the highest score. So
keys spread evenly, the choice is the same in every process and after every
restart, and an endpoint that leaves (or joins) moves only the keys it wins:
every other key's ranking of the remaining endpoints is unchanged.

An endpoint that cannot be reached, or fails `FAILURES_BEFORE_DOWN` times in
a row (5xx, a stream cut before its first event), is marked down for the
provider's `endpoint_cooldown`: keys that rank it first try it last meanwhile,
so they skip it without paying for its failure first. It is never dropped, so
a provider whose endpoints are all down still tries each, and after the
cooldown the endpoint gets its keys back as soon as it answers.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx

log = logging.getLogger(__name__)

FAILURES_BEFORE_DOWN = 3


@dataclass(eq=False)
class Endpoint:
    """One upstream base URL and what this process has seen of its health."""

    url: httpx.URL  # the request URL: the base URL and the wire's path
    label: str  # the base URL without credentials: for logs and the Completed event
    failures: int = 0  # failures in a row
    down_until: float = 0.0  # clock time until which keys try it last


def endpoint_label(base_url: str) -> str:
    """The base URL as operators read it: no user or password, no trailing slash."""
    url = httpx.URL(base_url)
    if url.userinfo:
        url = url.copy_with(username=None, password=None)
    return str(url).rstrip("/")


def rendezvous_score(key: str, label: str) -> int:
    digest = hashlib.blake2b(f"{key}\x00{label}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class Endpoints:
    """A provider's endpoints: each key's order, and which ones are down."""

    def __init__(
        self,
        provider: str,
        base_urls: Sequence[str],
        path: str,
        cooldown: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._provider = provider
        self._cooldown = cooldown
        self._clock = clock
        self.all = [
            Endpoint(httpx.URL(url.rstrip("/") + path), endpoint_label(url)) for url in base_urls
        ]

    def order(self, key: str) -> list[Endpoint]:
        """The endpoints in the order `key` tries them: by rendezvous score, the
        ones marked down last (in score order too)."""
        if len(self.all) == 1:
            return list(self.all)
        ranked = sorted(self.all, key=lambda e: rendezvous_score(key, e.label), reverse=True)
        now = self._clock()
        return [e for e in ranked if e.down_until <= now] + [
            e for e in ranked if e.down_until > now
        ]

    def succeeded(self, endpoint: Endpoint) -> None:
        endpoint.failures = 0
        endpoint.down_until = 0.0

    def failed(self, endpoint: Endpoint, *, unreachable: bool) -> None:
        """Count a failure; an unreachable endpoint is marked down at once."""
        endpoint.failures += 1
        if len(self.all) == 1 or self._cooldown <= 0:
            return
        if unreachable or endpoint.failures >= FAILURES_BEFORE_DOWN:
            if endpoint.down_until <= self._clock():
                log.warning(
                    "provider %r: endpoint %s marked down for %g s after %d failure(s) in a row",
                    self._provider,
                    endpoint.label,
                    self._cooldown,
                    endpoint.failures,
                )
            endpoint.down_until = self._clock() + self._cooldown
