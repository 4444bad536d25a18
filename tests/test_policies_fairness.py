"""VTC and FastSwitch scheduling, swap-cost arithmetic and the service-gap metric, on hand-computed scenarios.

ConstantTiming: every iteration takes 1 s, so a prompt is computed in the iteration it is admitted in (budget
permitting) and its first token is sampled at the end of that iteration.
"""

from __future__ import annotations

import pytest

from tokensched.engine import Replica
from tokensched.errors import UserError
from tokensched.fairness_metrics import max_service_gap, tenant_service
from tokensched.hardware import get_gpu
from tokensched.kv_cache import KVCacheManager
from tokensched.metrics import request_rows
from tokensched.models import get_model
from tokensched.policies import get_scheduler, split_options
from tokensched.policies.fairness import FastSwitchOptions, FastSwitchPolicy, VTCOptions, VTCPolicy
from tokensched.preemption import SwapOptions, SwapPreemption
from tokensched.request import Request
from tokensched.scheduler import SchedulerConfig
from tokensched.sequence import Sequence
from tokensched.simulator import Simulator

from conftest import ConstantTiming


def run(requests, policy, *, max_seqs=1, blocks=100, bs=4, budget=100, macro=True, preemption=None):
    rep = Replica(SchedulerConfig(max_seqs, budget), policy, KVCacheManager(blocks, bs), ConstantTiming(1.0),
                  max_model_len=10_000, macro_steps=macro, preemption=preemption)
    Simulator(rep, requests).run()
    return {s.id: s for s in rep.metrics.finished}, rep


def seq(rid, tenant, prompt=10, out=2, t=0.0):
    return Sequence(Request(rid, t, prompt, out, tenant=tenant), [])


# ---------------------------------------------------------------------------------------------- VTC


@pytest.mark.parametrize("macro", [False, True])
def test_vtc_admission_order_follows_counters(macro):
    # One seat. a1/a2: 10-token prompts; b1..b3: 2-token prompts; 2 outputs each (2 iterations per request).
    # t=0: A=B=0 (B lifted to min A = 0), tie -> A (first seen): a1, A=10; its 2 tokens: A=14 at t=2.
    # t=2: B=0 < 14 -> b1 (B=2, then 6); t=4: B=6 -> b2 (B=12); t=6: B=12 < 14 -> b3 (B=18); t=8: a2.
    reqs = [Request("a1", 0, 10, 2, tenant="A"), Request("a2", 0, 10, 2, tenant="A"),
            Request("b1", 0, 2, 2, tenant="B"), Request("b2", 0, 2, 2, tenant="B"), Request("b3", 0, 2, 2, tenant="B")]
    done, rep = run(reqs, VTCPolicy(), macro=macro)
    starts = sorted(done, key=lambda i: done[i].first_scheduled_s)  # type: ignore[arg-type, return-value]
    assert starts == ["a1", "b1", "b2", "b3", "a2"]
    assert [done[i].first_scheduled_s for i in starts] == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert rep.policy.counter("A") == 2 * (10 + 2 * 2) and rep.policy.counter("B") == 3 * (2 + 2 * 2)
    fcfs, _ = run(reqs, get_scheduler("vllm").factory(), macro=macro)
    assert sorted(fcfs, key=lambda i: fcfs[i].first_scheduled_s) == ["a1", "a2", "b1", "b2", "b3"]  # type: ignore


