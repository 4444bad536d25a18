"""VTC (Sheng et al., OSDI'24): the service gap between backlogged tenants stays bounded; under FCFS it grows.

Workload: two tenants with identical request shapes (prompt lognormal median 512, output median 128) and
different demand: ``heavy`` sends 54 req/s and ``light`` 18 req/s for 60 s (fixed seeds). One Llama-3.1-8B
replica on one H100 with ``max_num_seqs`` 64 serves about 31 req/s of this mix, so both tenants stay
backlogged (each asks for more than half the capacity) until arrivals stop.

Service is VTC's weighted tokens (1 per prompt token, 2 per output token), measured from the per-request
rows in 1 s windows (``tokensched.fairness_metrics``). The gap is the largest ``|W_heavy - W_light|`` over
intervals in which both tenants were backlogged, reported for growing horizons: under FCFS it grows with
time, under VTC it stays flat, below the paper's bound ``2U`` (see docs/policies.md). A weighted run
(heavy weight 2) shows the 2:1 share. Run: ``python experiments/vtc_fairness.py`` (about 20 s here).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from tokensched.config import SimConfig
from tokensched.fairness_metrics import max_service_gap, tenant_service
from tokensched.request import Request
from tokensched.simulator import simulate
from tokensched.workload.synthetic import WorkloadSpec, generate, lognormal, poisson

DURATION_S = 60.0
TENANTS = (("heavy", 54.0, 1), ("light", 18.0, 2))  # name, req/s, seed
HORIZONS = (15.0, 30.0, 60.0, float("inf"))  # gap within the first N s of the run (inf: all of it)
PROMPT, OUTPUT = lognormal(512, 0.5, max=4096), lognormal(128, 0.5, max=1024)


def workload() -> list[Request]:
    reqs: list[Request] = []
    for name, rate, seed in TENANTS:
        spec = WorkloadSpec(poisson(rate), PROMPT, OUTPUT, tenant=name)
        reqs += [replace(r, id=f"{name}-{r.id}") for r in generate(spec, int(rate * DURATION_S), seed)]
    return sorted(reqs, key=lambda r: (r.arrival_s, r.id))


def run(label: str, scheduler: str, reqs: list[Request], weights: dict[str, float] | None = None) -> dict[str, Any]:
    opts: dict[str, Any] = {"weights": weights} if weights else {}
    cfg = SimConfig(scheduler=scheduler, max_num_seqs=64, policy_options=opts)
    res = simulate(cfg, reqs)
    tab = tenant_service(res.rows, 1.0, weights=weights, start_s=0.0)
    both = tab.backlogged["heavy"] & tab.backlogged["light"]
    served = {t: float(tab.service[t][both].sum()) for t in ("heavy", "light")}
    raw = tenant_service(res.rows, 1.0, start_s=0.0)  # unweighted tokens
    raw_ratio = float(raw.service["heavy"][both].sum() / raw.service["light"][both].sum())
    ttft = {t: sorted(r["ttft_s"] for r in res.rows if r["tenant"] == t) for t in ("heavy", "light")}
    return {
        "label": label,
        "co_backlogged_s": float(both.sum()),
        "served": served,
        "raw_ratio": raw_ratio,
        "gaps": [max_service_gap(tab, until_s=h).gap for h in HORIZONS],
        "ttft_p50": {t: v[len(v) // 2] for t, v in ttft.items()},
        "wall_s": res.summary["wall_s"],
        "kv_tokens": res.info["kv_blocks"] * res.info["block_size"],
    }


def main() -> None:
    t0 = time.perf_counter()
    reqs = workload()
    runs = [run("FCFS (vllm)", "vllm", reqs), run("VTC", "vtc", reqs),
            run("VTC heavy w=2", "vtc", reqs, {"heavy": 2.0})]
    longest_prompt = max(r.prompt_tokens for r in reqs)
    m_tokens = min(runs[0]["kv_tokens"], 64 * max(r.prompt_tokens + r.output_tokens for r in reqs))
    bound = 2 * max(1 * longest_prompt, 2 * m_tokens)
    print(f"{len(reqs)} requests over {DURATION_S:.0f} s: "
          + ", ".join(f"{n} {r:g} req/s" for n, r, _ in TENANTS) + "; llama-3.1-8b, 1 x H100, max_num_seqs 64")
    heads = " | ".join(f"gap {h:g} s" if h != float("inf") else "gap all" for h in HORIZONS)
    print(f"| policy | co-backlogged s | heavy service | light service | weighted heavy/light | tokens heavy/light "
          f"| {heads} | TTFT p50 heavy / light s |")
    print("|---" * (8 + len(HORIZONS)) + "|")
    for r in runs:
        s = r["served"]
        gaps = " | ".join(f"{g:,.0f}" for g in r["gaps"])
        print(f"| {r['label']} | {r['co_backlogged_s']:.0f} | {s['heavy']:,.0f} | {s['light']:,.0f} | "
              f"{s['heavy'] / s['light']:.2f} | {r['raw_ratio']:.2f} | {gaps} | "
              f"{r['ttft_p50']['heavy']:.1f} / {r['ttft_p50']['light']:.1f} |")
    print(f"VTC bound 2U = 2 max(w_p L_input, w_q M) = 2 max({longest_prompt}, 2 x {m_tokens}) = {bound:,}")
    print("(service = 1 x prompt + 2 x output tokens, divided by the tenant's weight, while both tenants are "
          "backlogged; gap N s = largest service gap over co-backlogged intervals within the first N s)")
    print(f"wall {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
