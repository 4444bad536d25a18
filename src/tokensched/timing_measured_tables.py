"""What NVIDIA AIConfigurator's measured tables say about one model on ``tp`` GPUs, on fixed grids.

``aiconfigurator-core`` (Apache-2.0, the ``measured`` extra) ships kernel latencies collected on real GPUs under
vLLM, SGLang and TensorRT-LLM -- GEMMs, context (prefill) and generation (decode) attention, custom all-reduce,
fused MoE -- per GPU and framework version, and a compiled engine that interpolates them for any shape. This
module asks that engine, once per process and model, for every operator over fixed grids of batch shapes
(:func:`grids`), checks coverage first (:func:`check_coverage`), and cleans the answers so that costs never
decrease with more work. :mod:`tokensched.timing_measured` interpolates in the result.

The operator list mirrors aiconfigurator's own ``LLAMAModel`` / ``MOEModel`` (``sdk/models/llama.py``,
``sdk/models/moe.py``, ``sdk/models/blocks/moe.py``); every operator's scale factor is the number of layers.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterator

import numpy as np

from tokensched.errors import UserError
from tokensched.hardware import GPU
from tokensched.models import ModelConfig

# Our GPU keys -> aiconfigurator system names. Tables exist for the SXM parts only.
SYSTEMS: dict[str, str] = {"a100-80gb": "a100_sxm", "h100": "h100_sxm", "h200": "h200_sxm", "l40s": "l40s",
                           "b200": "b200_sxm"}
NOT_COVERED: dict[str, str] = {
    "a100-40gb": "aiconfigurator's A100 tables were measured on A100-SXM4-80GB (2.0 TB/s), not the 40 GB part "
                 "(1.6 TB/s); use --gpu a100-80gb or --timing roofline",
    "h100-pcie": "aiconfigurator-core ships no H100 PCIe tables; use --gpu h100 (SXM) or --timing roofline",
}
TP_SIZES = (1, 2, 4, 8)  # custom all-reduce is measured on 2, 4 and 8 GPUs of one node
TARGET_VLLM = (0, 15, 1)  # the ground-truth runs' version: the closest measured vLLM version is used
BACKEND = "vllm"
GEN_KV_MAX = 8  # most KV heads per GPU in the generation-attention tables (A100, H100, H200, L40S)


def _geom(lo: float, hi: float, per_octave: int) -> np.ndarray:
    n = int(round(np.log2(hi / lo) * per_octave))
    return np.unique(np.round(lo * 2.0 ** (np.arange(n + 1) / per_octave)).astype(np.int64))


# Batched tokens (GEMM, MoE, all-reduce) and LM-head rows: a geometric grid plus the GEMM tables' own m values
# around tile boundaries (m and m + 1 at multiples of 16 and 256), so wave-quantisation steps are kept.
T_GRID = np.unique(np.concatenate([_geom(1, 2**17, 4), np.arange(1, 18)] + [
    np.array([m, m + 1]) for m in [*range(32, 257, 16), *range(512, 4353, 256)]]))
# Attention grids are coarser: an engine call costs up to ~0.3 ms where it extrapolates, and interpolating in
# them is within 2.5 % (prefill) and 5.6 % (decode) of the engine's own answer at 400 random shapes each.
N_GRID = _geom(1, 2**17, 2)  # new tokens of a prefill chunk
C_GRID = np.concatenate(([0], _geom(16, 2**17, 1)))  # cached prefix in front of a prefill chunk
B_GRID = _geom(1, 2**11, 1)  # decodes in the batch (the tables' range)
S_GRID = _geom(4, 2**17, 1)  # context per decode (the tables' range)


def _isotonic(y: np.ndarray) -> np.ndarray:
    """Least-squares non-decreasing fit (pool adjacent violators): evens out kernel-selection noise such as
    Mixtral's fused MoE measuring 20.7 ms at 64 tokens but 18.6 ms at 128 (H100, TP2, 32 layers)."""
    vals: list[float] = []
    counts: list[int] = []
    for v in y.tolist():
        vals.append(v)
        counts.append(1)
        while len(vals) > 1 and vals[-2] > vals[-1]:
            n = counts[-2] + counts[-1]
            vals[-2:] = [(vals[-2] * counts[-2] + vals[-1] * counts[-1]) / n]
            counts[-2:] = [n]
    return np.repeat(vals, counts)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """aiconfigurator logs table-loading notes at WARNING; keep them off the user's stderr."""
    log = logging.getLogger("aiconfigurator_core")
    old = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(old)


def _import_core() -> Any:
    try:
        from aiconfigurator_core.sdk import perf_database
    except ImportError:
        raise UserError("timing backend 'measured' needs aiconfigurator-core: pip install 'tokensched[measured]'"
                        ) from None
    return perf_database


