"""`tokensched validate`: run discovery, the error metric, prompt/prefix reconstruction, the CLI, error paths."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from tokensched.cli import main
from tokensched.errors import UserError
from tokensched.validate_report import RunResult, compare, fit_overheads, overall, pct_error
from tokensched.validate_runs import (
    PromptLayout,
    assign_slots,
    build_replay,
    chain_hashes,
    discover_runs,
    load_measured,
    period_agreement,
    resolve_layout,
    slot_hashes,
)

TINY_MODEL = {"hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
              "intermediate_size": 512, "vocab_size": 1000, "max_position_embeddings": 4096}
PROFILE = {"data": {"type": "shared_prefix", "shared_prefix": {
    "num_groups": 2, "num_prompts_per_group": 2, "system_prompt_len": 32, "question_len": 60, "output_len": 8}}}


def _write_run(root: Path, name: str, rows: list[dict], measured: list[dict] | None) -> None:
    (root / "workloads").mkdir(parents=True, exist_ok=True)
    (root / "workloads" / f"{name}.json").write_text(json.dumps({
        "config": {"tensor_parallelism": 1, "max_num_seqs": 8, "max_num_batched_tokens": 256,
                   "kv_blocks_total_gpu": 400, "block_size": 16}, "requests": rows}))
    sdir = root / "server_configs" / name
    sdir.mkdir(parents=True)
    (sdir / "exp-config.yaml").write_text("model: org/Tiny\ntensor_parallelism: 1\nmax_model_len: 1024\n"
                                          "max_num_batched_tokens: 256\nmax_num_seqs: 8\n")
    (sdir / "workload-profile.json").write_text(json.dumps(PROFILE))
    mdir = root / "model_configs" / "Tiny"
    mdir.mkdir(parents=True, exist_ok=True)
    (mdir / "config.json").write_text(json.dumps(TINY_MODEL))
    if measured is not None:
        (root / "measured").mkdir(exist_ok=True)
        (root / "measured" / f"{name}_ground_truth.json").write_text(json.dumps(measured))


LENS = [93, 90, 95, 91]  # prompt length of each of the 4 slots


@pytest.fixture
def tiny_gt(tmp_path: Path) -> Path:
    """Two tiny runs: 'chat' (measured, 12 requests) and 'reasoning' (2 failed rows with 0 tokens, unmeasured)."""
    root = tmp_path / "gt"
    rows = [{"index": i, "arrival_time_us": i * 200_000, "input_tokens": LENS[i % 4],
             "output_tokens": 0 if i == 5 else 7, "prefix_group": "", "has_error": False} for i in range(12)]
    meas = [{"index": i, "has_error": False, "ttft_s": 0.02, "e2e_s": 0.2} for i in range(12)]
    _write_run(root, "20260101-000000-tiny-tp1-chat", rows, meas)
    rows2 = [dict(r) for r in rows]
    for i in (6, 7):
        rows2[i].update(input_tokens=0, output_tokens=0, has_error=True)
    _write_run(root, "20260101-000100-tiny-tp1-reasoning", rows2, None)
    return root


# ----------------------------------------------------------------------------- discovery


def test_discover_runs_finds_files_and_filters(tiny_gt: Path) -> None:
    runs = discover_runs(tiny_gt)
    assert [r.name for r in runs] == ["20260101-000000-tiny-tp1-chat", "20260101-000100-tiny-tp1-reasoning"]
    assert runs[0].measured is not None and runs[1].measured is None
    assert runs[0].model_config == tiny_gt / "model_configs" / "Tiny" / "config.json"
    assert runs[1].profile_name == "reasoning"
    assert [r.name for r in discover_runs(tiny_gt, "*chat")] == ["20260101-000000-tiny-tp1-chat"]


def test_discover_errors(tmp_path: Path, tiny_gt: Path) -> None:
    with pytest.raises(UserError, match="ground-truth directory not found"):
        discover_runs(tmp_path / "nope")
    with pytest.raises(UserError, match="no workloads/ folder"):
        discover_runs(tmp_path)
    with pytest.raises(UserError, match="no run matches"):
        discover_runs(tiny_gt, "*llama*")
    (tiny_gt / "server_configs" / "20260101-000000-tiny-tp1-chat" / "exp-config.yaml").unlink()
    with pytest.raises(UserError, match="missing exp-config.yaml"):
        discover_runs(tiny_gt)


# ----------------------------------------------------------------------------- the error metric


def test_compare_exact_numbers() -> None:
    c = compare(np.array([1.0, 2.0, 3.0, 4.0]), np.array([2.0, 2.0, 2.0, 2.0]))
    assert c["mean"] == {"measured": 2.0, "simulated": 2.5, "error_pct": 25.0}
    assert c["p50"]["simulated"] == 2.5 and c["p50"]["error_pct"] == 25.0
    assert c["p90"]["simulated"] == pytest.approx(3.7) and c["p90"]["error_pct"] == pytest.approx(85.0)
    assert c["p99"]["simulated"] == pytest.approx(3.97) and c["p99"]["error_pct"] == pytest.approx(98.5)
    assert compare(np.array([1.0]), None)["p50"] == {"measured": None, "simulated": 1.0, "error_pct": None}
    assert pct_error(0.9, 1.0) == pytest.approx(-10.0) and pct_error(1.0, 0.0) is None


def _result(name: str, kind: str, residual: float | None, sim_ttft: float, meas_ttft: float | None) -> RunResult:
    n = 4
    st, se = np.full(n, sim_ttft), np.full(n, 1.0)
    mt = None if meas_ttft is None else np.full(n, meas_ttft)
    me = None if meas_ttft is None else np.full(n, 1.1)
    return RunResult(name, "m", 1, "p", kind, n, n, residual, output_len=11, samples=(st, se, mt, me))


def test_overhead_is_fitted_leave_one_out_on_measured_runs_only() -> None:
    rs = [_result("a", "measured", 0.01, 0.01, 0.02), _result("b", "measured", 0.02, 0.01, 0.03),
          _result("c", "measured", 0.04, 0.01, 0.05), _result("d", "predicted", None, 0.01, None),
          _result("e", "overloaded", None, 0.01, 0.5)]
    fit = fit_overheads(rs, "fit")
    assert fit["value_s"] == 0.02 and fit["fitted_on"] == ["a", "b", "c"]
    assert [r.overhead_s for r in rs] == pytest.approx([0.03, 0.025, 0.015, 0.02, 0.02])
    # run a: simulated TTFT 0.01 + 0.03 = 0.04 against 0.02 measured; E2E 1.03 against 1.1
    assert rs[0].ttft_s["p50"]["error_pct"] == pytest.approx(100.0)
    assert rs[0].e2e_s["p50"]["error_pct"] == pytest.approx((1.03 - 1.1) / 1.1 * 100)
    assert rs[0].tpot_s["p50"]["error_pct"] == pytest.approx((0.099 - 0.108) / 0.108 * 100)  # overhead cancels
    o = overall(rs, "measured")
    assert o["ttft_s"]["p50"] == pytest.approx(np.median([100.0, (0.035 - 0.03) / 0.03 * 100, 50.0]))
    steps = fit_overheads(rs, "fit-steps")  # every run's simulated step is (1 - 0.01) / 10 s here
    assert steps["value_steps"] == pytest.approx(0.02 / 0.099) and steps["value_s"] is None
    assert [r.overhead_s for r in rs] == pytest.approx([0.03, 0.025, 0.015, 0.02, 0.02])
    fit_overheads(rs, "none")
    assert all(r.overhead_s == 0.0 for r in rs)
    for r in rs[:3]:
        r.ttft_residual_s = -0.01  # the simulator alone is already slower than the client: no negative overhead
    assert fit_overheads(rs, "fit")["value_s"] == 0.0 and all(r.overhead_s == 0.0 for r in rs)


# ----------------------------------------------------------------------------- prompt / prefix reconstruction


def test_resolve_layout_uses_inference_perf_defaults_for_unknown_keys() -> None:
    prof = {"data": {"type": "shared_prefix", "shared_prefix": {
        "enable_multi_turn_chat": True, "num_unique_system_prompts": 11, "num_users_per_system_prompt": 4,
        "output_len": 247, "question_len": 466, "system_prompt_len": 100}}}
    lay = resolve_layout(prof, "p")
    assert (lay.num_groups, lay.prompts_per_group, lay.num_prompts) == (10, 10, 100)
    assert (lay.system_prompt_len, lay.question_len, lay.output_len) == (100, 466, 247)
    assert any("ignores" in n for n in lay.notes) and any("single-turn" in n for n in lay.notes)
    assert resolve_layout(PROFILE, "p").num_prompts == 4
    with pytest.raises(UserError, match="shared_prefix"):
        resolve_layout({"data": {"type": "random"}}, "p")


def test_assign_slots_repairs_swapped_neighbours_and_fills_unknown_lengths() -> None:
    lengths = [93, 90, 95, 91, 90, 93, 95, 0, 93, 90, 95, 91]  # rows 4, 5 sent in swapped order; row 7 failed
    slots, canon = assign_slots(lengths, 4)
    assert canon == [93, 90, 95, 91]
    assert slots == [0, 1, 2, 3, 1, 0, 2, 3, 0, 1, 2, 3]
    assert assign_slots([5, 0, 7, 0], 4)[1] == [5, 7, 7, 7]  # slots never seen: the median known length
    assert period_agreement([1, 2, 3] * 10, 3) == 1.0 and period_agreement([1, 2], 1) is None


def test_chain_hashes_are_chained_blake2b() -> None:
    h = chain_hashes([("system", 0, 0), ("prompt", 3, 1)])
    h0 = int.from_bytes(hashlib.blake2b(repr((0, "system", 0, 0)).encode(), digest_size=8).digest(), "big") >> 1
    h1 = int.from_bytes(hashlib.blake2b(repr((h0, "prompt", 3, 1)).encode(), digest_size=8).digest(), "big") >> 1
    assert h == (h0, h1)
    assert chain_hashes([("x",), ("y",)])[1] != chain_hashes([("z",), ("y",)])[1]  # a block names its past


def test_slot_hashes_share_exactly_the_system_prompt_within_a_group() -> None:
    lay = PromptLayout(2, 2, 32, 60, 8)
    sys_tokens = 35  # two full 16-token blocks
    h = {s: slot_hashes(s, 93, lay, sys_tokens, "reconstructed") for s in range(4)}
    assert len(h[0]) == 6  # ceil(93 / 16)
    assert h[0][:2] == h[1][:2] and h[0][2] != h[1][2]  # slots 0, 1: group 0
    assert h[2][:2] == h[3][:2] and h[0][0] != h[2][0]  # slots 2, 3: group 1
    assert slot_hashes(1, 93, lay, sys_tokens, "reconstructed") == h[1]  # the same prompt again
    a = slot_hashes(1, 93, lay, sys_tokens, "system-only", "r1")
    b = slot_hashes(1, 93, lay, sys_tokens, "system-only", "r2")
    assert a[:2] == b[:2] == h[1][:2] and a[2] != b[2]
    assert slot_hashes(1, 93, lay, sys_tokens, "none") == ()


def test_build_replay_rebuilds_every_row(tiny_gt: Path) -> None:
    chat, reasoning = discover_runs(tiny_gt)
    rp = build_replay(chat)
    assert len(rp.requests) == 12 and not rp.failed
    assert all(r.output_tokens == 8 for r in rp.requests)  # nominal output_len, even row 5 (counted 0)
    assert rp.server == {"tp": 1, "max_num_seqs": 8, "max_batched_tokens": 256, "max_model_len": 1024,
                         "kv_blocks": 400, "block_size": 16}
    by_id = {r.id: r for r in rp.requests}
    assert by_id["0"].block_hashes == by_id["4"].block_hashes == by_id["8"].block_hashes  # slot 0 repeats
    assert by_id["0"].block_hashes[:2] == by_id["1"].block_hashes[:2]  # group 0's system prompt
    assert build_replay(chat, outputs="counted").requests[1].output_tokens == 7
    rp2 = build_replay(reasoning)
    assert rp2.failed == {"6", "7"} and len(rp2.requests) == 12
    r6 = next(r for r in rp2.requests if r.id == "6")
    assert r6.prompt_tokens == LENS[2] and r6.output_tokens == 8 and r6.extra["has_error"] is True
    with pytest.raises(UserError, match="unknown prefix mode"):
        build_replay(chat, prefix="bogus")  # type: ignore[arg-type]


def test_load_measured_validates(tmp_path: Path) -> None:
    p = tmp_path / "m.json"
    p.write_text(json.dumps([{"index": 3, "has_error": True, "e2e_s": 300.2},
                             {"index": 4, "has_error": False, "ttft_s": 0.1, "e2e_s": 2.0}]))
    assert load_measured(p) == {"3": (True, None, 300.2), "4": (False, 0.1, 2.0)}
    p.write_text(json.dumps([{"index": 4, "has_error": False, "ttft_s": "x", "e2e_s": 2.0}]))
    with pytest.raises(UserError, match="ttft_s"):
        load_measured(p)


# ----------------------------------------------------------------------------- command line


def test_cli_on_tiny_groundtruth_json_and_errors(tiny_gt: Path, tmp_path: Path, capsys) -> None:
    assert main(["validate", "--groundtruth", str(tiny_gt), "--json", "--overhead", "none"]) == 0
    doc = json.loads(capsys.readouterr().out)
    kinds = {r["run"]: r["kind"] for r in doc["runs"]}
    assert kinds == {"20260101-000000-tiny-tp1-chat": "measured", "20260101-000100-tiny-tp1-reasoning": "overloaded"}
    chat = doc["runs"][0]
    assert chat["compared"] == 12 and chat["ttft_s"]["p50"]["measured"] == 0.02
    assert doc["runs"][1]["compared"] == 10 and doc["runs"][1]["ttft_s"]["p50"]["measured"] is None
    assert chat["sim"]["prefix_hit_rate"] > 0.5  # slots repeat every 4 requests
    assert main(["validate", "--groundtruth", str(tiny_gt), "--json", "--overhead", "none"]) == 0
    assert json.loads(capsys.readouterr().out) == doc  # deterministic
    coeffs = tmp_path / "handset.json"  # the hand-set roofline: no fitted field for h100
    coeffs.write_text(json.dumps({"format": "tokensched-roofline-coefficients", "version": 1,
                                  "gpus": {"h100": {"params": {}}}}))
    assert main(["validate", "--groundtruth", str(tiny_gt), "--json", "--timing-coefficients", str(coeffs)]) == 0
    assert json.loads(capsys.readouterr().out)["timing_coefficients"] == str(coeffs)
    # errors: one line, exit 2
    for args, msg in ((["--groundtruth", str(tmp_path / "missing")], "ground-truth directory not found"),
                      (["--groundtruth", str(tiny_gt), "--timing-coefficients", str(tmp_path / "no.json")],
                       "no such coefficients file"),
                      (["--groundtruth", str(tiny_gt), "--runs", "*llama*"], "no run matches"),
                      (["--groundtruth", str(tiny_gt), "--timing", "bogus"], "bogus"),
                      (["--groundtruth", str(tiny_gt), "--prefix", "bogus"], "bogus")):
        assert main(["validate", *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and msg in err and len(err.strip().splitlines()) == 1


def test_cli_on_a_real_run_writes_report_and_plot(shared: Path, tmp_path: Path, capsys) -> None:
    gt = shared / "groundtruth" / "vllm-h100"
    if not gt.is_dir():
        pytest.skip("no vLLM ground truth in ../shared")
    out = tmp_path / "out"
    assert main(["validate", "--groundtruth", str(gt), "--runs", "*llama-2-7b-tp1-roleplay", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "llama-2-7b-tp1-roleplay" in text and "TTFT" in text and "E2E" in text
    doc = json.loads((out / "report.json").read_text())
    (r,) = doc["runs"]
    assert r["kind"] == "measured" and r["compared"] == 7200 and r["requests"] == 7200
    assert r["sim"]["prefix_hit_rate"] > 0.9  # every prompt comes back 100 requests later
    assert r["overhead_s"] == 0.0  # leave-one-out with a single measured run: nothing to fit on
    for m in ("ttft_s", "e2e_s", "tpot_s"):
        assert set(r[m]) == {"mean", "p50", "p90", "p99"} and r[m]["p50"]["error_pct"] is not None
    assert abs(r["e2e_s"]["p50"]["error_pct"]) < 50  # a sanity bound, not the accuracy target
    pytest.importorskip("matplotlib")
    assert (out / f"{r['run']}_e2e_cdf.png").stat().st_size > 1000
