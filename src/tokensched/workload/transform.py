"""Pure transformations of request lists (each returns a new list; the input is never modified).

They turn a recorded trace into the experiment one wants: a time window of it, the first ``n`` requests,
or the same traffic shape at another load. Arguments come from users (CLI flags), so they are validated
with :class:`UserError`. Also here: :func:`ideal_prefix_hit_rate`, the infinite-cache upper bound on prefix
reuse that the presets are fitted against.
"""

from __future__ import annotations

import math
from dataclasses import replace
from operator import attrgetter

import numpy as np

from tokensched.errors import UserError
from tokensched.request import Request


def _finite(x: object, what: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        raise UserError(f"{what}: expected a finite number, got {x!r}")
    return float(x)


def _sorted(requests: list[Request]) -> list[Request]:
    return sorted(requests, key=attrgetter("arrival_s"))


def _shift(requests: list[Request], offset: float, scale: float = 1.0) -> list[Request]:
    """New requests with arrival ``(t - offset) * scale`` (clamped at 0 against rounding)."""
    return [replace(r, arrival_s=max(0.0, (r.arrival_s - offset) * scale)) for r in requests]


def rebase(requests: list[Request]) -> list[Request]:
    """Shift arrivals so that the first request arrives at t=0 (idle time before it is not simulated)."""
    reqs = _sorted(requests)
    if not reqs or reqs[0].arrival_s == 0:
        return reqs
    return _shift(reqs, reqs[0].arrival_s)


def take_window(requests: list[Request], start_s: float, end_s: float) -> list[Request]:
    """Requests arriving in ``[start_s, end_s)``, rebased so the first of them arrives at 0."""
    start = _finite(start_s, "window start")
    end = _finite(end_s, "window end")
    if start < 0 or end <= start:
        raise UserError(f"window [{start_s}, {end_s}): need 0 <= start < end")
    reqs = [r for r in _sorted(requests) if start <= r.arrival_s < end]
    if not reqs:
        span = f"{requests[0].arrival_s:g}-{max(r.arrival_s for r in requests):g} s" if requests else "empty"
        raise UserError(f"window [{start:g}, {end:g}) s contains no requests (trace arrivals span {span})")
    return rebase(reqs)


def limit(requests: list[Request], n: int) -> list[Request]:
    """The first ``n`` requests by arrival (all of them if there are fewer)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UserError(f"number of requests: expected a positive integer, got {n!r}")
    return _sorted(requests)[:n]


def poissonize(requests: list[Request], qps: float, *, seed: int = 0) -> list[Request]:
    """Replace arrivals by a Poisson process at ``qps`` (first at 0), keeping the request order.

    This is how an offline batch (a length table with no timestamps) becomes an online workload.
    """
    rate = _finite(qps, "rate (qps)")
    if rate <= 0:
        raise UserError(f"rate (qps): expected a positive number, got {qps!r}")
    reqs = _sorted(requests)
    rng = np.random.Generator(np.random.PCG64(seed))
    gaps = rng.exponential(1.0 / rate, size=max(len(reqs) - 1, 0))
    times = np.concatenate(([0.0], np.cumsum(gaps)))
    return [replace(r, arrival_s=float(t)) for r, t in zip(reqs, times)]


def rescale_rate(requests: list[Request], qps: float, *, seed: int = 0) -> list[Request]:
    """Stretch or compress inter-arrival times so that the mean rate ``n / span`` equals ``qps``.

    The burst structure (relative gaps) is kept. An offline batch (span 0) has no structure to keep, so it
    gets Poisson arrivals at ``qps`` drawn with ``seed`` instead.
    """
    rate = _finite(qps, "rate (qps)")
    if rate <= 0:
        raise UserError(f"rate (qps): expected a positive number, got {qps!r}")
    reqs = _sorted(requests)
    if not reqs:
        return []
    span = reqs[-1].arrival_s - reqs[0].arrival_s
    if span <= 0:
        return poissonize(reqs, rate, seed=seed)
    return _shift(reqs, reqs[0].arrival_s, (len(reqs) / rate) / span)


def coarsen_hashes(hashes: tuple[int, ...], prompt_tokens: int, from_size: int, to_size: int) -> tuple[int, ...]:
    """Chained hashes of ``from_size``-token blocks re-expressed for ``to_size``-token blocks.

    Because the hashes are chained, a coarse block is named by the hash of the last fine block inside it.
    ``to_size`` must be a multiple of ``from_size``.
    """
    if to_size % from_size:
        raise UserError(f"block size {to_size} is not a multiple of the hash block size {from_size}")
    ratio = to_size // from_size
    if ratio == 1 or not hashes:
        return hashes
    n = len(hashes)
    return tuple(hashes[min((j + 1) * ratio, n) - 1] for j in range(-(-prompt_tokens // to_size)))


def ideal_prefix_hit_rate(requests: list[Request], block_size: int | None = None) -> float:
    """Fraction of prompt tokens an infinite prefix cache could reuse, in arrival order (token weighted).

    A block hits if its chained hash was seen before and every earlier block of the prompt hit. With
    ``block_size`` the hashes are first coarsened to that granularity (e.g. 512 for Mooncake figures).
    Requests without hashes count as all misses.
    """
    seen: set[int] = set()
    hit = total = 0
    for r in _sorted(requests):
        total += r.prompt_tokens
        size = block_size or r.hash_block_size
        hashes = coarsen_hashes(r.block_hashes, r.prompt_tokens, r.hash_block_size, size)
        for i, h in enumerate(hashes):
            if h not in seen:
                break
            hit += min(size, r.prompt_tokens - i * size)
        seen.update(hashes)
    return hit / total if total else 0.0
