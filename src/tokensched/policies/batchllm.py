"""BatchLLM (Zheng et al., "BatchLLM: Optimizing Large Batched LLM Inference with Global Prefix Sharing and
Throughput-oriented Token Batching", arXiv 2412.03594): a scheduler for offline batches whose prompts are
all known up front.

Why: vLLM's prefix cache finds sharing implicitly and forgets it by LRU, FCFS scatters a prefix's users over
time (the prefix is recomputed after it ages out, or held far longer than needed), and decode-heavy requests
admitted late leave a tail of decode-only iterations. BatchLLM fixes the four in the scheduler:

1. **Global prefix identification.** When a batch has arrived (lazily, the first time the queue is read after
   arrivals), a prefix tree is built over the waiting requests' cacheable prompt units (``Sequence.units``:
   chained hashes, so a unit's key names its whole prefix and the tree needs no token comparison).
2. **Single-level groups** (the paper's ``MaximizeReuse``: nested prefixes are flattened to one shared prefix
   per group). Node ``v`` with ``n(v)`` requests below it and a prefix of ``t(v)`` tokens saves
   ``(n(v) - 1) * t(v)`` prefill tokens if its requests form one group; splitting it saves what its children's
   best groupings save (requests ending at ``v`` itself then share nothing). Bottom-up, each node keeps the
   larger; a node splits exactly when its children's groups, each sharing a longer prefix, save more than
   sharing ``v``'s shorter prefix among all — the paper's "fork into grandchild groups when
   ``(leaves - 1) * tokens(grandchild)`` exceeds the current gain". Each request joins the group of the first
   node on its path that keeps its requests together; a request alone shares nothing.
3. **Group co-scheduling and explicit release.** A group's requests are contiguous in the queue, so they are
   admitted back to back: the first computes the shared prefix, the others hit it in the prefix cache. When
   a group's last request finishes, its prefix units (those not also in the prefix of a group still alive)
   are dropped from the cache at once with :meth:`KVCacheManager.release`, instead of ageing through LRU.
4. **Decode-ratio-first order.** Groups by ``sum(decode) / (prefix + sum(prompt - prefix))`` (decode tokens
   per prefill token actually computed), requests in a group by ``decode / prompt``, largest first, so long
   decoders start early and their decodes overlap later prefills. ``predictor``: ``oracle`` (the request's
   real output length, the offline setting where lengths are known or well predicted) or ``constant``
   (``decode_length`` for every request: order by prompt length only).
5. **Memory-centric token batching.** While KV usage is below ``kv_threshold``, the iteration's token budget
   is what the KV memory below the threshold can hold (at least the configured budget, at most
   ``max_token_budget``), so decode-heavy iterations are filled with prefill instead of being capped by a
   token count. The request-count cap is the engine's ``--max-num-seqs``; raise it for BatchLLM-like runs
   (the paper replaces both caps by memory). Because the budget varies, the policy is not monotone.

Preempted requests resume first (FCFS requeue). Requests arriving later are regrouped together with those
still waiting (never-started ones only), at a cost linear in their prompt units: meant for offline batches.
Not modelled: the paper's fused shared-prefix attention kernel (our timing prices each request's attention
over its whole context).
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field

from tokensched.policies.base import SchedulerPolicy
from tokensched.sequence import Sequence

if TYPE_CHECKING:
    from tokensched.kv_cache import KVCacheManager


class BatchLLMOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    predictor: Literal["oracle", "constant"] = Field("oracle", description="decode length: real or constant")
    decode_length: int = Field(256, ge=1, description="decode length assumed by the constant predictor")
    kv_threshold: float = Field(0.9, ge=0, le=1, description="grow the token budget while KV usage is below "
                                                             "this fraction (0 disables)")
    max_token_budget: int = Field(65536, ge=1, description="largest token budget memory-centric batching gives")
    release: bool = Field(True, description="free a group's shared prefix when its last request finishes")
    grouping: bool = Field(True, description="group requests by shared prefix (false: every request alone)")


@dataclass(eq=False)
class PrefixGroup:
    """Requests that share ``tokens`` prompt tokens, named by the cache-unit ``keys`` of that prefix."""

    keys: list[int]
    tokens: int
    members: list[Sequence] = field(default_factory=list)
    pending: int = 0  # members not yet finished
    ratio: float = 0.0


def group_by_prefix(seqs: list[Sequence]) -> list[PrefixGroup]:
    """Single-level prefix groups over ``seqs`` (see the module docstring); every sequence in exactly one.

    Groups come in order of their first member in ``seqs``; members keep their order in ``seqs``.
    """
    count: Counter[int] = Counter()
    end: dict[int, int] = {}
    children: dict[int, list[int]] = {}
    for s in seqs:
        prev = 0  # 0 = the root (unit keys carry their end token in the low bits, so they are never 0)
        for key, e in s.units:
            if key not in end:
                end[key] = e
                children.setdefault(prev, []).append(key)
            count[key] += 1
            prev = key
    best: dict[int, int] = {}
    together: set[int] = set()
    for key in sorted(end, key=end.__getitem__, reverse=True):  # children (longer prefixes) first
        here = (count[key] - 1) * end[key]
        split = sum(best[c] for c in children.get(key, ()))
        if count[key] >= 2 and here >= split:
            together.add(key)
            best[key] = here
        else:
            best[key] = split
    groups: dict[int, PrefixGroup] = {}
    out: list[PrefixGroup] = []
    for s in seqs:
        path: list[int] = []
        g = None
        for key, e in s.units:
            path.append(key)
            if key in together:
                g = groups.get(key)
                if g is None:
                    g = groups[key] = PrefixGroup(list(path), e)
                    out.append(g)
                break
        if g is None:
            g = PrefixGroup([], 0)
            out.append(g)
        g.members.append(s)
    return out


class BatchLLMPolicy(SchedulerPolicy):
    """BatchLLM: global prefix groups scheduled together, decode-ratio-first, memory-centric token budget."""

    name = "batchllm"
    Options = BatchLLMOptions

    def __init__(self, options: BaseModel | None = None) -> None:
        super().__init__(options)
        self._new: list[Sequence] = []  # arrivals not yet grouped
        self._live: Counter[int] = Counter()  # unit key -> live groups whose prefix holds it
        self._to_release: list[int] = []
        self.groups_built = 0  # how many times the tree was built (tests, inspection)

    @property
    def monotone(self) -> bool:  # type: ignore[override]
        """A budget that follows KV usage can change while only decodes run."""
        return self.options.kv_threshold == 0

    # ---- waiting queue -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._queue) + len(self._new)

    def __iter__(self) -> Iterator[Sequence]:
        self._regroup()
        return iter(self._queue)

    def add(self, seq: Sequence, now: float) -> None:
        self._new.append(seq)

    def peek(self) -> Sequence:
        self._regroup()
        return self._queue[0]

    def pop(self) -> Sequence:
        self._regroup()
        return self._queue.popleft()

    def _decode(self, seq: Sequence) -> int:
        return seq.output_tokens if self.options.predictor == "oracle" else self.options.decode_length

    def _regroup(self) -> None:
        """Group every never-started waiting request (old and new) and order the queue; resumed ones stay first."""
        if not self._new:
            return
        resumed = [s for s in self._queue if s.first_scheduled_s is not None]
        fresh = [s for s in self._queue if s.first_scheduled_s is None] + self._new
        self._new = []
        for s in fresh:  # leave the groups they were in
            if isinstance(s.policy_state, PrefixGroup):
                self._member_gone(s.policy_state)
        groups = group_by_prefix(fresh) if self.options.grouping else [PrefixGroup([], 0, [s]) for s in fresh]
        self.groups_built += 1
        dec = self._decode
        for g in groups:
            g.pending = len(g.members)
            self._live.update(g.keys)
            for s in g.members:
                s.policy_state = g
            computed = g.tokens + sum(s.prompt_tokens - g.tokens for s in g.members)
            g.ratio = sum(dec(s) for s in g.members) / computed
            g.members.sort(key=lambda s: -dec(s) / s.prompt_tokens)  # stable: ties keep arrival order
        groups.sort(key=lambda g: -g.ratio)
        self._queue = deque(resumed)
        for g in groups:
            self._queue.extend(g.members)

    # ---- group lifetime ------------------------------------------------------------------------
    def _member_gone(self, g: PrefixGroup) -> None:
        g.pending -= 1
        if g.pending == 0:
            live = self._live
            for k in g.keys:
                live[k] -= 1
                if live[k] == 0:
                    del live[k]
                    self._to_release.append(k)

    def on_finish(self, seq: Sequence, now: float) -> None:
        g = seq.policy_state
        if isinstance(g, PrefixGroup):
            seq.policy_state = None
            self._member_gone(g)

    # ---- token budget ----------------------------------------------------------------------------
    def begin_step(self, running: list[Sequence], kv: KVCacheManager) -> None:
        """Release the shared prefixes of groups that finished since the last decision."""
        if self._to_release:
            if self.options.release:
                kv.release(self._to_release)
            self._to_release = []

    def token_budget(self, budget: int, running: list[Sequence], kv: KVCacheManager) -> int:
        """Size the budget by the KV room below the threshold (memory-centric batching)."""
        o = self.options
        room = int(o.kv_threshold * kv.num_blocks) - kv.used_blocks
        if room <= 0:
            return budget
        return max(budget, min(o.max_token_budget, room * kv.block_size))
