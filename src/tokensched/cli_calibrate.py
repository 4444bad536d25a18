"""``tokensched profile`` and ``tokensched calibrate``: measure operator latencies, fit roofline coefficients.

    tokensched profile -o table.csv                 # on this machine's GPU (needs torch with CUDA)
    tokensched calibrate table.csv -o coeffs.json   # fit, print the error per operator class
    tokensched simulate --timing-coefficients coeffs.json ...

The table format and the fit are documented in docs/timing.md ("Calibration").
"""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from tokensched.cli import cli
from tokensched.errors import UserError


def _table_source(path: str) -> str:
    """The table's first ``#`` comment line (how it was made), else its file name."""
    try:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            if line.strip().startswith("#"):
                return line.strip().lstrip("#").strip()
            if line.strip():
                break
    except (OSError, UnicodeDecodeError):
        pass
    return f"the operator latency table {Path(path).name}"


@cli.command(name="profile")
@click.option("--output", "-o", required=True, help="Write the operator latency table (CSV) here.")
@click.option("--device", type=click.Choice(["cuda", "cpu"]), default="cuda", show_default=True,
              help="cuda: PyTorch kernels on this GPU; cpu: numpy kernels (for testing the pipeline).")
@click.option("--gpu", "-g", default=None,
              help="Catalog GPU the efficiencies are relative to. [default: detected; required with --device cpu]")
@click.option("--shapes", type=click.Choice(["default", "tiny"]), default=None,
              help="default: serving-sized (Llama 8B/70B projections); tiny: seconds on a CPU. "
                   "[default: default on cuda, tiny on cpu]")
@click.option("--dtype", type=click.Choice(["bf16", "fp16", "fp32"]), default=None,
              help="Data type. [default: bf16 on cuda, fp32 on cpu]")
@click.option("--repeats", type=int, default=10, show_default=True, help="Timed samples per shape (median kept).")
@click.option("--tp", "tp_list", default=None, metavar="2,4,...",
              help="All-reduce degrees to measure (cuda). [default: 2, 4, 8 up to the GPUs visible]")
def profile_cmd(output: str, device: str, gpu: str | None, shapes: str | None, dtype: str | None, repeats: int,
                tp_list: str | None) -> None:
    """Measure GEMM, attention and all-reduce latencies and write an operator latency table."""
    from tokensched.calibration.profile import profile
    from tokensched.calibration.table import write_table

    tps = None
    if tp_list is not None:
        try:
            tps = [int(x) for x in tp_list.split(",") if x.strip()]
        except ValueError:
            raise UserError(f"expected comma-separated integers, got {tp_list!r}", where="tp") from None
    err = Console(stderr=True)
    with err.status("profiling") as status:
        rows, desc = profile(device, gpu, shapes or ("tiny" if device == "cpu" else "default"), dtype, repeats, tps,
                             on_progress=lambda i, n: status.update(f"profiling {i}/{n}"))
    write_table(rows, output, comments=(desc,))
    Console().print(f"wrote {len(rows)} measurements to {output}")


@cli.command(name="calibrate")
@click.argument("table")
@click.option("--output", "-o", default=None, help="Write the fitted coefficients (JSON) here.")
def calibrate_cmd(table: str, output: str | None) -> None:
    """Fit roofline coefficients to an operator latency TABLE and print the error per operator class."""
    from tokensched.calibration.coefficients import dumps, entries_from_fits
    from tokensched.calibration.fit import fit_table
    from tokensched.calibration.table import load_table

    rows = load_table(table)
    fits = fit_table(rows)
    console = Console()
    t = Table("gpu", "operator", "rows", "median |error|", "p90 |error|", title="Fit error per operator class",
              title_justify="left")
    for gpu, fit in fits.items():
        for op, e in fit.errors.items():
            t.add_row(gpu, op, f"{e.rows:,}", f"{e.median_pct:.1f} %", f"{e.p90_pct:.1f} %")
    console.print(t)
    p = Table("gpu", "coefficient", "value", title="Fitted coefficients", title_justify="left")
    for gpu, fit in fits.items():
        for k, v in fit.params.items():
            p.add_row(gpu, k, f"{v:.4g}")
        for tp, fields in fit.allreduce_by_tp.items():
            for k, v in fields.items():
                p.add_row(gpu, f"{k} (tp {tp})", f"{v:.4g}")
    console.print(p)
    if output:
        src = _table_source(table)
        text = dumps(entries_from_fits(fits, {gpu: src for gpu in fits}))
        try:
            Path(output).parent.mkdir(parents=True, exist_ok=True)
            Path(output).write_text(text, encoding="utf-8")
        except OSError as e:
            raise UserError(f"cannot write coefficients: {e.strerror}", where=output) from None
        console.print(f"wrote {output}; use it with: tokensched simulate --timing-coefficients {output}")
