"""Length-aware scheduling: shortest-job-first (``sjf``) and shortest-remaining-first (``srpt``).

Queueing theory says serving short jobs first minimises mean latency; LLM serving cannot know a request's
output length, so these policies order by a *prediction* (``predictor`` option, see ``length_predictors``):

* ``sjf`` — non-preemptive: the waiting queue is ordered by predicted output length; a running request is
  never displaced (KV shortages still preempt the last admitted one, as in vLLM).
* ``srpt`` — preemptive: the waiting queue is ordered by predicted *remaining* output (prediction minus tokens
  already generated, floored at 0, so a preempted request resumes by what it has left). When a waiting
  request cannot start (no seat or no KV room), it displaces running requests with the longest predicted
  remaining output, but only those longer than its own by more than ``margin`` tokens, and only if together
  they free enough room (all or nothing, see ``keyed.py``). On a KV shortage the victim is the running
  request with the longest predicted remaining output.

Starvation: a long request can wait forever behind a stream of short ones. ``aging_per_s`` lowers a waiting
request's effective key by that many tokens per second of waiting since its arrival:
``key = predicted - aging_per_s * (now - arrival)``. Every waiting request ages at the same rate, so the *order*
this induces is that of ``predicted + aging_per_s * arrival``, which does not change with time; that is the
stored key (SRPT compares running requests by the same expression so that a displaced request re-enters
behind the one that displaced it, which keeps displacement free of cycles).

Monotone (macro-steps allowed): predictions are made once, when a request arrives (as a deployed predictor
runs on the prompt), so waiting keys are fixed; the history predictor learns only at completions, which end
macro-steps anyway; and under SRPT a refused displacement stays refused while decodes run, because running
requests' remaining predictions only shrink. ``tests/test_policies_length.py`` checks macro-steps against
single steps bit for bit with aging and the history predictor on.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from tokensched.policies.keyed import KeyedQueuePolicy
from tokensched.policies.length_predictors import DEFAULT_EDGES, Predictor, make_predictor
from tokensched.sequence import Sequence


class LengthOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    predictor: Literal["oracle", "noisy", "history"] = Field(
        "oracle", description="output-length predictor: oracle (true length), noisy (oracle x lognormal), history")
    error: float = Field(0.5, ge=0, le=5, description="noisy: sigma of the lognormal multiplicative error")
    predictor_seed: int = Field(0, ge=0, description="noisy: seed; each request's draw depends on it and its id")
    bucket_edges: list[int] = Field(default_factory=lambda: list(DEFAULT_EDGES),
                                    description="history: prompt-length bucket edges (tokens, increasing)")
    aging_per_s: float = Field(0.0, ge=0, description="tokens taken off a waiting request's key per second waited")

    @field_validator("error", "predictor_seed")
    @classmethod
    def _noisy_only(cls, v: Any, info: ValidationInfo) -> Any:
        if info.data.get("predictor") != "noisy":
            raise ValueError("applies only to predictor=noisy")
        return v

    @field_validator("bucket_edges")
    @classmethod
    def _edges(cls, v: list[int], info: ValidationInfo) -> list[int]:
        if info.data.get("predictor") != "history":
            raise ValueError("applies only to predictor=history")
        if any(e < 1 for e in v) or any(b <= a for a, b in zip(v, v[1:])):
            raise ValueError("must be positive and strictly increasing")
        return v


class SRPTOptions(LengthOptions):
    margin: float = Field(0.0, ge=0, description="displace only running requests predicted longer by more than this")


class SJFPolicy(KeyedQueuePolicy):
    """Shortest (predicted) job first, non-preemptive; optional aging against starvation."""

    name = "sjf"
    Options = LengthOptions

    def __init__(self, options: BaseModel | None = None) -> None:
        super().__init__(options)
        o = self.options
        self.predictor: Predictor = make_predictor(o.predictor, error=o.error, seed=o.predictor_seed,
                                                   edges=o.bucket_edges)
        self.aging = o.aging_per_s

    def predicted(self, seq: Sequence) -> float:
        """The prediction made when ``seq`` arrived (kept in ``seq.policy_state``)."""
        p = seq.policy_state
        if p is None:
            p = seq.policy_state = self.predictor.predict(seq)
        return p  # type: ignore[return-value]

    def work(self, seq: Sequence) -> float:
        """The length this policy orders by: the predicted output."""
        return self.predicted(seq)

    def key(self, seq: Sequence) -> float:
        """``work - aging * (now - arrival)`` shifted by ``aging * now``, the same shift for every request."""
        return self.work(seq) + self.aging * seq.request.arrival_s

    def sort_key(self, seq: Sequence) -> Any:
        return (self.key(seq), seq.request.arrival_s, seq.id)

    def add(self, seq: Sequence, now: float) -> None:
        self.predicted(seq)  # predict on arrival, with the history known now
        super().add(seq, now)

    def on_finish(self, seq: Sequence, now: float) -> None:
        self.predictor.observe(seq)


class SRPTPolicy(SJFPolicy):
    """Shortest (predicted) remaining output first, preempting longer running requests past a margin."""

    name = "srpt"
    Options = SRPTOptions

    def work(self, seq: Sequence) -> float:
        return max(self.predicted(seq) - seq.num_generated, 0.0)

    def _longest_first(self, running: list[Sequence]) -> list[Sequence]:
        # longest remaining first; among equals the latest arrival first
        return sorted(running, key=lambda s: (-self.key(s), -s.request.arrival_s))

    def pick_victim(self, running: list[Sequence]) -> Sequence:
        return self._longest_first(running)[0]

    def displace(self, candidate: Sequence, running: list[Sequence]) -> Sequence | None:
        mine = self.key(candidate) + self.options.margin
        longer = []
        for s in self._longest_first(self.displaceable(running)):
            if self.key(s) <= mine:
                break
            longer.append(s)
        return self.room_victim(candidate, longer)
