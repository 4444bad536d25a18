"""Autoscaling: a load-based policy that adds and removes replicas while the cluster runs.

Modelled on NVIDIA Dynamo's planner in its load-based mode (``../shared/reference/routers-and-agent-schedulers.md``
A3 "Planner / SLO": a decision every few seconds from live engine metrics): every ``interval_s`` the policy
reads the mean per-replica load and

* scales out when it exceeds ``scale_out_threshold``, to the replica count that brings it back to the threshold
  (``ceil(total load / scale_out_threshold)``, at most ``max_replicas``; Dynamo's planner likewise computes a
  desired replica count from load and per-replica capacity). A new replica is billed from that decision but
  becomes routable only ``cold_start_s`` later (model load);
* scales in by one replica when it is below ``scale_in_threshold`` (down to ``min_replicas``), but not within
  ``scale_in_delay_s`` of the last scale-out (a stabilization window against flapping, like Kubernetes'
  scale-down stabilization [from general knowledge]). The replica is
  *drained*: the router stops sending it work, it finishes what it has, and it is removed (and stops being
  billed) once it is idle. No request is killed (Dynamo's planner documents that its scale-down does kill
  in-flight requests; we model the graceful variant Llumnix argues for).

Load (``metric``): ``requests`` = requests in flight per routable replica (router-local bookkeeping, fresh);
``kv`` = reported KV-cache usage (fraction of blocks, stale by ``report_interval``), averaged over routable
replicas. While replicas are warming up they count in the denominator of the scale-out test, so one burst does
not order a replica every interval during a cold start. A scale-out first cancels a drain in progress (that
replica is loaded already, so it is routable at once).

The cluster pre-builds ``replicas`` (= the largest size, ``max_replicas``) replicas; inactive ones are invisible
to the router, which sees a filtered list of views (indices mapped back) and is rebuilt whenever the routable
set changes (prefix indexes of cache-aware routers are kept per replica across rebuilds).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tokensched.cluster.routers import _PrefixIndex
from tokensched.cluster.sim import ClusterSimulator
from tokensched.config import SimConfig
from tokensched.errors import UserError
from tokensched.request import Request

OFF, WARMING, ACTIVE, DRAINING = "off", "warming", "active", "draining"
AUTOSCALERS = ("none", "load")


class AutoscaleOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    metric: str = Field("requests", pattern="^(requests|kv)$", description="requests in flight or KV usage")
    interval_s: float = Field(5.0, gt=0, description="seconds between decisions (Dynamo load-based mode: 5 s)")
    scale_out_threshold: float = Field(32.0, gt=0, description="scale out when mean load per replica exceeds this")
    scale_in_threshold: float = Field(8.0, ge=0, description="scale in when mean load per replica is below this")
    min_replicas: int = Field(1, ge=1)
    max_replicas: int | None = Field(None, ge=1, description="default: the config's replicas")
    initial_replicas: int | None = Field(None, ge=1, description="default: min_replicas")
    cold_start_s: float = Field(30.0, ge=0, description="decision to routable (model load)")
    scale_in_delay_s: float = Field(60.0, ge=0, description="no scale-in this soon after a scale-out")


def autoscale_options(cfg: SimConfig) -> AutoscaleOptions:
    """Validate ``cfg.autoscaler_options`` (one-line UserErrors naming the option)."""
    raw = getattr(cfg, "autoscaler_options", {}) or {}
    try:
        o = AutoscaleOptions(**{k.replace("-", "_"): v for k, v in raw.items()})
    except ValidationError as e:
        err = e.errors()[0]
        raise UserError(f"option '{'.'.join(str(x) for x in err['loc'])}' of autoscaler load: {err['msg']}",
                        where="autoscaler-options") from None
    mx = o.max_replicas if o.max_replicas is not None else cfg.replicas
    ini = o.initial_replicas if o.initial_replicas is not None else o.min_replicas
    if mx > cfg.replicas:
        raise UserError(f"max_replicas {mx} exceeds replicas {cfg.replicas} (the pool the autoscaler draws from)",
                        where="autoscaler-options")
    if not o.min_replicas <= ini <= mx:
        raise UserError(f"need min_replicas <= initial_replicas <= max_replicas, got {o.min_replicas}, {ini}, {mx}",
                        where="autoscaler-options")
    if o.scale_in_threshold >= o.scale_out_threshold:
        raise UserError("scale_in_threshold must be below scale_out_threshold", where="autoscaler-options")
    return o.model_copy(update={"max_replicas": mx, "initial_replicas": ini})


class AutoscaleSimulator(ClusterSimulator):
    """A cluster whose replica count follows load (see the module docstring)."""

    def __init__(self, cfg: SimConfig, requests: list[Request]) -> None:
        if cfg.cluster:
            raise UserError("the autoscaler needs one pool of identical replicas (--replicas), not a 'cluster' list",
                            where="autoscaler")
        if cfg.router.lower() == "llumnix":
            raise UserError("autoscaler load cannot be combined with router llumnix", where="autoscaler")
        self.opts = autoscale_options(cfg)
        super().__init__(cfg, requests)
        o = self.opts
        n = len(self.replicas)
        self.state = [OFF] * n
        self.lifetimes: list[list[list[float]]] = [[] for _ in range(n)]  # [start, end] per existence
        t0 = min((r.arrival_s for r in requests), default=0.0)
        self.t0 = t0
        for i in range(o.initial_replicas or 1):
            self.state[i] = ACTIVE
            self.lifetimes[i].append([t0, float("inf")])
        self.timeline: list[tuple[float, int]] = [(t0, o.initial_replicas or 1)]
        self.scale_outs = 0
        self.scale_ins = 0
        self._last_out = -float("inf")
        self._gen = 0
        idx = getattr(self.router, "index", None)
        self._prefix_sets = idx.sets if isinstance(idx, _PrefixIndex) else None
        self.active: list[int] = []
        self._rebuild_router()
        self.add_timer(t0 + o.interval_s, self._tick)

    # ---- routing over the routable replicas only ------------------------------------------------
    def _rebuild_router(self) -> None:
        self.active = [i for i, s in enumerate(self.state) if s == ACTIVE]
        sub = [replace(self.views[r], index=k) for k, r in enumerate(self.active)]
        self._gen += 1
        router = type(self.router)(self.router.options, sub, seed=self.cfg.seed + self._gen)
        idx = getattr(router, "index", None)
        if self._prefix_sets is not None and isinstance(idx, _PrefixIndex):
            idx.sets = [self._prefix_sets[r] for r in self.active]
        self.router = router

    def on_arrival(self, req: Request, now: float) -> None:
        self._refresh(now)
        sub = [replace(self.views[r], index=k) for k, r in enumerate(self.active)]
        k = self.router.route(req, sub, now)
        self.assign(self.active[k], req, now)

    # ---- the policy ----------------------------------------------------------------------------
    def load(self) -> float:
        """Mean load per routable replica (the metric the thresholds compare against)."""
        if not self.active:
            return 0.0
        if self.opts.metric == "kv":
            return sum(self.views[r].kv_usage for r in self.active) / len(self.active)
        return sum(self.views[r].outstanding for r in self.active) / len(self.active)

    def _count(self) -> int:
        return sum(s != OFF for s in self.state)

    def _mark(self, now: float) -> None:
        n = self._count()
        if self.timeline[-1][0] == now:
            self.timeline[-1] = (now, n)
        elif self.timeline[-1][1] != n:
            self.timeline.append((now, n))

    def _work_left(self) -> bool:
        return self._next_arrival < len(self.requests) or self.horizon != float("inf") or any(
            v.outstanding for v in self.views) or WARMING in self.state

    def _tick(self, now: float) -> None:
        o = self.opts
        self._refresh(now)
        for i, s in enumerate(self.state):
            if s == DRAINING:
                self._maybe_remove(i, now)
        load = self.load()
        warming = self.state.count(WARMING)
        out_load = load * len(self.active) / (len(self.active) + warming) if self.active else load
        if out_load > o.scale_out_threshold:
            want = math.ceil(load * len(self.active) / o.scale_out_threshold) - len(self.active) - warming
            for _ in range(max(1, want)):
                self._scale_out(now)
            self._last_out = now
        elif (load < o.scale_in_threshold and warming == 0 and len(self.active) > o.min_replicas
              and now - self._last_out >= o.scale_in_delay_s):
            self._scale_in(now)
        if self._work_left():
            self.add_timer(now + o.interval_s, self._tick)

    def _scale_out(self, now: float) -> None:
        o = self.opts
        draining = [i for i, s in enumerate(self.state) if s == DRAINING]
        if draining:  # cancel a drain: that replica is loaded already
            self.state[draining[0]] = ACTIVE
            self.scale_outs += 1
            self._rebuild_router()
            return
        if self._count() >= (o.max_replicas or 1):
            return
        i = self.state.index(OFF)
        self.state[i] = WARMING
        self.lifetimes[i].append([now, float("inf")])
        self.scale_outs += 1
        self._mark(now)
        self.add_timer(now + o.cold_start_s, lambda t, i=i: self._activate(i, t))

    def _activate(self, i: int, now: float) -> None:
        self.state[i] = ACTIVE
        self._rebuild_router()

    def _scale_in(self, now: float) -> None:
        # drain the routable replica with the least work (ties: the highest index, the newest)
        i = min(self.active, key=lambda r: (self.views[r].outstanding, -r))
        self.state[i] = DRAINING
        self.scale_ins += 1
        self._rebuild_router()
        self._maybe_remove(i, now)

    def _maybe_remove(self, i: int, now: float) -> None:
        if self.state[i] == DRAINING and self.views[i].outstanding == 0 and not self.replicas[i].busy:
            self.state[i] = OFF
            self.lifetimes[i][-1][1] = now
            self._mark(now)

    def on_step_end(self, i: int, now: float) -> None:
        self._maybe_remove(i, now)

    # ---- billing and reporting -----------------------------------------------------------------
    def replica_seconds(self, i: int, duration: float) -> float:
        """Seconds replica ``i`` existed within the run's window [first arrival, first arrival + duration]."""
        end = self.t0 + duration
        return sum(max(0.0, min(b, end) - max(a, self.t0)) for a, b in self.lifetimes[i])

    def summary_extra(self) -> dict[str, Any]:
        used = [i for i in range(len(self.replicas)) if self.lifetimes[i]]
        assigned = [self.assigned[i] for i in used]
        mean = sum(assigned) / len(assigned) if assigned else 0.0
        served = [sum(x.prompt_tokens + x.output_tokens for x in self.replicas[i].metrics.finished) for i in used]
        mean_served = sum(served) / len(served) if served else 0.0
        return {
            "autoscaler": "load",
            "replicas_peak": max(n for _, n in self.timeline),
            "replicas_used": len(used),
            "scale_outs": self.scale_outs,
            "scale_ins": self.scale_ins,
            "replica_timeline": [[t, n] for t, n in self.timeline],
            "imbalance_requests": max(assigned) / mean if mean else 1.0,
            "imbalance_tokens": max(served) / mean_served if mean_served else 1.0,
        }
