"""Routers on hand-made replica views, and whole-cluster runs (determinism, pools, staleness, latency)."""

from __future__ import annotations

import json

import pytest

from tokensched.cluster.routers import (CacheAware, CacheAwareOptions, DynamoCost, DynamoOptions, LeastKV,
                                        LeastOutstanding, PowerOfTwo, ReplicaView, RoundRobin, SessionAffinity,
                                        WorkloadBalanced, get_router)
from tokensched.cluster.sim import simulate_cluster
from tokensched.config import SimConfig
from tokensched.errors import UserError
from tokensched.request import Request
from tokensched.workload import load_workload


def views(n=3, **kw):
    vs = [ReplicaView(i, "p", kv_blocks=100, block_size=16, speed=1.0) for i in range(n)]
    for k, vals in kw.items():
        for v, x in zip(vs, vals):
            setattr(v, k, x)
    return vs


def req(rid="r", prompt=64, out=8, hashes=(), session=None):
    return Request(rid, 0.0, prompt, out, block_hashes=hashes, hash_block_size=16, session_id=session)


def test_round_robin_cycles():
    vs = views(3)
    r = RoundRobin(None, vs)
    assert [r.route(req(), vs, 0.0) for _ in range(5)] == [0, 1, 2, 0, 1]


def test_least_outstanding_and_least_kv():
    vs = views(3, outstanding=[4, 2, 2], kv_used_blocks=[10, 50, 5])
    assert LeastOutstanding(None, vs).route(req(), vs, 0.0) == 1  # tie 1/2 -> lower index
    assert LeastKV(None, vs).route(req(), vs, 0.0) == 2


def test_power_of_two_picks_the_less_loaded_of_its_sample():
    vs = views(2, running=[5, 1])
    assert PowerOfTwo(None, vs, seed=0).route(req(), vs, 0.0) == 1  # with 2 replicas the sample is both


def test_cache_aware_follows_prefix_then_balances():
    vs = views(2)
    r = CacheAware(CacheAwareOptions(balance_abs_threshold=2, balance_rel_threshold=1.5), vs)
    a = req("a", hashes=(1, 2, 3, 4))
    assert r.route(a, vs, 0.0) == 0  # nothing cached: least loaded (tie -> 0)
    vs[0].outstanding = 2
    assert r.route(req("b", hashes=(1, 2, 3, 9)), vs, 0.0) == 0  # 3/4 match > 0.3: follow the cache
    assert r.route(req("c", hashes=(7, 8)), vs, 0.0) == 1  # no match: least loaded
    vs[0].outstanding, vs[1].outstanding = 5, 1  # 5-1 > 2 and 5 > 1.5 x 1: imbalanced
    assert r.route(req("d", hashes=(1, 2, 3, 4)), vs, 0.0) == 1  # balance wins over the cache


def test_dynamo_cost_by_hand():
    vs = views(2, outstanding_tokens=[16 * 10, 16 * 2])
    r = DynamoCost(DynamoOptions(overlap_score_weight=1.0), vs)
    r.index.insert(req("seed", prompt=128, hashes=tuple(range(8))), 0)  # replica 0 caches all 8 blocks
    # replica 0: 0 prefill blocks + 10 decode blocks = 10; replica 1: 8 + 2 = 10 -> tie -> lower index
    assert r.route(req("x", prompt=128, hashes=tuple(range(8))), vs, 0.0) == 0
    vs[0].outstanding_tokens = 16 * 11  # 11 > 10
    assert r.route(req("y", prompt=128, hashes=tuple(range(8))), vs, 0.0) == 1


def test_session_affinity_is_sticky_and_bounded():
    vs = views(4)
    r = SessionAffinity(None, vs)
    first = r.route(req("1", session="s1"), vs, 0.0)
    assert all(r.route(req(str(i), session="s1"), vs, 0.0) == first for i in range(5))
    vs[first].outstanding = 100  # overloaded: the next replica on the ring takes it
    assert r.route(req("x", session="s1"), vs, 0.0) != first


def test_workload_balanced_prefers_fast_replicas():
    vs = views(2, outstanding_tokens=[1000, 600])
    vs[0].speed = 4.0  # 4x faster: (1000+100)/4 < (600+100)/1
    assert WorkloadBalanced(None, vs).route(req(prompt=92, out=8), vs, 0.0) == 0


def test_unknown_router():
    with pytest.raises(UserError, match="round-robin"):
        get_router("nearest")


def _reqs(n=400, qps=40.0, seed=2):
    return load_workload("chat", num_requests=n, qps=qps, seed=seed).requests


