"""Measuring an operator latency table on this machine (``tokensched profile``).

Why it exists: the shipped coefficients come from NVIDIA's measurements on their machines; a user with a
different GPU, clock, driver or kernel library can measure their own table and fit it
(``tokensched calibrate``). With ``--device cuda`` it times PyTorch kernels (``torch.nn.functional.linear``,
``scaled_dot_product_attention``, NCCL all-reduce through ``torch.distributed``) with CUDA events; these are
close to, but not the same as, vLLM's kernels (FlashAttention 3 with a paged KV cache, custom all-reduce).
torch is optional and imported only here. With ``--device cpu`` it times numpy float32 matmuls and a numpy
attention: far from any GPU, but it runs anywhere, which is how the profile -> calibrate -> simulate pipeline
is tested without a GPU.

Each latency is the median of ``repeats`` samples after warm-up; a CPU sample loops the call enough times to
last ~0.5 ms so the clock's resolution does not matter.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from tokensched.calibration.table import Measurement
from tokensched.errors import UserError
from tokensched.hardware import get_gpu


@dataclass(frozen=True)
class ShapeSet:
    """What to measure. Attention shapes are per GPU (heads after tensor parallelism)."""

    gemm: tuple[tuple[int, int, int], ...]  # (m, n, k)
    prefill: tuple[tuple[int, int, int, int, int, int], ...]  # (batch, new, context, heads, kv_heads, head_dim)
    decode: tuple[tuple[int, int, int, int, int], ...]  # (batch, context, heads, kv_heads, head_dim)
    allreduce_bytes: tuple[int, ...]


def _default_shapes() -> ShapeSet:
    # projections (n, k) of Llama-3.1-8B and -70B at tp 1: QKV, O, gate+up, down; tokens per iteration
    nk = ((6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336),
          (10240, 8192), (8192, 8192), (57344, 8192), (8192, 28672))
    gemm = tuple((m, n, k) for m in (1, 8, 32, 128, 512, 2048, 8192) for n, k in nk)
    heads = ((32, 8, 128), (64, 8, 128), (32, 32, 128), (16, 4, 128))  # (query heads, KV heads, head size)
    prefill = tuple((b, n, c, h, kv, d) for h, kv, d in heads
                    for b, n, c in ((1, 128, 0), (1, 512, 0), (1, 2048, 0), (1, 8192, 0), (4, 512, 0), (8, 128, 0),
                                    (1, 512, 4096), (1, 2048, 8192)))
    decode = tuple((b, ctx, h, kv, d) for h, kv, d in heads for b in (1, 8, 32, 128, 256)
                   for ctx in (16, 128, 1024, 4096, 16384) if b * ctx <= 256 * 1024)
    return ShapeSet(gemm, prefill, decode, tuple(2**p for p in range(12, 27, 2)))  # 4 KiB .. 64 MiB


SHAPE_SETS: dict[str, ShapeSet] = {
    "default": _default_shapes(),
    # a few seconds on a laptop CPU: for testing the pipeline, not for fitting anything real
    "tiny": ShapeSet(
        gemm=((1, 64, 64), (8, 64, 64), (32, 128, 64), (64, 256, 128), (128, 128, 256), (256, 256, 256)),
        prefill=((1, 16, 0, 4, 2, 16), (1, 64, 0, 4, 2, 16), (2, 32, 16, 4, 2, 16), (1, 128, 0, 4, 4, 32)),
        decode=((1, 64, 4, 2, 16), (4, 256, 4, 2, 16), (8, 128, 4, 2, 16), (16, 512, 4, 4, 32)),
        allreduce_bytes=(4096, 65536),
    ),
}


class _NumpyBackend:
    """float32 numpy kernels on the CPU."""

    dtype = "fp32"

    def __init__(self, repeats: int) -> None:
        self.repeats = repeats
        self.rng = np.random.default_rng(0)

    def _time(self, fn: Callable[[], Any]) -> float:
        fn()
        t0 = time.perf_counter()
        fn()
        inner = max(1, min(1000, int(5e-4 / max(time.perf_counter() - t0, 1e-9))))
        samples = []
        for _ in range(self.repeats):
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            samples.append((time.perf_counter() - t0) / inner)
        return float(np.median(samples))

    def _rand(self, *shape: int) -> np.ndarray:
        return self.rng.standard_normal(shape, dtype=np.float32)

    def gemm(self, m: int, n: int, k: int) -> float:
        a, b = self._rand(m, k), self._rand(k, n)
        return self._time(lambda: a @ b)

    def attention(self, batch: int, new: int, cached: int, heads: int, kv_heads: int, head_dim: int) -> float:
        """Causal attention of ``new`` queries after ``cached`` tokens; query heads grouped per KV head."""
        g, keys = heads // kv_heads, cached + new
        q = self._rand(batch, kv_heads, g * new, head_dim)
        k, v = self._rand(batch, kv_heads, keys, head_dim), self._rand(batch, kv_heads, keys, head_dim)
        pos = np.tile(np.arange(new), g)[:, None] + cached  # absolute position of each query row
        mask = np.where(np.arange(keys)[None, :] <= pos, 0.0, -np.inf).astype(np.float32)
        kt, scale = k.transpose(0, 1, 3, 2), np.float32(head_dim**-0.5)

        def run() -> np.ndarray:
            s = (q @ kt) * scale + mask
            s -= s.max(axis=-1, keepdims=True)
            np.exp(s, out=s)
            s /= s.sum(axis=-1, keepdims=True)
            return s @ v

        return self._time(run)


class _TorchBackend:
    """PyTorch kernels on CUDA, timed with CUDA events. Not run in this repository's CI (no GPU there)."""

    def __init__(self, dtype: str, repeats: int) -> None:
        try:
            import torch
        except ImportError:
            raise UserError("--device cuda needs PyTorch: install torch with CUDA (or use --device cpu)") from None
        if not torch.cuda.is_available():
            raise UserError("torch sees no CUDA GPU: install torch with CUDA (or use --device cpu)")
        self.torch, self.dtype, self.repeats = torch, dtype, repeats
        self.tdtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]

    def device_name(self) -> str:
        return str(self.torch.cuda.get_device_name(0))

    def device_count(self) -> int:
        return int(self.torch.cuda.device_count())

    def _time(self, fn: Callable[[], Any]) -> float:
        torch = self.torch
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(self.repeats)]
        for start, end in ev:
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize()
        return float(np.median([s.elapsed_time(e) for s, e in ev])) * 1e-3

    def _rand(self, *shape: int) -> Any:
        return self.torch.randn(*shape, device="cuda", dtype=self.tdtype)

    def gemm(self, m: int, n: int, k: int) -> float:
        x, w = self._rand(m, k), self._rand(n, k)
        f = self.torch.nn.functional.linear
        return self._time(lambda: f(x, w))

    def attention(self, batch: int, new: int, cached: int, heads: int, kv_heads: int, head_dim: int) -> float:
        torch = self.torch
        sdpa = torch.nn.functional.scaled_dot_product_attention
        keys = cached + new
        q = self._rand(batch, heads, new, head_dim)
        k, v = self._rand(batch, kv_heads, keys, head_dim), self._rand(batch, kv_heads, keys, head_dim)
        mask = None
        if new > 1 and cached > 0:  # causal with an offset: query i sees keys <= cached + i
            mask = torch.arange(keys, device="cuda")[None, :] <= (torch.arange(new, device="cuda")[:, None] + cached)
        causal = new > 1 and cached == 0
        try:
            sdpa(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=True)
            return self._time(lambda: sdpa(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=True))
        except TypeError:  # torch < 2.5: no enable_gqa; repeat KV heads (reads more bytes than a GQA kernel)
            k, v = (t.repeat_interleave(heads // kv_heads, dim=1) for t in (k, v))
            return self._time(lambda: sdpa(q, k, v, attn_mask=mask, is_causal=causal))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _allreduce_worker(rank: int, world: int, port: int, sizes: list[int], dtype: str, repeats: int, out: Any) -> None:
    """One rank of an NCCL all-reduce benchmark; rank 0 reports the median seconds per size."""
    import torch
    import torch.distributed as dist

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    tdtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    result = []
    for nbytes in sizes:
        x = torch.zeros(max(1, nbytes // 2), dtype=tdtype, device="cuda")
        for _ in range(5):
            dist.all_reduce(x)
        torch.cuda.synchronize()
        dist.barrier()
        ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
        for start, end in ev:
            start.record()
            dist.all_reduce(x)
            end.record()
        torch.cuda.synchronize()
        result.append(float(np.median([s.elapsed_time(e) for s, e in ev])) * 1e-3)
    if rank == 0:
        out.put(result)
    dist.destroy_process_group()


def _profile_allreduce(sizes: tuple[int, ...], tp: int, dtype: str, repeats: int) -> list[float]:
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    out = ctx.SimpleQueue()
    port = _free_port()
    procs = [ctx.Process(target=_allreduce_worker, args=(r, tp, port, list(sizes), dtype, repeats, out))
             for r in range(tp)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    if any(p.exitcode for p in procs) or out.empty():
        raise UserError(f"the all-reduce benchmark on {tp} GPUs failed (see its output above)")
    return list(out.get())


def profile(device: str, gpu: str | None, shapes: str = "default", dtype: str | None = None, repeats: int = 10,
            tp: list[int] | None = None,
            on_progress: Callable[[int, int], None] | None = None) -> tuple[list[Measurement], str]:
    """Measure ``shapes`` on ``device``; returns the rows and a one-line description for the table header."""
    if shapes not in SHAPE_SETS:
        raise UserError(f"unknown shape set {shapes!r}; choose one of: {', '.join(SHAPE_SETS)}", where="shapes")
    if repeats < 1:
        raise UserError(f"must be >= 1, got {repeats}", where="repeats")
    s = SHAPE_SETS[shapes]
    backend: Any
    if device == "cpu":
        if dtype not in (None, "fp32"):
            raise UserError(f"--device cpu times float32 numpy kernels; got {dtype}", where="dtype")
        if gpu is None:
            raise UserError("--device cpu needs --gpu: the catalog GPU the fitted efficiencies are relative to",
                            where="gpu")
        backend, key = _NumpyBackend(repeats), get_gpu(gpu).key
        tps: list[int] = []
        desc = f"tokensched profile --device cpu --shapes {shapes}: numpy float32 on the CPU, efficiencies vs {key}"
    elif device == "cuda":
        if dtype not in (None, "bf16", "fp16"):
            raise UserError(f"--device cuda times bf16 or fp16 kernels; got {dtype}", where="dtype")
        backend = _TorchBackend(dtype or "bf16", repeats)
        name = backend.device_name()
        try:
            key = get_gpu(gpu or name).key
        except UserError:
            raise UserError(f"cannot match this GPU ({name}) to the catalog; name it with --gpu", where="gpu") from None
        n_gpus = backend.device_count()
        tps = tp if tp is not None else [t for t in (2, 4, 8) if t <= n_gpus]
        if any(t < 2 or t > n_gpus for t in tps):
            raise UserError(f"all-reduce degrees must be in 2..{n_gpus} (GPUs visible), got {tps}", where="tp")
        desc = f"tokensched profile --device cuda --shapes {shapes}: torch {backend.torch.__version__} on {name}"
    else:
        raise UserError(f"unknown device {device!r}; choose cuda or cpu", where="device")
    dt = backend.dtype
    total = len(s.gemm) + len(s.prefill) + len(s.decode) + len(tps)
    rows: list[Measurement] = []
    count = [0]

    def done() -> None:
        count[0] += 1
        if on_progress:
            on_progress(count[0], total)

    for m, n, k in s.gemm:
        rows.append(Measurement("gemm", key, dt, backend.gemm(m, n, k), m=m, n=n, k=k))
        done()
    for b, new, c, h, kv, d in s.prefill:
        lat = backend.attention(b, new, c, h, kv, d)
        rows.append(Measurement("attn_prefill", key, dt, lat, batch=b, new_tokens=new, context=c, heads=h,
                                kv_heads=kv, head_dim=d))
        done()
    for b, ctx, h, kv, d in s.decode:
        lat = backend.attention(b, 1, ctx - 1, h, kv, d)
        rows.append(Measurement("attn_decode", key, dt, lat, batch=b, context=ctx, heads=h, kv_heads=kv, head_dim=d))
        done()
    for t in tps:
        for nbytes, lat in zip(s.allreduce_bytes, _profile_allreduce(s.allreduce_bytes, t, dt, repeats)):
            rows.append(Measurement("allreduce", key, dt, lat, bytes=nbytes, tp=t))
        done()
    return rows, desc
