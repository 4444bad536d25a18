"""Simulating a cluster: a router in front of many replicas, in one event heap.

The event loop is the single-replica one (``tokensched.simulator``) with a replica index on every event: an
arrival is routed at once (or after ``router_latency``, the router's own cost), each replica forms its own
batches, and a replica may macro-step only up to the next arrival anywhere, so every routing decision sees
replicas exactly as single steps would leave them. Routers read replica load from snapshots refreshed every
``report_interval`` seconds (stale metrics), and their own bookkeeping (requests in flight) is exact.

Extensions (migration, disaggregation, autoscaling) subclass :class:`ClusterSimulator` and use its hooks:
``on_arrival`` (where a request goes), ``on_done`` (sequences a replica finished), ``on_step_end`` (a replica is
between steps: the moment to detach or attach running sequences), and ``add_timer(t, fn)`` for periodic work.
Every pending timer and dispatch bounds macro-steps, like arrivals do.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable

from pydantic import BaseModel, ValidationError

from tokensched.cluster.routers import ReplicaView, get_router
from tokensched.cluster.spec import PoolSpec, pools_from_config
from tokensched.config import SimConfig
from tokensched.engine import Replica
from tokensched.errors import UserError
from tokensched.metrics import MetricsRecorder, request_rows, summarize
from tokensched.request import Request
from tokensched.sequence import SeqStatus
from tokensched.simulator import build_replica, cpu_kv_summary
from tokensched.timing import BatchShape

STEP_END, TIMER, ARRIVAL, DISPATCH, SCHEDULE = 0, 1, 2, 3, 4


@dataclass
class ClusterResult:
    config: SimConfig
    summary: dict[str, Any]
    rows: list[dict[str, Any]]
    replicas: list[dict[str, Any]]  # one summary row per replica
    pools: list[dict[str, Any]]  # one summary row per pool
    info: dict[str, Any]
    programs: list[dict[str, Any]] | None = None  # one row per program (program workloads)


def _speed(replica: Replica) -> float:
    """Decode tokens per second at a moderate batch (64 sequences, 1k context): a replica's relative speed."""
    t = replica.timing.iteration_time(BatchShape(num_decodes=64, decode_context_sum=64 * 1024, num_sampled=64))
    return 64 / t