def test_vtc_counter_lift_only_against_backlogged_tenants():
    p = VTCPolicy()
    kv = KVCacheManager(100, 4)
    a1, a2, a3 = seq("a1", "A"), seq("a2", "A"), seq("a3", "A")
    p.add(a1, 0.0)
    p.add(a2, 0.0)
    p.begin_step([], kv)  # a scheduling decision: lifts are applied now
    assert p.pop() is a1
    p.on_admit(a1, 10, 0.0)
    p.on_tokens(a1, 10, 1)
    assert p.counter("A") == 12  # 10 prompt tokens x 1 + 1 output x 2
    p.add(seq("b1", "B"), 1.0)  # B becomes backlogged while A (a2 waiting) is
    assert p.counter("B") == 0  # lifted at the next scheduling decision, with the counters of that moment
    p.on_tokens(a1, 1, 1)  # the step in flight ends first: A = 14
    p.begin_step([a1], kv)
    assert p.counter("B") == 14
    assert p.pop() is a2 and p.pop().id == "b1"  # tie at 14: A was seen first
    p.on_admit(a2, 10, 2.0)  # A = 24; nothing of A waits now
    p.add(seq("c1", "C"), 3.0)  # no other tenant is backlogged: no lift
    p.add(a3, 4.0)  # A's queue was empty: lifted to min(C) = 0 -> stays at its own 24
    p.add(seq("d1", "D"), 4.0)  # D: lifted to min(C, A) = 0, not to A's 24
    p.begin_step([a1, a2], kv)
    assert (p.counter("C"), p.counter("A"), p.counter("D")) == (0, 24, 0)
    assert [s.id for s in p] == ["c1", "d1", "a3"]
    p2 = VTCPolicy()
    p2.add(seq("x", "X"), 0.0)
    p2.on_admit(p2.peek(), 10, 0.0)  # X = 10 (not popped: still backlogged)
    p2.add(seq("y", "Y"), 0.0)
    p2.add(seq("z", "Z"), 0.0)
    p2.begin_step([], kv)  # Y arrived before Z: Y's lift sees only X (10); Z's sees X and Y (min 10)
    assert (p2.counter("Y"), p2.counter("Z")) == (10, 10)


def test_vtc_weights_divide_the_charge():
    p = VTCPolicy(VTCOptions(weights={"gold": 2.0}, input_price=1, output_price=3))
    g, s = seq("g", "gold"), seq("s", "silver")
    p.add(g, 0.0)
    p.add(s, 0.0)
    for x in (p.pop(), p.pop()):
        p.on_admit(x, 10, 0.0)
        p.on_tokens(x, 10, 1)
    assert p.counter("gold") == (10 + 3) / 2 and p.counter("silver") == 13


@pytest.mark.parametrize("macro", [False, True])
def test_vtc_weights_share_service_two_to_one(macro):
    # One seat, equal requests (4 + 2 x 2 = 8 units). gold (weight 2) is charged 4 per request, silver 8:
    # gold gets two requests for each of silver's.
    reqs = [Request(f"g{i}", 0, 4, 2, tenant="gold") for i in range(4)] + \
           [Request(f"s{i}", 0, 4, 2, tenant="silver") for i in range(2)]
    done, _ = run(reqs, VTCPolicy(VTCOptions(weights={"gold": 2})), macro=macro)
    order = sorted(done, key=lambda i: done[i].first_scheduled_s)  # type: ignore[arg-type, return-value]
    # t=0 tie -> g0 (gold 4); then silver 0 < 4 -> s0 (8); gold 4 -> g1 (8); tie 8 -> g2 (12); silver -> s1
    assert order == ["g0", "s0", "g1", "g2", "s1", "g3"]


@pytest.mark.parametrize("macro", [False, True])
def test_vtc_preempted_request_resumes_first_and_is_charged_once(macro):
    # Same squeeze as test_scheduler's recompute test: r1 (last admitted) is preempted at t=5, waits at the
    # head of tenant A's queue (ahead of r2, same tenant) and resumes when r0 finishes at t=10.
    # r2 (3 blocks) does not fit beside the resumed r1 (4 of 6 blocks), so it starts when r1 leaves.
    reqs = [Request("r0", 0, 8, 10, tenant="A"), Request("r1", 0, 8, 10, tenant="A"),
            Request("r2", 1, 12, 1, tenant="A")]
    done, rep = run(reqs, VTCPolicy(), max_seqs=10, blocks=6, macro=macro)
    assert done["r1"].preemptions == 1 and done["r1"].first_scheduled_s == 0.0
    assert done["r1"].finish_s == 15.0 and done["r2"].first_scheduled_s == 15.0
    assert rep.policy.counter("A") == (8 + 8 + 12) + 2 * (10 + 10 + 1)  # prompts once, every output once


def test_vtc_options_are_validated():
    with pytest.raises(UserError, match="weight of tenant 'x'"):
        split_options({"weights": {"x": 0}}, {"scheduler vtc": VTCOptions})
    with pytest.raises(UserError, match="unknown policy option 'rerank_every'"):
        split_options({"rerank_every": 3}, {"scheduler vtc": VTCOptions})
    opts = split_options({"rerank-every": 3, "preempt_gap": 5}, {"scheduler fastswitch": FastSwitchOptions})
    assert opts["scheduler fastswitch"].rerank_every == 3  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------- FastSwitch


