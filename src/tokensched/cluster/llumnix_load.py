"""Llumnix's load metric (virtual usage, freeness), its options, and its dispatch rule.

Llumnix (Sun et al., OSDI'24; ``../shared/reference/papers.md`` #97) folds every scheduling goal into one number
per instance. Each instance's *virtual usage* is

* the KV blocks its requests hold now (physical usage),
* plus the blocks its queued requests need (so a queue that cannot start makes the instance look full, which is
  what triggers de-fragmentation: running requests migrate out to make room for the head of the line),
* plus ``priority_headroom_blocks`` if any running or queued request has a priority below
  ``high_priority_threshold`` (lower value = more important, as in vLLM), so fewer normal requests share an
  instance with important ones (and normal ones migrate out of it),
* or infinity for an instance being drained (it takes no new work and migrates everything out).

``freeness = (capacity - virtual usage) / max(batch size, 1)``, in KV blocks per running request: how many more
decode steps of blocks each request has before memory runs out. New requests go to the freest instance, and the
migration scheduler pairs the least free instance (source) with the freest (destination). The released code
calls the same quantity ``remaining_steps`` (``llumnix/load_computation.py``, default dispatch and migration load
metric); its defaults are kept here where they exist (``llumnix/config/default.py``: polling interval 0.05 s,
migrate-out threshold 3.0, at most 3 migration stages, last stage at <= 16 blocks, request policy ``SR``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from tokensched.cluster.routers import ReplicaView, Router
from tokensched.request import Request
from tokensched.units import parse_duration


class LlumnixOptions(BaseModel):
    """Knobs of ``--router llumnix`` (``--router-option KEY=VALUE`` or ``router_options:`` in YAML)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # load metric
    queue_demand: Literal["all", "head"] = Field(
        "all", description="queued demand in virtual usage: every queued request, or the head of the line only")
    priority_headroom_blocks: int = Field(0, ge=0,
                                          description="blocks reserved on an instance serving high-priority requests")
    high_priority_threshold: int = Field(0, description="priority < this is high priority (lower = more important)")
    # migration
    migration: bool = Field(True, description="live-migrate running requests (False: dispatch only)")
    interval_s: float = Field(0.05, gt=0, description="rebalancing period (Llumnix polling interval 0.05 s)")
    migrate_out_threshold: float = Field(3.0, description="an instance with freeness below this is a source")
    migrate_in_threshold: float = Field(3.0, description="an instance with freeness above this is a destination")
    max_concurrent: int = Field(1, ge=1, description="migrations in flight per instance (in or out)")
    pair_policy: Literal["defrag", "balanced"] = Field(
        "defrag", description="defrag: every source/destination pair migrates (Llumnix default); balanced: only "
        "if the source stays less free than the destination and the destination does not become a source")
    request_policy: Literal["SR", "LR", "LCFS"] = Field(
        "SR", description="which running request migrates: SR fewest tokens, LR most, LCFS last admitted")
    max_stages: int = Field(3, ge=1, description="copy stages before a migration gives up (Llumnix 3)")
    last_stage_max_blocks: int = Field(16, ge=1, description="stop and copy once this few blocks remain")
    link_gb_s: float | None = Field(None, gt=0, description="KV copy bandwidth per pair, GB/s (default: topology)")
    network_gb_s: float = Field(25.0, gt=0, description="cross-node bandwidth per GPU, GB/s (200 Gb/s NIC)")
    gpus_per_node: int = Field(8, ge=1, description="replicas on the same node copy over NVLink")
    stage_overhead_s: float = Field(0.0, ge=0, description="fixed cost per copy stage (handshake)")
    drain_at: dict[int, float] = Field(default_factory=dict, description="{replica: seconds}: start draining")

    @field_validator("interval_s", "stage_overhead_s", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> Any:
        return parse_duration(v)

    @field_validator("drain_at", mode="before")
    @classmethod
    def _drain_times(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {k: parse_duration(t) for k, t in v.items()}
        return v

    @field_validator("migrate_in_threshold")
    @classmethod
    def _thresholds(cls, v: float, info: ValidationInfo) -> float:
        out = info.data.get("migrate_out_threshold")
        if out is not None and v < out:
            raise ValueError(f"must be >= migrate_out_threshold ({out:g}): an instance cannot be both a source "
                             "and a destination")
        return v


@dataclass(slots=True)
class InstanceLoad:
    """One instance's load report, in KV blocks."""

    capacity: int
    used: int  # blocks referenced by running requests
    demand: int  # blocks the counted queued requests need
    headroom: int  # priority headroom
    batch: int  # running requests
    draining: bool = False

    @property
    def virtual_usage(self) -> float:
        return math.inf if self.draining else float(self.used + self.demand + self.headroom)

    @property
    def freeness(self) -> float:
        if self.draining:
            return -math.inf
        return (self.capacity - self.virtual_usage) / max(self.batch, 1)

    def freeness_after(self, blocks: int, requests: int, headroom: int = 0) -> float:
        """Freeness if ``requests`` running requests holding ``blocks`` (and ``headroom``) joined (or left, < 0)."""
        if self.draining:
            return -math.inf
        free = self.capacity - (self.used + blocks + self.demand + self.headroom + headroom)
        return free / max(self.batch + requests, 1)


def is_high(req: Request, opts: LlumnixOptions) -> bool:
    return req.priority < opts.high_priority_threshold


class LlumnixRouter(Router):
    """Llumnix: freest instance by virtual usage; live migration and rebalancing (see docs/cluster.md)."""

    name = "llumnix"
    Options = LlumnixOptions

    def __init__(self, options: BaseModel | None, views: list[ReplicaView], seed: int = 0) -> None:
        super().__init__(options, views, seed)
        # Load reports, set by LlumnixSimulator every report_interval and updated with the router's own
        # dispatches in between. Without them (another simulator), freeness comes from the replica views.
        self.loads: list[InstanceLoad] | None = None

    def route(self, req: Request, views: list[ReplicaView], now: float) -> int:
        loads = self.loads
        if loads is None:
            loads = [InstanceLoad(v.kv_blocks, v.kv_used_blocks, 0, 0, v.running) for v in views]
        best, best_f = -1, -math.inf
        for i, ld in enumerate(loads):
            f = ld.freeness
            if not ld.draining and (best < 0 or f > best_f):
                best, best_f = i, f
        if best < 0:
            raise RuntimeError("every replica is draining")  # drain() refuses to drain the last one
        if self.loads is not None:  # the router knows what it just sent there
            ld = self.loads[best]
            if self.options.queue_demand == "all" or ld.demand == 0:  # "head": only a new head of the line
                ld.demand += -(-req.prompt_tokens // views[best].block_size)
            if is_high(req, self.options):
                ld.headroom = self.options.priority_headroom_blocks
        return best
