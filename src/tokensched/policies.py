"""Batch-formation policies, chosen by name.

A policy owns the waiting queue (its order is the policy) and picks preemption victims, so the
scheduler's token-budget loop has no policy branches. It also states two facts about batch formation:
whether prompts may be split into chunks, and whether decodes go before unfinished prefills.

Adding a policy: subclass :class:`SchedulerPolicy`, register it in ``SCHEDULERS`` with a one-line
description and default knobs, add a test.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterator

from tokensched.errors import UserError
from tokensched.sequence import Sequence


class SchedulerPolicy:
    """FCFS waiting queue, vLLM-style victim (the most recently admitted running sequence)."""

    name = "base"
    chunked_prefill = True  # may a prompt be computed over several iterations?
    decodes_first = False  # are decodes budgeted before prefill chunks of running sequences?

    def __init__(self) -> None:
        self._queue: deque[Sequence] = deque()  # deque: O(1) push-front for preempted sequences

    # ---- waiting queue -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._queue)

    def __iter__(self) -> Iterator[Sequence]:
        return iter(self._queue)

    def add(self, seq: Sequence) -> None:
        """A new arrival joins the queue."""
        self._queue.append(seq)

    def requeue(self, seq: Sequence) -> None:
        """A preempted sequence returns; FCFS puts it at the head so it resumes first."""
        self._queue.appendleft(seq)

    def peek(self) -> Sequence:
        return self._queue[0]

    def pop(self) -> Sequence:
        return self._queue.popleft()

    # ---- running set ---------------------------------------------------------------------------
    def running_order(self, running: list[Sequence]) -> list[Sequence]:
        """Order in which running sequences draw on the token budget (default: admission order)."""
        if not self.decodes_first:
            return running
        return [s for s in running if s.is_decoding] + [s for s in running if not s.is_decoding]

    def pick_victim(self, running: list[Sequence]) -> Sequence:
        """The running sequence to preempt when KV blocks run out: the last admitted (vLLM V1 FCFS)."""
        return running[-1]


class VLLMPolicy(SchedulerPolicy):
    """vLLM V1: running first in admission order, then waiting FCFS; chunked prefill within the budget."""

    name = "vllm"


class SarathiPolicy(SchedulerPolicy):
    """Sarathi-Serve stall-free batching: every decode first, then prefill chunks fill a small fixed budget."""

    name = "sarathi"
    decodes_first = True


class OrcaPolicy(SchedulerPolicy):
    """Orca iteration-level batching: whole prompts only, so a long prefill stalls the decodes batched with it."""

    name = "orca"
    chunked_prefill = False


@dataclass(frozen=True, slots=True)
class SchedulerSpec:
    factory: Callable[[], SchedulerPolicy]
    description: str
    reference: str
    max_batched_tokens: int | None  # default token budget; None = max_model_len (no chunking needed)


SCHEDULERS: dict[str, SchedulerSpec] = {
    "vllm": SchedulerSpec(VLLMPolicy, VLLMPolicy.__doc__ or "", "vLLM V1 scheduler (v0.15)", 8192),
    "sarathi": SchedulerSpec(SarathiPolicy, SarathiPolicy.__doc__ or "",
                             "Agrawal et al., Sarathi-Serve, OSDI'24", 512),
    "orca": SchedulerSpec(OrcaPolicy, OrcaPolicy.__doc__ or "", "Yu et al., Orca, OSDI'22", None),
}


def get_scheduler(name: str) -> SchedulerSpec:
    try:
        return SCHEDULERS[name.lower()]
    except KeyError:
        raise UserError(f"unknown scheduler {name!r}; choose one of: {', '.join(SCHEDULERS)}") from None