def test_fastswitch_priorities_freeze_between_reranks_and_displace_most_served():
    p = FastSwitchPolicy(FastSwitchOptions(rerank_every=2))
    kv = KVCacheManager(100, 4)
    a1, a2, b1, c1 = seq("a1", "A", 4), seq("a2", "A", 4), seq("b1", "B", 4), seq("c1", "C", 4)
    for s in (a1, a2, c1):
        p.add(s, 0.0)
    p.begin_step([], kv)  # requests wait, priorities stale: re-rank (A = C = 0)
    assert p.reranks == 1
    running = [p.pop(), p.pop(), p.pop()]  # A first (seen first), then A, then C
    assert [s.id for s in running] == ["a1", "a2", "c1"]
    for s in running:
        p.on_admit(s, 4, 0.0)
        s.num_generated = 1  # each produced a token since its admission: displaceable
    p.on_tokens(a1, 4, 1)  # A = 4 + 4 + 2 = 10, C = 4
    p.add(b1, 0.5)  # new tenant between re-ranks: enters with its counter (0; nobody else is backlogged)
    p.begin_step(running, kv)  # 2nd iteration since the re-rank: priorities still A = C = 0
    assert p.reranks == 1 and p.displace(b1, running) is None  # B (0) is not below A, C (0)
    p.begin_step(running, kv)  # re-rank: A = 10, C = 4, B = 0
    assert p.reranks == 2
    assert p.displace(b1, running) is a2  # most-served tenant A, its latest admitted request
    assert p.pick_victim(running) is a2
    assert p.displace(seq("c2", "C"), running) is a2  # C (4) < A (10): C may displace A too
    assert p.displace(seq("a3", "A"), running) is None  # nobody is more served than A
    a2.num_generated = 0
    p.on_admit(a2, 4, 0.0)  # a2 resumed and has produced nothing since: protected, a1 goes instead
    assert p.displace(b1, running) is a1
    gap = FastSwitchPolicy(FastSwitchOptions(preempt_gap=6))
    gap._prio = {"A": 10.0, "B": 0.0, "C": 4.0}
    assert gap.displace(b1, running) is a2 and gap.displace(seq("c2", "C"), running) is None  # 10-4 <= 6


def test_fastswitch_displaces_only_if_room_would_suffice():
    p = FastSwitchPolicy()
    kv = KVCacheManager(10, 4)
    small = seq("a1", "A", 8)
    kv.allocate(small, 8, kv.find_prefix(small))  # holds 2 blocks, 8 free
    p.begin_step([small], kv)
    p._prio = {"A": 100.0, "B": 0.0}
    assert p.displace(seq("b1", "B", 40), [small]) is small  # needs 10 blocks: 8 free + 2 freed
    assert p.displace(seq("b2", "B", 44), [small]) is None  # needs 11: preempting A cannot make room


@pytest.mark.parametrize("macro", [False, True])
def test_fastswitch_rerank_preempts_by_hand(macro):
    # Two seats, rerank every 2 iterations. t=0: re-rank (A = 0), a1 and a2 start (A = 8), tokens: A = 12.
    # t=0.5: b1 arrives (B = 0, no backlogged tenant to lift to). t=1: priorities still frozen (A = 0): b1 waits.
    # t=2: re-rank, A = 16 > B = 0: b1 displaces a2 (latest admitted of A). b1 samples at t=3, 4, 5.
    # a2 waits (A = 16 vs B's frozen 0, then 20 vs 8 at the t=4 re-rank) until b1 leaves at t=5.
    reqs = [Request("a1", 0, 4, 20, tenant="A"), Request("a2", 0, 4, 20, tenant="A"),
            Request("b1", 0.5, 4, 3, tenant="B")]
    done, rep = run(reqs, FastSwitchPolicy(FastSwitchOptions(rerank_every=2)), max_seqs=2, macro=macro)
    b1, a2 = done["b1"], done["a2"]
    assert (b1.first_scheduled_s, b1.first_token_s, b1.finish_s) == (2.0, 3.0, 5.0)
    assert a2.preemptions == 1 and done["a1"].preemptions == 0
    assert rep.scheduler.num_preemptions == 1
    # a2 resumes at t=5 recomputing 4 + 2 tokens, then samples its 18 remaining tokens: t=6 .. t=23
    assert a2.finish_s == 23.0
    vtc, _ = run(reqs, VTCPolicy(), max_seqs=2, macro=macro)
    assert vtc["b1"].first_scheduled_s == 20.0  # without preemption b1 waits for a seat


