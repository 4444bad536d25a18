"""``tokensched compare``: several policies (or knob values) on one workload, optionally across loads.

Every ``simulate`` flag sets the shared base configuration; ``--variant``, ``--schedulers`` and ``--sweep``
say what differs; ``--qps`` rescales the workload to each rate. A YAML ``--config`` may also hold
``variants:`` (name -> mapping of fields, or a SPEC string) and ``qps:`` as a list.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tokensched.cli import _sim_options, apply_flags, cli
from tokensched.config import load_config_file
from tokensched.errors import UserError


def _base_options(f: Any) -> Any:
    """The simulate flags, less ``--qps`` (here a list of rates to sweep)."""
    f = _sim_options(f)
    f.__click_params__ = [p for p in f.__click_params__ if p.name != "qps"]
    return f


@cli.command()
@_base_options
@click.option("--variant", "variants", multiple=True, metavar="NAME=SPEC",
              help="A variant (repeatable): SPEC is key=value,... over config fields, e.g. "
                   "\"sarathi-512=scheduler=sarathi,max_batched_tokens=512\"; policy_options.KEY=VALUE sets a knob.")
@click.option("--schedulers", metavar="A,B,...", help="One variant per scheduler, e.g. vllm,sarathi,orca.")
@click.option("--sweep", "sweeps", multiple=True, metavar="KEY=V1,V2,...",
              help="One variant per value of a field (repeatable; crossed with the other variants).")
@click.option("--qps", "qps_list", metavar="R1,R2,...", help="Load sweep: rescale the workload to each rate (req/s).")
@click.option("--slo-target", type=float, default=0.9, show_default=True,
              help="Fraction of requests that must meet the SLO for a rate to count towards capacity.")
@click.option("--jobs", "-j", type=int, default=None, help="Parallel processes. [default: CPU count]")
@click.option("--config", "-c", "config_path", type=str, default=None,
              help="YAML base config (simulate's keys), plus optional variants: and qps: [list].")
@click.option("--output", "-o", type=str, default=None, help="Write report.md, results.json and PNG plots here.")
@click.option("--html", "html_file", is_flag=True, help="Also write report.html (one file, plots embedded).")
@click.option("--json", "as_json", is_flag=True, help="Print only results.json on stdout.")
@click.pass_context
def compare(ctx: click.Context, variants: tuple[str, ...], schedulers: str | None, sweeps: tuple[str, ...],
            qps_list: str | None, slo_target: float, jobs: int | None, config_path: str | None,
            output: str | None, html_file: bool, as_json: bool, trace_format: str | None, **flags: Any) -> None:
    """Compare policies or settings on one workload: a table, and with -o a report with plots."""
    from tokensched.compare import build_variants, parse_qps, results_json, run_comparison
    from tokensched.compare_report import (HEADERS, PROGRAM_HEADERS, capacity_rows, deployment_text, program_rows,
                                           slo_text, table_rows, write_report)

    values: dict[str, Any] = {}
    lines: dict[str, int] = {}
    source = "option"
    config_variants = None
    qps = None
    if config_path:
        values, lines = load_config_file(config_path)
        source = config_path
        config_variants = values.pop("variants", None)
        if config_variants is not None and not isinstance(config_variants, dict):
            raise UserError("variants: must map variant names to fields", where=f"{config_path}:{lines['variants']}")
        if isinstance(values.get("qps"), list):
            qps = parse_qps(values.pop("qps"))
    if html_file and not output:
        raise UserError("--html needs --output DIR")
    apply_flags(ctx, flags, values, lines)
    if qps_list is not None:
        qps = parse_qps(qps_list)
    var = build_variants(list(variants), schedulers, list(sweeps), config_variants, source)
    err = Console(stderr=True)
    progress = None
    on_point = None
    if not as_json and err.is_terminal:
        progress = Progress(TextColumn("simulating"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=err, transient=True)
        task = progress.add_task("compare", total=len(var) * (len(qps) if qps else 1))

        def on_point(done: int, total: int) -> None:
            progress.update(task, completed=done)  # type: ignore[union-attr]

        progress.start()
    try:
        comp = run_comparison(values, var, qps, jobs=jobs, trace_format=trace_format, slo_target=slo_target,
                              source=source, lines=lines, on_point=on_point)
    finally:
        if progress is not None:
            progress.stop()
    written = write_report(comp, output, html_file=html_file) if output else []
    if as_json:
        click.echo(json.dumps(results_json(comp), indent=2))
        return
    console = Console() if sys.stdout.isatty() else Console(width=200)  # a pipe or file gets unwrapped rows
    b = comp.base
    n = comp.points[0].summary["requests"]["total"]
    console.print(f"{deployment_text(comp)} · workload [bold]{b.workload}[/] ({n:,} requests) · "
                  f"SLO: {slo_text(comp)}")
    t = Table(title="Comparison", title_justify="left")
    for i, h in enumerate(HEADERS):
        t.add_column(h, justify="left" if i == 0 else "right")
    last = None
    for p, row in zip(comp.points, table_rows(comp)):
        if last is not None and p.variant != last and comp.qps and len(comp.qps) > 1:
            t.add_section()
        last = p.variant
        t.add_row(*row)
    console.print(t)
    prog = program_rows(comp)
    if prog:
        t = Table(title="Programs", title_justify="left")
        for i, h in enumerate(PROGRAM_HEADERS):
            t.add_column(h, justify="left" if i == 0 else "right")
        for row in prog:
            t.add_row(*row)
        console.print(t)
    if any(p.qps is None and p.offered_qps is not None for p in comp.points):
        console.print("[dim]* the workload's own mean arrival rate[/]")
    cap = capacity_rows(comp)
    if cap:
        console.print(f"capacity (highest rate with ≥ {comp.slo_target:.0%} of requests within the SLO): "
                      + ", ".join(f"[bold]{name}[/] {c} req/s" for name, c in cap))
    for note in comp.notes:
        console.print(f"[dim]note: {note}[/]")
    if written:
        console.print(f"[dim]wrote {', '.join(p.name for p in written)} to {output}[/]")


def _also_register_on_main() -> None:
    """Under ``python -m tokensched.cli`` the running group is ``__main__.cli``, a second copy of the module
    imported here: add the command to it too, so that invocation works like ``tokensched`` does."""
    main_mod = sys.modules.get("__main__")
    spec = getattr(main_mod, "__spec__", None)
    group = getattr(main_mod, "cli", None)
    if spec is not None and spec.name == "tokensched.cli" and isinstance(group, click.Group):
        group.add_command(compare)


_also_register_on_main()
