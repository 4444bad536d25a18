"""``tokensched validate``: replay real vLLM runs and score the simulator's per-request latency against them.

The pieces: :mod:`tokensched.validate_runs` finds the runs and rebuilds their traffic (prompt repetition,
prefix hashes, nominal output lengths, client timeouts), this module simulates each run with its own server
settings and gathers the samples to compare, and :mod:`tokensched.validate_report` computes the errors, fits
the client overhead and prints or writes the report:

    doc, results = run_validation("../shared/groundtruth/vllm-h100", timing=None)

Runs are sorted into three kinds: *measured* (latencies published, no request timed out) — the ones the
accuracy target is about; *overloaded* (some requests timed out in the real run: the ``reasoning`` profile),
scored separately because their latency is queueing, not step timing; *predicted* (no latencies published),
reported as predictions only.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from tokensched.errors import UserError
from tokensched.validate_report import OVERHEAD_MODES, RunResult, fit_overheads, report_dict
from tokensched.validate_runs import (
    CLIENT_TIMEOUT_S,
    PREFIX_MODES,
    Replay,
    RunFiles,
    build_replay,
    discover_runs,
    load_measured,
)

if TYPE_CHECKING:
    from tokensched.config import SimConfig


@dataclass
class SimOutcome:
    """Per-request simulated latencies (None where the request was aborted or rejected)."""

    ttft: dict[str, float | None]
    e2e: dict[str, float | None]
    summary: dict[str, Any]
    info: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def sim_config(replay: Replay, timing: str | None, coefficients: str | None = None) -> SimConfig:
    """The SimConfig of a run's own server; ``timing`` (and a roofline ``coefficients`` file) are passed on
    only if SimConfig knows those fields (they came with the timing backends)."""
    from tokensched.config import SimConfig, make_config

    s = replay.server
    values: dict[str, Any] = {
        "workload": replay.run.name, "model": str(replay.run.model_config), "gpu": "h100", "tp": s["tp"],
        "scheduler": "vllm", "max_num_seqs": s["max_num_seqs"], "max_batched_tokens": s["max_batched_tokens"],
        "block_size": s["block_size"], "kv_blocks": s["kv_blocks"], "max_model_len": s["max_model_len"],
        "prefix_caching": True,
    }
    if timing is not None:
        if "timing" not in SimConfig.model_fields:
            if timing != "roofline":
                raise UserError(f"timing backend {timing!r} is not available in this build (only 'roofline')")
        else:
            values["timing"] = timing
    if coefficients is not None:
        if "timing_coefficients" not in SimConfig.model_fields:
            raise UserError("--timing-coefficients is not supported by this build")
        values["timing_coefficients"] = coefficients
    return make_config(values, source=f"run {replay.run.name}")


def simulate_replay(replay: Replay, timing: str | None = None, *, coefficients: str | None = None,
                    abort_rounds: int = 3) -> SimOutcome:
    """Simulate the run; requests that timed out in reality are aborted at ``arrival + 300 s``.

    The simulator has no abort event, so aborting is emulated by a short fixed-point iteration: simulate,
    cut each failed request to the tokens it had produced by its deadline (interpolating between its first
    and last token) or drop it if it had produced none, and simulate again (``abort_rounds`` times at most;
    stops early when nothing changes). A cut request then frees its KV cache and seat near its deadline, as
    an abort does. Only the successful requests' latencies are compared, so the cut ones need not be exact.
    """
    from tokensched.simulator import simulate

    cfg = sim_config(replay, timing, coefficients)
    base = {r.id: r for r in replay.requests}
    reqs = replay.requests
    notes: list[str] = []
    cut: dict[str, int] = {}  # failed id -> output tokens kept (0 = dropped)
    for rnd in range(abort_rounds + 1):
        res = simulate(cfg, reqs)
        rows = {r["id"]: r for r in res.rows}
        if not replay.failed or rnd == abort_rounds:
            break
        new_cut: dict[str, int] = {}
        for rid in replay.failed:
            r = base[rid]
            deadline = r.arrival_s + CLIENT_TIMEOUT_S
            row = rows.get(rid)
            if row is None or row["ttft_s"] is None:
                new_cut[rid] = cut.get(rid, 0) if row is None else 0
                continue
            first = r.arrival_s + row["ttft_s"]
            last = r.arrival_s + row["e2e_s"]
            n = row["output_tokens"]
            if first > deadline:
                new_cut[rid] = 0
            elif n <= 1 or last <= first:
                new_cut[rid] = r.output_tokens if last <= deadline else 1
            else:  # tokens by the deadline at the request's own pace (cuts, or extends an earlier cut)
                rate = (n - 1) / (last - first)
                new_cut[rid] = min(r.output_tokens, max(1, 1 + int((deadline - first) * rate)))
        if new_cut == cut:
            break
        cut = new_cut
        reqs = [r if r.id not in cut else replace(r, output_tokens=cut[r.id]) for r in replay.requests
                if cut.get(r.id, 1) > 0]
    if replay.failed:
        dropped = sum(1 for v in cut.values() if v == 0)
        notes.append(f"{len(replay.failed)} requests timed out in the real run: aborted at arrival + "
                     f"{CLIENT_TIMEOUT_S:g} s ({dropped} before their first token)")
    ttft: dict[str, float | None] = {}
    e2e: dict[str, float | None] = {}
    for rid in base:
        row = rows.get(rid)
        aborted = rid in replay.failed
        ttft[rid] = None if row is None or aborted else row["ttft_s"]
        e2e[rid] = None if row is None or aborted else row["e2e_s"]
    return SimOutcome(ttft, e2e, res.summary, res.info, notes)


def validate_run(run: RunFiles, timing: str | None = None, prefix: str = "reconstructed",
                 coefficients: str | None = None) -> RunResult:
    """Replay one run and compare it with its measurement (if any); the overhead is applied later."""
    replay = build_replay(run, prefix=prefix)  # type: ignore[arg-type]
    outcome = simulate_replay(replay, timing, coefficients=coefficients)
    meas = load_measured(run.measured) if run.measured is not None else None
    notes = replay.notes + outcome.notes
    ids = [r.id for r in replay.requests if r.id not in replay.failed]
    if meas is not None:
        missing = [i for i in ids if i not in meas]
        if len(missing) == len(ids):
            raise UserError(f"run {run.name}: no request index matches the workload", where=str(run.measured))
        if missing:
            notes.append(f"{len(missing)} requests have no measurement and are not compared")
        ids = [i for i in ids if i in meas and not meas[i][0]]
    unsimulated = [i for i in ids if outcome.e2e[i] is None]
    if unsimulated:
        notes.append(f"{len(unsimulated)} requests were rejected by the simulator and are not compared")
        ids = [i for i in ids if outcome.e2e[i] is not None]
    if not ids:
        raise UserError(f"run {run.name}: no request to compare")
    st = np.array([outcome.ttft[i] for i in ids], dtype=np.float64)
    se = np.array([outcome.e2e[i] for i in ids], dtype=np.float64)
    mt = np.array([meas[i][1] for i in ids], dtype=np.float64) if meas is not None else None
    me = np.array([meas[i][2] for i in ids], dtype=np.float64) if meas is not None else None
    kind = "overloaded" if replay.failed else ("measured" if meas is not None else "predicted")
    return RunResult(
        run=run.name, model=outcome.info["model"], tp=int(outcome.info["tp"]), profile=run.profile_name,
        kind=kind, requests=len(replay.requests), compared=len(ids),
        ttft_residual_s=float(np.median(mt - st)) if kind == "measured" and mt is not None else None,
        sim={"prefix_hit_rate": outcome.summary["prefix_cache"]["hit_rate"],
             "preemptions": outcome.summary["preemptions"],
             "mean_batch": outcome.summary["batch"]["mean_size"]},
        notes=notes, output_len=replay.layout.output_len, samples=(st, se, mt, me),
    )


def run_validation(
    groundtruth: str | Path,
    *,
    timing: str | None = None,
    pattern: str = "*",
    prefix: str = "reconstructed",
    overhead: str = "fit",
    coefficients: str | None = None,
    on_run: Callable[[RunFiles], None] | None = None,
) -> tuple[dict[str, Any], list[RunResult]]:
    """Validate every run matching ``pattern``; returns the report dict and the per-run results."""
    if prefix not in PREFIX_MODES:
        raise UserError(f"unknown prefix mode {prefix!r}; choose one of: {', '.join(PREFIX_MODES)}")
    if overhead not in OVERHEAD_MODES:
        raise UserError(f"unknown overhead mode {overhead!r}; choose one of: {', '.join(OVERHEAD_MODES)}")
    runs = discover_runs(groundtruth, pattern)
    results = []
    for run in runs:
        if on_run is not None:
            on_run(run)
        results.append(validate_run(run, timing, prefix, coefficients))
    fit = fit_overheads(results, overhead)
    from tokensched import __version__
    from tokensched.config import SimConfig

    default_timing = SimConfig.model_fields["timing"].default if "timing" in SimConfig.model_fields else "roofline"
    meta = {"tokensched": __version__, "groundtruth": str(groundtruth), "timing": timing or default_timing,
            "timing_coefficients": coefficients, "prefix": prefix}
    return report_dict(results, fit, meta), results
