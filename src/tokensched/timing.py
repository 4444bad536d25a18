"""How long one engine iteration takes, as a function of what is in the batch.

:class:`TimingModel` is the seam: anything that can price a :class:`BatchShape` can drive the simulator
(a measured latency table, a fitted model, a real engine's step clock). The default
:class:`RooflineTiming` prices each operator class with a roofline, ``max(FLOPs / (peak * eff_compute),
bytes / (bandwidth * eff_memory))``, per GPU under tensor parallelism, and adds them:

* linear layers (QKV/O projections, MLP or the touched experts) over all ``T`` batched tokens, weights read once;
* prefill attention per chunk (causal over cached + new tokens) and decode attention (KV read once per token);
* the LM head for every sequence that samples a token;
* two ring all-reduces per layer when ``tp > 1``;
* a fixed per-iteration overhead plus a per-sequence one (scheduling, sampling, launch gaps).

The efficiency factors are documented estimates, not yet fitted to measurements; see docs/timing.md.

``decode_times`` prices ``steps`` successive decode-only iterations at once for the macro-step. It must
give bit-identical results to calling ``iteration_time`` once per step: the fixed part depends only on the
batch size, and the attention part is evaluated with the same operations in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from tokensched.hardware import GPU
from tokensched.models import ModelConfig


@dataclass(slots=True)
class BatchShape:
    """What one iteration computes. Decodes are summarised by count and total context (both exact)."""

    prefill_new: list[int] = field(default_factory=list)  # new tokens of each prefill chunk
    prefill_cached: list[int] = field(default_factory=list)  # tokens already in KV before each chunk
    num_decodes: int = 0
    decode_context_sum: int = 0  # sum over decodes of the context attended, the new token included
    num_sampled: int = 0  # sequences that sample a token at the end of this iteration

    @property
    def num_tokens(self) -> int:
        return sum(self.prefill_new) + self.num_decodes

    @property
    def num_seqs(self) -> int:
        return len(self.prefill_new) + self.num_decodes


class TimingModel(Protocol):
    def iteration_time(self, batch: BatchShape) -> float:
        """Seconds for one iteration computing ``batch``."""
        ...

    def decode_times(self, num_decodes: int, context_sum: int, steps: int) -> np.ndarray:
        """Seconds for ``steps`` successive decode-only iterations of ``num_decodes`` sequences whose total
        context is ``context_sum`` in the first and grows by ``num_decodes`` per iteration. Must equal
        ``iteration_time`` of each of those batches exactly."""
        ...


@dataclass(frozen=True, slots=True)
class RooflineParams:
    """Efficiency factors and overheads of the roofline model (documented estimates; see docs/timing.md)."""

    gemm_compute_eff: float = 0.70  # fraction of dense BF16 peak reached by large GEMMs
    attn_compute_eff: float = 0.50  # FlashAttention prefill reaches about half of peak
    memory_eff: float = 0.90  # fraction of HBM bandwidth reached by streaming weights and KV
    link_eff: float = 0.70  # fraction of NVLink/PCIe bandwidth reached by ring all-reduce
    allreduce_latency_s: float = 8e-6  # per all-reduce launch and synchronisation
    iteration_overhead_s: float = 1.5e-3  # per iteration: scheduler, input preparation, sampling, launch gaps
    per_seq_overhead_s: float = 5e-6  # per sequence in the batch: bookkeeping and detokenisation

    def __post_init__(self) -> None:
        for name in ("gemm_compute_eff", "attn_compute_eff", "memory_eff", "link_eff"):
            v = getattr(self, name)
            if not 0 < v <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {v}")


class RooflineTiming:
    """Per-operator roofline for a dense or MoE decoder on ``tp`` GPUs of one type."""

    def __init__(self, model: ModelConfig, gpu: GPU, tp: int = 1, params: RooflineParams | None = None) -> None:
        if tp < 1:
            raise ValueError("tp must be >= 1")
        p = params or RooflineParams()
        self.model, self.gpu, self.tp, self.params = model, gpu, tp, p
        L = model.num_layers
        db = model.dtype_bytes
        flops = gpu.bf16_flops
        bw = gpu.hbm_bandwidth * p.memory_eff
        self._gemm_flops = flops * p.gemm_compute_eff
        self._attn_flops = flops * p.attn_compute_eff
        self._bw = bw
        self._L = L
        heads_per_gpu = model.num_heads / tp
        kv_heads_per_gpu = max(1.0, model.num_kv_heads / tp)  # KV heads are replicated when tp > kv heads
        d = model.head_dim
        # per layer, per GPU
        self._attn_w_bytes = model.attn_params_per_layer * db / tp
        self._attn_flops_per_token = 2.0 * model.attn_params_per_layer / tp
        self._expert_params = 3 * model.hidden_size * model.intermediate_size
        self._mlp_flops_per_token = 2.0 * model.active_mlp_params_per_token / tp
        self._kv_bytes_per_token_layer = 2 * kv_heads_per_gpu * d * db
        self._attn_flop_coef = 4.0 * heads_per_gpu * d  # FLOPs per (query token x context token)
        # decode attention, all layers: max(ctx * f, ctx * b)
        self._dec_f = L * self._attn_flop_coef / self._attn_flops
        self._dec_b = L * self._kv_bytes_per_token_layer / bw
        self._lm_w_bytes = model.vocab_size * model.hidden_size * db / tp
        self._lm_flops_per_token = 2.0 * model.vocab_size * model.hidden_size / tp
        self._act_bytes_per_token = model.hidden_size * db  # one activation row
        self._link_bw = gpu.interconnect_bandwidth * p.link_eff
        self._fixed_cache: dict[tuple[int, int, int], float] = {}

    # ---- operator classes ----------------------------------------------------------------------
    def _mlp_weight_bytes(self, num_tokens: int) -> float:
        m = self.model
        if not m.is_moe:
            return self._expert_params * m.dtype_bytes / self.tp
        e, k = m.num_experts, m.experts_per_token
        touched = e * (1.0 - (1.0 - k / e) ** num_tokens)  # expected distinct experts hit by uniform top-k routing
        return (touched * self._expert_params + m.hidden_size * e) * m.dtype_bytes / self.tp

    def fixed_time(self, num_tokens: int, num_sampled: int, num_seqs: int) -> float:
        """Everything but attention: linear layers, LM head, all-reduce and overheads."""
        key = (num_tokens, num_sampled, num_seqs)
        t = self._fixed_cache.get(key)
        if t is not None:
            return t
        p = self.params
        T = num_tokens
        per_layer_flops = T * (self._attn_flops_per_token + self._mlp_flops_per_token)
        per_layer_bytes = self._attn_w_bytes + self._mlp_weight_bytes(T) + 4 * T * self._act_bytes_per_token
        gemm = self._L * max(per_layer_flops / self._gemm_flops, per_layer_bytes / self._bw)
        lm = max(num_sampled * self._lm_flops_per_token / self._gemm_flops, self._lm_w_bytes / self._bw) if num_sampled else 0.0
        comm = 0.0
        if self.tp > 1:
            msg = T * self._act_bytes_per_token
            comm = 2 * self._L * (p.allreduce_latency_s + 2.0 * (self.tp - 1) / self.tp * msg / self._link_bw)
        t = p.iteration_overhead_s + p.per_seq_overhead_s * num_seqs + gemm + lm + comm
        if len(self._fixed_cache) < 1_000_000:
            self._fixed_cache[key] = t
        return t

    def prefill_attention_time(self, new: list[int], cached: list[int]) -> float:
        t = 0.0
        f, kvb = self._attn_flop_coef, self._kv_bytes_per_token_layer
        for n, c in zip(new, cached):
            flops = f * n * (c + (n + 1) / 2.0)
            nbytes = (c + n) * kvb + 2 * n * self._act_bytes_per_token / self.tp
            t += self._L * max(flops / self._attn_flops, nbytes / self._bw)
        return t

    # ---- TimingModel ---------------------------------------------------------------------------
    def iteration_time(self, batch: BatchShape) -> float:
        fixed = self.fixed_time(batch.num_tokens, batch.num_sampled, batch.num_seqs)
        pre = self.prefill_attention_time(batch.prefill_new, batch.prefill_cached) if batch.prefill_new else 0.0
        ctx = batch.decode_context_sum
        return fixed + pre + max(ctx * self._dec_f, ctx * self._dec_b)

    def decode_times(self, num_decodes: int, context_sum: int, steps: int) -> np.ndarray:
        fixed = self.fixed_time(num_decodes, num_decodes, num_decodes)
        ctx = context_sum + num_decodes * np.arange(steps, dtype=np.int64)
        return fixed + 0.0 + np.maximum(ctx * self._dec_f, ctx * self._dec_b)
