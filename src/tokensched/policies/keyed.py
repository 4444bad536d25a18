"""A waiting queue ordered by a key, and the "preempt to make room" check that key-ordered policies share.

Priority and length-aware schedulers differ from FCFS only in *which* waiting request goes next and *which*
running request gives way. :class:`KeyedQueuePolicy` keeps the waiting queue as a heap on ``sort_key(seq)``
(smallest first; ties by insertion order, so runs are deterministic). A preempted request goes back through
the same key (``requeue``), as vLLM's priority queue re-inserts it into its heap, rather than jumping to the
head as FCFS does.

:meth:`KeyedQueuePolicy.room_victim` implements all-or-nothing displacement, as SGLang's
``PrefillAdder.preempt_to_schedule``: walk the preemptible running requests in the policy's order, and preempt
only if those taken so far would free enough KV blocks (or a seat) for the waiting request; otherwise
preempt nothing. The scheduler calls ``displace`` again after each victim, so returning the first victim of
a sufficient prefix and recomputing next time preempts exactly that prefix. The estimate is conservative in
one way and generous in another, like SGLang's token offsets: the candidate is charged its whole remaining
prompt (not just this iteration's chunk), and a victim is credited every block it holds (prefix blocks it
shares with another running request are in fact not freed).
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from tokensched.kv_cache import NO_HIT
from tokensched.policies.base import SchedulerPolicy
from tokensched.sequence import Sequence

if TYPE_CHECKING:
    from pydantic import BaseModel

    from tokensched.kv_cache import KVCacheManager


class KeyedQueuePolicy(SchedulerPolicy):
    """Waiting queue = heap on ``sort_key``; preempted requests re-enter by the same key."""

    name = "keyed"

    def __init__(self, options: BaseModel | None = None) -> None:
        super().__init__(options)
        self._heap: list[tuple[Any, int, Sequence]] = []
        self._count = 0  # insertion counter: final tie-break, never compares Sequences
        self._kv: KVCacheManager | None = None  # seen at each begin_step; used by room_victim
        self._fresh: set[Sequence] = set()  # admitted during the iteration being formed: not displaceable

    def sort_key(self, seq: Sequence) -> Any:
        """Smaller goes first. Must not change while ``seq`` waits (the heap is not re-sorted)."""
        raise NotImplementedError

    # ---- waiting queue -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._heap)

    def __iter__(self) -> Iterator[Sequence]:
        """Waiting sequences in queue order (sorted copy; for inspection, not for the hot path)."""
        return (s for *_, s in sorted(self._heap))

    def _push(self, seq: Sequence) -> None:
        self._count += 1
        heapq.heappush(self._heap, (self.sort_key(seq), self._count, seq))

    def add(self, seq: Sequence, now: float) -> None:
        self._push(seq)

    def requeue(self, seq: Sequence) -> None:
        self._push(seq)

    def peek(self) -> Sequence:
        return self._heap[0][2]

    def pop(self) -> Sequence:
        return heapq.heappop(self._heap)[2]

    def rekey(self) -> None:
        """Re-sort the waiting queue after keys changed (e.g. a starving call was promoted); O(queue length)."""
        self._heap = [(self.sort_key(s), c, s) for _, c, s in self._heap]
        heapq.heapify(self._heap)

    def remove(self, seq: Sequence) -> None:
        """Take a waiting ``seq`` out of the heap for good (eager: O(queue length), then re-heapify)."""
        heap = self._heap
        for i, entry in enumerate(heap):
            if entry[2] is seq:
                heap[i] = heap[-1]
                heap.pop()
                heapq.heapify(heap)
                return
        raise ValueError(f"{seq.id} is not waiting in the {self.name} queue")

    # ---- displacement --------------------------------------------------------------------------
    def begin_step(self, running: list[Sequence], kv: KVCacheManager) -> None:
        self._kv = kv  # used by room_victim during this decision
        self._fresh.clear()

    def on_admit(self, seq: Sequence, num_new: int, now: float) -> None:
        self._fresh.add(seq)

    def displaceable(self, running: list[Sequence]) -> list[Sequence]:
        """Running sequences that may be displaced: not those admitted while forming this very batch (SGLang
        only preempts from the running batch, not from the requests it is adding)."""
        fresh = self._fresh
        return [s for s in running if s not in fresh] if fresh else running

    def room_victim(self, candidate: Sequence, victims: Iterable[Sequence]) -> Sequence | None:
        """First of the shortest prefix of ``victims`` whose preemption lets ``candidate`` in, else None."""
        kv = self._kv
        it = iter(victims)
        first = next(it, None)
        if first is None or kv is None:
            return first
        hit = NO_HIT if candidate.swapped_tokens else kv.find_prefix(candidate)
        need = (kv.blocks_for(candidate.num_tokens) - hit.tokens // kv.block_size
                - (kv.available_blocks - hit.evictable_blocks))
        freed = kv.blocks_for(first.slot_tokens)
        if freed >= need:
            return first
        for v in it:
            freed += kv.blocks_for(v.slot_tokens)
            if freed >= need:
                return first
        return None
