"""The discrete-event core and the one-call ``simulate`` entry point.

Events are plain tuples in one heap keyed by ``(time, priority, sequence)``: the sequence number breaks
ties in insertion order, so a run is a pure function of its inputs. At equal times a step's end is handled
before arrivals, and arrivals before the next scheduling decision, so a batch formed at ``t`` sees every
request that arrived by ``t``. Arrivals are fed lazily from the sorted workload (one pending at a time),
and the next arrival's time is the horizon up to which a replica may macro-step.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass
from typing import Any, Callable

from tokensched.config import SimConfig
from tokensched.engine import Replica, Step
from tokensched.errors import UserError
from tokensched.hardware import GPU, get_gpu
from tokensched.kv_cache import KVCacheManager
from tokensched.metrics import MetricsRecorder, request_rows, summarize
from tokensched.models import ModelConfig, get_model
from tokensched.eviction import make_evictor
from tokensched.policies import get_admission, get_scheduler, split_options
from tokensched.preemption import get_preemption
from tokensched.request import Request
from tokensched.scheduler import SchedulerConfig
from tokensched.timing import TimingModel
from tokensched.timing_backends import get_timing

STEP_END, ARRIVAL, SCHEDULE = 0, 1, 2  # priorities at equal time

PCIE_EFFICIENCY = 0.8  # fraction of the host link large KV copies reach (as the swap model's default)
ACTIVATION_RESERVE_BYTES = 1.3e9  # per GPU: activations, CUDA graphs, allocator slack (see docs/timing.md)


def kv_block_bytes(model: ModelConfig, tp: int, block_size: int) -> int:
    """Bytes of one block's KV on one GPU (KV heads split across ``tp`` GPUs, replicated when tp exceeds them)."""
    kv_heads = -(-model.num_kv_heads // tp)
    return 2 * model.num_layers * kv_heads * model.head_dim * model.dtype_bytes * block_size


def kv_capacity_blocks(model: ModelConfig, gpu: GPU, tp: int, block_size: int, utilization: float) -> int:
    """KV blocks that fit beside the weights on each of ``tp`` GPUs, as vLLM sizes its cache.

    Per GPU: ``utilization * memory - weights / tp - activation reserve``, divided by the bytes of one
    block's KV on one GPU (KV heads are split across GPUs, replicated when ``tp`` exceeds them).
    """
    bytes_per_block = kv_block_bytes(model, tp, block_size)
    free = utilization * gpu.hbm_bytes - model.weight_bytes / tp - ACTIVATION_RESERVE_BYTES
    if free < bytes_per_block:
        raise UserError(
            f"model {model.name} ({model.weight_bytes / 1e9:.1f} GB of weights) leaves no room for a KV cache "
            f"on {tp} x {gpu.key}; raise --tp or use a larger GPU"
        )
    return int(free // bytes_per_block)


class Simulator:
    """Runs one replica against a workload in simulated time."""

    def __init__(self, replica: Replica, requests: list[Request]) -> None:
        self.replica = replica
        self.requests = requests
        self.now = 0.0
        self._heap: list[tuple[float, int, int, int, Any]] = []
        self._seq = 0
        self._next_arrival = 0
        self._schedule_pending = False
        self.horizon = float("inf")

    def _push(self, t: float, prio: int, kind: int, payload: Any = None) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, prio, self._seq, kind, payload))

    def _feed_arrival(self) -> None:
        """Push the next arrival; its time is the horizon for macro-steps (inf when none is left)."""
        if self._next_arrival < len(self.requests):
            r = self.requests[self._next_arrival]
            self._next_arrival += 1
            self._push(r.arrival_s, ARRIVAL, ARRIVAL, r)
            self.horizon = r.arrival_s
        else:
            self.horizon = float("inf")

    def run(self, on_progress: Callable[[int], None] | None = None) -> None:
        rep = self.replica
        heap = self._heap
        self._feed_arrival()
        finished = 0
        while heap:
            t, _, _, kind, payload = heapq.heappop(heap)
            assert t >= self.now, "time went backwards"
            self.now = t
            if kind == STEP_END:
                done = rep.finish_step(payload)
                if done and on_progress is not None:
                    finished += len(done)
                    on_progress(finished)
                self._schedule_pending = True
                self._push(t, SCHEDULE, SCHEDULE)
            elif kind == ARRIVAL:
                rep.add_request(payload, t)
                self._feed_arrival()
                if not rep.busy and not self._schedule_pending:
                    self._schedule_pending = True
                    self._push(t, SCHEDULE, SCHEDULE)
            else:  # SCHEDULE
                self._schedule_pending = False
                step: Step | None = rep.start_step(t, self.horizon)
                if step is not None:
                    self._push(step.end, STEP_END, STEP_END, step)


@dataclass
class SimResult:
    config: SimConfig
    summary: dict[str, Any]
    rows: list[dict[str, Any]]
    recorder: MetricsRecorder
    info: dict[str, Any]


