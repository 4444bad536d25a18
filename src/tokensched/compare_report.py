"""Rendering a :class:`~tokensched.compare.Comparison`: the table rows, PNG plots, report.md and report.html.

The same rows feed the terminal table, the Markdown and the HTML, so the three never disagree. Plots use
matplotlib's Agg backend (the optional ``plot`` extra); without matplotlib the report is written without them
and says so. Colours are fixed per variant across every plot.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from tokensched.compare import Comparison, Point, capacity, results_json
from tokensched.errors import UserError

# "\n" breaks a header in the terminal table; Markdown and HTML show a space instead.
HEADERS = ("variant", "qps", "TTFT ms\np50/p99", "TPOT ms\np50/p99", "ITL ms\np99", "E2E s\np50/p99", "req/s",
           "output\ntok/s", "goodput\nreq/s", "SLO\nmet", "preempt-\nions", "prefix\nhits")
NO_SLO = "no SLO given: pass --slo-ttft and/or --slo-tpot"


def _ms(v: float | None) -> str:
    if v is None:
        return "–"
    v *= 1e3
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:,.0f}"


def qps_label(p: Point) -> str:
    if p.qps is not None:
        return f"{p.qps:g}"
    return "offline" if p.offered_qps is None else f"{p.offered_qps:.2f}*"


def table_rows(comp: Comparison) -> list[list[str]]:
    """One row of HEADERS per point, in the comparison's order (variant, then qps)."""
    rows = []
    for p in comp.points:
        s = p.summary
        slo = s["slo"]
        rows.append([
            p.variant or "base", qps_label(p),
            f"{_ms(s['ttft_s']['p50'])}/{_ms(s['ttft_s']['p99'])}",
            f"{_ms(s['tpot_s']['p50'])}/{_ms(s['tpot_s']['p99'])}", _ms(s["itl_s"]["p99"]),
            "–/–" if s["e2e_s"]["p50"] is None else f"{s['e2e_s']['p50']:.2f}/{s['e2e_s']['p99']:.2f}",
            f"{s['throughput']['requests_per_s']:.2f}", f"{s['throughput']['output_tokens_per_s']:,.0f}",
            "–" if slo["goodput_requests_per_s"] is None else f"{slo['goodput_requests_per_s']:.2f}",
            "–" if slo["attainment"] is None else f"{slo['attainment']:.1%}",
            f"{s['preemptions']:,}", f"{s['prefix_cache']['hit_rate']:.1%}",
        ])
    return rows


PROGRAM_HEADERS = ("variant", "programs/s", "JCT s\nmean", "JCT s\np50/p99", "deadline\nattainment",
                   "context\nrecomputed", "tool idle s\nper program")


def program_rows(comp: Comparison) -> list[list[str]]:
    """Program metrics per point (program workloads only; else empty)."""
    rows = []
    for p in comp.points:
        g = p.summary.get("programs")
        if g is None:
            continue
        j = g["jct_s"]
        att = g["deadline"]["attainment"]
        rows.append([p.variant or "base", qps_label(p), "–" if j["mean"] is None else f"{j['mean']:.2f}",
                     "–/–" if j["p50"] is None else f"{j['p50']:.2f}/{j['p99']:.2f}",
                     "–" if att is None else f"{att:.1%}", f"{g['prefill_tokens']['context_recomputed']:,}",
                     "–" if g["time_per_program_s"]["tool_idle"] is None
                     else f"{g['time_per_program_s']['tool_idle']:.2f}"])
    return rows


def capacity_rows(comp: Comparison) -> list[list[str]]:
    """(variant, capacity) rows when a qps sweep and an SLO make capacity defined; else empty."""
    if not comp.qps or not comp.has_slo:
        return []
    out = []
    for v in comp.variants:
        c = capacity(comp, v.name)
        if c is None:
            continue
        text = (f"< {comp.qps[0]:g}" if c["qps"] is None else f"≥ {c['qps']:g}" if c["all_met"] else f"{c['qps']:g}")
        out.append([v.name or "base", text])
    return out


def deployment_text(comp: Comparison) -> str:
    """The base deployment in words (variants may change it; their overrides are listed separately)."""
    b = comp.base
    text = f"{b.model} on {b.tp} × {b.gpu}"
    if b.cluster:
        return f"{text} (cluster of {len(b.cluster)} pools behind {b.router})"
    return text + (f" × {b.replicas} replicas behind {b.router}" if b.replicas > 1 else "")


