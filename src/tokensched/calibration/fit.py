"""Fitting roofline coefficients to an operator latency table, with numpy only.

Each operator class is modelled per call as ``latency + max(FLOPs / (peak * compute_eff), bytes / (bandwidth *
memory_eff))``, the form :class:`~tokensched.timing.OperatorRoofline` prices, with FLOPs and bytes from the
shared ``*_work`` functions in :mod:`tokensched.timing`. Decode attention has a third term inside the ``max``, a
floor per (sequence x KV head): NVIDIA's decode measurements show it plainly (on H100 ~20-27 ns per sequence and
KV head however short the context: a minimum KV tile per head), and it is a floor, not an addition, because at
long contexts the measured time is the memory term alone. All-reduce is ``latency + ring wire bytes / (link
bandwidth * link_eff)``, fitted for each ``tp`` in the table (PCIe topologies differ by more than one bandwidth
can express) and once over all of them, for other ``tp``.

We minimise the squared *relative* error: latencies span five orders of magnitude, and a 2 µs kernel matters
as much, relatively, as a 20 ms one. Why a grid and not a general optimiser: for fixed rates the best latency
is a closed-form (non-negative) weighted mean, so only the rates inside the ``max`` are searched (at most two
per class), on a log grid (coarse on a subset of rows, then refined five times): exact to ~1e-4,
deterministic (no starting point, no tolerance), and immune to the local minima Gauss-Newton meets on the
non-smooth ``max``. Efficiencies are bounded to [1e-7, 1]: a class the data shows faster than the data sheet
allows stays at 1.0 and its error shows it. Decode attention is memory-bound throughout, so its compute
efficiency is not fitted (it shares prefill's).

Fitted values are rounded to 4 significant digits *before* errors are computed, so the reported errors are
those of the coefficients actually written.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from tokensched.calibration.table import Measurement, columns
from tokensched.errors import UserError
from tokensched.hardware import get_gpu
from tokensched.timing import (
    OperatorRoofline,
    RooflineParams,
    allreduce_wire_bytes,
    decode_attn_work,
    gemm_work,
    prefill_attn_work,
)

EFF_DECADES = 7.0  # efficiencies are searched in [1e-7, 1]
SEQ_HEAD_RANGE = (-12.0, -5.0)  # log10 seconds searched for the decode floor per (sequence x KV head)
_COARSE_PER_DECADE = 5
_COARSE_ROWS = 2000  # the coarse grid only locates the basin: an evenly spaced subset of rows is enough
_ZOOMS = 5
_ZOOM_POINTS = 11

# RooflineParams fields each class fits: compute efficiency (None: not fitted), memory/link efficiency, latency
CLASS_FIELDS: dict[str, tuple[str | None, str, str]] = {
    "gemm": ("gemm_compute_eff", "gemm_memory_eff", "gemm_latency_s"),
    "attn_prefill": ("attn_compute_eff", "prefill_attn_memory_eff", "prefill_attn_latency_s"),
    "attn_decode": (None, "decode_attn_memory_eff", "decode_attn_latency_s"),
    "allreduce": (None, "link_eff", "allreduce_latency_s"),
}


def round_sig(x: float, digits: int = 4) -> float:
    """Round to ``digits`` significant digits, so written coefficients are short and reproducible."""
    return float(f"{x:.{digits}g}")


@dataclass(frozen=True, slots=True)
class ClassError:
    """Absolute relative error of the fitted model over one class's rows, in percent."""

    rows: int
    median_pct: float
    p90_pct: float


@dataclass(frozen=True)
class FitResult:
    """Fitted coefficients for one GPU: RooflineParams fields, per-tp all-reduce fields, error per class."""

    gpu: str
    params: dict[str, float]
    allreduce_by_tp: dict[int, dict[str, float]] = field(default_factory=dict)
    errors: dict[str, ClassError] = field(default_factory=dict)

    def roofline_params(self, tp: int | None = None) -> RooflineParams:
        return RooflineParams(**{**self.params, **self.allreduce_by_tp.get(tp or 0, {})})


