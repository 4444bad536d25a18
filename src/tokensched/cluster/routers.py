"""Routers: which replica serves an arriving request. Each is a small class with one method, ``route``.

Routers see replicas through :class:`ReplicaView` snapshots that the cluster refreshes only every
``report_interval`` seconds (real routers poll metrics endpoints, so their picture is stale), plus what a router
knows for sure because it did it itself: how many requests it sent where and which prompt prefixes it sent
where (``outstanding`` and the routers' own prefix indexes; both fresh). Rules follow
``../shared/reference/routers-and-agent-schedulers.md`` (SGLang router A1, Dynamo A3).
"""

from __future__ import annotations

import bisect
import hashlib
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from tokensched.errors import UserError
from tokensched.request import Request


@dataclass(slots=True)
class ReplicaView:
    """What a router knows about one replica."""

    index: int
    pool: str
    kv_blocks: int
    block_size: int
    speed: float  # relative serving speed (tokens/s it can sustain, from its timing model); for heterogeneous pools
    # stale: refreshed every report_interval
    running: int = 0
    waiting: int = 0
    kv_used_blocks: int = 0
    # fresh: router-local bookkeeping
    outstanding: int = 0  # requests sent here and not finished
    outstanding_tokens: int = 0  # prompt + output tokens of those requests (the router knows both for a trace)

    @property
    def kv_usage(self) -> float:
        return self.kv_used_blocks / self.kv_blocks


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Router:
    name: ClassVar[str] = "base"
    Options: ClassVar[type[BaseModel]] = NoOptions

    def __init__(self, options: BaseModel | None, views: list[ReplicaView], seed: int = 0) -> None:
        self.options: Any = options if options is not None else self.Options()
        self.n = len(views)
        self.rng = np.random.Generator(np.random.PCG64(seed))

    def route(self, req: Request, views: list[ReplicaView], now: float) -> int:
        raise NotImplementedError


class RoundRobin(Router):
    """Replicas in turn, blind to load."""

    name = "round-robin"

    def __init__(self, options: BaseModel | None, views: list[ReplicaView], seed: int = 0) -> None:
        super().__init__(options, views, seed)
        self._next = 0

    def route(self, req: Request, views: list[ReplicaView], now: float) -> int:
        i = self._next
        self._next = (i + 1) % self.n
        return i


class RandomRouter(Router):
    """A uniformly random replica (seeded)."""

    name = "random"

    def route(self, req: Request, views: list[ReplicaView], now: float) -> int:
        return int(self.rng.integers(self.n))


class LeastOutstanding(Router):
    """Fewest requests in flight (router-local count, always fresh); ties to the lowest index."""

    name = "least-outstanding"

    def route(self, req: Request, views: list[ReplicaView], now: float) -> int:
        return min(views, key=lambda v: (v.outstanding, v.index)).index


class LeastKV(Router):
    """Lowest KV-cache usage as last reported (stale between reports)."""

    name = "least-kv"

    def route(self, req: Request, views: list[ReplicaView], now: float) -> int:
        return min(views, key=lambda v: (v.kv_usage, v.running + v.waiting, v.index)).index


class PowerOfTwo(Router):
    """Two random replicas, the one with less reported load (running + waiting) wins."""

    name = "power-of-two"

    def route(self, req: Request, views: list[ReplicaView], now: float) -> int:
        if self.n == 1:
            return 0
        a, b = self.rng.choice(self.n, size=2, replace=False)
        va, vb = views[int(a)], views[int(b)]
        return min((va, vb), key=lambda v: (v.running + v.waiting, v.index)).index


class _PrefixIndex:
    """Approximate per-replica prefix index built from the router's own decisions (like SGLang's radix tree of
    routed text and Dynamo's ApproxKvIndexer): chained block hashes seen per replica, with a size cap (LRU)."""

    def __init__(self, n: int, max_entries: int) -> None:
        from collections import OrderedDict

        self.sets: list[OrderedDict[int, None]] = [OrderedDict() for _ in range(n)]
        self.max_entries = max_entries

    def match(self, req: Request, i: int) -> int:
        """Leading hash blocks of ``req`` that replica ``i`` has seen."""
        s = self.sets[i]
        m = 0
        for h in req.block_hashes:
            if h not in s:
                break
            m += 1
        return m

    def insert(self, req: Request, i: int) -> None:
        s = self.sets[i]
        for h in req.block_hashes:
            s[h] = None
            s.move_to_end(h)
        while len(s) > self.max_entries:
            s.popitem(last=False)


class CacheAwareOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    cache_threshold: float = Field(0.3, ge=0, le=1, description="min prefix match rate to follow the cache")
    balance_abs_threshold: int = Field(64, ge=0, description="imbalance if max-min load exceeds this ...")
    balance_rel_threshold: float = Field(1.5, ge=1, description="... and max load > this x min load")
    max_tree_blocks: int = Field(1 << 22, ge=1, description="hash blocks remembered per replica (LRU)")


