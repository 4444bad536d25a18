"""Simulated vs measured latency: the error metric, the client-overhead fit, and the printed/written report.

The metric is the percentage error of a distribution statistic (mean, p50, p90, p99, linear-interpolated
percentiles) of the simulated latencies against the same statistic of the measured ones, both taken over the
requests that succeeded in the measurement. It is kept signed in the report (so a systematic bias shows) and
summarised as the median of its absolute value across runs.

Client overhead. The measurements are taken at the HTTP client (request send to first / last streamed
token), the simulator stops at the engine. A constant ``c`` added to every simulated TTFT and E2E models the
difference (HTTP, API server, detokenisation, streaming). It is fitted only on measured, non-overloaded
runs: per run, the median over requests of ``measured TTFT - simulated TTFT``; ``c`` is the median of those.
A measured run is scored with ``c`` fitted on the *other* runs (leave-one-out), so no run is scored with a
number it helped fit; runs without measurements use the fit on all of them. A negative median (the simulated
engine alone is already slower than the client saw) is clamped to 0: a client cannot make a request faster. ``fit-steps`` fits the same
residual in units of the run's simulated decode step instead of seconds (see :func:`fit_overheads`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

STATS = ("mean", "p50", "p90", "p99")
METRICS = ("ttft_s", "e2e_s", "tpot_s")


def dist_stats(values: np.ndarray) -> dict[str, float]:
    """Mean and p50/p90/p99 (numpy's linear interpolation) of a non-empty sample."""
    v = np.asarray(values, dtype=np.float64)
    out = {"mean": float(v.mean())}
    for p in (50, 90, 99):
        out[f"p{p}"] = float(np.percentile(v, p))
    return out


def pct_error(simulated: float, measured: float) -> float | None:
    """Signed percentage error of ``simulated`` against ``measured`` (positive: the simulator is slower);
    None when the measured value is 0."""
    return (simulated - measured) / measured * 100.0 if measured else None


def compare(simulated: np.ndarray, measured: np.ndarray | None) -> dict[str, dict[str, float | None]]:
    """``{stat: {"measured", "simulated", "error_pct"}}`` for every stat in :data:`STATS`."""
    s = dist_stats(simulated)
    m = dist_stats(measured) if measured is not None else None
    return {k: {"measured": m[k] if m else None, "simulated": s[k],
                "error_pct": pct_error(s[k], m[k]) if m else None} for k in STATS}


def median(xs: list[float]) -> float | None:
    return float(np.median(xs)) if xs else None


@dataclass
class RunResult:
    """One run's comparison. ``kind``: "measured", "overloaded" or "predicted" (no measurements)."""

    run: str
    model: str
    tp: int
    profile: str
    kind: str
    requests: int  # replayed (failed ones included)
    compared: int  # requests in the statistics (succeeded in the measurement, or all for a prediction)
    ttft_residual_s: float | None  # median of measured - simulated TTFT (no overhead), measured runs only
    overhead_s: float = 0.0  # client overhead added to this run's simulated TTFT and E2E
    ttft_s: dict[str, dict[str, float | None]] = field(default_factory=dict)
    e2e_s: dict[str, dict[str, float | None]] = field(default_factory=dict)
    # decode pace (E2E - TTFT) / (output_len - 1): the overhead cancels out; tells step timing from queueing
    tpot_s: dict[str, dict[str, float | None]] = field(default_factory=dict)
    sim: dict[str, Any] = field(default_factory=dict)  # prefix hit rate, preemptions, batch size, wall time
    notes: list[str] = field(default_factory=list)
    output_len: int = 2  # tokens every request decoded
    # raw per-request samples, kept out of the JSON: (simulated ttft, simulated e2e, measured ttft, measured e2e)
    samples: tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None] | None = None

    def score(self, overhead: float) -> None:
        """Fill ``ttft_s`` / ``e2e_s`` with ``overhead`` added to the simulated samples."""
        assert self.samples is not None
        st, se, mt, me = self.samples
        self.overhead_s = overhead
        self.ttft_s = compare(st + overhead, mt)
        self.e2e_s = compare(se + overhead, me)
        steps = max(1, self.output_len - 1)
        self.tpot_s = compare((se - st) / steps, None if me is None or mt is None else (me - mt) / steps)


    @property
    def sim_step_s(self) -> float:
        """The run's median simulated decode step, (E2E - TTFT) / (output_len - 1) without overhead."""
        assert self.samples is not None
        st, se, _, _ = self.samples
        return float(np.median(se - st)) / max(1, self.output_len - 1)


