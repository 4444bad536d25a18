"""``tokensched validate``: score the simulator against the real vLLM runs in a ground-truth directory.

Kept apart from ``cli.py`` so that the main command line only pays for a ``click`` decorator: numpy, the
simulator and matplotlib are imported inside the command.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

DEFAULT_GROUNDTRUTH = os.path.join("..", "shared", "groundtruth", "vllm-h100")


@click.command()
@click.option("--groundtruth", default=DEFAULT_GROUNDTRUTH, show_default=True,
              help="Ground-truth directory (workloads/, server_configs/, measured/, model_configs/).")
@click.option("--timing", default=None, help="Timing backend, e.g. roofline or measured. [default: the simulator's]")
@click.option("--timing-coefficients", "coefficients", default=None,
              help="Roofline coefficients JSON (from `tokensched calibrate`) instead of the shipped fit.")
@click.option("--runs", "pattern", default="*", show_default=True, help="Only runs whose name matches this glob.")
@click.option("--prefix", type=click.Choice(["reconstructed", "system-only", "none"]), default="reconstructed",
              show_default=True, help="Prefix sharing: rebuilt prompt repeats, shared system prompts only, or none.")
@click.option("--overhead", type=click.Choice(["fit", "fit-steps", "none"]), default="fit", show_default=True,
              help="Client overhead added to simulated TTFT/E2E, fitted leave-one-out on the measured runs: a "
                   "constant (fit), a number of decode steps (fit-steps), or none.")
@click.option("--output", "-o", default=None, help="Write report.json and one E2E CDF plot per run here.")
@click.option("--json", "as_json", is_flag=True, help="Print only the report JSON on stdout.")
def validate(groundtruth: str, timing: str | None, coefficients: str | None, pattern: str, prefix: str,
             overhead: str, output: str | None, as_json: bool) -> None:
    """Replay real vLLM runs and compare simulated with measured TTFT and E2E latency."""
    import json
    import time

    from rich.console import Console

    from tokensched.errors import UserError
    from tokensched.validate import run_validation
    from tokensched.validate_report import print_report, write_report

    if not Path(groundtruth).is_dir():
        raise UserError("ground-truth directory not found (pass --groundtruth DIR)", where=groundtruth)
    err = Console(stderr=True)
    t0 = time.perf_counter()

    def on_run(run: object) -> None:
        if not as_json and err.is_terminal:
            err.print(f"[dim]replaying {getattr(run, 'name', run)}…[/]")

    doc, results = run_validation(groundtruth, timing=timing, pattern=pattern, prefix=prefix, overhead=overhead,
                                  coefficients=coefficients, on_run=on_run)
    lines = write_report(doc, results, output) if output else []
    if as_json:
        click.echo(json.dumps(doc, indent=2, allow_nan=False))
        return
    console = Console()
    print_report(doc, console)
    for line in lines:
        console.print(f"[dim]{line}[/]")
    console.print(f"[dim]{len(results)} runs replayed in {time.perf_counter() - t0:.1f} s[/]")
