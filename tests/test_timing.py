"""The roofline timing model: hand-checkable magnitudes, monotonicity, and exact macro-step pricing."""

from __future__ import annotations

import pytest

from tokensched.hardware import get_gpu
from tokensched.models import get_model
from tokensched.simulator import kv_capacity_blocks
from tokensched.timing import BatchShape, RooflineParams, RooflineTiming

H100 = get_gpu("h100")


@pytest.mark.parametrize("model,tp,measured", [
    # KV blocks vLLM 0.15.1 reported on H100 SXM at gpu_memory_utilization 0.9 (../shared/groundtruth README)
    ("llama-2-7b", 1, 7462), ("codellama-34b", 2, 26602), ("llama-2-70b", 4, 31356), ("mixtral-8x7b", 2, 27510),
])
def test_kv_capacity_matches_vllm_within_2_percent(model, tp, measured):
    blocks = kv_capacity_blocks(get_model(model), H100, tp, 16, 0.9)
    assert abs(blocks - measured) / measured < 0.02


def test_single_decode_is_weight_bandwidth_bound():
    m = get_model("llama-2-7b")
    p = RooflineParams()
    t = RooflineTiming(m, H100, 1, p).iteration_time(BatchShape(num_decodes=1, decode_context_sum=100, num_sampled=1))
    # every weight but the input embedding table (only one row of it is read) streams from HBM once:
    # 13.2 GB at 90 % of 3.35 TB/s = 4.4 ms, plus the fixed overheads, plus a little KV
    weights_s = (m.weight_bytes - m.vocab_size * m.hidden_size * 2) / (H100.hbm_bandwidth * p.memory_eff)
    assert weights_s + p.iteration_overhead_s < t < weights_s + p.iteration_overhead_s + 0.5e-3


def test_large_prefill_is_compute_bound_and_scales_with_tokens():
    tm = RooflineTiming(get_model("llama-3.1-8b"), H100, 1)
    t1 = tm.iteration_time(BatchShape(prefill_new=[4096], prefill_cached=[0], num_sampled=1))
    t2 = tm.iteration_time(BatchShape(prefill_new=[8192], prefill_cached=[0], num_sampled=1))
    flops = 2 * get_model("llama-3.1-8b").active_params_per_token * 4096
    assert t1 > flops / H100.bf16_flops  # cannot beat peak
    assert 1.9 < t2 / t1 < 2.6  # linear GEMMs plus quadratic attention


def test_cached_context_makes_a_chunk_slower():
    tm = RooflineTiming(get_model("llama-3.1-8b"), H100, 1)
    cold = tm.iteration_time(BatchShape(prefill_new=[512], prefill_cached=[0], num_sampled=1))
    warm = tm.iteration_time(BatchShape(prefill_new=[512], prefill_cached=[30000], num_sampled=1))
    assert warm > cold


def test_tensor_parallelism_speeds_up_but_pays_all_reduce():
    m = get_model("llama-3.1-70b")
    b = BatchShape(prefill_new=[2048], prefill_cached=[0], num_decodes=32, decode_context_sum=32 * 1000,
                   num_sampled=33)
    t2, t4, t8 = (RooflineTiming(m, H100, tp).iteration_time(b) for tp in (2, 4, 8))
    assert t2 > t4 > t8 > t2 / 4


def test_moe_decode_reads_only_touched_experts():
    m = get_model("mixtral-8x7b")
    tm = RooflineTiming(m, H100, 2)
    one = tm.iteration_time(BatchShape(num_decodes=1, decode_context_sum=10, num_sampled=1))
    many = tm.iteration_time(BatchShape(num_decodes=64, decode_context_sum=640, num_sampled=64))
    dense_like = m.weight_bytes / 2 / (H100.hbm_bandwidth * 0.9)
    assert one < 0.5 * dense_like + 3e-3  # 2 of 8 experts
    assert many > one


@pytest.mark.parametrize("model,tp", [("llama-3.1-8b", 1), ("llama-2-70b", 4), ("mixtral-8x7b", 2)])
def test_decode_times_equal_iteration_time_bit_for_bit(model, tp):
    tm = RooflineTiming(get_model(model), H100, tp)
    for b, ctx in ((1, 17), (7, 7 * 900 + 3), (200, 200 * 3000)):
        vec = tm.decode_times(b, ctx, 50)
        for j in range(50):
            shape = BatchShape(num_decodes=b, decode_context_sum=ctx + j * b, num_sampled=b)
            assert vec[j] == tm.iteration_time(shape)


def test_bad_efficiency_rejected():
    with pytest.raises(ValueError):
        RooflineParams(memory_eff=1.5)