OVERHEAD_MODES = ("fit", "fit-steps", "none")


def fit_overheads(results: list[RunResult], mode: str) -> dict[str, Any]:
    """Set each run's overhead (see the module docstring); returns the fit for the report.

    ``fit``: a constant in seconds. ``fit-steps``: a number of the run's own simulated decode steps (the
    residual divided by :attr:`RunResult.sim_step_s`), an alternative that tests whether the missing time
    scales with the engine's step rather than being a fixed network cost. ``none``: no overhead.
    """
    fit_runs = [r for r in results if r.kind == "measured" and r.ttft_residual_s is not None]
    if mode == "none" or not fit_runs:
        for r in results:
            r.score(0.0)
        return {"mode": "none" if mode == "none" else "none (no measured non-overloaded run)", "value_s": 0.0,
                "unit": "s", "fitted_on": [r.run for r in fit_runs]}
    steps = mode == "fit-steps"
    unit = {r.run: r.sim_step_s if steps else 1.0 for r in results}
    residuals = {r.run: r.ttft_residual_s / unit[r.run] for r in fit_runs}  # type: ignore[operator]

    def fitted(vals: list[float]) -> float:  # a client can only add time: a negative median becomes 0
        return max(0.0, median(vals) or 0.0)

    value = fitted(list(residuals.values()))
    for r in results:
        if r.run in residuals:
            r.score(fitted([v for k, v in residuals.items() if k != r.run]) * unit[r.run])
        else:
            r.score(value * unit[r.run])
    return {"mode": f"{mode} (leave-one-out on measured runs)", "value_s": value if not steps else None,
            "value_steps": value if steps else None, "unit": "decode steps" if steps else "s",
            "fitted_on": sorted(residuals), "per_run_residual": residuals}


def overall(results: list[RunResult], kind: str) -> dict[str, dict[str, float | None]]:
    """Median across runs of ``kind`` of the absolute percentage error, per metric and stat."""
    sel = [r for r in results if r.kind == kind]
    out: dict[str, dict[str, float | None]] = {}
    for m in METRICS:
        out[m] = {k: median([abs(getattr(r, m)[k]["error_pct"]) for r in sel  # type: ignore[arg-type]
                             if getattr(r, m)[k]["error_pct"] is not None]) for k in STATS}
    return out


def report_dict(results: list[RunResult], fit: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    runs = []
    for r in results:
        d = asdict(r)
        d.pop("samples")
        runs.append(d)
    return {**meta, "client_overhead": fit, "runs": runs,
            "overall": {"measured": overall(results, "measured"), "overloaded": overall(results, "overloaded")},
            "runs_per_kind": {k: sum(r.kind == k for r in results) for k in ("measured", "overloaded", "predicted")}}


def write_report(doc: dict[str, Any], results: list[RunResult], out_dir: str | Path) -> list[str]:
    """Write report.json and one E2E CDF plot per run; returns lines worth telling the user."""
    from tokensched.errors import UserError

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    except OSError as e:
        raise UserError(f"cannot write report: {e.strerror}", where=str(out)) from None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [f"wrote report.json to {out}", "matplotlib is not installed: no plots (pip install tokensched[plot])"]
    for r in results:
        assert r.samples is not None
        st, se, mt, me = r.samples
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        for vals, label in ((se + r.overhead_s, "simulated"), (me, "measured")):
            if vals is None:
                continue
            v = np.sort(vals)
            ax.step(v, np.arange(1, len(v) + 1) / len(v), where="post", label=label)
        ax.set_xlabel("E2E latency (s)")
        ax.set_ylabel("fraction of requests")
        ax.set_title(f"{r.run} ({r.kind}) · timing {doc['timing']} · overhead {r.overhead_s * 1e3:.1f} ms",
                     fontsize=7)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / f"{r.run}_e2e_cdf.png", metadata={"Software": None})
        plt.close(fig)
    return [f"wrote report.json and {len(results)} E2E CDF plots to {out}"]


