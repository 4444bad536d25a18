"""Disaggregated prefill/decode vs colocated at equal GPU count on long prompts: TTFT and TPOT SLO attainment.

Papers: Splitwise (Patel et al., ISCA'24; papers.md A6 #155): 1.4x throughput at 20 % lower cost, or 2.35x
throughput at the same cost and power. DistServe (Zhong et al., OSDI'24): up to 4.48x goodput (the highest rate
at which 90 % of requests meet both the TTFT and the TPOT SLO) or 10.2x tighter SLOs than colocated vLLM.

Setup: the ``long-context`` preset (Mooncake conversation lengths: prompt mean 13.3k tokens, p99 85k; output mean
368; Poisson arrivals; seed 1, 400 requests), Llama-3.1-8B, 8 x H100 as 8 replicas of tp 1, roofline timing,
vLLM scheduler (chunked prefill) on every replica. Colocated: 8 mixed replicas behind ``least-outstanding``.
Disaggregated: P prefill + (8 - P) decode replicas, KV over the default link (NVLink 450 GB/s, same node).
SLOs: TTFT 2 s, TPOT 30 ms. Attainment = requests meeting both / all requests.

1. the pool-sizing search (``search_pool_split``) at 8 req/s: every P:D split and colocated;
2. the best split with and without layer-wise KV transfer overlap;
3. colocated vs the best split at 4 and 12 req/s.

Run: python experiments/disagg_vs_colocated.py   (about 55 s here)
"""

from __future__ import annotations

import time

from tokensched.cluster.disagg_sizing import evaluate, search_pool_split
from tokensched.config import SimConfig
from tokensched.workload import load_workload

GPUS = 8
SLO_TTFT, SLO_TPOT = 2.0, 0.030


def requests(qps: float):  # type: ignore[no-untyped-def]
    return load_workload("long-context", num_requests=400, qps=qps, seed=1).requests


def fmt(r: dict) -> str:  # type: ignore[type-arg]
    return (f"{r['split']:>13}  both {r['attainment']:6.1%}  ttft {r['ttft_attainment']:6.1%}  "
            f"tpot {r['tpot_attainment']:6.1%}  goodput {r['goodput_rps']:5.2f} req/s  "
            f"ttft p50/p99 {r['ttft_p50_s']:6.3f}/{r['ttft_p99_s']:6.2f} s  "
            f"tpot p50/p99 {r['tpot_p50_s'] * 1e3:5.1f}/{r['tpot_p99_s'] * 1e3:6.1f} ms  "
            f"out {r['output_tokens_per_s']:6.0f} tok/s  kv {r['kv_transferred_gb']:5.0f} GB")


def main() -> None:
    t0 = time.perf_counter()
    cfg = SimConfig(router="least-outstanding", slo_ttft=SLO_TTFT, slo_tpot=SLO_TPOT)
    print(f"1. pool-sizing search, {GPUS} x H100, long-context at 8 req/s (400 requests), "
          f"SLO TTFT {SLO_TTFT} s, TPOT {SLO_TPOT * 1e3:.0f} ms")
    reqs = requests(8.0)
    res = search_pool_split(cfg, reqs, GPUS)
    for r in res.rows:
        print("  " + fmt(r))
    best = res.best
    p, d = best["prefill_replicas"], best["decode_replicas"]
    print(f"  best: {best['split']}")
    if p == 0:
        print("  (colocated won; the remaining sections use 4P:4D)")
        p, d = 4, 4
    pools = [{"name": "prefill", "role": "prefill", "replicas": p}, {"name": "decode", "role": "decode", "replicas": d}]
    print(f"\n2. {p}P:{d}D at 8 req/s with layer-wise KV transfer overlap")
    over = cfg.model_copy(update={"cluster": pools, "disagg": {"layerwise_overlap": True}})
    print("  " + fmt(evaluate(over, reqs, f"{p}P:{d}D+lw", p, d)))
    print(f"\n3. colocated x{GPUS} vs {p}P:{d}D at other loads")
    for qps in (4.0, 12.0):
        reqs = requests(qps)
        colo = cfg.model_copy(update={"replicas": GPUS})
        dis = cfg.model_copy(update={"cluster": pools})
        print(f"  {qps:g} req/s")
        print("  " + fmt(evaluate(colo, reqs, f"colocated x{GPUS}", 0, 0)))
        print("  " + fmt(evaluate(dis, reqs, f"{p}P:{d}D", p, d)))
    print(f"\nwall {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
