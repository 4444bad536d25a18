"""`tokensched compare`: SPEC parsing, variant building, determinism across --jobs, report files, errors."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from tokensched.cli import main
from tokensched.compare import Variant, build_variants, capacity, parse_qps, parse_spec, parse_variant, run_comparison
from tokensched.errors import UserError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def two_tenants(path: Path, n: int = 120) -> Path:
    """A small native trace with two tenants: tenant b sends longer prompts."""
    lines = []
    for i in range(n):
        tenant = "team-b" if i % 3 == 0 else "team-a"
        lines.append(json.dumps({"arrival_s": i * 0.25, "prompt_tokens": 900 if tenant == "team-b" else 200,
                                 "output_tokens": 20 + (i * 7) % 60, "tenant": tenant}))
    path.write_text("\n".join(lines) + "\n")
    return path


# ---- parsing --------------------------------------------------------------------------------------------

def test_spec_values_are_typed_and_policy_options_nest():
    assert parse_spec("scheduler=sarathi,max_batched_tokens=512,prefix-caching=false,policy_options.w=[1,2]") == {
        "scheduler": "sarathi", "max_batched_tokens": 512, "prefix_caching": False, "policy_options": {"w": [1, 2]}}
    assert parse_spec("") == {}
    assert parse_spec("router=cache-aware,router_options.cache_threshold=0.5,replicas=2") == {
        "router": "cache-aware", "router_options": {"cache_threshold": 0.5}, "replicas": 2}
    v = parse_variant("sarathi-512=scheduler=sarathi,max_batched_tokens=512")
    assert v == Variant("sarathi-512", {"scheduler": "sarathi", "max_batched_tokens": 512})
    assert parse_variant("base=") == Variant("base", {})
    assert parse_qps("8,2,4,2") == [2.0, 4.0, 8.0]


def test_schedulers_and_sweeps_cross_in_order():
    vs = build_variants(["big=max_num_seqs=512"], "vllm,orca", ["max_batched_tokens=256,1024"])
    assert [v.name for v in vs] == [
        "big max_batched_tokens=256", "big max_batched_tokens=1024", "vllm max_batched_tokens=256",
        "vllm max_batched_tokens=1024", "orca max_batched_tokens=256", "orca max_batched_tokens=1024"]
    assert vs[3].overrides == {"scheduler": "vllm", "max_batched_tokens": 1024}
    only_sweep = build_variants(sweeps=["policy_options.k=1,2"])
    assert [(v.name, v.overrides) for v in only_sweep] == [
        ("policy_options.k=1", {"policy_options": {"k": 1}}), ("policy_options.k=2", {"policy_options": {"k": 2}})]


@pytest.mark.parametrize("call, match", [
    (lambda: parse_variant("nospec"), "expected NAME=SPEC"),
    (lambda: parse_variant("a=bogus=1"), "unknown field 'bogus'"),
    (lambda: parse_variant("a=scheduler"), "expected key=value"),
    (lambda: parse_variant("a=policy_options.=3"), "empty option name"),
    (lambda: parse_variant("a=tp.x=3"), "only policy_options, router_options, .* take FIELD.KEY"),
    (lambda: build_variants(), "nothing to compare"),
    (lambda: build_variants(["a=", "a=tp=2"]), "two variants are named 'a'"),
    (lambda: build_variants(sweeps=["tp=1,1"]), "repeated value"),
    (lambda: build_variants(sweeps=["tp"]), "expected KEY=V1,V2"),
    (lambda: parse_qps("1,-2"), "positive"),
    (lambda: parse_qps("x"), "positive numbers"),
])
def test_parse_errors_are_user_errors(call, match):
    with pytest.raises(UserError, match=match):
        call()


def test_plan_errors_name_the_variant():
    with pytest.raises(UserError, match="variant 'x': unknown scheduler 'nope'"):
        run_comparison({"num_requests": 5}, [Variant("x", {"scheduler": "nope"})])
    with pytest.raises(UserError, match="variant 'x': field 'max-num-seqs'"):
        run_comparison({"num_requests": 5}, [Variant("x", {"max_num_seqs": 0})])
    with pytest.raises(UserError, match="sets qps, but --qps sweeps"):
        run_comparison({"num_requests": 5}, [Variant("x", {"qps": 3})], [1.0])


# ---- running ----------------------------------------------------------------------------------------------

def test_capacity_and_point_order():
    base = {"num_requests": 60, "model": "llama-3.2-1b", "slo_ttft": 0.5, "slo_tpot": 0.05}
    comp = run_comparison(base, [Variant("sarathi", {"scheduler": "sarathi"}), Variant("orca", {"scheduler": "orca"})],
                          [4.0, 1.0], jobs=1)
    assert [(p.variant, p.qps) for p in comp.points] == [("sarathi", 1.0), ("sarathi", 4.0), ("orca", 1.0),
                                                        ("orca", 4.0)]
    assert all(p.summary["requests"]["total"] == 60 and "wall_s" not in p.summary for p in comp.points)
    assert capacity(comp, "orca") == {"qps": 4.0, "all_met": True}


def test_results_are_identical_for_one_and_two_jobs(tmp_path, capsys):
    trace = two_tenants(tmp_path / "t.jsonl")
    args = ["compare", "-w", str(trace), "-m", "llama-3.2-1b", "--schedulers", "vllm,sarathi", "--variant",
            "orca-64=scheduler=orca,max_num_seqs=64", "--qps", "8,2", "--slo-ttft", "200ms", "--slo-tpot", "20ms",
            "--json"]
    outs = []
    for jobs in ("1", "2"):
        assert main([*args, "-j", jobs]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1]
    res = json.loads(outs[0])
    assert [(p["variant"], p["qps"]) for p in res["points"]] == [  # --variant entries first, then --schedulers
        ("orca-64", 2.0), ("orca-64", 8.0), ("vllm", 2.0), ("vllm", 8.0), ("sarathi", 2.0), ("sarathi", 8.0)]
    assert res["points"][0]["config"]["max_num_seqs"] == 64 and set(res["capacity"]) == {"vllm", "sarathi", "orca-64"}


def test_cli_report_files_and_valid_pngs(tmp_path, capsys):
    trace = two_tenants(tmp_path / "t.jsonl")
    out = tmp_path / "out"
    assert main(["compare", "-w", str(trace), "-m", "llama-3.2-1b", "--schedulers", "vllm,sarathi", "--qps", "2,8",
                 "--slo-ttft", "200ms", "--slo-tpot", "20ms", "-o", str(out), "--html"]) == 0
    stdout = capsys.readouterr().out
    for word in ("TTFT", "goodput", "vllm", "sarathi", "capacity", "wrote"):
        assert word in stdout
    assert {p.name for p in out.iterdir()} == {
        "latency_cdf_qps-2.png", "latency_cdf_qps-8.png", "load.png", "tenants_qps-2.png", "tenants_qps-8.png",
        "results.json", "report.md", "report.html"}
    report = (out / "report.md").read_text()
    for png in out.glob("*.png"):
        w, h = png_size(png)
        assert w > 300 and h > 200 and png.stat().st_size > 0
        assert f"]({png.name})" in report
    assert "| sarathi | 8 |" in report and "ITL ms p99" in report and "## Capacity" in report
    assert report.count("data:image") == 0 and (out / "report.html").read_text().count("data:image/png;base64,") == 5


def test_cli_single_point_without_slo_says_so(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["compare", "-n", "40", "-m", "llama-3.2-1b", "--variant", "base=", "-o", str(out)]) == 0
    assert "none given" in capsys.readouterr().out
    assert png_size(out / "load.png")[0] > 0 and not list(out.glob("tenants*"))
    assert json.loads((out / "results.json").read_text())["capacity"] is None


def test_cli_yaml_variants_and_qps_list(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("num-requests: 30\nmodel: llama-3.2-1b\nqps: [1, 3]\nvariants:\n"
                   "  small: {max-num-seqs: 4}\n  chunky: scheduler=sarathi,max_batched_tokens=256\n")
    assert main(["compare", "-c", str(cfg), "--json", "-j", "1"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert [v["name"] for v in res["variants"]] == ["small", "chunky"] and res["qps"] == [1.0, 3.0]


@pytest.mark.parametrize("args, match", [
    ([], "nothing to compare"),
    (["--variant", "a=nofield=1"], "unknown field 'nofield'"),
    (["--variant", "a=max_num_seqs=-1"], "variant 'a': field 'max-num-seqs'"),
    (["--sweep", "max_batched_tokens"], "--sweep: expected KEY=V1,V2"),
    (["--schedulers", "vllm", "--qps", "0"], "--qps: rates must be positive"),
    (["--schedulers", "vllm", "--jobs", "0"], "--jobs: expected at least 1"),
    (["--schedulers", "vllm", "--html"], "--html needs --output"),
    (["--schedulers", "vllm,orca", "--kv-blocks", "2", "-j", "2"], "variant 'vllm': KV cache too small"),
])
def test_cli_errors_are_one_line_exit_2(args, match, capsys):
    assert main(["compare", "-n", "20", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and match in err and err.count("\n") == 1
