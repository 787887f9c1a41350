"""Long-lived objects kept out of the garbage collector's full passes.

CPython's full collection visits every object it tracks. A service that
keeps long histories in memory (the thread-service's history cache, the
model-service's windows) holds hundreds of thousands of them, and each full
pass then runs tens to hundreds of milliseconds on the event loop, stalling
every call of the process (bench.fairness measured 75 to 173 ms).

`gc.freeze()` moves every object alive at that moment to a generation the
collector never scans. Reference counting still frees those objects when a
cache lets them go: items hold no reference cycles. What else is alive at a
freeze is frozen with them, and any of it that later becomes garbage inside
a reference cycle is not collected while frozen. So freezes are spaced, and
every `THAW_SECONDS` the frozen objects go back to the collector for one
full pass, which frees that garbage: one long pause in that time instead of
one every few seconds.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable

# Objects kept since the last freeze before another is worth it: a history
# of this many items is what made full passes long.
FREEZE_AFTER = 5_000
# The least time between two freezes.
MIN_SECONDS = 1.0
# How long objects stay frozen before they go back to the collector.
THAW_SECONDS = 600.0


class Settler:
    """Freezes what is alive once enough long-lived objects were made, and
    thaws it now and then."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        *,
        freeze_after: int = FREEZE_AFTER,
        min_seconds: float = MIN_SECONDS,
        thaw_seconds: float = THAW_SECONDS,
    ) -> None:
        self._clock = clock
        self.freeze_after = freeze_after
        self.min_seconds = min_seconds
        self.thaw_seconds = thaw_seconds
        self._pending = 0
        self._last_freeze = -math.inf
        self._frozen_since: float | None = None

    def kept(self, count: int) -> None:
        """`count` objects were just made to be kept a long time (a history
        read from the store or received whole, now in a cache)."""
        now = self._clock()
        if self._frozen_since is not None and now - self._frozen_since >= self.thaw_seconds:
            gc.unfreeze()
            gc.collect()
            self._frozen_since = None
        self._pending += count
        if self._pending < self.freeze_after or now - self._last_freeze < self.min_seconds:
            return
        gc.freeze()
        self._pending = 0
        self._last_freeze = now
        if self._frozen_since is None:
            self._frozen_since = now


_settler = Settler()


def kept(count: int) -> None:
    """`Settler.kept` for this process: the collector is the process's."""
    _settler.kept(count)
