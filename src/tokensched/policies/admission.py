"""Admission regimes: when may a waiting request start, beyond "its prompt fits in KV now"?

* ``aggressive`` (vLLM, SGLang default): admit whatever fits now; preempt when decodes run out of blocks.
* ``conservative`` (reservation, as in engines that pre-allocate the maximum output): admit only if every
  running request and the candidate could all reach their maximum length at once — no preemption ever,
  at the price of queueing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from tokensched.policies.base import AdmissionPolicy
from tokensched.sequence import Sequence

if TYPE_CHECKING:
    from tokensched.kv_cache import KVCacheManager


class AggressiveAdmission(AdmissionPolicy):
    """Admit whatever fits in KV now (vLLM); memory pressure is resolved later by preemption."""

    name = "aggressive"


class ConservativeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    max_new_tokens: int = Field(2048, ge=1, description="output length reserved per request (at least its real one)")


class ConservativeAdmission(AdmissionPolicy):
    """Reserve each request's maximum output: admit only if all running requests could finish at full length."""

    name = "conservative"
    Options = ConservativeOptions

    def __init__(self, options: BaseModel | None = None, *, max_model_len: int = 1 << 30) -> None:
        super().__init__(options, max_model_len=max_model_len)
        self.reserved_tokens: dict[str, int] = {}
        self.reserved_blocks = 0

    def _reservation(self, seq: Sequence, kv: KVCacheManager) -> int:
        cap = min(max(self.options.max_new_tokens, seq.output_tokens), self.max_model_len - seq.prompt_tokens)
        return kv.blocks_for(seq.prompt_tokens + max(cap, seq.output_tokens))

    def admits(self, seq: Sequence, num_new: int, running: list[Sequence], kv: KVCacheManager) -> bool:
        return self.reserved_blocks + self._reservation(seq, kv) <= kv.num_blocks

    def on_admit(self, seq: Sequence, kv: KVCacheManager) -> None:
        blocks = self._reservation(seq, kv)
        self.reserved_tokens[seq.id] = blocks
        self.reserved_blocks += blocks

    def on_release(self, seq: Sequence) -> None:
        self.reserved_blocks -= self.reserved_tokens.pop(seq.id, 0)