class CacheAware(Router):
    """SGLang cache-aware: balance when imbalanced, else follow the longest prefix match above a threshold,
    else the least-loaded replica (load = router-local requests in flight)."""

    name = "cache-aware"
    Options = CacheAwareOptions

    def __init__(self, options: BaseModel | None, views: list[ReplicaView], seed: int = 0) -> None:
        super().__init__(options, views, seed)
        self.index = _PrefixIndex(self.n, self.options.max_tree_blocks)

    def route(self, req: Request, views: list[ReplicaView], now: float) -> int:
        o = self.options
        loads = [v.outstanding for v in views]
        hi, lo = max(loads), min(loads)
        least = min(views, key=lambda v: (v.outstanding, v.index)).index
        if hi - lo > o.balance_abs_threshold and hi > o.balance_rel_threshold * lo:
            pick = least
        else:
            n_blocks = len(req.block_hashes)
            best, best_m = least, -1
            for v in views:
                m = self.index.match(req, v.index)
                if m > best_m or (m == best_m and v.outstanding < views[best].outstanding):
                    best, best_m = v.index, m
            rate = best_m / n_blocks if n_blocks else 0.0
            pick = best if rate > o.cache_threshold else least
        self.index.insert(req, pick)
        return pick


class DynamoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    overlap_score_weight: float = Field(1.0, ge=0, description="weight of the prefill (uncached prompt) blocks")
    max_tree_blocks: int = Field(1 << 22, ge=1)


class DynamoCost(Router):
    """Dynamo KV router: cost = overlap_score_weight x prefill blocks (prompt blocks not cached there)
    + decode blocks (blocks of requests in flight there); lowest cost wins."""

    name = "dynamo"
    Options = DynamoOptions

    def __init__(self, options: BaseModel | None, views: list[ReplicaView], seed: int = 0) -> None:
        super().__init__(options, views, seed)
        self.index = _PrefixIndex(self.n, self.options.max_tree_blocks)

    def route(self, req: Request, views: list[ReplicaView], now: float) -> int:
        w = self.options.overlap_score_weight
        best, best_cost = 0, float("inf")
        for v in views:
            bs = v.block_size
            prompt_blocks = -(-req.prompt_tokens // bs)
            cached = min(self.index.match(req, v.index) * req.hash_block_size // bs, prompt_blocks)
            decode_blocks = -(-v.outstanding_tokens // bs)
            cost = w * (prompt_blocks - cached) + decode_blocks
            if cost < best_cost:
                best, best_cost = v.index, cost
        self.index.insert(req, best)
        return best


class SessionOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    virtual_nodes: int = Field(64, ge=1, description="points per replica on the hash ring")
    load_factor: float = Field(1.25, ge=1, description="bounded load: skip a replica above this x mean load")


class SessionAffinity(Router):
    """Consistent hashing of the session id (request id when none) with bounded load (SGLang prefix_hash style)."""

    name = "session-affinity"
    Options = SessionOptions

    def __init__(self, options: BaseModel | None, views: list[ReplicaView], seed: int = 0) -> None:
        super().__init__(options, views, seed)
        ring = sorted((self._h(f"{i}#{k}"), i) for i in range(self.n) for k in range(self.options.virtual_nodes))
        self._points = [p for p, _ in ring]
        self._owners = [o for _, o in ring]

    @staticmethod
    def _h(key: str) -> int:
        return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")  # stable across runs

    def route(self, req: Request, views: list[ReplicaView], now: float) -> int:
        key = req.session_id or req.id
        cap = (sum(v.outstanding for v in views) + 1) / self.n * self.options.load_factor
        start = bisect.bisect(self._points, self._h(key)) % len(self._points)
        for j in range(len(self._points)):
            i = self._owners[(start + j) % len(self._points)]
            if views[i].outstanding < cap:
                return i
        return self._owners[start]


class WorkloadBalanced(Router):
    """HEXGEN-style dispatch for heterogeneous replicas: the replica whose queued work plus this request,
    divided by its serving speed, finishes soonest (work = prompt + output tokens in flight)."""

    name = "workload-balanced"

    def route(self, req: Request, views: list[ReplicaView], now: float) -> int:
        work = req.prompt_tokens + req.output_tokens
        return min(views, key=lambda v: ((v.outstanding_tokens + work) / v.speed, v.index)).index


ROUTERS: dict[str, type[Router]] = {
    r.name: r for r in (RoundRobin, RandomRouter, LeastOutstanding, LeastKV, PowerOfTwo, CacheAware, DynamoCost,
                        SessionAffinity, WorkloadBalanced)
}


def get_router(name: str) -> type[Router]:
    try:
        return ROUTERS[name.lower()]
    except KeyError:
        raise UserError(f"unknown router {name!r}; choose one of: {', '.join(ROUTERS)}") from None
