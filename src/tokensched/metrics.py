"""Per-request and per-run metrics, and the stable summary JSON.

Recording is cheap in the hot loop (append a float, bump a counter); everything else is computed once at
the end. Inter-token latencies of a macro-step are stored once with a weight (the batch size) instead of
once per token. Aggregates are computed over values sorted first, so the result depends only on the
multiset of values, not on how the simulator grouped them: that is what makes macro-stepping
bit-identical to single steps.

Summary JSON (times in seconds, stable keys; see docs/metrics.md)::

    {"requests": {"total", "completed", "failed"}, "duration_s",
     "throughput": {"requests_per_s", "input_tokens_per_s", "output_tokens_per_s"},
     "ttft_s", "tpot_s", "itl_s", "e2e_s", "queue_s": {"mean", "p50", "p90", "p99"},
     "prefix_cache": {"hit_rate", "hit_tokens", "queried_tokens"}, "preemptions",
     "slo": {"ttft_s", "tpot_s", "attainment", "goodput_requests_per_s"},
     "batch": {"iterations", "mean_size", "max_size"}, "kv_cache": {"blocks", "peak_usage"}, "wall_s"}
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from tokensched.sequence import Sequence, SeqStatus

if TYPE_CHECKING:
    from tokensched.kv_cache import KVCacheManager
    from tokensched.scheduler import Scheduler

PERCENTILES = (50, 90, 99)


@dataclass
class MetricsRecorder:
    kv_blocks: int
    finished: list[Sequence] = field(default_factory=list)
    itl_values: list[float] = field(default_factory=list)  # one per token (weight 1)
    itl_chunks: list[tuple[np.ndarray, int]] = field(default_factory=list)  # (values, weight) from macro-steps
    iterations: int = 0
    batch_size_sum: int = 0
    max_batch: int = 0
    peak_used_blocks: int = 0
    # timeline: one row per scheduling decision (a macro-step is one row)
    t_time: list[float] = field(default_factory=list)
    t_iters: list[int] = field(default_factory=list)
    t_batch: list[int] = field(default_factory=list)
    t_running: list[int] = field(default_factory=list)
    t_waiting: list[int] = field(default_factory=list)
    t_used_blocks: list[int] = field(default_factory=list)

    def on_step(self, now: float, iterations: int, batch_size: int, sched: Scheduler, kv: KVCacheManager) -> None:
        self.iterations += iterations
        self.batch_size_sum += batch_size * iterations
        if batch_size > self.max_batch:
            self.max_batch = batch_size
        used = kv.used_blocks  # after this step's allocation; usage only grows within a macro-step
        if used > self.peak_used_blocks:
            self.peak_used_blocks = used
        self.t_time.append(now)
        self.t_iters.append(iterations)
        self.t_batch.append(batch_size)
        self.t_running.append(len(sched.running))
        self.t_waiting.append(sched.num_waiting)
        self.t_used_blocks.append(used)

    def on_finish(self, seq: Sequence) -> None:
        self.finished.append(seq)

    def itl_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        vals = [np.asarray(self.itl_values, dtype=np.float64)] + [c for c, _ in self.itl_chunks]
        wts = [np.ones(len(self.itl_values), dtype=np.int64)] + [
            np.full(len(c), w, dtype=np.int64) for c, w in self.itl_chunks
        ]
        return np.concatenate(vals), np.concatenate(wts)


def _stats(values: np.ndarray, weights: np.ndarray | None = None) -> dict[str, float | None]:
    """Mean and linear-interpolated percentiles of a (weighted) sample, independent of input order."""
    if len(values) == 0:
        return {"mean": None, "p50": None, "p90": None, "p99": None}
    if weights is None:
        weights = np.ones(len(values), dtype=np.int64)
    # Canonical form: distinct values with their total weight, so (x, 3) and three (x, 1) agree exactly.
    v, inv = np.unique(values, return_inverse=True)
    w = np.bincount(inv, weights=weights).astype(np.int64)
    n = int(w.sum())
    mean = float(np.add.reduce(v * w) / n)
    cum = np.cumsum(w)  # cum[i] - 1 is the last expanded index held by v[i]
    out: dict[str, float | None] = {"mean": mean}
    for p in PERCENTILES:
        pos = p / 100.0 * (n - 1)
        lo = math.floor(pos)
        frac = pos - lo
        i = int(np.searchsorted(cum, lo + 1, side="left"))
        j = int(np.searchsorted(cum, min(lo + 2, n), side="left"))
        out[f"p{p}"] = float(v[i] + (v[j] - v[i]) * frac)
    return out


def request_rows(seqs: list[Sequence]) -> list[dict[str, Any]]:
    """Per-request results in arrival order (ids as given)."""
    rows = []
    for s in sorted(seqs, key=lambda s: (s.request.arrival_s, s.id)):
        r = s.request
        ok = s.status is SeqStatus.FINISHED
        ttft = s.first_token_s - r.arrival_s if ok and s.first_token_s is not None else None
        e2e = s.finish_s - r.arrival_s if ok and s.finish_s is not None else None
        tpot = ((e2e - ttft) / (r.output_tokens - 1) if r.output_tokens > 1 else 0.0) if ok else None  # type: ignore[operator]
        rows.append({
            "id": r.id, "arrival_s": r.arrival_s, "prompt_tokens": r.prompt_tokens,
            "output_tokens": r.output_tokens, "tenant": r.tenant, "status": s.status.name.lower(),
            "queue_s": s.first_scheduled_s - r.arrival_s if s.first_scheduled_s is not None else None,
            "ttft_s": ttft, "tpot_s": tpot, "e2e_s": e2e, "itl_max_s": s.itl_max_s if ok else None,
            "preemptions": s.preemptions, "prefix_hit_tokens": s.prefix_hit_tokens or 0,
            "finish_s": s.finish_s, "error": s.reject_reason,
        })
    return rows


def summarize(
    rec: MetricsRecorder,
    kv: KVCacheManager,
    *,
    preemptions: int,
    slo_ttft_s: float | None = None,
    slo_tpot_s: float | None = None,
) -> dict[str, Any]:
    rows = request_rows(rec.finished)
    done = [r for r in rows if r["status"] == "finished"]
    total, completed = len(rows), len(done)
    first_arrival = min((r["arrival_s"] for r in rows), default=0.0)
    last_finish = max((r["finish_s"] for r in done), default=first_arrival)
    duration = last_finish - first_arrival

    def col(name: str) -> np.ndarray:
        return np.array([r[name] for r in done], dtype=np.float64)

    def per_s(x: float) -> float:
        return x / duration if duration > 0 else 0.0

    itl_v, itl_w = rec.itl_arrays()
    met = 0
    any_slo = slo_ttft_s is not None or slo_tpot_s is not None
    for s in rec.finished:
        if s.status is not SeqStatus.FINISHED:
            continue
        req = s.request
        t_slo = req.slo_ttft_s if req.slo_ttft_s is not None else slo_ttft_s
        p_slo = req.slo_tpot_s if req.slo_tpot_s is not None else slo_tpot_s
        any_slo = any_slo or t_slo is not None or p_slo is not None
        ttft = s.first_token_s - req.arrival_s  # type: ignore[operator]
        tpot = (s.finish_s - s.first_token_s) / (req.output_tokens - 1) if req.output_tokens > 1 else 0.0  # type: ignore[operator]
        if (t_slo is None or ttft <= t_slo) and (p_slo is None or tpot <= p_slo):
            met += 1
    return {
        "requests": {"total": total, "completed": completed, "failed": total - completed},
        "duration_s": duration,
        "throughput": {
            "requests_per_s": per_s(completed),
            "input_tokens_per_s": per_s(sum(r["prompt_tokens"] for r in done)),
            "output_tokens_per_s": per_s(sum(r["output_tokens"] for r in done)),
        },
        "ttft_s": _stats(col("ttft_s")),
        "tpot_s": _stats(col("tpot_s")),
        "itl_s": _stats(itl_v, itl_w),
        "e2e_s": _stats(col("e2e_s")),
        "queue_s": _stats(col("queue_s")),
        "prefix_cache": {
            "hit_rate": kv.hit_tokens / kv.queried_tokens if kv.queried_tokens else 0.0,
            "hit_tokens": kv.hit_tokens,
            "queried_tokens": kv.queried_tokens,
        },
        "preemptions": preemptions,
        "slo": {
            "ttft_s": slo_ttft_s,
            "tpot_s": slo_tpot_s,
            "attainment": met / total if any_slo and total else None,
            "goodput_requests_per_s": per_s(met) if any_slo else None,
        },
        "batch": {
            "iterations": rec.iterations,
            "mean_size": rec.batch_size_sum / rec.iterations if rec.iterations else 0.0,
            "max_size": rec.max_batch,
        },
        "kv_cache": {"blocks": kv.num_blocks, "peak_usage": rec.peak_used_blocks / kv.num_blocks},
    }
