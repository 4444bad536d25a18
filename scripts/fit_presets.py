"""Fit the embedded workload presets from the real traces in ../shared/traces.

Run once by hand (``python scripts/fit_presets.py``); it prints the empirical quantile tables, rates and
inter-arrival CVs that ``src/tokensched/workload/presets.py`` embeds as constants. The traces themselves
are never copied into the repository: only these published summary statistics are.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np

TRACES = Path(__file__).resolve().parents[2] / "shared" / "traces"
QUANTILES = (0.0, 0.01, 0.05, 0.10, 0.25, 0.50, 0.75, 0.90, 0.95, 0.99, 0.999, 1.0)


def table(values: np.ndarray) -> list[tuple[float, int]]:
    """Quantile table (q, value) with values rounded to whole tokens."""
    qs = np.quantile(values, QUANTILES)
    return [(q, int(round(v))) for q, v in zip(QUANTILES, qs)]


def interarrival_stats(t: np.ndarray) -> dict[str, float]:
    """Overall rate and CV, plus the median CV inside 1-minute windows (local burstiness)."""
    t = np.sort(t) - t.min()
    d = np.diff(t)
    window_cvs = []
    for w in range(int(t[-1] // 60)):
        x = t[(t >= w * 60) & (t < (w + 1) * 60)]
        if len(x) > 10:
            dd = np.diff(x)
            window_cvs.append(dd.std() / dd.mean())
    return {
        "requests": float(len(t)),
        "span_s": float(t[-1]),
        "rate": len(t) / float(t[-1]),
        "cv": float(d.std() / d.mean()),
        "cv_1min_median": float(np.median(window_cvs)) if window_cvs else float("nan"),
    }


def azure(name: str) -> None:
    path = TRACES / "vidur_processed" / f"splitwise_{name}.csv"  # Azure 2023, time already rebased
    rows = list(csv.reader(path.open()))[1:]
    t = np.array([float(r[0]) for r in rows])
    inp = np.array([int(r[1]) for r in rows])
    out = np.array([int(r[2]) for r in rows])
    print(f"# Azure LLM inference 2023 {name} ({path.name})")
    print("arrivals", interarrival_stats(t))
    print("input ", table(inp), f"mean={inp.mean():.0f}")
    print("output", table(out), f"mean={out.mean():.1f}")


def mooncake() -> None:
    path = TRACES / "mooncake" / "conversation_trace.jsonl"
    recs = [json.loads(line) for line in path.open()]
    t = np.array([r["timestamp"] / 1000 for r in recs])
    inp = np.array([r["input_length"] for r in recs])
    out = np.array([r["output_length"] for r in recs])
    seen: set[int] = set()
    hit = total = 0
    for r in recs:  # ideal (infinite-cache) prefix hit rate, token weighted
        k = 0
        for i, h in enumerate(r["hash_ids"]):
            size = min(512, r["input_length"] - 512 * i)
            total += size
            if h in seen and k == i:
                hit += size
                k += 1
        seen.update(r["hash_ids"])
    print(f"# Mooncake conversation ({path.name})")
    print("arrivals", interarrival_stats(t))
    print("input ", table(inp), f"mean={inp.mean():.0f}", f"max_total={int((inp + out).max())}")
    print("output", table(out), f"mean={out.mean():.1f}")
    print(f"ideal prefix hit rate (512-token blocks, token weighted): {hit / total:.4f}")


if __name__ == "__main__":
    if not TRACES.is_dir():
        sys.exit(f"traces not found at {TRACES}")
    azure("conv")
    azure("code")
    mooncake()
