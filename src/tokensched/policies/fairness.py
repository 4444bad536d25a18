"""Fair sharing between tenants: VTC and a FastSwitch-style preemptive variant.

* ``vtc`` — Virtual Token Counter (Sheng et al., "Fairness in Serving Large Language Models", OSDI'24;
  artifact ``Ying1123/VTC-artifact``, ``slora/server/router/vtc_req_queue.py``). Each tenant
  (``Request.tenant``) has a counter ``c_i`` of the service it received and a FIFO queue. Service is weighted
  tokens: ``input_price`` per prompt token, charged when the request is admitted, and ``output_price`` per
  generated token, charged as tokens are produced; both are divided by the tenant's weight (weighted VTC).
  When a request arrives to an empty tenant queue (the tenant becomes backlogged) its counter is lifted to
  ``max(c_i, min c_j)`` over the other backlogged tenants, so idle time banks no credit. The lift is applied
  when the engine next schedules, as a real engine loop ingests arrivals after applying the step in flight
  (vLLM's ``EngineCore``); it uses the counters of that moment. Admission takes the head of the backlogged
  tenant with the smallest counter, again and again, and stops at the first request that does not fit (the
  scheduler core's head-of-line rule, as in the artifact's ``break``). A preempted request returns to the head
  of its tenant's queue and is not charged its prompt again.
* ``fastswitch`` — the scheduling setting of FastSwitch (Shen, Li, Gao, arXiv 2411.18424): fairness enforced
  by *preemptive* priority scheduling whose priorities change at run time, each change paying a KV context
  switch (pair it with ``--preemption swap`` and its ``block_group`` / ``overlap`` / ``reuse_cpu_copy`` knobs).
  Priorities are the tenants' VTC counters, re-read every ``rerank_every`` scheduler iterations (see
  :class:`FastSwitchPolicy`); a waiting request of a less-served tenant displaces running requests of the
  most-served tenants when memory or seats are short.

Counters are kept as exact integers (tokens charged since the last lift) plus the float set by the lift, so a
counter is the same number whether the engine advanced token by token or by macro-steps.
"""

from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING, Iterator

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tokensched.kv_cache import NO_HIT
from tokensched.policies.base import SchedulerPolicy
from tokensched.sequence import Sequence

if TYPE_CHECKING:
    from tokensched.kv_cache import KVCacheManager

_CHARGED = "vtc-charged"  # Sequence.policy_state once its prompt was charged


class VTCOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    input_price: float = Field(1.0, ge=0, allow_inf_nan=False, description="service per prompt token (w_p)")
    output_price: float = Field(2.0, ge=0, allow_inf_nan=False, description="service per generated token (w_q)")
    weights: dict[str, float] = Field(default_factory=dict,
                                      description="tenant -> share weight (default 1); service is divided by it")

    @field_validator("weights")
    @classmethod
    def _positive(cls, v: dict[str, float]) -> dict[str, float]:
        for tenant, w in v.items():
            if not (isinstance(w, (int, float)) and math.isfinite(w) and w > 0):
                raise ValueError(f"weight of tenant {tenant!r} must be a positive number, got {w!r}")
        return v


