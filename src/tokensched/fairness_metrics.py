"""Per-tenant service over time, and the service gap between backlogged tenants, from per-request rows.

VTC (Sheng et al., OSDI'24) defines a tenant's service as weighted tokens, ``input_price`` per prompt token
plus ``output_price`` per generated token, divided by the tenant's weight, and bounds the difference of
service two tenants receive over any interval in which both are *backlogged* (have requests waiting). This
module measures both from :attr:`SimResult.rows <tokensched.simulator.SimResult>` (``tenant``,
``arrival_s``, ``queue_s``, ``ttft_s``, ``finish_s``, ``prompt_tokens``, ``output_tokens``, ``status``), so any
scheduler's run can be compared, not only VTC's.

Approximations (the rows keep three instants per request, not every token):

* the prompt is charged at the request's first scheduling (``arrival_s + queue_s``), as VTC charges at
  admission, even when a long prompt is prefilled in chunks;
* the first output token is charged at the first-token time and the other ``output_tokens - 1`` evenly
  between the first token and the finish; real decoding has gaps (preemption, batch changes);
* a tenant is backlogged while one of its requests waits for its *first* scheduling, from arrival to
  ``arrival_s + queue_s``; waiting after a preemption is not in the rows and does not count;
* windows are ``[start, end)``; service is sampled at their edges, so gaps are measured between edges.
Rejected or unfinished requests (no first token) contribute nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Any, Iterable, Mapping

import numpy as np

from tokensched.errors import UserError


@dataclass(frozen=True)
class ServiceTable:
    """Per-tenant service per time window. ``edges`` has one more entry than each per-window array."""

    edges: np.ndarray  # window boundaries (s)
    service: dict[str, np.ndarray]  # weighted service received in each window (already divided by the weight)
    backlogged: dict[str, np.ndarray]  # True where the tenant had a request waiting during the whole window

    def cumulative(self, tenant: str) -> np.ndarray:
        """Service received from ``edges[0]`` to each edge (length ``len(edges)``)."""
        return np.concatenate(([0.0], np.cumsum(self.service[tenant])))


@dataclass(frozen=True)
class ServiceGap:
    """The largest |W_f(t1,t2) - W_g(t1,t2)| over edge-aligned intervals in which f and g were both backlogged."""

    gap: float
    tenants: tuple[str, str] | None
    start_s: float | None
    end_s: float | None


def _ramp_sum(edges: np.ndarray, starts: np.ndarray, ends: np.ndarray, amounts: np.ndarray) -> np.ndarray:
    """At each edge, the sum of ramps: ``amount * clip((e - start) / (end - start), 0, 1)`` (end > start)."""
    slope = amounts / (ends - starts)
    x = np.concatenate((starts, ends))
    d = np.concatenate((slope, -slope))
    order = np.argsort(x, kind="stable")
    x, d = x[order], d[order]
    cd = np.concatenate(([0.0], np.cumsum(d)))
    cdx = np.concatenate(([0.0], np.cumsum(d * x)))
    k = np.searchsorted(x, edges, side="right")
    return edges * cd[k] - cdx[k]


def _step_sum(edges: np.ndarray, times: np.ndarray, amounts: np.ndarray) -> np.ndarray:
    """At each edge, the sum of ``amounts`` whose time is before it (windows are ``[start, end)``)."""
    order = np.argsort(times, kind="stable")
    c = np.concatenate(([0.0], np.cumsum(amounts[order])))
    return c[np.searchsorted(times[order], edges, side="left")]


def _covered(edges: np.ndarray, intervals: list[tuple[float, float]]) -> np.ndarray:
    """For each window [edges[i], edges[i+1]), is it inside the union of ``intervals``?"""
    out = np.zeros(len(edges) - 1, dtype=bool)
    merged: list[list[float]] = []
    for a, b in sorted(intervals):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    for a, b in merged:
        i = int(np.searchsorted(edges, a, side="left"))  # first window starting at or after a
        j = int(np.searchsorted(edges, b, side="right")) - 1  # last edge at or before b
        if j > i:
            out[i:j] = True
    return out


def tenant_service(
    rows: Iterable[Mapping[str, Any]],
    window_s: float,
    *,
    input_price: float = 1.0,
    output_price: float = 2.0,
    weights: Mapping[str, float] | None = None,
    start_s: float | None = None,
    end_s: float | None = None,
) -> ServiceTable:
    """Weighted service of each tenant in consecutive windows of ``window_s`` seconds (see module docstring)."""
    if not (window_s > 0 and np.isfinite(window_s)):
        raise UserError(f"service window must be a positive number of seconds, got {window_s!r}")
    weights = weights or {}
    by_tenant: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        by_tenant.setdefault(str(r["tenant"]), []).append(r)
    ok = [r for rs in by_tenant.values() for r in rs if r.get("ttft_s") is not None and r.get("finish_s") is not None]
    t0 = start_s if start_s is not None else min((float(r["arrival_s"]) for rs in by_tenant.values() for r in rs),
                                                 default=0.0)
    if end_s is not None:
        n = max(1, int(np.ceil((end_s - t0) / window_s - 1e-9)))  # tolerate end_s = t0 + k * window_s rounding
    else:  # the last window must contain the last finish
        n = int((max((float(r["finish_s"]) for r in ok), default=t0) - t0) // window_s) + 1
    edges = t0 + window_s * np.arange(n + 1)
    service: dict[str, np.ndarray] = {}
    backlogged: dict[str, np.ndarray] = {}
    for tenant, rs in by_tenant.items():
        w = float(weights.get(tenant, 1.0))
        done = [r for r in rs if r.get("ttft_s") is not None and r.get("finish_s") is not None]
        arr = np.array([float(r["arrival_s"]) for r in done])
        sched = arr + np.array([float(r["queue_s"]) for r in done])
        first = arr + np.array([float(r["ttft_s"]) for r in done])
        fin = np.array([float(r["finish_s"]) for r in done])
        p = np.array([float(r["prompt_tokens"]) for r in done])
        o = np.array([float(r["output_tokens"]) for r in done])
        cum = _step_sum(edges, sched, input_price * p) + _step_sum(edges, first, output_price * np.minimum(o, 1.0))
        rest = output_price * np.maximum(o - 1.0, 0.0)
        ramp = (fin > first) & (rest > 0)
        cum += _step_sum(edges, fin[~ramp], rest[~ramp])
        if ramp.any():
            cum += _ramp_sum(edges, first[ramp], fin[ramp], rest[ramp])
        service[tenant] = np.diff(cum) / w
        waits = [(float(r["arrival_s"]), float(r["arrival_s"]) + float(r["queue_s"]))
                 for r in rs if r.get("queue_s") is not None]
        backlogged[tenant] = _covered(edges, [(a, b) for a, b in waits if b > a])
    return ServiceTable(edges, service, backlogged)


def max_service_gap(table: ServiceTable, tenants: Iterable[str] | None = None,
                    until_s: float | None = None) -> ServiceGap:
    """Largest service difference between two tenants over an interval in which both stayed backlogged.

    For each pair and each run of consecutive windows in which both were backlogged, the gap is
    ``max(D) - min(D)`` of ``D(t) = W_f(t0, t) - W_g(t0, t)`` at the run's edges: the largest
    ``|W_f(t1, t2) - W_g(t1, t2)|`` over edge-aligned ``t1 < t2`` inside the run (VTC's fairness measure).
    ``until_s`` ignores windows that end after it.
    """
    names = sorted(table.service) if tenants is None else list(tenants)
    limit = len(table.edges) - 1
    if until_s is not None:
        limit = int(np.searchsorted(table.edges, until_s, side="right")) - 1
    best = ServiceGap(0.0, None, None, None)
    for f, g in combinations(names, 2):
        both = (table.backlogged[f] & table.backlogged[g])[:max(limit, 0)]
        d = table.cumulative(f) - table.cumulative(g)
        i = 0
        while i < len(both):
            if not both[i]:
                i += 1
                continue
            j = i
            while j < len(both) and both[j]:
                j += 1
            seg = d[i:j + 1]  # edges of windows i..j-1
            lo, hi = int(np.argmin(seg)), int(np.argmax(seg))
            gap = float(seg[hi] - seg[lo])
            if gap > best.gap:
                a, b = sorted((lo, hi))
                best = ServiceGap(gap, (f, g), float(table.edges[i + a]), float(table.edges[i + b]))
            i = j
    return best
