"""RL rollout modes (sync, APRIL, async) and Replica.abort."""

from __future__ import annotations

import dataclasses

import pytest
from pydantic import ValidationError

from conftest import ConstantTiming
from tokensched.engine import Replica
from tokensched.errors import UserError
from tokensched.kv_cache import KVCacheManager
from tokensched.policies.base import SchedulerPolicy
from tokensched.policies.priority import VLLMPriorityPolicy
from tokensched.programs.rollout import (
    AprilRollout,
    AsyncRollout,
    RolloutConfig,
    SyncRollout,
    run_rollout,
)
from tokensched.request import Request
from tokensched.scheduler import SchedulerConfig
from tokensched.sequence import SeqStatus

# small long-tail case on the real (roofline) replica: a fraction of a second per run
LONG_TAIL = dict(num_prompts=4, group_size=4, steps=4, prompt_median=256, prompt_sigma=0.3, prompt_max=1024,
                 output_median=256, output_sigma=1.2, max_tokens=8192, train_s=5.0, seed=0)


def fixed(**kw) -> RolloutConfig:
    """2 prompts x 2 samples, every prompt 32 tokens and every output 4 tokens."""
    base = dict(num_prompts=2, group_size=2, steps=3, prompt_median=32, prompt_sigma=0, output_median=4,
                output_sigma=0, train_s=10.0)
    return RolloutConfig(**(base | kw))


# ---- sync ----------------------------------------------------------------------------------------
def test_sync_fixed_lengths_step_time_is_rollout_plus_training():
    # 1 s iterations: one prefill iteration samples each first token, 3 decodes finish the 4-token outputs
    r = run_rollout("sync", fixed(), timing=ConstantTiming(1.0))
    assert r.consumed_samples == 3 * 2 * 2 and r.useful_tokens == 12 * 4 == r.generated_tokens
    assert r.total_s == 3 * (4 + 10)
    assert [(s.train_start_s, s.train_end_s) for s in r.step_log] == [(4, 14), (18, 28), (32, 42)]
    assert r.rollout_busy_s == 12 and r.rollout_idle_s == 3 * 10  # the rollout GPU waits for every training step
    assert r.trainer_busy_s == 30 and r.trainer_idle_s == 12
    assert r.mean_busy_batch == 4
    assert r.wasted_tokens == r.reprefill_tokens == r.cut_samples == 0
    assert r.off_policy_token_fraction == 0 and r.mean_staleness == 0 and r.max_staleness == 0
    assert r.samples_per_s == 12 / 42


def test_sync_pays_weight_sync_and_per_token_training():
    r = run_rollout("sync", fixed(weight_sync_s=0.5, train_s_per_ktoken=100.0), timing=ConstantTiming(1.0))
    train = 10 + 100 * (4 * (32 + 4)) / 1000  # 4 samples of 36 tokens each per step
    assert r.total_s == pytest.approx(3 * (4 + train) + 2 * 0.5)
    assert r.rollout_idle_s == pytest.approx(3 * train + 2 * 0.5)


# ---- APRIL ---------------------------------------------------------------------------------------
def test_april_without_over_provision_is_sync():
    cfg = RolloutConfig(**LONG_TAIL, over_provision=0.0)
    sync, april = run_rollout("sync", cfg), run_rollout("april", cfg)
    assert dataclasses.replace(april, mode="sync") == sync


def test_april_cuts_after_n_groups_and_resumes_partials_first():
    cfg = RolloutConfig(**LONG_TAIL, over_provision=0.5)  # 6 groups in flight per step
    run = AprilRollout(cfg)
    r = run.run()
    n, groups = cfg.num_prompts, run.groups
    assert all(len(s.groups) == n for s in r.step_log) and r.consumed_samples == 4 * 4 * 4
    assert len(groups) == 6 + (cfg.steps - 1) * n  # each step tops up to 6 groups, carried ones counted
    assert sum(s.cut_samples for s in r.step_log) == r.cut_samples > 0
    for k, cut in enumerate(run.carried):
        assert len(cut) == r.step_log[k].cut_samples
        for g, i, gen in cut:  # a cut sample was unfinished and its group not consumed yet
            assert gen < groups[g].samples[i].output_tokens
            assert groups[g].consumed_step is None or groups[g].consumed_step > k
        if k + 1 < cfg.steps:  # step k+1 submits the cut samples first, in order, as resumptions
            t = r.step_log[k].train_end_s
            nxt = [sub for sub in run.submissions if sub.request.arrival_s == t]
            assert [(sub.group, sub.sample, sub.generated_before) for sub in nxt[:len(cut)]] == list(cut)
    assert any(gen for cut in run.carried for _, _, gen in cut)
    for sub in run.submissions:  # a resumption re-prefills the tokens generated so far
        smp = groups[sub.group].samples[sub.sample]
        assert sub.request.prompt_tokens == groups[sub.group].prompt_tokens + sub.generated_before
        assert sub.request.output_tokens == smp.output_tokens - sub.generated_before
    assert r.reprefill_tokens == sum(sub.generated_before for sub in run.submissions) > 0
    # every token is generated once; the wasted ones belong to groups never consumed
    assert r.generated_tokens == sum(s.generated for g in groups for s in g.samples)
    assert r.wasted_tokens == sum(s.generated for g in groups if g.consumed_step is None for s in g.samples)
    assert r.off_policy_token_fraction > 0 and r.max_staleness >= 1
    run.replica.kv.check_invariants([])  # every cut sequence gave its blocks back