def _version_distance(v: str) -> int:
    """How far a version string is from :data:`TARGET_VLLM` (major, minor, patch weighted 1e6 : 1e3 : 1)."""
    parts = [int("".join(ch for ch in part if ch.isdigit()) or 0) for part in v.split(".")[:3]]
    parts += [0] * (3 - len(parts))
    return sum(abs(a - b) * w for a, b, w in zip(parts, TARGET_VLLM, (10**6, 10**3, 1)))


@lru_cache(maxsize=None)
def _engine(system: str) -> tuple[Any, str]:
    """(probe engine over the system's vLLM tables, version used), loaded once per process."""
    perf_database = _import_core()
    from aiconfigurator_core.sdk.engine import EngineHandle

    with _quiet():
        slots = perf_database.get_version_slots(system, BACKEND) or {}
        versions = sorted({v for v in slots.values() if v})
        if not versions:
            raise UserError(f"aiconfigurator-core has no vLLM tables for system {system}")
        version = min(versions, key=lambda v: (_version_distance(v), v))
        db = perf_database.get_database(system, BACKEND, version)
        if db is None:
            raise UserError(f"aiconfigurator-core could not load vLLM {version} tables for system {system}")
        return (db, EngineHandle.for_database(db)), version


def check_coverage(model: ModelConfig, gpu: GPU, tp: int) -> str:
    """The aiconfigurator system for ``gpu``, or a one-line UserError saying why the tables cannot price it."""
    what = f"timing 'measured' for {model.name} on {tp} x {gpu.key}"
    if gpu.key in NOT_COVERED:
        raise UserError(f"{what}: {NOT_COVERED[gpu.key]}")
    if gpu.key not in SYSTEMS:
        raise UserError(f"{what}: no measured tables for this GPU (covered: {', '.join(SYSTEMS)})")
    if tp not in TP_SIZES:
        raise UserError(f"{what}: all-reduce is measured for tp 1, 2, 4, 8 only")
    if model.dtype_bytes != 2:
        raise UserError(f"{what}: tables are priced for bf16/fp16 weights and KV cache only")
    if model.num_heads % tp:
        raise UserError(f"{what}: vLLM needs the {model.num_heads} attention heads divisible by tp")
    kv = model.num_kv_heads
    if (kv >= tp and kv % tp) or (kv < tp and tp % kv):
        raise UserError(f"{what}: vLLM cannot split {kv} KV heads over {tp} GPUs")
    return SYSTEMS[gpu.key]


