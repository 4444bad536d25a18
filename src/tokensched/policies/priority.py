"""Request-priority scheduling, as the two open engines implement it (their semantics differ).

* ``priority`` — vLLM V1 ``--scheduling-policy priority`` (``vllm/v1/core/sched/request_queue.py``, the
  preemption branch of ``scheduler.py``; PR #5958). A request's ``priority`` is an integer, *lower is more
  important* (default 0). The waiting queue is a heap on ``(priority, arrival_time, request id)``; a preempted
  request goes back into that heap. When a running request cannot get KV blocks, the victim is
  ``max(running, key=(priority, arrival_time))``: the least important, latest-arrived. vLLM never preempts a
  running request to admit a waiting one, however important: the waiting request waits for a seat or room.
  No knobs.
* ``sglang-priority`` — SGLang ``--enable-priority-scheduling`` (``schedule_policy.py``). By default *higher
  values are more important* (``low_values_first`` = ``--schedule-low-priority-values-first`` flips it). The
  waiting queue is sorted by priority, then arrival. When a waiting request cannot start (no seat or no KV
  room), it may preempt running requests (``PrefillAdder.preempt_to_schedule``): least important first,
  latest-arrived first among equals, only those it beats by *more than* ``preemption_threshold``
  (``--priority-scheduling-preemption-threshold``, default 10), and only if they free enough room together
  (all or nothing). ``preemption: false`` is ``--disable-priority-preemption``. When decodes run out of KV,
  SGLang's ``retract_decode`` is *not* priority-aware: it retracts the request with the fewest output tokens,
  the longest prompt among equals; so is the victim here.

Both policies are ``monotone``: priorities and arrival times do not change while a request waits, and the
room a displacement would free can only shrink while decodes consume blocks.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tokensched.policies.keyed import KeyedQueuePolicy
from tokensched.sequence import Sequence


class VLLMPriorityPolicy(KeyedQueuePolicy):
    """vLLM priority: lower value first, then arrival; KV victim = least important, latest; never displaces."""

    name = "priority"

    def sort_key(self, seq: Sequence) -> Any:
        r = seq.request
        return (r.priority, r.arrival_s, r.id)

    def pick_victim(self, running: list[Sequence]) -> Sequence:
        return max(running, key=lambda s: (s.request.priority, s.request.arrival_s))


class SGLangPriorityOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    low_values_first: bool = Field(False, description="lower priority values are more important "
                                   "(SGLang --schedule-low-priority-values-first); default: higher first")
    preemption_threshold: int = Field(10, ge=0, description="an arriving request preempts a running one only if "
                                      "it is more important by more than this (SGLang default 10)")
    preemption: bool = Field(True, description="allow priority preemption (false = --disable-priority-preemption)")


class SGLangPriorityPolicy(KeyedQueuePolicy):
    """SGLang priority: higher value first (option), threshold-gated preemption of less important running requests."""

    name = "sglang-priority"
    Options = SGLangPriorityOptions

    def __init__(self, options: BaseModel | None = None) -> None:
        super().__init__(options)
        # SGLang's priority_sign: the sort key is sign * priority, so smaller keys are more important.
        self.sign = 1 if self.options.low_values_first else -1

    def importance(self, seq: Sequence) -> int:
        """Larger is more important, whatever the convention."""
        return -self.sign * seq.request.priority

    def sort_key(self, seq: Sequence) -> Any:
        r = seq.request
        return (self.sign * r.priority, r.arrival_s, r.id)

    def pick_victim(self, running: list[Sequence]) -> Sequence:
        # retract_decode: fewest generated tokens first, then the longest prompt (ties: latest admitted)
        return min(reversed(running), key=lambda s: (s.num_generated, -s.prompt_tokens))

    def displace(self, candidate: Sequence, running: list[Sequence]) -> Sequence | None:
        if not self.options.preemption or not running:
            return None
        mine = self.importance(candidate)
        threshold = self.options.preemption_threshold
        # least important first; among equals the latest arrival first (SGLang: latest queue entry)
        order = sorted(self.displaceable(running), key=lambda s: (self.importance(s), -s.request.arrival_s))
        preemptible = []
        for s in order:
            if mine - self.importance(s) <= threshold:
                break
            preemptible.append(s)
        return self.room_victim(candidate, preemptible)
