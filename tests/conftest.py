from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tokensched.timing import BatchShape

SHARED = Path(__file__).resolve().parents[2] / "shared"


class ConstantTiming:
    """Every iteration takes ``step_s`` plus ``per_token_s`` per batched token: easy to compute by hand."""

    def __init__(self, step_s: float = 1.0, per_token_s: float = 0.0) -> None:
        self.step_s = step_s
        self.per_token_s = per_token_s
        self.shapes: list[BatchShape] = []

    def iteration_time(self, batch: BatchShape) -> float:
        self.shapes.append(batch)
        return self.step_s + self.per_token_s * batch.num_tokens

    def decode_times(self, num_decodes: int, context_sum: int, steps: int) -> np.ndarray:
        return np.full(steps, self.step_s + self.per_token_s * num_decodes)


def run_policy(requests, policy, *, budget=100, blocks=100, bs=4, max_seqs=10, macro=True, **opts):
    """Run ``requests`` on one replica with scheduler ``policy`` (options ``opts``) and 1 s iterations."""
    from tokensched.engine import Replica
    from tokensched.kv_cache import KVCacheManager
    from tokensched.policies import get_scheduler
    from tokensched.scheduler import SchedulerConfig
    from tokensched.simulator import Simulator

    spec = get_scheduler(policy)
    rep = Replica(SchedulerConfig(max_seqs, budget), spec.factory(spec.factory.Options(**opts)),
                  KVCacheManager(blocks, bs), ConstantTiming(1.0), max_model_len=10_000, macro_steps=macro)
    Simulator(rep, requests).run()
    return {s.id: s for s in rep.metrics.finished}, rep


def times(done):
    """(first scheduled, first token, finish, preemptions) per request id."""
    return {k: (s.first_scheduled_s, s.first_token_s, s.finish_s, s.preemptions) for k, s in done.items()}


@pytest.fixture
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared is not present")
    return SHARED
