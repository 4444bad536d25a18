"""Past-Future admission: the sampling rule, the peak formula and admission decisions, worked by hand."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest

from tokensched.config import SimConfig
from tokensched.engine import Replica
from tokensched.errors import UserError
from tokensched.kv_cache import KVCacheManager
from tokensched.policies import get_admission, get_scheduler
from tokensched.policies.past_future import PastFutureAdmission, PastFutureOptions, peak_tokens, sample_final_lengths
from tokensched.request import Request
from tokensched.scheduler import SchedulerConfig
from tokensched.sequence import Sequence
from tokensched.simulator import Simulator, simulate
from tokensched.workload import load_workload

from conftest import ConstantTiming


class FixedRng:
    """Stands in for the numpy Generator: every uniform is ``u``, every history index is ``index``."""

    def __init__(self, u: float, index: int) -> None:
        self.u, self.index, self.shapes = u, index, []

    def random(self, shape):
        self.shapes.append(shape)
        return np.full(shape, self.u)

    def integers(self, lo, hi, size):
        return np.full(size, self.index)


def running(rid: str, prompt: int, generated: int, out: int = 100) -> Sequence:
    s = Sequence(Request(rid, 0.0, prompt, out), [])
    s.num_generated = generated
    s.num_tokens = prompt + generated
    return s


def test_conditional_draw_interpolates_between_history_values():
    h = np.array([10, 20, 30, 40])
    d = np.array([15, 15, 15, 0, 45])
    cap = np.array([100, 100, 100, 50, 60])
    u = np.array([0.1, 0.5, 0.9, 0.5, 0.5])
    # d=15: support [15, 20, 30, 40, 100]; p = u * 4 -> 0.4: 15 + 5 * 0.4 = 17; 2.0: 30; 3.6: 40 + 60 * 0.6 = 76
    # d=0: support [0, 10, 20, 30, 40, 50]; p = 2.5 -> 25.   d=45: support [45, 60]; p = 0.5 -> 52.5 -> 52 (even)
    assert sample_final_lengths(h, d, cap, u).tolist() == [17, 30, 76, 25, 52]
    # an empty history: support [d, cap]
    assert sample_final_lengths(np.array([], dtype=np.int64), np.array([4]), np.array([8]), np.array([0.5])).tolist() == [6]


def test_peak_is_the_lightllm_formula():
    # sorted by remaining: (r 30, c 50), (20, 200), (10, 100): max(30 + 50, 40 + 250, 30 + 350) = 380
    assert peak_tokens(np.array([[100, 50, 200]]), np.array([[10, 30, 20]])).tolist() == [380]
    # one long request dominates: (100, 10), (0, 10), (0, 10): max(110, 20, 30) = 110
    assert peak_tokens(np.array([[10, 10, 10]]), np.array([[100, 0, 0]])).tolist() == [110]


def policy_with_history(values, **opts) -> PastFutureAdmission:
    p = PastFutureAdmission(PastFutureOptions(history=len(values), max_new_tokens=100, **opts))
    p.history = deque(values, maxlen=len(values))
    p._sorted = None
    return p


@pytest.mark.parametrize("blocks, bs, headroom, admitted", [
    (270, 1, 1.0, True), (269, 1, 1.0, False), (540, 1, 0.5, True),
    # paged KV: each request may waste block_size - 1 tokens of its last block: 270 + 3 * 9 = 297 tokens
    (30, 10, 1.0, True), (29, 10, 1.0, False)])
def test_admission_decision_on_a_hand_made_history(blocks, bs, headroom, admitted):
    p = policy_with_history([40, 10, 30, 20], headroom=headroom)
    p._rng = FixedRng(0.5, 3)
    run = [running("a", 100, 15), running("b", 50, 0)]
    cand = running("c", 60, 0)
    # a: support [15, 20, 30, 40, 100] -> 30, r 15, c 115.  b: [0, 10, 20, 30, 40, 100] -> 25, r 25, c 50.
    # candidate: sorted history[3] = 40, r 40, c 60.  Sorted by r: (40, 60) (25, 50) (15, 115):
    # max(40 + 60, 50 + 110, 45 + 225) = 270 tokens.
    kv = KVCacheManager(blocks, bs)
    assert p.admits(cand, 60, run, kv) is admitted
    assert p.last_need == 270 + 3 * (bs - 1)
    assert p._rng.shapes == [(5, 2)]  # min(samples 5, 200 // 2 + 1) draws


def test_large_batches_take_fewer_draws():
    p = policy_with_history([10, 20])
    p._rng = FixedRng(0.5, 0)
    p.admits(running("c", 1, 0), 1, [running(str(i), 1, 0) for i in range(100)], KVCacheManager(10**6, 16))
    assert p._rng.shapes == [(3, 100)]  # 200 // 100 + 1


def test_cold_start_reserves_max_new_tokens_for_the_candidate():
    # history seeded with 100 // 2 copies of max_new_tokens 64: a lone 36-token prompt needs 36 + 64 = 100 tokens
    p = PastFutureAdmission(PastFutureOptions(history=100, max_new_tokens=64))
    assert list(p.history) == [64] * 50
    assert p.admits(running("c", 36, 0), 36, [], KVCacheManager(100, 1))
    assert not p.admits(running("c", 36, 0), 36, [], KVCacheManager(99, 1))


def run_sim(requests, admission, *, blocks, bs=4, macro=True, **opts):
    cls = get_admission(admission)
    rep = Replica(SchedulerConfig(10, 100), get_scheduler("vllm").factory(), KVCacheManager(blocks, bs),
                  ConstantTiming(1.0), max_model_len=10_000, macro_steps=macro,
                  admission=cls(cls.Options(**opts), max_model_len=10_000))
    Simulator(rep, requests).run()
    return {s.id: s for s in rep.metrics.finished}, rep


def test_history_learns_and_admission_relaxes():
    # 8 blocks of 4 tokens = 32 tokens. With the cold-start reservation of 20 outputs, a 4-token prompt needs
    # 24 tokens: only one request runs at a time until real lengths (2) enter the window.
    reqs = [Request(str(i), 0.0, 4, 2) for i in range(6)]
    done, rep = run_sim(reqs, "past-future", blocks=8, history=2, max_new_tokens=20)
    adm = rep.scheduler.admission
    assert list(adm.history) == [2, 2]  # the seed (20) was pushed out by real lengths
    # 0 runs t=0-2 alone (24 + 24 > 32); then the window holds [20, 2] or [2, 2] and more requests fit at once
    assert done["0"].finish_s == 2.0 and done["1"].first_scheduled_s == 2.0
    assert max(s.finish_s for s in done.values()) < 6 * 2.0
    assert rep.scheduler.num_preemptions == 0


def test_past_future_avoids_the_preemptions_of_aggressive_admission():
    reqs = [Request(str(i), 0.0, 8, 12) for i in range(6)]  # each grows to 20 tokens = 5 blocks
    agg, rep_a = run_sim(reqs, "aggressive", blocks=12)
    pf, rep_p = run_sim(reqs, "past-future", blocks=12, history=4, max_new_tokens=12)
    assert rep_a.scheduler.num_preemptions > 0
    assert rep_p.scheduler.num_preemptions == 0
    assert len(pf) == len(agg) == 6


def test_deterministic_and_macro_step_exact():
    cfg = SimConfig(admission="past-future", kv_blocks=1500,
                    policy_options={"history": 50, "max_new_tokens": 1024})
    reqs = load_workload("chat", num_requests=120, qps=20.0, seed=1).requests
    a = simulate(cfg, reqs)
    b = simulate(cfg.model_copy(update={"macro_steps": False}), reqs)
    assert a.rows == b.rows  # seeded draws: the same decisions whether or not decodes are macro-stepped
    assert a.summary["preemptions"] < 5 and a.summary["requests"]["completed"] == 120


def test_bad_option_is_a_user_error():
    cfg = SimConfig(admission="past-future", policy_options={"headroom": 1.5})
    with pytest.raises(UserError, match="headroom"):
        simulate(cfg, load_workload("chat", num_requests=5).requests)
