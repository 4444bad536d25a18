"""Embedded default workloads, fitted to public production traces.

The length distributions are empirical quantile tables (p0, p1, p5, p10, p25, p50, p75, p90, p95, p99,
p99.9, p100) computed once by ``scripts/fit_presets.py`` from the traces in ``../shared/traces`` and
embedded here as published summary statistics: no trace rows are copied. Inputs and outputs are drawn
independently (the traces' input/output correlation is not modelled).
"""

from __future__ import annotations

from dataclasses import dataclass

from tokensched.errors import UserError
from tokensched.workload.synthetic import PrefixGroups, WorkloadSpec, empirical, gamma, poisson


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    source: str
    spec: WorkloadSpec


# Azure LLM inference trace 2023, conversation service: AzureLLMInferenceTrace_conv.csv
# (via vidur_processed/splitwise_conv.csv), fitted by scripts/fit_presets.py.
# 19,366 requests over 3502 s = 5.53 req/s; inter-arrival CV 1.09.
CHAT_INPUT = ((0.0, 2), (0.01, 29), (0.05, 181), (0.10, 207), (0.25, 396), (0.50, 1020), (0.75, 1189),
              (0.90, 2734), (0.95, 4083), (0.99, 4142), (0.999, 6179), (1.0, 14050))  # mean 1155
CHAT_OUTPUT = ((0.0, 7), (0.01, 16), (0.05, 41), (0.10, 54), (0.25, 85), (0.50, 129), (0.75, 395),
               (0.90, 424), (0.95, 451), (0.99, 601), (0.999, 954), (1.0, 1000))  # mean 211
CHAT_RATE, CHAT_CV = 5.53, 1.09

# Azure LLM inference trace 2023, code service: AzureLLMInferenceTrace_code.csv
# (via vidur_processed/splitwise_code.csv), fitted by scripts/fit_presets.py.
# 8,819 requests over 3436 s = 2.57 req/s. The whole-trace inter-arrival CV is 13.2, but it comes from 45
# idle gaps longer than 10 s (up to 217 s) out of 8,818; a gamma renewal process with CV 13.2 would put
# almost all of its time into a handful of gaps, so a 1000-request run would have a rate that swings by
# ~40 %. We use the median CV inside 1-minute windows, 3.16 (rounded to 3.2): the local burstiness a
# scheduler sees. The long idle periods are not reproduced; replay the trace itself to study them.
CODE_INPUT = ((0.0, 3), (0.01, 17), (0.05, 75), (0.10, 147), (0.25, 578), (0.50, 1469), (0.75, 2744),
              (0.90, 5188), (0.95, 7303), (0.99, 7436), (0.999, 7437), (1.0, 7437))  # mean 2048
CODE_OUTPUT = ((0.0, 6), (0.01, 6), (0.05, 6), (0.10, 7), (0.25, 9), (0.50, 13), (0.75, 24),
               (0.90, 55), (0.95, 90), (0.99, 251), (0.999, 825), (1.0, 1899))  # mean 27.9
CODE_RATE, CODE_CV = 2.57, 3.2

# Mooncake (Kimi) FAST'25 conversation trace: mooncake/conversation_trace.jsonl, fitted by
# scripts/fit_presets.py. 12,031 requests over 3537 s = 3.40 req/s. Timestamps are bucketed to ~3 s, so
# the inter-arrival CV (3.03 measured) is an artefact; we use Poisson arrivals.
# Ideal (infinite-cache) prefix hit rate 37.4 % at 512-token blocks, token weighted; every request shares
# block 0. Modelled as 24 Zipf(1)-popular system prompts of 7168 tokens (14 blocks of 512) whose first
# 512 tokens are common to all: chosen by sweeping (groups, length) with
# tokensched.workload.transform.ideal_prefix_hit_rate on generated workloads; gives 0.36-0.39 at
# 1000 requests over seeds 0-5 and 0.38 at 5000.
LONG_INPUT = ((0.0, 891), (0.01, 894), (0.05, 901), (0.10, 964), (0.25, 2306), (0.50, 6909), (0.75, 15367),
              (0.90, 27367), (0.95, 39550), (0.99, 85400), (0.999, 121301), (1.0, 126195))  # mean 12035
LONG_OUTPUT = ((0.0, 1), (0.01, 3), (0.05, 10), (0.10, 24), (0.25, 156), (0.50, 350), (0.75, 472),
               (0.90, 597), (0.95, 698), (0.99, 1119), (0.999, 2000), (1.0, 2000))  # mean 343
LONG_RATE = 3.40
LONG_GROUPS, LONG_SYSTEM_PROMPT, LONG_COMMON = 24, 7168, 512
LONG_MAX_TOTAL = 131072

PRESETS: dict[str, Preset] = {
    "chat": Preset(
        "chat",
        "conversational chat: 5.53 req/s (gamma CV 1.09), input p50 1020, output p50 129",
        "Azure LLM inference trace 2023, conversation (Patel et al., Splitwise, ISCA 2024; CC-BY-4.0)",
        WorkloadSpec(gamma(CHAT_RATE, CHAT_CV), empirical(CHAT_INPUT), empirical(CHAT_OUTPUT)),
    ),
    "code": Preset(
        "code",
        "code completion: 2.57 req/s, bursty (gamma CV 3.2), input p50 1469, output p50 13",
        "Azure LLM inference trace 2023, code (Patel et al., Splitwise, ISCA 2024; CC-BY-4.0)",
        WorkloadSpec(gamma(CODE_RATE, CODE_CV), empirical(CODE_INPUT), empirical(CODE_OUTPUT)),
    ),
    "long-context": Preset(
        "long-context",
        "long prompts with heavy prefix reuse: 3.40 req/s Poisson, input p50 6909 / p99 85400, ~37 % ideal hits",
        "Mooncake conversation trace (Qin et al., Mooncake, FAST 2025; Apache-2.0)",
        WorkloadSpec(poisson(LONG_RATE), empirical(LONG_INPUT), empirical(LONG_OUTPUT),
                     prefix=PrefixGroups(LONG_GROUPS, LONG_SYSTEM_PROMPT, "zipf", 1.0, LONG_COMMON),
                     max_total_tokens=LONG_MAX_TOTAL),
    ),
}

default_preset = "chat"


def get_preset(name: str) -> Preset:
    """The preset called ``name``; a UserError lists the known ones otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise UserError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}") from None
