"""Which unreferenced prefix-cache unit to evict first.

The KV cache keeps unreferenced cached units (refcount 0) in an evictor; allocation pops from it when free
blocks run out. Each evictor is a tiny class with ``push`` (a unit became unreferenced), ``remove`` (it is
referenced again), ``pop`` (choose a victim) and ``__len__``.

* ``lru``: least recently released first; units of one request are released tail first (vLLM).
* ``lfu``: fewest references (admissions that used the unit, its creation included) first, LRU among equals.
* ``priority``: units last held by the least important request (largest ``priority`` value, vLLM's
  convention that lower is more important) first, LRU among equals.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from typing import Protocol

from tokensched.errors import UserError


class Evictor(Protocol):
    def push(self, key: int, blocks: int, hits: int, priority: int) -> None: ...
    def remove(self, key: int) -> None: ...
    def pop(self) -> tuple[int, int]: ...
    def __len__(self) -> int: ...
    def __contains__(self, key: int) -> bool: ...
    def values_sum(self) -> int: ...


class LRUEvictor:
    def __init__(self) -> None:
        self._od: OrderedDict[int, int] = OrderedDict()

    def push(self, key: int, blocks: int, hits: int, priority: int) -> None:
        self._od[key] = blocks

    def remove(self, key: int) -> None:
        del self._od[key]

    def pop(self) -> tuple[int, int]:
        return self._od.popitem(last=False)

    def __len__(self) -> int:
        return len(self._od)

    def __contains__(self, key: int) -> bool:
        return key in self._od

    def values_sum(self) -> int:
        return sum(self._od.values())


class _HeapEvictor:
    """Heap of (rank..., tick, key) with lazy deletion; ``_rank`` gives the ordering."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, int]] = []
        self._live: dict[int, tuple[int, int]] = {}  # key -> (tick, blocks)
        self._tick = 0

    def _rank(self, hits: int, priority: int) -> int:
        raise NotImplementedError

    def push(self, key: int, blocks: int, hits: int, priority: int) -> None:
        self._tick += 1
        self._live[key] = (self._tick, blocks)
        heapq.heappush(self._heap, (self._rank(hits, priority), self._tick, key))

    def remove(self, key: int) -> None:
        del self._live[key]

    def pop(self) -> tuple[int, int]:
        while True:
            _, tick, key = heapq.heappop(self._heap)
            live = self._live.get(key)
            if live is not None and live[0] == tick:
                del self._live[key]
                return key, live[1]

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, key: int) -> bool:
        return key in self._live

    def values_sum(self) -> int:
        return sum(b for _, b in self._live.values())


class LFUEvictor(_HeapEvictor):
    def _rank(self, hits: int, priority: int) -> int:
        return hits


class PriorityEvictor(_HeapEvictor):
    def _rank(self, hits: int, priority: int) -> int:
        return -priority


EVICTORS: dict[str, tuple[type, str]] = {
    "lru": (LRUEvictor, "least recently released unit first (vLLM, SGLang default)"),
    "lfu": (LFUEvictor, "least frequently reused unit first, LRU among equals"),
    "priority": (PriorityEvictor, "units of the least important requests first (SGLang --radix-eviction-policy priority)"),
}


def make_evictor(name: str) -> Evictor:
    try:
        return EVICTORS[name.lower()][0]()  # type: ignore[no-any-return]
    except KeyError:
        raise UserError(f"unknown eviction policy {name!r}; choose one of: {', '.join(EVICTORS)}") from None
