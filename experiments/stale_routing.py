"""Stale router state (herding): greedy least-load vs power of two choices as load reports age.

Claim (Mitzenmacher, "The power of two choices in randomized load balancing", IEEE TPDS 2001; and "How useful is
old information?", 2000 [from general knowledge]): with periodically refreshed load information, sending every
job to the least-loaded server *herds* (everyone chases the same stale minimum) and can be worse than random,
while choosing the less loaded of two random servers stays good as the information ages. Dynamo lists the same
failure in production ("multiple routers each pick the same 'best' worker within a metrics cycle", #589;
routers-and-agent-schedulers.md A3).

Workload: the ``chat`` preset, 3,000 requests, Poisson at 100 req/s (seed 0): busy but not saturated (fresh
least-outstanding keeps TTFT p99 at 0.16 s). Cluster: 8 x Llama-3.1-8B on one H100 each, vLLM. ``least-kv``
(greedy: lowest reported KV usage) and ``power-of-two`` (two random replicas, fewer reported running + waiting) read the reports, refreshed every
``report_interval`` (0 = fresh at every arrival); ``least-outstanding`` (router-local in-flight counts, always
fresh) and ``random`` (no information) are the references. ``imbal`` = max/mean requests per replica over the run.

Run: ``python experiments/stale_routing.py`` (about 15 s here).
"""

from __future__ import annotations

import time

from tokensched.cluster.sim import simulate_cluster
from tokensched.config import SimConfig
from tokensched.workload import load_workload

N, QPS, REPLICAS = 3000, 100.0, 8
INTERVALS = (0.0, 0.1, 0.5, 2.0)
STALE = ("least-kv", "power-of-two")
REFERENCE = ("least-outstanding", "random")


def main() -> int:
    t0 = time.perf_counter()
    reqs = load_workload("chat", num_requests=N, qps=QPS, seed=0).requests
    print(f"chat preset, {N} requests at {QPS:g} req/s (Poisson, seed 0); {REPLICAS} x Llama-3.1-8B on H100")
    print(f"{'router':18} {'report s':>8} {'TTFT p50':>8} {'p99':>7} {'E2E p99':>7} {'imbal':>6} {'req/s':>6}")

    def row(router: str, interval: float, label: str) -> None:
        s = simulate_cluster(SimConfig(replicas=REPLICAS, router=router, report_interval=interval), reqs).summary
        print(f"{router:18} {label:>8} {s['ttft_s']['p50']:8.3f} {s['ttft_s']['p99']:7.3f} {s['e2e_s']['p99']:7.2f} "
              f"{s['cluster']['imbalance_requests']:6.3f} {s['throughput']['requests_per_s']:6.1f}")

    for router in STALE:
        for interval in INTERVALS:
            row(router, interval, f"{interval:g}")
    for router in REFERENCE:
        row(router, 0.0, "-")
    print(f"\n({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
