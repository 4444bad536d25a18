"""The operator latency table: one CSV row per measured operator call.

Why a table of single operator calls rather than whole iterations: operator latencies can be measured once
per GPU (``tokensched profile``) or taken from published databases (NVIDIA AIConfigurator), and they pin down
each operator class's roofline separately, so a fit says *which* part of the model is off.

Format (UTF-8 CSV, header first; blank lines and lines starting with ``#`` are ignored)::

    op,gpu,dtype,m,n,k,batch,new_tokens,context,heads,kv_heads,head_dim,bytes,tp,latency_s
    gemm,h100,bf16,128,4096,4096,,,,,,,,,2.1e-05
    attn_prefill,h100,bf16,,,,1,2048,0,32,8,128,,,8.9e-05
    attn_decode,h100,bf16,,,,64,,4096,32,8,128,,,0.00012
    allreduce,h100,bf16,,,,,,,,,,1048576,4,1.9e-05

===============  =====================================================================================
column           meaning
===============  =====================================================================================
``op``           ``gemm``, ``attn_prefill``, ``attn_decode`` or ``allreduce``
``gpu``          catalog GPU (``tokensched list gpus``); efficiencies are fitted relative to its data sheet
``dtype``        ``bf16``, ``fp16`` or ``fp32`` (element size for the byte counts)
``m, n, k``      GEMM ``[m, k] x [k, n]`` (``m`` = tokens, ``k`` = input features, ``n`` = output features)
``batch``        attention: sequences in the call
``new_tokens``   prefill: query tokens per sequence
``context``      prefill: tokens already cached before the chunk; decode: tokens attended per sequence,
                 the new one included
``heads``,       attention: query heads, KV heads and head size on this GPU
``kv_heads``,
``head_dim``
``bytes``        all-reduce: buffer size per GPU in bytes
``tp``           all-reduce: GPUs taking part (>= 2)
``latency_s``    measured seconds per call (> 0)
===============  =====================================================================================

Columns an operator does not use are left empty (and ignored); a header may leave out columns no row needs.
Any mistake is a one-line :class:`UserError` naming the file, line and column.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tokensched.errors import UserError, read_user_text
from tokensched.hardware import get_gpu

COLUMNS = ("op", "gpu", "dtype", "m", "n", "k", "batch", "new_tokens", "context", "heads", "kv_heads", "head_dim",
           "bytes", "tp", "latency_s")
SHAPE_COLUMNS: dict[str, tuple[str, ...]] = {
    "gemm": ("m", "n", "k"),
    "attn_prefill": ("batch", "new_tokens", "context", "heads", "kv_heads", "head_dim"),
    "attn_decode": ("batch", "context", "heads", "kv_heads", "head_dim"),
    "allreduce": ("bytes", "tp"),
}
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
_DTYPE_ALIASES = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32", "float": "fp32"}


def _min_value(op: str, col: str) -> int:
    if col == "context" and op == "attn_prefill":
        return 0
    return 2 if col == "tp" else 1


@dataclass(frozen=True, slots=True)
class Measurement:
    """One measured operator call. Shape fields an operator does not use are 0."""

    op: str
    gpu: str
    dtype: str
    latency_s: float
    m: int = 0
    n: int = 0
    k: int = 0
    batch: int = 0
    new_tokens: int = 0
    context: int = 0
    heads: int = 0
    kv_heads: int = 0
    head_dim: int = 0
    bytes: int = 0
    tp: int = 0

    @property
    def dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]


def _parse_row(cells: dict[str, str], where: str) -> Measurement:
    def bad(col: str, msg: str) -> UserError:
        return UserError(f"column '{col}': {msg}", where=where)

    op = cells.get("op", "").strip()
    if op not in SHAPE_COLUMNS:
        raise bad("op", f"unknown operator {op!r}; expected one of: {', '.join(SHAPE_COLUMNS)}")
    raw_dtype = cells.get("dtype", "").strip().lower()
    dtype = _DTYPE_ALIASES.get(raw_dtype, raw_dtype)
    if dtype not in DTYPE_BYTES:
        raise bad("dtype", f"unknown data type {raw_dtype!r}; expected one of: {', '.join(DTYPE_BYTES)}")
    try:
        gpu = get_gpu(cells.get("gpu", "").strip()).key
    except UserError as e:
        raise bad("gpu", str(e)) from None
    text = cells.get("latency_s", "").strip()
    try:
        latency = float(text)
    except ValueError:
        raise bad("latency_s", f"expected a positive number of seconds, got {text!r}") from None
    if not (latency > 0 and math.isfinite(latency)):
        raise bad("latency_s", f"expected a positive number of seconds, got {text!r}")
    shape: dict[str, int] = {}
    for col in SHAPE_COLUMNS[op]:
        if col not in cells:
            raise bad(col, f"needed by op {op} but missing from the header")
        text = cells[col].strip()
        try:
            v = int(text)
        except ValueError:
            raise bad(col, f"expected an integer, got {text!r}") from None
        lo = _min_value(op, col)
        if v < lo:
            raise bad(col, f"must be >= {lo} for op {op}, got {v}")
        shape[col] = v
    return Measurement(op=op, gpu=gpu, dtype=dtype, latency_s=latency, **shape)


def load_table(path: str | Path) -> list[Measurement]:
    """Read and validate a table; every error names ``file:line`` and the column."""
    p = Path(path)
    lines = read_user_text(p, "latency table").splitlines()
    header: list[str] | None = None
    rows: list[Measurement] = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{p}:{lineno}"
        cells = next(csv.reader([line]))
        if header is None:
            header = [c.strip() for c in cells]
            for c in header:
                if c not in COLUMNS:
                    raise UserError(f"column '{c}': unknown; valid columns: {', '.join(COLUMNS)}", where=where)
                if header.count(c) > 1:
                    raise UserError(f"column '{c}': appears twice in the header", where=where)
            for c in ("op", "gpu", "dtype", "latency_s"):
                if c not in header:
                    raise UserError(f"column '{c}': missing from the header", where=where)
            continue
        if len(cells) != len(header):
            raise UserError(f"expected {len(header)} cells as in the header, got {len(cells)}", where=where)
        rows.append(_parse_row(dict(zip(header, cells)), where))
    if not rows:
        raise UserError("latency table has no measurements", where=str(p))
    return rows


def write_table(rows: list[Measurement], path: str | Path, comments: tuple[str, ...] = ()) -> None:
    """Write ``rows`` in the table format; byte-identical for the same rows (``repr`` floats)."""
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        with p.open("w", encoding="utf-8", newline="") as f:
            for c in comments:
                f.write(f"# {c}\n")
            w = csv.writer(f, lineterminator="\n")
            w.writerow(COLUMNS)
            for r in rows:
                used = SHAPE_COLUMNS[r.op]
                w.writerow([r.op, r.gpu, r.dtype, *(getattr(r, c) if c in used else "" for c in COLUMNS[3:-1]),
                            repr(float(r.latency_s))])
    except OSError as e:
        raise UserError(f"cannot write latency table: {e.strerror}", where=str(p)) from None


def columns(rows: list[Measurement], op: str) -> dict[str, np.ndarray]:
    """The rows of one operator class as float arrays (shape columns, ``db`` and ``latency_s``)."""
    sel = [r for r in rows if r.op == op]
    out = {c: np.array([getattr(r, c) for r in sel], dtype=np.float64) for c in SHAPE_COLUMNS[op]}
    out["db"] = np.array([r.dtype_bytes for r in sel], dtype=np.float64)
    out["latency_s"] = np.array([r.latency_s for r in sel], dtype=np.float64)
    return out
