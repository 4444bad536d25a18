"""BatchLLM: prefix groups, decode-ratio order, explicit release and the memory-centric budget, by hand."""

from __future__ import annotations

import pytest

from tokensched.config import SimConfig
from tokensched.engine import Replica
from tokensched.kv_cache import NO_HIT, KVCacheManager, prompt_units
from tokensched.policies import get_scheduler
from tokensched.policies.batchllm import BatchLLMOptions, BatchLLMPolicy, group_by_prefix
from tokensched.request import Request
from tokensched.scheduler import SchedulerConfig
from tokensched.sequence import Sequence
from tokensched.simulator import Simulator, simulate
from tokensched.workload.synthetic import PrefixGroups, WorkloadSpec, generate, lognormal, poisson

from conftest import ConstantTiming


def s(rid: str, units: list[tuple[int, int]], prompt: int = 100, out: int = 10) -> Sequence:
    return Sequence(Request(rid, 0.0, prompt, out), units)


# a tree of units (key, end token): a1 -> a2 -> {a3, b3 -> c4}, a1 -> d2; f1 elsewhere
A1, A2, A3, B3, C4, D2, F1 = (1, 16), (2, 32), (3, 48), (4, 48), (5, 64), (6, 32), (7, 16)


def names(groups):
    return [[m.id for m in g.members] for g in groups]


def test_nested_prefixes_group_at_the_best_single_level():
    seqs = [s("A", [A1, A2, A3]), s("B", [A1, A2, B3]), s("C", [A1, A2, B3, C4]), s("D", [A1, D2]),
            s("E", []), s("F", [F1])]
    # b3: 2 requests x 48 = save 48; a2: 3 requests share 32 -> save 64 >= 48 (children): group at a2.
    # a1: 4 requests share 16 -> save 48 < 64 (a2's): split. D, E, F share nothing.
    groups = group_by_prefix(seqs)
    assert names(groups) == [["A", "B", "C"], ["D"], ["E"], ["F"]]
    assert (groups[0].keys, groups[0].tokens) == ([1, 2], 32)
    assert groups[1].keys == [] and groups[1].tokens == 0


def test_a_larger_nested_group_forks_the_parent():
    seqs = [s("A", [A1, A2, A3]), s("B", [A1, A2, B3]), s("C", [A1, A2, B3, C4]), s("D", [A1, D2]),
            s("G", [A1, A2, B3]), s("H", [A1, A2, B3])]
    # b3: 4 requests x 48 -> save 144; a2: 5 share 32 -> 128 < 144: fork; A shares nothing any more.
    groups = group_by_prefix(seqs)
    assert names(groups) == [["A"], ["B", "C", "G", "H"], ["D"]]
    assert (groups[1].keys, groups[1].tokens) == ([1, 2, 4], 48)


def test_queue_is_ordered_by_decode_ratio_groups_together():
    p = BatchLLMPolicy()
    x = [s("x1", [A1, A2], prompt=40, out=8), s("x2", [A1, A2], prompt=48, out=24)]
    solo = s("solo", [F1], prompt=20, out=10)  # ratio 10 / 20 = 0.5
    for q in x + [solo]:
        p.add(q, 0.0)
    # group x: prefix 32, computed 32 + 8 + 16 = 56, decode 32 -> 0.571 > 0.5: first; inside, x2 (0.5) before
    # x1 (0.2)
    assert [q.id for q in p] == ["x2", "x1", "solo"]
    const = BatchLLMPolicy(BatchLLMOptions(predictor="constant", decode_length=10))
    for q in [s("x1", [A1, A2], prompt=40), s("x2", [A1, A2], prompt=48), s("solo", [F1], prompt=20)]:
        const.add(q, 0.0)
    # constant decode: group 20 / 56 = 0.36 < solo 10 / 20: solo first; x1 (10/40) before x2 (10/48)
    assert [q.id for q in const] == ["solo", "x1", "x2"]


def test_late_arrivals_are_regrouped_with_the_waiting_ones():
    p = BatchLLMPolicy()
    for q in [s("x1", [A1, A2], prompt=40, out=8), s("solo", [F1], prompt=20, out=10)]:
        p.add(q, 0.0)
    assert [q.id for q in p] == ["solo", "x1"] and p.groups_built == 1  # x1 alone: 8 / 40 < 10 / 20
    p.add(s("x2", [A1, A2], prompt=48, out=24), 1.0)
    assert [q.id for q in p] == ["x2", "x1", "solo"] and p.groups_built == 2
    ungrouped = BatchLLMPolicy(BatchLLMOptions(grouping=False))
    for q in [s("x1", [A1, A2], prompt=40, out=8), s("solo", [F1], prompt=20, out=10),
              s("x2", [A1, A2], prompt=48, out=24)]:
        ungrouped.add(q, 0.0)
    assert [q.id for q in ungrouped] == ["solo", "x2", "x1"]  # ratio order only: 0.5, 0.5, 0.2


