"""Layered prefill (Lee et al., "From Tokens to Layers: Redefining Stall-Free Scheduling for LLM Serving with
Layered Prefill", arXiv 2510.08055; code: github.com/scale-snu/layered-prefill, ``staged_prefill_schedule``).

Why: chunked prefill (Sarathi) keeps decodes stall-free by cutting prompts along the token axis, but every
chunk runs the whole model again, so an MoE model re-reads the experts its chunk touches once per chunk.
Layered prefill cuts along the layer axis instead: the model is split into contiguous layer groups and a
prompt passes one group per iteration, whole (no token chunking), while every decode runs through all layers
in every iteration. A prompt therefore crosses each layer once, and decodes never stall.

The rule, as in the authors' implementation:

* Every iteration runs every running decode (no token budget for decodes; ``--max-num-seqs`` still caps the
  batch).
* At most one *cohort* of prompts is in flight. When none is, waiting prompts are admitted whole, in queue
  order, while their total stays within the token budget (``--max-batched-tokens``, default 8192 as in the
  authors' runs); a prompt longer than the budget is admitted alone, whole.
* The cohort's ``W`` new tokens take ``stages = min(groups, 2**ceil(log2(ceil(W / group_tokens))))``
  iterations (``adaptive``; the authors' ``get_num_stages``: with 16 groups, <= 512 tokens in 1 iteration,
  <= 1024 in 2, <= 2048 in 4, <= 4096 in 8, else 16) so that each iteration carries about ``group_tokens``
  prompt tokens' worth of layer work; ``adaptive = false`` always uses ``groups`` stages. Each stage passes
  ``1 / stages`` of the layers; the prompt's first token is sampled at the end of the last stage.
* Preempting a cohort member drops it from the cohort; it is re-admitted later like any waiting request.

Default ``groups = 16``: the authors' published runs use ``--num-stages 16`` (Qwen3-30B-A3B, 48 layers, with a
budget of 8192 against chunked prefill's 512), so a full cohort advances 512 tokens' worth per iteration, the
same prefill work per iteration as the chunked baseline: the comparison isolates the axis of the cut.

Scheduler-core support (generic): ``SchedulerPolicy.adjust_batch`` lets this policy mark the admitted
prompts' first pass as partial (``ScheduledBatch.layers``: tokens and layer fraction per entry; ``num_new`` 0
so the pass completes nothing) and append the in-flight cohort in later iterations (its KV slots were
allocated at admission, so it bypasses the budget loop); the last pass carries ``num_new`` = the prompt so
the engine completes it and samples. The timing model prices partial passes through
``BatchShape.prefill_fraction``. The cohort is kept here and in ``Sequence.policy_state``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from tokensched.policies.base import SchedulerPolicy
from tokensched.sequence import Sequence, SeqStatus

if TYPE_CHECKING:
    from tokensched.kv_cache import KVCacheManager
    from tokensched.scheduler import ScheduledBatch


class LayeredOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    groups: int = Field(16, ge=1, le=1024, description="layer groups (most iterations a cohort's prefill takes)")
    group_tokens: int = Field(512, ge=1, description="prompt tokens' worth of layer work per iteration (adaptive)")
    adaptive: bool = Field(True, description="fewer stages for small cohorts (the authors' get_num_stages)")


@dataclass(eq=False)
class Cohort:
    """Prompts admitted together that pass the layer groups together."""

    members: list[Sequence]
    stages: int
    stage: int = 0  # the stage run by the latest formed batch
    tokens: dict[int, int] = field(default_factory=dict)  # id(seq) -> prompt tokens it computes


def num_stages(tokens: int, groups: int, group_tokens: int, adaptive: bool = True) -> int:
    """Iterations a cohort of ``tokens`` new prompt tokens takes (see the module docstring)."""
    if not adaptive:
        return groups
    chunks = max(1, -(-tokens // group_tokens))
    return min(groups, 1 << (chunks - 1).bit_length())


class LayeredPolicy(SchedulerPolicy):
    """Layered prefill: whole prompts advance one layer group per iteration; decodes run every iteration."""

    name = "layered"
    Options = LayeredOptions
    chunked_prefill = False  # whole prompts: the cut is along layers, not tokens
    adjusts_batch = True

    def __init__(self, options: BaseModel | None = None) -> None:
        super().__init__(options)
        self.cohort: Cohort | None = None

    def running_order(self, running: list[Sequence]) -> list[Sequence]:
        """Everything but the cohort in flight (its passes are added by ``adjust_batch``)."""
        co = self.cohort
        if co is None:
            return running
        return [s for s in running if s.policy_state is not co]

    def token_budget(self, budget: int, running: list[Sequence], kv: KVCacheManager) -> int:
        """Room for every decode, plus a cohort's prompts when none is in flight (a longer head prompt: itself)."""
        co = self.cohort
        own = sum(s.num_tokens - s.num_computed for s in self.running_order(running))  # the decodes
        if co is not None:
            return own  # no admission while a cohort passes the layers
        if len(self):
            budget = max(budget, self.peek().num_tokens)
        return own + budget

    def requeue(self, seq: Sequence) -> None:
        co = self.cohort
        if co is not None and seq.policy_state is co:
            co.members.remove(seq)
            seq.policy_state = None
            if not co.members:
                self.cohort = None
        super().requeue(seq)

    def adjust_batch(self, batch: ScheduledBatch) -> None:
        co = self.cohort
        seqs, news = batch.seqs, batch.num_new
        if co is not None:  # the previous iteration ran stage co.stage: run the next one
            co.stage += 1
            final = co.stage == co.stages - 1
            frac = 1.0 / co.stages
            layers = batch.layers if batch.layers is not None else [(n, 1.0) for n in news]
            for s in co.members:
                assert s.status is SeqStatus.RUNNING
                w = co.tokens[id(s)]
                seqs.append(s)
                news.append(w if final else 0)
                layers.append((w, frac))
                if final:
                    s.policy_state = None
            batch.layers = layers
            if final:
                self.cohort = None
            return
        k = batch.admitted
        if not k:
            return
        first = len(seqs) - k
        total = sum(news[first:])
        o = self.options
        stages = num_stages(total, o.groups, o.group_tokens, o.adaptive)
        if stages == 1:
            return  # a small cohort passes all layers at once: an ordinary prefill
        co = self.cohort = Cohort(seqs[first:], stages)
        frac = 1.0 / stages
        layers = [(n, 1.0) for n in news]
        for i in range(first, len(seqs)):
            s = seqs[i]
            s.policy_state = co
            co.tokens[id(s)] = news[i]
            layers[i] = (news[i], frac)
            news[i] = 0
        batch.layers = layers