def test_april_beats_sync_on_a_long_tail():
    cfg = RolloutConfig(**LONG_TAIL, over_provision=0.5)
    sync, april = run_rollout("sync", cfg), run_rollout("april", cfg)
    assert april.consumed_samples == sync.consumed_samples
    assert april.samples_per_s > sync.samples_per_s
    assert april.useful_tokens_per_busy_s > sync.useful_tokens_per_busy_s
    assert april.mean_busy_batch > sync.mean_busy_batch  # less time with a nearly empty batch


# ---- async ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("eta", [1, 2])
def test_async_staleness_never_exceeds_eta_and_launches_follow_the_rule(eta):
    cfg = RolloutConfig(**LONG_TAIL, max_staleness=eta)
    run = AsyncRollout(cfg)
    r = run.run()
    assert r.consumed_samples == cfg.steps * 4 * 4 and r.max_staleness <= eta
    assert all(lag <= eta for s in r.step_log for lag in s.lags)
    for sub in run.submissions:
        if sub.request.id.endswith(".0"):  # a group's first submission: launched under version sub.version
            assert sub.group < (sub.version + eta + 1) * cfg.num_prompts
        g = run.groups[sub.group]
        assert sub.request.prompt_tokens == g.prompt_tokens + sub.generated_before
    assert r.cut_samples > 0 and r.reprefill_tokens > 0  # new weights interrupted generations
    assert r.rollout_busy_s + r.trainer_busy_s > r.total_s  # rollout overlaps training
    run.replica.kv.check_invariants([])


def test_async_with_zero_staleness_is_sync():
    cfg = RolloutConfig(**LONG_TAIL, max_staleness=0)
    sync, asyn = run_rollout("sync", cfg), run_rollout("async", cfg)
    assert dataclasses.replace(asyn, mode="sync") == sync
    assert asyn.rollout_busy_s + asyn.trainer_busy_s <= asyn.total_s + 1e-9  # no overlap at all


# ---- determinism and validation ------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["sync", "april", "async"])
def test_same_seed_same_result(mode):
    cfg = RolloutConfig(**LONG_TAIL)
    assert run_rollout(mode, cfg) == run_rollout(mode, cfg)
    assert run_rollout(mode, cfg) != run_rollout(mode, cfg.model_copy(update={"seed": 1}))


@pytest.mark.parametrize("bad", [dict(num_prompts=0), dict(group_size=0), dict(over_provision=-0.1),
                                 dict(max_staleness=-1), dict(train_s=-1), dict(steps=0), dict(output_sigma=-1),
                                 dict(bogus=1), dict(sim={"replicas": 2})])
def test_bad_config_is_rejected(bad):
    with pytest.raises(ValidationError):
        RolloutConfig(**bad)


def test_unknown_mode_and_oversized_requests_are_user_errors():
    with pytest.raises(UserError, match="sync, april, async"):
        run_rollout("bogus", fixed())
    with pytest.raises(UserError, match="rejected"):
        SyncRollout(fixed(sim={"max_model_len": 30})).run()


# ---- Replica.abort -------------------------------------------------------------------------------
def replica(policy: SchedulerPolicy, max_seqs: int = 2) -> Replica:
    return Replica(SchedulerConfig(max_seqs, 100), policy, KVCacheManager(40, 4), ConstantTiming(1.0),
                   max_model_len=1000, macro_steps=False)


def test_abort_running_and_waiting_keeps_kv_consistent():
    rep = replica(SchedulerPolicy())
    shared = dict(block_hashes=(7, 8), hash_block_size=4)  # a and b share an 8-token prompt
    a, b, c = (rep.add_request(Request(x, 0.0, 8, 5, **shared), 0.0) for x in "abc")
    for _ in range(2):
        rep.finish_step(rep.start_step(0.0))
    assert a.status is b.status is SeqStatus.RUNNING and c.status is SeqStatus.WAITING and a.num_generated == 2
    rep.abort(a)
    rep.kv.check_invariants([b])
    assert a.status is SeqStatus.REJECTED and a.num_generated == 2  # progress kept for the caller
    rep.abort(c)
    assert len(rep.policy) == 0 and c.status is SeqStatus.REJECTED
    rep.kv.check_invariants([b])
    while rep.has_work:
        rep.finish_step(rep.start_step(0.0))
    assert b.status is SeqStatus.FINISHED
    rep.kv.check_invariants([])
    assert rep.kv.used_blocks == 0
    with pytest.raises(ValueError, match="not waiting or running"):
        rep.abort(b)


def test_abort_removes_a_waiting_sequence_from_a_keyed_queue():
    rep = replica(VLLMPriorityPolicy(), max_seqs=1)
    seqs = [rep.add_request(Request(f"r{p}", 0.0, 4, 2, priority=p), 0.0) for p in (3, 1, 2, 0)]
    rep.abort(seqs[2])  # priority 2, in the middle of the heap
    assert [s.id for s in rep.policy] == ["r0", "r1", "r3"]
    order = []
    while rep.has_work:
        st = rep.start_step(0.0)
        order += [s.id for s in st.batch.seqs if s.id not in order]
        rep.finish_step(st)
    assert order == ["r0", "r1", "r3"]
    rep.kv.check_invariants([])
