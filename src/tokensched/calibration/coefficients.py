"""Fitted roofline coefficients on disk: the shipped ``data/roofline_coefficients.json`` and user files.

Why JSON keyed by GPU: one file can carry fits for several GPUs (the shipped one has every catalog GPU that
NVIDIA's databases cover), and :class:`~tokensched.timing.RooflineTiming` picks its own GPU's entry. Only
fitted fields are stored; the rest of :class:`~tokensched.timing.RooflineParams` (the per-iteration and
per-sequence overheads, which operator tables cannot measure) keep their defaults. ``allreduce_by_tp``
overrides the all-reduce fields for a tensor-parallel degree that was measured. Files are written with sorted
keys, 2-space indent and pre-rounded floats, so the same fit gives the same bytes::

    {"format": "tokensched-roofline-coefficients", "version": 1,
     "gpus": {"h100": {"params": {"gemm_compute_eff": 0.8123, ...},
                       "allreduce_by_tp": {"2": {"allreduce_latency_s": 4.3e-06, "link_eff": 0.61}, ...},
                       "fit_error": {"gemm": {"rows": 1234, "median_pct": 6.1, "p90_pct": 17.0}, ...},
                       "source": "..."}}}
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from tokensched.errors import UserError, read_user_text
from tokensched.timing import RooflineParams

FORMAT = "tokensched-roofline-coefficients"
VERSION = 1
SHIPPED = "roofline_coefficients.json"
_FIELDS = {f.name for f in dataclasses.fields(RooflineParams)}


@dataclass(frozen=True)
class Calibration:
    """One GPU's entry: the parameters to time with, where they came from and how well they fit."""

    gpu: str
    params: RooflineParams
    source: str
    fit_error: dict[str, dict[str, float]]
    allreduce_by_tp: dict[int, RooflineParams] = dataclasses.field(default_factory=dict)

    def params_for(self, tp: int) -> RooflineParams:
        """The parameters for ``tp`` GPUs: all-reduce fields measured at that degree when available."""
        return self.allreduce_by_tp.get(tp, self.params)


def dumps(entries: dict[str, dict[str, Any]]) -> str:
    """Serialise ``{gpu: {"params", "fit_error", "source"}}`` deterministically (sorted keys, fixed indent)."""
    doc = {"format": FORMAT, "version": VERSION, "gpus": entries}
    return json.dumps(doc, sort_keys=True, indent=2) + "\n"


# Fitted operator latencies already carry each kernel's launch and synchronisation cost (the per-call
# latency terms), which the hand-set model folded into its 1.5 ms iteration overhead. With a fit, the iteration
# overhead keeps only the CPU-side work between iterations (scheduling, input preparation, sampling). It is a
# stated constant, not fitted: `tokensched validate` meets its targets with any value from 0 to 0.5 ms (E2E p50
# median error 2.6 % at 0, 2.4 % at 0.5 ms; TTFT p50 7.4 % / 8.0 %; docs/timing.md).
CALIBRATED_ITERATION_OVERHEAD_S = 0.5e-3


