"""Llumnix on small scenarios computed by hand: freeness, dispatch, staged KV copy times, abort, de-fragmentation,
draining. Every replica runs a constant 8 ms iteration (``ConstantTiming``) so step ends sit on an 8 ms grid.

KV bytes: Llama-3.1-8B has 2 x 32 layers x 8 KV heads x 128 x 2 bytes = 131,072 B per token, so a 16-token block
is 2,097,152 B; at ``link_gb_s=1`` (1e9 B/s) a block takes 2.097152 ms to copy.
"""

from __future__ import annotations

import json
import math

import pytest
from conftest import ConstantTiming

from tokensched.cli import main
from tokensched.cluster.llumnix import LlumnixSimulator
from tokensched.cluster.llumnix_copy import plan_stage
from tokensched.cluster.llumnix_load import InstanceLoad, LlumnixOptions, LlumnixRouter
from tokensched.cluster.routers import ReplicaView
from tokensched.cluster.sim import simulate_cluster
from tokensched.config import SimConfig
from tokensched.errors import UserError
from tokensched.request import Request

STEP = 0.008
BLOCK_BYTES = 16 * 131072
approx = pytest.approx


class Fixed(LlumnixSimulator):
    """Llumnix with a constant iteration time; remembers the last instance for inspection."""

    last: LlumnixSimulator

    def __init__(self, cfg, requests):
        super().__init__(cfg, requests)
        for r in self.replicas:
            r.timing = ConstantTiming(STEP)
        Fixed.last = self


def run(reqs, replicas=2, kv_blocks=100, **opts):
    cfg = SimConfig(replicas=replicas, router="llumnix", kv_blocks=kv_blocks, router_options=opts)
    return simulate_cluster(cfg, reqs, simulator=Fixed)


def row(result, rid):
    return next(x for x in result.rows if x["id"] == rid)


# ---- load metric and dispatch ---------------------------------------------------------------------------------
def test_virtual_usage_and_freeness_by_hand():
    ld = InstanceLoad(capacity=100, used=30, demand=20, headroom=10, batch=4)
    assert ld.virtual_usage == 60 and ld.freeness == 10  # (100 - 60) / 4
    assert InstanceLoad(100, 0, 0, 0, 0).freeness == 100  # an idle instance: batch counts as 1
    assert ld.freeness_after(8, 1) == approx((100 - 68) / 5)  # one more request holding 8 blocks
    assert ld.freeness_after(-10, -1) == approx((100 - 50) / 3)
    drained = InstanceLoad(100, 0, 0, 0, 0, draining=True)
    assert drained.virtual_usage == math.inf and drained.freeness == -math.inf


def test_load_of_a_real_replica_counts_queue_and_priority_headroom():
    a = Request("a", 0.0, 160, 50)
    b = Request("b", 0.0, 320, 50, priority=-1)  # high priority (below threshold 0)
    c = Request("c", 0.0, 48, 50)
    for mode, demand in (("all", 20 + 3), ("head", 20)):
        sim = Fixed(SimConfig(replicas=2, router="llumnix", kv_blocks=100,
                              router_options={"priority_headroom_blocks": 5, "queue_demand": mode}), [a, b, c])
        rep = sim.replicas[0]
        rep.add_request(a, 0.0)
        rep.finish_step(rep.start_step(0.0))  # a's prompt: 160 tokens = 10 blocks
        rep.add_request(b, 0.0)
        rep.add_request(c, 0.0)
        ld = sim.load(0)
        assert (ld.used, ld.demand, ld.headroom, ld.batch) == (10, demand, 5, 1)
        assert sim.freeness(0) == 100 - 10 - demand - 5


def test_router_picks_the_freest_and_books_what_it_sent():
    vs = [ReplicaView(i, "p", kv_blocks=100, block_size=16, speed=1.0) for i in range(3)]
    r = LlumnixRouter(LlumnixOptions(), vs)
    r.loads = [InstanceLoad(100, 50, 0, 0, 2), InstanceLoad(100, 20, 20, 0, 4), InstanceLoad(100, 0, 0, 0, 0)]
    r.loads[2].draining = True  # the idle one is being drained: never chosen
    # freeness 25 and 15
    assert r.route(Request("x", 0.0, 40, 1), vs, 0.0) == 0
    assert r.loads[0].demand == 3  # 40 tokens = 3 blocks, until the next report
    assert r.route(Request("y", 0.0, 400, 1), vs, 0.0) == 0  # (100 - 53) / 2 = 23.5 > 15
    assert r.route(Request("z", 0.0, 400, 1), vs, 0.0) == 1  # (100 - 78) / 2 = 11 < 15