class ClusterSimulator:
    def __init__(self, cfg: SimConfig, requests: list[Request]) -> None:
        self.cfg = cfg
        self.requests = requests
        self.pools: list[PoolSpec] = []
        self.replicas: list[Replica] = []
        self.replica_pool: list[int] = []
        self.infos: list[dict[str, Any]] = []
        for p, (pool, pcfg) in enumerate(pools_from_config(cfg)):
            self.pools.append(pool)
            for _ in range(pool.replicas):
                rep, info = build_replica(pcfg, requests)
                self.replicas.append(rep)
                self.replica_pool.append(p)
                self.infos.append(info)
        self.views = [ReplicaView(i, self.pools[self.replica_pool[i]].name, r.kv.num_blocks, r.kv.block_size,
                                  _speed(r)) for i, r in enumerate(self.replicas)]
        router_cls = get_router(getattr(cfg, "router", "round-robin"))
        raw = getattr(cfg, "router_options", {}) or {}
        try:
            opts: BaseModel = router_cls.Options(**{k.replace("-", "_"): v for k, v in raw.items()})
        except ValidationError as e:
            err = e.errors()[0]
            raise UserError(f"option '{'.'.join(str(x) for x in err['loc'])}' of router {router_cls.name}: "
                            f"{err['msg']}", where="router-options") from None
        self.router = router_cls(opts, self.views, seed=cfg.seed)
        self.report_interval = float(getattr(cfg, "report_interval", 0.0) or 0.0)
        self.router_latency = float(getattr(cfg, "router_latency", 0.0) or 0.0)
        self._last_report = -float("inf")
        self._heap: list[tuple[float, int, int, int, int, Any]] = []
        self._seq = 0
        self._next_arrival = 0
        self._pending: list[bool] = [False] * len(self.replicas)
        self._dispatch_times: list[float] = []  # heap of pending dispatch and timer times: macro-step bounds
        self.horizon = float("inf")
        self.assigned = [0] * len(self.replicas)

    def _push(self, t: float, prio: int, kind: int, rep: int, payload: Any = None) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, prio, self._seq, kind, rep, payload))

    def _feed_arrival(self) -> None:
        if self._next_arrival < len(self.requests):
            r = self.requests[self._next_arrival]
            self._next_arrival += 1
            self._push(r.arrival_s, ARRIVAL, ARRIVAL, -1, r)
            self.horizon = r.arrival_s
        else:
            self.horizon = float("inf")

    def _refresh(self, now: float) -> None:
        if now - self._last_report < self.report_interval:
            return
        self._last_report = now
        for v, r in zip(self.views, self.replicas):
            v.running = len(r.scheduler.running)
            v.waiting = r.scheduler.num_waiting
            v.kv_used_blocks = r.kv.used_blocks

    def _deliver(self, i: int, req: Request, now: float) -> None:
        rep = self.replicas[i]
        seq = rep.add_request(req, now)
        self.on_delivered(i, seq, now)
        if seq.status is SeqStatus.REJECTED:  # too long: it never runs
            v = self.views[i]
            v.outstanding -= 1
            v.outstanding_tokens -= req.prompt_tokens + req.output_tokens
            return
        self.wake(i, now)

    def on_delivered(self, i: int, seq: Any, now: float) -> None:
        """Replica ``i`` received ``seq`` (status REJECTED if it can never run there)."""

    def wake(self, i: int, now: float) -> None:
        """Make sure replica ``i`` forms a batch at ``now`` if it is idle."""
        if not self.replicas[i].busy and not self._pending[i]:
            self._pending[i] = True
            self._push(now, SCHEDULE, SCHEDULE, i)

    def add_timer(self, t: float, fn: Callable[[float], None]) -> None:
        """Call ``fn(t)`` at simulated time ``t`` (after steps ending at ``t``, before arrivals at ``t``)."""
        heapq.heappush(self._dispatch_times, t)
        self._push(t, TIMER, TIMER, -1, fn)

    # ---- hooks for extensions ------------------------------------------------------------------
    def on_arrival(self, req: Request, now: float) -> None:
        """Route an arriving request (default: ask the router, then deliver after the router's latency)."""
        self._refresh(now)
        j = self.router.route(req, self.views, now)
        self.assign(j, req, now)

    def assign(self, j: int, req: Request, now: float) -> None:
        v = self.views[j]
        v.outstanding += 1
        v.outstanding_tokens += req.prompt_tokens + req.output_tokens
        self.assigned[j] += 1
        if self.router_latency > 0:
            heapq.heappush(self._dispatch_times, now + self.router_latency)
            self._push(now + self.router_latency, DISPATCH, DISPATCH, j, req)
        else:
            self._deliver(j, req, now)

    def on_done(self, i: int, done: list[Any], now: float) -> None:
        """Replica ``i`` finished ``done`` at ``now``."""
        v = self.views[i]
        for seq in done:
            v.outstanding -= 1
            v.outstanding_tokens -= seq.prompt_tokens + seq.output_tokens

    def on_step_end(self, i: int, now: float) -> None:
        """Replica ``i`` is between steps at ``now`` (running sequences may be detached or attached)."""

    def replica_seconds(self, i: int, duration: float) -> float:
        """Seconds replica ``i`` is billed for in a run of ``duration`` (an autoscaler bills lifetimes)."""
        return duration

    def summary_extra(self) -> dict[str, Any]:
        """Extra keys for ``summary["cluster"]`` (an extension's counters: migrations, transfers, ...)."""
        return {}

    def run(self, on_progress: Callable[[int], None] | None = None) -> None:
        heap = self._heap
        self._feed_arrival()
        finished = 0
        now = 0.0
        while heap:
            t, _, _, kind, i, payload = heapq.heappop(heap)
            assert t >= now, "time went backwards"
            now = t
            if kind == STEP_END:
                done = self.replicas[i].finish_step(payload)
                self.on_done(i, done, t)
                if done and on_progress is not None:
                    finished += len(done)
                    on_progress(finished)
                self.on_step_end(i, t)
                if not self._pending[i]:  # the hook may have woken replica i already
                    self._pending[i] = True
                    self._push(t, SCHEDULE, SCHEDULE, i)
            elif kind == ARRIVAL:
                self._feed_arrival()
                self.on_arrival(payload, t)
            elif kind == TIMER:
                heapq.heappop(self._dispatch_times)
                payload(t)
            elif kind == DISPATCH:
                heapq.heappop(self._dispatch_times)
                self._deliver(i, payload, t)
            else:  # SCHEDULE
                self._pending[i] = False
                horizon = min(self.horizon, self._dispatch_times[0]) if self._dispatch_times else self.horizon
                step = self.replicas[i].start_step(t, horizon)
                if step is not None:
                    self._push(step.end, STEP_END, STEP_END, i, step)


