"""BatchLLM vs vLLM (FCFS, LRU prefix caching) on an offline batch with shared prefixes: throughput.

Paper: Zheng et al., "BatchLLM: Optimizing Large Batched LLM Inference with Global Prefix Sharing and
Throughput-oriented Token Batching", arXiv 2412.03594 (papers.md A1 #4, routers-and-agent-schedulers.md D5).
Headline: 1.1-2x over vLLM on microbenchmarks and two industry workloads (v3: 1.3-10.8x over vLLM and SGLang).

Workload: 3,000 requests all present at t=0 (an offline batch), drawn by the synthetic generator with 300
prefix groups of uniform popularity (a 2,048-token system prompt per group, about 10 requests each, in random
order), prompts lognormal (median 2,500, sigma 0.3), outputs lognormal (median 150, sigma 0.8); seed 11.
Llama-3.1-8B on 1 x H100 (28,423 KV blocks = 455k tokens: all 300 prefixes (614k tokens) do not fit at
once), budget 8,192 tokens, 256 sequences, roofline timing. Throughput = completed requests / makespan.
The "ideal" hit rate counts every prompt token that an earlier request of the batch already had (an
infinite cache). Ablations switch off one BatchLLM component at a time.

Run: python experiments/batchllm.py   (about 50 s here)
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from tokensched.config import SimConfig
from tokensched.request import Request
from tokensched.simulator import simulate
from tokensched.workload.synthetic import PrefixGroups, WorkloadSpec, generate, lognormal, poisson

VARIANTS: list[tuple[str, str, dict[str, Any], int]] = [
    ("vllm FCFS + LRU prefix cache", "vllm", {}, 256),
    ("batchllm", "batchllm", {}, 256),
    ("batchllm, no prefix groups (ratio order only)", "batchllm", {"grouping": False}, 256),
    ("batchllm, no memory-centric budget", "batchllm", {"kv_threshold": 0.0}, 256),
    ("batchllm, no explicit release", "batchllm", {"release": False}, 256),
    ("batchllm, constant decode estimate", "batchllm", {"predictor": "constant"}, 256),
    ("batchllm, max_num_seqs 1024", "batchllm", {}, 1024),
]


def workload() -> list[Request]:
    spec = WorkloadSpec(poisson(1.0), lognormal(2500, 0.3, max=8000), lognormal(150, 0.8, max=2000),
                        prefix=PrefixGroups(300, 2048, popularity="uniform"))
    return [replace(r, arrival_s=0.0) for r in generate(spec, 3000, seed=11)]


def ideal_hit_rate(reqs: list[Request]) -> float:
    """Share of prompt tokens an earlier request of the batch already had (whole 16-token hash blocks)."""
    seen: set[tuple[int, int]] = set()
    hit = total = 0
    for r in reqs:
        shared = 0
        for i, h in enumerate(r.block_hashes):
            if (i, h) not in seen:
                break
            shared = min((i + 1) * r.hash_block_size, r.prompt_tokens - 1)
        hit += shared
        total += r.prompt_tokens
        seen.update(enumerate(r.block_hashes))
    return hit / total


def main() -> None:
    t0 = time.perf_counter()
    reqs = workload()
    print(f"offline batch: {len(reqs)} requests, 300 prefix groups x 2,048 tokens; Llama-3.1-8B, 1 x H100; "
          f"ideal prefix hit rate {ideal_hit_rate(reqs):.3f}")
    print("| variant | makespan s | requests/s | output tokens/s | prefix hit rate | preemptions | mean batch |"
          " vs vLLM |")
    print("|---|---|---|---|---|---|---|---|")
    base = None
    for label, sched, opts, seats in VARIANTS:
        s = simulate(SimConfig(scheduler=sched, max_num_seqs=seats, policy_options=opts), reqs).summary
        rps = s["throughput"]["requests_per_s"]
        base = base or rps
        print(f"| {label} | {s['duration_s']:.1f} | {rps:.2f} | {s['throughput']['output_tokens_per_s']:,.0f} | "
              f"{s['prefix_cache']['hit_rate']:.3f} | {s['preemptions']} | {s['batch']['mean_size']:.0f} | "
              f"{rps / base:.2f}x |")
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
