"""Synthetic workload generators: arrival processes, length distributions and shared-prefix groups.

Everything draws from one ``np.random.Generator(np.random.PCG64(seed))`` in a fixed order, so a spec and
a seed always give the identical request list (a benchmark must be reproducible bit for bit).

Prefix sharing follows the chained-hash convention of :mod:`tokensched.request`: a request that belongs to
a group starts with (part of) the group's system prompt, whose 16-token blocks carry the same hashes in
every request of the group; all later blocks get hashes unique to the request. Hash values are tagged in
their top bits (common / group / request) so that the three kinds can never collide.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from tokensched.errors import UserError
from tokensched.request import Request

HASH_BLOCK = 16
_TAG_COMMON, _TAG_GROUP, _TAG_REQUEST = 1 << 60, 2 << 60, 3 << 60
_INDEX_BITS = 28  # block index field: up to 2**28 blocks (4 G tokens) per prompt


def _rng(seed: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(seed))


def _positive(x: object, what: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x <= 0:
        raise UserError(f"{what}: expected a positive number, got {x!r}")
    return float(x)


# ----------------------------------------------------------------------------- arrivals


@dataclass(frozen=True)
class ArrivalProcess:
    """Renewal process with gamma inter-arrival times: mean ``1/rate``, coefficient of variation ``cv``.

    ``cv = 1`` is a Poisson process; ``cv > 1`` is bursty (many short gaps, a few long idle ones).
    """

    rate: float
    cv: float = 1.0

    def __post_init__(self) -> None:
        _positive(self.rate, "arrival rate")
        _positive(self.cv, "inter-arrival CV")

    def with_rate(self, rate: float) -> ArrivalProcess:
        return replace(self, rate=rate)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` arrival times; the first request arrives at 0."""
        if n <= 1:
            return np.zeros(n)
        if self.cv == 1.0:
            gaps = rng.exponential(1.0 / self.rate, size=n - 1)
        else:
            shape = 1.0 / (self.cv * self.cv)
            gaps = rng.gamma(shape, 1.0 / (self.rate * shape), size=n - 1)
        return np.concatenate(([0.0], np.cumsum(gaps)))


def poisson(rate: float) -> ArrivalProcess:
    """Poisson arrivals at ``rate`` requests per second."""
    return ArrivalProcess(rate, 1.0)


def gamma(rate: float, cv: float) -> ArrivalProcess:
    """Gamma-renewal arrivals: ``rate`` requests per second with inter-arrival CV ``cv`` (1 = Poisson)."""
    return ArrivalProcess(rate, cv)


# ----------------------------------------------------------------------------- lengths


class LengthDist(Protocol):
    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray: ...


@dataclass(frozen=True)
class LogNormal:
    """Log-normal token counts with the given median and log-space sigma, clipped to [min, max]."""

    median: float
    sigma: float
    min: int = 1
    max: int = 1 << 20

    def __post_init__(self) -> None:
        _positive(self.median, "lognormal median")
        if not (isinstance(self.sigma, (int, float)) and math.isfinite(self.sigma) and self.sigma >= 0):
            raise UserError(f"lognormal sigma: expected a non-negative number, got {self.sigma!r}")
        if not (1 <= self.min <= self.max):
            raise UserError(f"lognormal bounds: need 1 <= min <= max, got [{self.min}, {self.max}]")

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        x = rng.lognormal(math.log(self.median), self.sigma, size=n)
        return np.clip(np.rint(x), self.min, self.max).astype(np.int64)


@dataclass(frozen=True)
class Empirical:
    """Inverse CDF of a quantile table ``((q, value), ...)`` with linear interpolation between points.

    ``q`` runs from 0 to 1; the table's median is reproduced exactly and its tails are bounded by p0/p100.
    """

    table: tuple[tuple[float, float], ...]

    def __post_init__(self) -> None:
        t = self.table
        if len(t) < 2:
            raise UserError("empirical table: need at least two (q, value) points")
        qs = [float(q) for q, _ in t]
        vs = [float(v) for _, v in t]
        if qs[0] != 0.0 or qs[-1] != 1.0 or any(b <= a for a, b in zip(qs, qs[1:])):
            raise UserError(f"empirical table: quantiles must rise strictly from 0 to 1, got {qs}")
        if any(b < a for a, b in zip(vs, vs[1:])) or vs[0] < 0:
            raise UserError(f"empirical table: values must be non-negative and non-decreasing, got {vs}")

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        qs = np.array([q for q, _ in self.table], dtype=float)
        vs = np.array([v for _, v in self.table], dtype=float)
        x = np.interp(rng.random(n), qs, vs)
        return np.maximum(np.rint(x), 1).astype(np.int64)


def lognormal(median: float, sigma: float, min: int = 1, max: int = 1 << 20) -> LogNormal:  # noqa: A002
    return LogNormal(median, sigma, min, max)


