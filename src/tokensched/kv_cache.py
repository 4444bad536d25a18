"""Paged KV cache with prefix caching: block accounting, chained-hash reuse and LRU eviction.

Blocks hold ``block_size`` tokens each. A sequence holding ``slot_tokens`` slots owns
``ceil(slot_tokens / block_size)`` blocks, split between

* *cache units* it references: runs of full prompt blocks named by a chained hash (shared, ref-counted), and
* *private* blocks: everything else (the tail of the prompt, generated tokens, units it computed twice).

Why count blocks instead of tracking block ids: no metric depends on which physical block holds what, and
counting keeps the simulator's cost per *unit* rather than per block (a Mooncake prompt averages 750
16-token blocks but 24 hash units). The prefix cache is kept at the granularity of the workload's hashes
mapped onto whole engine blocks (:func:`prompt_units`); eviction therefore removes a whole unit at a time,
where vLLM removes single blocks. For 16-token hashes the two agree exactly.

Resource calls come in check/commit pairs: ``can_allocate``/``allocate`` for admission (with a prefix hit),
``can_append``/``append`` for running sequences. Checks have no side effects; commits assert the check held.
Freeing puts a sequence's unreferenced cache units at the MRU end of the LRU queue in reverse prompt order,
so the tail of a prompt is evicted before its head (as vLLM's free-block queue does).

Pinning (program-level policies, e.g. Continuum's KV time-to-live during a tool call): ``pin(keys)`` moves
unreferenced units out of the eviction order into a second tier. Pinned blocks count as *used* for admission
(a new request cannot take them), but a running sequence that needs a block takes one from the pins, oldest
pin first, before anyone is preempted (memory pressure unpins). ``unpin`` returns them to the MRU end of the
eviction order; a prefix hit on a pinned unit references it as usual and ends its pin.

CPU tier (``host_blocks > 0``; vLLM's CPU offload / LMCache, SGLang HiCache): a unit evicted from the GPU is
copied to host memory (the copy-out overlaps compute and is not charged), LRU within ``host_blocks``. A prefix
lookup continues through host units after the GPU run ends; admitting such a hit loads them back
(``pending_load_blocks``, which the replica charges as PCIe time on that iteration) instead of recomputing them.
``prefetch(keys)`` loads host units ahead of use into the eviction order (KVFlow), off the critical path.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from math import gcd

from tokensched.eviction import Evictor, LRUEvictor
from tokensched.request import Request
from tokensched.sequence import Sequence


def prompt_units(request: Request, block_size: int) -> list[tuple[int, int]]:
    """Cacheable prompt units of ``request`` at engine ``block_size``: ``[(key, end_token), ...]``.

    A unit spans ``lcm(hash_block_size, block_size)`` tokens, floored to whole engine blocks where the
    hashed part of the prompt ends, and is named by the chained hash that covers its last token (that hash
    names every token before it too, so equal names mean equal content). The key also encodes the unit's
    end, so a floored tail unit is only shared with one of the same extent.
    """
    hashes = request.block_hashes
    if not hashes:
        return []
    h = request.hash_block_size
    span = h * block_size // gcd(h, block_size)
    limit = request.prompt_tokens + (request.output_tokens if request.hashes_cover_output else 0)
    full_end = min(len(hashes) * h, limit) // block_size * block_size
    if full_end <= 0:
        return []
    ends = list(range(span, full_end, span))
    ends.append(full_end)
    return [((hashes[(e - 1) // h] << 32) | e, e) for e in ends]


@dataclass(slots=True)
class PrefixHit:
    """Result of a prefix lookup: the first ``num_units`` units of the sequence are cached."""

    num_units: int = 0
    tokens: int = 0
    evictable_blocks: int = 0  # blocks of the hit units that sit in the LRU queue (unreferenced)
    host_units: int = 0  # of num_units, the last ones are in CPU memory (loaded back on admission)
    host_blocks: int = 0


NO_HIT = PrefixHit()


class _Entry:
    __slots__ = ("blocks", "refs", "hits", "priority", "pinned")

    def __init__(self, blocks: int, priority: int) -> None:
        self.blocks = blocks
        self.refs = 1
        self.hits = 1  # admissions that used this unit, its creation included (for LFU)
        self.priority = priority  # of the last sequence that held it (for priority-aware eviction)
        self.pinned = False  # unreferenced and held out of the eviction order (see KVCacheManager.pin)


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True,
                 evictor: Evictor | None = None, host_blocks: int = 0) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be >= 1")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.free_blocks = num_blocks
        self._entries: dict[int, _Entry] = {}
        self._lru: Evictor = evictor if evictor is not None else LRUEvictor()  # unreferenced entries
        self.evictable_blocks = 0
        self._pinned: OrderedDict[int, int] = OrderedDict()  # pinned unreferenced units -> blocks, oldest first
        self.pinned_blocks = 0
        self.pin_evictions = 0  # pinned units taken by running sequences under memory pressure
        self.pin_hits = 0  # units found still pinned by an admission
        self.pins_released = 0  # pinned blocks released because the engine would otherwise idle
        self.evictions = 0
        # CPU tier
        self.host_blocks = host_blocks
        self._host: OrderedDict[int, int] = OrderedDict()  # units in CPU memory -> blocks, LRU first
        self.host_used = 0
        self.offloaded_blocks = 0  # GPU -> CPU on eviction
        self.loaded_blocks = 0  # CPU -> GPU for admissions (on the critical path)
        self.prefetched_blocks = 0  # CPU -> GPU ahead of use (off the critical path)
        self.pending_load_blocks = 0  # loaded since the replica last charged them
        self.host_hit_tokens = 0
        self.queried_tokens = 0
        self.hit_tokens = 0

    # ---- queries -------------------------------------------------------------------------------
    @property
    def used_blocks(self) -> int:
        """Blocks referenced by some sequence or pinned (cached but unreferenced blocks count as free)."""
        return self.num_blocks - self.free_blocks - self.evictable_blocks

    @property
    def available_blocks(self) -> int:
        """Blocks an admission may take (pinned blocks excluded)."""
        return self.free_blocks + self.evictable_blocks

    @property
    def appendable_blocks(self) -> int:
        """Blocks a running sequence may take: pinned blocks too (memory pressure unpins)."""
        return self.free_blocks + self.evictable_blocks + self.pinned_blocks

    def set_evictor(self, evictor: Evictor) -> None:
        """Replace the eviction order before anything is cached (program-aware evictors need the simulator)."""
        assert not self._entries, "set_evictor on a cache that holds units"
        self._lru = evictor

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def find_prefix(self, seq: Sequence) -> PrefixHit:
        """Longest cached run of ``seq``'s units; never the whole sequence (one token is always computed)."""
        if not self.enable_prefix_caching or not seq.units:
            return NO_HIT
        limit = seq.num_tokens - 1
        entries = self._entries
        n = tokens = evictable = 0
        units = seq.units
        for h, end in units:
            if end > limit:
                break
            e = entries.get(h)
            if e is None:
                break
            n += 1
            tokens = end
            if e.refs == 0 and not e.pinned:
                evictable += e.blocks
        host = self._host
        if host and n < len(units):  # the prefix may go on in CPU memory
            hn = hb = 0
            for h, end in units[n:]:
                if end > limit:
                    break
                b = host.get(h)
                if b is None:
                    break
                hn += 1
                hb += b
                tokens = end
            if hn:
                return PrefixHit(n + hn, tokens, evictable, hn, hb)
        return PrefixHit(n, tokens, evictable) if n else NO_HIT

    # ---- admission: check / commit -------------------------------------------------------------
    def _new_blocks_for_admission(self, hit: PrefixHit, num_new_tokens: int) -> int:
        return self.blocks_for(hit.tokens + num_new_tokens) - (hit.tokens // self.block_size - hit.host_blocks)

    def can_allocate(self, seq: Sequence, num_new_tokens: int, hit: PrefixHit) -> bool:
        need = self._new_blocks_for_admission(hit, num_new_tokens)
        return need <= self.free_blocks + self.evictable_blocks - hit.evictable_blocks

    def allocate(self, seq: Sequence, num_new_tokens: int, hit: PrefixHit, *, count_query: bool = True) -> None:
        """Admit ``seq``: reference its ``hit`` units and give it slots for ``num_new_tokens`` more tokens.

        ``count_query=False`` for a swapped-in sequence, which did not look the prefix cache up.
        """
        assert seq.slot_tokens == 0 and not seq.held_units and seq.private_blocks == 0, "allocate twice"
        assert self.can_allocate(seq, num_new_tokens, hit), "allocate without room"
        lru = self._lru
        gpu_units = hit.num_units - hit.host_units
        for h, _ in seq.units[:gpu_units]:
            e = self._entries[h]
            if e.refs == 0:
                if e.pinned:
                    self._end_pin(h, e)
                    self.pin_hits += 1
                else:
                    lru.remove(h)
                    self.evictable_blocks -= e.blocks
            e.refs += 1
            e.hits += 1
            seq.held_units.append(h)
        if hit.host_units:  # load the CPU part back into fresh GPU blocks
            loaded = [(h, self._host.pop(h)) for h, _ in seq.units[gpu_units: hit.num_units]]
            total = sum(b for _, b in loaded)
            self.host_used -= total
            self._take(total)
            prio = seq.request.priority
            for h, b in loaded:
                self._entries[h] = _Entry(b, prio)
                seq.held_units.append(h)
            self.pending_load_blocks += total
            self.loaded_blocks += total
            if count_query:
                self.host_hit_tokens += total * self.block_size
        seq.unit_idx = hit.num_units
        seq.slot_tokens = hit.tokens
        if count_query:
            self.queried_tokens += seq.num_tokens
            self.hit_tokens += hit.tokens
        self._grow(seq, num_new_tokens)

    # ---- running sequences: check / commit -----------------------------------------------------
    def can_append(self, seq: Sequence, num_new_tokens: int) -> bool:
        bs = self.block_size
        s = seq.slot_tokens
        need = -(-(s + num_new_tokens) // bs) - -(-s // bs)
        return need <= self.free_blocks + self.evictable_blocks + self.pinned_blocks

    def append(self, seq: Sequence, num_new_tokens: int) -> None:
        assert self.can_append(seq, num_new_tokens), "append without room"
        self._grow(seq, num_new_tokens)

    def try_append(self, seq: Sequence, num_new_tokens: int) -> bool:
        """``can_append`` then ``append`` in one call (the scheduler's hot loop); False changes nothing."""
        bs = self.block_size
        s = seq.slot_tokens
        new_slots = s + num_new_tokens
        need = -(-new_slots // bs) - -(-s // bs)
        if need > self.free_blocks:
            if need > self.free_blocks + self.evictable_blocks + self.pinned_blocks:
                return False
            self._take(need)
        else:
            self.free_blocks -= need
        seq.private_blocks += need
        seq.slot_tokens = new_slots
        i = seq.unit_idx
        if i < len(seq.units) and new_slots >= seq.units[i][1] and self.enable_prefix_caching:  # a unit filled up
            self._cache_units(seq, new_slots)
        return True

    def append_blocks_needed(self, slot_tokens: list[int], steps: int) -> int:
        """Blocks that ``steps`` more one-token decode steps need for sequences holding these slots."""
        bs = self.block_size
        return sum(-(-(s + steps) // bs) - -(-s // bs) for s in slot_tokens)

    def append_decode_steps(self, seqs: list[Sequence], steps: int) -> None:
        """Commit ``steps`` one-token steps for each of ``seqs`` at once (the macro-step's allocation)."""
        need = self.append_blocks_needed([s.slot_tokens for s in seqs], steps)
        assert need <= self.appendable_blocks, "append without room"
        self._take(need)
        bs = self.block_size
        caching = self.enable_prefix_caching
        for seq in seqs:
            s = seq.slot_tokens
            seq.private_blocks += -(-(s + steps) // bs) - -(-s // bs)
            seq.slot_tokens = s + steps
            i = seq.unit_idx
            if caching and i < len(seq.units) and s + steps >= seq.units[i][1]:  # output blocks filled up
                self._cache_units(seq, s + steps)

    def _grow(self, seq: Sequence, num_new_tokens: int) -> None:
        bs = self.block_size
        s = seq.slot_tokens
        new_slots = s + num_new_tokens
        need = -(-new_slots // bs) - -(-s // bs)
        self._take(need)
        seq.private_blocks += need
        seq.slot_tokens = new_slots
        # Full prompt units covered by the new slots join the cache now, as in vLLM V1 (cached at allocation).
        if seq.unit_idx < len(seq.units) and self.enable_prefix_caching:
            self._cache_units(seq, new_slots)

    def _cache_units(self, seq: Sequence, slots: int) -> None:
        units = seq.units
        i = seq.unit_idx
        start = units[i - 1][1] if i else 0
        entries = self._entries
        while i < len(units):
            h, end = units[i]
            if end > slots:
                break
            if h not in entries:
                blocks = (end - start) // self.block_size
                entries[h] = _Entry(blocks, seq.request.priority)
                if self._host and h in self._host:  # recomputed while a CPU copy waited: drop the copy
                    self.host_used -= self._host.pop(h)
                seq.private_blocks -= blocks
                seq.held_units.append(h)
            # else: someone else cached the same content meanwhile; our copy stays private.
            start = end
            i += 1
        seq.unit_idx = i

    def _take(self, n: int) -> None:
        if n > self.free_blocks:
            lru = self._lru
            entries = self._entries
            while n > self.free_blocks:
                if len(lru):
                    h, blocks = lru.pop()
                    self.evictable_blocks -= blocks
                else:  # only a running sequence gets here (admission checks exclude pins)
                    h, blocks = self._pinned.popitem(last=False)
                    self.pinned_blocks -= blocks
                    self.pin_evictions += 1
                del entries[h]
                self.free_blocks += blocks
                self.evictions += 1
                if self.host_blocks:
                    self._offload(h, blocks)
        self.free_blocks -= n

    def _offload(self, h: int, blocks: int) -> None:
        if blocks > self.host_blocks:
            return
        host = self._host
        while self.host_used + blocks > self.host_blocks:
            self.host_used -= host.popitem(last=False)[1]
        host[h] = blocks
        self.host_used += blocks
        self.offloaded_blocks += blocks

    def prefetch(self, keys: list[int]) -> int:
        """Load the units among ``keys`` that sit in CPU memory back to the GPU as unreferenced cached units (MRU
        end of the eviction order), if they fit without touching pins; returns the blocks loaded. The copy is
        assumed to overlap compute (KVFlow's overlapped prefetch), so no iteration is charged for it."""
        host = self._host
        todo = [(h, host[h]) for h in keys if h in host]
        total = sum(b for _, b in todo)
        if not todo or total > self.free_blocks + self.evictable_blocks:
            return 0
        for h, _ in todo:
            del host[h]
        self.host_used -= total
        self._take(total)  # the blocks become cached, unreferenced units
        for h, b in reversed(todo):  # tail first into the eviction order, as free() does
            e = _Entry(b, 0)
            e.refs = 0
            self._entries[h] = e
            self._lru.push(h, b, e.hits, 0)
            self.evictable_blocks += b
        self.prefetched_blocks += total
        return total

    # ---- release -------------------------------------------------------------------------------
    def free(self, seq: Sequence) -> None:
        """Release everything ``seq`` holds; its cached units stay reusable until evicted."""
        lru = self._lru
        entries = self._entries
        prio = seq.request.priority
        for h in reversed(seq.held_units):
            e = entries[h]
            e.refs -= 1
            assert e.refs >= 0, "cache unit released twice"
            e.priority = prio
            if e.refs == 0:
                lru.push(h, e.blocks, e.hits, prio)
                self.evictable_blocks += e.blocks
        self.free_blocks += seq.private_blocks
        seq.held_units = []
        seq.private_blocks = 0
        seq.slot_tokens = 0
        seq.unit_idx = 0

    def release(self, keys: list[int]) -> int:
        """Drop the cached units ``keys`` that no sequence references, now; returns the blocks freed.

        For policies that know a prefix will not be reused (BatchLLM frees a group's shared prefix when its
        last request finishes) instead of leaving it to age out of the eviction order. Referenced or absent
        units are skipped. Not counted as evictions (nothing was displaced to make room).
        """
        entries = self._entries
        freed = 0
        for h in keys:
            e = entries.get(h)
            if e is None or e.refs:
                continue
            if e.pinned:
                self._end_pin(h, e)
            else:
                self._lru.remove(h)
                self.evictable_blocks -= e.blocks
            del entries[h]
            self.free_blocks += e.blocks
            freed += e.blocks
        return freed

    # ---- pinning (program-level policies) ------------------------------------------------------
    def pin(self, keys: list[int]) -> list[int]:
        """Hold the unreferenced cached units among ``keys`` out of the eviction order; returns those pinned.

        Referenced units (another sequence still uses them) and absent ones are skipped.
        """
        entries = self._entries
        pinned = []
        for h in reversed(keys):  # pins are taken oldest first, and a prompt's tail before its head
            e = entries.get(h)
            if e is None or e.refs or e.pinned:
                continue
            self._lru.remove(h)
            self.evictable_blocks -= e.blocks
            e.pinned = True
            self._pinned[h] = e.blocks
            self.pinned_blocks += e.blocks
            pinned.append(h)
        pinned.reverse()
        return pinned

    def unpin(self, keys: list[int]) -> int:
        """End the pins among ``keys`` that still hold (the units join the MRU end of the eviction order);
        returns the blocks unpinned. Units hit or taken since they were pinned are skipped."""
        entries = self._entries
        n = 0
        for h in reversed(keys):  # like free(): the tail of a prompt is evicted before its head
            e = entries.get(h)
            if e is None or not e.pinned:
                continue
            self._end_pin(h, e)
            self._lru.push(h, e.blocks, e.hits, e.priority)
            self.evictable_blocks += e.blocks
            n += e.blocks
        return n

    def unpin_all(self) -> int:
        """End every pin (oldest first into the eviction order); returns the blocks released."""
        self.pins_released += self.pinned_blocks
        return self.unpin(list(reversed(self._pinned)))

    def _end_pin(self, h: int, e: _Entry) -> None:
        """Take unit ``h`` out of the pinned tier (the caller decides where it goes next)."""
        del self._pinned[h]
        self.pinned_blocks -= e.blocks
        e.pinned = False

    # ---- invariants (tests) --------------------------------------------------------------------
    def check_invariants(self, seqs: list[Sequence]) -> None:
        """Assert block conservation and reference counts against the sequences that hold blocks."""
        refs: dict[int, int] = {}
        private = 0
        for s in seqs:
            assert s.private_blocks >= 0, f"{s.id}: negative private blocks"
            held = sum(self._entries[h].blocks for h in s.held_units)
            assert held + s.private_blocks == self.blocks_for(s.slot_tokens), f"{s.id}: blocks != slots"
            private += s.private_blocks
            for h in s.held_units:
                refs[h] = refs.get(h, 0) + 1
        cached = 0
        for h, e in self._entries.items():
            assert e.refs == refs.get(h, 0), f"unit {h}: refs {e.refs} != holders {refs.get(h, 0)}"
            assert (h in self._lru) == (e.refs == 0 and not e.pinned), f"unit {h}: LRU membership wrong"
            assert (h in self._pinned) == e.pinned and not (e.pinned and e.refs), f"unit {h}: pin state wrong"
            cached += e.blocks
        assert self.evictable_blocks == self._lru.values_sum()
        assert self.pinned_blocks == sum(self._pinned.values())
        assert self.host_used == sum(self._host.values()) <= max(self.host_blocks, 0)
        assert not (self._host.keys() & self._entries.keys()), "a unit both on the GPU and in CPU memory"
        assert self.free_blocks >= 0
        assert self.free_blocks + cached + private == self.num_blocks, "blocks leaked or double-freed"
