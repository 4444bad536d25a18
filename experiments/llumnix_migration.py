"""Llumnix (Sun et al., OSDI'24, papers.md #97) vs least-load dispatch at high load: tail latency, preemptions.

Paper claims: tail latencies improved by an order of magnitude (P99 prefill latency, vs INFaaS++-style
load-balanced dispatch over vLLM); high-priority requests up to 1.5x faster.

Workload: the ShareGPT length table in ../shared (Llama-2 tokenizer, 30,731 conversations: prompt mean 2,340,
output mean 439), keeping the rows whose prompt + output fits Llama-2's 4,096-token context (mean prompt 1,269,
output 440 tokens in the first 2,000), in file order, with Poisson arrivals (seed 0) at 7.0, 7.25 and 7.5 req/s.
The cluster saturates at about 7.2 req/s (least-outstanding's throughput when overloaded), so these are just
below, at and just past saturation, where tails appear. 2,000 requests per run.

Cluster: 4 replicas of Llama-2-7B (multi-head attention, 512 KiB of KV per token, like the paper's LLaMA-7B) on
one A100-40GB each: 2,846 KV blocks = 45.5k tokens per instance, about 16 average requests, so memory is the
bottleneck (the paper ran LLaMA-7B on 24 GB A10s). vLLM engines (FCFS, recompute preemption); every router sees
load reports refreshed every 50 ms (Llumnix's polling interval). Llumnix runs with its released defaults
(migrate-out threshold 3 blocks per request, SR request policy, 3 stages, last stage <= 16 blocks, pairs every
50 ms, one migration per instance at a time, same-node NVLink copies), and once with migration off to separate
its dispatch rule (virtual usage) from migration.

Priority (second table): 10 % of the requests (fixed seed) have priority 0, the rest 1; every engine uses vLLM
priority scheduling. Llumnix with ``high_priority_threshold=1`` without and with a headroom of 500 blocks (18 %
of an instance) on instances serving high-priority requests.

Run: ``python experiments/llumnix_migration.py`` (about 30 s of CPU time).
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from tokensched.cluster.sim import simulate_cluster
from tokensched.config import SimConfig
from tokensched.request import Request
from tokensched.workload import load_workload
from tokensched.workload.transform import rescale_rate

SHAREGPT = (Path(__file__).resolve().parents[2] / "shared" / "traces" / "sharegpt_lengths"
            / "sharegpt_8k_filtered_stats_llama2_tokenizer.csv")
N, CONTEXT, SEED = 2000, 4096, 0
LOADS = (7.0, 7.25, 7.5)
BASE: dict[str, Any] = dict(replicas=4, model="llama-2-7b", gpu="a100-40gb", report_interval=0.05)
VARIANTS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("round-robin", "round-robin", {}),
    ("least-kv", "least-kv", {}),
    ("least-outstanding", "least-outstanding", {}),
    ("llumnix, dispatch only", "llumnix", {"migration": False}),
    ("llumnix", "llumnix", {}),
)
PRIO = (
    ("least-kv", "least-kv", {}),
    ("llumnix, no headroom", "llumnix", {"high_priority_threshold": 1}),
    ("llumnix, headroom 500", "llumnix", {"high_priority_threshold": 1, "priority_headroom_blocks": 500}),
)


def requests(qps: float) -> list[Request]:
    table = [r for r in load_workload(str(SHAREGPT)).requests if r.prompt_tokens + r.output_tokens <= CONTEXT]
    return rescale_rate(table[:N], qps, seed=SEED)


def main() -> int:
    if not SHAREGPT.exists():
        print(f"needs the ShareGPT length table at {SHAREGPT} (../shared)", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    print(f"ShareGPT lengths (prompt+output <= {CONTEXT}), {N} requests, Poisson; 4 x Llama-2-7B on A100-40GB; "
          "reports every 50 ms")
    for qps in LOADS:
        reqs = requests(qps)
        print(f"\n{qps:g} req/s   TTFT p50 / p99 s, TPOT p99 ms, ITL p99 ms, E2E p99 s, preemptions, migrations")
        print(f"{'router':24} {'TTFT p50':>8} {'p99':>7} {'TPOT p99':>8} {'ITL p99':>7} {'E2E p99':>7} "
              f"{'preempt':>7} {'migr':>5} {'GB':>6} {'downtime ms':>11}")
        for label, router, opts in VARIANTS:
            s = simulate_cluster(SimConfig(**BASE, router=router, router_options=opts), reqs).summary
            c = s["cluster"]
            dt = c.get("migration_downtime_s")
            print(f"{label:24} {s['ttft_s']['p50']:8.2f} {s['ttft_s']['p99']:7.2f} {s['tpot_s']['p99'] * 1e3:8.1f} "
                  f"{s['itl_s']['p99'] * 1e3:7.0f} {s['e2e_s']['p99']:7.1f} {s['preemptions']:7d} "
                  f"{c.get('migrations', 0):5d} {c.get('migrated_bytes', 0) / 1e9:6.1f} "
                  f"{dt['mean'] * 1e3 if dt else 0:11.1f}")

    qps = LOADS[0]
    high = np.random.default_rng(1).random(N) < 0.1
    reqs = [replace(r, priority=0 if h else 1, tenant="high" if h else "normal") for r, h in zip(requests(qps), high)]
    print(f"\npriority: {qps:g} req/s, {int(high.sum())} high-priority requests; vLLM priority scheduling")
    print(f"{'router':24} {'high TTFT':>9} {'p99':>6} {'TPOT ms':>7} {'E2E':>6} {'normal TTFT':>11} {'E2E':>6}")
    for label, router, opts in PRIO:
        rows = simulate_cluster(SimConfig(**BASE, router=router, router_options=opts, scheduler="priority"),
                                reqs).rows
        hi = [x for x in rows if x["tenant"] == "high"]
        lo = [x for x in rows if x["tenant"] == "normal"]
        print(f"{label:24} {np.mean([x['ttft_s'] for x in hi]):9.3f} "
              f"{np.percentile([x['ttft_s'] for x in hi], 99):6.2f} {np.mean([x['tpot_s'] for x in hi]) * 1e3:7.1f} "
              f"{np.mean([x['e2e_s'] for x in hi]):6.2f} {np.mean([x['ttft_s'] for x in lo]):11.3f} "
              f"{np.mean([x['e2e_s'] for x in lo]):6.2f}")
    print(f"\n({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