def test_dispatch_with_fresh_and_stale_reports():
    reqs = [Request("a", 0.0, 800, 100), Request("b", 5.0, 160, 10)]
    fresh = run(reqs, migration=False)
    assert [x["assigned"] for x in fresh.replicas] == [2, 0]  # a done by 0.8 s: both idle at 5 s, tie -> 0
    cfg = SimConfig(replicas=2, router="llumnix", kv_blocks=100, report_interval=10.0,
                    router_options={"migration": False})
    stale = simulate_cluster(cfg, reqs, simulator=Fixed)
    assert [x["assigned"] for x in stale.replicas] == [1, 1]  # the t=0 report still shows a's 50 blocks


def test_priority_headroom_steers_normal_requests_away():
    reqs = [Request("h", 0.0, 160, 400, priority=-1), Request("b", 0.5, 800, 100), Request("c", 0.6, 160, 100)]
    # at 0.6 s: replica 0 holds h (14 blocks) + 60 headroom -> freeness 26; replica 1 holds b (52) -> 48
    with_headroom = run(reqs, migration=False, priority_headroom_blocks=60)
    assert [x["assigned"] for x in with_headroom.replicas] == [1, 2]
    without = run(reqs, migration=False)  # freeness 86 vs 48
    assert [x["assigned"] for x in without.replicas] == [2, 1]


# ---- migration --------------------------------------------------------------------------------------------------
def test_plan_stage_sends_all_but_the_block_being_written():
    assert plan_stage(52, 0, 16) == (False, 51)
    assert plan_stage(52, 51, 16) == (True, 1)
    assert plan_stage(10, 0, 16) == (True, 10)  # short: stop and copy at once


def test_candidate_rule():
    reqs = [Request("long", 0.0, 640, 50), Request("low", 0.0, 320, 50, priority=2), Request("short", 0.0, 64, 50)]
    picks = {}
    for pol in ("SR", "LR", "LCFS"):
        sim = Fixed(SimConfig(replicas=2, router="llumnix", kv_blocks=1000,
                              router_options={"request_policy": pol}), reqs)
        rep = sim.replicas[0]
        for r in reqs:
            rep.add_request(r, 0.0)
        rep.finish_step(rep.start_step(0.0))  # all three prefill and sample their first token
        picks[pol] = sim.candidate(0).id
    # the least important priority goes first whatever the policy
    assert picks == {"SR": "low", "LR": "low", "LCFS": "low"}
    reqs[1] = Request("low", 0.0, 320, 50)
    for pol, want in (("SR", "short"), ("LR", "long"), ("LCFS", "short")):
        sim = Fixed(SimConfig(replicas=2, router="llumnix", kv_blocks=1000,
                              router_options={"request_policy": pol}), reqs)
        rep = sim.replicas[0]
        for r in reqs:
            rep.add_request(r, 0.0)
        rep.finish_step(rep.start_step(0.0))
        assert sim.candidate(0).id == want, pol


def test_drain_migrates_a_running_request_with_staged_copy_times():
    """a (800 prompt, 200 out) on replica 0; drain 0 at 0.105 s. Tick at 0.15 s, replica 0's step ends at 0.152 s:
    a has 800 + 18 computed tokens = 52 blocks -> stage 1 copies 51 blocks (106.954752 ms) while a decodes; at its
    step end 0.264 s a has 832 tokens = 52 blocks -> stop and copy 1 block (2.097152 ms); replica 1 is idle and
    takes it at 0.266097152 s. Token 34 comes 8 ms later: 2.097152 ms late."""
    r = run([Request("a", 0.0, 800, 200)], drain_at={0: 0.105}, link_gb_s=1.0)
    ev = [(e[0], e[5]) for e in Fixed.last.events]
    assert ev == [("start", 0), ("stage", 51), ("stop-copy", 1), ("attach", 52)]
    times = [e[1] for e in Fixed.last.events]
    assert times == approx([0.152, 0.152, 0.264, 0.264 + BLOCK_BYTES / 1e9])
    c = r.summary["cluster"]
    assert c["migrations"] == 1 and c["migrated_bytes"] == 52 * BLOCK_BYTES and c["migrations_aborted"] == 0
    assert c["migration_downtime_s"]["max"] == approx(BLOCK_BYTES / 1e9)
    assert c["migrated_out"] == [1, 0] and c["migrated_in"] == [0, 1]
    assert c["drained"] == [{"replica": 0, "drain_s": 0.105, "empty_s": approx(0.266097152)}]
    a = row(r, "a")
    assert a["output_tokens"] == 200 and a["preemptions"] == 0 and a["status"] == "finished"
    assert a["finish_s"] == approx(0.266097152 + 167 * STEP)  # 200 - 33 tokens left on replica 1
    assert a["itl_max_s"] == approx(STEP + BLOCK_BYTES / 1e9)
    assert r.summary["requests"]["completed"] == 1 and [x["completed"] for x in r.replicas] == [0, 1]


