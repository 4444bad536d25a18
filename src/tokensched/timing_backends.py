"""Timing backends by name: what ``--timing`` / ``SimConfig.timing`` selects.

Each entry builds a :class:`~tokensched.timing.TimingModel` for one model on ``tp`` GPUs of one type. The
``measured`` backend needs the optional ``aiconfigurator-core`` dependency and covers fewer GPUs than the
roofline; every reason it cannot price a combination is a one-line :class:`UserError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from tokensched.errors import UserError
from tokensched.hardware import GPU
from tokensched.models import ModelConfig
from tokensched.timing import RooflineTiming, TimingModel


def _roofline(model: ModelConfig, gpu: GPU, tp: int) -> TimingModel:
    return RooflineTiming(model, gpu, tp)


def _measured(model: ModelConfig, gpu: GPU, tp: int) -> TimingModel:
    from tokensched.timing_measured import MeasuredTiming  # imports aiconfigurator-core lazily

    return MeasuredTiming(model, gpu, tp)


@dataclass(frozen=True, slots=True)
class TimingBackend:
    name: str
    description: str
    factory: Callable[[ModelConfig, GPU, int], TimingModel]


TIMING_BACKENDS: dict[str, TimingBackend] = {
    b.name: b
    for b in (
        TimingBackend("roofline", "per-operator roofline (data-sheet peaks x efficiencies); any GPU, model, tp",
                      _roofline),
        TimingBackend("measured", "sum of measured kernel latencies (NVIDIA AIConfigurator tables, vLLM); "
                      "a100-80gb, h100, h200, l40s, b200 at tp 1/2/4/8; needs the 'measured' extra", _measured),
    )
}


def get_timing(name: str, model: ModelConfig, gpu: GPU, tp: int) -> TimingModel:
    """The timing model ``name`` for ``model`` on ``tp`` x ``gpu``; a UserError names what is wrong."""
    backend = TIMING_BACKENDS.get(name.strip().lower())
    if backend is None:
        raise UserError(f"unknown timing backend {name!r}; choose one of: {', '.join(TIMING_BACKENDS)}")
    return backend.factory(model, gpu, tp)


__all__ = ["TIMING_BACKENDS", "TimingBackend", "get_timing"]
