"""Layered prefill: stage counts, iteration-by-iteration schedules and partial-depth timing, by hand."""

from __future__ import annotations

import pytest

from tokensched.config import SimConfig
from tokensched.engine import Replica
from tokensched.errors import UserError
from tokensched.hardware import get_gpu
from tokensched.kv_cache import KVCacheManager
from tokensched.models import get_model
from tokensched.policies import get_scheduler
from tokensched.policies.layered import num_stages
from tokensched.request import Request
from tokensched.scheduler import SchedulerConfig
from tokensched.simulator import Simulator, simulate
from tokensched.timing import BatchShape, RooflineTiming, RooflineParams
from tokensched.workload import load_workload

from conftest import ConstantTiming


def test_stage_counts_follow_the_authors_rule():
    # 16 groups: <= 512 tokens 1 stage, <= 1024 2, <= 2048 4, <= 4096 8, else 16
    assert [num_stages(t, 16, 512) for t in (1, 512, 513, 1024, 1025, 2048, 4096, 4097, 20000)] == \
        [1, 1, 2, 2, 4, 4, 8, 16, 16]
    assert [num_stages(t, 4, 512) for t in (512, 600, 1500, 9000)] == [1, 2, 4, 4]
    assert num_stages(10, 6, 512, adaptive=False) == 6


def run(requests, *, budget=8192, blocks=1000, bs=16, max_seqs=10, macro=True, **opts):
    spec = get_scheduler("layered")
    timing = ConstantTiming(1.0)
    rep = Replica(SchedulerConfig(max_seqs, budget), spec.factory(spec.factory.Options(**opts)),
                  KVCacheManager(blocks, bs), timing, max_model_len=100_000, macro_steps=macro)
    Simulator(rep, requests).run()
    return {s.id: s for s in rep.metrics.finished}, rep, timing


@pytest.mark.parametrize("macro", [False, True])
def test_prompt_passes_four_groups_while_decodes_continue(macro):
    reqs = [Request("d", 0.0, 10, 10), Request("L", 0.5, 2000, 3)]
    done, rep, t = run(reqs, groups=4, macro=macro)
    # t=0: d's 10-token prompt (1 stage). t=1..4: d decodes every iteration while L's 2000 tokens pass a quarter
    # of the layers per iteration; L samples at the end of the 4th pass (t=5), then decodes at t=6, 7.
    d, L = done["d"], done["L"]
    assert (L.first_scheduled_s, L.first_token_s, L.finish_s) == (1.0, 5.0, 7.0)
    assert (d.first_token_s, d.finish_s, d.itl_max_s) == (1.0, 10.0, 1.0)  # never stalled
    passes = t.shapes[1:5]
    assert [(sh.prefill_new, sh.prefill_fraction, sh.num_decodes) for sh in passes] == [([2000], [0.25], 1)] * 4
    assert [sh.num_sampled for sh in passes] == [1, 1, 1, 2]
    assert rep.metrics.iterations == 10
    assert rep.kv.free_blocks == 1000


@pytest.mark.parametrize("budget, first_tokens", [(8192, (4.0, 4.0, 5.0)), (1000, (2.0, 4.0, 4.0))])
def test_one_cohort_at_a_time(budget, first_tokens):
    reqs = [Request("a", 0.0, 600, 2), Request("b", 0.0, 600, 2), Request("c", 0.5, 100, 2)]
    done, _, t = run(reqs, budget=budget, groups=4)
    # budget 8192: a and b form one cohort of 1200 tokens -> 4 stages (t=0-4); c waits for the cohort to end and
    # runs its 100 tokens as one stage at t=4. Budget 1000: b does not fit beside a; a (600 -> 2 stages) t=0-2;
    # at t=2 b and c (700 tokens -> 2 stages) form the next cohort, t=2-4.
    assert tuple(done[k].first_token_s for k in "abc") == first_tokens
    assert all(len(sh.prefill_new) <= 2 for sh in t.shapes)


def test_a_prompt_longer_than_the_budget_runs_whole_and_alone():
    done, _, t = run([Request("a", 0.0, 3000, 1), Request("b", 0.0, 10, 1)], budget=512, groups=8)
    # 3000 tokens: 6 chunks of 512 -> 8 stages, never cut into token chunks
    assert [sh.prefill_new for sh in t.shapes[:8]] == [[3000]] * 8
    assert done["a"].first_token_s == 8.0 and done["b"].first_scheduled_s == 8.0


