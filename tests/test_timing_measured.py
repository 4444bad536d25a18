"""The measured-latency timing backend (aiconfigurator-core tables): exact macro-step pricing, monotonicity,
scaling, coverage of every catalog model x GPU x tp, one-line errors, and the CLI end to end."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

pytest.importorskip("aiconfigurator_core")

from tokensched.config import SimConfig  # noqa: E402
from tokensched.errors import UserError  # noqa: E402
from tokensched.hardware import GPUS, get_gpu  # noqa: E402
from tokensched.models import MODELS, get_model  # noqa: E402
from tokensched.simulator import simulate  # noqa: E402
from tokensched.timing import BatchShape, RooflineParams, RooflineTiming  # noqa: E402
from tokensched.timing_backends import TIMING_BACKENDS, get_timing  # noqa: E402
from tokensched.timing_measured import MeasuredTiming  # noqa: E402
from tokensched.timing_measured_tables import SYSTEMS, _import_core  # noqa: E402
from tokensched.workload import load_workload  # noqa: E402

H100 = get_gpu("h100")


def _measured(model: str, tp: int = 1, gpu: str = "h100") -> MeasuredTiming:
    return MeasuredTiming(get_model(model), get_gpu(gpu), tp)


def _dec(b: int, ctx: int) -> BatchShape:
    return BatchShape(num_decodes=b, decode_context_sum=ctx, num_sampled=b)


@pytest.mark.parametrize("model,tp", [("llama-2-7b", 1), ("llama-2-70b", 4), ("mixtral-8x7b", 2)])
def test_decode_times_equal_iteration_time_bit_for_bit(model, tp):
    tm = _measured(model, tp)
    rng = random.Random(7)
    cases = [(1, 17), (7, 7 * 900 + 3), (200, 200 * 3000), (9000, 9000 * 40)]  # the last beyond every grid
    cases += [(b, rng.randint(b, b * 100_000)) for b in (rng.randint(1, 3000) for _ in range(20))]
    for b, ctx in cases:
        vec = tm.decode_times(b, ctx, 40)
        for j in range(40):
            assert vec[j] == tm.iteration_time(_dec(b, ctx + j * b))


def test_more_work_never_takes_less_time():
    tm = _measured("llama-3.1-8b")
    prev = 0.0
    for n in (1, 2, 7, 64, 100, 511, 2048, 5000, 20000, 150_000):  # prefill chunk length
        t = tm.iteration_time(BatchShape(prefill_new=[n], prefill_cached=[0], num_sampled=1))
        assert t >= prev
        prev = t
    for n in (1, 64, 2048):  # cached prefix in front of the chunk
        prev = 0.0
        for c in (0, 10, 100, 1000, 4096, 30_000, 200_000):
            t = tm.iteration_time(BatchShape(prefill_new=[n], prefill_cached=[c], num_sampled=1))
            assert t >= prev
            prev = t
    prev = 0.0
    for b in (1, 2, 3, 16, 100, 256, 1000, 10_000):  # decodes at a fixed context each
        t = tm.iteration_time(_dec(b, b * 1000))
        assert t >= prev
        prev = t
    prev = 0.0
    for c in (1, 50, 1000, 4096, 100_000, 300_000):  # context per decode
        t = tm.iteration_time(_dec(32, 32 * c))
        assert t >= prev
        prev = t
    # a short chunk after a long prefix still reads the whole KV cache: about one long decode (floored on the grid)
    assert tm.prefill_attention_time([1], [100_000]) >= 0.99 * tm.decode_attention_time(1, 100_001)


def test_tensor_parallelism_speeds_up():
    m = "llama-3.1-70b"
    b = BatchShape(prefill_new=[2048], prefill_cached=[0], num_decodes=32, decode_context_sum=32 * 1000,
                   num_sampled=33)
    t2, t4, t8 = (_measured(m, tp).iteration_time(b) for tp in (2, 4, 8))
    assert t2 > t4 > t8 > t2 / 4


def test_moe_decode_reads_only_the_touched_experts():
    tm = _measured("mixtral-8x7b", 2)
    one, many = tm.fixed_time(1, 1), tm.fixed_time(64, 64)
    assert one < 0.5 * many  # 1 token reads 2 of 8 experts, 64 tokens read all 8
    assert tm.iteration_time(_dec(1, 10)) < tm.iteration_time(_dec(64, 640))


@pytest.mark.parametrize("model,tp", [("llama-2-7b", 1), ("codellama-34b", 2), ("llama-2-70b", 4),
                                      ("mixtral-8x7b", 2), ("llama-3.1-8b", 1)])
def test_same_order_of_magnitude_as_the_roofline(model, tp):
    tm, rf = _measured(model, tp), RooflineTiming(get_model(model), H100, tp, RooflineParams())  # hand-set
    for b in (_dec(1, 500), _dec(64, 64 * 1500), BatchShape(prefill_new=[2048], prefill_cached=[0], num_sampled=1),
              BatchShape(prefill_new=[512], prefill_cached=[3000], num_decodes=100, decode_context_sum=80_000,
                         num_sampled=100)):
        assert 1 / 3 < tm.iteration_time(b) / rf.iteration_time(b) < 3


def test_every_catalog_model_gpu_and_tp_is_priced_or_refused_in_one_line():
    shapes = [_dec(1, 100), _dec(64, 64 * 2000), BatchShape(prefill_new=[512], prefill_cached=[1024], num_decodes=8,
                                                            decode_context_sum=8000, num_sampled=9)]
    priced, refused = set(), set()
    for gpu in GPUS.values():
        for model in MODELS.values():
            for tp in (1, 2, 4, 8):
                try:
                    tm = get_timing("measured", model, gpu, tp)
                except UserError as e:
                    assert "\n" not in str(e) and str(e).startswith("timing 'measured'")
                    refused.add((gpu.key, model.name, tp))
                    continue
                ts = [tm.iteration_time(s) for s in shapes]
                assert all(1e-4 < t < 10.0 for t in ts), (gpu.key, model.name, tp, ts)
                assert ts[0] < ts[1]
                priced.add((gpu.key, model.name, tp))
    assert {g for g, _, _ in priced} == set(SYSTEMS)
    assert {g for g, _, _ in refused} >= {"a100-40gb", "h100-pcie"}
    assert ("h100", "mixtral-8x7b", 2) in priced and ("l40s", "llama-2-70b", 8) in priced
    assert ("h100", "qwen2.5-7b", 8) in refused  # 28 heads do not split over 8 GPUs in vLLM


@pytest.mark.parametrize("gpu,model,tp,words", [
    ("h100-pcie", "llama-3.1-8b", 1, "no H100 PCIe tables"),
    ("a100-40gb", "llama-3.1-8b", 1, "A100-SXM4-80GB"),
    ("h100", "llama-3.1-8b", 3, "tp 1, 2, 4, 8"),
    ("h100", "qwen2.5-7b", 8, "28 attention heads divisible"),
])
def test_uncovered_combinations_say_why(gpu, model, tp, words):
    with pytest.raises(UserError, match=words):
        get_timing("measured", get_model(model), get_gpu(gpu), tp)


def test_unknown_backend_and_missing_dependency(monkeypatch):
    with pytest.raises(UserError, match="choose one of: roofline, measured"):
        get_timing("exact", get_model("llama-2-7b"), H100, 1)
    assert set(TIMING_BACKENDS) == {"roofline", "measured"}
    monkeypatch.setitem(sys.modules, "aiconfigurator_core.sdk", None)
    with pytest.raises(UserError, match=r"tokensched\[measured\]"):
        _import_core()


def test_macro_steps_match_single_steps_with_measured_timing():
    w = load_workload("chat", num_requests=200, seed=3)
    base = SimConfig(workload="chat", timing="measured")
    runs = []
    for macro in (False, True):
        r = simulate(base.model_copy(update={"macro_steps": macro}), w.requests)
        s = dict(r.summary)
        s.pop("wall_s")
        runs.append((json.dumps(s), json.dumps(r.rows), r))
    assert runs[0][0] == runs[1][0] and runs[0][1] == runs[1][1]
    assert len(runs[1][2].recorder.t_time) < len(runs[0][2].recorder.t_time)
    assert runs[1][2].info["timing"] == "measured"


def test_cli_simulate_with_measured_timing():
    p = subprocess.run([sys.executable, "-m", "tokensched.cli", "simulate", "--timing", "measured", "-n", "100",
                        "--json"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)
    assert s["requests"]["completed"] == 100
    assert "fallback" not in p.stderr  # aiconfigurator's table-loading notes stay quiet
    bad = subprocess.run([sys.executable, "-m", "tokensched.cli", "simulate", "--timing", "measured", "--gpu",
                          "h100-pcie", "-n", "5"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and bad.stderr.startswith("error: timing")