def test_default_link_is_nvlink_on_one_node_and_the_network_across_nodes():
    sim = Fixed(SimConfig(replicas=2, router="llumnix", kv_blocks=100), [Request("a", 0.0, 16, 1)])
    assert sim.link.bandwidth(0, 1) == 450e9  # H100 NVLink 4, per direction
    assert sim.link.stage_time(0, 1, 10) == approx(10 * BLOCK_BYTES / 450e9)
    sim = Fixed(SimConfig(replicas=2, router="llumnix", kv_blocks=100, tp=2,
                          router_options={"gpus_per_node": 2, "stage_overhead_s": "1ms"}),
                [Request("a", 0.0, 16, 1)])
    assert not sim.link.same_node(0, 1) and sim.link.bandwidth(0, 1) == 2 * 25e9  # two NICs in parallel
    assert sim.link.stage_time(0, 1, 10) == approx(1e-3 + 10 * BLOCK_BYTES / 50e9)


def test_request_finishing_during_the_copy_aborts_it():
    r = run([Request("a", 0.0, 800, 25)], drain_at={0: 0.105}, link_gb_s=1.0)
    c = r.summary["cluster"]  # a finishes at 0.2 s, stage 1 (51 blocks) ends at 0.259 s
    assert c["migrations"] == 0 and c["migration_aborts"] == {"source": 1}
    assert c["migrated_bytes"] == 51 * BLOCK_BYTES  # sent before the abort
    assert row(r, "a")["finish_s"] == approx(0.2)


def test_too_many_stages_abort():
    r = run([Request("a", 0.0, 800, 200)], drain_at={0: 0.105}, link_gb_s=1.0, max_stages=1,
            last_stage_max_blocks=1)
    assert r.summary["cluster"]["migration_aborts"]["max_stages"] >= 1
    assert r.summary["cluster"]["migrations"] == 0 and row(r, "a")["finish_s"] == approx(1.6)


def test_abort_when_the_destination_is_full():
    """c fills replica 1 (1440-token prompt: 91+ blocks, freeness 9 > 3, so still a destination) until after a
    ends: every attempt to move a (51 blocks in stage 1) aborts at its first stage; a finishes in place."""
    r = run([Request("a", 0.0, 800, 100), Request("c", 0.0, 1440, 150)], drain_at={0: 0.105}, link_gb_s=1.0)
    c = r.summary["cluster"]
    assert c["migrations"] == 0 and c["migrated_bytes"] == 0 and c["migration_aborts"]["destination"] >= 1
    first = Fixed.last.events[:2]
    assert [e[0] for e in first] == ["start", "abort-destination"] and first[1][1] == approx(0.152)
    assert row(r, "a")["finish_s"] == approx(100 * STEP) and [x["completed"] for x in r.replicas] == [1, 1]


def test_destination_seats_taken_during_stop_and_copy_requeue_the_request():
    """Stop and copy of all 52 blocks from 0.152 s to 0.2611 s; d arrives at 0.2 s and takes replica 1's only
    seat, so a is queued there and recomputes after d (0.6 s): prefill 819 tokens, then 181 more."""
    cfg = SimConfig(replicas=2, router="llumnix", kv_blocks=100, max_num_seqs=1,
                    router_options={"drain_at": {0: 0.105}, "link_gb_s": 1.0, "last_stage_max_blocks": 100})
    r = simulate_cluster(cfg, [Request("a", 0.0, 800, 200), Request("d", 0.2, 16, 50)], simulator=Fixed)
    c = r.summary["cluster"]
    assert c["migrations"] == 0 and c["migration_aborts"] == {"destination": 1}
    a = row(r, "a")
    assert a["preemptions"] == 1 and a["output_tokens"] == 200 and a["finish_s"] == approx(0.6 + 181 * STEP)
    assert r.summary["requests"]["completed"] == 2 and r.summary["preemptions"] == 1


