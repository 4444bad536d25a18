"""Program simulator speed: programs and LLM calls per wall second, speed-up over real time.

Not part of the test suite. Run:  python benchmarks/bench_programs.py [--repeat 2]
The SWE case needs ../shared/traces/continuum_swe; the generated cases need nothing.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

from tokensched.config import SimConfig
from tokensched.programs.sim import simulate_programs
from tokensched.programs.sources import load_programs

SWE = Path(__file__).resolve().parents[2] / "shared" / "traces" / "continuum_swe" / "continuum_swe_rounds_derived.jsonl"

CASES = [  # name, workload, programs, rate, policy, replicas
    ("SWE trajectories, continuum", str(SWE), 500, 0.5, "continuum", 1),
    ("react, request-fcfs", "react", 2000, 4.0, "request-fcfs", 1),
    ("map-reduce, atlas", "map-reduce", 500, 1.0, "atlas", 1),
    ("chat-sessions, 4 replicas", "chat-sessions", 2000, 8.0, "program-fcfs", 4),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=2, help="runs per case; the best is reported")
    args = ap.parse_args()
    print(f"python {platform.python_version()} on {platform.machine()}")
    print(f"{'case':28s} {'programs':>8s} {'calls':>7s} {'wall s':>7s} {'programs/s':>10s} {'calls/s':>8s} "
          f"{'simulated s':>11s} {'speed-up':>9s}")
    for name, workload, n, rate, policy, replicas in CASES:
        if workload == str(SWE) and not SWE.exists():
            print(f"{name:28s} skipped: {SWE} not found")
            continue
        progs = load_programs(workload, num_programs=n, rate=rate, seed=0).programs
        best = None
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            r = simulate_programs(SimConfig(replicas=replicas, router="session-affinity"), progs, policy)
            dt = time.perf_counter() - t0
            best = (dt, r) if best is None or dt < best[0] else best
        assert best is not None
        dt, r = best
        calls = r.summary["requests"]["total"]
        sim_s = r.summary["duration_s"]
        print(f"{name:28s} {n:8d} {calls:7d} {dt:7.2f} {n / dt:10.0f} {calls / dt:8.0f} {sim_s:11.0f} "
              f"{sim_s / dt:8.0f}x")


if __name__ == "__main__":
    main()
