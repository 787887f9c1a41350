"""The weight-bounded cache both services keep histories in."""

from __future__ import annotations

from spindle.lru import WeightedLRU


def test_the_least_recently_used_go_first_until_all_fits() -> None:
    cache: WeightedLRU[str, str] = WeightedLRU(10)
    assert cache.put("a", "A", 4) and cache.put("b", "B", 4)
    assert cache.get("a") == "A"  # now b is the least recently used
    assert cache.put("c", "C", 4)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == ("A", None, "C")
    assert (len(cache), cache.weight) == (2, 8)


def test_a_value_heavier_than_the_budget_is_not_held_and_drops_its_key() -> None:
    cache: WeightedLRU[str, str] = WeightedLRU(10)
    cache.put("a", "A", 4)
    cache.put("b", "B", 4)
    assert not cache.put("a", "too big", 11)
    assert (cache.get("a"), cache.get("b"), cache.weight) == (None, "B", 4)


def test_pop_lets_a_value_go() -> None:
    cache: WeightedLRU[str, str] = WeightedLRU(10)
    cache.put("a", "A", 4)
    assert cache.pop("a") == "A"
    assert (cache.pop("a"), len(cache), cache.weight) == (None, 0, 0)
