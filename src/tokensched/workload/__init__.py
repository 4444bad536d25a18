"""Workloads: real traces, synthetic generators, embedded presets, and the transforms between them.

:func:`load_workload` is the one entry point the CLI needs: a preset name or a trace path, plus the
user's window / rate / count, gives a :class:`Workload` whose ``notes`` say everything that was done.
"""

from __future__ import annotations

from pathlib import Path

from tokensched.errors import UserError
from tokensched.workload.base import Workload
from tokensched.workload.loaders import NATIVE_KEYS, TRACE_FORMATS, load_trace, write_native
from tokensched.workload.presets import PRESETS, Preset, default_preset, get_preset
from tokensched.workload.synthetic import (
    ArrivalProcess,
    Empirical,
    LogNormal,
    PrefixGroups,
    WorkloadSpec,
    empirical,
    gamma,
    generate,
    lognormal,
    poisson,
)
from tokensched.workload.transform import (
    coarsen_hashes,
    ideal_prefix_hit_rate,
    limit,
    poissonize,
    rebase,
    rescale_rate,
    take_window,
)

DEFAULT_PRESET_REQUESTS = 1000

__all__ = [
    "ArrivalProcess", "DEFAULT_PRESET_REQUESTS", "Empirical", "LogNormal", "NATIVE_KEYS", "PRESETS",
    "PrefixGroups", "Preset", "TRACE_FORMATS", "Workload", "WorkloadSpec", "coarsen_hashes", "default_preset",
    "empirical", "gamma", "generate", "get_preset", "ideal_prefix_hit_rate", "limit", "load_trace",
    "load_workload", "lognormal", "poisson", "poissonize", "rebase", "rescale_rate", "take_window",
    "write_native",
]


def _window(w: Workload, window: tuple[float, float]) -> None:
    before = len(w.requests)
    w.requests = take_window(w.requests, window[0], window[1])
    w.notes.append(f"window [{window[0]:g}, {window[1]:g}) s: kept {len(w.requests)} of {before} requests, "
                   "rebased to t=0")


def load_workload(
    source: str,
    *,
    num_requests: int | None = None,
    qps: float | None = None,
    seed: int = 0,
    window: tuple[float, float] | None = None,
    fmt: str | None = None,
) -> Workload:
    """A preset name (generated) or a trace path (loaded, then window -> rate -> count, in that order).

    ``fmt`` forces a trace format for a path; it is an error with a preset.
    """
    if source in PRESETS and fmt is None:
        preset = PRESETS[source]
        spec = preset.spec if qps is None else preset.spec.with_rate(qps)
        n = DEFAULT_PRESET_REQUESTS if num_requests is None else num_requests
        w = Workload(generate(spec, n, seed), source, "preset",
                     [f"preset {source!r}: {n} requests generated with seed {seed} at {spec.arrivals.rate:g} req/s",
                      f"fitted to {preset.source}"])
        if window is not None:
            _window(w, window)
        return w
    path = Path(source)
    if fmt is not None and not path.exists():
        raise UserError(f"a trace format ({fmt!r}) was given but {source!r} is not an existing file")
    if not path.exists():
        raise UserError(f"{source!r} is neither a preset ({', '.join(PRESETS)}) nor an existing file")
    w = load_trace(path, fmt=fmt)
    if window is not None:
        _window(w, window)
    if qps is not None:
        offline = w.span_s == 0
        w.requests = rescale_rate(w.requests, qps, seed=seed)
        w.notes.append(f"Poisson arrivals at {qps:g} req/s (seed {seed}) given to the offline batch" if offline
                       else f"inter-arrival times rescaled to a mean rate of {qps:g} req/s")
    if num_requests is not None:
        before = len(w.requests)
        w.requests = limit(w.requests, num_requests)
        if len(w.requests) < before:
            w.notes.append(f"limited to the first {len(w.requests)} of {before} requests")
    return w
