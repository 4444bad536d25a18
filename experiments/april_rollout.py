"""RL rollout scheduling under a long tail: synchronous GRPO vs APRIL partial rollouts vs AReaL-style async.

Claims (catalog cards, ``../shared/reference/papers.md`` A11): APRIL (#26) raises rollout throughput by 22.5 % on
average (up to 44 %) over a synchronous rollout that waits for its longest response, by over-provisioning
requests, cutting the unfinished ones once enough are done and resuming them first next step. AReaL (#46)
reports up to 2.57x training speedup over synchronous systems by decoupling generation from training under a
staleness bound eta. Their setups (GPU counts, models, lengths, trainer speed) are not reproduced here; this
script measures the mechanisms on one rollout replica.

Setup: GRPO steps of N = 32 prompts x G = 8 samples; prompts lognormal (median 512, sigma 0.5, max 4,096);
outputs lognormal with median 1,536 and sigma 1.0 (p99 near 15.7k), capped at max_tokens = 16,384. Rollouts on
Llama-3.1-8B, one H100, vLLM defaults (256 seats, 8,192-token budget, recompute preemption, prefix caching:
the G samples of a prompt share its blocks); training on separate GPUs at 20 s per step, weight sync free;
5 training steps. Modes: ``sync``; ``april`` with over-provisioning 0.25 and 0.5; ``async`` with eta 1 and 2.
Throughputs count consumed samples and their output tokens over the whole run ("end to end") and over the
rollout GPU's busy seconds; "wasted" is generated but never consumed (leftovers at the end of a 5-step run).
A second table repeats the comparison over five seeds.

Reading it: sync spends most of each rollout with a nearly empty batch (its mean running batch is a fraction of
the 256 seats) waiting for the longest samples. APRIL and async keep the batch fuller. Compare useful tokens/s
rather than samples/s: APRIL trains on the groups that finish first, so within a 5-step run its consumed samples
are shorter than sync's (tok/sample) and the longest ones partly sit in the buffer when the run stops (wasted).
Async with eta = 2 queues 96 groups (768 samples) for 256 seats; the KV cache fills and recompute preemptions
appear. Every interruption (APRIL cut, async weight update) re-prefills the tokens generated so far (reprefill).

Run: ``python experiments/april_rollout.py`` (about 30-40 s here).
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.table import Table

from tokensched.programs.rollout import RolloutConfig, RolloutResult, run_rollout

BASE = RolloutConfig(num_prompts=32, group_size=8, steps=5, train_s=20.0, prompt_median=512, prompt_sigma=0.5,
                     prompt_max=4096, output_median=1536, output_sigma=1.0, max_tokens=16384, seed=0)
VARIANTS: tuple[tuple[str, str, dict[str, float]], ...] = (
    ("sync", "sync", {}),
    ("APRIL op=0.25", "april", {"over_provision": 0.25}),
    ("APRIL op=0.5", "april", {"over_provision": 0.5}),
    ("async eta=1", "async", {"max_staleness": 1}),
    ("async eta=2", "async", {"max_staleness": 2}),
)
SEEDS = (0, 1, 2, 3, 4)


def run_all(seed: int) -> list[tuple[str, RolloutResult]]:
    return [(label, run_rollout(mode, BASE.model_copy(update={**kw, "seed": seed}))) for label, mode, kw in VARIANTS]


def main() -> int:
    t0 = time.perf_counter()
    con = Console(width=max(Console().width, 220))  # the wide table stays on one line per row
    con.print(f"GRPO rollout: {BASE.num_prompts} prompts x {BASE.group_size} samples, outputs lognormal median "
              f"{BASE.output_median:.0f} sigma {BASE.output_sigma} cap {BASE.max_tokens}; Llama-3.1-8B on 1 x H100; "
              f"train {BASE.train_s:.0f} s/step; {BASE.steps} steps; seed 0")
    t = Table(title="Seed 0", title_justify="left")
    for col in ("mode", "total s", "samples/s", "tok/sample", "useful tok/s", "vs sync", "tok/busy s", "vs sync",
                "GPU idle %", "busy batch", "cut", "reprefill kt", "wasted kt", "off-policy", "stale", "max",
                "preempt"):
        t.add_column(col, justify="left" if col == "mode" else "right", no_wrap=True)
    base: RolloutResult | None = None
    for label, r in run_all(0):
        base = base or r
        t.add_row(label, f"{r.total_s:,.0f}", f"{r.samples_per_s:.3f}", f"{r.useful_tokens / r.consumed_samples:,.0f}",
                  f"{r.useful_tokens_per_s:,.0f}",
                  f"{r.useful_tokens_per_s / base.useful_tokens_per_s:.2f}x", f"{r.useful_tokens_per_busy_s:,.0f}",
                  f"{r.useful_tokens_per_busy_s / base.useful_tokens_per_busy_s:.2f}x",
                  f"{100 * r.rollout_idle_s / r.total_s:.1f}", f"{r.mean_busy_batch:.1f}", f"{r.cut_samples}",
                  f"{r.reprefill_tokens / 1e3:,.0f}", f"{r.wasted_tokens / 1e3:,.0f}",
                  f"{r.off_policy_token_fraction:.3f}", f"{r.mean_staleness:.2f}", f"{r.max_staleness}",
                  f"{r.preemptions}")
    con.print(t)
    con.print("[dim]op: APRIL over-provisioning; tok/busy s: useful tokens per rollout-GPU busy second; busy batch: "
              "mean running sequences while busy; cut: generations aborted (APRIL) or interrupted by new weights "
              "(async);\nkt: thousand tokens; off-policy: share of useful tokens generated under an older policy "
              "than the step that trains on them; stale, max: mean and max version lag of consumed samples[/]")

    ratios: dict[str, list[tuple[float, float]]] = {label: [] for label, _, _ in VARIANTS[1:]}
    for seed in SEEDS:
        results = run_all(seed)
        sync = results[0][1]
        for label, r in results[1:]:
            ratios[label].append((r.useful_tokens_per_s / sync.useful_tokens_per_s,
                                  r.useful_tokens_per_busy_s / sync.useful_tokens_per_busy_s))
    t2 = Table(title=f"Throughput vs sync over seeds {SEEDS[0]}-{SEEDS[-1]} (useful tokens/s)", title_justify="left")
    for col in ("mode", "end to end mean", "min", "max", "per busy s mean", "min", "max"):
        t2.add_column(col, justify="left" if col == "mode" else "right", no_wrap=True)
    for label, rs in ratios.items():
        e2e = [a for a, _ in rs]
        busy = [b for _, b in rs]
        t2.add_row(label, f"{sum(e2e) / len(e2e):.2f}x", f"{min(e2e):.2f}x", f"{max(e2e):.2f}x",
                   f"{sum(busy) / len(busy):.2f}x", f"{min(busy):.2f}x", f"{max(busy):.2f}x")
    con.print(t2)
    con.print(f"({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