def test_release_drops_only_unreferenced_units():
    kv = KVCacheManager(20, 16)
    a = Sequence(Request("a", 0.0, 48, 1, block_hashes=(1, 2, 3)), [])
    a.units = prompt_units(a.request, 16)
    kv.allocate(a, 48, NO_HIT)
    b = Sequence(Request("b", 0.0, 40, 1, block_hashes=(1, 9, 10)), [])
    b.units = prompt_units(b.request, 16)
    kv.allocate(b, 40 - 16, kv.find_prefix(b))  # shares unit 1 with a
    kv.free(a)  # a's units 2, 3 become evictable; unit 1 is still held by b (which holds 2 more blocks)
    keys = [k for k, _ in a.units]
    assert (kv.free_blocks, kv.evictable_blocks) == (15, 2)
    assert kv.release(keys) == 2
    assert (kv.free_blocks, kv.evictable_blocks, kv.evictions) == (17, 0, 0)
    assert kv.find_prefix(a).tokens == 16  # unit 1 survives: b references it
    kv.check_invariants([b])
    assert kv.release(keys) == 0  # already gone / referenced


def run(requests, policy, *, blocks, bs=16, max_seqs=1, budget=100, macro=True, **opts):
    spec = get_scheduler(policy)
    timing = ConstantTiming(1.0)
    rep = Replica(SchedulerConfig(max_seqs, budget), spec.factory(spec.factory.Options(**opts)),
                  KVCacheManager(blocks, bs), timing, max_model_len=10_000, macro_steps=macro)
    Simulator(rep, requests).run()
    return rep, timing


def two_groups():
    # x1, y1, x2, y2 at t=0: 80-token prompts, a 64-token group prefix + a 16-token unique block, 1 output
    def r(rid, g, u):
        return Request(rid, 0.0, 80, 1, block_hashes=tuple(g * 100 + i for i in range(4)) + (u,))
    return [r("x1", 1, 901), r("y1", 2, 902), r("x2", 1, 903), r("y2", 2, 904)]


def test_group_co_scheduling_computes_each_prefix_once():
    # 6 blocks, one request at a time. FCFS alternates groups: each admission evicts the other group's prefix
    # tail (LRU, tail first), so x2 and y2 only hit their first block: 80 + 80 + 64 + 64 prompt tokens.
    _, fcfs = run(two_groups(), "vllm", blocks=6)
    assert [sh.prefill_new for sh in fcfs.shapes] == [[80], [80], [64], [64]]
    # BatchLLM runs x1, x2, y1, y2: the second of each group hits the whole 64-token prefix.
    rep, t = run(two_groups(), "batchllm", blocks=6, kv_threshold=0.0)
    assert [sh.prefill_new for sh in t.shapes] == [[80], [16], [80], [16]]
    assert [s.id for s in sorted(rep.metrics.finished, key=lambda s: s.finish_s)] == ["x1", "x2", "y1", "y2"]
    assert rep.policy.groups_built == 1


@pytest.mark.parametrize("release", [True, False])
def test_finished_group_prefix_is_released(release):
    rep, _ = run(two_groups(), "batchllm", blocks=12, kv_threshold=0.0, release=release)
    prefix_keys = [k for k, _ in prompt_units(two_groups()[0], 16)[:4] + prompt_units(two_groups()[1], 16)[:4]]
    cached = [k for k in prefix_keys if k in rep.kv._entries]
    # with release, both groups' prefixes left the cache when their last request finished; without, LRU keeps them
    assert cached == ([] if release else prefix_keys)
    rep.kv.check_invariants([])


def test_memory_centric_budget_follows_kv_usage():
    p = BatchLLMPolicy(BatchLLMOptions(kv_threshold=0.5, max_token_budget=1000))
    kv = KVCacheManager(100, 16)
    hog = Sequence(Request("h", 0.0, 16 * 40, 1), [])
    kv.allocate(hog, 16 * 40, NO_HIT)  # 40 of 100 blocks used
    assert p.token_budget(128, [], kv) == 160  # 50 - 40 blocks below the threshold = 160 tokens
    assert BatchLLMPolicy(BatchLLMOptions(kv_threshold=0.9)).token_budget(128, [], kv) == 800
    assert BatchLLMPolicy(BatchLLMOptions(kv_threshold=0.9, max_token_budget=300)).token_budget(128, [], kv) == 300
    assert BatchLLMPolicy(BatchLLMOptions(kv_threshold=0.3)).token_budget(128, [], kv) == 128  # above threshold
    assert not p.monotone and BatchLLMPolicy(BatchLLMOptions(kv_threshold=0.0)).monotone


@pytest.mark.parametrize("threshold", [0.0, 0.9])
def test_offline_batch_runs_and_macro_steps_are_exact(threshold):
    spec = WorkloadSpec(poisson(1e9), lognormal(600, 0.5, max=2000), lognormal(100, 0.8, max=800),
                        prefix=PrefixGroups(20, 512, popularity="uniform"))
    reqs = [Request(r.id, 0.0, r.prompt_tokens, r.output_tokens, r.block_hashes, r.hash_block_size)
            for r in generate(spec, 150, seed=2)]
    cfg = SimConfig(scheduler="batchllm", kv_blocks=2000, policy_options={"kv_threshold": threshold})
    a = simulate(cfg, reqs)
    b = simulate(cfg.model_copy(update={"macro_steps": False}), reqs)
    assert a.rows == b.rows
    assert a.summary["requests"]["completed"] == 150
    assert a.summary["prefix_cache"]["hit_rate"] > 0.3
