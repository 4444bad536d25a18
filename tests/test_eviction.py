"""Prefix-cache eviction orders, hand-worked through the KVCacheManager (16-token blocks, 16-token hashes).

Every request below has a 20-token prompt whose first 16 tokens form one cacheable unit named by its first
hash (the second hash covers the 4-token tail, which is never cached). Allocating it takes 2 blocks: the
unit and one private block. Freeing it makes the unit evictable and the private block free.
"""

from __future__ import annotations

import pytest

from tokensched.cli import main
from tokensched.config import SimConfig
from tokensched.errors import UserError
from tokensched.eviction import make_evictor
from tokensched.kv_cache import NO_HIT, KVCacheManager, prompt_units
from tokensched.request import Request
from tokensched.sequence import Sequence
from tokensched.simulator import simulate
from tokensched.workload import load_workload

from conftest import ConstantTiming


def seq(rid: str, unit: int, prompt: int = 20, priority: int = 0) -> Sequence:
    r = Request(rid, 0.0, prompt, 1, block_hashes=(unit, 1000 + unit) if unit else (), priority=priority)
    return Sequence(r, prompt_units(r, 16))


def admit(kv: KVCacheManager, s: Sequence) -> None:
    hit = kv.find_prefix(s)
    kv.allocate(s, s.num_tokens - hit.tokens, hit)


def cached(kv: KVCacheManager, units: list[int]) -> list[int]:
    """Which of these units a new request would hit (find_prefix has no side effects)."""
    return [u for u in units if kv.find_prefix(seq("probe", u)).tokens == 16]


def evict_order(kv: KVCacheManager, units: list[int]) -> list[int]:
    """Allocate one block at a time with no free block left and record which unit goes each time."""
    order = []
    fillers = []
    while kv.evictable_blocks:
        before = set(cached(kv, units))
        f = seq(f"fill{len(fillers)}", 0, prompt=16 * (kv.free_blocks + 1))  # one block more than is free
        kv.allocate(f, f.num_tokens, NO_HIT)
        fillers.append(f)
        (gone,) = before - set(cached(kv, units))
        order.append(gone)
    kv.check_invariants(fillers)
    return order


def test_lru_evicts_least_recently_released_first():
    kv = KVCacheManager(6, 16, evictor=make_evictor("lru"))
    a, b, c = seq("a", 1), seq("b", 2), seq("c", 3)
    for s in (a, b, c):
        admit(kv, s)
    assert kv.free_blocks == 0
    for s in (b, c, a):  # release order b, c, a
        kv.free(s)
    assert (kv.free_blocks, kv.evictable_blocks) == (3, 3)
    assert evict_order(kv, [1, 2, 3]) == [2, 3, 1]
    assert kv.evictions == 3


def test_lru_reuse_moves_a_unit_to_the_back():
    kv = KVCacheManager(6, 16, evictor=make_evictor("lru"))
    for rid, u in (("a", 1), ("b", 2), ("c", 3)):
        s = seq(rid, u)
        admit(kv, s)
        kv.free(s)
    again = seq("a2", 1)  # hits unit 1: it leaves the queue and comes back last
    admit(kv, again)
    assert kv.hit_tokens == 16
    kv.free(again)
    assert evict_order(kv, [1, 2, 3]) == [2, 3, 1]


def test_lru_evicts_the_tail_of_a_prompt_before_its_head():
    kv = KVCacheManager(4, 16, evictor=make_evictor("lru"))
    r = Request("long", 0.0, 50, 1, block_hashes=(7, 8, 9, 10))  # units 7 (0-16), 8 (-32), 9 (-48)
    s = Sequence(r, prompt_units(r, 16))
    kv.allocate(s, 50, NO_HIT)
    kv.free(s)  # released tail first: 9, 8, 7 enter the queue in that order
    probe = Sequence(r, prompt_units(r, 16))
    hits = []
    for n in range(3):
        f = seq(f"f{n}", 0, prompt=16 * (kv.free_blocks + 1))
        kv.allocate(f, f.num_tokens, NO_HIT)
        hits.append(kv.find_prefix(probe).tokens)
    assert hits == [32, 16, 0]  # the prefix shrinks from its end: 9 goes, then 8, then 7


def test_lfu_evicts_least_used_first_lru_among_equals():
    kv = KVCacheManager(6, 16, evictor=make_evictor("lfu"))
    b = seq("b", 2)
    admit(kv, b)
    kv.free(b)
    b2 = seq("b2", 2)  # unit 2 used twice, and released before the others
    admit(kv, b2)
    kv.free(b2)
    for rid, u in (("a", 1), ("c", 3)):
        s = seq(rid, u)
        admit(kv, s)
        kv.free(s)
    assert evict_order(kv, [1, 2, 3]) == [1, 3, 2]  # LRU would give [2, 1, 3]


def test_lru_gives_the_order_lfu_avoids():
    kv = KVCacheManager(6, 16, evictor=make_evictor("lru"))
    for rid, u in (("b", 2), ("b2", 2), ("a", 1), ("c", 3)):
        s = seq(rid, u)
        admit(kv, s)
        kv.free(s)
    assert evict_order(kv, [1, 2, 3]) == [2, 1, 3]


def test_priority_evicts_least_important_first():
    # vLLM's convention: larger priority values are less important; ties fall back to LRU
    kv = KVCacheManager(8, 16, evictor=make_evictor("priority"))
    seqs = [seq("a", 1, priority=0), seq("b", 2, priority=5), seq("c", 3, priority=1), seq("d", 4, priority=5)]
    for s in seqs:
        admit(kv, s)
    for s in seqs:
        kv.free(s)
    assert evict_order(kv, [1, 2, 3, 4]) == [2, 4, 3, 1]


@pytest.mark.parametrize("last,expected", [("important", [2, 1]), ("unimportant", [1, 2])])
def test_priority_of_a_shared_unit_is_its_last_holders(last, expected):
    kv = KVCacheManager(6, 16, evictor=make_evictor("priority"))
    imp, unimp = seq("imp", 1, priority=0), seq("unimp", 1, priority=9)  # share unit 1
    other = seq("other", 2, priority=3)
    for s in (imp, unimp, other):
        admit(kv, s)
    kv.free(other)
    first, second = (unimp, imp) if last == "important" else (imp, unimp)
    kv.free(first)
    kv.free(second)
    assert evict_order(kv, [1, 2]) == expected


def test_eviction_is_selectable_end_to_end():
    w = load_workload("long-context", num_requests=60, seed=1)
    hits = {}
    for name in ("lru", "lfu", "priority"):
        cfg = SimConfig(workload="long-context", eviction=name, kv_blocks=6000, max_model_len=32768)
        r = simulate(cfg, w.requests, timing=ConstantTiming(0.01, 1e-6))
        assert r.info["eviction"] == name and r.summary["requests"]["completed"] > 0
        hits[name] = r.summary["prefix_cache"]["hit_tokens"]
    assert hits["lru"] > 0
    assert hits["priority"] == hits["lru"]  # every request has priority 0: ties fall back to LRU
    with pytest.raises(UserError, match="lru, lfu, priority"):
        make_evictor("fifo")


def test_unknown_eviction_exits_2(capsys):
    assert main(["simulate", "-n", "5", "--eviction", "fifo"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown eviction policy 'fifo'" in err[0]
