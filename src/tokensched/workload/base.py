"""The result of loading or generating traffic: requests plus what we know about where they came from.

A :class:`Workload` keeps the human-readable ``notes`` next to the requests so that nothing a loader or a
transform did to the data (rows skipped, arrivals invented, a window cut) is silent: the CLI prints them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tokensched.request import Request


@dataclass
class Workload:
    """Requests sorted by arrival, with their provenance.

    ``engine_hints`` carries serving settings that came with the trace (the replay JSON's ``config``:
    ``max_num_seqs``, ``max_num_batched_tokens``, ``kv_blocks``, ``block_size``, ``tensor_parallelism``,
    ``model`` and ``model_config``); a simulator may use them as defaults, never as overrides.
    """

    requests: list[Request]
    source: str
    format: str
    notes: list[str] = field(default_factory=list)
    engine_hints: dict[str, object] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.requests)

    @property
    def span_s(self) -> float:
        """Time from the first to the last arrival (0 for an offline batch)."""
        if not self.requests:
            return 0.0
        return self.requests[-1].arrival_s - self.requests[0].arrival_s

    @property
    def rate(self) -> float | None:
        """Mean arrival rate ``n / span`` in requests per second; None for an offline batch."""
        span = self.span_s
        return len(self.requests) / span if span > 0 else None
