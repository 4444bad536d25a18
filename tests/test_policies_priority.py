"""vLLM and SGLang priority scheduling, hand-worked on tiny scenarios (ConstantTiming: every iteration 1 s).

Prompts of 4 tokens take one iteration; a request's first token comes at the end of its first iteration and
one more token per iteration after that.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from tokensched.cli import main
from tokensched.config import SimConfig
from tokensched.policies import get_scheduler
from tokensched.request import Request
from tokensched.sequence import Sequence
from tokensched.simulator import simulate
from tokensched.workload import load_workload

from conftest import ConstantTiming, run_policy, times


run = run_policy


def test_vllm_priority_admits_lowest_value_then_earliest_then_id():
    # One seat; each request takes 2 iterations (prefill + one decode).
    reqs = [Request("a", 0.0, 4, 2, priority=2), Request("d", 0.0, 4, 2, priority=0),
            Request("c", 0.0, 4, 2, priority=1), Request("b", 0.0, 4, 2, priority=0)]
    done, _ = run(reqs, "priority", max_seqs=1)
    # order b, d (priority 0, same arrival: by id), c (1), a (2)
    assert {k: s.first_token_s for k, s in done.items()} == {"b": 1.0, "d": 3.0, "c": 5.0, "a": 7.0}
    fcfs, _ = run(reqs, "vllm", max_seqs=1)
    assert {k: s.first_token_s for k, s in fcfs.items()} == {"a": 1.0, "d": 3.0, "c": 5.0, "b": 7.0}


@pytest.mark.parametrize("macro", [False, True])
def test_vllm_priority_victim_and_requeue_in_key_order(macro):
    # 6 blocks of 4 tokens, two seats. r0 (priority 1) and r1 (priority 0) both start at t=0 with 8-token
    # prompts (2 blocks each), take a 3rd block at t=1; at t=5 (13 tokens) r1 needs a 4th block and none is
    # free. vLLM priority preempts max(priority, arrival) = r0 (FCFS would preempt r1, the last admitted).
    # r0 goes back into the heap *behind* c (priority 0), so c takes the free seat at t=6 (1 block) although
    # r0's 13 tokens (4 blocks) do not fit until r1 finishes at t=10; r0 then finishes at t=15.
    reqs = [Request("r0", 0.0, 8, 10, priority=1), Request("r1", 0.0, 8, 10, priority=0),
            Request("c", 0.5, 4, 1, priority=0)]
    done, rep = run(reqs, "priority", blocks=6, max_seqs=2, macro=macro)
    assert times(done) == {"r1": (0.0, 1.0, 10.0, 0), "r0": (0.0, 1.0, 15.0, 1), "c": (6.0, 7.0, 7.0, 0)}
    assert done["c"].first_token_s - 0.5 == 6.5  # TTFT
    assert rep.kv.free_blocks == 6
    # FCFS: r1 is preempted and returns to the *head*; its 4 blocks do not fit, so c waits behind it.
    fcfs, _ = run(reqs, "vllm", blocks=6, max_seqs=2, macro=macro)
    assert times(fcfs) == {"r0": (0.0, 1.0, 10.0, 0), "r1": (0.0, 1.0, 15.0, 1), "c": (10.0, 11.0, 11.0, 0)}


def test_vllm_priority_never_displaces_a_running_request():
    reqs = [Request("a", 0.0, 4, 5, priority=5), Request("b", 0.5, 4, 5, priority=0)]
    done, rep = run(reqs, "priority", max_seqs=1)
    assert times(done) == {"a": (0.0, 1.0, 5.0, 0), "b": (5.0, 6.0, 10.0, 0)}
    assert rep.scheduler.num_preemptions == 0


@pytest.mark.parametrize("macro", [False, True])
def test_sglang_priority_preempts_past_the_threshold(macro):
    # One seat. Low values first, threshold 0: b (0) beats running a (5) by 5 > 0. At t=1 a has its first
    # token; b displaces it, starts at t=1, tokens at t=2..6. a resumes at t=6 recomputing 4+1 tokens and
    # samples its 4 remaining tokens at t=7..10.
    reqs = [Request("a", 0.0, 4, 5, priority=5), Request("b", 0.5, 4, 5, priority=0)]
    done, _ = run(reqs, "sglang-priority", max_seqs=1, macro=macro, low_values_first=True, preemption_threshold=0)
    assert times(done) == {"b": (1.0, 2.0, 6.0, 0), "a": (0.0, 1.0, 10.0, 1)}
    # SGLang's default polarity: higher values first, so a (5) is the more important one; b waits.
    done, _ = run(reqs, "sglang-priority", max_seqs=1, macro=macro)
    assert times(done) == {"a": (0.0, 1.0, 5.0, 0), "b": (5.0, 6.0, 10.0, 0)}
    # --disable-priority-preemption
    done, _ = run(reqs, "sglang-priority", max_seqs=1, macro=macro, low_values_first=True, preemption=False)
    assert times(done) == {"a": (0.0, 1.0, 5.0, 0), "b": (5.0, 6.0, 10.0, 0)}


@pytest.mark.parametrize("gap,preempted", [(10, False), (11, True)])
def test_sglang_threshold_is_strict(gap, preempted):
    # default: higher first, threshold 10; the difference must *exceed* it
    reqs = [Request("a", 0.0, 4, 5, priority=0), Request("b", 0.5, 4, 5, priority=gap)]
    done, _ = run(reqs, "sglang-priority", max_seqs=1)
    assert (done["a"].preemptions == 1) is preempted
    assert done["b"].first_token_s == (2.0 if preempted else 6.0)


def test_sglang_displaces_least_important_latest_first_and_only_if_room_suffices():
    # 8 blocks of 4 tokens. At t=2, x (priority 1) holds 3 blocks (10 slots), y (priority 1, arrived later)
    # 2 blocks (5 slots); 3 are free. z (priority 20) needs 4 blocks (13 tokens). Victim order: least
    # important, latest arrival first -> y, whose 2 blocks suffice; x keeps running.
    reqs = [Request("x", 0.0, 8, 6, priority=1), Request("y", 0.1, 4, 6, priority=1),
            Request("z", 1.5, 13, 1, priority=20)]
    done, _ = run(reqs, "sglang-priority", blocks=8)
    assert (done["x"].preemptions, done["y"].preemptions) == (0, 1)
    assert (done["z"].first_scheduled_s, done["z"].first_token_s) == (2.0, 3.0)
    # x is now too important to preempt (20 - 15 = 5 <= 10); z needs 6 blocks (21 tokens) and y frees only
    # 2 of the 3 missing at t=2: all or nothing, so nobody is preempted then. When x finishes at t=6, 5 blocks
    # are free and y's 3 now suffice: y is displaced (after 5 tokens), z runs at t=6, y recomputes its 9
    # tokens at t=7 and samples its last token at t=8.
    reqs = [Request("x", 0.0, 8, 6, priority=15), Request("y", 0.1, 4, 6, priority=1),
            Request("z", 1.5, 21, 1, priority=20)]
    done, rep = run(reqs, "sglang-priority", blocks=8)
    assert times(done) == {"x": (0.0, 1.0, 6.0, 0), "y": (1.0, 2.0, 8.0, 1), "z": (6.0, 7.0, 7.0, 0)}


def test_sglang_kv_victim_is_fewest_outputs_then_longest_prompt():
    policy = get_scheduler("sglang-priority").factory()
    a, b, c = (Sequence(Request(i, 0.0, p, 9, priority=pr), []) for i, p, pr in
               (("a", 4, -100), ("b", 12, 100), ("c", 8, 0)))
    a.num_generated, b.num_generated, c.num_generated = 1, 3, 1
    assert policy.pick_victim([a, b, c]) is c  # fewest outputs (a, c), then longest prompt: not priority-aware


@pytest.mark.parametrize("policy,opts", [("priority", {}), ("sglang-priority", {"preemption_threshold": 1})])
def test_macro_steps_match_single_steps(policy, opts):
    """Both policies claim monotone: macro-steps must not change a single number under memory pressure."""
    w = load_workload("chat", num_requests=200, qps=30, seed=5)
    reqs = [replace(r, priority=i % 3 * 2) for i, r in enumerate(w.requests)]
    base = SimConfig(scheduler=policy, policy_options=opts, kv_blocks=700, max_num_seqs=32)
    out = []
    for macro in (False, True):
        r = simulate(base.model_copy(update={"macro_steps": macro}), reqs, timing=ConstantTiming(0.01, 2e-5))
        s = dict(r.summary)
        s.pop("wall_s")
        out.append((json.dumps(s), json.dumps(r.rows), r.recorder.iterations, len(r.recorder.t_time)))
    assert out[0][:3] == out[1][:3]
    assert out[1][3] < out[0][3] / 5  # macro-steps were taken
    assert json.loads(out[0][0])["preemptions"] > 0


@pytest.mark.parametrize("args,needle", [
    (["-s", "sglang-priority", "--policy-option", "preemption_threshold=-1"], "preemption_threshold"),
    (["-s", "sglang-priority", "--policy-option", "low_values_first=maybe"], "low_values_first"),
    (["-s", "priority", "--policy-option", "preemption_threshold=3"], "unknown policy option"),
])
def test_bad_priority_options_exit_2_with_one_line(args, needle, capsys):
    assert main(["simulate", "-n", "5", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0]


@pytest.mark.parametrize("scheduler", ["priority", "sglang-priority"])
def test_runs_every_preset_from_the_cli(scheduler, capsys):
    for preset in ("chat", "code", "long-context"):
        assert main(["simulate", "-w", preset, "-n", "60", "-s", scheduler, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["requests"]["completed"] == 60
