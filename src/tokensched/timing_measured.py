"""Iteration times from measured per-operator latencies (NVIDIA AIConfigurator's vLLM tables).

:class:`MeasuredTiming` prices an iteration as the sum of the operators one vLLM forward pass runs, each
looked up in grids of measured latencies (:mod:`tokensched.timing_measured_tables`) by piecewise-linear
interpolation in plain Python (a few microseconds per call):

* token-major operators at ``T`` = all batched tokens: per layer add+RMSNorm x2, QKV, O, gate+up, SiLU and
  down (MoE: router GEMM, fused-MoE kernel and any shared expert), plus the embedding;
* ``2 L + 1`` custom all-reduces of ``T x hidden`` bf16 values when ``tp > 1`` (vLLM's MoE under pure tensor
  parallelism reduces at the same two places per layer);
* the LM head over one row per scheduled sequence: vLLM V1 computes logits for every request in the batch,
  partial prefills included, and discards the unfinished ones' samples;
* context attention per prefill chunk (``n`` new tokens after ``c`` cached), floored at one decode over
  ``n + c`` tokens;
* generation attention for the ``b`` decodes as ``b`` sequences of the *mean* context ``C / b``: exact for the
  dominant KV-read term, blind to the load imbalance of unequal lengths;
* a per-iteration and a per-sequence overhead (:class:`MeasuredParams`), for what kernel tables do not hold.

``decode_times`` evaluates the same interpolation with numpy, operation for operation (:func:`_lerp` and
:func:`_lerp_vec`), so its results equal ``iteration_time`` bit for bit.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from importlib import metadata

import numpy as np

from tokensched.errors import UserError
from tokensched.hardware import GPU
from tokensched.models import ModelConfig
from tokensched.timing import BatchShape
from tokensched.timing_measured_tables import B_GRID, C_GRID, N_GRID, S_GRID, T_GRID, check_coverage, grids

DENSE_T = 16384  # token-major costs are tabulated per integer up to here


@dataclass(frozen=True, slots=True)
class MeasuredParams:
    """What the kernel tables do not contain (see docs/timing.md, "Measured backend")."""

    # Per iteration, beyond the kernels: sampler, input preparation, launch gaps. Fitted (least median |error|,
    # >= 0) on the six measured H100 runs of ../shared/groundtruth (vLLM 0.15.1) with `tokensched validate
    # --timing measured --prefix reconstructed --overhead none`: at 0.1 ms the median TPOT errors go from
    # +6.0/+1.0/+4.6/+3.4/+0.5/-0.5 % to +7.7/+2.6/+6.3/+4.1/+1.3/+0.2 % -- the sum of isolated kernel times
    # already covers what vLLM V1 does not overlap. Other replays allow up to ~0.25 ms; see docs/timing.md.
    iteration_overhead_s: float = 0.0
    per_seq_overhead_s: float = 0.0  # per scheduled sequence (not identifiable from the ground truth; 0)
    moe_distribution: str = "power_law_1.2"  # expert-load skew; aiconfigurator's default for MoE models

    def __post_init__(self) -> None:
        if not (self.iteration_overhead_s >= 0 and self.per_seq_overhead_s >= 0):
            raise ValueError("overheads must be >= 0")


def _lerp(xs: list[float], ys: list[float], x: float) -> float:
    """Piecewise-linear interpolation, extended linearly beyond both ends. Mirrors :func:`_lerp_vec`."""
    j = bisect_right(xs, x) - 1
    j = 0 if j < 0 else (len(xs) - 2 if j > len(xs) - 2 else j)
    x0, y0, y1 = xs[j], ys[j], ys[j + 1]
    return y0 + (y1 - y0) * ((x - x0) / (xs[j + 1] - x0))


def _lerp_vec(xs: np.ndarray, ys: np.ndarray, x: np.ndarray) -> np.ndarray:
    """:func:`_lerp` for an array of ``x``: the same IEEE operations in the same order, hence the same bits."""
    j = np.clip(np.searchsorted(xs, x, side="right") - 1, 0, len(xs) - 2)
    x0, y0, y1 = xs[j], ys[j], ys[j + 1]
    return y0 + (y1 - y0) * ((x - x0) / (xs[j + 1] - x0))


def _bilerp(xs: list[float], ys: list[float], table: list[list[float]], x: float, y: float) -> float:
    """Bilinear interpolation in ``table[i][j]`` (rows over ``xs``, columns over ``ys``), extended linearly."""
    i = bisect_right(xs, x) - 1
    i = 0 if i < 0 else (len(xs) - 2 if i > len(xs) - 2 else i)
    j = bisect_right(ys, y) - 1
    j = 0 if j < 0 else (len(ys) - 2 if j > len(ys) - 2 else j)
    r0, r1 = table[i], table[i + 1]
    wx = (x - xs[i]) / (xs[i + 1] - xs[i])
    a = r0[j] + (r1[j] - r0[j]) * wx
    b = r0[j + 1] + (r1[j + 1] - r0[j + 1]) * wx
    return a + (b - a) * ((y - ys[j]) / (ys[j + 1] - ys[j]))


class MeasuredTiming:
    """Iteration time = sum of measured operator latencies for one model on ``tp`` GPUs (see module doc)."""

    def __init__(self, model: ModelConfig, gpu: GPU, tp: int = 1, params: MeasuredParams | None = None) -> None:
        system = check_coverage(model, gpu, tp)
        self.model, self.gpu, self.tp = model, gpu, tp
        self.params = p = params or MeasuredParams()
        try:
            g = grids(model, system, tp, p.moe_distribution)
        except UserError:
            raise
        except Exception as e:  # the engine's PerfDataNotAvailableError & co.: a shape its tables lack
            why = str(e).split(": tried")[0].split("\n")[0][:240]
            raise UserError(f"timing 'measured' for {model.name} on {tp} x {gpu.key}: aiconfigurator-core cannot "
                            f"price it ({type(e).__name__}: {why}); use --timing roofline") from None
        try:
            core = metadata.version("aiconfigurator-core")
        except metadata.PackageNotFoundError:  # pragma: no cover - importable but not an installed dist
            core = "?"
        self.source = f"aiconfigurator-core {core}: {system} tables, vLLM {g.version}"
        self.calibration_source = self.source  # what `simulate` reports as info["timing_source"]
        tg = T_GRID.astype(float)
        self._tg_l, self._tok_grid, self._lm_grid = tg.tolist(), g.tok.tolist(), g.lm.tolist()
        dense = np.arange(DENSE_T + 1, dtype=float)
        self._tok = _lerp_vec(tg, g.tok, dense).tolist()  # index = batched tokens
        self._lm = _lerp_vec(tg, g.lm, dense).tolist()  # index = scheduled sequences
        self._ng_l, self._cg_l = N_GRID.astype(float).tolist(), C_GRID.astype(float).tolist()
        self._ctx_l = g.ctx.tolist()
        self._bg, self._sg, self._gen = B_GRID.astype(float), S_GRID.astype(float), g.gen
        self._sg_l = self._sg.tolist()
        self._gen_rows: dict[int, tuple[list[float], np.ndarray]] = {}
        self._fixed: dict[tuple[int, int], float] = {}

    # ---- parts -----------------------------------------------------------------------------------
    def fixed_time(self, num_tokens: int, num_seqs: int) -> float:
        """Overheads, token-major operators, all-reduce and LM head: everything but attention."""
        key = (num_tokens, num_seqs)
        t = self._fixed.get(key)
        if t is None:
            p = self.params
            tok = self._tok[num_tokens] if num_tokens <= DENSE_T else _lerp(self._tg_l, self._tok_grid, num_tokens)
            lm = self._lm[num_seqs] if num_seqs <= DENSE_T else _lerp(self._tg_l, self._lm_grid, num_seqs)
            t = p.iteration_overhead_s + p.per_seq_overhead_s * num_seqs + tok + lm
            if len(self._fixed) < 1_000_000:
                self._fixed[key] = t
        return t

    def prefill_attention_time(self, new: list[int], cached: list[int]) -> float:
        t = 0.0
        ng, cg, table = self._ng_l, self._cg_l, self._ctx_l
        for n, c in zip(new, cached):
            t += _bilerp(ng, cg, table, n, c)
        return t

    def _gen_row(self, b: int) -> tuple[list[float], np.ndarray]:
        """Decode attention of ``b`` sequences over ``S_GRID``, interpolated in the batch dimension once."""
        row = self._gen_rows.get(b)
        if row is None:
            bg = self._bg
            j = int(np.clip(np.searchsorted(bg, b, side="right") - 1, 0, len(bg) - 2))
            arr = self._gen[j] + (self._gen[j + 1] - self._gen[j]) * ((b - bg[j]) / (bg[j + 1] - bg[j]))
            row = self._gen_rows[b] = (arr.tolist(), arr)
        return row

    def decode_attention_time(self, num_decodes: int, context_sum: int) -> float:
        """``num_decodes`` sequences of the mean context each (see module doc for the approximation)."""
        return _lerp(self._sg_l, self._gen_row(num_decodes)[0], context_sum / num_decodes)

    # ---- TimingModel -----------------------------------------------------------------------------
    def iteration_time(self, batch: BatchShape) -> float:
        t = self.fixed_time(batch.num_tokens, batch.num_seqs)
        if batch.prefill_new:
            t += self.prefill_attention_time(batch.prefill_new, batch.prefill_cached)
        if batch.num_decodes:
            t += self.decode_attention_time(batch.num_decodes, batch.decode_context_sum)
        return t

    def decode_times(self, num_decodes: int, context_sum: int, steps: int) -> np.ndarray:
        fixed = self.fixed_time(num_decodes, num_decodes)
        ctx = context_sum + num_decodes * np.arange(steps, dtype=np.int64)
        return fixed + _lerp_vec(self._sg, self._gen_row(num_decodes)[1], ctx / num_decodes)


__all__ = ["MeasuredParams", "MeasuredTiming"]