@pytest.mark.parametrize("macro", [False, True])
def test_preempted_cohort_member_leaves_the_cohort(macro):
    # 7 blocks of 16, group_tokens 47. d (47 tokens, 3 blocks) prefills in one stage at t=0. At t=1 a and b
    # (24 tokens, 2 blocks each) form a cohort: 48 tokens -> 2 stages, half the layers each (t=1-3). At t=2 d's
    # decode needs a 4th block: the last admitted (b, mid-cohort) is preempted and leaves; a finishes its last
    # pass alone (first token t=3, done t=4). b waits for room (free at t=4), then 24 tokens in one stage.
    reqs = [Request("d", 0.0, 47, 20), Request("a", 0.5, 24, 2), Request("b", 0.5, 24, 2)]
    done, rep, t = run(reqs, blocks=7, groups=4, group_tokens=47, macro=macro)
    a, b, d = done["a"], done["b"], done["d"]
    assert (a.first_scheduled_s, a.first_token_s, a.finish_s, a.preemptions) == (1.0, 3.0, 4.0, 0)
    assert (b.first_scheduled_s, b.first_token_s, b.finish_s, b.preemptions) == (1.0, 5.0, 6.0, 1)
    assert (d.first_token_s, d.finish_s, d.itl_max_s) == (1.0, 20.0, 1.0)
    assert [(sh.prefill_new, sh.prefill_fraction, sh.num_decodes) for sh in t.shapes[1:5]] == \
        [([24, 24], [0.5, 0.5], 1), ([24], [0.5], 1), ([], None, 2), ([24], None, 1)]
    assert rep.kv.free_blocks == 7


@pytest.fixture(scope="module")
def mixtral():
    return RooflineTiming(get_model("mixtral-8x7b"), get_gpu("h100"), 2, RooflineParams())


def test_passes_add_up_to_one_prefill(mixtral):
    # G passes of 1/G of the layers, with nothing else in the batch, cost one full-depth prefill plus the
    # per-iteration and per-sequence overheads of the G - 1 extra iterations.
    n, G = 4096, 8
    p = mixtral.params
    passes = sum(mixtral.iteration_time(BatchShape([n], [0], num_sampled=int(i == G - 1), prefill_fraction=[1 / G]))
                 for i in range(G))
    whole = mixtral.iteration_time(BatchShape([n], [0], num_sampled=1))
    assert passes == pytest.approx(whole + (G - 1) * (p.iteration_overhead_s + p.per_seq_overhead_s), rel=1e-12)


def test_partial_pass_prices_its_layers_only(mixtral):
    m = mixtral
    dec = BatchShape(num_decodes=32, decode_context_sum=32 * 1000, num_sampled=32)
    shape = BatchShape([2048], [0], num_decodes=32, decode_context_sum=32 * 1000, num_sampled=32,
                       prefill_fraction=[0.25])
    ovh = m.params.iteration_overhead_s
    # three quarters of the layers see the 32 decodes, one quarter 32 + 2048 tokens (experts read once there)
    layers = 0.75 * (m.fixed_time(32, 0, 0) - ovh) + 0.25 * (m.fixed_time(2080, 0, 0) - ovh)
    rest = m.iteration_time(dec) - (m.fixed_time(32, 0, 0) - ovh)  # overheads, LM head, decode attention
    rest += m.params.per_seq_overhead_s  # the prefill is the 33rd sequence
    attn = 0.25 * m.prefill_attention_time([2048], [0])
    assert m.iteration_time(shape) == pytest.approx(layers + rest + attn, rel=1e-12)
    full = BatchShape([2048], [0], num_decodes=32, decode_context_sum=32 * 1000, num_sampled=32)
    assert m.iteration_time(dec) < m.iteration_time(shape) < m.iteration_time(full)
    # a full-depth fraction list prices like no list at all
    assert m.iteration_time(BatchShape([2048], [0], prefill_fraction=[1.0])) == \
        pytest.approx(m.iteration_time(BatchShape([2048], [0])), rel=1e-12)


def test_layered_simulation_macro_steps_are_exact():
    reqs = load_workload("chat", num_requests=150, qps=6.0, seed=4).requests
    cfg = SimConfig(model="mixtral-8x7b", tp=2, scheduler="layered", policy_options={"groups": 8})
    a = simulate(cfg, reqs)
    b = simulate(cfg.model_copy(update={"macro_steps": False}), reqs)
    assert a.rows == b.rows
    assert a.summary["requests"]["completed"] == 150


def test_timing_that_ignores_layer_fractions_is_refused():
    reqs = load_workload("chat", num_requests=5).requests
    with pytest.raises(UserError, match="cannot price"):
        simulate(SimConfig(scheduler="layered", timing="measured"), reqs)
    with pytest.raises(UserError, match="ConstantTiming"):
        simulate(SimConfig(scheduler="layered"), reqs, timing=ConstantTiming())
