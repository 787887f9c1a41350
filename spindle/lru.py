"""A cache bounded by the weight of what it holds: least recently used out
first. The histories both services keep between turns (weighed in bytes)
and the embedded provider's prompts (in prefix blocks) are kept in one."""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class WeightedLRU(Generic[K, V]):
    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._entries: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._weight = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def weight(self) -> int:
        """What everything held weighs together."""
        return self._weight

    def get(self, key: K) -> V | None:
        """The value held for `key`, now the most recently used."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def pop(self, key: K) -> V | None:
        """The value held for `key`, no longer held."""
        entry = self._entries.pop(key, None)
        if entry is None:
            return None
        self._weight -= entry[1]
        return entry[0]

    def put(self, key: K, value: V, weight: int) -> bool:
        """Hold `value` for `key` in place of what was held, the least recently
        used going until all fits the budget. False, and nothing held for
        `key`, when `value` alone weighs more than the budget."""
        self.pop(key)
        if weight > self.budget:
            return False
        self._entries[key] = (value, weight)
        self._weight += weight
        while self._weight > self.budget:
            _, (_, dropped) = self._entries.popitem(last=False)
            self._weight -= dropped
        return True
