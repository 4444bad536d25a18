"""The unit of work: one LLM request as it arrives, before any scheduling.

A :class:`Request` is immutable input data. Everything that changes while it is served lives on the
engine's :class:`~tokensched.sequence.Sequence`, so a workload can be replayed many times unchanged.

Prefix sharing is described by ``block_hashes``: one integer per ``hash_block_size`` prompt tokens, in
prompt order. Two requests whose hashes agree at position ``i`` (and at every earlier position) share the
same prompt tokens up to the end of block ``i``: the hashes are *chained*, each one names its block and
everything before it, as in vLLM and in the Mooncake trace. The last hash may cover a partial block. The
KV cache manager maps these hashes onto its own block size (see ``kv_cache.py``).

With ``hashes_cover_output`` the hashes go on past the prompt over the output tokens, so generated blocks join
the prefix cache as they fill (vLLM V1 caches them too): a multi-turn program's next call, whose prompt is this
call's prompt and output, then reuses the output's KV as well. Trace loaders leave it off (traces hash prompts).
Blocks that hold generated tokens must hash to this request's own values (generated text is nobody else's):
macro-steps rely on a running request's new blocks never being a waiting request's prefix.
"""

from __future__ import annotations

from dataclasses import dataclass, field

RequestId = str


@dataclass(frozen=True, slots=True)
class Request:
    id: RequestId
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    block_hashes: tuple[int, ...] = ()
    hash_block_size: int = 16
    tenant: str = "default"
    priority: int = 0
    slo_ttft_s: float | None = None
    slo_tpot_s: float | None = None
    session_id: str | None = None
    hashes_cover_output: bool = False
    extra: dict[str, object] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.prompt_tokens < 1:
            raise ValueError(f"request {self.id}: prompt_tokens must be >= 1, got {self.prompt_tokens}")
        if self.output_tokens < 1:
            raise ValueError(f"request {self.id}: output_tokens must be >= 1, got {self.output_tokens}")
        if self.arrival_s < 0:
            raise ValueError(f"request {self.id}: arrival time must be >= 0, got {self.arrival_s}")
        if self.hash_block_size < 1:
            raise ValueError(f"request {self.id}: hash_block_size must be >= 1")
