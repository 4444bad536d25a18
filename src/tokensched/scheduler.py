"""Per-iteration batch formation: the token-budget loop.

There are no prefill and decode phases (vLLM V1's model). Each iteration has a budget of
``max_batched_tokens`` new tokens. Running sequences draw on it first, in the policy's order, each asking
for all its missing tokens (one for a decode, the rest of the prompt for a prefill), clamped to the budget
when the policy allows chunking. A running sequence that cannot get KV blocks preempts the policy's victim
(recompute: its blocks are freed and it rejoins the waiting queue) until it fits or is itself the victim.
If nothing was preempted, waiting sequences are admitted in queue order while the budget, the
``max_num_seqs`` cap and the KV cache allow; the first that does not fit stops admission (head-of-line,
as in vLLM). Prefix-cache hits are looked up at admission and cost no budget.

Policies plug in without branches here: the queue order and the victim (``SchedulerPolicy``), whether a
sequence may start (``AdmissionPolicy``), what a preemption costs (``PreemptionMode``: recompute drops the KV,
swap copies it to the CPU and back), and, when admission is blocked, whether a running sequence is displaced
for the waiting one (``SchedulerPolicy.displace``, e.g. priority preemption). A policy may finally annotate
the formed batch (``SchedulerPolicy.adjust_batch``): layered prefill adds passes of admitted prompts through
a fraction of the layers, which complete their tokens only at the last pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tokensched.kv_cache import NO_HIT, KVCacheManager
from tokensched.policies.base import AdmissionPolicy, SchedulerPolicy
from tokensched.preemption import PreemptionMode
from tokensched.sequence import Sequence, SeqStatus
from tokensched.timing import BatchShape


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    max_num_seqs: int = 256
    max_batched_tokens: int = 8192

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1 or self.max_batched_tokens < 1:
            raise ValueError("max_num_seqs and max_batched_tokens must be >= 1")


@dataclass(slots=True)
class ScheduledBatch:
    """One iteration's work: ``num_new[i]`` tokens of ``seqs[i]``."""

    seqs: list[Sequence] = field(default_factory=list)
    num_new: list[int] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)
    admitted: int = 0
    swap_s: float = 0.0  # swap-out and swap-in time this iteration pays
    # Only decodes, every running sequence included, nothing preempted or admitted: the next iterations
    # repeat this one until an arrival, a completion or a KV shortage (see Replica.start_step).
    steady: bool = False
    # Partial-depth work (layered prefill), set by SchedulerPolicy.adjust_batch: per entry, (tokens passing the
    # layers, fraction of the layers they pass). None: each entry runs num_new tokens through every layer. An
    # entry with num_new 0 passes tokens without completing them (its KV slots were allocated when it started).
    layers: list[tuple[int, float]] | None = None

    def shape(self) -> BatchShape:
        """What the timing model needs; call before the step's results are applied."""
        if self.layers is not None:
            return self._shape_layers(self.layers)
        b = BatchShape()
        pn, pc = b.prefill_new, b.prefill_cached
        sampled = decodes = ctx = 0
        for seq, n in zip(self.seqs, self.num_new):
            c = seq.num_computed
            t = seq.num_tokens
            if c + n == t:
                sampled += 1
                if n == 1 and seq.num_generated:
                    decodes += 1
                    ctx += t
                    continue
            pn.append(n)
            pc.append(c)
        b.num_sampled, b.num_decodes, b.decode_context_sum = sampled, decodes, ctx
        return b

    def _shape_layers(self, layers: list[tuple[int, float]]) -> BatchShape:
        """``shape`` for a batch with partial-depth entries: they are prefill chunks with a layer fraction."""
        b = BatchShape(prefill_fraction=[])
        fr = b.prefill_fraction
        assert fr is not None
        sampled = decodes = ctx = 0
        for seq, n, (w, f) in zip(self.seqs, self.num_new, layers):
            c = seq.num_computed
            t = seq.num_tokens
            if n and c + n == t:
                sampled += 1
                if n == 1 and seq.num_generated and f >= 1.0:
                    decodes += 1
                    ctx += t
                    continue
            b.prefill_new.append(w)
            b.prefill_cached.append(c)
            fr.append(f)
        b.num_sampled, b.num_decodes, b.decode_context_sum = sampled, decodes, ctx
        if all(f >= 1.0 for f in fr):
            b.prefill_fraction = None
        return b


