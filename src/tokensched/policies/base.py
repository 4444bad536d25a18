"""The policy seams of a replica, as small classes with one job each.

* :class:`SchedulerPolicy` owns the waiting queue (its order *is* the policy), picks preemption victims, may
  displace a running sequence for a waiting one, may change the per-iteration token budget, and sees
  admissions, generated tokens and completions (for accounting such as fair-share counters).
* :class:`AdmissionPolicy` decides whether a waiting sequence may start now, beyond "it fits in KV".

Each policy declares its knobs as a pydantic ``Options`` model (unknown keys are errors). The scheduler's
token-budget loop calls these hooks and has no policy branches.

``monotone`` declares that, while only decodes run, a sequence this policy refused keeps being refused and the
queue head does not change. Macro-steps (which skip scheduling decisions during steady decoding) are only
taken when every policy in play is monotone or nothing waits.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, ClassVar, Iterator

from pydantic import BaseModel, ConfigDict

from tokensched.sequence import Sequence

if TYPE_CHECKING:
    from tokensched.kv_cache import KVCacheManager
    from tokensched.scheduler import ScheduledBatch


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SchedulerPolicy:
    """FCFS waiting queue, vLLM-style victim (the most recently admitted running sequence)."""

    name: ClassVar[str] = "base"
    Options: ClassVar[type[BaseModel]] = NoOptions
    chunked_prefill: ClassVar[bool] = True  # may a prompt be computed over several iterations?
    decodes_first: ClassVar[bool] = False  # are decodes budgeted before prefill chunks of running sequences?
    monotone: ClassVar[bool] = True  # see module docstring
    wants_token_events: ClassVar[bool] = False  # call on_tokens after every step (costs time per sequence)
    adjusts_batch: ClassVar[bool] = False  # call adjust_batch on every formed batch

    def __init__(self, options: BaseModel | None = None) -> None:
        self.options: Any = options if options is not None else self.Options()
        self._queue: deque[Sequence] = deque()  # deque: O(1) push-front for preempted sequences

    # ---- waiting queue -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._queue)

    def __iter__(self) -> Iterator[Sequence]:
        return iter(self._queue)

    def add(self, seq: Sequence, now: float) -> None:
        """A new arrival joins the queue."""
        self._queue.append(seq)

    def requeue(self, seq: Sequence) -> None:
        """A preempted sequence returns; FCFS puts it at the head so it resumes first."""
        self._queue.appendleft(seq)

    def peek(self) -> Sequence:
        return self._queue[0]

    def remove(self, seq: Sequence) -> None:
        """Take a waiting ``seq`` out of the queue for good (``Replica.abort``); O(queue length).

        A policy that keeps its waiting sequences elsewhere than ``_queue`` must override this."""
        try:
            self._queue.remove(seq)
        except ValueError:
            raise ValueError(f"{seq.id} is not waiting in the {self.name} queue") from None

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

    def displace(self, candidate: Sequence, running: list[Sequence]) -> Sequence | None:
        """A running sequence to preempt so that the waiting ``candidate`` can start (None: wait)."""
        return None

    def begin_step(self, running: list[Sequence], kv: KVCacheManager) -> None:
        """Called first in every scheduling decision (apply pending bookkeeping, look at the cache)."""

    def token_budget(self, budget: int, running: list[Sequence], kv: KVCacheManager) -> int:
        """This iteration's token budget (default: the configured ``max_batched_tokens``)."""
        return budget

    def adjust_batch(self, batch: ScheduledBatch) -> None:
        """Annotate the formed batch (if ``adjusts_batch``): set ``batch.layers`` for partial-depth passes and
        append running sequences whose KV is already allocated (layered prefill). Runs before ``steady``.
        Such a policy needs a timing model with ``prices_layer_fractions`` (``simulate`` refuses others)."""

    # ---- accounting ----------------------------------------------------------------------------
    def on_admit(self, seq: Sequence, num_new: int, now: float) -> None:
        """``seq`` starts (or resumes) with ``num_new`` tokens scheduled this iteration."""

    def on_tokens(self, seq: Sequence, computed: int, generated: int) -> None:
        """After a step: ``seq`` computed ``computed`` tokens and sampled ``generated`` (if wants_token_events)."""

    def on_finish(self, seq: Sequence, now: float) -> None:
        """``seq`` completed at ``now``."""


class AdmissionPolicy:
    """Aggressive admission (vLLM): start whatever fits in KV now; preempt later if memory runs out."""

    name: ClassVar[str] = "aggressive"
    Options: ClassVar[type[BaseModel]] = NoOptions
    monotone: ClassVar[bool] = True

    def __init__(self, options: BaseModel | None = None, *, max_model_len: int = 1 << 30) -> None:
        self.options: Any = options if options is not None else self.Options()
        self.max_model_len = max_model_len

    def admits(self, seq: Sequence, num_new: int, running: list[Sequence], kv: KVCacheManager) -> bool:
        return True

    def on_admit(self, seq: Sequence, kv: KVCacheManager) -> None:
        """``seq`` was admitted (after ``admits`` said yes and KV was allocated)."""

    def on_release(self, seq: Sequence) -> None:
        """``seq`` left the running set (finished or preempted)."""

    def on_finish(self, seq: Sequence) -> None:
        """``seq`` completed (e.g. record its output length)."""
