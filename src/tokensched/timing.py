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

Each operator class has a compute efficiency, a memory efficiency and a fixed per-call latency
(:class:`RooflineParams`). By default they are fitted per GPU to NVIDIA's measured operator tables
(``data/roofline_coefficients.json``, see :mod:`tokensched.calibration`); GPUs without data fall back to
hand-set estimates, and :attr:`RooflineTiming.calibration_source` says which was used. The per-call cost
formulas live in the ``*_work`` functions below so that fitting and pricing cannot drift apart.

``decode_times`` prices ``steps`` successive decode-only iterations at once for the macro-step. It must
give bit-identical results to calling ``iteration_time`` once per step: the fixed part depends only on the
batch size, and the attention part is evaluated with the same operations in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

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
    # Fraction of the layers each prefill chunk passes (layered prefill); None: every chunk passes all layers.
    prefill_fraction: list[float] | None = None

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
    """Efficiencies and overheads of the roofline model, per operator class (see docs/timing.md).

    The first seven fields are the original hand-set estimates. The per-class fields after them are what a
    calibration fits (:mod:`tokensched.calibration.fit`); their defaults (``None``: use ``memory_eff``; ``0``
    latency) reproduce the hand-set model exactly.
    """

    gemm_compute_eff: float = 0.70  # fraction of dense BF16 peak reached by large GEMMs
    attn_compute_eff: float = 0.50  # FlashAttention prefill reaches about half of peak
    memory_eff: float = 0.90  # fraction of HBM bandwidth reached by streaming weights and KV
    link_eff: float = 0.70  # fraction of NVLink/PCIe bandwidth reached by ring all-reduce
    allreduce_latency_s: float = 8e-6  # per all-reduce launch and synchronisation
    iteration_overhead_s: float = 1.5e-3  # per iteration: scheduler, input preparation, sampling, launch gaps
    per_seq_overhead_s: float = 5e-6  # per sequence in the batch: bookkeeping and detokenisation
    gemm_memory_eff: float | None = None  # HBM efficiency of GEMMs (weights + activations); None = memory_eff
    prefill_attn_memory_eff: float | None = None  # of prefill attention (KV + Q/O); None = memory_eff
    decode_attn_memory_eff: float | None = None  # of decode attention (KV reads); None = memory_eff
    gemm_latency_s: float = 0.0  # fixed cost per GEMM call (launch, tail, small-shape inefficiency)
    prefill_attn_latency_s: float = 0.0  # fixed cost per prefill-attention call (one per layer)
    decode_attn_latency_s: float = 0.0  # fixed cost per decode-attention call (one per layer)
    decode_attn_seq_head_s: float = 0.0  # floor per (sequence x KV head) of a decode call: a minimum KV tile

    def __post_init__(self) -> None:
        for name in ("gemm_compute_eff", "attn_compute_eff", "memory_eff", "link_eff", "gemm_memory_eff",
                     "prefill_attn_memory_eff", "decode_attn_memory_eff"):
            v = getattr(self, name)
            if v is not None and not 0 < v <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {v}")
        for name in ("allreduce_latency_s", "iteration_overhead_s", "per_seq_overhead_s", "gemm_latency_s",
                     "prefill_attn_latency_s", "decode_attn_latency_s", "decode_attn_seq_head_s"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def mem_eff(self, op: str) -> float:
        """HBM efficiency of operator class ``op`` (``gemm``, ``attn_prefill``, ``attn_decode``)."""
        v = {"gemm": self.gemm_memory_eff, "attn_prefill": self.prefill_attn_memory_eff,
             "attn_decode": self.decode_attn_memory_eff}[op]
        return self.memory_eff if v is None else v


# ---- one operator call: the work it does (shared by pricing and fitting) -------------------------------
# All accept numpy arrays. ``db`` is bytes per element of the data type.
OP_CLASSES = ("gemm", "attn_prefill", "attn_decode", "allreduce")


def gemm_work(m: Any, n: Any, k: Any, db: Any) -> tuple[Any, Any]:
    """``[m, k] x [k, n]``: FLOPs and bytes (read both operands, write the result)."""
    return 2.0 * m * n * k, db * (m * k + k * n + m * n)


def prefill_attn_work(batch: Any, new: Any, context: Any, heads: Any, kv_heads: Any, head_dim: Any,
                      db: Any) -> tuple[Any, Any]:
    """``batch`` causal chunks of ``new`` tokens after ``context`` cached ones: read K/V, read Q, write O."""
    flops = batch * 4.0 * heads * head_dim * new * (context + (new + 1) / 2.0)
    nbytes = batch * ((context + new) * 2.0 * kv_heads * head_dim * db + 2.0 * new * heads * head_dim * db)
    return flops, nbytes


def decode_attn_work(batch: Any, context: Any, heads: Any, kv_heads: Any, head_dim: Any,
                     db: Any) -> tuple[Any, Any]:
    """``batch`` single-token queries over ``context`` tokens each (the new one included): K/V read once."""
    return 4.0 * heads * head_dim * batch * context, batch * context * 2.0 * kv_heads * head_dim * db


def allreduce_wire_bytes(nbytes: Any, tp: Any) -> Any:
    """Bytes each GPU sends in a ring all-reduce of an ``nbytes`` buffer over ``tp`` GPUs."""
    return 2.0 * (tp - 1) / tp * nbytes


class OperatorRoofline:
    """Prices single operator calls on one GPU: ``latency + max(FLOPs / compute, bytes / memory)``.

    This is the per-call form a calibration fits; :class:`RooflineTiming` applies the same parameters to a
    whole model's iteration (with the GEMMs of a layer summed into one roofline).
    """

    def __init__(self, gpu: GPU, params: RooflineParams | None = None) -> None:
        self.gpu, self.params = gpu, params or RooflineParams()

    def _roof(self, op: str, flops: Any, nbytes: Any, compute_eff: float, latency: float, floor: Any = 0.0) -> Any:
        p = self.params
        return latency + np.maximum(np.maximum(flops / (self.gpu.bf16_flops * compute_eff),
                                               nbytes / (self.gpu.hbm_bandwidth * p.mem_eff(op))), floor)

    def gemm(self, m: Any, n: Any, k: Any, db: Any = 2) -> Any:
        f, b = gemm_work(m, n, k, db)
        return self._roof("gemm", f, b, self.params.gemm_compute_eff, self.params.gemm_latency_s)

    def attn_prefill(self, batch: Any, new: Any, context: Any, heads: Any, kv_heads: Any, head_dim: Any,
                     db: Any = 2) -> Any:
        p = self.params
        f, b = prefill_attn_work(batch, new, context, heads, kv_heads, head_dim, db)
        return self._roof("attn_prefill", f, b, p.attn_compute_eff, p.prefill_attn_latency_s)

    def attn_decode(self, batch: Any, context: Any, heads: Any, kv_heads: Any, head_dim: Any, db: Any = 2) -> Any:
        p = self.params
        f, b = decode_attn_work(batch, context, heads, kv_heads, head_dim, db)
        floor = batch * kv_heads * p.decode_attn_seq_head_s
        return self._roof("attn_decode", f, b, p.attn_compute_eff, p.decode_attn_latency_s, floor)

    def allreduce(self, nbytes: Any, tp: Any) -> Any:
        p = self.params
        return p.allreduce_latency_s + allreduce_wire_bytes(nbytes, tp) / (self.gpu.interconnect_bandwidth * p.link_eff)


class RooflineTiming:
    """Per-operator roofline for a dense or MoE decoder on ``tp`` GPUs of one type.

    Without ``params`` it uses the coefficients fitted for ``gpu`` (shipped package data) or, for a GPU
    without data, the hand-set defaults; ``calibration_source`` says which, in words.
    """

    GEMM_CALLS_PER_LAYER = 4  # QKV, O, gate+up, down (vLLM fuses gate/up); MoE adds a router GEMM
    prices_layer_fractions = True  # honours BatchShape.prefill_fraction (layered prefill needs it)

    def __init__(self, model: ModelConfig, gpu: GPU, tp: int = 1, params: RooflineParams | None = None, *,
                 source: str | None = None) -> None:
        if tp < 1:
            raise ValueError("tp must be >= 1")
        if params is None:
            from tokensched.calibration.coefficients import default_params

            params, source = default_params(gpu.key, tp)
        p = params
        self.calibration_source = source or "explicit RooflineParams"
        self.model, self.gpu, self.tp, self.params = model, gpu, tp, p
        self.ops = OperatorRoofline(gpu, p)
        L = model.num_layers
        db = model.dtype_bytes
        flops = gpu.bf16_flops
        bw = gpu.hbm_bandwidth * p.mem_eff("gemm")
        self._gemm_flops = flops * p.gemm_compute_eff
        self._attn_flops = flops * p.attn_compute_eff
        self._bw = bw
        self._pre_bw = gpu.hbm_bandwidth * p.mem_eff("attn_prefill")
        dec_bw = gpu.hbm_bandwidth * p.mem_eff("attn_decode")
        self._L = L
        calls = self.GEMM_CALLS_PER_LAYER + (1 if model.is_moe else 0)
        self._gemm_lat = calls * p.gemm_latency_s  # per layer
        self._pre_lat = L * p.prefill_attn_latency_s  # per iteration with any prefill
        self._dec_lat = L * p.decode_attn_latency_s  # per iteration with any decode
        self._dec_seq = L * max(1.0, model.num_kv_heads / tp) * p.decode_attn_seq_head_s  # floor per decode
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
        self._dec_b = L * self._kv_bytes_per_token_layer / dec_bw
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
        gemm = self._L * (self._gemm_lat + max(per_layer_flops / self._gemm_flops, per_layer_bytes / self._bw))
        lm = (p.gemm_latency_s + max(num_sampled * self._lm_flops_per_token / self._gemm_flops,
                                     self._lm_w_bytes / self._bw)) if num_sampled else 0.0
        comm = 0.0
        if self.tp > 1:
            msg = T * self._act_bytes_per_token
            comm = 2 * self._L * (p.allreduce_latency_s + 2.0 * (self.tp - 1) / self.tp * msg / self._link_bw)
        t = p.iteration_overhead_s + p.per_seq_overhead_s * num_seqs + gemm + lm + comm
        if len(self._fixed_cache) < 1_000_000:
            self._fixed_cache[key] = t
        return t

    def prefill_attention_time(self, new: list[int], cached: list[int]) -> float:
        """All prefill chunks of one iteration: one attention call per layer, each chunk its own roofline."""
        t = self._pre_lat
        f, kvb = self._attn_flop_coef, self._kv_bytes_per_token_layer
        for n, c in zip(new, cached):
            flops = f * n * (c + (n + 1) / 2.0)
            nbytes = (c + n) * kvb + 2 * n * self._act_bytes_per_token / self.tp
            t += self._L * max(flops / self._attn_flops, nbytes / self._pre_bw)
        return t

    # ---- TimingModel ---------------------------------------------------------------------------
    def iteration_time(self, batch: BatchShape) -> float:
        if batch.prefill_fraction is not None:
            return self._partial_depth_time(batch)
        fixed = self.fixed_time(batch.num_tokens, batch.num_sampled, batch.num_seqs)
        pre = self.prefill_attention_time(batch.prefill_new, batch.prefill_cached) if batch.prefill_new else 0.0
        ctx = batch.decode_context_sum
        nd = batch.num_decodes
        dec_lat = self._dec_lat if nd else 0.0
        return fixed + pre + (max(ctx * self._dec_f, ctx * self._dec_b, nd * self._dec_seq) + dec_lat)

    def _partial_depth_time(self, batch: BatchShape) -> float:
        """An iteration in which some prefill chunks pass only a fraction of the layers (layered prefill).

        Every layer computes the decodes and full-depth chunks; a partial chunk adds its tokens to the layers it
        covers. Partial chunks are taken to start at the same layer (one layered cohort is in flight at a time),
        so the depth splits into segments of constant token count ``T``, each costing its share of the all-layer
        linear-layer and all-reduce time at ``T`` (``fixed_time(T, 0, 0)`` less the iteration overhead; a
        segment without tokens does not run). For MoE this reads each layer's touched experts once for all its
        tokens, where chunked prefill reads them again every chunk. Prefill attention scales with each chunk's
        fraction; decode attention, the LM head and the overheads are as in a full-depth iteration. Built from
        the public pricing methods only, so it follows any change to them.
        """
        frac = batch.prefill_fraction
        assert frac is not None
        full = batch.num_decodes
        fn: list[int] = []
        fc: list[int] = []
        parts: list[tuple[float, int, int]] = []
        for n, c, f in zip(batch.prefill_new, batch.prefill_cached, frac):
            if f >= 1.0:
                fn.append(n)
                fc.append(c)
                full += n
            else:
                parts.append((f, n, c))
        overhead = self.params.iteration_overhead_s
        # the LM head and the per-iteration and per-sequence overheads: what fixed_time adds beyond the layers
        t = self.fixed_time(full, batch.num_sampled, batch.num_seqs) - self.fixed_time(full, 0, 0) + overhead

        def layers(tokens: int) -> float:  # linear layers and all-reduce of all layers at ``tokens`` tokens
            return self.fixed_time(tokens, 0, 0) - overhead if tokens else 0.0

        parts.sort(key=lambda p: -p[0])
        hi, tokens = 1.0, full
        for f, n, _ in parts:
            t += (hi - f) * layers(tokens)
            hi, tokens = f, tokens + n
        t += hi * layers(tokens)
        empty = self.prefill_attention_time([], [])  # per-call latencies of an iteration with prefill
        if fn:
            t += self.prefill_attention_time(fn, fc)
        elif parts:
            t += parts[0][0] * empty
        for f, n, c in parts:
            t += f * (self.prefill_attention_time([n], [c]) - empty)
        if batch.num_decodes:
            dec = BatchShape(num_decodes=batch.num_decodes, decode_context_sum=batch.decode_context_sum)
            t += self.iteration_time(dec) - self.fixed_time(batch.num_decodes, 0, batch.num_decodes)
        return t

    def decode_times(self, num_decodes: int, context_sum: int, steps: int) -> np.ndarray:
        fixed = self.fixed_time(num_decodes, num_decodes, num_decodes)
        ctx = context_sum + num_decodes * np.arange(steps, dtype=np.int64)
        nd = num_decodes
        dec_lat = self._dec_lat if nd else 0.0
        attn = np.maximum(np.maximum(ctx * self._dec_f, ctx * self._dec_b), nd * self._dec_seq)
        return fixed + 0.0 + (attn + dec_lat)