def _best_latency(q: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best latency >= 0 for each candidate, and its loss, given ``q = roofline / y`` (candidates, rows), ``w = 1/y``.

    The relative error of row i is ``lat * w_i + q_i - 1``; expanding its square sum needs only ``sum q``,
    ``sum q w`` and ``sum q^2``: three passes over the big array. (einsum, not BLAS: a (k, n) x (n,) product
    through BLAS was ten times slower here, and its threading would make results depend on the machine.)
    """
    n = q.shape[1]
    zz = n - 2.0 * q.sum(axis=1) + np.einsum("ij,ij->i", q, q)  # sum (1 - q)^2
    zw = float(w.sum()) - np.einsum("ij,j->i", q, w)  # sum (1 - q) w
    ww = float(w @ w)
    lat = np.maximum(zw / ww, 0.0)
    return lat, zz - 2.0 * lat * zw + lat * lat * ww


@dataclass(frozen=True)
class _Term:
    """One term inside the ``max``: ``feature * 10**e`` with ``e`` searched in ``[lo, hi]`` (fixed if equal)."""

    feature: np.ndarray
    lo: float
    hi: float


def _fit_roofline(terms: list[_Term], y: np.ndarray) -> tuple[list[float], float]:
    """Exponents of ``terms`` and the latency minimising squared relative error of ``latency + max(terms)``.

    A coarse grid, then zooms around the best point. Grids ascend, so exact ties (a term that never wins the
    ``max``) resolve to the smallest exponent: the highest efficiency, the lowest floor.
    """
    free = [i for i, t in enumerate(terms) if t.hi > t.lo]
    axes = [np.linspace(t.lo, t.hi, int(round((t.hi - t.lo) * _COARSE_PER_DECADE)) + 1) if t.hi > t.lo
            else np.array([t.lo]) for t in terms]
    last = free[-1] if free else len(terms) - 1  # vectorised axis
    step = 1.0 / _COARSE_PER_DECADE
    best: tuple[float, list[float], float] = (np.inf, [float(a[0]) for a in axes], 0.0)
    for zoom in range(_ZOOMS + 1):
        rows = slice(None, None, max(1, len(y) // _COARSE_ROWS)) if zoom == 0 else slice(None)
        feats, w = [t.feature[rows] / y[rows] for t in terms], 1.0 / y[rows]  # features relative to y
        if zoom == 1:
            best = (np.inf, best[1], best[2])  # losses over all rows are not comparable with the subset's
        outer = [axes[i] if i != last else np.array([np.nan]) for i in range(len(terms))]
        for combo in itertools.product(*outer):
            base = np.zeros(len(w))
            for i, e in enumerate(combo):
                if i != last:
                    base = np.maximum(base, feats[i] * 10.0**e)
            q = np.maximum(base[None, :], feats[last][None, :] * 10.0 ** axes[last][:, None])
            lat, loss = _best_latency(q, w)
            j = int(np.argmin(loss))
            if loss[j] < best[0]:
                exps = [float(e) for e in combo]
                exps[last] = float(axes[last][j])
                best = (float(loss[j]), exps, float(lat[j]))
        if zoom == _ZOOMS:
            break
        for i in free:
            e0, t = best[1][i], terms[i]
            axes[i] = np.linspace(max(e0 - step, t.lo), min(e0 + step, t.hi), _ZOOM_POINTS)
        step *= 2.0 / (_ZOOM_POINTS - 1)
    return best[1], best[2]


def _fit_class(op: str, c: dict[str, np.ndarray], peak: float, bw: float,
               fixed_compute_eff: float | None) -> dict[str, float]:
    """Fit one class; returns its RooflineParams fields, rounded."""
    ce_field, me_field, lat_field = CLASS_FIELDS[op]
    eff = (0.0, EFF_DECADES)  # exponent e of 10**e = 1 / efficiency
    if op == "gemm":
        flops, nbytes = gemm_work(c["m"], c["n"], c["k"], c["db"])
    elif op == "attn_prefill":
        flops, nbytes = prefill_attn_work(c["batch"], c["new_tokens"], c["context"], c["heads"], c["kv_heads"],
                                          c["head_dim"], c["db"])
    elif op == "attn_decode":
        flops, nbytes = decode_attn_work(c["batch"], c["context"], c["heads"], c["kv_heads"], c["head_dim"], c["db"])
    else:
        flops, nbytes = np.zeros_like(c["latency_s"]), allreduce_wire_bytes(c["bytes"], c["tp"])
    ce_range = (float(-np.log10(fixed_compute_eff)),) * 2 if fixed_compute_eff else eff
    terms = [_Term(flops / peak, *ce_range), _Term(nbytes / bw, *eff)]
    if op == "attn_decode":
        terms.append(_Term(c["batch"] * c["kv_heads"], *SEQ_HEAD_RANGE))
    exps, lat = _fit_roofline(terms, c["latency_s"])
    out = {me_field: round_sig(10.0 ** -exps[1]), lat_field: round_sig(lat)}
    if ce_field:
        out[ce_field] = round_sig(10.0 ** -exps[0])
    if op == "attn_decode":  # a floor at the bottom of its range never mattered: write 0
        out["decode_attn_seq_head_s"] = 0.0 if exps[2] <= SEQ_HEAD_RANGE[0] else round_sig(10.0 ** exps[2])
    return out


def predict(ops: OperatorRoofline, op: str, c: dict[str, np.ndarray]) -> np.ndarray:
    """Latency the (fitted) per-call roofline gives each row of one class."""
    if op == "gemm":
        return ops.gemm(c["m"], c["n"], c["k"], c["db"])
    if op == "attn_prefill":
        return ops.attn_prefill(c["batch"], c["new_tokens"], c["context"], c["heads"], c["kv_heads"],
                                c["head_dim"], c["db"])
    if op == "attn_decode":
        return ops.attn_decode(c["batch"], c["context"], c["heads"], c["kv_heads"], c["head_dim"], c["db"])
    return ops.allreduce(c["bytes"], c["tp"])


def _subset(c: dict[str, np.ndarray], mask: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[mask] for k, v in c.items()}


def _errors(y: np.ndarray, pred: np.ndarray) -> ClassError:
    err = np.abs(pred - y) / y * 100.0
    return ClassError(len(y), round(float(np.median(err)), 1), round(float(np.percentile(err, 90)), 1))


def fit_gpu(rows: list[Measurement], gpu: str) -> FitResult:
    """Fit every operator class present in ``rows`` (all on ``gpu``); classes without rows keep defaults."""
    g = get_gpu(gpu)
    params: dict[str, float] = {}
    by_tp: dict[int, dict[str, float]] = {}
    cols = {op: columns(rows, op) for op in CLASS_FIELDS}
    for op in ("gemm", "attn_prefill", "attn_decode"):  # prefill before decode: decode shares its compute eff
        c = cols[op]
        if len(c["latency_s"]):
            fixed = params.get("attn_compute_eff", RooflineParams().attn_compute_eff) if op == "attn_decode" else None
            params.update(_fit_class(op, c, g.bf16_flops, g.hbm_bandwidth, fixed))
    ar = cols["allreduce"]
    if len(ar["latency_s"]):
        params.update(_fit_class("allreduce", ar, 1.0, g.interconnect_bandwidth, 1.0))
        for tp in sorted({int(t) for t in ar["tp"]}):
            by_tp[tp] = _fit_class("allreduce", _subset(ar, ar["tp"] == tp), 1.0, g.interconnect_bandwidth, 1.0)
    result = FitResult(g.key, dict(sorted(params.items())), by_tp)
    errors: dict[str, ClassError] = {}
    ops = OperatorRoofline(g, result.roofline_params())
    for op in ("gemm", "attn_prefill", "attn_decode"):
        if len(cols[op]["latency_s"]):
            errors[op] = _errors(cols[op]["latency_s"], predict(ops, op, cols[op]))
    if len(ar["latency_s"]):
        pred = np.empty_like(ar["latency_s"])
        for tp in by_tp:
            m = ar["tp"] == tp
            pred[m] = predict(OperatorRoofline(g, result.roofline_params(tp)), "allreduce", _subset(ar, m))
        errors["allreduce"] = _errors(ar["latency_s"], pred)
    return FitResult(g.key, result.params, by_tp, errors)


def fit_table(rows: list[Measurement]) -> dict[str, FitResult]:
    """Fit each GPU in the table separately; keys sorted."""
    if not rows:
        raise UserError("latency table has no measurements")
    gpus = sorted({r.gpu for r in rows})
    return {gpu: fit_gpu([r for r in rows if r.gpu == gpu], gpu) for gpu in gpus}
