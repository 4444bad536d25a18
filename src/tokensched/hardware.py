"""GPU catalog: the few data-sheet figures a roofline timing model needs.

A step's time is bounded by compute (``bf16_flops``), by reading weights and KV cache from device memory
(``hbm_bandwidth``), by tensor-parallel all-reduce (``interconnect_bandwidth``) and by host<->device copies
(``pcie_bandwidth``). ``hbm_bytes`` bounds how many KV blocks fit.

Conventions, so entries stay comparable:

* FLOP/s are *dense* BF16 tensor-core figures. NVIDIA data sheets headline the 2:1 structured-sparsity figure
  (e.g. 1979 TFLOPS on H100 SXM); serving does not use sparsity, so we halve it.
* Bandwidths are decimal bytes/s (1 TB/s = 1e12) *per direction*. Data sheets quote NVLink and PCIe as the sum
  of both directions (H100 "NVLink 900 GB/s", "PCIe Gen5 128 GB/s"), so we halve those.
* ``hbm_bytes`` is the memory the driver exposes (``nvidia-smi --query-gpu=memory.total``, in MiB), which is
  a little less than the marketing size (H100 "80 GB" = 81559 MiB) because of ECC and reserved regions.

The figures for H100 SXM agree with ``shared/groundtruth/vllm-h100/h100-sxm.json`` (NVIDIA data sheet 2430615:
BF16 1979 TFLOPS with sparsity, 3.35 TB/s, NVLink 900 GB/s, PCIe 128 GB/s).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from tokensched.errors import UserError

_T = 1e12  # tera, decimal
_G = 1e9  # giga, decimal


def _mib(n: int) -> int:
    """``nvidia-smi`` reports memory.total in MiB."""
    return n * 2**20


@dataclass(frozen=True, slots=True)
class GPU:
    """One accelerator model. All rates are per GPU; see the module docstring for units."""

    key: str
    name: str
    bf16_flops: float
    hbm_bandwidth: float
    hbm_bytes: float
    interconnect: str
    interconnect_bandwidth: float
    pcie_bandwidth: float

    def __post_init__(self) -> None:
        for f in ("bf16_flops", "hbm_bandwidth", "hbm_bytes", "interconnect_bandwidth", "pcie_bandwidth"):
            if not getattr(self, f) > 0:
                raise ValueError(f"GPU {self.key}: {f} must be > 0")


GPUS: dict[str, GPU] = {
    # NVIDIA A100 Tensor Core GPU data sheet (nvidia-a100-datasheet-us-nvidia-1758950-r4): BF16 312 TFLOPS
    # (624 with sparsity), A100 40GB SXM HBM2 1,555 GB/s, NVLink 3 600 GB/s, PCIe Gen4 64 GB/s (both
    # directions). nvidia-smi: A100-SXM4-40GB 40960 MiB.
    "a100-40gb": GPU(
        key="a100-40gb",
        name="NVIDIA A100 SXM4 40GB",
        bf16_flops=312 * _T,
        hbm_bandwidth=1.555 * _T,
        hbm_bytes=_mib(40960),
        interconnect="nvlink3",
        interconnect_bandwidth=300 * _G,
        pcie_bandwidth=32 * _G,
    ),
    # Same data sheet: A100 80GB SXM HBM2e 2,039 GB/s. nvidia-smi: A100-SXM4-80GB 81920 MiB.
    "a100-80gb": GPU(
        key="a100-80gb",
        name="NVIDIA A100 SXM4 80GB",
        bf16_flops=312 * _T,
        hbm_bandwidth=2.039 * _T,
        hbm_bytes=_mib(81920),
        interconnect="nvlink3",
        interconnect_bandwidth=300 * _G,
        pcie_bandwidth=32 * _G,
    ),
    # NVIDIA H100 Tensor Core GPU data sheet (2430615), SXM column: BF16 1,979 TFLOPS with sparsity -> 989.4
    # dense, HBM3 3.35 TB/s, NVLink 4 900 GB/s, PCIe Gen5 128 GB/s (both directions).
    # nvidia-smi: "NVIDIA H100 80GB HBM3" 81559 MiB.
    "h100": GPU(
        key="h100",
        name="NVIDIA H100 SXM5 80GB",
        bf16_flops=989.4 * _T,
        hbm_bandwidth=3.35 * _T,
        hbm_bytes=_mib(81559),
        interconnect="nvlink4",
        interconnect_bandwidth=450 * _G,
        pcie_bandwidth=64 * _G,
    ),
    # Same data sheet, PCIe column: BF16 1,513 TFLOPS with sparsity -> 756.5 dense, HBM2e 2 TB/s, PCIe Gen5
    # 128 GB/s. Its NVLink (600 GB/s) needs a 2-GPU bridge most servers lack, so tensor parallelism is modelled
    # over PCIe Gen5 (64 GB/s per direction). nvidia-smi: "NVIDIA H100 PCIe" 81559 MiB.
    "h100-pcie": GPU(
        key="h100-pcie",
        name="NVIDIA H100 PCIe 80GB",
        bf16_flops=756.5 * _T,
        hbm_bandwidth=2.0 * _T,
        hbm_bytes=_mib(81559),
        interconnect="pcie5",
        interconnect_bandwidth=64 * _G,
        pcie_bandwidth=64 * _G,
    ),
    # NVIDIA H200 Tensor Core GPU data sheet, SXM column: BF16 1,979 TFLOPS with sparsity -> 989.4 dense,
    # 141 GB HBM3e at 4.8 TB/s, NVLink 900 GB/s, PCIe Gen5 128 GB/s. nvidia-smi: "NVIDIA H200" 143771 MiB.
    "h200": GPU(
        key="h200",
        name="NVIDIA H200 SXM 141GB",
        bf16_flops=989.4 * _T,
        hbm_bandwidth=4.8 * _T,
        hbm_bytes=_mib(143771),
        interconnect="nvlink4",
        interconnect_bandwidth=450 * _G,
        pcie_bandwidth=64 * _G,
    ),
    # NVIDIA L40S data sheet: BF16 362.05 TFLOPS dense (733 with sparsity), 48 GB GDDR6 (ECC) at 864 GB/s,
    # no NVLink, PCIe Gen4 x16 64 GB/s (both directions): tensor parallelism goes over PCIe.
    # nvidia-smi: "NVIDIA L40S" 46068 MiB.
    "l40s": GPU(
        key="l40s",
        name="NVIDIA L40S 48GB",
        bf16_flops=362.05 * _T,
        hbm_bandwidth=0.864 * _T,
        hbm_bytes=_mib(46068),
        interconnect="pcie4",
        interconnect_bandwidth=32 * _G,
        pcie_bandwidth=32 * _G,
    ),
    # NVIDIA DGX B200 / HGX B200 data sheets, per GPU: BF16 4.5 PFLOPS with sparsity -> 2,250 TFLOPS dense,
    # HBM3e 8 TB/s, NVLink 5 1.8 TB/s (both directions), host link PCIe Gen5 x16.
    # nvidia-smi: "NVIDIA B200" 183359 MiB (~180 GB).
    "b200": GPU(
        key="b200",
        name="NVIDIA B200 180GB",
        bf16_flops=2250 * _T,
        hbm_bandwidth=8.0 * _T,
        hbm_bytes=_mib(183359),
        interconnect="nvlink5",
        interconnect_bandwidth=900 * _G,
        pcie_bandwidth=64 * _G,
    ),
}

# Other spellings people use: product names, nvidia-smi names, cloud SKUs. Keys are normalized (see _norm).
GPU_ALIASES: dict[str, str] = {
    "a100-sxm4-40gb": "a100-40gb",
    "a100-40g": "a100-40gb",
    "a100-sxm4-80gb": "a100-80gb",
    "a100-80g": "a100-80gb",
    "a100-sxm-80gb": "a100-80gb",
    "h100-sxm": "h100",
    "h100-sxm5": "h100",
    "h100-sxm5-80gb": "h100",
    "h100-80gb": "h100",
    "h100-80gb-hbm3": "h100",
    "h100-pcie5": "h100-pcie",
    "h100-pcie-80gb": "h100-pcie",
    "h200-sxm": "h200",
    "h200-141gb": "h200",
    "h200-sxm-141gb": "h200",
    "l40s-48gb": "l40s",
    "b200-180gb": "b200",
}


def _norm(name: str) -> str:
    """Lower-case, spaces/underscores to dashes, no vendor prefix: 'NVIDIA H100 80GB HBM3' -> 'h100-80gb-hbm3'."""
    s = re.sub(r"[\s_]+", "-", name.strip().lower())
    return s.removeprefix("nvidia-")


def get_gpu(name: str) -> GPU:
    """Look up a GPU by catalog key, alias or full name, ignoring case; unknown names are a UserError."""
    key = _norm(name)
    key = GPU_ALIASES.get(key, key)
    if key in GPUS:
        return GPUS[key]
    for gpu in GPUS.values():
        if _norm(gpu.name) == key:
            return gpu
    choices = ", ".join(GPUS)
    # 'a100' is ambiguous rather than wrong: offer the keys it prefixes before fuzzy matches.
    close = [k for k in GPUS if k.startswith(key + "-")] or difflib.get_close_matches(
        key, list(GPUS) + list(GPU_ALIASES), n=2, cutoff=0.6)
    keys = dict.fromkeys(GPU_ALIASES.get(c, c) for c in close)
    hint = f" (did you mean {' or '.join(keys)}?)" if keys else ""
    raise UserError(f"unknown GPU {name!r}{hint}; choose one of: {choices}")