def _merge(recs: list[MetricsRecorder], kvs: list[Any]) -> tuple[MetricsRecorder, Any]:
    total_blocks = sum(kv.num_blocks for kv in kvs)
    m = MetricsRecorder(total_blocks)
    for r in recs:
        m.finished.extend(r.finished)
        m.itl_values.extend(r.itl_values)
        m.itl_chunks.extend(r.itl_chunks)
        m.iterations += r.iterations
        m.batch_size_sum += r.batch_size_sum
        m.max_batch = max(m.max_batch, r.max_batch)
    # the cluster's peak KV usage is the highest any replica reached
    peak = max((r.peak_used_blocks / kv.num_blocks for r, kv in zip(recs, kvs)), default=0.0)
    m.peak_used_blocks = peak * total_blocks  # type: ignore[assignment]
    kv = SimpleNamespace(num_blocks=total_blocks, hit_tokens=sum(k.hit_tokens for k in kvs),
                         queried_tokens=sum(k.queried_tokens for k in kvs))
    return m, kv


def _gpu_hours(tp: int, duration_s: float) -> float:
    return tp * duration_s / 3600.0


def simulate_cluster(cfg: SimConfig, requests: list[Request],
                     on_progress: Callable[[int], None] | None = None,
                     simulator: type[ClusterSimulator] | None = None) -> ClusterResult:
    """Run ``requests`` on the cluster ``cfg`` describes (``simulator``: an extension's subclass)."""
    t0 = time.perf_counter()
    has_roles = any(isinstance(p, dict) and p.get("role", "mixed") != "mixed" for p in (cfg.cluster or []))
    if has_roles and getattr(cfg, "autoscaler", "none").lower() != "none":
        raise UserError("an autoscaler cannot be combined with prefill/decode pool roles yet", where="autoscaler")
    if simulator is None and getattr(cfg, "autoscaler", "none").lower() != "none":
        from tokensched.cluster.autoscale import AutoscaleSimulator  # replicas follow load

        simulator = AutoscaleSimulator
    if simulator is None and getattr(cfg, "router", "").lower() == "llumnix":
        from tokensched.cluster.llumnix import LlumnixSimulator

        simulator = LlumnixSimulator
    if simulator is None:
        from tokensched.cluster.disagg import disagg_simulator  # pools with roles: prefill/decode

        simulator = disagg_simulator(cfg)
    sim = (simulator or ClusterSimulator)(cfg, requests)
    sim.run(on_progress)
    return cluster_result(sim, cfg, t0)