def build_replica(cfg: SimConfig, requests: list[Request], timing: TimingModel | None = None) -> tuple[Replica, dict[str, Any]]:
    """Resolve names, size the KV cache and check that every request can ever fit."""
    model = get_model(cfg.model)
    gpu = get_gpu(cfg.gpu)
    spec = get_scheduler(cfg.scheduler)
    max_model_len = cfg.max_model_len or model.max_position_embeddings
    if cfg.kv_blocks is not None:
        blocks = cfg.kv_blocks
    else:
        blocks = kv_capacity_blocks(model, gpu, cfg.tp, cfg.block_size, cfg.gpu_memory_utilization)
    budget = cfg.max_batched_tokens or spec.max_batched_tokens or max_model_len
    capacity = blocks * cfg.block_size
    longest = max((r for r in requests if r.prompt_tokens + r.output_tokens <= max_model_len),
                  key=lambda r: r.prompt_tokens + r.output_tokens, default=None)
    if longest is not None and longest.prompt_tokens + longest.output_tokens > capacity:
        need = longest.prompt_tokens + longest.output_tokens
        raise UserError(
            f"KV cache too small: {blocks} blocks x {cfg.block_size} tokens = {capacity} tokens, but request "
            f"{longest.id} needs {need}; raise --kv-blocks or --tp, or lower --max-model-len to reject such requests"
        )
    admission_cls = get_admission(cfg.admission)
    preemption_cls = get_preemption(cfg.preemption)
    opts = split_options(cfg.policy_options, {
        f"scheduler {cfg.scheduler}": spec.factory.Options,
        f"admission {cfg.admission}": admission_cls.Options,
        f"preemption {cfg.preemption}": preemption_cls.Options,
    })
    block_bytes_gpu = kv_block_bytes(model, cfg.tp, cfg.block_size)  # x tp: one block over the whole replica
    host_blocks = int(cfg.cpu_kv_gb * 1e9 // (block_bytes_gpu * cfg.tp)) if cfg.prefix_caching else 0
    kv = KVCacheManager(blocks, cfg.block_size, enable_prefix_caching=cfg.prefix_caching,
                        evictor=make_evictor(cfg.eviction), host_blocks=host_blocks)
    tm = timing
    if tm is None and cfg.timing_coefficients is not None:
        from tokensched.calibration.coefficients import roofline_from_file

        tm = roofline_from_file(cfg.timing_coefficients, cfg.timing, model, gpu, cfg.tp)
    tm = tm or get_timing(cfg.timing, model, gpu, cfg.tp)
    if spec.factory.adjusts_batch and not getattr(tm, "prices_layer_fractions", False):
        raise UserError(f"scheduler {cfg.scheduler} runs prompts through a fraction of the layers per iteration, "
                        f"which timing {cfg.timing if timing is None else type(tm).__name__} cannot price; "
                        "use --timing roofline", where="timing")
    replica = Replica(
        SchedulerConfig(cfg.max_num_seqs, budget),
        spec.factory(opts[f"scheduler {cfg.scheduler}"]),
        kv,
        tm,
        max_model_len=max_model_len,
        macro_steps=cfg.macro_steps,
        admission=admission_cls(opts[f"admission {cfg.admission}"], max_model_len=max_model_len),
        preemption=preemption_cls(opts[f"preemption {cfg.preemption}"], model=model, gpu=gpu, tp=cfg.tp,
                                  block_size=cfg.block_size),
        load_s_per_block=block_bytes_gpu / (gpu.pcie_bandwidth * PCIE_EFFICIENCY),
    )
    info = {"model": model.name, "gpu": gpu.key, "tp": cfg.tp, "scheduler": cfg.scheduler,
            "admission": cfg.admission, "preemption": cfg.preemption, "eviction": cfg.eviction,
            "kv_blocks": blocks, "block_size": cfg.block_size, "max_batched_tokens": budget,
            "max_num_seqs": cfg.max_num_seqs, "max_model_len": max_model_len,
            "prefix_caching": cfg.prefix_caching, "cpu_kv_blocks": host_blocks,
            "timing": cfg.timing if timing is None else type(timing).__name__,
            "timing_source": getattr(tm, "calibration_source", None)}
    return replica, info


def cpu_kv_summary(kvs: list[KVCacheManager]) -> dict[str, Any]:
    """``{"cpu_kv": {...}}`` when the replicas have a CPU KV tier, else ``{}``."""
    if not any(kv.host_blocks for kv in kvs):
        return {}
    return {"cpu_kv": {
        "blocks": sum(kv.host_blocks for kv in kvs),
        "offloaded_blocks": sum(kv.offloaded_blocks for kv in kvs),
        "loaded_blocks": sum(kv.loaded_blocks for kv in kvs),
        "prefetched_blocks": sum(kv.prefetched_blocks for kv in kvs),
        "hit_tokens": sum(kv.host_hit_tokens for kv in kvs),
    }}


def simulate(
    cfg: SimConfig,
    requests: list[Request],
    *,
    timing: TimingModel | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> SimResult:
    """Simulate ``requests`` (sorted by arrival) on one replica described by ``cfg``."""
    t0 = time.perf_counter()
    replica, info = build_replica(cfg, requests, timing)
    sim = Simulator(replica, requests)
    sim.run(on_progress)
    rec = replica.metrics
    summary = summarize(rec, replica.kv, preemptions=replica.scheduler.num_preemptions,
                        slo_ttft_s=cfg.slo_ttft, slo_tpot_s=cfg.slo_tpot)
    pre = replica.scheduler.preemption
    summary.update(cpu_kv_summary([replica.kv]))
    if pre.keeps_kv:  # swap preemption: what moved over PCIe
        summary["swap"] = {"swapped_out_blocks": pre.swapped_out_blocks, "swapped_in_blocks": pre.swapped_in_blocks,
                           "swap_time_s": pre.swap_time_s}
    summary["wall_s"] = time.perf_counter() - t0
    return SimResult(cfg, summary, request_rows(rec.finished), rec, info)
