"""An autoscaler following the bursty Azure LLM 2023 code trace vs fixed-size clusters: SLO attainment vs GPU-hours.

Question (issue "Clusters ... autoscaling"): does a load-based autoscaler with a realistic cold start buy the
attainment of a large fixed cluster for the GPU-hours of a small one on a bursty trace?

Workload: the first 30 minutes of ``../shared/traces/azure_llm_2023/AzureLLMInferenceTrace_code.csv``
(5,740 requests, prompt mean ~2k tokens, output mean ~28 tokens; arrivals as recorded). The trace is very bursty:
per-minute counts swing between 0 and 632 (up to ~10 req/s, ~20k prompt tokens/s) with several silent minutes.
Cluster: Llama-3.1-70B, TP=4 on H100 per replica (so one replica = 4 GPUs), vLLM engines, router
``least-outstanding``. SLO: TTFT <= 2 s and TPOT <= 100 ms (both must hold).

Autoscaler (``--autoscaler load``, docs/cluster.md): requests in flight per routable replica, a decision every
5 s (Dynamo planner's load-based interval), between 1 and 8 replicas, starting with 1; variants differ in the
scale-out threshold, the cold start (30 s: weights already in host memory / fast storage; 120 s: a 70B model
pulled and loaded from scratch), the floor (``min_replicas``) and the scale-in stabilization window (default
60 s; 300 s is Kubernetes' HPA default [from general knowledge]).

Run: ``python experiments/autoscale_azure_code.py`` (about 80 s here).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from tokensched.cluster.sim import simulate_cluster
from tokensched.config import SimConfig
from tokensched.workload import load_workload

TRACE = Path(__file__).resolve().parents[2] / "shared" / "traces" / "azure_llm_2023" / "AzureLLMInferenceTrace_code.csv"
WINDOW = (0.0, 1800.0)
BASE: dict[str, Any] = dict(model="llama-3.1-70b", tp=4, gpu="h100", router="least-outstanding", slo_ttft=2.0,
                            slo_tpot=0.1, price_per_gpu_hour=2.0)
FIXED = (2, 4, 6, 8)
AUTO: tuple[tuple[str, dict[str, Any]], ...] = (
    ("auto out>4 in<1, cold 30s", dict(scale_out_threshold=4, scale_in_threshold=1, cold_start_s=30)),
    ("auto out>2 in<0.5, cold 30s", dict(scale_out_threshold=2, scale_in_threshold=0.5, cold_start_s=30)),
    ("auto out>2 in<0.5, cold 120s", dict(scale_out_threshold=2, scale_in_threshold=0.5, cold_start_s=120)),
    ("auto out>2, min 2, cold 30s", dict(scale_out_threshold=2, scale_in_threshold=0.5, cold_start_s=30,
                                         min_replicas=2)),
    ("auto out>2, in-delay 300s, cold 30s", dict(scale_out_threshold=2, scale_in_threshold=0.5, cold_start_s=30,
                                                 scale_in_delay_s=300)),
)


def main() -> int:
    if not TRACE.exists():
        print(f"needs the Azure code trace at {TRACE} (../shared)", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    reqs = load_workload(str(TRACE), window=WINDOW).requests
    print(f"Azure code 2023, first 30 min ({len(reqs)} requests); Llama-3.1-70B TP4 on H100 per replica; "
          "SLO TTFT<=2s & TPOT<=100ms")
    print(f"{'cluster':36} {'attain':>6} {'TTFT p50':>8} {'p99':>6} {'GPU-h':>6} {'$':>6} {'mean rep':>8} "
          f"{'peak':>4} {'outs':>4} {'ins':>4}")
    for n in FIXED:
        s = simulate_cluster(SimConfig(**BASE, replicas=n), reqs).summary
        c = s["cluster"]
        print(f"{f'fixed {n}':36} {s['slo']['attainment']:6.3f} {s['ttft_s']['p50']:8.2f} {s['ttft_s']['p99']:6.2f} "
              f"{c['gpu_hours']:6.2f} {c['cost_usd']:6.2f} {n:8.2f} {n:4d} {'-':>4} {'-':>4}")
    for label, opts in AUTO:
        cfg = SimConfig(**BASE, replicas=8, autoscaler="load",
                        autoscaler_options={"interval_s": 5, "min_replicas": 1, "max_replicas": 8, **opts})
        s = simulate_cluster(cfg, reqs).summary
        c = s["cluster"]
        mean_rep = c["gpu_hours"] * 3600 / BASE["tp"] / s["duration_s"]
        print(f"{label:36} {s['slo']['attainment']:6.3f} {s['ttft_s']['p50']:8.2f} {s['ttft_s']['p99']:6.2f} "
              f"{c['gpu_hours']:6.2f} {c['cost_usd']:6.2f} {mean_rep:8.2f} {c['replicas_peak']:4d} "
              f"{c['scale_outs']:4d} {c['scale_ins']:4d}")
    print(f"\n({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