class VTCPolicy(SchedulerPolicy):
    """VTC (OSDI'24): per-tenant FIFO queues; admit from the backlogged tenant with the least weighted service."""

    name = "vtc"
    Options = VTCOptions
    monotone = False  # counters grow with every decoded token, so the queue head can change while decoding
    wants_token_events = True

    def __init__(self, options: BaseModel | None = None) -> None:
        super().__init__(options)
        o: VTCOptions = self.options
        self.p_in, self.p_out, self.weights = o.input_price, o.output_price, o.weights
        self._queues: dict[str, deque[Sequence]] = {}  # insertion order = first seen: the tie-break
        self._waiting = 0
        # counter c_i = base_i + (p_in * in_i + p_out * out_i) / w_i, with in_i / out_i exact token counts
        self._base: dict[str, float] = {}
        self._in: dict[str, int] = {}
        self._out: dict[str, int] = {}
        self._newly_backlogged: list[str] = []  # since the last scheduling decision, in arrival order

    # ---- counters ------------------------------------------------------------------------------
    def counter(self, tenant: str) -> float:
        """Weighted service of ``tenant`` so far (lifts included); 0 for a tenant never seen."""
        if tenant not in self._base:
            return 0.0
        w = self.weights.get(tenant, 1.0)
        return self._base[tenant] + (self.p_in * self._in[tenant] + self.p_out * self._out[tenant]) / w

    def _apply_lifts(self) -> None:
        """Lift each tenant that became backlogged: c_i = max(c_i, min c_j over the other backlogged tenants).

        Done at the next scheduling decision, in arrival order, against the tenants that were backlogged when
        it arrived (those that became backlogged after it are left out). Lifting at the arrival instant instead
        would read counters that depend on whether the engine advanced the step in flight one iteration at a
        time or as a macro-step.
        """
        pending = self._newly_backlogged
        for i, tenant in enumerate(pending):
            later = set(pending[i + 1:])
            others = [self.counter(t) for t, q in self._queues.items() if q and t != tenant and t not in later]
            if others:
                floor = min(others)
                if floor > self.counter(tenant):
                    self._base[tenant], self._in[tenant], self._out[tenant] = floor, 0, 0
        pending.clear()

    def begin_step(self, running: list[Sequence], kv: KVCacheManager) -> None:
        """Called first in every scheduling decision: apply the lifts of tenants that became backlogged."""
        if self._newly_backlogged:
            self._apply_lifts()

    def on_admit(self, seq: Sequence, num_new: int, now: float) -> None:
        if seq.policy_state != _CHARGED:  # a resumed (preempted) request was charged at its first admission
            seq.policy_state = _CHARGED
            self._in[seq.request.tenant] += seq.prompt_tokens

    def on_tokens(self, seq: Sequence, computed: int, generated: int) -> None:
        if generated:
            self._out[seq.request.tenant] += generated

    # ---- waiting queue -------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._waiting

    def __iter__(self) -> Iterator[Sequence]:
        """Waiting sequences, tenants by current counter then FIFO (admission reorders as counters grow)."""
        order = sorted((self._rank(t), i, t) for i, t in enumerate(self._queues))
        return (s for _, _, t in order for s in self._queues[t])

    def _rank(self, tenant: str) -> float:
        """What admission minimises: the live counter (FastSwitch: the counter read at the last re-rank)."""
        return self.counter(tenant)

    def _head_tenant(self) -> str:
        best: str | None = None
        best_key = math.inf
        for t, q in self._queues.items():  # first seen wins ties, as min() over the artifact's dict
            if q:
                k = self._rank(t)
                if best is None or k < best_key:
                    best, best_key = t, k
        assert best is not None, "peek/pop on an empty queue"
        return best

    def add(self, seq: Sequence, now: float) -> None:
        t = seq.request.tenant
        q = self._queues.get(t)
        if q is None:
            q = self._queues[t] = deque()
            self._base[t], self._in[t], self._out[t] = 0.0, 0, 0
        q.append(seq)
        self._waiting += 1
        if len(q) == 1:
            self._newly_backlogged.append(t)

    def requeue(self, seq: Sequence) -> None:
        """A preempted request resumes first within its tenant; no lift (its tenant was not idle)."""
        self._queues[seq.request.tenant].appendleft(seq)
        self._waiting += 1

    def peek(self) -> Sequence:
        return self._queues[self._head_tenant()][0]

    def pop(self) -> Sequence:
        self._waiting -= 1
        return self._queues[self._head_tenant()].popleft()


class FastSwitchOptions(VTCOptions):
    rerank_every: int = Field(50, ge=1, description="scheduler iterations between priority updates while "
                              "requests wait (priorities are also re-read when requests start waiting)")
    preempt_gap: float = Field(0.0, ge=0, allow_inf_nan=False, description="a waiting request displaces a "
                               "running one only if its tenant's priority counter is lower by more than this")


