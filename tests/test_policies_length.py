"""SJF / SRPT with output-length predictors, hand-worked (ConstantTiming: every iteration takes 1 s).

Prompts of 4 tokens take one iteration; the first token comes at its end, then one token per iteration.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tokensched.cli import main
from tokensched.config import SimConfig
from tokensched.policies import get_scheduler
from tokensched.policies.length_predictors import HistoryPredictor, NoisyPredictor
from tokensched.request import Request
from tokensched.sequence import Sequence
from tokensched.simulator import simulate
from tokensched.workload import load_workload

from conftest import ConstantTiming, run_policy, times


run = run_policy


def seq(rid: str, prompt: int = 4, out: int = 10) -> Sequence:
    return Sequence(Request(rid, 0.0, prompt, out), [])


def test_sjf_oracle_runs_shortest_first():
    # one seat: b (1 token) at t=0-1, c (3) at t=1-4, a (5) at t=4-9
    reqs = [Request("a", 0.0, 4, 5), Request("b", 0.0, 4, 1), Request("c", 0.0, 4, 3)]
    done, _ = run(reqs, "sjf", max_seqs=1)
    assert times(done) == {"b": (0.0, 1.0, 1.0, 0), "c": (1.0, 2.0, 4.0, 0), "a": (4.0, 5.0, 9.0, 0)}
    fcfs, _ = run(reqs, "vllm", max_seqs=1)  # a t=0-5, b t=5-6, c t=6-9: TTFTs 1 + 6 + 7 against 1 + 2 + 5
    assert sum(s.first_token_s for s in fcfs.values()) == 14.0
    assert sum(s.first_token_s for s in done.values()) == 8.0


def test_sjf_is_non_preemptive_srpt_displaces_past_the_margin():
    # a (10 tokens) runs; b (2 tokens) arrives at t=0.5 and the only seat is taken.
    reqs = [Request("a", 0.0, 4, 10), Request("b", 0.5, 4, 2)]
    waits = {"a": (0.0, 1.0, 10.0, 0), "b": (10.0, 11.0, 12.0, 0)}
    assert times(run(reqs, "sjf", max_seqs=1)[0]) == waits
    # SRPT at t=1: a has 9 predicted tokens left > b's 2: a is displaced; b runs t=1-3; a recomputes its 5
    # tokens at t=3 and samples its 9 remaining tokens at t=4..12.
    displaced = {"a": (0.0, 1.0, 12.0, 1), "b": (1.0, 2.0, 3.0, 0)}
    assert times(run(reqs, "srpt", max_seqs=1)[0]) == displaced
    assert times(run(reqs, "srpt", max_seqs=1, margin=6.5)[0]) == displaced  # 2 + 6.5 < 9
    assert times(run(reqs, "srpt", max_seqs=1, margin=7)[0]) == waits  # 2 + 7 is not < 9


def test_srpt_kv_victim_is_the_longest_remaining():
    policy = get_scheduler("srpt").factory()
    a, b, c = seq("a", out=10), seq("b", out=30), seq("c", out=40)
    c.num_generated = 25  # 15 left, b has 30 left
    for s in (a, b, c):
        policy.add(s, 0.0)
    assert policy.pick_victim([a, b, c]) is b


def test_aging_prevents_starvation():
    # One seat. L (10 tokens) arrives at t=0 with s00; another 1-token request arrives every second, so
    # without aging the seat is never free for L until the stream ends: L starts at t=20.
    # With aging 1 token/s, at t=9 s09's key 1 + 9 ties L's 10 + 0 and L (earlier) wins: L starts at t=9.
    reqs = [Request("L", 0.0, 4, 10)] + [Request(f"s{i:02d}", float(i), 4, 1) for i in range(20)]
    for aging, start, worst_ttft in ((0.0, 20.0, 21.0), (1.0, 9.0, 11.0)):
        for macro in (False, True):
            done, _ = run(reqs, "sjf", max_seqs=1, aging_per_s=aging, macro=macro)
            assert done["L"].first_scheduled_s == start
            assert max(s.first_token_s - s.request.arrival_s for s in done.values()) == worst_ttft


def test_noisy_predictor_is_deterministic_and_lognormal():
    p, q = NoisyPredictor(0.5, seed=3), NoisyPredictor(0.5, seed=3)
    ids = [f"req-{i}" for i in range(4000)]
    a = np.array([p.noise(i) for i in ids])
    assert np.array_equal(a, np.array([q.noise(i) for i in reversed(ids)])[::-1])  # order-free, reproducible
    assert not np.array_equal(a, np.array([NoisyPredictor(0.5, seed=4).noise(i) for i in ids]))
    logs = np.log(a)
    assert abs(logs.mean()) < 0.03 and abs(logs.std() - 0.5) < 0.03
    assert NoisyPredictor(0.0, seed=3).predict(seq("x", out=77)) == 77.0  # zero error = oracle


def test_history_predictor_buckets_by_prompt_length():
    h = HistoryPredictor([100, 1000])
    assert h.predict(seq("a", prompt=50)) == 0.0  # nothing finished yet: every request ties (FCFS)
    h.observe(seq("f1", prompt=50, out=10))
    h.observe(seq("f2", prompt=99, out=30))
    h.observe(seq("f3", prompt=100, out=200))
    assert h.predict(seq("b", prompt=1)) == 20.0  # bucket [0, 100)
    assert h.predict(seq("c", prompt=500)) == 200.0  # bucket [100, 1000)
    assert h.predict(seq("d", prompt=5000)) == 80.0  # empty bucket: global mean (10 + 30 + 200) / 3


def test_history_sjf_learns_from_completions():
    # One seat, bucket edge 10 tokens. Predictions are made on arrival. long0 and short0 arrive first with
    # nothing finished: both predict 0 and tie (then by id): long0 runs t=0-8, short0 t=8-9. z arrives at
    # t=8.5 and takes the seat at t=9 (t=9-14). By then long0 (prompt 20 -> 8 tokens) and short0 (prompt 4
    # -> 1 token) have finished, so long1 (t=9.5) predicts 8 and short1 (t=9.6) predicts 1: at t=14 short1
    # goes first although it arrived later.
    reqs = [Request("long0", 0.0, 20, 8), Request("short0", 0.0, 4, 1), Request("z", 8.5, 4, 5),
            Request("long1", 9.5, 20, 8), Request("short1", 9.6, 4, 1)]
    done, rep = run(reqs, "sjf", max_seqs=1, predictor="history", bucket_edges=[10])
    assert {k: s.first_scheduled_s for k, s in done.items()} == \
        {"long0": 0.0, "short0": 8.0, "z": 9.0, "short1": 14.0, "long1": 15.0}
    assert (done["long1"].policy_state, done["short1"].policy_state) == (8.0, 1.0)
    fcfs, _ = run(reqs, "vllm", max_seqs=1)
    assert fcfs["long1"].first_scheduled_s == 14.0


@pytest.mark.parametrize("policy,opts", [
    ("sjf", {"predictor": "noisy", "error": 1.0, "aging_per_s": 20.0}),
    ("sjf", {"predictor": "history", "aging_per_s": 5.0}),
    ("srpt", {"predictor": "noisy", "error": 0.5, "margin": 16}),
    ("srpt", {"predictor": "history"}),
])
def test_macro_steps_match_single_steps(policy, opts):
    """Monotone is claimed for every option: macro-steps must give identical results under memory pressure."""
    w = load_workload("chat", num_requests=200, qps=30, seed=5)
    base = SimConfig(scheduler=policy, policy_options=opts, kv_blocks=700, max_num_seqs=32)
    out = []
    for macro in (False, True):
        r = simulate(base.model_copy(update={"macro_steps": macro}), w.requests,
                     timing=ConstantTiming(0.01, 2e-5))
        s = dict(r.summary)
        s.pop("wall_s")
        out.append((json.dumps(s), json.dumps(r.rows), r.recorder.iterations, len(r.recorder.t_time)))
    assert out[0][:3] == out[1][:3]
    assert out[1][3] < out[0][3] / 5  # macro-steps were taken
    summary = json.loads(out[0][0])
    assert summary["requests"]["completed"] == 200 and summary["preemptions"] > 0


@pytest.mark.parametrize("args,needle", [
    (["-s", "sjf", "--policy-option", "predictor=psychic"], "'oracle', 'noisy' or 'history'"),
    (["-s", "sjf", "--policy-option", "error=0.3"], "applies only to predictor=noisy"),
    (["-s", "sjf", "--policy-option", "predictor=noisy", "--policy-option", "error=-1"], "error"),
    (["-s", "srpt", "--policy-option", "predictor=history", "--policy-option", "bucket_edges=[5,3]"],
     "strictly increasing"),
    (["-s", "sjf", "--policy-option", "aging_per_s=-2"], "aging_per_s"),
    (["-s", "sjf", "--policy-option", "margin=3"], "unknown policy option 'margin'"),
])
def test_bad_length_options_exit_2_with_one_line(args, needle, capsys):
    assert main(["simulate", "-n", "5", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err


@pytest.mark.parametrize("scheduler", ["sjf", "srpt"])
def test_runs_every_preset_from_the_cli(scheduler, capsys):
    for preset in ("chat", "code", "long-context"):
        assert main(["simulate", "-w", preset, "-n", "60", "-s", scheduler, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["requests"]["completed"] == 60