# ----------------------------------------------------------------------------- console output


def _fmt_t(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v * 1e3:,.1f} ms" if v < 1 else f"{v:,.2f} s"


def _fmt_e(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v:+.1f} %" if abs(v) < 100 else f"{v:+.0f} %" if abs(v) < 10_000 else f"{v:+.1e} %"


def _short(run: str) -> str:
    """The run name without its timestamp (``20260217-162547-``) and version suffixes, for narrow tables."""
    parts = run.split("-", 2)
    name = parts[2] if len(parts) == 3 and parts[0].isdigit() and parts[1].isdigit() else run
    return name.replace("-v0-1-", "-").replace("-hf-", "-")


_LABELS = (("ttft_s", "TTFT"), ("e2e_s", "E2E"), ("tpot_s", "TPOT"))


def print_report(doc: dict[str, Any], console: Any) -> None:
    """Rich tables: per run (grouped by kind), then the medians across runs."""
    from rich import box
    from rich.table import Table

    fit = doc["client_overhead"]
    value = (f"{fit['value_steps']:.2f} decode steps" if fit.get("value_steps") is not None
             else f"{fit['value_s'] * 1e3:.1f} ms")
    timing = doc["timing"] + (f" ({doc['timing_coefficients']})" if doc.get("timing_coefficients") else "")
    console.print(f"[bold]validate[/] {doc['groundtruth']} · timing [bold]{timing}[/] · prefix "
                  f"{doc['prefix']} · client overhead {fit['mode']}: {value} fitted on all")
    titles = {"measured": "Measured runs: signed error of the simulated statistic",
              "overloaded": "Overloaded runs (requests timed out in the real run)",
              "predicted": "Runs without measurements: simulated latency"}
    for kind in ("measured", "overloaded", "predicted"):
        runs = [r for r in doc["runs"] if r["kind"] == kind]
        if not runs:
            continue
        t = Table(title=titles[kind], title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
        t.add_column("run", no_wrap=True)
        t.add_column("metric", no_wrap=True)
        if kind == "predicted":
            for k in STATS:
                t.add_column(k, justify="right")
        else:
            for c in ("meas p50", "sim p50", "err mean", "err p50", "err p90", "err p99"):
                t.add_column(c, justify="right")
        for r in runs:
            for i, (m, label) in enumerate(_LABELS):
                c = r[m]
                name = _short(r["run"]) if i == 0 else f"[dim]overhead {r['overhead_s'] * 1e3:.1f} ms[/]" if i == 1 else ""
                if kind == "predicted":
                    t.add_row(name, label, *(_fmt_t(c[k]["simulated"]) for k in STATS))
                else:
                    t.add_row(name, label, _fmt_t(c["p50"]["measured"]), _fmt_t(c["p50"]["simulated"]),
                              *(_fmt_e(c[k]["error_pct"]) for k in STATS))
            t.add_section()
        console.print(t)
    for kind in ("measured", "overloaded"):
        o = doc["overall"][kind]
        n = sum(r["kind"] == kind and r["ttft_s"]["p50"]["measured"] is not None for r in doc["runs"])
        if not n:
            continue
        t = Table(title=f"Overall: median |error| across {n} {kind} runs with measurements",
                  title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
        t.add_column("metric")
        for k in STATS:
            t.add_column(k, justify="right")
        for m, label in _LABELS:
            t.add_row(label, *("–" if o[m][k] is None else f"{o[m][k]:.1f} %" for k in STATS))
        console.print(t)
