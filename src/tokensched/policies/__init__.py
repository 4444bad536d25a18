"""Policy registries: every policy is chosen by name, and its knobs come from ``policy_options``.

Adding a policy: write a small class in a module of this package, register it below with a one-line
description and its reference, and add a test. Nothing in the scheduler core changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from tokensched.errors import UserError
from tokensched.policies.admission import AggressiveAdmission, ConservativeAdmission
from tokensched.policies.base import AdmissionPolicy, NoOptions, SchedulerPolicy
from tokensched.policies.basic import OrcaPolicy, SarathiPolicy, VLLMPolicy
from tokensched.policies.batchllm import BatchLLMPolicy
from tokensched.policies.layered import LayeredPolicy
from tokensched.policies.past_future import PastFutureAdmission
from tokensched.policies.fairness import FastSwitchPolicy, VTCPolicy
from tokensched.policies.length import SJFPolicy, SRPTPolicy
from tokensched.policies.priority import SGLangPriorityPolicy, VLLMPriorityPolicy
from tokensched.policies.program import ProgramKeyPolicy


@dataclass(frozen=True, slots=True)
class SchedulerSpec:
    factory: type[SchedulerPolicy]
    description: str
    reference: str
    max_batched_tokens: int | None  # default token budget; None = max_model_len (no chunking needed)


SCHEDULERS: dict[str, SchedulerSpec] = {
    "vllm": SchedulerSpec(VLLMPolicy, VLLMPolicy.__doc__ or "", "vLLM V1 scheduler (v0.15)", 8192),
    "sarathi": SchedulerSpec(SarathiPolicy, SarathiPolicy.__doc__ or "", "Agrawal et al., Sarathi-Serve, OSDI'24", 512),
    "orca": SchedulerSpec(OrcaPolicy, OrcaPolicy.__doc__ or "", "Yu et al., Orca, OSDI'22", None),
    "priority": SchedulerSpec(VLLMPriorityPolicy, VLLMPriorityPolicy.__doc__ or "",
                              "vLLM V1 --scheduling-policy priority (PR #5958)", 8192),
    "sglang-priority": SchedulerSpec(SGLangPriorityPolicy, SGLangPriorityPolicy.__doc__ or "",
                                     "SGLang --enable-priority-scheduling (schedule_policy.py)", 8192),
    "sjf": SchedulerSpec(SJFPolicy, SJFPolicy.__doc__ or "", "shortest job first on predicted output length", 8192),
    "srpt": SchedulerSpec(SRPTPolicy, SRPTPolicy.__doc__ or "",
                          "shortest remaining predicted output first, preemptive", 8192),
    "vtc": SchedulerSpec(VTCPolicy, VTCPolicy.__doc__ or "", "Sheng et al., Fairness in Serving LLMs (VTC), OSDI'24", 8192),
    "fastswitch": SchedulerSpec(FastSwitchPolicy, (FastSwitchPolicy.__doc__ or "").split("\n")[0],
                                "Shen et al., FastSwitch, arXiv 2411.18424 (use with --preemption swap)", 8192),
    "batchllm": SchedulerSpec(BatchLLMPolicy, BatchLLMPolicy.__doc__ or "",
                              "Zheng et al., BatchLLM, arXiv 2412.03594 (offline batches)", 8192),
    "layered": SchedulerSpec(LayeredPolicy, LayeredPolicy.__doc__ or "",
                             "Lee et al., Layered Prefill, arXiv 2510.08055", 8192),
    "program": SchedulerSpec(ProgramKeyPolicy, ProgramKeyPolicy.__doc__ or "",
                             "order set by --program-policy (docs/programs.md); chosen automatically", 8192),
}

ADMISSIONS: dict[str, tuple[type[AdmissionPolicy], str]] = {
    "aggressive": (AggressiveAdmission, "vLLM / SGLang default"),
    "conservative": (ConservativeAdmission, "max-output reservation (FasterTransformer / early TGI style)"),
    "past-future": (PastFutureAdmission, "peak KV demand from past output lengths (LightLLM; Gong et al.)"),
}


def _choose(kind: str, name: str, names: list[str]) -> str:
    key = name.lower()
    if key not in names:
        raise UserError(f"unknown {kind} {name!r}; choose one of: {', '.join(names)}")
    return key


def get_scheduler(name: str) -> SchedulerSpec:
    return SCHEDULERS[_choose("scheduler", name, list(SCHEDULERS))]


def get_admission(name: str) -> type[AdmissionPolicy]:
    return ADMISSIONS[_choose("admission policy", name, list(ADMISSIONS))][0]


def split_options(options: dict[str, Any], components: dict[str, type[BaseModel]]) -> dict[str, BaseModel]:
    """Give each component the ``policy_options`` keys its Options model declares; reject the rest.

    ``components`` maps a component label (e.g. "scheduler vtc") to its Options class.
    """
    known: dict[str, str] = {}
    for label, model in components.items():
        for f in model.model_fields:
            known.setdefault(f, label)
    unknown = [k for k in options if k.replace("-", "_") not in known]
    if unknown:
        valid = ", ".join(sorted(known)) or "none"
        raise UserError(f"unknown policy option {unknown[0]!r} for the chosen policies; valid options: {valid}",
                        where="policy-options")
    out: dict[str, BaseModel] = {}
    for label, model in components.items():
        mine = {k.replace("-", "_"): v for k, v in options.items() if known.get(k.replace("-", "_")) == label}
        try:
            out[label] = model(**mine)
        except ValidationError as e:
            err = e.errors()[0]
            field = ".".join(str(x) for x in err["loc"])
            raise UserError(f"option '{field}' of {label}: {err['msg']}", where="policy-options") from None
    return out


__all__ = [
    "ADMISSIONS", "AdmissionPolicy", "NoOptions", "SCHEDULERS", "SchedulerPolicy", "SchedulerSpec",
    "get_admission", "get_scheduler", "split_options",
]

