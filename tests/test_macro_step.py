"""Macro-steps give byte-identical results to single steps on realistic workloads, and save iterations."""

from __future__ import annotations

import json

import pytest

from tokensched.config import SimConfig
from tokensched.simulator import simulate
from tokensched.workload import load_workload


def _run(cfg: SimConfig, reqs):
    r = simulate(cfg, reqs)
    s = dict(r.summary)
    s.pop("wall_s")
    return json.dumps(s), json.dumps(r.rows), r


@pytest.mark.parametrize("preset,extra", [
    ("chat", {}),
    ("code", {"scheduler": "sarathi"}),
    ("chat", {"kv_blocks": 700, "max_num_seqs": 64}),  # memory pressure: preemptions and evictions
    ("long-context", {"tp": 2, "max_model_len": 32768}),
    ("chat", {"scheduler": "orca", "qps": 20}),
])
def test_macro_steps_match_single_steps(preset, extra):
    w = load_workload(preset, num_requests=300, qps=extra.pop("qps", None), seed=3)
    base = SimConfig(workload=preset, **extra)
    s1, rows1, r1 = _run(base.model_copy(update={"macro_steps": False}), w.requests)
    s2, rows2, r2 = _run(base, w.requests)
    assert s1 == s2
    assert rows1 == rows2
    # the point of macro-steps: far fewer scheduling decisions for the same iterations
    assert r1.recorder.iterations == r2.recorder.iterations
    assert len(r2.recorder.t_time) < len(r1.recorder.t_time)
