"""Pool sizing for disaggregated serving: which prefill:decode split of a GPU budget meets the SLOs best.

DistServe (Zhong et al., OSDI'24) picks the parallelism and replica counts of each phase that maximise goodput
under both a TTFT and a TPOT SLO; Splitwise (Patel et al., ISCA'24) searches pool sizes for a throughput target.
:func:`search_pool_split` is the simple version of both: every replica has the run's ``tp`` (and GPU, model),
``total_gpus // tp`` replicas are split every way ``P:D`` with ``P, D >= 1``, and each split (plus, optionally,
the colocated cluster of the same size) is simulated on the same requests. The best has the highest attainment of
both SLOs together; ties go to the higher throughput, then to fewer prefill replicas.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tokensched.cluster.sim import simulate_cluster
from tokensched.config import SimConfig
from tokensched.errors import UserError
from tokensched.request import Request


@dataclass
class SizingResult:
    rows: list[dict[str, Any]]  # one per split tried, in order: colocated first, then P = 1, 2, ...
    best: dict[str, Any]


def _attainment(rows: list[dict[str, Any]], n: int, key: str, slo: float) -> float:
    ok = sum(1 for r in rows if r["status"] == "finished" and r[key] is not None and r[key] <= slo)
    return ok / n if n else 0.0


def evaluate(cfg: SimConfig, requests: list[Request], label: str, prefill: int, decode: int) -> dict[str, Any]:
    """Simulate ``cfg`` and report its SLO attainment (TTFT, TPOT, both) and throughput."""
    assert cfg.slo_ttft is not None and cfg.slo_tpot is not None
    r = simulate_cluster(cfg, requests)
    s = r.summary
    n = len(requests)
    c = s["cluster"]
    return {
        "split": label, "prefill_replicas": prefill, "decode_replicas": decode,
        "gpus": sum(row["tp"] for row in r.replicas),
        "ttft_attainment": _attainment(r.rows, n, "ttft_s", cfg.slo_ttft),
        "tpot_attainment": _attainment(r.rows, n, "tpot_s", cfg.slo_tpot),
        "attainment": s["slo"]["attainment"] or 0.0,
        "goodput_rps": s["slo"]["goodput_requests_per_s"] or 0.0,
        "ttft_p50_s": s["ttft_s"]["p50"], "ttft_p99_s": s["ttft_s"]["p99"],
        "tpot_p50_s": s["tpot_s"]["p50"], "tpot_p99_s": s["tpot_s"]["p99"],
        "output_tokens_per_s": s["throughput"]["output_tokens_per_s"],
        "kv_transferred_gb": c.get("kv_transferred_bytes", 0) / 1e9,
    }


def search_pool_split(cfg: SimConfig, requests: list[Request], total_gpus: int, *,
                      colocated: bool = True) -> SizingResult:
    """Try every prefill:decode split of ``total_gpus`` (replicas of ``cfg.tp`` GPUs each) on ``requests``."""
    if cfg.slo_ttft is None or cfg.slo_tpot is None:
        raise UserError("the pool-sizing search needs both slo-ttft and slo-tpot", where="slo")
    n = total_gpus // cfg.tp
    if n < 2:
        raise UserError(f"{total_gpus} GPUs make {n} replica(s) of tp {cfg.tp}; a split needs at least 2",
                        where="total_gpus")
    base = cfg.model_copy(update={"cluster": None, "replicas": n})
    rows: list[dict[str, Any]] = []
    if colocated:
        rows.append(evaluate(base.model_copy(update={"disagg": {}}), requests, f"colocated x{n}", 0, 0))
    for p in range(1, n):
        pools = [{"name": "prefill", "role": "prefill", "replicas": p},
                 {"name": "decode", "role": "decode", "replicas": n - p}]
        rows.append(evaluate(base.model_copy(update={"cluster": pools}), requests, f"{p}P:{n - p}D", p, n - p))
    best = max(rows, key=lambda r: (r["attainment"], r["output_tokens_per_s"], -r["prefill_replicas"]))
    return SizingResult(rows, best)