def empirical(table: list[tuple[float, float]] | tuple[tuple[float, float], ...]) -> Empirical:
    return Empirical(tuple((float(q), float(v)) for q, v in table))


# ----------------------------------------------------------------------------- prefixes and specs


@dataclass(frozen=True)
class PrefixGroups:
    """``num_groups`` system prompts of ``system_prompt_tokens`` tokens, picked with Zipf or uniform popularity.

    The first ``common_prefix_tokens`` of every system prompt are identical across groups (e.g. a global
    preamble: every Mooncake request shares block 0). A request never shares its last token, so a prompt
    no longer than the system prompt shares ``prompt - 1`` tokens, rounded down to whole hash blocks.
    """

    num_groups: int
    system_prompt_tokens: int
    popularity: str = "zipf"
    zipf_s: float = 1.0
    common_prefix_tokens: int = 0

    def __post_init__(self) -> None:
        if not (isinstance(self.num_groups, int) and 1 <= self.num_groups < 1 << 32):
            raise UserError(f"prefix groups: expected 1 <= num_groups < 2**32, got {self.num_groups!r}")
        if not (isinstance(self.system_prompt_tokens, int) and self.system_prompt_tokens >= 0):
            raise UserError(f"system prompt tokens: expected a non-negative integer, got {self.system_prompt_tokens!r}")
        if self.popularity not in ("zipf", "uniform"):
            raise UserError(f"prefix popularity: expected 'zipf' or 'uniform', got {self.popularity!r}")
        if not (0 <= self.common_prefix_tokens <= self.system_prompt_tokens):
            raise UserError("common prefix tokens: must be between 0 and system_prompt_tokens")

    def weights(self) -> np.ndarray:
        if self.popularity == "uniform":
            w = np.ones(self.num_groups)
        else:
            w = 1.0 / np.arange(1, self.num_groups + 1) ** self.zipf_s
        return w / w.sum()


@dataclass(frozen=True)
class WorkloadSpec:
    """Everything :func:`generate` needs. Input and output lengths are drawn independently."""

    arrivals: ArrivalProcess
    prompt_tokens: LengthDist
    output_tokens: LengthDist
    prefix: PrefixGroups | None = None
    max_total_tokens: int | None = None
    tenant: str = "default"

    def with_rate(self, rate: float) -> WorkloadSpec:
        return replace(self, arrivals=self.arrivals.with_rate(rate))


def _request_hashes(r: int, group_hashes: list[int], shared_blocks: int, n_blocks: int) -> tuple[int, ...]:
    base = _TAG_REQUEST | (r << _INDEX_BITS)
    return tuple(group_hashes[:shared_blocks]) + tuple(range(base + shared_blocks, base + n_blocks))


def generate(spec: WorkloadSpec, num_requests: int, seed: int) -> list[Request]:
    """``num_requests`` requests drawn from ``spec``; identical output for identical (spec, n, seed)."""
    if isinstance(num_requests, bool) or not isinstance(num_requests, int) or not 1 <= num_requests < 1 << 32:
        raise UserError(f"number of requests: expected a positive integer, got {num_requests!r}")
    rng = _rng(seed)
    n = num_requests
    times = spec.arrivals.sample(rng, n)
    prompts = spec.prompt_tokens.sample(rng, n)
    outputs = np.maximum(spec.output_tokens.sample(rng, n), 1)
    if spec.max_total_tokens is not None:
        cap = spec.max_total_tokens
        if cap < 2:
            raise UserError(f"max_total_tokens: expected an integer >= 2, got {cap!r}")
        outputs = np.minimum(outputs, cap - 1)
        prompts = np.minimum(prompts, cap - outputs)
    prefix = spec.prefix
    groups = rng.choice(prefix.num_groups, size=n, p=prefix.weights()) if prefix else None
    group_hashes: dict[int, list[int]] = {}
    if prefix:
        common = prefix.common_prefix_tokens // HASH_BLOCK
        sys_blocks = prefix.system_prompt_tokens // HASH_BLOCK
        for g in np.unique(groups).tolist():
            gbase = _TAG_GROUP | (g << _INDEX_BITS)
            group_hashes[g] = [_TAG_COMMON | i for i in range(common)] + [gbase | i for i in range(common, sys_blocks)]
    out: list[Request] = []
    for r in range(n):
        p = int(prompts[r])
        hashes: tuple[int, ...] = ()
        extra: dict[str, object] = {}
        if prefix and groups is not None:
            g = int(groups[r])
            shared = min(prefix.system_prompt_tokens, p - 1) // HASH_BLOCK
            hashes = _request_hashes(r, group_hashes[g], shared, -(-p // HASH_BLOCK))
            extra = {"prefix_group": g}
        out.append(Request(str(r), float(times[r]), p, int(outputs[r]), block_hashes=hashes,
                           hash_block_size=HASH_BLOCK, tenant=spec.tenant, extra=extra))
    return out
