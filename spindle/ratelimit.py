"""Per-principal rate limits: token buckets that refill continuously.

A bucket holds up to `per_minute` units and refills at `per_minute / 60`
a second. Requests take one unit as they arrive; model tokens are charged
after a turn (its usage is known only then), so a bucket may go below zero,
and the principal then waits until it is positive again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from spindle.errors import ResourceExhausted

# Buckets unused this long are dropped; a full bucket forgets nothing.
_IDLE_SECONDS = 600.0


@dataclass(slots=True)
class _Bucket:
    level: float
    stamp: float


class RateLimit:
    """One limit (`per_minute` units) for every principal; 0 turns it off."""

    def __init__(
        self, per_minute: float, what: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.per_minute = per_minute
        self.what = what
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._swept = clock()

    def _bucket(self, key: str) -> _Bucket:
        now = self._clock()
        if now - self._swept > _IDLE_SECONDS:
            self._sweep(now)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(self.per_minute, now)
        bucket.level = min(
            self.per_minute, bucket.level + (now - bucket.stamp) * self.per_minute / 60
        )
        bucket.stamp = now
        return bucket

    def _sweep(self, now: float) -> None:
        self._swept = now
        for key, bucket in list(self._buckets.items()):
            if now - bucket.stamp > _IDLE_SECONDS:
                del self._buckets[key]

    def check(self, key: str, cost: float = 0.0) -> None:
        """Take `cost` units, or raise RESOURCE_EXHAUSTED with the wait, taking nothing."""
        if self.per_minute <= 0:
            return
        bucket = self._bucket(key)
        if bucket.level - cost < 0 or bucket.level <= 0:
            wait = (max(cost, 1e-9) - bucket.level) * 60 / self.per_minute
            raise ResourceExhausted(
                f"rate limit: more than {self.per_minute:g} {self.what} a minute; "
                f"retry in {wait:.1f} s",
                reason="RATE_LIMITED",
                metadata={"limit": f"{self.per_minute:g} {self.what}/min"},
                retry_after=wait,
            )
        bucket.level -= cost

    def charge(self, key: str, cost: float) -> None:
        """Take `cost` units now, below zero if need be (usage known afterwards)."""
        if self.per_minute > 0 and cost > 0:
            self._bucket(key).level -= cost
