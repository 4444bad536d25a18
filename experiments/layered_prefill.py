"""Layered prefill vs chunked prefill (Sarathi) on an MoE model: TTFT and E2E under a TBT SLO.

Paper: Lee et al., "From Tokens to Layers: Redefining Stall-Free Scheduling for LLM Serving with Layered
Prefill", arXiv 2510.08055 (papers.md A1 #152). Headline: chunked prefill inflates MoE expert-weight traffic by
up to 39 %; layered prefill lowers TTFT by up to 70 % and end-to-end latency by 41 %.

Setup, following the authors' published runs (github.com/scale-snu/layered-prefill README): chunked prefill
with a 512-token budget against layered prefill with 16 layer groups and an 8,192-token cohort budget, on
2 x H100 (TP 2), roofline timing (expert weights read per layer per iteration = expected distinct experts
touched by that layer's tokens under uniform routing). Two MoE models: Mixtral-8x7B (8 experts, top-2, 32
layers) and a Qwen3-30B-A3B-shaped model (the authors' model: 128 experts, top-8, 48 layers; its
config.json figures are written to a temporary file, it is not in the catalog).
Workloads: (A) the arXiv-summarization length table of ../shared (the paper's arXiv trace; median prompt
2,663, output 161) with Poisson arrivals, 400 requests per rate, seed 0 (a synthetic stand-in with the same
medians when ../shared is absent); (B) synthetic long prompts, lognormal median 8,000 (sigma 0.4, at most
16k), outputs median 250, 200 requests, seed 3. TBT SLO: P99 inter-token latency <= 50 ms (vLLM's default
8,192-token chunks are shown for reference: they break it). Expert traffic: GB of expert weights read per
run, summed from every iteration's shape (layer x expert loads x expert bytes), relative to chunked.

Run: python experiments/layered_prefill.py   (about 15 s here)
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from tokensched.config import SimConfig
from tokensched.hardware import get_gpu
from tokensched.models import ModelConfig, get_model
from tokensched.request import Request
from tokensched.simulator import simulate
from tokensched.timing import BatchShape, RooflineTiming
from tokensched.workload import load_workload
from tokensched.workload.synthetic import WorkloadSpec, generate, lognormal, poisson

ARXIV = Path(__file__).resolve().parents[2] / "shared/traces/vidur_processed/" \
    "arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv"
VARIANTS = [("chunked", "sarathi", 512), ("layered", "layered", 8192), ("vllm", "vllm", 8192)]
TBT_SLO_S = 0.05
TP = 2
QWEN3_30B_A3B = {  # Qwen/Qwen3-30B-A3B config.json (architecture fields)
    "model_type": "qwen3_moe", "hidden_size": 2048, "intermediate_size": 6144, "moe_intermediate_size": 768,
    "num_hidden_layers": 48, "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128,
    "num_experts": 128, "num_experts_per_tok": 8, "vocab_size": 151936, "max_position_embeddings": 40960,
    "tie_word_embeddings": False, "_name_or_path": "Qwen/Qwen3-30B-A3B",
}


class ExpertCounter:
    """Wraps the roofline and counts expert-weight reads (layer x expert loads) of every priced iteration."""

    prices_layer_fractions = True

    def __init__(self, model: ModelConfig) -> None:
        self.model = model
        self.inner = RooflineTiming(model, get_gpu("h100"), TP)
        self.loads = 0.0

    def touched(self, tokens: float) -> float:
        e, k = self.model.num_experts, self.model.experts_per_token
        return e * (1.0 - (1.0 - k / e) ** tokens) if tokens else 0.0

    def _count(self, b: BatchShape) -> None:
        L = self.model.num_layers
        fr = b.prefill_fraction or [1.0] * len(b.prefill_new)
        full = b.num_decodes + sum(n for n, f in zip(b.prefill_new, fr) if f >= 1.0)
        parts = sorted(((f, n) for n, f in zip(b.prefill_new, fr) if f < 1.0), reverse=True)
        hi, tokens = 1.0, full
        for f, n in parts:  # the same layer segments as RooflineTiming's partial-depth pricing
            self.loads += (hi - f) * L * self.touched(tokens)
            hi, tokens = f, tokens + n
        self.loads += hi * L * self.touched(tokens)

    def iteration_time(self, batch: BatchShape) -> float:
        self._count(batch)
        return self.inner.iteration_time(batch)

    def decode_times(self, num_decodes: int, context_sum: int, steps: int) -> np.ndarray:
        self.loads += steps * self.model.num_layers * self.touched(num_decodes)
        return self.inner.decode_times(num_decodes, context_sum, steps)


def arxiv(rate: float) -> list[Request]:
    if ARXIV.exists():
        return load_workload(str(ARXIV), qps=rate, num_requests=400, seed=0).requests
    spec = WorkloadSpec(poisson(rate), lognormal(2663, 0.35, max=4000), lognormal(161, 0.9, max=2000))
    return generate(spec, 400, seed=0)


def long_prompts(rate: float) -> list[Request]:
    return generate(WorkloadSpec(poisson(rate), lognormal(8000, 0.4, max=16000), lognormal(250, 0.5, max=1000)),
                    200, seed=3)


def run(model: str, reqs: list[Request], sched: str, budget: int) -> dict[str, Any]:
    timing = ExpertCounter(get_model(model))
    s = simulate(SimConfig(model=model, gpu="h100", tp=TP, scheduler=sched, max_batched_tokens=budget),
                 reqs, timing=timing).summary
    return {"ttft": s["ttft_s"]["mean"], "e2e": s["e2e_s"]["mean"], "tbt99": s["itl_s"]["p99"],
            "experts": timing.loads}


def main() -> None:
    t0 = time.perf_counter()
    src = "arXiv" if ARXIV.exists() else "arXiv-like (synthetic: ../shared absent)"
    tmp = tempfile.TemporaryDirectory()
    qwen = Path(tmp.name) / "config.json"
    qwen.write_text(json.dumps(QWEN3_30B_A3B))
    models = [("Mixtral-8x7B", "mixtral-8x7b"), ("Qwen3-30B-A3B", str(qwen))]
    cases = [(src, r, arxiv) for r in (0.5, 1.0, 2.0, 3.0)] + [("8k prompts", r, long_prompts) for r in (0.25, 1.0)]
    print(f"2 x H100 (TP 2); chunked = Sarathi 512-token budget, layered = 16 groups / 8,192-token cohorts, "
          f"vllm = 8,192-token chunks; TBT SLO P99 ITL <= {TBT_SLO_S * 1e3:.0f} ms")
    print("| model | workload | req/s | TTFT mean s chunked / layered / vllm | TTFT layered vs chunked | "
          "E2E mean s chunked / layered | E2E layered vs chunked | P99 TBT ms chunked / layered / vllm | "
          "expert traffic layered vs chunked |")
    print("|---|---|---|---|---|---|---|---|---|")
    for mname, model in models:
        for wname, rate, make in cases:
            reqs = make(rate)
            c, lay, v = (run(model, reqs, sched, budget) for _, sched, budget in VARIANTS)
            tbt = " / ".join(f"{m['tbt99'] * 1e3:.0f}{'' if m['tbt99'] <= TBT_SLO_S else '!'}" for m in (c, lay, v))
            print(f"| {mname} | {wname} | {rate:g} | {c['ttft']:.3f} / {lay['ttft']:.3f} / {v['ttft']:.3f} | "
                  f"{lay['ttft'] / c['ttft'] - 1:+.0%} | {c['e2e']:.2f} / {lay['e2e']:.2f} | "
                  f"{lay['e2e'] / c['e2e'] - 1:+.0%} | {tbt} | {lay['experts'] / c['experts'] - 1:+.0%} |")
    tmp.cleanup()
    print("(! = breaks the TBT SLO)")
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