def test_defragmentation_moves_a_running_request_for_a_blocked_prompt():
    """b (640 tokens = 40 blocks) goes to replica 0 at 0.2 s (freeness 38 vs 23) but only 38 blocks are free:
    virtual usage 62 + 40 > 100 makes replica 0 a source. Replica 1 has no room until c ends (0.32 s); at 0.352 s
    a (63 blocks) starts moving: 62 blocks in stage 1 (130.02 ms), 2 at the stop at 0.488 s, and b starts there."""
    reqs = [Request("a", 0.0, 960, 400), Request("c", 0.0, 1200, 40), Request("b", 0.2, 640, 10)]
    r = run(reqs, link_gb_s=1.0)
    ev = [(e[0], round(e[1], 6), e[5]) for e in Fixed.last.events]
    assert ev == [("start", 0.256, 0), ("abort-destination", 0.256, 0), ("start", 0.304, 0),
                  ("abort-destination", 0.304, 0), ("start", 0.352, 0), ("stage", 0.352, 62),
                  ("stop-copy", 0.488, 2), ("attach", round(0.488 + 2 * BLOCK_BYTES / 1e9, 6), 64)]
    assert row(r, "b")["ttft_s"] == approx(0.488 + STEP - 0.2)
    assert row(r, "a")["finish_s"] == approx(0.492194304 + 339 * STEP)
    assert r.summary["requests"]["completed"] == 3
    blocked = run(reqs, migration=False)
    assert row(blocked, "b")["ttft_s"] == approx(400 * STEP + STEP - 0.2)  # waits for a to finish


def test_drain_api_redispatches_queued_requests_then_migrates_the_rest():
    """e (480 tokens = 30 blocks) waits on replica 1 behind b (1200 prompt); draining 1 at 0.2 s sends it to
    replica 0, where it starts when a ends (0.8 s). b moves once replica 0 has room for it (e done at 0.88 s):
    at 0.904 s, 81 blocks, then 2 at the stop (0.912 s) over NVLink."""
    reqs = [Request("a", 0.0, 1440, 100), Request("b", 0.0, 1200, 400), Request("e", 0.1, 480, 10)]

    class DrainAt(Fixed):
        def __init__(self, cfg, requests):
            super().__init__(cfg, requests)
            self.add_timer(0.2, lambda now: self.drain(1, now))

    r = simulate_cluster(SimConfig(replicas=2, router="llumnix", kv_blocks=100), reqs, simulator=DrainAt)
    ev = [(e[0], round(e[1], 6), e[5]) for e in Fixed.last.events]
    assert ev[-4:] == [("start", 0.904, 0), ("stage", 0.904, 81), ("stop-copy", 0.912, 2),
                       ("attach", round(0.912 + 2 * BLOCK_BYTES / 450e9, 6), 83)]
    c = r.summary["cluster"]
    assert c["redispatched"] == 1 and c["migrations"] == 1
    assert c["drained"] == [{"replica": 1, "drain_s": 0.2, "empty_s": approx(0.912 + 2 * BLOCK_BYTES / 450e9)}]
    assert [x["assigned"] for x in r.replicas] == [1, 2] and [x["completed"] for x in r.replicas] == [3, 0]
    assert row(r, "e")["ttft_s"] == approx(100 * STEP + STEP - 0.1)  # after a frees replica 0 at 0.8 s
    assert row(r, "b")["output_tokens"] == 400 and r.summary["requests"]["completed"] == 3


def test_user_errors():
    with pytest.raises(UserError, match="migrate_in_threshold"):
        run([Request("a", 0.0, 16, 1)], migrate_in_threshold=1.0)
    with pytest.raises(UserError, match="replica 5 does not exist"):
        run([Request("a", 0.0, 16, 1)], drain_at={5: 1.0})
    with pytest.raises(UserError, match="cannot drain every replica"):
        run([Request("a", 0.0, 16, 1)], drain_at={0: 1.0, 1: 2.0})
    sim = Fixed(SimConfig(replicas=2, router="llumnix", kv_blocks=100), [Request("a", 0.0, 16, 1)])
    sim.drain(0)
    with pytest.raises(UserError, match="last one"):
        sim.drain(1)


def test_cli_runs_llumnix_and_writes_migration_counters(tmp_path, capsys):
    assert main(["simulate", "-n", "200", "--qps", "60", "--replicas", "3", "--router", "llumnix", "--kv-blocks",
                 "1500", "--router-option", "interval_s=50ms", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["cluster"]["router"] == "llumnix" and s["requests"]["completed"] == 200
    assert {"migrations", "migrated_bytes", "migrations_aborted"} <= set(s["cluster"])
    assert main(["simulate", "-n", "5", "--replicas", "2", "--router", "llumnix", "--router-option", "nope=1"]) == 2
    assert "router llumnix" in capsys.readouterr().err
