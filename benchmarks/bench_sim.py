"""Simulator speed on real traces: simulated requests per wall second and speed-up over real time.

Not part of the test suite. Run:  python benchmarks/bench_sim.py [--repeat 3]
Needs ../shared/traces (the Mooncake and Azure 2023 conversation traces).
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

from tokensched.config import SimConfig
from tokensched.simulator import simulate
from tokensched.workload import load_workload

TRACES = Path(__file__).resolve().parents[2] / "shared" / "traces"

CASES = [
    ("mooncake conversation", TRACES / "mooncake" / "conversation_trace.jsonl",
     dict(model="llama-3.1-8b", gpu="h100", tp=2)),
    ("azure 2023 conversation", TRACES / "azure_llm_2023" / "AzureLLMInferenceTrace_conv.csv",
     dict(model="llama-3.1-8b", gpu="h100", tp=1)),
    ("azure 2023 code", TRACES / "azure_llm_2023" / "AzureLLMInferenceTrace_code.csv",
     dict(model="llama-3.1-8b", gpu="h100", tp=1)),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3, help="runs per case; the best is reported")
    ap.add_argument("--no-macro-steps", action="store_true", help="step every iteration (for comparison)")
    args = ap.parse_args()
    print(f"python {platform.python_version()} on {platform.machine()}, {platform.processor() or 'cpu'}")
    print(f"{'trace':26s} {'requests':>8s} {'load s':>7s} {'sim s':>7s} {'req/s':>8s} {'simulated s':>12s} "
          f"{'speed-up':>9s} {'iterations':>11s} {'decisions':>10s}")
    for name, path, kw in CASES:
        if not path.exists():
            print(f"{name:26s} skipped: {path} not found")
            continue
        t0 = time.perf_counter()
        w = load_workload(str(path))
        load_s = time.perf_counter() - t0
        cfg = SimConfig(workload=str(path), macro_steps=not args.no_macro_steps, **kw)
        best = None
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            r = simulate(cfg, w.requests)
            dt = time.perf_counter() - t0
            if best is None or dt < best[0]:
                best = (dt, r)
        assert best is not None
        dt, r = best
        n = r.summary["requests"]["total"]
        sim_s = r.summary["duration_s"]
        print(f"{name:26s} {n:8d} {load_s:7.2f} {dt:7.2f} {n / dt:8.0f} {sim_s:12.0f} {sim_s / dt:8.0f}x "
              f"{r.recorder.iterations:11d} {len(r.recorder.t_time):10d}")


if __name__ == "__main__":
    main()