class Scheduler:
    def __init__(
        self,
        config: SchedulerConfig,
        policy: SchedulerPolicy,
        kv: KVCacheManager,
        admission: AdmissionPolicy | None = None,
        preemption: PreemptionMode | None = None,
    ) -> None:
        self.config = config
        self.policy = policy
        self.kv = kv
        self.admission = admission or AdmissionPolicy()
        self.preemption = preemption or PreemptionMode()
        self.running: list[Sequence] = []
        self.num_preemptions = 0
        self._swap_s = 0.0  # swap time incurred while forming the current batch

    @property
    def num_waiting(self) -> int:
        return len(self.policy)

    @property
    def monotone(self) -> bool:
        """Do refused admissions stay refused while only decodes run? (see policies/base.py)"""
        return self.policy.monotone and self.admission.monotone

    def schedule(self, now: float) -> ScheduledBatch:
        kv, policy, running = self.kv, self.policy, self.running
        policy.begin_step(running, kv)
        full_budget = policy.token_budget(self.config.max_batched_tokens, running, kv)
        budget = full_budget
        batch = ScheduledBatch()
        seqs, news = batch.seqs, batch.num_new
        self._swap_s = 0.0

        RUNNING = SeqStatus.RUNNING
        for seq in list(policy.running_order(running)):
            if budget <= 0:
                break
            if seq.status is not RUNNING:  # preempted earlier in this loop
                continue
            n = seq.num_tokens - seq.num_computed
            if n > budget:
                n = budget
            if kv.try_append(seq, n):
                seqs.append(seq)
                news.append(n)
                budget -= n
                continue
            while not kv.can_append(seq, n):
                victim = policy.pick_victim(running)
                if victim in seqs:  # already batched this step: give its budget back
                    i = seqs.index(victim)
                    budget += news[i]
                    del seqs[i], news[i]
                self._preempt(victim)
                batch.preempted.append(victim)
                if victim is seq:
                    break
            else:
                kv.append(seq, n)
                seqs.append(seq)
                news.append(n)
                budget -= n

        if not batch.preempted:
            max_seqs = self.config.max_num_seqs
            admission = self.admission
            while len(policy) and budget > 0:
                seq = policy.peek()
                if len(running) >= max_seqs:
                    freed = self._displace_for(seq, batch, seqs, news)
                    if freed < 0:
                        break
                    budget += freed
                    continue
                swapped = seq.swapped_tokens
                hit = NO_HIT if swapped else kv.find_prefix(seq)
                have = swapped or hit.tokens
                n = seq.num_tokens - have
                if n > budget:
                    if policy.chunked_prefill:
                        n = budget
                    elif seqs:  # whole prompts only: wait for an iteration with room
                        break
                slots = swapped + n if swapped else n
                if not (admission.admits(seq, n, running, kv) and kv.can_allocate(seq, slots, hit)):
                    freed = self._displace_for(seq, batch, seqs, news)
                    if freed < 0:
                        break
                    budget += freed
                    continue
                policy.pop()
                kv.allocate(seq, slots, hit, count_query=not swapped)
                if swapped:
                    self._swap_s += self.preemption.swap_in_time(seq)
                    seq.swapped_tokens = 0
                seq.num_computed = have  # cached or swapped-in tokens count as computed
                seq.status = SeqStatus.RUNNING
                if seq.first_scheduled_s is None:
                    seq.first_scheduled_s = now
                    seq.prefix_hit_tokens = hit.tokens
                running.append(seq)
                seqs.append(seq)
                news.append(n)
                budget -= n
                batch.admitted += 1
                admission.on_admit(seq, kv)
                policy.on_admit(seq, n, now)
        if policy.adjusts_batch:  # e.g. layered prefill: partial-depth passes of sequences already admitted
            policy.adjust_batch(batch)
        batch.swap_s = self._swap_s
        # Whatever stopped admission (seat cap, budget, KV room) cannot lift while only decodes run if every
        # policy is monotone: decodes use a constant budget and only consume blocks. So a steady batch repeats
        # until an event.
        batch.steady = (
            not batch.preempted
            and not batch.admitted
            and len(seqs) == len(running)
            and budget == full_budget - len(seqs)  # every sequence took exactly one token
            and (self.monotone or not len(policy))
            and all(s.num_generated and s.num_computed + 1 == s.num_tokens for s in seqs)
        )
        return batch

    def _displace_for(self, seq: Sequence, batch: ScheduledBatch, seqs: list[Sequence], news: list[int]) -> int:
        """Let the policy preempt a running sequence for the waiting ``seq``.

        Returns the budget tokens given back (the victim may already be batched), or -1 if nothing was preempted.
        """
        victim = self.policy.displace(seq, self.running)
        if victim is None:
            return -1
        freed = 0
        if victim in seqs:
            i = seqs.index(victim)
            freed = news[i]
            del seqs[i], news[i]
        self._preempt(victim)
        batch.preempted.append(victim)
        return freed

    def _preempt(self, seq: Sequence) -> None:
        """Free the victim's KV and requeue it; recompute keeps only its outputs, swap keeps its KV on the CPU."""
        self.running.remove(seq)
        if self.preemption.keeps_kv and seq.num_computed:
            self._swap_s += self.preemption.swap_out_time(seq)
            seq.swapped_tokens = seq.num_computed
        self.kv.free(seq)
        seq.num_computed = 0
        seq.status = SeqStatus.WAITING
        seq.preemptions += 1
        self.num_preemptions += 1
        self.admission.on_release(seq)
        self.policy.requeue(seq)

    def finish(self, seq: Sequence, now: float) -> None:
        self.running.remove(seq)
        self.kv.free(seq)
        seq.status = SeqStatus.FINISHED
        self.admission.on_release(seq)
        self.admission.on_finish(seq)
        self.policy.on_finish(seq, now)