def test_cluster_completes_everything_once_and_is_deterministic():
    cfg = SimConfig(replicas=3, router="power-of-two", report_interval=0.2)
    a, b = simulate_cluster(cfg, _reqs()), simulate_cluster(cfg, _reqs())
    assert a.summary["requests"]["completed"] == 400
    assert sorted(r["id"] for r in a.rows) == sorted(r.id for r in _reqs())
    sa, sb = dict(a.summary), dict(b.summary)
    sa.pop("wall_s"), sb.pop("wall_s")
    assert json.dumps(sa) == json.dumps(sb)
    assert sum(r["assigned"] for r in a.replicas) == 400
    assert a.summary["cluster"]["gpu_hours"] == pytest.approx(3 * a.summary["duration_s"] / 3600)


def test_cluster_macro_steps_match_single_steps():
    base = SimConfig(replicas=2, router="least-outstanding")
    s1 = simulate_cluster(base.model_copy(update={"macro_steps": False}), _reqs(200)).summary
    s2 = simulate_cluster(base, _reqs(200)).summary
    s1.pop("wall_s"), s2.pop("wall_s")
    assert s1 == s2


def test_stale_reports_make_least_kv_herd():
    burst = [Request(str(i), 0.0, 200, 50) for i in range(8)]
    fresh = simulate_cluster(SimConfig(replicas=4, router="least-kv"), burst)
    stale = simulate_cluster(SimConfig(replicas=4, router="least-kv", report_interval=10.0), burst)
    assert [r["assigned"] for r in fresh.replicas] == [2, 2, 2, 2]  # waiting counts update per route
    assert [r["assigned"] for r in stale.replicas] == [8, 0, 0, 0]  # everyone sees the same old picture


def test_router_latency_delays_every_request():
    reqs = [Request(str(i), float(i), 100, 10) for i in range(5)]  # far apart: no queueing
    a = simulate_cluster(SimConfig(replicas=2), reqs)
    b = simulate_cluster(SimConfig(replicas=2, router_latency="5ms"), reqs)
    for ra, rb in zip(a.rows, b.rows):
        assert rb["ttft_s"] == pytest.approx(ra["ttft_s"] + 0.005)


def test_heterogeneous_pools_from_yaml_keys():
    cfg = SimConfig(cluster=[
        {"name": "h100s", "gpu": "h100", "tp": 1, "replicas": 1, "price_per_gpu_hour": 2.0},
        {"name": "a100s", "gpu": "a100-80gb", "tp": 2, "replicas": 2, "price_per_gpu_hour": 1.0},
    ], router="workload-balanced")
    r = simulate_cluster(cfg, _reqs(300))
    assert [p["pool"] for p in r.pools] == ["h100s", "a100s"]
    assert [p["replicas"] for p in r.pools] == [1, 2]
    d = r.summary["duration_s"]
    assert r.summary["cluster"]["gpu_hours"] == pytest.approx((1 + 4) * d / 3600)
    assert r.summary["cluster"]["cost_usd"] == pytest.approx((1 * 2.0 + 4 * 1.0) * d / 3600)
    assert r.summary["cluster"]["cost_per_million_output_tokens"] > 0


@pytest.mark.parametrize("pools,needle", [
    ([{"gpu": "h100", "colour": "red"}], "unknown pool key 'colour'"),
    ([{"gpu": "h100", "tp": 0}], "cluster[0]"),
    (["h100"], "mapping"),
])
def test_bad_pool_descriptions(pools, needle):
    with pytest.raises(UserError) as e:
        simulate_cluster(SimConfig(cluster=pools), _reqs(10))
    assert needle in str(e.value)


def test_extension_hooks_move_a_running_request_between_replicas():
    """A toy extension: at t=0.5 s move every running request of replica 0 to replica 1 (between steps)."""
    from tokensched.cluster.sim import ClusterSimulator

    moved: list[str] = []

    class Mover(ClusterSimulator):
        def __init__(self, cfg, requests):
            super().__init__(cfg, requests)
            self.want = False
            self.add_timer(0.5, self._tick)

        def _tick(self, now):
            self.want = True
            self.wake(0, now)

        def on_step_end(self, i, now):
            if i == 0 and self.want:
                self.want = False
                src, dst = self.replicas[0], self.replicas[1]
                for seq in list(src.scheduler.running):
                    if dst.can_attach(seq):
                        src.detach(seq)
                        dst.attach(seq, now)
                        moved.append(seq.id)
                        self.views[0].outstanding -= 1
                        self.views[1].outstanding += 1
                self.wake(1, now)

    reqs = [Request("a", 0.0, 300, 400), Request("b", 5.0, 100, 10)]
    r = simulate_cluster(SimConfig(replicas=2), reqs, simulator=Mover)
    assert moved == ["a"]
    assert r.summary["requests"]["completed"] == 2
    row = next(x for x in r.rows if x["id"] == "a")
    assert row["output_tokens"] == 400 and row["preemptions"] == 0
    # round-robin sent a to replica 0 and b to replica 1; a moved to 1 and finished there
    assert [x["completed"] for x in r.replicas] == [0, 2]
