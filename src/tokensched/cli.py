"""The ``tokensched`` command line.

Every mistake in a flag, file or config ends in one line on stderr (``error: ...``) and exit code 2.
"""

from __future__ import annotations

import sys
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tokensched import __version__
from tokensched.config import load_config_file, make_config
from tokensched.errors import UserError

# Flags named like SimConfig fields (dashes for underscores); a YAML --config uses the same keys.
_SIM_OPTIONS = [
    click.option("--workload", "-w", help="Preset name or trace file (see `tokensched list`). [default: chat]"),
    click.option("--trace-format", type=str, default=None, help="Force a trace format instead of detecting it."),
    click.option("--model", "-m", help="Model catalog name or path to a Hugging Face config.json. [default: llama-3.1-8b]"),
    click.option("--gpu", "-g", help="GPU type. [default: h100]"),
    click.option("--tp", type=int, help="Tensor-parallel degree. [default: 1]"),
    click.option("--scheduler", "-s", help="Scheduler policy (see `tokensched list schedulers`). [default: vllm]"),
    click.option("--admission", help="Admission: aggressive, conservative, past-future. [default: aggressive]"),
    click.option("--preemption", help="Preemption mode: recompute or swap. [default: recompute]"),
    click.option("--eviction", help="Prefix-cache eviction: lru, lfu, priority. [default: lru]"),
    click.option("--policy-option", "policy_option", multiple=True, metavar="KEY=VALUE",
                 help="A knob of the chosen policies (repeatable), e.g. --policy-option block_group=8."),
    click.option("--max-num-seqs", type=int, help="Cap on running sequences. [default: 256]"),
    click.option("--max-batched-tokens", type=int, help="Token budget per iteration. [default: per scheduler]"),
    click.option("--block-size", type=int, help="Tokens per KV block. [default: 16]"),
    click.option("--kv-blocks", type=int, help="KV blocks per replica. [default: from GPU memory]"),
    click.option("--gpu-memory-utilization", type=float, help="Fraction of GPU memory for vLLM. [default: 0.9]"),
    click.option("--prefix-caching/--no-prefix-caching", default=None, help="Prefix caching. [default: on]"),
    click.option("--cpu-kv-gb", type=float, help="CPU memory per replica for KV evicted from the GPU. [default: 0]"),
    click.option("--max-model-len", type=int, help="Longest prompt+output. [default: the model's]"),
    click.option("--qps", type=float, help="Rescale arrivals to this mean request rate."),
    click.option("--num-requests", "-n", type=int, help="Number of requests (presets: 1000; traces: all)."),
    click.option("--window", help="Keep arrivals in START:END of a trace, e.g. 10m:20m."),
    click.option("--seed", type=int, help="Random seed. [default: 0]"),
    click.option("--slo-ttft", help="TTFT SLO, e.g. 500ms."),
    click.option("--slo-tpot", help="TPOT SLO, e.g. 50ms."),
    click.option("--macro-steps/--no-macro-steps", default=None, help="Advance steady decode batches in one step."),
    click.option("--replicas", type=int, help="Identical replicas behind a router. [default: 1]"),
    click.option("--router", help="Router for several replicas (see `tokensched list routers`). [default: round-robin]"),
    click.option("--router-option", "router_option", multiple=True, metavar="KEY=VALUE",
                 help="A knob of the router (repeatable), e.g. --router-option cache_threshold=0.5."),
    click.option("--report-interval", help="How often replicas report load to the router, e.g. 500ms. [default: 0]"),
    click.option("--router-latency", help="Router's own time per request, e.g. 2ms. [default: 0]"),
    click.option("--autoscaler", help="Replica autoscaler: none or load (see docs/cluster.md). [default: none]"),
    click.option("--autoscaler-option", "autoscaler_option", multiple=True, metavar="KEY=VALUE",
                 help="A knob of the autoscaler (repeatable), e.g. --autoscaler-option cold_start_s=60."),
    click.option("--price-per-gpu-hour", type=float, help="USD per GPU-hour, for the cost report."),
    click.option("--timing", help="Timing backend: roofline, measured (see `tokensched list timing`). [default: roofline]"),
    click.option("--timing-coefficients", help="Roofline coefficients JSON from `tokensched calibrate`. [default: shipped fit]"),
    click.option("--program-policy", help="Program-level policy for program workloads (see `tokensched list programs`). "
                 "[default: request-fcfs]"),
    click.option("--program-option", "program_option", multiple=True, metavar="KEY=VALUE",
                 help="A knob of the program policy (repeatable), e.g. --program-option ttl_s=2."),
    click.option("--num-programs", type=int, help="Programs to generate or replay. [default: presets 100, traces all]"),
    click.option("--program-rate", type=float, help="Program arrivals per second (Poisson)."),
    click.option("--tool-scale", type=float, help="Multiply every tool-call duration by this. [default: 1]"),
    click.option("--program-deadline", help="Deadline of programs without one, after their arrival, e.g. 30s."),
    click.option("--program-hash-tokens", type=int, help="Tokens per prefix-cache hash of program calls; larger is "
                 "faster, reuse is floored to it. [default: 16]"),
]