def slo_text(comp: Comparison) -> str:
    b = comp.base
    parts = ([f"TTFT ≤ {_ms(b.slo_ttft)} ms"] if b.slo_ttft is not None else []) + (
        [f"TPOT ≤ {_ms(b.slo_tpot)} ms"] if b.slo_tpot is not None else [])
    if not parts:
        return "per-request SLOs from the workload" if comp.has_slo else "none given"
    return ", ".join(parts)


# ---- per-tenant service --------------------------------------------------------------------------------

SERVICE_WINDOWS = 40


def tenant_service(p: Point, windows: int = SERVICE_WINDOWS) -> tuple[np.ndarray, dict[str, np.ndarray], Any]:
    """Tokens served per second per tenant in equal windows: (window centres, {tenant: rate}, max service gap).

    Uses :mod:`tokensched.fairness_metrics` with unit prices (a prompt token and an output token count the
    same): the prompt counts at first scheduling, output tokens spread from the first token to completion.
    The gap is VTC's fairness measure, the largest service difference between two backlogged tenants.
    """
    from tokensched.fairness_metrics import max_service_gap, tenant_service as service_table

    s = p.samples
    cols = [c for c in s if c != "e2e_s"]
    rows = [{"tenant": t, **{c: (None if np.isnan(s[c][i]) else float(s[c][i])) for c in cols}}
            for i, t in enumerate(p.tenants)]
    end = float(np.nanmax(s["finish_s"])) if np.isfinite(s["finish_s"]).any() else 1.0
    start = float(np.min(s["arrival_s"])) if len(s["arrival_s"]) else 0.0
    width = max(end - start, 1e-6) / windows
    table = service_table(rows, width, input_price=1.0, output_price=1.0, start_s=start, end_s=start + width * windows)
    centres = (table.edges[:-1] + table.edges[1:]) / 2
    return centres, {t: v / width for t, v in sorted(table.service.items())}, max_service_gap(table)


# ---- plots -----------------------------------------------------------------------------------------------

def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _style(i: int) -> dict[str, Any]:
    """Colour, dash and width differ per line, so identical results (e.g. two policies that never differ on
    this workload) stay visible: the earlier line is drawn wider underneath."""
    return {"color": f"C{i % 10}", "linestyle": ("-", "--", "-.", ":")[i % 4], "linewidth": max(1.2, 2.8 - 0.5 * i)}


def _markers(i: int) -> str:
    return "os^DvP"[i % 6]


