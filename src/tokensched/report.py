"""Writing results: the summary table, summary JSON and per-request / timeline CSV files.

Files are byte-deterministic for the same inputs: fixed column order, ``repr`` floats, no timestamps
(except ``wall_s`` in the summary, which measures the run itself).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from tokensched.errors import UserError
from tokensched.simulator import SimResult  # noqa: F401  (or a cluster.sim.ClusterResult)

REQUEST_COLUMNS = ("id", "arrival_s", "prompt_tokens", "output_tokens", "tenant", "status", "queue_s",
                   "ttft_s", "tpot_s", "e2e_s", "itl_max_s", "preemptions", "prefix_hit_tokens", "finish_s", "error")


def summary_json(summary: dict[str, Any]) -> str:
    return json.dumps(summary, indent=2)


def _ms(v: float | None) -> str:
    return "–" if v is None else f"{v * 1e3:,.1f}"


def print_summary(result: Any, console: Console, notes: list[str] = ()) -> None:  # type: ignore[assignment]
    s, info = result.summary, result.info
    req = s["requests"]
    console.print(
        f"[bold]{info['model']}[/] on {info['tp']} x {info['gpu']} · scheduler [bold]{info['scheduler']}[/] · "
        f"{info['kv_blocks']:,} KV blocks x {info['block_size']} · budget {info['max_batched_tokens']:,} tokens · "
        f"max {info['max_num_seqs']} seqs"
    )
    console.print(f"workload [bold]{result.config.workload}[/]: {req['total']:,} requests, "
                  f"{req['completed']:,} completed, {req['failed']:,} failed, "
                  f"{s['duration_s']:,.1f} s simulated in {s['wall_s']:.2f} s")
    if info.get("timing_source"):
        console.print(f"[dim]timing: {info['timing_source']}[/]")
    for n in notes:
        console.print(f"[dim]note: {n}[/]")
    t = Table(title="Latency (ms)", title_justify="left")
    t.add_column("metric")
    for c in ("mean", "p50", "p90", "p99"):
        t.add_column(c, justify="right")
    for key, label in (("ttft_s", "TTFT"), ("tpot_s", "TPOT"), ("itl_s", "ITL"), ("e2e_s", "E2E"),
                       ("queue_s", "queueing")):
        st = s[key]
        t.add_row(label, *(_ms(st[c]) for c in ("mean", "p50", "p90", "p99")))
    console.print(t)
    th = s["throughput"]
    t2 = Table(show_header=False, title="Throughput and resources", title_justify="left")
    t2.add_column("k")
    t2.add_column("v", justify="right")
    t2.add_row("requests/s", f"{th['requests_per_s']:,.2f}")
    t2.add_row("input tokens/s", f"{th['input_tokens_per_s']:,.0f}")
    t2.add_row("output tokens/s", f"{th['output_tokens_per_s']:,.0f}")
    t2.add_row("prefix cache hit rate", f"{s['prefix_cache']['hit_rate']:.1%}")
    t2.add_row("preemptions", f"{s['preemptions']:,}")
    t2.add_row("mean / max batch size", f"{s['batch']['mean_size']:.1f} / {s['batch']['max_size']}")
    t2.add_row("peak KV usage", f"{s['kv_cache']['peak_usage']:.1%}")
    slo = s["slo"]
    if slo["attainment"] is not None:
        t2.add_row("SLO attainment", f"{slo['attainment']:.1%}")
        t2.add_row("goodput (requests/s)", f"{slo['goodput_requests_per_s']:,.2f}")
    console.print(t2)
    if "programs" in s:
        print_programs(s["programs"], console)
    if "cluster" in s and (s["cluster"]["replicas"] > 1 or "programs" not in s):
        print_cluster(result, console)


def _s(v: float | None) -> str:
    return "–" if v is None else f"{v:,.2f}"


def print_programs(p: dict[str, Any], console: Console) -> None:
    """Program metrics beside the request metrics: job completion time, deadlines, time split, prefill reuse."""
    console.print(f"programs: [bold]{p['count']:,}[/] ({p['completed']:,} completed, {p['failed']:,} failed) · "
                  f"program policy [bold]{p['policy']}[/]")
    t = Table(title="Job completion time (s)", title_justify="left")
    t.add_column("metric")
    for c in ("mean", "p50", "p90", "p99", "max"):
        t.add_column(c, justify="right")
    t.add_row("JCT", *(_s(p["jct_s"][c]) for c in ("mean", "p50", "p90", "p99", "max")))
    console.print(t)
    t = Table(show_header=False, title="Per program", title_justify="left")
    t.add_column("k")
    t.add_column("v", justify="right")
    tp = p["time_per_program_s"]
    t.add_row("mean time with an LLM call waiting or running (s)", _s(tp["llm"]))
    t.add_row("mean time idle on tool calls (s)", _s(tp["tool_idle"]))
    t.add_row("mean time paused (s)", _s(tp["paused"]))
    t.add_row("mean queueing of its calls (s)", _s(tp["queue"]))
    d = p["deadline"]
    if d["programs"]:
        t.add_row("deadline attainment", f"{d['attainment']:.1%} of {d['programs']:,}")
    pf = p["prefill_tokens"]
    if pf["context"]:
        t.add_row("context tokens reused from cache", f"{pf['context_saved']:,} ({pf['context_saved'] / pf['context']:.1%})")
        t.add_row("context tokens recomputed", f"{pf['context_recomputed']:,}")
    t.add_row("prefill tokens computed", f"{pf['computed']:,} of {pf['prompt']:,} prompt tokens")
    pins = p["pins"]
    if pins["pins"]:
        t.add_row("KV pins (units hit / blocks expired / units taken under pressure)",
                  f"{pins['pins']:,} ({pins['pin_hits']:,} / {pins['pins_expired_blocks']:,} / {pins['pin_evictions']:,})")
    pa = p["pause"]
    if pa["threshold"] is not None:
        t.add_row("pauses / resumes", f"{pa['pauses']:,} / {pa['resumes']:,}")
    console.print(t)


_CLUSTER_BASE_KEYS = {"replicas", "router", "imbalance_requests", "imbalance_tokens", "gpu_hours", "cost_usd",
                      "cost_per_million_output_tokens"}


def print_cluster(result: Any, console: Console) -> None:
    c = result.summary["cluster"]
    cost = "–" if c["cost_usd"] is None else f"${c['cost_usd']:,.2f}"
    per_m = "–" if c["cost_per_million_output_tokens"] is None else f"${c['cost_per_million_output_tokens']:,.3f}"
    console.print(f"cluster: {c['replicas']} replicas, router [bold]{c['router']}[/] · imbalance "
                  f"{c['imbalance_requests']:.2f} (requests) / {c['imbalance_tokens']:.2f} (tokens), max/mean · "
                  f"{c['gpu_hours']:,.2f} GPU-hours · cost {cost} · {per_m} per 1M output tokens")
    extra = [(k, v) for k, v in c.items() if k not in _CLUSTER_BASE_KEYS and isinstance(v, (int, float))
             and not isinstance(v, bool)]
    if extra:  # counters of migration, disaggregation or autoscaling (all of them are in the JSON)
        console.print("  " + " · ".join(f"{k.replace('_', ' ')} {v:,.3g}" if isinstance(v, float) else
                                        f"{k.replace('_', ' ')} {v:,}" for k, v in extra))
    t = Table(title="Pools", title_justify="left")
    for col in ("pool", "gpu", "tp", "replicas", "assigned", "completed", "TTFT p50 ms", "GPU-hours", "$/GPU-h"):
        t.add_column(col, justify="left" if col == "pool" else "right")
    for p in result.pools:
        t.add_row(p["pool"], p["gpu"], str(p["tp"]), str(p["replicas"]), f"{p['assigned']:,}", f"{p['completed']:,}",
                  _ms(p["ttft_p50_s"]), f"{p['gpu_hours']:,.2f}",
                  "–" if p["price_per_gpu_hour"] is None else f"{p['price_per_gpu_hour']:g}")
    console.print(t)
    if len(result.replicas) <= 16:
        t = Table(title="Replicas", title_justify="left")
        for col in ("#", "pool", "assigned", "TTFT p50 ms", "TTFT p99 ms", "preempt", "hit rate", "mean batch",
                    "peak KV"):
            t.add_column(col, justify="right")
        for r in result.replicas:
            t.add_row(str(r["replica"]), r["pool"], f"{r['assigned']:,}", _ms(r["ttft_p50_s"]), _ms(r["ttft_p99_s"]),
                      f"{r['preemptions']:,}", f"{r['prefix_hit_rate']:.1%}", f"{r['mean_batch']:.1f}",
                      f"{r['peak_kv_usage']:.0%}")
        console.print(t)


def write_outputs(result: Any, out_dir: str | Path) -> list[Path]:
    d = Path(out_dir)
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create output directory: {e.strerror}", where=str(d)) from None
    written = []
    p = d / "summary.json"
    p.write_text(summary_json(result.summary) + "\n", encoding="utf-8")
    written.append(p)
    p = d / "config.yaml"
    p.write_text(yaml.safe_dump(result.config.model_dump(), sort_keys=False), encoding="utf-8")
    written.append(p)
    p = d / "requests.csv"
    with p.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(REQUEST_COLUMNS)
        for row in result.rows:
            w.writerow(["" if row[c] is None else row[c] for c in REQUEST_COLUMNS])
    written.append(p)
    progs = getattr(result, "programs", None)
    if progs:
        p = d / "programs.csv"
        with p.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, lineterminator="\n")
            cols = list(progs[0])
            w.writerow(cols)
            for row in progs:
                w.writerow(["" if row[c] is None else row[c] for c in cols])
        written.append(p)
    rec = getattr(result, "recorder", None)
    if rec is None:  # a cluster run: one row per replica instead of a timeline
        p = d / "replicas.csv"
        with p.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, lineterminator="\n")
            cols = list(result.replicas[0]) if result.replicas else []
            w.writerow(cols)
            for row in result.replicas:
                w.writerow(["" if row[c] is None else row[c] for c in cols])
        written.append(p)
        return written
    p = d / "timeline.csv"
    with p.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(("time_s", "iterations", "batch_size", "running", "waiting", "kv_used_blocks", "kv_usage"))
        blocks = result.summary["kv_cache"]["blocks"]
        for row in zip(rec.t_time, rec.t_iters, rec.t_batch, rec.t_running, rec.t_waiting, rec.t_used_blocks):
            w.writerow((*row, row[-1] / blocks))
    written.append(p)
    return written
