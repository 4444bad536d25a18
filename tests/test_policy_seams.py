"""The core's policy seams: admission regimes, swap preemption, option validation (hand-computed)."""

from __future__ import annotations

import pytest

from tokensched.engine import Replica
from tokensched.errors import UserError
from tokensched.hardware import get_gpu
from tokensched.kv_cache import KVCacheManager
from tokensched.models import get_model
from tokensched.policies import get_admission, get_scheduler, split_options
from tokensched.policies.admission import ConservativeAdmission, ConservativeOptions
from tokensched.preemption import PreemptionMode, SwapOptions, SwapPreemption
from tokensched.request import Request
from tokensched.scheduler import SchedulerConfig
from tokensched.simulator import Simulator

from conftest import ConstantTiming


def run(requests, *, blocks=6, bs=4, budget=100, admission=None, preemption=None, macro=True):
    rep = Replica(SchedulerConfig(10, budget), get_scheduler("vllm").factory(), KVCacheManager(blocks, bs),
                  ConstantTiming(1.0), max_model_len=10_000, macro_steps=macro, admission=admission,
                  preemption=preemption)
    Simulator(rep, requests).run()
    return {s.id: s for s in rep.metrics.finished}, rep


def test_conservative_admission_reserves_full_output_and_never_preempts():
    # 6 blocks of 4 tokens; each request needs ceil((8 + 10) / 4) = 5 blocks at full length: one at a time.
    reqs = [Request("r0", 0.0, 8, 10), Request("r1", 0.0, 8, 10)]
    adm = ConservativeAdmission(ConservativeOptions(max_new_tokens=10))
    done, rep = run(reqs, admission=adm)
    assert rep.scheduler.num_preemptions == 0
    assert done["r0"].finish_s == 10.0  # t=0 prefill ... token 10 at t=10
    assert done["r1"].first_scheduled_s == 10.0 and done["r1"].finish_s == 20.0
    assert adm.reserved_blocks == 0


@pytest.mark.parametrize("macro", [False, True])
def test_swap_preemption_keeps_progress_and_charges_transfers(macro):
    # Same squeeze as the recompute test in test_scheduler.py: r1 is preempted at t=5 holding 12 computed
    # tokens (3 blocks). With swap it resumes at t=10 without recomputing: its 13th token is computed at
    # once (1 new token), so it finishes 5 iterations later, plus the swap-in/out time charged to iterations.
    model, gpu = get_model("llama-3.1-8b"), get_gpu("h100")
    swap = SwapPreemption(SwapOptions(transfer_latency_us=0.0), model=model, gpu=gpu, tp=1, block_size=4)
    out_t = swap.transfer_time(3)
    reqs = [Request("r0", 0.0, 8, 10), Request("r1", 0.0, 8, 10)]
    done, rep = run(reqs, preemption=swap, macro=macro)
    r0, r1 = done["r0"], done["r1"]
    assert r1.preemptions == 1 and swap.swapped_out_blocks == 3 and swap.swapped_in_blocks == 3
    # the preempting iteration (t=5) pays the swap-out; the resuming one pays the swap-in
    assert r0.finish_s == pytest.approx(10.0 + out_t)
    assert r1.finish_s == pytest.approx(15.0 + 2 * out_t)
    # bytes: 3 blocks x 4 tokens x 8 KV heads x 128 dims x 2 bytes x 2 (K, V) x 32 layers, at 80 % of PCIe
    nbytes = 3 * 4 * 8 * 128 * 2 * 2 * 32
    assert out_t == pytest.approx(nbytes / (gpu.pcie_bandwidth * 0.8))


def test_swap_block_groups_cut_copy_count():
    model, gpu = get_model("llama-3.1-8b"), get_gpu("h100")
    per_block = SwapPreemption(SwapOptions(transfer_latency_us=10), model=model, gpu=gpu, tp=1, block_size=16)
    grouped = SwapPreemption(SwapOptions(transfer_latency_us=10, block_group=8), model=model, gpu=gpu, tp=1,
                             block_size=16)
    # 64 blocks: 64 x 64 copies (K and V of 32 layers) vs 8 x 64 copies; same bytes
    diff = per_block.transfer_time(64) - grouped.transfer_time(64)
    assert diff == pytest.approx((64 - 8) * 64 * 10e-6)


def test_recompute_mode_costs_nothing_at_preemption():
    m = PreemptionMode()
    assert not m.keeps_kv and m.swap_out_time(None) == 0.0  # type: ignore[arg-type]


def test_policy_options_are_routed_and_validated():
    opts = split_options({"max_new_tokens": 64, "block_group": 4},
                         {"admission conservative": ConservativeOptions, "preemption swap": SwapOptions})
    assert opts["admission conservative"].max_new_tokens == 64  # type: ignore[attr-defined]
    assert opts["preemption swap"].block_group == 4  # type: ignore[attr-defined]
    with pytest.raises(UserError, match="unknown policy option 'nope'.*block_group"):
        split_options({"nope": 1}, {"preemption swap": SwapOptions})
    with pytest.raises(UserError, match="block_group"):
        split_options({"block_group": 0}, {"preemption swap": SwapOptions})
    with pytest.raises(UserError, match="unknown admission policy"):
        get_admission("lazy")
