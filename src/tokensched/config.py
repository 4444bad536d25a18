"""The simulation's configuration: one validated tree, loadable from YAML with the CLI's flag names.

Every field has a documented default and limits; a bad value becomes a one-line :class:`UserError` that
names the field and, for a YAML file, the file and line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tokensched.errors import UserError, read_user_text
from tokensched.units import parse_duration


class SimConfig(BaseModel):
    """What to simulate. Keys match the ``tokensched simulate`` flags (``max-num-seqs`` or ``max_num_seqs``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    workload: str = Field("chat", description="preset name or trace file")
    model: str = Field("llama-3.1-8b", description="catalog name or path to a Hugging Face config.json")
    gpu: str = Field("h100", description="GPU catalog name")
    tp: int = Field(1, ge=1, le=64, description="tensor-parallel degree")
    scheduler: str = Field("vllm", description="batch-formation / queueing policy")
    admission: str = Field("aggressive", description="admission regime: aggressive, conservative, ...")
    preemption: str = Field("recompute", description="preemption mode: recompute or swap")
    eviction: str = Field("lru", description="prefix-cache eviction: lru, lfu, priority")
    policy_options: dict[str, Any] = Field(default_factory=dict, description="knobs of the chosen policies")
    max_num_seqs: int = Field(256, ge=1, description="cap on running sequences")
    max_batched_tokens: int | None = Field(None, ge=1, description="token budget per iteration (policy default)")
    block_size: int = Field(16, ge=1, le=1024, description="tokens per KV block")
    kv_blocks: int | None = Field(None, ge=1, description="KV blocks per replica (default: from GPU memory)")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="fraction of GPU memory vLLM may use")
    prefix_caching: bool = Field(True, description="reuse cached prompt blocks across requests")
    cpu_kv_gb: float = Field(0.0, ge=0, description="CPU memory per replica for KV evicted from the GPU (0: none)")
    max_model_len: int | None = Field(None, ge=1, description="longest prompt+output (default: the model's)")
    qps: float | None = Field(None, gt=0, description="rescale arrivals to this mean rate")
    num_requests: int | None = Field(None, ge=1, description="take the first N requests")
    window: str | None = Field(None, description="START:END of a trace to keep, e.g. 10m:20m")
    seed: int = Field(0, ge=0, description="random seed for generated workloads")
    slo_ttft: float | None = Field(None, description="TTFT SLO (seconds or with units)")
    slo_tpot: float | None = Field(None, description="TPOT SLO (seconds or with units)")
    macro_steps: bool = Field(True, description="advance steady decode batches many iterations at once")
    # cluster (see docs/cluster.md)
    replicas: int = Field(1, ge=1, le=4096, description="identical replicas (ignored when 'cluster' is given)")
    router: str = Field("round-robin", description="how arrivals are spread over replicas")
    router_options: dict[str, Any] = Field(default_factory=dict, description="knobs of the router")
    report_interval: float = Field(0.0, description="seconds between replica load reports to the router")
    router_latency: float = Field(0.0, description="seconds the router takes per request")
    price_per_gpu_hour: float | None = Field(None, ge=0, description="USD per GPU-hour (single pool)")
    cluster: list[Any] | None = Field(None, description="pools: [{name, gpu, tp, replicas, ...}]")
    autoscaler: str = Field("none", pattern="^(none|load)$", description="replica autoscaler: none or load")
    autoscaler_options: dict[str, Any] = Field(default_factory=dict, description="knobs of the autoscaler")
    disagg: dict[str, Any] = Field(default_factory=dict, description="KV transfer options of prefill/decode pools")
    timing: str = Field("roofline", description="timing backend: roofline or measured (tokensched list timing)")
    timing_coefficients: str | None = Field(None, description="roofline coefficients JSON from `tokensched calibrate`")
    # programs (see docs/programs.md)
    program_policy: str = Field("request-fcfs", description="program-level policy for program workloads")
    program_options: dict[str, Any] = Field(default_factory=dict, description="knobs of the program policy")
    num_programs: int | None = Field(None, ge=1, description="programs to generate or replay (presets: 100)")
    program_rate: float | None = Field(None, gt=0, description="program arrivals per second (Poisson)")
    tool_scale: float = Field(1.0, gt=0, description="multiply every tool-call duration by this")
    program_deadline: float | None = Field(None, gt=0, description="deadline (s after arrival) of programs without one")
    program_hash_tokens: int = Field(16, ge=1, le=4096, description="tokens per prefix-cache hash of program calls "
                                     "(16: vLLM's block; larger is faster, reuse is floored to it)")

    @field_validator("program_policy")
    @classmethod
    def _program_policy(cls, v: str) -> str:
        from tokensched.programs.policies import PROGRAM_POLICIES

        if v.strip().lower() not in PROGRAM_POLICIES:
            raise ValueError(f"unknown program policy {v!r}; choose one of: {', '.join(PROGRAM_POLICIES)}")
        return v.strip().lower()

    @field_validator("slo_ttft", "slo_tpot", "report_interval", "router_latency", "program_deadline", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> Any:
        return None if v is None else parse_duration(v)

    @field_validator("timing")
    @classmethod
    def _timing_backend(cls, v: str) -> str:
        from tokensched.timing_backends import TIMING_BACKENDS

        if v.strip().lower() not in TIMING_BACKENDS:
            raise ValueError(f"unknown timing backend {v!r}; choose one of: {', '.join(TIMING_BACKENDS)}")
        return v.strip().lower()

    @property
    def is_cluster(self) -> bool:
        return self.replicas > 1 or bool(self.cluster) or self.autoscaler != "none"

    def window_bounds(self) -> tuple[float, float] | None:
        if self.window is None:
            return None
        parts = self.window.split(":")
        if len(parts) != 2:
            raise UserError(f"window must be START:END, got {self.window!r}", where="window")
        try:
            start = parse_duration(parts[0]) if parts[0] else 0.0
            end = parse_duration(parts[1]) if parts[1] else float("inf")
        except ValueError as e:
            raise UserError(str(e), where="window") from None
        if end <= start:
            raise UserError(f"window end must be after its start, got {self.window!r}", where="window")
        return start, end


FIELDS = tuple(SimConfig.model_fields)


def _normalize_key(key: str) -> str:
    return key.replace("-", "_")


def make_config(values: dict[str, Any], *, source: str = "option", lines: dict[str, int] | None = None) -> SimConfig:
    """Validate ``values`` into a SimConfig; errors name the field (and file line when known)."""
    try:
        return SimConfig(**values)
    except ValidationError as e:
        err = e.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else "?"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = f"unknown key; valid keys: {', '.join(k.replace('_', '-') for k in FIELDS)}"
        where = source
        if lines and field in lines:
            where = f"{source}:{lines[field]}"
        raise UserError(f"field '{field.replace('_', '-')}': {msg}", where=where) from None


def load_config_file(path: str | Path) -> tuple[dict[str, Any], dict[str, int]]:
    """Read a YAML config: returns (values keyed by field name, line of each key)."""
    p = Path(path)
    text = read_user_text(p, "config file")
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{p}:{mark.line + 1}" if mark else str(p)
        raise UserError(f"invalid YAML: {getattr(e, 'problem', e)}", where=where) from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise UserError("config must be a mapping of option names to values", where=str(p))
    lines: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for k, _ in node.value:
            lines[_normalize_key(str(k.value))] = k.start_mark.line + 1
    return {_normalize_key(str(k)): v for k, v in data.items()}, lines