def parse_options(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; values are parsed as YAML scalars (numbers, booleans, lists) when they can be."""
    import yaml

    out: dict[str, Any] = {}
    for p in pairs:
        key, sep, raw = p.partition("=")
        if not sep or not key.strip():
            raise UserError(f"expected KEY=VALUE, got {p!r}", where="--policy-option")
        try:
            out[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out


# repeatable KEY=VALUE flags and the config dict each one fills
_OPTION_FLAGS = {"policy_option": "policy_options", "router_option": "router_options",
                 "autoscaler_option": "autoscaler_options", "program_option": "program_options"}


def apply_flags(ctx: click.Context, flags: dict[str, Any], values: dict[str, Any], lines: dict[str, int]) -> None:
    """Overlay the flags given on the command line onto config-file ``values`` (flags win)."""
    pairs = {key: flags.pop(flag, ()) for flag, key in _OPTION_FLAGS.items()}
    for name, v in flags.items():
        if v is not None and ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE:
            values[name] = v
            lines.pop(name, None)
    for key, given in pairs.items():
        if given:
            values[key] = {**values.get(key, {}), **parse_options(given)}


def _sim_options(f: Any) -> Any:
    for opt in reversed(_SIM_OPTIONS):
        f = opt(f)
    return f


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tokensched")
def cli() -> None:
    """tokensched: simulate and compare LLM serving schedulers."""


@cli.command()
@_sim_options
@click.option("--config", "-c", "config_path", type=str, default=None, help="YAML file with the same keys as the flags.")
@click.option("--output", "-o", type=str, default=None, help="Write summary.json, requests.csv, timeline.csv here.")
@click.option("--json", "as_json", is_flag=True, help="Print only the summary JSON on stdout.")
@click.pass_context
def simulate(ctx: click.Context, config_path: str | None, output: str | None, as_json: bool, trace_format: str | None,
             **flags: Any) -> None:
    """Simulate one serving deployment (or programs: docs/programs.md) and print latency and throughput."""
    from tokensched.simulator import simulate as run_sim
    from tokensched.workload import load_workload

    values: dict[str, Any] = {}
    lines: dict[str, int] = {}
    source = "option"
    if config_path:
        values, lines = load_config_file(config_path)
        source = config_path
    apply_flags(ctx, flags, values, lines)
    cfg = make_config(values, source=source, lines=lines)
    from tokensched.programs.sources import is_program_workload

    if trace_format is None and is_program_workload(cfg.workload):
        _simulate_programs(cfg, output, as_json)
        return
    workload = load_workload(cfg.workload, num_requests=cfg.num_requests, qps=cfg.qps, seed=cfg.seed,
                             window=cfg.window_bounds(), fmt=trace_format)
    if not workload.requests:
        raise UserError("the workload has no requests", where=cfg.workload)
    err = Console(stderr=True)
    progress = None
    on_progress = None
    if not as_json and err.is_terminal and len(workload.requests) >= 5000:
        progress = Progress(TextColumn("simulating"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=err, transient=True)
        task = progress.add_task("sim", total=len(workload.requests))
        last = [0]

        def on_progress(n: int) -> None:
            if n - last[0] >= 500:
                last[0] = n
                progress.update(task, completed=n)  # type: ignore[union-attr]

        progress.start()
    try:
        if cfg.is_cluster:
            from tokensched.cluster.sim import simulate_cluster

            result: Any = simulate_cluster(cfg, workload.requests, on_progress=on_progress)
        else:
            result = run_sim(cfg, workload.requests, on_progress=on_progress)
    finally:
        if progress is not None:
            progress.stop()
    _report(result, output, as_json, workload.notes)


def _report(result: Any, output: str | None, as_json: bool, notes: list[str]) -> None:
    """Write ``--output`` files, then print the summary JSON or the tables."""
    from tokensched.report import print_summary, summary_json, write_outputs

    written = write_outputs(result, output) if output else []
    if as_json:
        click.echo(summary_json(result.summary))
    else:
        print_summary(result, Console(), notes)
        if written:
            Console().print(f"[dim]wrote {', '.join(p.name for p in written)} to {output}[/]")


def _simulate_programs(cfg: Any, output: str | None, as_json: bool) -> None:
    from tokensched.programs.sim import simulate_programs
    from tokensched.programs.sources import load_programs

    for flag, v in (("--qps", cfg.qps), ("--num-requests", cfg.num_requests), ("--window", cfg.window)):
        if v is not None:
            raise UserError(f"{flag} applies to request traces; for programs use --program-rate / --num-programs",
                            where=flag)
    pw = load_programs(cfg.workload, num_programs=cfg.num_programs, rate=cfg.program_rate, seed=cfg.seed,
                       tool_scale=cfg.tool_scale, deadline_s=cfg.program_deadline)
    result = simulate_programs(cfg, pw.programs, cfg.program_policy, cfg.program_options)
    _report(result, output, as_json, pw.notes)


@cli.command(name="list")
@click.argument("what", required=False,
                type=click.Choice(["schedulers", "policies", "routers", "programs", "models", "gpus", "timing", "presets",
                                   "formats"], case_sensitive=False))
def list_cmd(what: str | None) -> None:
    """Show schedulers, models, GPUs, workload presets and trace formats."""
    from tokensched.hardware import GPUS
    from tokensched.models import MODELS
    from tokensched.policies import SCHEDULERS
    from tokensched.workload import PRESETS, TRACE_FORMATS

    console = Console()
    show = [what.lower()] if what else ["schedulers", "policies", "routers", "programs", "models", "gpus", "timing",
                                        "presets", "formats"]
    if "schedulers" in show:
        t = Table("scheduler", "default budget", "description", "reference", "options", title="Schedulers",
                  title_justify="left")
        for k, s in SCHEDULERS.items():
            t.add_row(k, "max_model_len" if s.max_batched_tokens is None else str(s.max_batched_tokens),
                      s.description, s.reference, ", ".join(s.factory.Options.model_fields) or "–")
        console.print(t)
    if "policies" in show:
        from tokensched.eviction import EVICTORS
        from tokensched.policies import ADMISSIONS
        from tokensched.preemption import PREEMPTIONS

        t = Table("flag", "name", "description", "options", title="Admission, preemption and eviction policies",
                  title_justify="left")
        for flag, reg in (("--admission", {k: (c, d) for k, (c, d) in ADMISSIONS.items()}),
                          ("--preemption", {k: (c, d) for k, (c, d) in PREEMPTIONS.items()}),
                          ("--eviction", {k: (None, d) for k, (_, d) in EVICTORS.items()})):
            for k, (cls, d) in reg.items():
                opts = ", ".join(getattr(cls, "Options").model_fields) if cls is not None else ""
                t.add_row(flag, k, d, opts or "–")
        console.print(t)
    if "routers" in show:
        from tokensched.cluster.routers import ROUTERS

        t = Table("router", "description", "options", title="Routers (--replicas N --router NAME)",
                  title_justify="left")
        for k, r in ROUTERS.items():
            t.add_row(k, (r.__doc__ or "").strip().split("\n")[0], ", ".join(r.Options.model_fields) or "–")
        console.print(t)
    if "programs" in show:
        from tokensched.programs.policies import PROGRAM_POLICIES
        from tokensched.programs.sources import PROGRAM_PRESETS

        t = Table("program policy", "description", "reference", "options",
                  title="Program policies (--program-policy, program workloads)", title_justify="left")
        for k, c in PROGRAM_POLICIES.items():
            t.add_row(k, (c.__doc__ or "").strip().split("\n")[0], c.reference, ", ".join(c.Options.model_fields))
        console.print(t)
        t = Table("program preset", "description", "programs/s", title="Program workloads (--workload NAME; also a "
                  "SWE-agent rounds JSONL or a programs JSON file)", title_justify="left")
        for k, p in PROGRAM_PRESETS.items():
            t.add_row(k, p.description, f"{p.rate:g}")
        console.print(t)
    if "models" in show:
        t = Table("model", "params", "layers", "hidden", "heads/kv", "experts", "max len", title="Models",
                  title_justify="left")
        for k, m in MODELS.items():
            t.add_row(k, f"{m.num_params / 1e9:.1f}B", str(m.num_layers), str(m.hidden_size),
                      f"{m.num_heads}/{m.num_kv_heads}",
                      f"{m.num_experts} (top-{m.experts_per_token})" if m.is_moe else "–",
                      f"{m.max_position_embeddings:,}")
        console.print(t)
    if "gpus" in show:
        t = Table("gpu", "name", "BF16 TFLOP/s", "HBM GB/s", "memory GiB", "interconnect GB/s", title="GPUs",
                  title_justify="left")
        for k, g in GPUS.items():
            t.add_row(k, g.name, f"{g.bf16_flops / 1e12:,.0f}", f"{g.hbm_bandwidth / 1e9:,.0f}",
                      f"{g.hbm_bytes / 2**30:,.1f}", f"{g.interconnect_bandwidth / 1e9:,.0f} ({g.interconnect})")
        console.print(t)
    if "timing" in show:
        from tokensched.timing_backends import TIMING_BACKENDS

        t = Table("timing", "description", title="Timing backends (--timing)", title_justify="left")
        for k, b in TIMING_BACKENDS.items():
            t.add_row(k, b.description)
        console.print(t)
    if "presets" in show:
        t = Table("preset", "description", "source", title="Workload presets", title_justify="left")
        for k, p in PRESETS.items():
            t.add_row(k, p.description, p.source)
        console.print(t)
    if "formats" in show:
        t = Table("format", "description", title="Trace formats", title_justify="left")
        for k, d in TRACE_FORMATS.items():
            t.add_row(k, d)
        console.print(t)


from tokensched import cli_compare  # noqa: E402,F401  (registers `compare`)
from tokensched.cli_validate import validate as _validate; cli.add_command(_validate)  # noqa: E402,E702
from tokensched import cli_calibrate  # noqa: E402,F401  (registers `profile` and `calibrate`)
from tokensched import cli_rollout  # noqa: E402,F401  (registers `rollout`)


def main(argv: list[str] | None = None) -> int:
    """Entry point: one-line errors and exit code 2 for every user mistake."""
    if not (sys.argv[1:] if argv is None else argv):
        click.echo(cli.get_help(click.Context(cli, info_name="tokensched")))
        return 0
    try:
        cli.main(args=argv, prog_name="tokensched", standalone_mode=False)
    except UserError as e:
        click.echo(f"error: {e}", err=True)
        return 2
    except click.UsageError as e:
        click.echo(f"error: {e.format_message()}", err=True)
        return 2
    except click.Abort:
        click.echo("error: aborted", err=True)
        return 130
    except BrokenPipeError:  # e.g. `tokensched list | head`
        return 0
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
