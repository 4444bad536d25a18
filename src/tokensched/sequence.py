"""A request while it is being served: its progress, its KV cache holdings and its timestamps.

The model follows vLLM V1: there are no prefill and decode phases. A sequence knows ``num_tokens`` tokens
(prompt plus the outputs sampled so far) and has computed the KV of ``num_computed`` of them; each step
schedules some of the missing ones. When a step leaves ``num_computed == num_tokens`` the engine samples
one more token, so a fresh request needs ``prompt_tokens`` new tokens once and then one per step, and a
request preempted by recompute simply starts over from ``num_computed = 0`` with its outputs kept.
"""

from __future__ import annotations

from enum import IntEnum

from tokensched.request import Request


class SeqStatus(IntEnum):
    """Ordered states: a sequence only moves forward, except RUNNING -> WAITING on preemption."""

    WAITING = 0
    RUNNING = 1
    FINISHED = 2
    REJECTED = 3


class Sequence:
    __slots__ = (
        "request", "prompt_tokens", "output_tokens", "num_tokens", "num_computed", "num_generated", "status",
        # KV cache state, owned by KVCacheManager
        "units", "unit_idx", "held_units", "private_blocks", "slot_tokens",
        # metrics
        "first_scheduled_s", "first_token_s", "last_token_s", "finish_s", "itl_max_s",
        "preemptions", "prefix_hit_tokens", "reject_reason", "swapped_tokens", "policy_state",
    )

    def __init__(self, request: Request, units: list[tuple[int, int]]) -> None:
        self.request = request
        self.prompt_tokens = request.prompt_tokens
        self.output_tokens = request.output_tokens
        # Tokens known so far: the prompt and every output sampled (kept across preemptions). A field, not a
        # property, because the scheduler reads it for every running sequence every step.
        self.num_tokens = request.prompt_tokens
        self.num_computed = 0
        self.num_generated = 0
        self.status = SeqStatus.WAITING
        # (hash, end_token) of each cacheable prompt unit, in prompt order; see kv_cache.prompt_units().
        self.units = units
        self.unit_idx = 0  # next unit that is neither held nor known to be uncacheable
        self.held_units: list[int] = []  # hashes whose cache entries this sequence references
        self.private_blocks = 0  # blocks owned by this sequence alone
        self.slot_tokens = 0  # tokens that have a KV slot; the sequence holds ceil(slot_tokens / block_size) blocks
        self.first_scheduled_s: float | None = None
        self.first_token_s: float | None = None
        self.last_token_s: float | None = None
        self.finish_s: float | None = None
        self.itl_max_s = 0.0
        self.preemptions = 0
        self.prefix_hit_tokens: int | None = None
        self.reject_reason: str | None = None
        self.swapped_tokens = 0  # tokens whose KV waits in CPU memory (swap preemption); 0 when not swapped
        self.policy_state: object = None  # free slot for the scheduler policy (predicted length, group, ...)

    @property
    def id(self) -> str:
        return self.request.id

    @property
    def is_decoding(self) -> bool:
        """True when exactly the last sampled token is missing: the next step is a one-token decode."""
        return self.num_generated > 0 and self.num_computed == self.num_tokens - 1

    def __repr__(self) -> str:
        return (f"Sequence({self.id!r}, {self.status.name}, computed={self.num_computed}/"
                f"{self.num_tokens}, generated={self.num_generated}/{self.output_tokens})")
