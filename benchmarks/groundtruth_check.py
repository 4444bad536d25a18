"""Quick check of the default timing model against the measured vLLM runs in ../shared/groundtruth.

Replays each non-overloaded run with measurements (Llama-2-7B TP1, CodeLlama-34B TP2; the `reasoning` runs
are overloaded and skipped) with the run's own server settings and KV capacity, and prints simulated vs
measured median TTFT and E2E over the requests that succeeded. Prefix sharing is ignored (the workload files
carry no prefix groups). Run:  python benchmarks/groundtruth_check.py [--timing roofline|measured]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from tokensched.config import SimConfig
from tokensched.simulator import simulate
from tokensched.workload import load_workload

GT = Path(__file__).resolve().parents[2] / "shared" / "groundtruth" / "vllm-h100"
MODELS = {"llama-2-7b": "llama-2-7b", "codellama-34b": "codellama-34b"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timing", default="roofline", help="timing backend (see `tokensched list timing`)")
    timing = ap.parse_args().timing
    print(f"{'run':32s} {'TTFT p50 ms':>24s} {'E2E p50 s':>24s}")
    print(f"{'':32s} {'meas':>7s} {'sim':>7s} {'err':>8s} {'meas':>7s} {'sim':>7s} {'err':>8s}")
    for wf in sorted((GT / "workloads").glob("*.json")):
        run = wf.stem
        mf = GT / "measured" / f"{run}_ground_truth.json"
        if not mf.exists() or "reasoning" in run:
            continue
        model = next(v for k, v in MODELS.items() if k in run)
        w = load_workload(str(wf))
        h = w.engine_hints
        cfg = SimConfig(model=model, gpu="h100", tp=h["tensor_parallelism"], max_num_seqs=h["max_num_seqs"],
                        max_batched_tokens=h["max_num_batched_tokens"], kv_blocks=h["kv_blocks"], max_model_len=4096,
                        timing=timing)
        s = simulate(cfg, w.requests).summary
        ok = [x for x in json.loads(mf.read_text()) if not x["has_error"]]
        mt = float(np.median([x["ttft_s"] for x in ok]))
        me = float(np.median([x["e2e_s"] for x in ok]))
        st, se = s["ttft_s"]["p50"], s["e2e_s"]["p50"]
        print(f"{run[16:]:32s} {mt * 1e3:7.1f} {st * 1e3:7.1f} {(st - mt) / mt:+8.0%} {me:7.2f} {se:7.2f} "
              f"{(se - me) / me:+8.0%}")


if __name__ == "__main__":
    main()