def entries_from_fits(fits: dict[str, Any], sources: dict[str, str],
                      details: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """JSON entries from :func:`tokensched.calibration.fit.fit_table` results, a source line per GPU and
    optionally a longer note per GPU (tables and kernels used)."""
    out: dict[str, dict[str, Any]] = {}
    for gpu, fit in sorted(fits.items()):
        out[gpu] = {
            "params": dict(sorted({**fit.params, "iteration_overhead_s": CALIBRATED_ITERATION_OVERHEAD_S}.items())),
            "allreduce_by_tp": {str(tp): dict(sorted(v.items())) for tp, v in sorted(fit.allreduce_by_tp.items())},
            "fit_error": {op: dataclasses.asdict(e) for op, e in sorted(fit.errors.items())},
            "source": sources[gpu],
        }
        if details and gpu in details:
            out[gpu]["details"] = details[gpu]
    return out


def parse(doc: Any, where: str) -> dict[str, Calibration]:
    """Validate a loaded document; mistakes are one-line UserErrors naming the file and key."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise UserError(f"not a roofline coefficients file (expected \"format\": \"{FORMAT}\")", where=where)
    if doc.get("version") != VERSION:
        raise UserError(f"unsupported coefficients version {doc.get('version')!r} (expected {VERSION})", where=where)
    gpus = doc.get("gpus")
    if not isinstance(gpus, dict) or not gpus:
        raise UserError("key 'gpus': expected a non-empty mapping of GPU name to coefficients", where=where)
    out: dict[str, Calibration] = {}
    for gpu, entry in gpus.items():
        key = f"gpus.{gpu}"
        if not isinstance(entry, dict):
            raise UserError(f"key '{key}': expected a mapping with 'params'", where=where)
        params = _check_params(entry["params"], f"{key}.params", where)
        rp = _make(params, f"{key}.params", where)
        by_tp: dict[int, RooflineParams] = {}
        raw_tp = entry.get("allreduce_by_tp", {})
        if not isinstance(raw_tp, dict):
            raise UserError(f"key '{key}.allreduce_by_tp': expected a mapping of tp to fields", where=where)
        for tp, fields in raw_tp.items():
            k = f"{key}.allreduce_by_tp.{tp}"
            if not str(tp).isdigit() or int(tp) < 2 or not isinstance(fields, dict):
                raise UserError(f"key '{k}': expected a tp >= 2 mapping to all-reduce fields", where=where)
            by_tp[int(tp)] = _make({**params, **_check_params(fields, k, where)}, k, where)
        fit_error = entry.get("fit_error", {})
        out[str(gpu)] = Calibration(str(gpu), rp, str(entry.get("source", "")),
                                    fit_error if isinstance(fit_error, dict) else {}, by_tp)
    return out


def _check_params(params: Any, key: str, where: str) -> dict[str, float]:
    if not isinstance(params, dict):
        raise UserError(f"key '{key}': expected a mapping of RooflineParams fields", where=where)
    for name, v in params.items():
        if name not in _FIELDS:
            raise UserError(f"key '{key}.{name}': unknown; valid: {', '.join(sorted(_FIELDS))}", where=where)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise UserError(f"key '{key}.{name}': expected a number, got {v!r}", where=where)
    return params


def _make(params: dict[str, float], key: str, where: str) -> RooflineParams:
    try:
        return RooflineParams(**params)
    except ValueError as e:
        raise UserError(f"key '{key}': {e}", where=where) from None


def load_coefficients(path: str | Path) -> dict[str, Calibration]:
    """Read a coefficients file written by ``tokensched calibrate`` (or by hand)."""
    p = Path(path)
    text = read_user_text(p, "coefficients file")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"invalid JSON: {e.msg}", where=f"{p}:{e.lineno}") from None
    return parse(doc, str(p))


@lru_cache(maxsize=1)
def shipped() -> dict[str, Calibration]:
    """The coefficients shipped as package data (empty when the file is absent)."""
    f = resources.files("tokensched") / "data" / SHIPPED
    if not f.is_file():
        return {}
    return parse(json.loads(f.read_text(encoding="utf-8")), f"tokensched/data/{SHIPPED}")


def default_params(gpu_key: str, tp: int = 1) -> tuple[RooflineParams, str]:
    """Shipped fit for ``gpu_key`` if there is one, else the hand-set defaults; with a line saying which."""
    cal = shipped().get(gpu_key)
    if cal is None:
        return RooflineParams(), f"hand-set roofline defaults (no calibration data for {gpu_key})"
    return cal.params_for(tp), f"roofline fitted to {cal.source}"


def params_from_file(path: str | Path, gpu_key: str, tp: int = 1) -> tuple[RooflineParams, str]:
    """The entry for ``gpu_key`` in a user's coefficients file; a missing GPU is a UserError."""
    cals = load_coefficients(path)
    cal = cals.get(gpu_key)
    if cal is None:
        raise UserError(f"no coefficients for GPU {gpu_key} (the file has: {', '.join(sorted(cals))})",
                        where=str(path))
    return cal.params_for(tp), f"roofline coefficients from {path}"


def roofline_from_file(path: str | Path, backend: str, model: Any, gpu: Any, tp: int) -> Any:
    """A :class:`~tokensched.timing.RooflineTiming` timed with ``path``'s coefficients (``--timing-coefficients``)."""
    from tokensched.timing import RooflineTiming

    if backend.strip().lower() != "roofline":
        raise UserError(f"applies to the roofline timing only, not --timing {backend}", where="timing-coefficients")
    params, source = params_from_file(path, gpu.key, tp)
    return RooflineTiming(model, gpu, tp, params, source=source)