def _token_ops(model: ModelConfig, tp: int, distribution: str) -> tuple[list[Any], Any]:
    """aiconfigurator operators priced per batched token for one model on ``tp`` GPUs, and the LM head.

    Mirrors aiconfigurator's ``LLAMAModel`` / ``MOEModel`` operator lists (``sdk/models/llama.py``,
    ``sdk/models/moe.py``, ``sdk/models/blocks/moe.py``) with the scale factor = number of layers."""
    import aiconfigurator_core.sdk.operations as ops
    from aiconfigurator_core.sdk import common

    bf16 = common.GEMMQuantMode.bfloat16
    L, h, d = model.num_layers, model.hidden_size, model.head_dim
    heads = model.num_heads // tp
    kv = -(-model.num_kv_heads // tp)  # replicated when tp exceeds the KV heads
    inter = model.intermediate_size
    tok: list[Any] = [
        ops.Embedding("embedding", 1, model.vocab_size // tp, h, 0.3),
        ops.ElementWise("add_norm_1", L, 2 * h, 2 * h, 0.8),
        ops.GEMM("qkv_gemm", L, heads * d + 2 * kv * d, h, bf16),
        ops.GEMM("proj_gemm", L, h, heads * d, bf16, low_precision_input=True),
        ops.ElementWise("add_norm_2", L, 2 * h, 2 * h, 0.8),
    ]
    if model.is_moe:
        e, k = model.num_experts, model.experts_per_token
        tok += [ops.GEMM("router_gemm", L, e, h, bf16),
                ops.MoE("moe", L, h, inter, k, e, tp, 1, common.MoEQuantMode.bfloat16, distribution, 1)]
        s = model.shared_expert_intermediate_size
        if s:
            tok += [ops.GEMM("shared_gate_up_gemm", L, 2 * s // tp, h, bf16),
                    ops.ElementWise("shared_act_gate", L, 2 * s // tp, s // tp, 0.8),
                    ops.GEMM("shared_ffn2_gemm", L, h, s // tp, bf16, low_precision_input=True)]
    else:
        tok += [ops.GEMM("gate_ffn1_gemm", L, 2 * inter // tp, h, bf16),
                ops.ElementWise("act_gate", L, 2 * inter // tp, inter // tp, 0.8),
                ops.GEMM("ffn2_gemm", L, h, inter // tp, bf16, low_precision_input=True)]
    if tp > 1:
        tok.append(ops.CustomAllReduce("all_reduce", 2 * L + 1, h, tp))
    return tok, ops.GEMM("lm_head", 1, model.vocab_size // tp, h, bf16)


def _evaluator(system: str) -> Any:
    (db, eng), _ = _engine(system)

    def ev(js: str, ctx: bool, b: int, s: int, prefix: int = 0, x: int | None = None) -> float:
        res = eng.evaluate_ops_json(js, is_context=ctx, batch_size=b, s=s, prefix=prefix, x=x)
        return sum(r[1] for r in res) * 1e-3  # ms -> s

    return ev


@lru_cache(maxsize=64)
def _attention_grids(system: str, heads: int, kv: int, head_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """One layer's context attention over (N_GRID x C_GRID) and generation attention over (B_GRID x S_GRID),
    shared by every model with these per-GPU heads (the engine calls dominate construction: ~60 ms)."""
    import aiconfigurator_core.sdk.operations as ops
    from aiconfigurator_core.sdk import common
    from aiconfigurator_core.sdk.engine import _resolve_attention_lane_orders, build_ops_json

    (db, _), _ = _engine(system)
    ev = _evaluator(system)
    kvq, fmha = common.KVCacheQuantMode.bfloat16, common.FMHAQuantMode.bfloat16
    with _quiet():
        ctx_op = ops.ContextAttention("context_attention", 1, heads, kv, kvq, fmha, head_size=head_dim)
        # Decode tables stop at 8 KV heads per GPU (MHA models have 32-40): price g groups of <= 8 KV heads as
        # g times as many sequences -- same KV bytes and FLOPs, and inside the measured rows.
        group = kv // next(k for k in (8, 4, 2, 1) if kv % k == 0) if kv > GEN_KV_MAX else 1
        gen_op = ops.GenerationAttention("generation_attention", 1, heads // group, kv // group, kvq,
                                         head_size=head_dim)
        _resolve_attention_lane_orders([ctx_op, gen_op], db, None)  # vLLM's own kernel (FA3 on Hopper) first
        j_ctx, j_gen = build_ops_json([ctx_op]), build_ops_json([gen_op])
        ctx = np.array([[ev(j_ctx, True, 1, int(n), int(c)) for c in C_GRID] for n in N_GRID])
        gen = np.array([[ev(j_gen, False, int(b) * group, int(s)) for s in S_GRID] for b in B_GRID])
    return ctx, gen


@dataclass(frozen=True)
class Grids:
    """Whole-model seconds on the grids above, cleaned so that more work never costs less."""

    tok: np.ndarray  # seconds, over T_GRID
    lm: np.ndarray  # over T_GRID (rows = sequences)
    ctx: np.ndarray  # [N_GRID x C_GRID], all layers
    gen: np.ndarray  # [B_GRID x S_GRID], all layers
    version: str


@lru_cache(maxsize=64)
def grids(model: ModelConfig, system: str, tp: int, distribution: str) -> Grids:
    """Every operator of one model over the grids, made non-decreasing; cached per process.

    Token and LM-head curves get a least-squares monotone fit; the attention grids a running maximum along
    both axes. A prefill chunk is floored at one decode over its ``n + c`` tokens: the engine prices a cached
    prefix by its share of causal FLOPs, which vanishes for a short chunk after a long prefix although the
    chunk must still read that prefix's whole KV cache."""
    from aiconfigurator_core.sdk.engine import build_ops_json

    _, version = _engine(system)
    ev = _evaluator(system)
    with _quiet():
        tok_ops, lm_op = _token_ops(model, tp, distribution)
        j_tok, j_lm = build_ops_json(tok_ops), build_ops_json([lm_op])
        tok = np.array([ev(j_tok, True, 1, int(t), x=int(t)) for t in T_GRID])
        lm = np.array([ev(j_lm, True, 1, int(t), x=int(t)) for t in T_GRID])
    ctx1, gen1 = _attention_grids(system, model.num_heads // tp, -(-model.num_kv_heads // tp), model.head_dim)
    L = model.num_layers
    gen = np.maximum.accumulate(np.maximum.accumulate(gen1 * L, axis=0), axis=1)
    x = (N_GRID[:, None] + C_GRID[None, :]).astype(float)
    slope = (gen[0, -1] - gen[0, -2]) / (S_GRID[-1] - S_GRID[-2])
    floor = np.where(x > S_GRID[-1], gen[0, -1] + (x - S_GRID[-1]) * slope, np.interp(x, S_GRID, gen[0]))
    ctx = np.maximum(ctx1 * L, floor)
    ctx = np.maximum.accumulate(np.maximum.accumulate(ctx, axis=0), axis=1)
    return Grids(_isotonic(tok), _isotonic(lm), ctx, gen, version)


__all__ = ["B_GRID", "C_GRID", "Grids", "N_GRID", "NOT_COVERED", "S_GRID", "SYSTEMS", "TP_SIZES", "T_GRID",
           "check_coverage", "grids"]
