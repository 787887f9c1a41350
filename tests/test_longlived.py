"""Long-lived objects are frozen out of the collector's full passes, spaced,
and thawed now and then so that garbage frozen with them is collected."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from spindle.longlived import Settler


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Cycle:
    """An object in a reference cycle: only the collector frees it."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def clock() -> Iterator[Clock]:
    gc.unfreeze()
    yield Clock()
    gc.unfreeze()


def settler(clock: Clock) -> Settler:
    return Settler(clock, freeze_after=100, min_seconds=1.0, thaw_seconds=60.0)


def test_objects_kept_in_numbers_are_frozen_out_of_the_collectors_scans(clock: Clock) -> None:
    settle = settler(clock)
    kept = [Cycle() for _ in range(10)]
    settle.kept(99)
    assert gc.get_freeze_count() == 0  # too few to be worth it
    settle.kept(1)
    assert gc.get_freeze_count() >= len(kept)


def test_freezes_are_spaced(clock: Clock) -> None:
    settle = settler(clock)
    settle.kept(100)
    frozen = gc.get_freeze_count()
    more = [Cycle() for _ in range(50)]
    settle.kept(100)  # at once: not again
    assert gc.get_freeze_count() == frozen
    clock.now += 1.0
    settle.kept(0)  # what was noted waits for the next freeze
    assert gc.get_freeze_count() > frozen
    del more


def test_garbage_frozen_with_the_kept_is_collected_at_the_thaw(clock: Clock) -> None:
    settle = settler(clock)
    garbage = Cycle()
    gone = weakref.ref(garbage)
    settle.kept(100)  # frozen while alive
    del garbage
    gc.collect()
    assert gone() is not None  # a frozen cycle is not collected
    clock.now += 59.0
    settle.kept(1)
    assert gone() is not None
    clock.now += 1.0
    settle.kept(1)  # the thaw: back to the collector, one full pass
    assert gone() is None
    assert gc.get_freeze_count() == 0


class Item:
    """A kept object as items are: no reference cycle."""


def test_frozen_objects_a_cache_lets_go_are_freed_at_once(clock: Clock) -> None:
    settle = settler(clock)
    cache = [Item() for _ in range(100)]
    first = weakref.ref(cache[0])
    settle.kept(len(cache))
    assert gc.get_freeze_count() >= len(cache)
    cache.clear()  # evicted: reference counting frees it, frozen or not
    assert first() is None
