"""One model replica: a scheduler, a KV cache and a timing model, advanced one step at a time.

``start_step(now, horizon)`` forms the next batch and says when it ends; ``finish_step(step)`` applies its
results at that time. The replica does not know whether time is simulated: a simulator calls
``finish_step`` at the predicted end, a real engine would call it when the GPU returns.

Macro-steps. A *steady* batch (only decodes, every running sequence in it, admission blocked) repeats
itself until an arrival (``horizon``), a completion, or a KV block shortage. ``start_step`` then covers
``k`` iterations at once: it prices them with ``TimingModel.decode_times``, commits their blocks in one
call, and ``finish_step`` applies ``k`` tokens per sequence. Every time, token and metric equals what
``k`` single steps give (``tests/test_macro_step.py`` proves it), while the cost per macro-step is
``O(batch)`` instead of ``O(k * batch)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tokensched.kv_cache import NO_HIT, KVCacheManager, prompt_units
from tokensched.metrics import MetricsRecorder
from tokensched.policies.base import AdmissionPolicy, SchedulerPolicy
from tokensched.preemption import PreemptionMode
from tokensched.request import Request
from tokensched.scheduler import ScheduledBatch, Scheduler, SchedulerConfig
from tokensched.sequence import Sequence, SeqStatus
from tokensched.timing import TimingModel

MAX_MACRO_STEPS = 8192  # bounds the arrays priced per macro-step; larger runs just take several


@dataclass(slots=True)
class Step:
    batch: ScheduledBatch
    start: float
    end: float
    iterations: int = 1
    ends: np.ndarray | None = None  # for a macro-step: [start, end_1, ..., end_k]


class Replica:
    def __init__(
        self,
        config: SchedulerConfig,
        policy: SchedulerPolicy,
        kv: KVCacheManager,
        timing: TimingModel,
        *,
        max_model_len: int,
        metrics: MetricsRecorder | None = None,
        macro_steps: bool = True,
        admission: AdmissionPolicy | None = None,
        preemption: PreemptionMode | None = None,
        load_s_per_block: float = 0.0,
    ) -> None:
        self.scheduler = Scheduler(config, policy, kv, admission, preemption)
        self.policy = policy
        self.kv = kv
        self.timing = timing
        self.max_model_len = max_model_len
        self.metrics = metrics or MetricsRecorder(kv.num_blocks)
        self.macro_steps = macro_steps
        self.load_s_per_block = load_s_per_block  # PCIe seconds to load one KV block from CPU memory
        self.busy = False

    # ---- intake --------------------------------------------------------------------------------
    def add_request(self, request: Request, now: float) -> Sequence:
        seq = Sequence(request, prompt_units(request, self.kv.block_size) if self.kv.enable_prefix_caching else [])
        total = request.prompt_tokens + request.output_tokens
        if total > self.max_model_len:
            seq.status = SeqStatus.REJECTED
            seq.reject_reason = f"prompt+output {total} > max_model_len {self.max_model_len}"
            self.metrics.on_finish(seq)
            return seq
        self.scheduler.policy.add(seq, now)
        return seq

    # ---- moving running requests between replicas (migration, disaggregated prefill -> decode) ----
    def detach(self, seq: Sequence) -> None:
        """Take a running sequence out between steps, keeping its progress; its blocks here are freed
        (its prompt units stay cached here until evicted)."""
        sched = self.scheduler
        assert seq.status is SeqStatus.RUNNING and seq in sched.running, "detach a sequence that is not running"
        sched.running.remove(seq)
        self.kv.free(seq)
        sched.admission.on_release(seq)
        seq.status = SeqStatus.WAITING

    def abort(self, seq: Sequence) -> None:
        """Drop a waiting or running sequence for good, between steps (e.g. an RL partial rollout cut short).

        A running one frees its KV as ``detach`` does; a waiting one leaves the policy's queue (a CPU copy
        from swap preemption is dropped). The sequence keeps its progress counters (``num_generated``) for
        the caller and ends REJECTED with reason ``"aborted"``; it is not recorded as finished.
        """
        sched = self.scheduler
        assert not self.busy, "abort between steps, not while a step is in flight"
        if seq.status is SeqStatus.RUNNING:
            assert seq in sched.running, "abort a running sequence of another replica"
            sched.running.remove(seq)
            self.kv.free(seq)
            sched.admission.on_release(seq)
        elif seq.status is SeqStatus.WAITING:
            sched.policy.remove(seq)
            seq.swapped_tokens = 0
        else:
            raise ValueError(f"abort: sequence {seq.id} is {seq.status.name}, not waiting or running")
        seq.status = SeqStatus.REJECTED
        seq.reject_reason = "aborted"

    def can_attach(self, seq: Sequence) -> bool:
        sched = self.scheduler
        return (len(sched.running) < sched.config.max_num_seqs
                and self.kv.can_allocate(seq, seq.num_computed, NO_HIT))

    def attach(self, seq: Sequence, now: float) -> None:
        """Start running a sequence whose KV (``num_computed`` tokens) was copied here from another replica."""
        assert self.can_attach(seq), "attach without room"
        computed = seq.num_computed
        seq.num_computed = 0
        self.kv.allocate(seq, computed, NO_HIT, count_query=False)
        seq.num_computed = computed
        seq.status = SeqStatus.RUNNING
        self.scheduler.running.append(seq)

    @property
    def has_work(self) -> bool:
        return bool(self.scheduler.running) or len(self.scheduler.policy) > 0

    # ---- stepping ------------------------------------------------------------------------------
    def start_step(self, now: float, horizon: float = float("inf")) -> Step | None:
        """Form the next batch at ``now``; None when there is nothing to run."""
        sched = self.scheduler
        batch = sched.schedule(now)
        if not batch.seqs and self.kv.pinned_blocks and len(sched.policy) and not sched.running:
            self.kv.unpin_all()  # pinned KV must not idle the engine: under this pressure every pin yields
            batch = sched.schedule(now)
        loads = self.kv.pending_load_blocks  # prefix hits in CPU memory admitted in this batch
        self.kv.pending_load_blocks = 0
        if not batch.seqs:
            if sched.running or len(sched.policy):
                raise RuntimeError("scheduler made no progress with work pending")  # a bug, not a user error
            return None
        self.busy = True
        if self.macro_steps and batch.steady and not loads:
            step = self._macro_step(batch, now, horizon)
            if step is not None:
                self.metrics.on_step(now, step.iterations, len(batch.seqs), sched, self.kv)
                return step
        dt = self.timing.iteration_time(batch.shape())
        if loads:  # loaded layer by layer ahead of compute would overlap; engines today mostly load first
            dt += loads * self.load_s_per_block
        if batch.swap_s:
            dt = max(dt, batch.swap_s) if sched.preemption.overlap else dt + batch.swap_s
        self.metrics.on_step(now, 1, len(batch.seqs), sched, self.kv)
        return Step(batch, now, now + dt)

    def _macro_step(self, batch: ScheduledBatch, now: float, horizon: float) -> Step | None:
        seqs = batch.seqs
        k = min(min(s.output_tokens - s.num_generated for s in seqs), MAX_MACRO_STEPS)
        if k < 2:
            return None
        b = len(seqs)
        ctx = sum(s.num_computed for s in seqs) + b
        dts = self.timing.decode_times(b, ctx, k)
        ends = np.add.accumulate(np.concatenate(([now], dts)))
        # iteration j starts at ends[j-1]; it runs only if no arrival is due by then
        k = min(k, int(np.searchsorted(ends[:k], horizon, side="left")))
        if k >= 2:
            k = self._fit_blocks([s.slot_tokens for s in seqs], k)
        if k < 2:
            return None
        self.kv.append_decode_steps(seqs, k - 1)  # iteration 1's slots were allocated by schedule()
        return Step(batch, now, float(ends[k]), k, ends[: k + 1])

    def _fit_blocks(self, slots: list[int], k: int) -> int:
        """Largest ``j <= k`` whose extra ``j - 1`` decode iterations get KV blocks without preemption.

        If the blocked head of the queue would reuse cached-but-unreferenced units, evicting them could
        let it in (a chunked prefill may then fit in the freed room), so the macro-step stops before the
        first eviction.
        """
        kv = self.kv
        avail = kv.appendable_blocks
        policy = self.scheduler.policy
        if len(policy) and kv.evictable_blocks and kv.find_prefix(policy.peek()).evictable_blocks:
            avail = kv.free_blocks
        bs = self.kv.block_size
        # m more tokens open at most ceil(m / bs) new blocks per sequence: skip the exact count when that fits
        if len(slots) * -(-(k - 1) // bs) <= avail:
            return k
        s = np.asarray(slots, dtype=np.int64)
        base = (s + bs - 1) // bs

        def need(m: int) -> int:
            return int(((s + m + bs - 1) // bs - base).sum())

        if need(k - 1) <= avail:
            return k
        lo, hi = 0, k - 1  # need(lo) fits, need(hi) does not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if need(mid) <= avail:
                lo = mid
            else:
                hi = mid
        return lo + 1

    def finish_step(self, step: Step) -> list[Sequence]:
        """Apply the step's results at ``step.end``; returns the sequences that finished."""
        self.busy = False
        sched, rec = self.scheduler, self.metrics
        done: list[Sequence] = []
        if step.iterations == 1:
            end = step.end
            itls = rec.itl_values
            for seq, n in zip(step.batch.seqs, step.batch.num_new):
                c = seq.num_computed + n
                seq.num_computed = c
                if c == seq.num_tokens:  # all known tokens computed: sample one more
                    seq.num_tokens = c + 1
                    g = seq.num_generated = seq.num_generated + 1
                    if seq.first_token_s is None:
                        seq.first_token_s = end
                    else:
                        itl = end - seq.last_token_s  # type: ignore[operator]
                        itls.append(itl)
                        if itl > seq.itl_max_s:
                            seq.itl_max_s = itl
                    seq.last_token_s = end
                    if g == seq.output_tokens:
                        done.append(seq)
        else:
            k = step.iterations
            ends = step.ends
            assert ends is not None
            tail = ends[2:] - ends[1:-1]  # ITLs of iterations 2..k, shared by every sequence
            tail_max = float(tail.max())
            rec.itl_chunks.append((tail, len(step.batch.seqs)))
            first_end = float(ends[1])
            end = float(ends[-1])
            for seq in step.batch.seqs:
                seq.num_computed += k
                seq.num_generated += k
                seq.num_tokens += k
                first_itl = first_end - seq.last_token_s  # type: ignore[operator]
                rec.itl_values.append(first_itl)
                seq.itl_max_s = max(seq.itl_max_s, first_itl, tail_max)
                seq.last_token_s = end
                if seq.num_generated == seq.output_tokens:
                    done.append(seq)
        if self.policy.wants_token_events:
            on_tokens = self.policy.on_tokens
            if step.iterations == 1:
                for seq, n in zip(step.batch.seqs, step.batch.num_new):
                    on_tokens(seq, n, 1 if seq.num_computed == seq.num_tokens - 1 else 0)
            else:
                for seq in step.batch.seqs:
                    on_tokens(seq, step.iterations, step.iterations)
        for seq in done:
            sched.finish(seq, seq.last_token_s)  # type: ignore[arg-type]
            seq.finish_s = seq.last_token_s
            rec.on_finish(seq)
        return done
