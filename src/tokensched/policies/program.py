"""The replica side of program-level scheduling: a waiting queue ordered by a key the program layer sets.

Program-level policies (``tokensched.programs.policies``: program FCFS, Continuum, Autellix PLAS/ATLAS,
HEXGEN urgency, KVFlow) decide *which program goes first*; each LLM call they issue carries that decision as
``request.extra["program_key"]`` (a tuple, smaller first). This policy orders waiting calls by
``(program_key, call arrival, id)``, re-inserts a preempted call by the same key, and, when KV blocks run
out, preempts the running call with the largest key (the least urgent program; latest arrival among
equals), as vLLM's priority policy does with request priorities. Calls without a key go last, in arrival order.

A call issued with ``extra["program_preempt"]`` (Autellix's preemptive queues) that cannot start for want of a
seat or KV room displaces running calls with strictly larger keys, largest first, all or nothing
(:meth:`KeyedQueuePolicy.room_victim`); the victims are re-queued by their keys.
"""

from __future__ import annotations

from typing import Any

from tokensched.policies.keyed import KeyedQueuePolicy
from tokensched.sequence import Sequence

_LAST = (float("inf"),)


class ProgramKeyPolicy(KeyedQueuePolicy):
    """Waiting calls in the order their program-level policy set (program FCFS, least attained service, ...)."""

    name = "program"

    def sort_key(self, seq: Sequence) -> Any:
        r = seq.request
        return (r.extra.get("program_key", _LAST), r.arrival_s, r.id)

    def pick_victim(self, running: list[Sequence]) -> Sequence:
        return max(running, key=lambda s: (s.request.extra.get("program_key", _LAST), s.request.arrival_s))

    def displace(self, candidate: Sequence, running: list[Sequence]) -> Sequence | None:
        extra = candidate.request.extra
        if not extra.get("program_preempt") or not running:
            return None
        mine = extra.get("program_key", _LAST)
        victims = sorted((s for s in self.displaceable(running) if s.request.extra.get("program_key", _LAST) > mine),
                         key=lambda s: (s.request.extra.get("program_key", _LAST), s.request.arrival_s), reverse=True)
        return self.room_victim(candidate, victims)
