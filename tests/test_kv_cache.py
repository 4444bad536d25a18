"""Block accounting and prefix caching, with hand-computed block counts (16-token blocks unless noted)."""

from __future__ import annotations

from tokensched.kv_cache import NO_HIT, KVCacheManager, prompt_units
from tokensched.request import Request
from tokensched.sequence import Sequence


def seq(rid: str, prompt: int, hashes: tuple[int, ...] = (), hbs: int = 16, bs: int = 16, out: int = 4) -> Sequence:
    r = Request(rid, 0.0, prompt, out, block_hashes=hashes, hash_block_size=hbs)
    return Sequence(r, prompt_units(r, bs))


def test_allocate_rounds_up_to_blocks_and_free_returns_them():
    kv = KVCacheManager(10, 16)
    a = seq("a", 33)  # 33 tokens -> 3 blocks
    assert kv.can_allocate(a, 33, NO_HIT)
    kv.allocate(a, 33, NO_HIT)
    assert (kv.free_blocks, a.private_blocks, a.slot_tokens) == (7, 3, 33)
    assert kv.can_append(a, 15)  # 48 tokens still fit in 3 blocks
    kv.append(a, 15)
    assert kv.free_blocks == 7
    kv.append(a, 1)  # token 49 opens block 4
    assert kv.free_blocks == 6
    kv.check_invariants([a])
    kv.free(a)
    assert kv.free_blocks == 10 and a.private_blocks == 0
    kv.check_invariants([])


def test_allocation_refused_without_room_has_no_side_effects():
    kv = KVCacheManager(4, 16)
    a = seq("a", 64)
    kv.allocate(a, 64, NO_HIT)
    b = seq("b", 1)
    assert not kv.can_allocate(b, 1, NO_HIT)
    assert not kv.can_append(a, 1)
    assert kv.free_blocks == 0
    kv.check_invariants([a])


def test_prompt_units_map_512_token_hashes_onto_16_token_blocks():
    r = Request("m", 0.0, 1000, 1, block_hashes=(7, 8), hash_block_size=512)
    k = lambda h, end: (h << 32) | end  # noqa: E731  a unit's key: its hash and its extent
    assert prompt_units(r, 16) == [(k(7, 512), 512), (k(8, 992), 992)]  # last unit floored to whole blocks
    r2 = Request("s", 0.0, 100, 1, block_hashes=tuple(range(7)), hash_block_size=16)
    # named by the chained hash of its last token
    assert prompt_units(r2, 32) == [(k(1, 32), 32), (k(3, 64), 64), (k(5, 96), 96)]


def test_prefix_hit_shares_blocks_and_counts_references():
    kv = KVCacheManager(20, 16)
    a = seq("a", 40, hashes=(1, 2, 3))  # units (1,16) (2,32); 40 tokens -> 3 blocks
    kv.allocate(a, 40, kv.find_prefix(a))
    assert len(a.held_units) == 2 and a.private_blocks == 1 and kv.free_blocks == 17
    b = seq("b", 50, hashes=(1, 2, 9, 10))  # shares two blocks with a
    hit = kv.find_prefix(b)
    assert (hit.num_units, hit.tokens, hit.evictable_blocks) == (2, 32, 0)
    kv.allocate(b, 50 - 32, hit)  # 50 tokens = 4 blocks, 2 of them shared
    assert kv.free_blocks == 15 and b.private_blocks == 1 and len(b.held_units) == 3
    assert kv.hit_tokens == 32
    kv.check_invariants([a, b])
    kv.free(a)
    kv.check_invariants([b])
    assert kv.free_blocks == 16 and kv.evictable_blocks == 0  # units 1, 2 still referenced by b
    kv.free(b)
    assert kv.free_blocks == 17 and kv.evictable_blocks == 3 and kv.used_blocks == 0
    kv.check_invariants([])


def test_whole_prompt_hit_still_computes_the_last_token():
    kv = KVCacheManager(20, 16)
    a = seq("a", 32, hashes=(1, 2))
    kv.allocate(a, 32, kv.find_prefix(a))
    kv.free(a)
    b = seq("b", 32, hashes=(1, 2))
    hit = kv.find_prefix(b)
    assert hit.tokens == 16  # unit 2 ends at token 32 > 31: recompute it so the last token is computed


def test_lru_evicts_least_recently_freed_tail_first():
    kv = KVCacheManager(4, 16)
    a = seq("a", 32, hashes=(1, 2))
    kv.allocate(a, 32, kv.find_prefix(a))
    kv.free(a)  # LRU order: 2 (tail first), then 1
    b = seq("b", 32, hashes=(5, 6))
    kv.allocate(b, 32, kv.find_prefix(b))
    kv.free(b)  # LRU: 2, 1, 6, 5
    assert kv.free_blocks == 0 and kv.evictable_blocks == 4
    c = seq("c", 16)
    kv.allocate(c, 16, NO_HIT)  # evicts unit 2
    assert kv.evictions == 1
    d = seq("d", 32, hashes=(1, 2))
    assert kv.find_prefix(d).tokens == 16  # unit 1 survives, unit 2 is gone
    kv.check_invariants([c])


def test_hit_on_evictable_units_is_not_counted_as_free_room():
    kv = KVCacheManager(3, 16)
    a = seq("a", 32, hashes=(1, 2, 3))
    kv.allocate(a, 32, kv.find_prefix(a))
    kv.free(a)  # 2 evictable blocks, 1 free
    b = seq("b", 48, hashes=(1, 2, 3))  # hit 32 tokens (2 evictable blocks), needs 1 new block
    hit = kv.find_prefix(b)
    assert hit.tokens == 32 and hit.evictable_blocks == 2
    assert kv.can_allocate(b, 16, hit)
    assert not kv.can_allocate(b, 17, hit)  # 2 new blocks, but only 1 is free once the hits are pinned
    kv.allocate(b, 16, hit)
    kv.check_invariants([b])


def test_duplicate_unit_computed_concurrently_stays_private():
    kv = KVCacheManager(10, 16)
    a = seq("a", 17, hashes=(1, 2))
    b = seq("b", 17, hashes=(1, 2))
    kv.allocate(a, 17, kv.find_prefix(a))
    hb = kv.find_prefix(b)  # unit 1 is cached now: b hits it
    assert hb.tokens == 16
    c = seq("c", 17, hashes=(1, 2))
    kv.allocate(b, 1, hb)
    kv.allocate(c, 17, NO_HIT)  # c ignores the cache (as if scheduled before a cached it)
    assert c.held_units == [] and c.private_blocks == 2
    kv.check_invariants([a, b, c])


def test_decode_steps_in_one_call_equal_single_appends():
    kv1, kv2 = KVCacheManager(50, 16), KVCacheManager(50, 16)
    s1 = [seq("a", 15), seq("b", 16), seq("c", 30)]
    s2 = [seq("a", 15), seq("b", 16), seq("c", 30)]
    for kv, ss in ((kv1, s1), (kv2, s2)):
        for s in ss:
            kv.allocate(s, s.prompt_tokens, NO_HIT)
    for _ in range(20):
        for s in s1:
            kv1.append(s, 1)
    kv2.append_decode_steps(s2, 20)
    assert kv1.free_blocks == kv2.free_blocks
    assert [s.private_blocks for s in s1] == [s.private_blocks for s in s2] == [3, 3, 4]
