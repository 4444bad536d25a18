"""Calibration: the latency table format, the fit, the shipped coefficients and the CPU profile pipeline."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from tokensched.calibration import table as table_mod
from tokensched.calibration.coefficients import default_params, load_coefficients, params_from_file, shipped
from tokensched.calibration.fit import fit_table
from tokensched.calibration.table import Measurement, load_table, write_table
from tokensched.cli import main
from tokensched.errors import UserError
from tokensched.hardware import GPUS, get_gpu
from tokensched.models import get_model
from tokensched.timing import BatchShape, OperatorRoofline, RooflineParams, RooflineTiming

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data" / "calibration"
HEADER = "op,gpu,dtype,m,n,k,batch,new_tokens,context,heads,kv_heads,head_dim,bytes,tp,latency_s"


def _write(tmp_path: Path, body: str, header: str = HEADER) -> Path:
    p = tmp_path / "t.csv"
    p.write_text(f"# comment\n{header}\n{body}\n", encoding="utf-8")
    return p


# ---- the table format ---------------------------------------------------------------------------------
def test_docstring_example_parses(tmp_path):
    doc = table_mod.__doc__ or ""
    lines = [ln.strip() for ln in doc.splitlines() if ln.startswith("    ") and "," in ln and "=" not in ln]
    p = tmp_path / "example.csv"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    rows = load_table(p)
    assert [r.op for r in rows] == ["gemm", "attn_prefill", "attn_decode", "allreduce"]
    assert rows[2].context == 4096 and rows[2].batch == 64 and rows[3].bytes == 1048576 and rows[3].tp == 4


def test_write_then_load_round_trips(tmp_path):
    rows = [Measurement("gemm", "h100", "bf16", 1.5e-05, m=8, n=4096, k=4096),
            Measurement("attn_decode", "h100", "fp16", 2e-05, batch=4, context=100, heads=32, kv_heads=8, head_dim=128),
            Measurement("allreduce", "h100", "bf16", 7e-06, bytes=65536, tp=2)]
    p = tmp_path / "rt.csv"
    write_table(rows, p, comments=("made by a test",))
    assert load_table(p) == rows
    first = p.read_bytes()
    write_table(load_table(p), p, comments=("made by a test",))
    assert p.read_bytes() == first


def test_header_may_omit_unused_columns_and_aliases_are_accepted(tmp_path):
    p = _write(tmp_path, "gemm,NVIDIA H100 80GB HBM3,bfloat16,2,64,64,1e-6", header="op,gpu,dtype,m,n,k,latency_s")
    (r,) = load_table(p)
    assert (r.gpu, r.dtype, r.m) == ("h100", "bf16", 2)


@pytest.mark.parametrize("body,header,message", [
    ("conv,h100,bf16,1,2,3,,,,,,,,,1e-6", HEADER, ":3: column 'op': unknown operator 'conv'"),
    ("gemm,h100,bf16,1,2,3,,,,,,,,,fast", HEADER, ":3: column 'latency_s': expected a positive number"),
    ("gemm,h100,bf16,1,2,3,,,,,,,,,-1e-6", HEADER, ":3: column 'latency_s'"),
    ("gemm,h100,bf16,1,x,3,,,,,,,,,1e-6", HEADER, ":3: column 'n': expected an integer, got 'x'"),
    ("gemm,h100,bf16,0,2,3,,,,,,,,,1e-6", HEADER, ":3: column 'm': must be >= 1"),
    ("allreduce,h100,bf16,,,,,,,,,,1024,1,1e-6", HEADER, ":3: column 'tp': must be >= 2"),
    ("gemm,h100,int3,1,2,3,,,,,,,,,1e-6", HEADER, ":3: column 'dtype': unknown data type 'int3'"),
    ("gemm,tpu-v9,bf16,1,2,3,,,,,,,,,1e-6", HEADER, ":3: column 'gpu': unknown GPU 'tpu-v9'"),
    ("gemm,h100,bf16,1,2,3,1e-6", HEADER, ":3: expected 15 cells as in the header, got 7"),
    ("attn_decode,h100,bf16,1,1e-6", "op,gpu,dtype,batch,latency_s", ":3: column 'context': needed by op attn_decode"),
    ("gemm,h100,bf16,1,2,3,1e-6", "op,gpu,dtype,m,n,kk,latency_s", ":2: column 'kk': unknown; valid columns"),
    ("gemm,h100,1,2,3,1e-6", "op,gpu,m,n,k,latency_s", ":2: column 'dtype': missing from the header"),
])
def test_malformed_tables_name_file_line_and_column(tmp_path, body, header, message):
    p = _write(tmp_path, body, header)
    with pytest.raises(UserError) as e:
        load_table(p)
    assert str(e.value).startswith(str(p)) and message in str(e.value) and "\n" not in str(e.value)


def test_missing_and_empty_tables(tmp_path):
    with pytest.raises(UserError, match="no such latency table"):
        load_table(tmp_path / "nope.csv")
    with pytest.raises(UserError, match="no measurements"):
        load_table(_write(tmp_path, ""))


def test_calibrate_cli_reports_a_bad_table_in_one_line(tmp_path, capsys):
    p = _write(tmp_path, "gemm,h100,bf16,1,2,3,,,,,,,,,soon")
    assert main(["calibrate", str(p)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and f"{p}:3: column 'latency_s'" in err


# ---- the fit --------------------------------------------------------------------------------------------
KNOWN = RooflineParams(gemm_compute_eff=0.62, gemm_memory_eff=0.81, gemm_latency_s=3.1e-6,
                       attn_compute_eff=0.47, prefill_attn_memory_eff=0.55, prefill_attn_latency_s=9.5e-6,
                       decode_attn_memory_eff=0.77, decode_attn_latency_s=1.1e-5, decode_attn_seq_head_s=2.5e-8,
                       link_eff=0.6, allreduce_latency_s=5e-6)


def _synthetic(gpu: str, params: RooflineParams) -> list[Measurement]:
    """Rows priced by the model itself, over shapes spanning compute-, memory- and latency-bound regimes."""
    ops = OperatorRoofline(get_gpu(gpu), params)
    rows = [Measurement("gemm", gpu, "bf16", float(ops.gemm(m, n, k)), m=m, n=n, k=k)
            for m in (1, 4, 16, 64, 256, 1024, 4096, 16384) for n, k in ((1024, 1024), (4096, 4096), (28672, 8192))]
    rows += [Measurement("attn_prefill", gpu, "bf16", float(ops.attn_prefill(b, n, c, 32, 8, 128)), batch=b,
                         new_tokens=n, context=c, heads=32, kv_heads=8, head_dim=128)
             for b in (1, 8) for n in (1, 16, 128, 1024, 8192) for c in (0, 4096)]
    rows += [Measurement("attn_decode", gpu, "bf16", float(ops.attn_decode(b, c, 32, kv, 128)), batch=b, context=c,
                         heads=32, kv_heads=kv, head_dim=128)
             for b in (1, 16, 256, 2048) for c in (2, 64, 1024, 16384) for kv in (2, 8)]
    rows += [Measurement("allreduce", gpu, "bf16", float(ops.allreduce(nb, tp)), bytes=nb, tp=tp)
             for tp in (2, 4) for nb in (4096, 65536, 1 << 20, 1 << 24)]
    return rows


def test_fit_recovers_the_coefficients_that_generated_the_table():
    fit = fit_table(_synthetic("h100", KNOWN))["h100"]
    for name, value in fit.params.items():
        assert value == pytest.approx(getattr(KNOWN, name), rel=2e-3), name
    for tp in (2, 4):
        assert fit.allreduce_by_tp[tp]["link_eff"] == pytest.approx(0.6, rel=2e-3)
    for op, e in fit.errors.items():
        assert e.median_pct < 0.2 and e.p90_pct < 0.5, op


def test_roofline_timing_prices_attention_as_the_per_call_roofline():
    """The fitted per-call form and the whole-iteration model use the same formulas."""
    m, g = get_model("llama-3.1-8b"), get_gpu("h100")
    tm = RooflineTiming(m, g, 1, KNOWN)
    b, ctx = 64, 1500
    shape = BatchShape(num_decodes=b, decode_context_sum=b * ctx, num_sampled=b)
    dec = tm.iteration_time(shape) - tm.fixed_time(b, b, b)
    assert dec == pytest.approx(m.num_layers * tm.ops.attn_decode(b, ctx, 32, 8, 128), rel=1e-9)
    pre = tm.prefill_attention_time([700], [3000])
    assert pre == pytest.approx(m.num_layers * tm.ops.attn_prefill(1, 700, 3000, 32, 8, 128), rel=1e-9)


@pytest.mark.parametrize("model,gpu,tp", [("llama-2-7b", "h100", 1), ("mixtral-8x7b", "l40s", 2),
                                          ("llama-3.1-70b", "a100-80gb", 4)])
def test_decode_times_stay_bit_exact_with_calibrated_coefficients(model, gpu, tp):
    for params in (None, KNOWN):
        tm = RooflineTiming(get_model(model), get_gpu(gpu), tp, params)
        for b, ctx in ((1, 5), (3, 3 * 700 + 1), (300, 300 * 20)):
            vec = tm.decode_times(b, ctx, 40)
            for j in range(40):
                assert vec[j] == tm.iteration_time(BatchShape(num_decodes=b, decode_context_sum=ctx + j * b,
                                                              num_sampled=b))


def test_default_params_reproduce_the_hand_set_model():
    p = RooflineParams()
    assert p.mem_eff("gemm") == p.mem_eff("attn_decode") == p.memory_eff == 0.9
    assert p.gemm_latency_s == p.decode_attn_seq_head_s == 0.0


# ---- shipped coefficients ---------------------------------------------------------------------------------
def test_shipped_coefficients_cover_the_databases_gpus_and_fall_back_elsewhere():
    cals = shipped()
    assert set(cals) == {"a100-80gb", "b200", "h100", "h200", "l40s"}
    for key in GPUS:
        params, source = default_params(key)
        tm = RooflineTiming(get_model("llama-3.1-8b"), GPUS[key], 1)
        assert tm.calibration_source == source
        if key in cals:
            assert "aiconfigurator-core" in source and params == cals[key].params
            assert set(cals[key].fit_error) == {"gemm", "attn_prefill", "attn_decode", "allreduce"}
        else:
            assert source.startswith("hand-set") and params == RooflineParams()
    assert default_params("h100", 4)[0].link_eff == cals["h100"].allreduce_by_tp[4].link_eff
    assert default_params("h100", 16)[0].link_eff == cals["h100"].params.link_eff  # unmeasured tp: pooled fit


def test_simulate_says_which_coefficients_it_used(capsys):
    assert main(["simulate", "-n", "5", "-g", "h100-pcie"]) == 0
    assert "timing: hand-set roofline defaults (no calibration data for h100-pcie)" in capsys.readouterr().out


# ---- determinism of the shipped file ------------------------------------------------------------------------
def test_refit_of_the_committed_extract_reproduces_its_coefficients_byte_for_byte(tmp_path, capsys):
    out = tmp_path / "c.json"
    assert main(["calibrate", str(DATA / "h100.csv"), "-o", str(out)]) == 0
    assert out.read_bytes() == (DATA / "h100_coefficients.json").read_bytes()


def test_regenerating_the_shipped_coefficients_gives_identical_bytes(tmp_path, capsys):
    pytest.importorskip("aiconfigurator_core")
    spec = importlib.util.spec_from_file_location("calibrate_roofline", ROOT / "scripts" / "calibrate_roofline.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    out = tmp_path / "roofline_coefficients.json"
    assert mod.main(["-o", str(out)]) == 0
    assert out.read_bytes() == (ROOT / "src" / "tokensched" / "data" / "roofline_coefficients.json").read_bytes()


# ---- coefficient files and the CLI ----------------------------------------------------------------------------
@pytest.mark.parametrize("text,message", [
    ("{", "invalid JSON"),
    ('{"format": "x"}', "not a roofline coefficients file"),
    ('{"format": "tokensched-roofline-coefficients", "version": 1, "gpus": {"h100": {"params": {"speed": 1}}}}',
     "key 'gpus.h100.params.speed': unknown"),
    ('{"format": "tokensched-roofline-coefficients", "version": 1, "gpus": {"h100": {"params": {"link_eff": 2}}}}',
     "link_eff must be in (0, 1]"),
])
def test_bad_coefficient_files_are_one_line_errors(tmp_path, text, message):
    p = tmp_path / "c.json"
    p.write_text(text, encoding="utf-8")
    with pytest.raises(UserError, match=None) as e:
        load_coefficients(p)
    assert message in str(e.value) and str(e.value).startswith(str(p))


def test_cpu_profile_calibrate_simulate_pipeline(tmp_path, capsys):
    table, coeffs = tmp_path / "table.csv", tmp_path / "coeffs.json"
    assert main(["profile", "--device", "cpu", "--gpu", "h100", "--shapes", "tiny", "--repeats", "2",
                 "-o", str(table)]) == 0
    rows = load_table(table)
    assert {r.op for r in rows} == {"gemm", "attn_prefill", "attn_decode"} and all(r.dtype == "fp32" for r in rows)
    assert main(["calibrate", str(table), "-o", str(coeffs)]) == 0
    out = capsys.readouterr().out
    assert "gemm" in out and "median" in out
    params, source = params_from_file(coeffs, "h100")
    assert params.gemm_compute_eff < 0.05  # a CPU is far slower than an H100's data sheet
    assert main(["simulate", "-n", "8", "--timing-coefficients", str(coeffs), "--json"]) == 0
    cpu = json.loads(capsys.readouterr().out)
    assert main(["simulate", "-n", "8", "--json"]) == 0
    gpu = json.loads(capsys.readouterr().out)
    assert cpu["requests"]["completed"] == 8 and cpu["e2e_s"]["mean"] > 10 * gpu["e2e_s"]["mean"]


@pytest.mark.parametrize("args,message", [
    (["profile", "-o", "x.csv", "--device", "cpu"], "needs --gpu"),
    (["profile", "-o", "x.csv", "--device", "cpu", "--gpu", "h100", "--dtype", "bf16"], "float32"),
    (["simulate", "-n", "3", "--timing-coefficients", "missing.json"], "no such coefficients file"),
    (["simulate", "-n", "3", "--timing-coefficients", str(DATA / "h100_coefficients.json"), "-g", "l40s"],
     "no coefficients for GPU l40s"),
    (["simulate", "-n", "3", "--timing-coefficients", str(DATA / "h100_coefficients.json"), "--timing", "measured"],
     "roofline timing only"),
])
def test_cli_mistakes_are_one_line_errors(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_profile_on_cuda_without_torch_says_to_install_it(tmp_path, capsys):
    if importlib.util.find_spec("torch") is not None:
        pytest.skip("torch is installed")
    assert main(["profile", "-o", str(tmp_path / "t.csv")]) == 2
    assert "install torch with CUDA" in capsys.readouterr().err


def test_fit_handles_a_table_with_one_class_only():
    rows = [r for r in _synthetic("h200", KNOWN) if r.op == "gemm"]
    fit = fit_table(rows)["h200"]
    assert set(fit.params) == {"gemm_compute_eff", "gemm_memory_eff", "gemm_latency_s"} and not fit.allreduce_by_tp
    assert np.isclose(fit.roofline_params().memory_eff, 0.9)  # untouched defaults stay
