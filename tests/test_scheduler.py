"""Hand-worked schedules on tiny scenarios (ConstantTiming: every iteration takes 1 s)."""

from __future__ import annotations

import pytest

from tokensched.engine import Replica
from tokensched.kv_cache import KVCacheManager
from tokensched.policies import SCHEDULERS, get_scheduler
from tokensched.errors import UserError
from tokensched.request import Request
from tokensched.scheduler import SchedulerConfig
from tokensched.simulator import Simulator

from conftest import ConstantTiming


def run(requests, *, policy="vllm", budget=8, blocks=100, bs=4, max_seqs=10, macro=True, timing=None):
    timing = timing or ConstantTiming(1.0)
    rep = Replica(SchedulerConfig(max_seqs, budget), get_scheduler(policy).factory(), KVCacheManager(blocks, bs),
                  timing, max_model_len=10_000, macro_steps=macro)
    Simulator(rep, requests).run()
    return {s.id: s for s in rep.metrics.finished}, rep, timing


@pytest.mark.parametrize("macro", [False, True])
def test_three_requests_by_hand(macro):
    reqs = [Request("r0", 0.0, 10, 3), Request("r1", 0.0, 4, 2), Request("r2", 1.5, 3, 1)]
    done, rep, timing = run(reqs, macro=macro)
    # t=0: r0 takes 8 of its 10 prompt tokens (budget 8); r1 must wait.
    # t=1: r0's last 2 tokens + r1's 4 -> both sample their first token at t=2.
    # t=2: r0, r1 decode (2 tokens) + r2's prompt (3) -> r1 and r2 finish at t=3.
    # t=3: r0 decodes alone -> finishes at t=4.
    r0, r1, r2 = done["r0"], done["r1"], done["r2"]
    assert (r0.first_scheduled_s, r0.first_token_s, r0.finish_s) == (0.0, 2.0, 4.0)
    assert (r1.first_scheduled_s, r1.first_token_s, r1.finish_s) == (1.0, 2.0, 3.0)
    assert (r2.first_scheduled_s, r2.first_token_s, r2.finish_s) == (2.0, 3.0, 3.0)
    assert [sh.num_tokens for sh in timing.shapes] == [8, 6, 5, 1]
    assert rep.metrics.iterations == 4
    assert rep.kv.free_blocks == 100


def test_token_budget_chunks_prompts():
    done, _, timing = run([Request("a", 0.0, 20, 1)], budget=8)
    assert [sh.prefill_new for sh in timing.shapes] == [[8], [8], [4]]
    assert [sh.prefill_cached for sh in timing.shapes] == [[0], [8], [16]]
    assert done["a"].first_token_s == 3.0


def test_orca_runs_whole_prompts_and_stalls_admission():
    reqs = [Request("a", 0.0, 10, 2), Request("b", 0.0, 4, 1)]
    done, _, timing = run(reqs, policy="orca", budget=8)
    # a's whole prompt (10 > budget 8) runs alone; b cannot join a batch that has no room for its whole prompt
    assert [sh.prefill_new for sh in timing.shapes] == [[10], [4]]
    assert timing.shapes[1].num_decodes == 1
    assert done["a"].finish_s == 2.0 and done["b"].finish_s == 2.0


def test_sarathi_budgets_decodes_before_unfinished_prefills():
    # a is admitted first but is still prefilling when b decodes; Sarathi serves b's decode first.
    reqs = [Request("b", 0.0, 2, 5), Request("a", 0.5, 30, 1)]
    _, _, timing = run(reqs, policy="sarathi", budget=4)
    # t=0: b prompt(2). t=1: b decode + a chunk 3. t=2: b decode + a chunk 3 ...
    assert timing.shapes[1].num_decodes == 1 and timing.shapes[1].prefill_new == [3]
    assert timing.shapes[2].num_decodes == 1 and timing.shapes[2].prefill_new == [3]


@pytest.mark.parametrize("macro", [False, True])
def test_preemption_by_recompute_by_hand(macro):
    # 6 blocks of 4 tokens. Both prompts (8) fit; at 13 tokens each needs a 4th block: r1 (last admitted) is
    # preempted at t=5 with 5 outputs, waits until r0 finishes at t=10, recomputes 13 tokens, finishes at t=15.
    reqs = [Request("r0", 0.0, 8, 10), Request("r1", 0.0, 8, 10)]
    done, rep, _ = run(reqs, budget=100, blocks=6, macro=macro)
    r0, r1 = done["r0"], done["r1"]
    assert (r0.first_token_s, r0.finish_s, r0.preemptions) == (1.0, 10.0, 0)
    assert (r1.first_token_s, r1.finish_s, r1.preemptions) == (1.0, 15.0, 1)
    assert r1.itl_max_s == 6.0  # token 5 at t=5, token 6 at t=11
    assert rep.scheduler.num_preemptions == 1
    assert rep.kv.free_blocks == 6


def test_max_num_seqs_caps_the_batch():
    reqs = [Request(str(i), 0.0, 4, 3) for i in range(3)]
    done, _, timing = run(reqs, max_seqs=2, budget=100)
    assert timing.shapes[0].prefill_new == [4, 4]
    assert done["2"].first_scheduled_s == 3.0  # a seat frees when 0 and 1 finish at t=3


def test_prefix_hit_skips_cached_tokens():
    h = tuple(range(100, 110))
    reqs = [Request("a", 0.0, 64, 1, block_hashes=h[:4], hash_block_size=16),
            Request("b", 5.0, 64, 1, block_hashes=h[:3] + (999,), hash_block_size=16)]
    done, rep, timing = run(reqs, budget=100, bs=16)
    assert timing.shapes[1].prefill_new == [16] and timing.shapes[1].prefill_cached == [48]
    assert done["b"].prefix_hit_tokens == 48
    assert rep.kv.hit_tokens == 48


def test_unknown_scheduler_lists_choices():
    with pytest.raises(UserError, match="vllm, sarathi, orca"):
        get_scheduler("fifo")
    assert set(SCHEDULERS) >= {"vllm", "sarathi", "orca"}