@pytest.mark.parametrize("macro", [False, True])
def test_fastswitch_with_swap_charges_the_context_switch(macro):
    # As above, with swap: displacing a2 at t=2 moves its 5 computed tokens (2 blocks of 4) out; its resume at
    # t=5 moves them back and computes only its 6th token. Each transfer lengthens the iteration that pays it.
    model, gpu = get_model("llama-3.1-8b"), get_gpu("h100")
    swap = SwapPreemption(SwapOptions(), model=model, gpu=gpu, tp=1, block_size=4)
    x = swap.transfer_time(2)
    reqs = [Request("a1", 0, 4, 20, tenant="A"), Request("a2", 0, 4, 20, tenant="A"),
            Request("b1", 0.5, 4, 3, tenant="B")]
    done, rep = run(reqs, FastSwitchPolicy(FastSwitchOptions(rerank_every=2)), max_seqs=2, macro=macro,
                    preemption=swap)
    assert swap.swapped_out_blocks == 2 and swap.swapped_in_blocks == 2
    assert done["b1"].finish_s == pytest.approx(5.0 + x)
    assert done["a2"].finish_s == pytest.approx(23.0 + 2 * x)
    assert swap.swap_time_s == pytest.approx(2 * x)


@pytest.mark.parametrize("policy", ["vtc", "fastswitch"])
def test_fair_policies_are_identical_with_and_without_macro_steps(policy):
    reqs = []
    for i in range(24):
        tenant = ("A", "A", "A", "B", "C")[i % 5]
        reqs.append(Request(f"r{i}", 0.37 * i, 5 + (7 * i) % 23, 3 + (11 * i) % 29, tenant=tenant))
    rows = []
    for macro in (False, True):
        opts = {"rerank_every": 3} if policy == "fastswitch" else {}
        pol = get_scheduler(policy).factory(split_options(opts, {"s": get_scheduler(policy).factory.Options})["s"])
        done, rep = run(reqs, pol, max_seqs=4, blocks=20, bs=4, budget=16, macro=macro)
        rows.append(request_rows(list(done.values())))
        assert rep.kv.used_blocks == 0
    assert rows[0] == rows[1]
    assert sum(r["preemptions"] for r in rows[0]) > 0  # the scenario does exercise preemption


# ---------------------------------------------------------------------------------------------- swap costs


def test_swap_cost_arithmetic_by_hand():
    model, gpu = get_model("llama-3.1-8b"), get_gpu("h100")  # 32 layers, 8 KV heads x 128, BF16; PCIe 64 GB/s
    vllm = SwapPreemption(SwapOptions(), model=model, gpu=gpu, tp=1, block_size=16)
    assert vllm.bytes_per_block_layer_kv == 16 * 8 * 128 * 2 == 32768 and vllm.copies_per_block == 64
    bw = 64e9 * 0.8
    nbytes = 10 * 64 * 32768  # 10 blocks, K and V of 32 layers
    # vLLM: one copy per block per layer per K/V: 640 copies x 5 us
    assert vllm.transfer_time(10) == pytest.approx(640 * 5e-6 + nbytes / bw)
    grouped = SwapPreemption(SwapOptions(block_group=4), model=model, gpu=gpu, tp=1, block_size=16)
    assert grouped.transfer_time(10) == pytest.approx(3 * 64 * 5e-6 + nbytes / bw)  # ceil(10 / 4) groups
    # tensor parallelism: each GPU moves its shard (4 of 8 KV heads) in parallel
    tp2 = SwapPreemption(SwapOptions(), model=model, gpu=gpu, tp=2, block_size=16)
    assert tp2.transfer_time(10) == pytest.approx(640 * 5e-6 + nbytes / 2 / bw)


def test_swap_reuse_moves_only_new_blocks_out():
    model, gpu = get_model("llama-3.1-8b"), get_gpu("h100")
    m = SwapPreemption(SwapOptions(reuse_cpu_copy=True, transfer_latency_us=0), model=model, gpu=gpu, tp=1,
                       block_size=16)
    s = seq("r", "A", 100, 100)
    s.num_computed = 100
    assert m.swap_out_time(s) == pytest.approx(m.transfer_time(7))  # ceil(100/16): nothing on the CPU yet
    s.num_computed = 150
    # 6 full blocks (96 tokens) are still on the CPU; the partial 7th and the new ones move: 10 - 6 = 4
    assert m.swap_out_time(s) == pytest.approx(m.transfer_time(4))
    assert m.swapped_out_blocks == 11
    s.swapped_tokens = 150
    assert m.swap_in_time(s) == pytest.approx(m.transfer_time(10))  # swap-in always moves everything
    # a later turn of the same conversation (session) reuses the conversation's copy
    t1 = Sequence(Request("t1", 0, 100, 5, session_id="conv"), [])
    t2 = Sequence(Request("t2", 9, 200, 5, session_id="conv"), [])
    t1.num_computed, t2.num_computed = 104, 210
    m.swap_out_time(t1)
    assert m.swap_out_time(t2) == pytest.approx(m.transfer_time(14 - 6))  # ceil(210/16) - 104 // 16


