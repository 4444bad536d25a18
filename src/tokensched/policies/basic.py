"""The three batch-formation baselines: vLLM V1, Sarathi-Serve and Orca."""

from __future__ import annotations

from tokensched.policies.base import SchedulerPolicy


class VLLMPolicy(SchedulerPolicy):
    """vLLM V1: running first in admission order, then waiting FCFS; chunked prefill within the budget."""

    name = "vllm"


class SarathiPolicy(SchedulerPolicy):
    """Sarathi-Serve stall-free batching: every decode first, then prefill chunks fill a small fixed budget."""

    name = "sarathi"
    decodes_first = True


class OrcaPolicy(SchedulerPolicy):
    """Orca iteration-level batching: whole prompts only, so a long prefill stalls the decodes batched with it."""

    name = "orca"
    chunked_prefill = False
