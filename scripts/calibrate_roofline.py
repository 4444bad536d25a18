"""Regenerate the shipped roofline coefficients from NVIDIA AIConfigurator's measured operator databases.

Run:  python scripts/calibrate_roofline.py            (needs the ``measured`` extra: aiconfigurator-core)

For every catalog GPU that aiconfigurator-core covers, it reads the vLLM backend's per-operator tables (the
version closest to vLLM 0.15, which the ground-truth runs used), keeps the bf16 rows that look like LLM
serving, converts them to the operator latency table format (:mod:`tokensched.calibration.table`), fits them
(:mod:`tokensched.calibration.fit`) and writes ``src/tokensched/data/roofline_coefficients.json``. Same
databases in, same bytes out (``tests/test_calibration.py`` checks it).

Which rows, and why:

* GEMM: ``gemm_dtype`` bfloat16 with the unquantised kernel (most rows); ``n, k >= 1024`` (every projection of
  the catalog models, after tensor parallelism) and ``m <= 16384`` tokens (iteration budgets).
* attention: ``attn_dtype`` and ``kv_cache_dtype`` bfloat16, no sliding window, ``head_dim`` 64 or 128, the
  attention kernel with the most rows (FlashAttention 2/3, FlashInfer on B200). Context attention rows are
  prefills of ``isl`` new tokens with nothing cached; generation rows attend ``isl + step`` tokens.
* all-reduce: vLLM's custom all-reduce as captured in CUDA graphs (``vLLM_custom_graph``), bf16, buffers up
  to 64 MiB (``message_size`` counts elements).

Latencies in the databases are milliseconds. ``--write-tables DIR`` also writes the extracted tables, and
``--sample N`` keeps about N evenly spaced rows per class; ``tests/data/calibration/h100.csv`` was made with
``python scripts/calibrate_roofline.py --gpus h100 --sample 40 --write-tables tests/data/calibration -o /dev/null``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tokensched.calibration.coefficients import dumps, entries_from_fits  # noqa: E402
from tokensched.calibration.fit import fit_table  # noqa: E402
from tokensched.calibration.table import Measurement, write_table  # noqa: E402

OUT = ROOT / "src" / "tokensched" / "data" / "roofline_coefficients.json"
TARGET_VLLM = (0, 15)
# catalog GPU -> aiconfigurator-core system directory (a100-40gb and h100-pcie have no data there)
SYSTEMS = {"a100-80gb": "a100_sxm", "b200": "b200_sxm", "h100": "h100_sxm", "h200": "h200_sxm", "l40s": "l40s"}
MAX_ALLREDUCE_BYTES = 64 * 2**20


def data_root() -> Path:
    try:
        import aiconfigurator_core
    except ImportError:
        sys.exit("error: aiconfigurator-core is not installed (pip install 'tokensched[measured]')")
    return Path(aiconfigurator_core.__file__).parent / "systems" / "data"


def pick_version(op_dir: Path, table: str) -> Path:
    """The vLLM version directory closest to vLLM 0.15 that has ``table`` (ties: the newer)."""
    def key(d: Path) -> tuple[int, int]:
        minor = int(d.name.split(".")[1])
        return abs(minor - TARGET_VLLM[1]), -minor

    dirs = [d for d in (op_dir / "vllm").iterdir() if (d / f"{table}.parquet").is_file()]
    if not dirs:
        raise FileNotFoundError(f"no vllm {table} under {op_dir}")
    return min(dirs, key=key)


def _read(path: Path):  # type: ignore[no-untyped-def]
    import pandas as pd

    return pd.read_parquet(path)


def _main_kernel(df) -> str:  # type: ignore[no-untyped-def]
    counts = df["kernel_source"].value_counts()
    return str(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0][0])


def extract(gpu: str, root: Path) -> tuple[list[Measurement], str, str]:
    """Rows of all four classes for one GPU, a one-line source and the tables and kernels used."""
    sysdir = root / SYSTEMS[gpu]
    rows: list[Measurement] = []
    notes: list[str] = []

    d = pick_version(sysdir / "gemm", "gemm_perf")
    g = _read(d / "gemm_perf.parquet")
    g = g[g["gemm_dtype"] == "bfloat16"]
    kernel = _main_kernel(g)
    g = g[(g["kernel_source"] == kernel) & (g["n"] >= 1024) & (g["k"] >= 1024) & (g["m"] <= 16384)]
    g = g.sort_values(["m", "n", "k", "latency"])
    device = str(g["device"].iloc[0])
    rows += [Measurement("gemm", gpu, "bf16", lat * 1e-3, m=int(m), n=int(n), k=int(k))
             for m, n, k, lat in zip(g["m"], g["n"], g["k"], g["latency"])]
    notes.append(f"gemm vllm {d.name} {kernel}")

    d = pick_version(sysdir / "attention", "context_attention_perf")
    for table, op in (("context_attention_perf", "attn_prefill"), ("generation_attention_perf", "attn_decode")):
        a = _read(d / f"{table}.parquet")
        for col, keep in (("window_size", 0), ("beam_width", 1)):  # not in every database version
            if col in a.columns:
                a = a[a[col] == keep]
        a = a[(a["attn_dtype"] == "bfloat16") & (a["kv_cache_dtype"] == "bfloat16") & a["head_dim"].isin([64, 128])]
        kernel = _main_kernel(a)
        a = a[a["kernel_source"] == kernel]
        a = a.sort_values(["batch_size", "isl", "step", "num_heads", "num_key_value_heads", "head_dim", "latency"])
        for b, isl, step, h, kvh, hd, lat in zip(a["batch_size"], a["isl"], a["step"], a["num_heads"],
                                                  a["num_key_value_heads"], a["head_dim"], a["latency"]):
            shape = dict(batch=int(b), heads=int(h), kv_heads=int(kvh), head_dim=int(hd))
            if op == "attn_prefill":
                rows.append(Measurement(op, gpu, "bf16", lat * 1e-3, new_tokens=int(isl), context=0, **shape))
            else:
                rows.append(Measurement(op, gpu, "bf16", lat * 1e-3, context=int(isl + step), **shape))
        notes.append(f"{op} vllm {d.name} {kernel}")

    d = pick_version(sysdir / "comm", "custom_allreduce_perf")
    c = _read(d / "custom_allreduce_perf.parquet")
    c = c[(c["kernel_source"] == "vLLM_custom_graph") & (c["allreduce_dtype"] == "bfloat16")
          & (c["message_size"] * 2 <= MAX_ALLREDUCE_BYTES)].sort_values(["num_gpus", "message_size"])
    rows += [Measurement("allreduce", gpu, "bf16", lat * 1e-3, bytes=int(n) * 2, tp=int(tp))
             for tp, n, lat in zip(c["num_gpus"], c["message_size"], c["latency"])]
    notes.append(f"allreduce vllm {d.name} vLLM_custom_graph")

    from importlib.metadata import version

    return rows, f"aiconfigurator-core {version('aiconfigurator-core')} measurements on {device}", "; ".join(notes)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", type=Path, default=OUT, help=f"coefficients JSON [default: {OUT}]")
    ap.add_argument("--gpus", default=",".join(SYSTEMS), help="comma-separated catalog GPUs [default: all covered]")
    ap.add_argument("--write-tables", type=Path, default=None, help="also write the extracted tables here")
    ap.add_argument("--sample", type=int, default=0, help="keep about N evenly spaced rows per operator class")
    args = ap.parse_args(argv)
    root = data_root()
    all_rows: list[Measurement] = []
    sources: dict[str, str] = {}
    details: dict[str, str] = {}
    for gpu in args.gpus.split(","):
        if gpu not in SYSTEMS:
            sys.exit(f"error: no aiconfigurator-core data mapped for GPU {gpu!r}; choose from {', '.join(SYSTEMS)}")
        rows, sources[gpu], details[gpu] = extract(gpu, root)
        if args.sample:
            rows = [r for op in ("gemm", "attn_prefill", "attn_decode", "allreduce")
                    for sel in [[x for x in rows if x.op == op]] for r in sel[:: max(1, len(sel) // args.sample)]]
        if args.write_tables:
            write_table(rows, args.write_tables / f"{gpu}.csv", comments=(f"{sources[gpu]}: {details[gpu]}",))
        all_rows += rows
    fits = fit_table(all_rows)
    text = dumps(entries_from_fits(fits, sources, details))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    for gpu, fit in fits.items():
        errs = ", ".join(f"{op} {e.median_pct:.1f}/{e.p90_pct:.1f} %" for op, e in fit.errors.items())
        print(f"{gpu}: median/p90 error {errs}")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