@pytest.mark.parametrize("overlap", [False, True])
def test_swap_overlap_hides_transfers_behind_compute(overlap):
    # vLLM recompute squeeze with swap: the preempting (t=5) and resuming (t=10) iterations each move 3 blocks.
    model, gpu = get_model("llama-3.1-8b"), get_gpu("h100")
    swap = SwapPreemption(SwapOptions(overlap=overlap), model=model, gpu=gpu, tp=1, block_size=4)
    x = swap.transfer_time(3)
    assert x < 1.0  # shorter than an iteration: overlap hides it entirely
    reqs = [Request("r0", 0.0, 8, 10), Request("r1", 0.0, 8, 10)]
    done, _ = run(reqs, get_scheduler("vllm").factory(), max_seqs=10, blocks=6, preemption=swap)
    extra = 0.0 if overlap else x
    assert done["r0"].finish_s == pytest.approx(10.0 + extra)
    assert done["r1"].finish_s == pytest.approx(15.0 + 2 * extra)


# ---------------------------------------------------------------------------------------------- metrics


def _row(tenant, arrival, queue, ttft, finish, prompt, out):
    return {"tenant": tenant, "arrival_s": arrival, "queue_s": queue, "ttft_s": ttft, "finish_s": finish,
            "prompt_tokens": prompt, "output_tokens": out, "status": "finished"}


def test_tenant_service_windows_by_hand():
    # A: prompt 10 charged at t=1 (scheduled), first token at t=2 (x2), 4 more tokens evenly over (2, 6].
    rejected = {**_row("C", 1.0, None, None, None, 9, 9), "status": "rejected"}
    rows = [_row("A", 0.0, 1.0, 2.0, 6.0, 10, 5), _row("B", 0.0, 4.0, 5.0, 5.0, 3, 1), rejected]
    tab = tenant_service(rows, 2.0, start_s=0.0, end_s=8.0)
    assert list(tab.edges) == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert list(tab.service["C"]) == [0.0] * 4 and not tab.backlogged["C"].any()
    assert len(tenant_service(rows, 0.1, start_s=0.0, end_s=0.1 * 30).edges) == 31  # no extra window from rounding
    assert tab.service["A"] == pytest.approx([10.0, 2.0 + 4.0, 4.0, 0.0])  # ramp: 8 units over 4 s
    assert tab.service["B"] == pytest.approx([0.0, 0.0, 3.0 + 2.0, 0.0])  # windows are [start, end)
    assert list(tab.backlogged["A"]) == [False, False, False, False]  # waited 0..1 only: no full window
    assert list(tab.backlogged["B"]) == [True, True, False, False]
    w = tenant_service(rows, 2.0, start_s=0.0, end_s=8.0, weights={"A": 2.0})
    assert w.service["A"] == pytest.approx([5.0, 3.0, 2.0, 0.0])


def test_max_service_gap_over_co_backlogged_runs():
    # Both tenants wait from 0 to 8; A is served 10 per second from t=0, B nothing until t=8.
    rows = [_row("A", 0.0, 0.0, 0.0, 8.0, 1, 41), _row("A", 0.0, 8.0, 8.5, 9.0, 1, 1),
            _row("B", 0.0, 8.0, 8.5, 9.0, 1, 1)]
    tab = tenant_service(rows, 1.0, start_s=0.0, end_s=10.0, input_price=0.0, output_price=2.0)
    g = max_service_gap(tab)
    # A's first token at t=0 (2 units), then 40 tokens (80 units) evenly over (0, 8): in [0, 8) A gets 82, B none
    assert g.tenants == ("A", "B") and g.gap == pytest.approx(82.0)
    assert (g.start_s, g.end_s) == (0.0, 8.0)
    assert max_service_gap(tab, until_s=4.0).gap == pytest.approx(2.0 + 40.0)
    with pytest.raises(UserError, match="service window"):
        tenant_service(rows, 0.0)