def _log_axis(ax: Any, lo: float, hi: float) -> None:
    """Log x axis labelled 1-2-5 within each decade when the data spans few decades (else 1 per decade)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    few = hi > 0 and lo > 0 and np.log10(hi / lo) <= 2.5
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if few else (1.0,)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=110, metadata={"Software": None})
    _plt().close(fig)
    return path


def plot_latency_cdf(comp: Comparison, qps: float | None, path: Path) -> Path:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.3), layout="constrained")
    for ax, col, label in ((axes[0], "ttft_s", "TTFT"), (axes[1], "e2e_s", "end-to-end latency")):
        lo, hi = np.inf, 0.0
        for i, v in enumerate(comp.variants):
            p = comp.point(v.name, qps)
            x = np.sort(p.samples[col][~np.isnan(p.samples[col])])
            if len(x):
                ax.plot(x, np.arange(1, len(x) + 1) / len(x), label=v.name or "base", **_style(i))
                lo, hi = min(lo, float(x[0])), max(hi, float(x[-1]))
        if col == "ttft_s" and comp.base.slo_ttft is not None:
            ax.axvline(comp.base.slo_ttft, color="grey", linestyle=":", label=f"TTFT SLO {_ms(comp.base.slo_ttft)} ms")
        _log_axis(ax, lo, hi)
        ax.set_xlabel(f"{label} (s, log scale)")
        ax.set_ylabel("fraction of completed requests")
        ax.set_ylim(0, 1.01)
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title(f"{label} CDF")
    axes[0].legend(fontsize=8, loc="lower right")
    load = "the workload's own arrivals" if qps is None else f"{qps:g} requests/s"
    fig.suptitle(f"Latency CDFs at {load} — {deployment_text(comp)}, workload {Path(comp.base.workload).name}")
    return _save(fig, path)


def plot_load(comp: Comparison, path: Path) -> Path:
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.3), layout="constrained")
    has_slo = comp.has_slo
    xs_all: list[float] = []
    for i, v in enumerate(comp.variants):
        pts = [comp.point(v.name, q) for q in (comp.qps or [None])]
        xs = [p.qps if p.qps is not None else (p.offered_qps or 0.0) for p in pts]
        xs_all += xs
        st = {**_style(i), "marker": _markers(i), "label": v.name or "base"}
        axes[0].plot(xs, [p.summary["throughput"]["requests_per_s"] for p in pts], **st)
        if has_slo:
            axes[1].plot(xs, [p.summary["slo"]["goodput_requests_per_s"] or 0.0 for p in pts], **st)
            axes[2].plot(xs, [100 * (p.summary["slo"]["attainment"] or 0.0) for p in pts], **st)
            c = capacity(comp, v.name)
            if c and c["qps"] is not None:
                att = comp.point(v.name, c["qps"]).summary["slo"]["attainment"]
                axes[2].plot([c["qps"]], [100 * att], marker="*", markersize=14, color=st["color"], linestyle="")
    if xs_all:
        top = max(xs_all)
        for ax in axes[:2] if has_slo else axes[:1]:
            ax.plot([0, top], [0, top], color="grey", linestyle=":", label="offered load")
    axes[0].set_title("Throughput")
    axes[0].set_ylabel("completed requests/s")
    axes[1].set_title("Goodput (requests meeting the SLO)")
    axes[1].set_ylabel("requests/s meeting the SLO")
    axes[2].set_title(f"SLO attainment (★ = capacity at {comp.slo_target:.0%})")
    axes[2].set_ylabel("% of requests meeting the SLO")
    if has_slo:
        axes[2].axhline(100 * comp.slo_target, color="grey", linestyle="--", label=f"target {comp.slo_target:.0%}")
        axes[2].set_ylim(0, 102)
    else:
        for ax in axes[1:]:
            ax.text(0.5, 0.5, NO_SLO.replace(": ", ":\n"), ha="center", va="center", transform=ax.transAxes,
                    fontsize=11, color="dimgrey")
            ax.set_xticks([])
            ax.set_yticks([])
    for ax in axes:
        ax.set_xlabel("offered load (requests/s)")
        ax.grid(True, alpha=0.3)
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
    axes[0].legend(fontsize=8)
    if has_slo:
        axes[2].legend(fontsize=8)
    fig.suptitle(f"Throughput and goodput vs load — SLO: {slo_text(comp) if has_slo else NO_SLO}")
    return _save(fig, path)


def plot_tenants(comp: Comparison, qps: float | None, path: Path) -> Path:
    plt = _plt()
    n = len(comp.variants)
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False, sharey=True,
                             layout="constrained")
    tenants = comp.tenants
    for k, v in enumerate(comp.variants):
        ax = axes[k // cols][k % cols]
        centres, rates, gap = tenant_service(comp.point(v.name, qps))
        for j, t in enumerate(tenants):
            if t in rates:
                ax.plot(centres, rates[t], label=t, **_style(j))
        ax.set_title(f"{v.name or 'base'}\n(max gap between backlogged tenants: {gap.gap:,.0f} tokens)", fontsize=10)
        ax.set_xlabel("simulated time (s)")
        ax.set_ylabel("tokens served per second")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, title="tenant")
    for k in range(n, rows * cols):
        axes[k // cols][k % cols].set_visible(False)
    load = "the workload's own arrivals" if qps is None else f"{qps:g} requests/s"
    fig.suptitle(f"Per-tenant service over time at {load} (prompt tokens at first scheduling, output tokens spread "
                 f"to completion; {SERVICE_WINDOWS} windows)")
    return _save(fig, path)


def write_plots(comp: Comparison, out: Path) -> list[Path]:
    """Every PNG of the report; an empty list (and no error) when matplotlib is missing."""
    try:
        _plt()
    except ImportError:
        return []
    paths = []
    levels: list[float | None] = list(comp.qps) if comp.qps else [None]
    for q in levels:
        suffix = "" if q is None else f"_qps-{q:g}"
        paths.append(plot_latency_cdf(comp, q, out / f"latency_cdf{suffix}.png"))
    paths.append(plot_load(comp, out / "load.png"))
    if len(comp.tenants) > 1:
        for q in levels:
            suffix = "" if q is None else f"_qps-{q:g}"
            paths.append(plot_tenants(comp, q, out / f"tenants{suffix}.png"))
    return paths


# ---- report documents ----------------------------------------------------------------------------------

def report_blocks(comp: Comparison, images: list[Path]) -> list[tuple[str, Any]]:
    """The report as (kind, payload) blocks: h1, h2, p, table (headers, rows), img (path), code (text)."""
    b = comp.base
    n = comp.points[0].summary["requests"]["total"] if comp.points else 0
    blocks: list[tuple[str, Any]] = [
        ("h1", "tokensched compare"),
        ("p", f"{deployment_text(comp)}; workload {b.workload} ({n:,} requests, seed {b.seed}); "
              f"SLO: {slo_text(comp)}."),
        ("h2", "Variants"),
        ("table", (("variant", "overrides of the base configuration"),
                   [[v.name or "base", ", ".join(f"{k}={val}" for k, val in v.overrides.items()) or "(none)"]
                    for v in comp.variants])),
        ("h2", "Results"),
        ("table", (HEADERS, table_rows(comp))),
    ]
    prog = program_rows(comp)
    if prog:
        blocks += [("h2", "Programs"), ("table", (PROGRAM_HEADERS, prog))]
    if any(p.qps is None and p.offered_qps is not None for p in comp.points):
        blocks.append(("p", "A rate marked with an asterisk is the workload's own mean arrival rate "
                            "(requests / arrival span)."))
    cap = capacity_rows(comp)
    if cap:
        blocks += [("h2", "Capacity"),
                   ("p", f"Highest swept rate up to which at least {comp.slo_target:.0%} of requests meet the SLO "
                         f"({slo_text(comp)}); the grid is {', '.join(f'{q:g}' for q in comp.qps or [])} requests/s."),
                   ("table", (("variant", "capacity (requests/s)"), cap))]
    if images:
        blocks.append(("h2", "Plots"))
        blocks += [("img", p) for p in images]
    else:
        blocks.append(("p", "Plots skipped: matplotlib is not installed (pip install 'tokensched[plot]')."))
    if comp.notes:
        blocks += [("h2", "Workload notes"), ("p", "; ".join(comp.notes) + ".")]
    blocks += [("h2", "Base configuration"),
               ("code", yaml.safe_dump(b.model_dump(mode="json"), sort_keys=False).rstrip())]
    return blocks


def _flat(header: str) -> str:
    return header.replace("-\n", "").replace("\n", " ")


def _md_cell(s: str) -> str:
    return str(s).replace("|", "\\|")


def render_md(blocks: list[tuple[str, Any]]) -> str:
    out: list[str] = []
    for kind, x in blocks:
        if kind == "h1":
            out.append(f"# {x}")
        elif kind == "h2":
            out.append(f"## {x}")
        elif kind == "p":
            out.append(x)
        elif kind == "table":
            headers, rows = x
            out.append("\n".join(["| " + " | ".join(_flat(h) for h in headers) + " |", "|" + "---|" * len(headers)]
                                 + ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]))
        elif kind == "img":
            out.append(f"![{x.stem}]({x.name})")
        elif kind == "code":
            out.append(f"```yaml\n{x}\n```")
    return "\n\n".join(out) + "\n"


def render_html(blocks: list[tuple[str, Any]]) -> str:
    """One self-contained HTML file (PNGs embedded as data URIs)."""
    e = html.escape
    body: list[str] = []
    for kind, x in blocks:
        if kind in ("h1", "h2"):
            body.append(f"<{kind}>{e(x)}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{e(x)}</p>")
        elif kind == "table":
            headers, rows = x
            body.append("<table><tr>" + "".join(f"<th>{e(_flat(h))}</th>" for h in headers) + "</tr>"
                        + "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in rows)
                        + "</table>")
        elif kind == "img":
            data = base64.b64encode(x.read_bytes()).decode("ascii")
            body.append(f'<p><img alt="{e(x.stem)}" src="data:image/png;base64,{data}"></p>')
        elif kind == "code":
            body.append(f"<pre>{e(x)}</pre>")
    style = ("body{font-family:sans-serif;max-width:1400px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child{text-align:left}"
             "img{max-width:100%}")
    return (f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>tokensched compare</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_report(comp: Comparison, out_dir: str | Path, *, html_file: bool = False) -> list[Path]:
    """report.md, results.json, the PNGs (and report.html) under ``out_dir``; returns what was written."""
    d = Path(out_dir)
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create output directory: {e.strerror}", where=str(d)) from None
    images = write_plots(comp, d)
    blocks = report_blocks(comp, images)
    written = list(images)
    p = d / "results.json"
    p.write_text(json.dumps(results_json(comp), indent=2) + "\n", encoding="utf-8")
    written.append(p)
    p = d / "report.md"
    p.write_text(render_md(blocks), encoding="utf-8")
    written.append(p)
    if html_file:
        p = d / "report.html"
        p.write_text(render_html(blocks), encoding="utf-8")
        written.append(p)
    return written