class FastSwitchPolicy(VTCPolicy):
    """FastSwitch setting: VTC counters re-ranked every N iterations; less-served tenants preempt most-served ones.

    The rule. A tenant's *priority* is its VTC counter as read at the last re-rank (lower = more important).
    Priorities are re-read every ``rerank_every`` scheduler iterations during which requests wait, and at the
    first iteration in which requests wait after none did. Between re-ranks they are frozen (a tenant seen for
    the first time enters with its counter at arrival), so priorities do not flap with every decoded token.
    The waiting queue admits the most important tenant first (FIFO within it). When its head cannot start (no
    seat or no KV room), it displaces running requests of tenants less important by more than ``preempt_gap``,
    the least important tenant first and its most recently admitted request first, but only if those
    preemptible requests together free enough room (all or nothing, as ``keyed.py``), and never a request that
    has not produced a token since it was last admitted (so every admission makes progress). KV shortages
    during decoding preempt the least important tenant's latest request.

    Why iterations and not seconds: the policy sees scheduling iterations, not the clock, and FastSwitch's
    prototype is vLLM, whose scheduler runs once per iteration; counting iterations also keeps the rule
    independent of the timing model. The paper (C2 in the reference cards, #95 A4) says priorities are
    "adjusted dynamically at runtime" and re-ranked periodically but we found no exact period. At 20-40 ms per
    iteration the default 50 is 1-2 s: in ``experiments/fastswitch_swap.py`` 20 already makes tenants of equal
    standing swap places on most re-ranks (thousands of preemptions for a thousand requests). ``preempt_gap``
    (default 0: every priority change may preempt) adds hysteresis, as SGLang's preemption threshold does for
    static priorities. Re-reading only while requests wait is what makes the rule the same with and without
    macro-steps (which run only when nothing waits, when priorities are unused).
    """

    name = "fastswitch"
    Options = FastSwitchOptions

    def __init__(self, options: BaseModel | None = None) -> None:
        super().__init__(options)
        self.rerank_every: int = self.options.rerank_every
        self._prio: dict[str, float] = {}
        self._since = 0
        self._stale = True
        self._kv: KVCacheManager | None = None
        self._gen_at_admit: dict[str, int] = {}  # running request -> tokens it had generated when (re)admitted
        self.reranks = 0

    def _rank(self, tenant: str) -> float:
        p = self._prio.get(tenant)
        return self.counter(tenant) if p is None else p

    def _rerank(self) -> None:
        self._prio = {t: self.counter(t) for t in self._queues}
        self.reranks += 1

    def begin_step(self, running: list[Sequence], kv: KVCacheManager) -> None:
        """Called once per scheduler iteration, before anything else: lifts, then the re-rank clock."""
        self._kv = kv
        super().begin_step(running, kv)
        if not self._stale and len(self._prio) < len(self._queues):
            for t in self._queues:  # a tenant first seen between re-ranks enters with its (lifted) counter
                if t not in self._prio:
                    self._prio[t] = self.counter(t)
        if not self._waiting:
            self._stale = True
            return
        if self._stale or self._since >= self.rerank_every:
            self._rerank()
            self._since = 0
            self._stale = False
        self._since += 1

    def _victim_order(self, running: list[Sequence]) -> list[Sequence]:
        """Least important tenant first; within it (and among equals) the latest admitted first."""
        rev = list(reversed(running))
        return sorted(rev, key=lambda s: -self._rank(s.request.tenant))  # stable: keeps latest-first ties

    def on_admit(self, seq: Sequence, num_new: int, now: float) -> None:
        super().on_admit(seq, num_new, now)
        self._gen_at_admit[seq.id] = seq.num_generated

    def on_finish(self, seq: Sequence, now: float) -> None:
        self._gen_at_admit.pop(seq.id, None)

    def pick_victim(self, running: list[Sequence]) -> Sequence:
        return self._victim_order(running)[0]

    def displace(self, candidate: Sequence, running: list[Sequence]) -> Sequence | None:
        mine = self._rank(candidate.request.tenant)
        gap = self.options.preempt_gap
        started = self._gen_at_admit
        # Only requests that produced a token since their last admission may be displaced: every admission then
        # makes progress (re-ranking every iteration with recompute could otherwise undo every prefill forever).
        victims = [s for s in self._victim_order(running)
                   if self._rank(s.request.tenant) - mine > gap and s.num_generated > started.get(s.id, -1)]
        if not victims:
            return None
        kv = self._kv
        if kv is None:
            return victims[0]
        # all or nothing: the candidate's whole remaining prompt against what the victims hold
        hit = NO_HIT if candidate.swapped_tokens else kv.find_prefix(candidate)
        need = (kv.blocks_for(candidate.num_tokens) - hit.tokens // kv.block_size
                - (kv.available_blocks - hit.evictable_blocks))
        freed = 0
        for v in victims:
            freed += kv.blocks_for(v.slot_tokens)
            if freed >= need:
                return victims[0]
        return None
