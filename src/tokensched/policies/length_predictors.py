"""Output-length predictors for the length-aware schedulers: small objects with ``predict`` and ``observe``.

* ``oracle``: the true output length (an upper bound on what any predictor can do).
* ``noisy``: the true length times ``exp(error * z)``, ``z`` standard normal, i.e. lognormal multiplicative
  error with median 1 and log-standard-deviation ``error``. ``z`` comes from a NumPy generator seeded with
  ``(seed, bytes of the request id)``: the same request gets the same draw in every run, whatever the
  order of arrivals or Python's hash randomisation.
* ``history``: the mean output length of finished requests whose prompt length falls in the same bucket
  (``bucket_edges``); the mean over all finished requests while the bucket is empty; 0 before anything has
  finished (every request ties, so the queue is FCFS until the first completion).
"""

from __future__ import annotations

import bisect
import math
from typing import Protocol

import numpy as np

from tokensched.errors import UserError
from tokensched.sequence import Sequence

DEFAULT_EDGES = (128, 512, 1024, 2048, 4096)


class Predictor(Protocol):
    def predict(self, seq: Sequence) -> float: ...
    def observe(self, seq: Sequence) -> None: ...


class OraclePredictor:
    def predict(self, seq: Sequence) -> float:
        return float(seq.output_tokens)

    def observe(self, seq: Sequence) -> None:
        pass


class NoisyPredictor:
    def __init__(self, error: float, seed: int) -> None:
        self.error = error
        self.seed = seed

    def noise(self, request_id: str) -> float:
        """The multiplicative error for one request: deterministic in (seed, id)."""
        if self.error == 0:
            return 1.0
        rng = np.random.default_rng([self.seed, *request_id.encode()])
        return math.exp(self.error * float(rng.standard_normal()))

    def predict(self, seq: Sequence) -> float:
        return seq.output_tokens * self.noise(seq.id)

    def observe(self, seq: Sequence) -> None:
        pass


class HistoryPredictor:
    def __init__(self, edges: list[int] | tuple[int, ...]) -> None:
        self.edges = list(edges)
        self.sums = [0.0] * (len(self.edges) + 1)
        self.counts = [0] * (len(self.edges) + 1)
        self.total = 0.0
        self.n = 0

    def bucket(self, prompt_tokens: int) -> int:
        """Bucket ``i`` holds prompts in ``[edges[i-1], edges[i])``."""
        return bisect.bisect_right(self.edges, prompt_tokens)

    def predict(self, seq: Sequence) -> float:
        b = self.bucket(seq.prompt_tokens)
        if self.counts[b]:
            return self.sums[b] / self.counts[b]
        return self.total / self.n if self.n else 0.0

    def observe(self, seq: Sequence) -> None:
        b = self.bucket(seq.prompt_tokens)
        self.sums[b] += seq.output_tokens
        self.counts[b] += 1
        self.total += seq.output_tokens
        self.n += 1


def make_predictor(name: str, *, error: float = 0.5, seed: int = 0,
                   edges: list[int] | tuple[int, ...] = DEFAULT_EDGES) -> Predictor:
    if name == "oracle":
        return OraclePredictor()
    if name == "noisy":
        return NoisyPredictor(error, seed)
    if name == "history":
        return HistoryPredictor(edges)
    raise UserError(f"unknown length predictor {name!r}; choose one of: oracle, noisy, history")
