"""``tokensched rollout``: RL rollout scheduling, synchronous vs APRIL vs asynchronous (docs/programs.md).

    tokensched rollout                                  # all three modes on the defaults, side by side
    tokensched rollout --mode april --over-provision 0.25 --num-prompts 64 --group-size 16
    tokensched rollout --json                           # one JSON object per mode
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from typing import Any

import click
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from tokensched.cli import cli
from tokensched.errors import UserError

_FIELDS = ("num_prompts", "group_size", "steps", "prompt_median", "prompt_sigma", "prompt_max", "output_median",
           "output_sigma", "max_tokens", "train_s", "train_s_per_ktoken", "weight_sync_s", "over_provision",
           "max_staleness", "seed")


@cli.command(name="rollout")
@click.option("--mode", type=click.Choice(["sync", "april", "async", "all"]), default="all", show_default=True,
              help="Rollout scheduling: synchronous GRPO, APRIL partial rollouts, AReaL-style asynchronous.")
@click.option("--num-prompts", type=int, help="N: prompts (groups) per training step. [default: 32]")
@click.option("--group-size", type=int, help="G: samples per prompt. [default: 8]")
@click.option("--steps", type=int, help="Training steps. [default: 5]")
@click.option("--prompt-median", type=float, help="Median prompt tokens (lognormal). [default: 512]")
@click.option("--prompt-sigma", type=float, help="Log-space sigma of prompt lengths. [default: 0.5]")
@click.option("--prompt-max", type=int, help="Longest prompt. [default: 4096]")
@click.option("--output-median", type=float, help="Median output tokens (lognormal). [default: 1536]")
@click.option("--output-sigma", type=float, help="Log-space sigma of output lengths (the long tail). [default: 1.0]")
@click.option("--max-tokens", type=int, help="Generation cap. [default: 16384]")
@click.option("--train-s", type=float, help="Trainer seconds per step. [default: 30]")
@click.option("--train-s-per-ktoken", type=float, help="Extra trainer seconds per 1k consumed tokens. [default: 0]")
@click.option("--weight-sync-s", type=float, help="Seconds the rollout pauses to load new weights. [default: 0]")
@click.option("--over-provision", type=float, help="APRIL: launch (1 + this) x N groups per step. [default: 0.5]")
@click.option("--max-staleness", type=int, help="Async: eta, most policy versions a sample may lag. [default: 1]")
@click.option("--seed", type=int, help="Seed of the length draws. [default: 0]")
@click.option("--model", "-m", default="llama-3.1-8b", show_default=True, help="Rollout model.")
@click.option("--gpu", "-g", default="h100", show_default=True, help="Rollout GPU.")
@click.option("--tp", type=int, default=1, show_default=True, help="Tensor-parallel degree of the rollout replica.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per mode instead of the table.")
def rollout(mode: str, model: str, gpu: str, tp: int, as_json: bool, **flags: Any) -> None:
    """Simulate RL rollouts with long-tail outputs: throughput, GPU idle time, staleness per mode."""
    from tokensched.config import make_config
    from tokensched.programs.rollout import RolloutConfig, run_rollout

    values = {k: v for k, v in flags.items() if v is not None}
    sim = make_config({"model": model, "gpu": gpu, "tp": tp}, source="option")
    try:
        cfg = RolloutConfig(**values, sim=sim)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(x) for x in err["loc"]).replace("_", "-")
        raise UserError(f"--{field}: {err['msg']}", where="rollout") from None
    modes = ["sync", "april", "async"] if mode == "all" else [mode]
    results = [run_rollout(m, cfg) for m in modes]
    if as_json:
        for r in results:
            d = asdict(r)
            d.pop("step_log")
            click.echo(json.dumps(d))
        return
    console = Console() if sys.stdout.isatty() else Console(width=160)  # a pipe or file gets unwrapped rows
    console.print(f"[bold]{sim.model}[/] on {tp} x {sim.gpu} · {cfg.steps} steps of {cfg.num_prompts} x "
                  f"{cfg.group_size} samples · output median {cfg.output_median:g}, sigma {cfg.output_sigma:g}, "
                  f"cap {cfg.max_tokens:,} · train {cfg.train_s:g} s/step")
    t = Table(title="RL rollouts", title_justify="left")
    cols = ("mode", "total s", "samples/s", "useful tok/s", "vs sync", "rollout GPU idle", "busy batch", "cut",
            "wasted tok", "off-policy", "staleness")
    for c in cols:
        t.add_column(c, justify="left" if c == "mode" else "right")
    base = next((r.useful_tokens_per_s for r in results if r.mode == "sync"), None)
    for r in results:
        label = r.mode + (f" (over {cfg.over_provision:g})" if r.mode == "april" else
                          f" (eta {cfg.max_staleness})" if r.mode == "async" else "")
        t.add_row(label, f"{r.total_s:,.0f}", f"{r.samples_per_s:.3f}", f"{r.useful_tokens_per_s:,.0f}",
                  "–" if not base else f"{r.useful_tokens_per_s / base:.2f}x",
                  f"{r.rollout_idle_s / r.total_s:.1%}" if r.total_s else "–", f"{r.mean_busy_batch:.1f}",
                  f"{r.cut_samples:,}", f"{r.wasted_tokens:,}", f"{r.off_policy_token_fraction:.1%}",
                  f"{r.mean_staleness:.2f} (max {r.max_staleness})")
    console.print(t)
