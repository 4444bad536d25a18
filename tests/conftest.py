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


@pytest.fixture
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared is not present")
    return SHARED
