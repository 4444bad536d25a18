"""Request priorities: the important tenant's latency under vLLM / SGLang priority scheduling vs FCFS.

No paper makes a numeric claim here; the engines document the mechanism (routers-and-agent-schedulers.md
B8): vLLM ``--scheduling-policy priority`` orders the waiting queue by (priority, arrival) and preempts the
least important request on a KV shortage but never displaces a running request for a waiting one; SGLang's
priority scheduling can also preempt running requests for a more important arrival (gap above a threshold).
The expected direction: the important requests' TTFT falls towards the unloaded value, the others pay, and
mean latency over everyone stays about the same (the order changes, not the work).

Workload: the ``chat`` preset (seed 0), 3,000 requests at 22 and 24 req/s (the engine completes about 21 req/s
of this mix, see sjf_vs_fcfs.py); 20 % of requests, drawn with a fixed seed, are tenant ``high`` with priority
0, the rest tenant ``low`` with priority 1 (lower = more important in vLLM; SGLang run with
``low_values_first``). Engine: Llama-3.1-8B on one H100, vLLM defaults.

Run: ``python experiments/priority.py`` (about 20 s here).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import numpy as np

from tokensched.config import SimConfig
from tokensched.request import Request
from tokensched.simulator import simulate
from tokensched.workload import load_workload

LOADS = (22.0, 24.0)
NUM_REQUESTS, SEED, HIGH_SHARE = 3000, 0, 0.2
VARIANTS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("FCFS (vllm)", "vllm", {}),
    ("vLLM priority", "priority", {}),
    ("SGLang priority, no preemption", "sglang-priority", {"low_values_first": True, "preemption": False}),
    ("SGLang priority, threshold 0", "sglang-priority", {"low_values_first": True, "preemption_threshold": 0}),
)


def tagged(qps: float) -> list[Request]:
    reqs = load_workload("chat", num_requests=NUM_REQUESTS, qps=qps, seed=SEED).requests
    high = np.random.default_rng(1).random(len(reqs)) < HIGH_SHARE
    return [replace(r, tenant="high" if h else "low", priority=0 if h else 1) for r, h in zip(reqs, high)]


def stats(rows: list[dict[str, Any]], tenant: str | None, key: str) -> tuple[float, float]:
    v = np.array([r[key] for r in rows if tenant is None or r["tenant"] == tenant], dtype=float)
    return float(v.mean()), float(np.percentile(v, 99))


def main() -> int:
    t0 = time.perf_counter()
    print(f"chat preset, {NUM_REQUESTS} requests, {HIGH_SHARE:.0%} high priority; Llama-3.1-8B on 1 x H100; seconds")
    for qps in LOADS:
        reqs = tagged(qps)
        print(f"\n{qps:g} req/s")
        print(f"{'variant':32} {'high TTFT':>9} {'p99':>6} {'high E2E':>8} {'low TTFT':>8} {'p99':>6} "
              f"{'all TTFT':>8} {'all E2E':>7} {'preempt':>7}")
        for label, sched, opts in VARIANTS:
            r = simulate(SimConfig(workload="chat", scheduler=sched, policy_options=opts), reqs)
            h_t, h_t99 = stats(r.rows, "high", "ttft_s")
            h_e, _ = stats(r.rows, "high", "e2e_s")
            l_t, l_t99 = stats(r.rows, "low", "ttft_s")
            a_t, _ = stats(r.rows, None, "ttft_s")
            a_e, _ = stats(r.rows, None, "e2e_s")
            print(f"{label:32} {h_t:9.2f} {h_t99:6.2f} {h_e:8.2f} {l_t:8.2f} {l_t99:6.2f} {a_t:8.2f} {a_e:7.2f} "
                  f"{r.summary['preemptions']:7d}")
    print(f"\n({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