def cluster_result(sim: ClusterSimulator, cfg: SimConfig, t0: float) -> ClusterResult:
    """Summarize a finished cluster run (``t0``: its ``perf_counter`` start, for ``wall_s``)."""
    reps = sim.replicas
    rec, kv = _merge([r.metrics for r in reps], [r.kv for r in reps])
    preemptions = sum(r.scheduler.num_preemptions for r in reps)
    summary = summarize(rec, kv, preemptions=preemptions, slo_ttft_s=cfg.slo_ttft, slo_tpot_s=cfg.slo_tpot)
    duration = summary["duration_s"]
    out_tokens = summary["throughput"]["output_tokens_per_s"] * duration

    replica_rows: list[dict[str, Any]] = []
    pool_rows: dict[int, dict[str, Any]] = {}
    gpu_hours = 0.0
    cost: float | None = 0.0
    for i, r in enumerate(reps):
        p = sim.replica_pool[i]
        pool = sim.pools[p]
        info = sim.infos[i]
        s = summarize(r.metrics, r.kv, preemptions=r.scheduler.num_preemptions, slo_ttft_s=cfg.slo_ttft,
                      slo_tpot_s=cfg.slo_tpot)
        gh = _gpu_hours(info["tp"], sim.replica_seconds(i, duration))
        gpu_hours += gh
        if cost is not None:
            cost = None if pool.price_per_gpu_hour is None else cost + gh * pool.price_per_gpu_hour
        served_tokens = sum(x.prompt_tokens + x.output_tokens for x in r.metrics.finished)
        replica_rows.append({
            "replica": i, "pool": pool.name, "gpu": info["gpu"], "tp": info["tp"], "assigned": sim.assigned[i],
            "completed": s["requests"]["completed"], "served_tokens": served_tokens,
            "ttft_p50_s": s["ttft_s"]["p50"], "ttft_p99_s": s["ttft_s"]["p99"], "e2e_p50_s": s["e2e_s"]["p50"],
            "preemptions": s["preemptions"], "prefix_hit_rate": s["prefix_cache"]["hit_rate"],
            "mean_batch": s["batch"]["mean_size"], "peak_kv_usage": s["kv_cache"]["peak_usage"],
        })
        pr = pool_rows.setdefault(p, {"pool": pool.name, "gpu": info["gpu"], "tp": info["tp"],
                                      "replicas": 0, "assigned": 0, "completed": 0, "gpu_hours": 0.0,
                                      "price_per_gpu_hour": pool.price_per_gpu_hour, "seqs": []})
        pr["replicas"] += 1
        pr["assigned"] += sim.assigned[i]
        pr["completed"] += s["requests"]["completed"]
        pr["gpu_hours"] += gh
        pr["seqs"].extend(r.metrics.finished)
    pools = []
    for p in sorted(pool_rows):
        pr = pool_rows[p]
        seqs = pr.pop("seqs")
        rows = [x for x in request_rows(seqs) if x["status"] == "finished"]
        ttfts = sorted(x["ttft_s"] for x in rows)
        pr["ttft_p50_s"] = ttfts[len(ttfts) // 2] if ttfts else None
        pools.append(pr)

    served = [row["served_tokens"] for row in replica_rows]
    assigned = sim.assigned
    mean_served = sum(served) / len(served) if served else 0.0
    mean_assigned = sum(assigned) / len(assigned) if assigned else 0.0
    summary["cluster"] = {
        "replicas": len(reps),
        "router": sim.router.name,
        "imbalance_requests": max(assigned) / mean_assigned if mean_assigned else 1.0,
        "imbalance_tokens": max(served) / mean_served if mean_served else 1.0,
        "gpu_hours": gpu_hours,
        "cost_usd": cost,
        "cost_per_million_output_tokens": (cost / out_tokens * 1e6) if cost is not None and out_tokens else None,
    }
    summary["cluster"].update(sim.summary_extra())
    summary.update(cpu_kv_summary([r.kv for r in reps]))
    summary["pools"] = pools
    summary["wall_s"] = time.perf_counter() - t0
    info = {**sim.infos[0], "replicas": len(reps), "router": sim.router.name}
    return ClusterResult(cfg, summary, request_rows(rec.finished), replica_rows, pools, info)
