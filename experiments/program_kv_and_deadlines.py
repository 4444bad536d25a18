"""KV across tool calls (LRU, Continuum pins, KVFlow eviction + CPU prefetch, pausing) and deadline-aware ordering.

Part 1 — whose KV survives a tool call. The five real SWE-agent trajectories
(``../shared/traces/continuum_swe``; contexts grow to 31k tokens) replayed as 80 programs arriving at 1 program/s,
tool times x5 (``tool_scale``: 2.5 s bash calls, so a context sits idle long enough to be evicted), Llama-3.1-8B on
one H100 with the KV cache cut to 8,000 blocks (128k tokens, a few programs' contexts), so idle contexts compete
with running calls for room. Rows: GPU only, then with 100 GB of CPU memory per replica for evicted KV
(``--cpu-kv-gb 100``); KVFlow with and without its prefetch; pausing with program FCFS. Paper claims beside:
Continuum 1.12-3.66x delay reduction (arXiv 2511.02230); KVFlow up to 1.83x / 2.19x over SGLang's hierarchical
radix cache (arXiv 2507.07400); ThunderAgent ~12-16 % throughput (routers-and-agent-schedulers.md).

Part 2 — deadlines (HEXGEN-TEXT2SQL-style urgency). 300 ``agent-mix`` programs (80 % short, 20 % long DAG /
ReAct) on one H100, each given a deadline: short programs 8 s, long ones 60 s after arrival (an interactive agent
and a background job). Ordering only matters when calls queue; with vLLM's default 256 seats and this model's KV
nothing waits even at 40 programs/s (every policy gives the same run), so the engine is capped at 16 or 32 running
sequences (``max_num_seqs``, as for a larger model) at 6 and 10 programs/s. Deadline attainment and JCT under
request FCFS, program FCFS, Autellix ATLAS and HEXGEN urgency. Paper claim: HEXGEN-TEXT2SQL tightens latency
deadlines up to 1.67x (avg 1.41x) vs vLLM.

Run: ``python experiments/program_kv_and_deadlines.py`` (about 60-90 s here).
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tokensched.config import SimConfig
from tokensched.programs.model import Program
from tokensched.programs.sim import simulate_programs
from tokensched.programs.sources import generate_programs, load_programs

SWE = Path(__file__).resolve().parents[1].parent / "shared/traces/continuum_swe/continuum_swe_rounds_derived.jsonl"


def part1(console: Console) -> None:
    if not SWE.exists():
        console.print(f"skipping part 1: {SWE} not found")
        return
    progs = load_programs(str(SWE), num_programs=80, rate=1.0, tool_scale=5.0, seed=0).programs
    t = Table(title="Part 1: SWE-agent trajectories, 80 programs at 1/s, tools x5, 8,000 KV blocks (s)",
              title_justify="left")
    for c in ("CPU KV", "policy", "JCT mean", "p50", "p99", "context recomputed", "from CPU (blocks)",
              "prefetched", "preemptions"):
        t.add_column(c, justify="left" if c in ("policy", "CPU KV") else "right")
    runs = [(0, "request-fcfs", {}), (0, "continuum", {}), (0, "kvflow", {}),
            (0, "program-fcfs", {"pause_threshold": 0.6}),
            (100, "request-fcfs", {}), (100, "continuum", {}), (100, "kvflow", {"prefetch": False}),
            (100, "kvflow", {})]
    base: dict[int, float] = {}
    for gb, pol, opts in runs:
        r = simulate_programs(SimConfig(kv_blocks=8000, cpu_kv_gb=gb), progs, pol, opts)
        s = r.summary
        p = s["programs"]
        j = p["jct_s"]
        base.setdefault(gb, j["mean"])
        cpu = s.get("cpu_kv", {})
        label = pol + "".join(f" {k}={v}" for k, v in opts.items())
        t.add_row(f"{gb} GB", label, f"{j['mean']:.1f} ({base[gb] / j['mean']:.2f}x)", f"{j['p50']:.1f}",
                  f"{j['p99']:.1f}", f"{p['prefill_tokens']['context_recomputed']:,}",
                  f"{cpu.get('loaded_blocks', 0):,}", f"{cpu.get('prefetched_blocks', 0):,}", f"{s['preemptions']:,}")
    console.print(t)
    console.print("(x: mean JCT of request-fcfs with the same CPU memory / this row's)")


def with_deadlines(programs: list[Program]) -> list[Program]:
    return [Program(p.id, p.arrival_s, p.nodes, 8.0 if p.kind.startswith("short") else 60.0, p.tenant,
                    p.prefix_group, p.shared_prefix_tokens, p.kind) for p in programs]


def part2(console: Console) -> None:
    t = Table(title="Part 2: agent-mix, 300 programs, deadlines short 8 s / long 60 s", title_justify="left")
    for c in ("load", "policy", "attainment", "short met", "long met", "JCT mean", "short mean", "long mean", "p99"):
        t.add_column(c, justify="left" if c in ("policy", "load") else "right")
    for rate, seats in ((6.0, 16), (10.0, 32)):
        progs = with_deadlines(generate_programs("agent-mix", 300, rate=rate, seed=0))
        for pol in ("request-fcfs", "program-fcfs", "atlas", "hexgen"):
            r = simulate_programs(SimConfig(max_num_seqs=seats), progs, pol)
            p = r.summary["programs"]
            rows = r.programs or []
            by_kind = {k: [x for x in rows if x["kind"].startswith(k)] for k in ("short", "long")}
            met = {k: sum(1 for x in v if x["met_deadline"]) / len(v) for k, v in by_kind.items()}
            mean = {k: sum(x["jct_s"] for x in v) / len(v) for k, v in by_kind.items()}
            t.add_row(f"{rate:g}/s, {seats} seats", pol, f"{p['deadline']['attainment']:.1%}", f"{met['short']:.1%}",
                      f"{met['long']:.1%}", f"{p['jct_s']['mean']:.1f}", f"{mean['short']:.1f}",
                      f"{mean['long']:.1f}", f"{p['jct_s']['p99']:.1f}")
    console.print(t)


def main() -> int:
    t0 = time.perf_counter()
    console = Console(width=140)
    part1(console)
    part2(console)
    console.print(f"wall {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
