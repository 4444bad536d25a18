"""Sarathi-Serve vs Orca vs vLLM: serving capacity under a strict time-between-tokens SLO.

Paper: Agrawal et al., "Taming Throughput-Latency Tradeoff in LLM Inference with Sarathi-Serve", OSDI'24
(papers.md A1 #12). Headline: up to 2.6x higher serving capacity than Orca and vLLM for Mistral-7B on one A100.

Workload: Mistral-7B on 1 x A100-80GB; the ShareGPT length table of ../shared (Llama-2 tokenizer, 8k-filtered;
median prompt 1,730 tokens, the paper's openchat_sharegpt4 median) with Poisson arrivals (seed 0), 1,000
requests per point, rates 0.25 to 3.5 req/s in steps of 0.25. Without ../shared the `chat` preset is used.

Capacity is measured two ways, from the same runs:

* paper: the highest swept rate up to which P99 time-between-tokens (all tokens of all requests) stays within
  the SLO and the median scheduling delay within 2 s. Strict SLO 100 ms with Sarathi's 512-token budget,
  relaxed 500 ms with a 2,048-token budget (the paper's pairs for Mistral-7B).
* per request (`tokensched compare`'s capacity): the highest rate up to which >= 90 % of requests have
  TTFT <= 2 s and TPOT (their mean gap) <= 100 ms.

Run: python experiments/sarathi_vs_orca.py [--report DIR]   (DIR gets the compare report with plots)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tokensched.compare import Comparison, Variant, capacity, run_comparison

SHARED = Path(__file__).resolve().parents[2] / "shared"
SHAREGPT = SHARED / "traces/sharegpt_lengths/sharegpt_8k_filtered_stats_llama2_tokenizer.csv"
RATES = [0.25 * i for i in range(1, 15)]  # 0.25 .. 3.5: every variant is past saturation by 3.5
VARIANTS = [
    Variant("orca", {"scheduler": "orca"}),
    Variant("vllm", {"scheduler": "vllm"}),
    Variant("sarathi-512", {"scheduler": "sarathi", "max_batched_tokens": 512}),
    Variant("sarathi-2048", {"scheduler": "sarathi", "max_batched_tokens": 2048}),
]
STRICT_TBT_S, RELAXED_TBT_S, MAX_MEDIAN_DELAY_S = 0.1, 0.5, 2.0


def paper_capacity(comp: Comparison, variant: str, tbt_slo_s: float) -> float | None:
    """Highest rate up to which every rate keeps P99 TBT <= the SLO and median scheduling delay <= 2 s."""
    best = None
    for q in RATES:
        s = comp.point(variant, q).summary
        if s["itl_s"]["p99"] > tbt_slo_s or s["queue_s"]["p50"] > MAX_MEDIAN_DELAY_S:
            break
        best = q
    return best


def fmt(q: float | None) -> str:
    return "< 0.25" if q is None else f"{q:g}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--report", help="write the compare report (report.md, results.json, PNGs) here")
    args = ap.parse_args()
    workload = str(SHAREGPT) if SHAREGPT.exists() else "chat"
    if workload == "chat":
        print("note: ../shared is absent; using the `chat` preset instead of the ShareGPT table", file=sys.stderr)
    base = {"workload": workload, "model": "mistral-7b", "gpu": "a100-80gb", "num_requests": 1000, "seed": 0,
            "slo_ttft": 2.0, "slo_tpot": STRICT_TBT_S}
    t0 = time.perf_counter()
    comp = run_comparison(base, VARIANTS, RATES)
    wall = time.perf_counter() - t0
    print(f"Mistral-7B, 1 x A100-80GB, {Path(workload).name}, Poisson, 1,000 requests/point, "
          f"rates {RATES[0]:g}-{RATES[-1]:g} req/s step 0.25 ({len(comp.points)} runs, {wall:.0f} s)")
    print()
    head = ("variant", "paper strict (100 ms)", "paper relaxed (500 ms)", ">=90% per request",
            "P99 TBT @1 req/s", "P99 TBT @2 req/s", f"completed req/s @{RATES[-1]:g}")
    rows = []
    for v in VARIANTS:
        c = capacity(comp, v.name)
        rows.append((v.name, fmt(paper_capacity(comp, v.name, STRICT_TBT_S)),
                     fmt(paper_capacity(comp, v.name, RELAXED_TBT_S)), fmt(c["qps"] if c else None),
                     f"{comp.point(v.name, 1.0).summary['itl_s']['p99'] * 1e3:.0f} ms",
                     f"{comp.point(v.name, 2.0).summary['itl_s']['p99'] * 1e3:.0f} ms",
                     f"{comp.point(v.name, RATES[-1]).summary['throughput']['requests_per_s']:.2f}"))
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    print("capacity (req/s)")
    for r in [head, *rows]:
        print("  ".join(str(x).ljust(w) for x, w in zip(r, widths)))
    print()
    strict = {v.name: paper_capacity(comp, v.name, STRICT_TBT_S) for v in VARIANTS}
    relaxed = {v.name: paper_capacity(comp, v.name, RELAXED_TBT_S) for v in VARIANTS}
    for label, caps, ours in (("strict", strict, "sarathi-512"), ("relaxed", relaxed, "sarathi-2048")):
        best_base = max((caps[b] or 0.0) for b in ("orca", "vllm"))
        if caps[ours] and best_base:
            print(f"{label}: {ours} / best of orca, vllm = {caps[ours]:g} / {best_base:g} = "
                  f"{caps[ours] / best_base:.2f}x")
    if args.report:
        from tokensched.compare_report import write_report

        write_report(comp, args.report)
        print(f"report written to {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
