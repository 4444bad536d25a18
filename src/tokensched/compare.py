"""Compare policies on one workload: variants of a base configuration, optionally across a load sweep.

A *variant* is a name plus overrides of :class:`~tokensched.config.SimConfig` fields, written as a SPEC
``key=value,key=value`` (``policy_options.KEY=VALUE`` sets one policy knob, ``router_options.KEY=VALUE`` a
router's). Variants come from explicit ``NAME=SPEC`` strings, from a list of scheduler names (one variant each),
and from sweeps ``KEY=V1,V2,...`` (crossed with the other variants). Every (variant, qps) pair is one independent simulation, so points run in
parallel processes; results are ordered by variant, then qps, whatever the number of workers, and carry no
wall-clock times, so the same inputs give the same bytes.

Public API: :func:`parse_spec`, :func:`parse_variant`, :func:`parse_sweep`, :func:`parse_qps`,
:func:`build_variants`, :func:`plan`, :func:`run_comparison`, :func:`capacity`, :class:`Comparison`.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import product
from typing import Any, Callable, Sequence, get_origin

import numpy as np
import yaml

from tokensched.config import FIELDS, SimConfig, make_config
from tokensched.errors import UserError

# Mapping-valued fields (policy_options, router_options): ``FIELD.KEY=VALUE`` sets one key, merged with the base's.
NESTED = tuple(k for k, f in SimConfig.model_fields.items() if get_origin(f.annotation) is dict)
# Columns of the per-request samples a point keeps for plots (not written to results.json).
SAMPLE_COLUMNS = ("arrival_s", "queue_s", "ttft_s", "e2e_s", "finish_s", "prompt_tokens", "output_tokens")


@dataclass(frozen=True)
class Variant:
    """A named set of SimConfig overrides (``policy_options`` is a nested dict merged into the base's)."""

    name: str
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class Point:
    """One simulation: a variant at one load level."""

    variant: str
    qps: float | None  # the requested rate (None: the workload's own arrivals)
    offered_qps: float | None  # requests / arrival span of the simulated workload (None: offline batch)
    config: dict[str, Any]
    summary: dict[str, Any]
    samples: dict[str, np.ndarray]  # SAMPLE_COLUMNS as float arrays (nan where a request failed)
    tenants: list[str]
    notes: list[str]


@dataclass
class Comparison:
    base: SimConfig
    variants: list[Variant]
    qps: list[float] | None
    points: list[Point]
    slo_target: float = 0.9

    def point(self, variant: str, qps: float | None) -> Point:
        return next(p for p in self.points if p.variant == variant and p.qps == qps)

    @property
    def has_slo(self) -> bool:
        return any(p.summary["slo"]["attainment"] is not None for p in self.points)

    @property
    def notes(self) -> list[str]:
        """Every workload note of every point, once each, in order (e.g. one per rescaled rate)."""
        return list(dict.fromkeys(n for p in self.points for n in p.notes))

    @property
    def tenants(self) -> list[str]:
        return sorted({t for p in self.points for t in p.tenants})


# ---- parsing -----------------------------------------------------------------------------------------

def parse_value(raw: str) -> Any:
    """A SPEC value: a YAML scalar when it parses as one (512, 0.5, true, null, [1, 2]), else the text."""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def _key(raw: str, where: str) -> tuple[str, str | None]:
    """(SimConfig field, key inside a mapping field or None) of a SPEC key; unknown fields are errors."""
    head, dot, opt = raw.strip().partition(".")
    key = head.replace("-", "_")
    if dot:
        if key not in NESTED:
            raise UserError(f"{raw.strip()!r}: only {', '.join(NESTED)} take FIELD.KEY", where=where)
        if not opt:
            raise UserError(f"empty option name in {raw!r}", where=where)
        return key, opt
    if key not in FIELDS:
        raise UserError(f"unknown field {raw.strip()!r}; valid fields: "
                        f"{', '.join(k.replace('_', '-') for k in FIELDS)}, policy_options.KEY", where=where)
    return key, None


def _set(out: dict[str, Any], field_: str, opt: str | None, value: Any, where: str) -> None:
    if opt is not None:
        out.setdefault(field_, {})[opt] = value
    elif field_ in NESTED:
        if not isinstance(value, dict):
            raise UserError(f"{field_} must be a mapping, got {value!r}", where=where)
        out[field_] = {**out.get(field_, {}), **value}
    else:
        out[field_] = value


def parse_spec(spec: str, *, where: str = "--variant") -> dict[str, Any]:
    """``key=value,key=value`` -> overrides. A comma-separated piece without ``=`` continues the previous
    value, so list values such as ``policy_options.weights=[1,2]`` survive the split."""
    out: dict[str, Any] = {}
    if not spec.strip():
        return out
    pieces: list[str] = []
    for part in spec.split(","):
        if "=" in part or not pieces:
            pieces.append(part)
        else:
            pieces[-1] += "," + part
    for piece in pieces:
        k, sep, raw = piece.partition("=")
        if not sep or not k.strip():
            raise UserError(f"expected key=value in SPEC, got {piece.strip()!r}", where=where)
        f, opt = _key(k, where)
        _set(out, f, opt, parse_value(raw.strip()), where)
    return out


def parse_variant(text: str) -> Variant:
    """``NAME=SPEC``; an empty SPEC (``base=``) is the base configuration itself."""
    name, sep, spec = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise UserError(f"expected NAME=SPEC (e.g. sarathi-512=scheduler=sarathi,max_batched_tokens=512), "
                        f"got {text!r}", where="--variant")
    return Variant(name, parse_spec(spec, where=f"--variant {name}"))


def parse_sweep(text: str) -> tuple[str, list[tuple[str, Any]]]:
    """``KEY=V1,V2,...`` -> (key, [(label, value), ...]); values parsed like SPEC values."""
    k, sep, raw = text.partition("=")
    where = "--sweep"
    if not sep or not k.strip() or not raw.strip():
        raise UserError(f"expected KEY=V1,V2,... (e.g. max_batched_tokens=256,512,1024), got {text!r}", where=where)
    _key(k, where)
    labels = [v.strip() for v in raw.split(",")]
    if any(not v for v in labels):
        raise UserError(f"empty value in {text!r}", where=where)
    if len(set(labels)) != len(labels):
        raise UserError(f"repeated value in {text!r}", where=where)
    return k.strip(), [(v, parse_value(v)) for v in labels]


def parse_qps(text: str | list[Any]) -> list[float]:
    """``2,4,8`` (or a YAML list) -> sorted distinct positive rates."""
    items = text if isinstance(text, list) else [x for x in str(text).split(",")]
    out: list[float] = []
    for x in items:
        try:
            q = float(x)
        except (TypeError, ValueError):
            raise UserError(f"expected positive numbers such as 2,4,8, got {x!r}", where="--qps") from None
        if not (q > 0 and np.isfinite(q)):
            raise UserError(f"rates must be positive and finite, got {x!r}", where="--qps")
        out.append(q)
    if not out:
        raise UserError("no rates given", where="--qps")
    return sorted(set(out))


def build_variants(
    variants: Sequence[str] = (),
    schedulers: str | None = None,
    sweeps: Sequence[str] = (),
    config_variants: dict[str, Any] | None = None,
    config_where: str = "config",
) -> list[Variant]:
    """Config-file variants, then ``--variant``s, then ``--schedulers``; each crossed with every sweep."""
    base: list[Variant] = []
    for name, spec in (config_variants or {}).items():
        where = f"{config_where}: variants.{name}"
        if isinstance(spec, str) or spec is None:
            base.append(Variant(str(name), parse_spec(spec or "", where=where)))
        elif isinstance(spec, dict):
            ov: dict[str, Any] = {}
            for k, v in spec.items():
                f, opt = _key(str(k), where)
                _set(ov, f, opt, v, where)
            base.append(Variant(str(name), ov))
        else:
            raise UserError("a variant must be a mapping of fields to values or a SPEC string", where=where)
    base += [parse_variant(v) for v in variants]
    if schedulers is not None:
        names = [s.strip() for s in schedulers.split(",")]
        if not all(names):
            raise UserError(f"expected comma-separated scheduler names, got {schedulers!r}", where="--schedulers")
        base += [Variant(s, {"scheduler": s}) for s in names]
    if sweeps:
        parsed = [parse_sweep(s) for s in sweeps]
        if len({k.replace("-", "_") for k, _ in parsed}) != len(parsed):
            raise UserError("the same key is swept twice", where="--sweep")
        crossed: list[Variant] = []
        for v in base or [Variant("")]:
            for combo in product(*(vals for _, vals in parsed)):
                ov = {**v.overrides, **{n: dict(v.overrides[n]) for n in NESTED if n in v.overrides}}
                labels = [v.name] if v.name else []
                for (k, _), (label, value) in zip(parsed, combo):
                    f, opt = _key(k, "--sweep")
                    _set(ov, f, opt, value, "--sweep")
                    labels.append(f"{k}={label}")
                crossed.append(Variant(" ".join(labels), ov))
        base = crossed
    if not base:
        raise UserError("nothing to compare: give --variant NAME=SPEC, --schedulers A,B or --sweep KEY=V1,V2 "
                        "(--variant base= runs the base configuration alone)")
    seen: set[str] = set()
    for v in base:
        if v.name in seen:
            raise UserError(f"two variants are named {v.name!r}", where="--variant")
        seen.add(v.name)
    return base


# ---- planning and running ----------------------------------------------------------------------------

def merged_values(base: dict[str, Any], variant: Variant) -> dict[str, Any]:
    """The base values with the variant's overrides on top (policy options merged key by key)."""
    values = {**base, **variant.overrides}
    for n in NESTED:
        if n in base or n in variant.overrides:
            values[n] = {**base.get(n, {}), **variant.overrides.get(n, {})}
    return values


def plan(
    base_values: dict[str, Any],
    variants: list[Variant],
    qps: list[float] | None,
    *,
    source: str = "option",
    lines: dict[str, int] | None = None,
) -> tuple[SimConfig, list[SimConfig]]:
    """Validate the base and every (variant, qps) config; names, options and models are checked here, in
    this process, so a mistake is one line before any simulation starts."""
    from tokensched.simulator import build_replica

    base = make_config(base_values, source=source, lines=lines)
    configs: list[SimConfig] = []
    for v in variants:
        where = f"variant {v.name!r}" if v.name else "--sweep"
        if qps is not None and "qps" in v.overrides:
            raise UserError("sets qps, but --qps sweeps the load", where=where)
        values = merged_values(base_values, v)
        cfg = make_config(values, source=where)
        try:
            if not cfg.is_cluster:  # a cluster's pools may replace the top-level model/GPU: checked when it runs
                build_replica(cfg, [])  # resolves scheduler/admission/preemption/eviction, options, model, GPU
        except UserError as e:
            raise UserError(str(e), where=where) from None
        for q in qps or [None]:
            configs.append(cfg if q is None else cfg.model_copy(update={"qps": q}))
    return base, configs


@lru_cache(maxsize=8)
def _workload(source: str, num_requests: int | None, qps: float | None, seed: int,
              window: tuple[float, float] | None, fmt: str | None) -> Any:
    from tokensched.workload import load_workload

    return load_workload(source, num_requests=num_requests, qps=qps, seed=seed, window=window, fmt=fmt)


def _program_point(cfg: SimConfig, variant: str, requested_qps: float | None) -> Point:
    """A program workload: ``--qps`` is the program arrival rate; rows are the programs' LLM calls."""
    from tokensched.programs.sim import simulate_programs
    from tokensched.programs.sources import load_programs

    if cfg.num_requests is not None or cfg.window is not None:
        raise UserError("--num-requests and --window apply to request traces; for programs use --num-programs",
                        where=cfg.workload)
    pw = load_programs(cfg.workload, num_programs=cfg.num_programs, rate=cfg.qps or cfg.program_rate, seed=cfg.seed,
                       tool_scale=cfg.tool_scale, deadline_s=cfg.program_deadline)
    try:
        result = simulate_programs(cfg, pw.programs, cfg.program_policy, cfg.program_options)
    except UserError as e:
        raise UserError(str(e), where=f"variant {variant!r}" if variant else None) from None
    summary = dict(result.summary)
    summary.pop("wall_s", None)
    samples = {c: np.array([np.nan if r[c] is None else r[c] for r in result.rows], dtype=np.float64)
               for c in SAMPLE_COLUMNS}
    arrivals = [p.arrival_s for p in pw.programs]
    span = max(arrivals) - min(arrivals) if arrivals else 0.0
    notes = list(pw.notes) + ["for program workloads qps is the program arrival rate (programs/s)"]
    return Point(variant, requested_qps, (len(arrivals) / span) if span > 0 else None, cfg.model_dump(mode="json"),
                 summary, samples, [str(r["tenant"]) for r in result.rows], notes)


def run_point(cfg: SimConfig, variant: str, requested_qps: float | None, fmt: str | None) -> Point:
    """Simulate one point (also the worker function: module-level so it pickles)."""
    from tokensched.programs.sources import is_program_workload
    from tokensched.simulator import simulate

    if fmt is None and is_program_workload(cfg.workload):
        return _program_point(cfg, variant, requested_qps)
    w = _workload(cfg.workload, cfg.num_requests, cfg.qps, cfg.seed, cfg.window_bounds(), fmt)
    if not w.requests:
        raise UserError("the workload has no requests", where=cfg.workload)
    try:
        if cfg.is_cluster:
            from tokensched.cluster.sim import simulate_cluster

            result: Any = simulate_cluster(cfg, w.requests)
        else:
            result = simulate(cfg, w.requests)
    except UserError as e:  # e.g. a KV cache too small for this workload: say which variant
        raise UserError(str(e), where=f"variant {variant!r}" if variant else None) from None
    summary = dict(result.summary)
    summary.pop("wall_s", None)  # the only non-deterministic number
    samples = {c: np.array([np.nan if r[c] is None else r[c] for r in result.rows], dtype=np.float64)
               for c in SAMPLE_COLUMNS}
    return Point(variant, requested_qps, w.rate, cfg.model_dump(mode="json"), summary, samples,
                 [str(r["tenant"]) for r in result.rows], list(w.notes))


def _run_star(args: tuple[SimConfig, str, float | None, str | None]) -> Point:
    return run_point(*args)


def run_comparison(
    base_values: dict[str, Any],
    variants: list[Variant],
    qps: list[float] | None = None,
    *,
    jobs: int | None = None,
    trace_format: str | None = None,
    slo_target: float = 0.9,
    source: str = "option",
    lines: dict[str, int] | None = None,
    on_point: Callable[[int, int], None] | None = None,
) -> Comparison:
    """Plan, then simulate every (variant, qps) point on ``jobs`` processes (default: all CPUs)."""
    if not 0 < slo_target <= 1:
        raise UserError(f"expected a fraction in (0, 1], got {slo_target!r}", where="--slo-target")
    if qps is not None:
        qps = parse_qps(list(qps))  # sorted, distinct, validated
    base, configs = plan(base_values, variants, qps, source=source, lines=lines)
    per = len(qps) if qps else 1
    tasks = [(cfg, variants[i // per].name, (qps[i % per] if qps else None), trace_format)
             for i, cfg in enumerate(configs)]
    n = len(tasks)
    _workload.cache_clear()  # a trace file may have changed since an earlier call in this process
    workers = (os.cpu_count() or 1) if jobs is None else jobs
    if workers < 1:
        raise UserError(f"expected at least 1, got {jobs}", where="--jobs")
    workers = min(workers, n)
    points: list[Point] = []
    if workers == 1:
        for i, t in enumerate(tasks):
            points.append(_run_star(t))
            if on_point:
                on_point(i + 1, n)
    else:
        with ProcessPoolExecutor(max_workers=workers) as ex:
            try:
                for i, p in enumerate(ex.map(_run_star, tasks)):  # map keeps task order
                    points.append(p)
                    if on_point:
                        on_point(i + 1, n)
            except BaseException:
                ex.shutdown(wait=False, cancel_futures=True)
                raise
    return Comparison(base, variants, qps, points, slo_target)


def capacity(comp: Comparison, variant: str) -> dict[str, Any] | None:
    """The highest swept rate up to which every rate meets the SLO-attainment target (None without a qps
    sweep or an SLO). ``qps`` is None when even the lowest rate misses; ``all_met`` when none misses."""
    if not comp.qps:
        return None
    best: float | None = None
    for q in comp.qps:
        att = comp.point(variant, q).summary["slo"]["attainment"]
        if att is None:
            return None
        if att < comp.slo_target:
            return {"qps": best, "all_met": False}
        best = q
    return {"qps": best, "all_met": True}


def results_json(comp: Comparison) -> dict[str, Any]:
    """The machine-readable result: base config, variants, one entry per point, capacities."""
    return {
        "base": comp.base.model_dump(mode="json"),
        "variants": [{"name": v.name, "overrides": v.overrides} for v in comp.variants],
        "qps": comp.qps,
        "slo": {"ttft_s": comp.base.slo_ttft, "tpot_s": comp.base.slo_tpot, "target": comp.slo_target},
        "points": [{"variant": p.variant, "qps": p.qps, "offered_qps": p.offered_qps, "config": p.config,
                    "summary": p.summary} for p in comp.points],
        "capacity": {v.name: capacity(comp, v.name) for v in comp.variants} if comp.qps and comp.has_slo else None,
        "workload_notes": comp.notes,
    }
