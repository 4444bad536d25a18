"""What preemption costs: recompute (drop the KV) or swap (copy it to host memory and back).

* ``recompute`` (vLLM V1 default): the victim's blocks are freed; when it resumes it recomputes prompt and
  outputs (hitting whatever of its prompt is still in the prefix cache). Free now, paid in prefill later.
* ``swap``: the victim's KV is copied to CPU memory over PCIe and copied back when it resumes. Each copy costs
  ``transfers * transfer_latency + bytes / (pcie_bandwidth * pcie_efficiency)``. A paged engine copies every
  block of every layer (K and V) as its own small transfer (vLLM's swap path), which is what makes swapping
  slow; FastSwitch (Shen et al., arXiv 2411.18424) allocates KV in contiguous *block groups* so one transfer
  moves ``block_group`` blocks, overlaps swaps with computation, and keeps a request's (or conversation's)
  CPU copy so a later swap-out only moves blocks added since. Those are the knobs ``block_group``,
  ``overlap`` and ``reuse_cpu_copy``.

The iteration that preempts (or resumes) a request pays its swap time: added to the iteration, or hidden
behind it up to the iteration's compute time when ``overlap`` is on.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from tokensched.errors import UserError
from tokensched.hardware import GPU
from tokensched.models import ModelConfig
from tokensched.policies.base import NoOptions
from tokensched.sequence import Sequence


class PreemptionMode:
    """Recompute: free the victim's KV; it is rebuilt by prefill when the victim resumes."""

    name: ClassVar[str] = "recompute"
    Options: ClassVar[type[BaseModel]] = NoOptions
    keeps_kv: ClassVar[bool] = False
    overlap: bool = False

    def __init__(self, options: BaseModel | None = None, **_: object) -> None:
        self.options = options if options is not None else self.Options()
        self.swapped_out_blocks = 0
        self.swapped_in_blocks = 0
        self.swap_time_s = 0.0

    def swap_out_time(self, seq: Sequence) -> float:
        return 0.0

    def swap_in_time(self, seq: Sequence) -> float:
        return 0.0


class SwapOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    pcie_gb_s: float | None = Field(None, gt=0, description="host link bandwidth per direction (default: the GPU's)")
    pcie_efficiency: float = Field(0.8, gt=0, le=1, description="fraction of link bandwidth large copies reach")
    transfer_latency_us: float = Field(5.0, ge=0, description="fixed cost of one copy call (launch + DMA setup)")
    block_group: int = Field(1, ge=1, description="blocks moved per copy (FastSwitch block groups; vLLM: 1)")
    overlap: bool = Field(False, description="hide swap time behind the iteration's compute (FastSwitch)")
    reuse_cpu_copy: bool = Field(False, description="keep CPU copies; later swap-outs move only new blocks")


class SwapPreemption(PreemptionMode):
    """Swap: copy the victim's KV to CPU over PCIe and back on resume (FastSwitch knobs included)."""

    name = "swap"
    Options = SwapOptions
    keeps_kv = True

    def __init__(self, options: BaseModel | None = None, *, model: ModelConfig, gpu: GPU, tp: int,
                 block_size: int, **_: object) -> None:
        super().__init__(options)
        o: SwapOptions = self.options  # type: ignore[assignment]
        kv_heads = -(-model.num_kv_heads // tp)
        # one block of one layer, K or V, on one GPU (each GPU copies its shard in parallel)
        self.block_size = block_size
        self.bytes_per_block_layer_kv = block_size * kv_heads * model.head_dim * model.dtype_bytes
        self.copies_per_block = 2 * model.num_layers  # K and V of every layer are separate tensors
        bw = (o.pcie_gb_s * 1e9) if o.pcie_gb_s else gpu.pcie_bandwidth
        self.bandwidth = bw * o.pcie_efficiency
        self.latency = o.transfer_latency_us * 1e-6
        self.group = o.block_group
        self.overlap = o.overlap
        self.reuse = o.reuse_cpu_copy
        self._cpu_tokens: dict[str, int] = {}  # request or session -> tokens whose KV already sits on the CPU

    def transfer_time(self, blocks: int) -> float:
        if blocks <= 0:
            return 0.0
        copies = -(-blocks // self.group) * self.copies_per_block
        nbytes = blocks * self.copies_per_block * self.bytes_per_block_layer_kv
        return copies * self.latency + nbytes / self.bandwidth

    def _key(self, seq: Sequence) -> str:
        return seq.request.session_id or seq.id

    def swap_out_time(self, seq: Sequence) -> float:
        tokens = seq.num_computed
        blocks = -(-tokens // self.block_size)
        if self.reuse:
            key = self._key(seq)
            blocks -= min(self._cpu_tokens.get(key, 0), tokens) // self.block_size  # full blocks already there
            self._cpu_tokens[key] = max(self._cpu_tokens.get(key, 0), tokens)
        self.swapped_out_blocks += blocks
        t = self.transfer_time(blocks)
        self.swap_time_s += t
        return t

    def swap_in_time(self, seq: Sequence) -> float:
        blocks = -(-seq.swapped_tokens // self.block_size)
        self.swapped_in_blocks += blocks
        t = self.transfer_time(blocks)
        self.swap_time_s += t
        return t


PREEMPTIONS: dict[str, tuple[type[PreemptionMode], str]] = {
    "recompute": (PreemptionMode, "drop the KV, re-prefill on resume (vLLM V1 default)"),
    "swap": (SwapPreemption, "copy the KV to CPU and back over PCIe (vLLM V0 swap; FastSwitch knobs)"),
}


def get_preemption(name: str) -> type[PreemptionMode]:
    try:
        return PREEMPTIONS[name.lower()][0]
    except KeyError:
        raise UserError(f"unknown preemption mode {name!r}; choose one of: {', '.join(PREEMPTIONS)}") from None
