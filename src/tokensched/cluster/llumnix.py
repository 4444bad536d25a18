"""Llumnix (Sun et al., OSDI'24): dispatch by virtual usage, live migration, rebalancing, draining.

``router: llumnix`` runs this :class:`ClusterSimulator` (see docs/cluster.md, section llumnix). The load metric and
the options are in ``llumnix_load.py``, the KV copy cost model in ``llumnix_copy.py``; this file is the global
scheduler and the migration protocol.

Every ``interval_s`` (Llumnix polls instances every 0.05 s) the scheduler reads every instance's freeness, fresh,
and pairs sources (freeness below ``migrate_out_threshold``, least free first; draining instances always) with
destinations (above ``migrate_in_threshold``, freest first), one migration per pair, at most ``max_concurrent``
in flight per instance. The source picks the request (``request_policy``, among requests in the decode phase,
least important priority first) at its next step boundary and copies its KV in stages while it keeps decoding
(``llumnix_copy.plan_stage``); the destination's room is checked at every stage, as Llumnix pre-allocates
there (we check but do not hold it between stages). At the stop-and-copy stage the request leaves the source's
batch (``Replica.detach``), the remaining blocks are sent, and the destination takes it into its batch at its
next step boundary (``Replica.attach``): the request's next token is late by the stop-and-copy time plus that
wait, which the summary reports as downtime. Aborts, as Llumnix's ``ABORTED_SRC``/``ABORTED_DST``: the request
finished or was preempted on the source (``source``), more than ``max_stages`` stages (``max_stages``), the
destination has no room or is draining (``destination``). A request that cannot be attached after its
stop-and-copy (the destination filled its seats meanwhile) is queued there to recompute, counted as an abort.

Not modelled: the source keeping the request's blocks during the stop-and-copy (a few ms), the copy's
interference with decoding, and migration of queued requests between instances that are not draining.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

from tokensched.cluster.llumnix_copy import KVLink, ReplicaHW, plan_stage
from tokensched.cluster.llumnix_load import InstanceLoad, LlumnixOptions, LlumnixRouter, is_high
from tokensched.cluster.routers import ROUTERS
from tokensched.cluster.sim import ClusterSimulator
from tokensched.cluster.spec import pools_from_config
from tokensched.config import SimConfig
from tokensched.errors import UserError
from tokensched.hardware import get_gpu
from tokensched.models import get_model
from tokensched.request import Request
from tokensched.sequence import Sequence, SeqStatus

ROUTERS.setdefault(LlumnixRouter.name, LlumnixRouter)


@dataclass(eq=False)
class Migration:
    """One request on its way from ``src`` to ``dst``."""

    seq: Sequence
    src: int
    dst: int
    start_s: float
    preemptions: int  # of the request when it started: a preemption since makes the copied KV stale
    stages: int = 0
    copied_blocks: int = 0
    bytes: int = 0
    ready: bool = False  # the current stage's copy is done: continue at the source's next step boundary
    detached_s: float | None = None


class LlumnixSimulator(ClusterSimulator):
    """The cluster with Llumnix's global scheduler. For extensions (an autoscaler): ``load(i)``/``freeness(i)``,
    ``drain(i, now)``/``is_drained(i)``, ``rebalance(now)``; counters in ``summary_extra()``."""

    def __init__(self, cfg: SimConfig, requests: list[Request]) -> None:
        super().__init__(cfg, requests)
        if not isinstance(self.router, LlumnixRouter):
            raise UserError("the Llumnix simulator needs router llumnix", where="router")
        self.opts: LlumnixOptions = self.router.options
        n = len(self.replicas)
        hw: list[ReplicaHW] = []
        self.compat: list[tuple[str, int]] = []  # migration needs the same model and block size
        pool_cfgs = [pcfg for pool, pcfg in pools_from_config(cfg) for _ in range(pool.replicas)]
        for rep, pcfg in zip(self.replicas, pool_cfgs):
            model, gpu = get_model(pcfg.model), get_gpu(pcfg.gpu)
            bs = rep.kv.block_size
            hw.append(ReplicaHW(pcfg.tp, gpu.interconnect_bandwidth, bs * model.kv_bytes_per_token))
            self.compat.append((model.name, bs))
        self.link = KVLink(self.opts, hw)
        self.draining = [False] * n
        self.drain_s: dict[int, float | None] = {}
        self.empty_s: dict[int, float] = {}
        self.active = [0] * n  # migrations in flight per instance, in or out
        self.migrating: dict[Sequence, Migration] = {}
        self.want: list[int | None] = [None] * n  # destination paired with each source at the last tick
        self.pending_attach: list[list[Migration]] = [[] for _ in range(n)]
        self.migrations = 0
        self.migrated_bytes = 0
        self.aborts: Counter[str] = Counter()
        self.downtimes: list[float] = []
        self.migrated_out = [0] * n
        self.migrated_in = [0] * n
        self.redispatched = 0
        self.events: list[tuple[str, float, str, int, int, int]] = []  # (what, t, request, src, dst, blocks)
        self._last_load_report = -math.inf
        self._ticking = False
        for i in self.opts.drain_at:
            self._check_replica(i, "router-options drain_at")
        if len(self.opts.drain_at) >= n:
            raise UserError("cannot drain every replica; leave one taking requests", where="router-options drain_at")
        for i, t in sorted(self.opts.drain_at.items(), key=lambda x: (x[1], x[0])):
            self.add_timer(t, lambda now, i=i: self.drain(i, now))

    # ---- load --------------------------------------------------------------------------------------------
    def load(self, i: int) -> InstanceLoad:
        """Instance ``i``'s load now (what Llumnix's llumlet reports)."""
        rep, o = self.replicas[i], self.opts
        sched, kv = rep.scheduler, rep.kv
        demand = 0
        if o.queue_demand == "all":
            for s in sched.policy:
                demand += kv.blocks_for(s.num_tokens)
        elif len(sched.policy):
            demand = kv.blocks_for(sched.policy.peek().num_tokens)
        headroom = o.priority_headroom_blocks if o.priority_headroom_blocks and self.num_high(i) else 0
        return InstanceLoad(kv.num_blocks, kv.used_blocks, demand, headroom, len(sched.running), self.draining[i])

    def num_high(self, i: int) -> int:
        """High-priority requests running or queued on replica ``i``."""
        sched, thr = self.replicas[i].scheduler, self.opts.high_priority_threshold
        return (sum(1 for s in sched.running if s.request.priority < thr)
                + sum(1 for s in sched.policy if s.request.priority < thr))

    def freeness(self, i: int) -> float:
        return self.load(i).freeness

    # ---- dispatch ----------------------------------------------------------------------------------------
    def on_arrival(self, req: Request, now: float) -> None:
        self._ensure_ticking(now)
        if self.router.loads is None or now - self._last_load_report >= self.report_interval:
            self.router.loads = [self.load(i) for i in range(len(self.replicas))]
            self._last_load_report = now
        super().on_arrival(req, now)

    # ---- draining ----------------------------------------------------------------------------------------
    def _check_replica(self, i: Any, where: str) -> None:
        if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < len(self.replicas):
            raise UserError(f"replica {i!r} does not exist (0..{len(self.replicas) - 1})", where=where)

    def drain(self, i: int, now: float | None = None) -> None:
        """Stop sending work to replica ``i`` and migrate everything out of it (scale-in). Its queued requests
        are dispatched again at once (they hold no KV); its running ones migrate out, ``max_concurrent`` at a
        time. ``now`` is the simulated time (None before the run starts)."""
        self._check_replica(i, "drain")
        if self.draining[i]:
            return
        if sum(not d for d in self.draining) <= 1:
            raise UserError(f"cannot drain replica {i}: it is the last one taking requests", where="drain")
        self.draining[i] = True
        self.drain_s[i] = now
        if self.router.loads is not None:
            self.router.loads[i].draining = True
        if now is not None:
            self._redispatch_waiting(i, now)
            self._check_drained(i, now)
            self._ensure_ticking(now)

    def is_drained(self, i: int) -> bool:
        """Replica ``i`` is draining and holds no request any more (it can be released)."""
        return self.draining[i] and not self.replicas[i].has_work and not self.active[i]

    def _check_drained(self, i: int, now: float) -> None:
        if i not in self.empty_s and self.is_drained(i):
            self.empty_s[i] = now

    def _redispatch_waiting(self, i: int, now: float) -> None:
        """Queued requests of a draining replica go to the freest other replica (no KV to move)."""
        pol = self.replicas[i].scheduler.policy
        if not len(pol):
            return
        loads = {j: self.load(j) for j in range(len(self.replicas))
                 if not self.draining[j] and self.compat[j] == self.compat[i]}
        keep: list[Sequence] = []
        while len(pol):
            seq = pol.pop()
            total = seq.prompt_tokens + seq.output_tokens
            fits = [j for j in loads if total <= self.replicas[j].max_model_len]
            if seq.swapped_tokens or not fits:  # its KV waits in this replica's CPU memory, or nowhere else fits
                keep.append(seq)
                continue
            j = max(fits, key=lambda j: (loads[j].freeness, -j))
            loads[j].demand += self.replicas[j].kv.blocks_for(seq.num_tokens)
            self.replicas[j].scheduler.policy.add(seq, now)
            self._move_outstanding(seq, i, j)
            self.redispatched += 1
            self.wake(j, now)
        for seq in reversed(keep):
            pol.requeue(seq)

    def _move_outstanding(self, seq: Sequence, src: int, dst: int) -> None:
        tokens = seq.prompt_tokens + seq.output_tokens
        vs, vd = self.views[src], self.views[dst]
        vs.outstanding -= 1
        vs.outstanding_tokens -= tokens
        vd.outstanding += 1
        vd.outstanding_tokens += tokens

    # ---- rebalancing -------------------------------------------------------------------------------------
    def _ensure_ticking(self, now: float) -> None:
        if self._ticking or not (self.opts.migration or any(self.draining)):
            return
        self._ticking = True
        iv = self.opts.interval_s
        self.add_timer((math.floor(now / iv) + 1) * iv, self._tick)  # on Llumnix's polling grid

    def _tick(self, now: float) -> None:
        self._ticking = False
        self.rebalance(now)
        if self.migrating or any(r.has_work for r in self.replicas):
            self._ticking = True
            self.add_timer(now + self.opts.interval_s, self._tick)

    def rebalance(self, now: float) -> None:
        """Pair sources with destinations; each source starts its migration at its next step boundary."""
        o = self.opts
        for i, d in enumerate(self.draining):
            if d:
                self._redispatch_waiting(i, now)
                self._check_drained(i, now)
        free = [self.freeness(i) for i in range(len(self.replicas))]
        srcs = [i for i, f in enumerate(free)
                if (self.draining[i] or (o.migration and f < o.migrate_out_threshold))
                and self.active[i] < o.max_concurrent and self.replicas[i].scheduler.running]
        dsts = [i for i, f in enumerate(free)
                if not self.draining[i] and f > o.migrate_in_threshold and self.active[i] < o.max_concurrent]
        srcs.sort(key=lambda i: (free[i], i))
        dsts.sort(key=lambda i: (-free[i], i))
        taken: set[int] = set()
        for s in srcs:
            d = next((d for d in dsts if d not in taken and self.compat[d] == self.compat[s]), None)
            if d is None:
                continue
            taken.add(d)
            self.want[s] = d
            if not self.replicas[s].busy:  # between steps now
                self._start_wanted(s, now)

    def candidate(self, i: int) -> Sequence | None:
        """The request replica ``i`` migrates out: among those decoding and not migrating, the least important
        priority first, then by ``request_policy`` (SR: fewest tokens, LR: most, LCFS: last admitted)."""
        best, best_key = None, None
        pol = self.opts.request_policy
        for k, s in enumerate(self.replicas[i].scheduler.running):
            if not s.is_decoding or s in self.migrating:  # (Llumnix cannot know how long it will run)
                continue
            size = s.num_tokens if pol == "SR" else -s.num_tokens if pol == "LR" else 0
            key = (-s.request.priority, size, -k)
            if best_key is None or key < best_key:
                best, best_key = s, key
        return best

    def _start_wanted(self, s: int, now: float) -> None:
        d, self.want[s] = self.want[s], None
        o = self.opts
        if d is None or self.draining[d] or self.active[s] >= o.max_concurrent or self.active[d] >= o.max_concurrent:
            return
        seq = self.candidate(s)
        if seq is None:
            return
        if o.pair_policy == "balanced" and not self.draining[s]:
            b = self.replicas[s].kv.blocks_for(seq.num_computed)
            high, h = is_high(seq.request, o), o.priority_headroom_blocks
            src_after = self.load(s).freeness_after(-b, -1, -h if high and self.num_high(s) == 1 else 0)
            dst_after = self.load(d).freeness_after(b, 1, h if high and not self.num_high(d) else 0)
            if not (src_after < dst_after and dst_after >= o.migrate_out_threshold):
                return
        mig = Migration(seq, s, d, now, seq.preemptions)
        self.migrating[seq] = mig
        self.active[s] += 1
        self.active[d] += 1
        self.events.append(("start", now, seq.id, s, d, 0))
        self._stage(mig, now)

    # ---- the migration protocol --------------------------------------------------------------------------
    def _stage(self, mig: Migration, now: float) -> None:
        """Run the next stage of ``mig``; the source is between steps."""
        seq, s, d = mig.seq, mig.src, mig.dst
        src, dst = self.replicas[s], self.replicas[d]
        if seq.status is not SeqStatus.RUNNING or seq.preemptions != mig.preemptions:
            return self._abort(mig, "source", now)  # finished, or preempted (its copied KV is stale)
        if self.draining[d]:
            return self._abort(mig, "destination", now)
        computed = src.kv.blocks_for(seq.num_computed)
        last, n = plan_stage(computed, mig.copied_blocks, self.opts.last_stage_max_blocks)
        if dst.kv.available_blocks < mig.copied_blocks + n or (
                last and len(dst.scheduler.running) >= dst.scheduler.config.max_num_seqs):
            return self._abort(mig, "destination", now)
        mig.stages += 1
        mig.copied_blocks += n
        nbytes = self.link.stage_bytes(s, n)
        mig.bytes += nbytes
        self.migrated_bytes += nbytes
        end = now + self.link.stage_time(s, d, n)
        if last:
            src.detach(seq)
            mig.detached_s = now
            self._move_outstanding(seq, s, d)
            self.events.append(("stop-copy", now, seq.id, s, d, n))
            self.add_timer(end, lambda t: self._commit(mig, t))
        else:
            self.events.append(("stage", now, seq.id, s, d, n))
            self.add_timer(end, lambda t: self._stage_done(mig, t))

    def _stage_done(self, mig: Migration, now: float) -> None:
        if mig.stages >= self.opts.max_stages:
            return self._abort(mig, "max_stages", now)
        mig.ready = True
        if not self.replicas[mig.src].busy:
            mig.ready = False
            self._stage(mig, now)

    def _commit(self, mig: Migration, now: float) -> None:
        if self.replicas[mig.dst].busy:
            self.pending_attach[mig.dst].append(mig)  # it joins the batch at the destination's step boundary
        else:
            self._attach(mig, now)

    def _attach(self, mig: Migration, now: float) -> None:
        seq, s, d = mig.seq, mig.src, mig.dst
        dst = self.replicas[d]
        self._finish(mig)
        if dst.can_attach(seq):
            dst.attach(seq, now)
            dst.scheduler.admission.on_admit(seq, dst.kv)
            self.migrations += 1
            self.migrated_out[s] += 1
            self.migrated_in[d] += 1
            assert mig.detached_s is not None
            self.downtimes.append(now - mig.detached_s)
            self.events.append(("attach", now, seq.id, s, d, mig.copied_blocks))
        else:  # the destination admitted other work meanwhile: recompute there
            seq.num_computed = 0
            seq.preemptions += 1
            dst.scheduler.num_preemptions += 1
            dst.scheduler.policy.requeue(seq)
            self.aborts["destination"] += 1
            self.events.append(("requeue", now, seq.id, s, d, 0))
        self.wake(d, now)
        self._check_drained(s, now)

    def _finish(self, mig: Migration) -> None:
        del self.migrating[mig.seq]
        self.active[mig.src] -= 1
        self.active[mig.dst] -= 1

    def _abort(self, mig: Migration, reason: str, now: float) -> None:
        self._finish(mig)
        self.aborts[reason] += 1
        self.events.append(("abort-" + reason, now, mig.seq.id, mig.src, mig.dst, mig.copied_blocks))

    # ---- hooks -------------------------------------------------------------------------------------------
    def on_step_end(self, i: int, now: float) -> None:
        super().on_step_end(i, now)
        if self.pending_attach[i]:
            pending, self.pending_attach[i] = self.pending_attach[i], []
            for mig in pending:
                self._attach(mig, now)
        for mig in [m for m in self.migrating.values() if m.src == i and m.ready]:
            mig.ready = False
            self._stage(mig, now)
        if self.want[i] is not None:
            self._start_wanted(i, now)
        if self.draining[i]:
            self._check_drained(i, now)

    def summary_extra(self) -> dict[str, Any]:
        """Migration counters for ``summary["cluster"]``."""
        dt = self.downtimes
        return {
            "migrations": self.migrations,
            "migrated_bytes": self.migrated_bytes,
            "migrations_aborted": sum(self.aborts.values()),
            "migration_aborts": dict(sorted(self.aborts.items())),
            "migration_downtime_s": {"mean": sum(dt) / len(dt), "max": max(dt)} if dt else None,
            "migrated_out": list(self.migrated_out),
            "migrated_in": list(self.migrated_in),
            "redispatched": self.redispatched,
            "drained": [{"replica": i, "drain_s": self.drain_s[i], "empty_s": self.empty_s.get(i)}
                        for i in sorted(self.drain_s)],
        }
