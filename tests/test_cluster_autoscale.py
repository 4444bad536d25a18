"""Autoscaler on tiny hand-made scenarios: when it scales, when new replicas take traffic, draining, billing."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from tokensched.cli import cli, main
from tokensched.cluster.autoscale import AutoscaleSimulator
from tokensched.cluster.sim import simulate_cluster
from tokensched.config import SimConfig
from tokensched.errors import UserError
from tokensched.request import Request


def cfg(replicas=2, router="least-outstanding", **opts):
    return SimConfig(replicas=replicas, router=router, autoscaler="load", autoscaler_options=opts)


def served_by(sim: AutoscaleSimulator) -> dict[str, int]:
    return {s.request.id: i for i, r in enumerate(sim.replicas) for s in r.metrics.finished}


def finish(sim: AutoscaleSimulator, rid: str) -> float:
    return next(s.finish_s for r in sim.replicas for s in r.metrics.finished if s.request.id == rid)


def test_scale_out_after_threshold_and_cold_start_delays_routing_exactly():
    # 1 of 2 replicas active; a decision every 1 s. Three long requests at t=0 make the load 3 > 2 at the
    # tick t=1: replica 1 is ordered at t=1 and routable at t=1 + 2.5 = 3.5. A request at 3.49 still goes to
    # replica 0 (the only routable one); one at 3.51 goes to replica 1 (least outstanding: 0 vs 4).
    reqs = [Request(f"long{k}", 0.0, 128, 2000) for k in range(3)]
    reqs += [Request("before", 3.49, 128, 2000), Request("after", 3.51, 128, 2000)]
    sim = AutoscaleSimulator(cfg(interval_s=1.0, scale_out_threshold=2.0, scale_in_threshold=0.5,
                                 cold_start_s=2.5), reqs)
    sim.run()
    by = served_by(sim)
    assert [by[f"long{k}"] for k in range(3)] == [0, 0, 0]
    assert by["before"] == 0 and by["after"] == 1
    assert sim.timeline[:2] == [(0.0, 1), (1.0, 2)]  # billed from the decision, not from routability
    assert sim.lifetimes[1][0][0] == 1.0
    assert sim.scale_outs == 1


def test_no_second_scale_out_while_the_first_is_warming():
    # at t=2 the load is 3 over 1 routable + 1 warming replica = 1.5 <= 2: no new order although 3 > 2
    reqs = [Request(f"long{k}", 0.0, 128, 2000) for k in range(3)]
    sim = AutoscaleSimulator(cfg(replicas=3, interval_s=1.0, scale_out_threshold=2.0, scale_in_threshold=0.5,
                                 cold_start_s=5.0), reqs)
    sim.run()
    assert [t for t, _ in sim.timeline if t <= 5.0] == [0.0, 1.0]
    assert sim.lifetimes[2] == []  # never existed


def test_scale_in_drains_then_removes_and_bills_lifetimes():
    # 2 replicas from the start (round-robin: "long" -> 0, "medium" -> 1). At t=1 the load is 1 < 1.5: the
    # replica with the least work (tie -> the highest index, 1) is drained. A request at t=1.5 must go to
    # replica 0. Replica 1 keeps serving "medium" to completion and is removed exactly when it finishes.
    reqs = [Request("long", 0.0, 128, 1500), Request("medium", 0.0, 128, 400), Request("late", 1.5, 128, 20)]
    c = cfg(router="round-robin", initial_replicas=2, interval_s=1.0, scale_out_threshold=100.0,
            scale_in_threshold=1.5).model_copy(update={"price_per_gpu_hour": 2.0})
    res = simulate_cluster(c, reqs, simulator=AutoscaleSimulator)
    assert res.summary["requests"]["completed"] == 3  # nothing killed
    rows = {r["id"]: r for r in res.rows}
    f_medium = rows["medium"]["finish_s"]
    assert f_medium > 1.0  # still running when the drain began
    assert [r["assigned"] for r in res.replicas] == [2, 1]  # "late" went to replica 0
    cl = res.summary["cluster"]
    assert cl["replica_timeline"] == [[0.0, 2], [f_medium, 1]]
    duration = res.summary["duration_s"]  # first arrival 0 -> last finish
    by_hand = (duration + f_medium) / 3600  # replica 0 the whole run, replica 1 until removal (tp 1)
    assert cl["gpu_hours"] == pytest.approx(by_hand, rel=1e-12)
    assert cl["cost_usd"] == pytest.approx(2.0 * by_hand, rel=1e-12)
    assert res.pools[0]["gpu_hours"] == pytest.approx(by_hand, rel=1e-12)
    assert cl["scale_ins"] == 1 and cl["replicas_peak"] == 2


def test_fixed_cluster_still_bills_every_replica_for_the_whole_run():
    reqs = [Request("a", 0.0, 128, 50), Request("b", 0.0, 128, 400)]
    res = simulate_cluster(SimConfig(replicas=2), reqs)
    assert res.summary["cluster"]["gpu_hours"] == pytest.approx(2 * res.summary["duration_s"] / 3600)
    assert "replica_timeline" not in res.summary["cluster"]


def test_cache_aware_prefix_index_survives_router_rebuilds():
    reqs = [Request(f"r{k}", 0.1 * k, 64, 500, block_hashes=(1, 2, 3, k + 10)) for k in range(6)]
    sim = AutoscaleSimulator(cfg(replicas=3, router="cache-aware", interval_s=0.2, scale_out_threshold=1.0,
                                 scale_in_threshold=0.1, cold_start_s=0.1), reqs)
    sim.run()
    assert sim.scale_outs >= 1
    for k, r in enumerate(sim.active):  # the live router's sets are the per-replica sets, not fresh ones
        assert sim.router.index.sets[k] is sim._prefix_sets[r]
    assert 1 in sim._prefix_sets[0]


@pytest.mark.parametrize("c, needle", [
    (dict(autoscaler_options={"max_replicas": 5}), "max_replicas 5 exceeds replicas 2"),
    (dict(autoscaler_options={"scale_in_threshold": 5, "scale_out_threshold": 2}), "scale_in_threshold"),
    (dict(autoscaler_options={"cold_start": 3}), "cold_start"),
    (dict(autoscaler_options={"min_replicas": 2, "initial_replicas": 1}), "min_replicas <= initial_replicas"),
    (dict(router="llumnix"), "llumnix"),
    (dict(cluster=[{"name": "a", "replicas": 2}]), "one pool"),
])
def test_bad_autoscaler_settings_are_user_errors(c, needle):
    base = dict(replicas=2, autoscaler="load")
    with pytest.raises(UserError, match=needle):
        simulate_cluster(SimConfig(**{**base, **c}), [Request("a", 0.0, 16, 4)])


def test_cli_autoscaler_flags_and_errors(capsys):
    run = CliRunner().invoke(cli, ["simulate", "-n", "40", "--qps", "20", "--replicas", "3", "--autoscaler", "load",
                                   "--autoscaler-option", "interval_s=0.5", "--autoscaler-option",
                                   "scale_out_threshold=2", "--autoscaler-option", "scale_in_threshold=1", "--json"])
    assert run.exit_code == 0, run.output
    cl = json.loads(run.output)["cluster"]
    assert cl["autoscaler"] == "load" and cl["replica_timeline"][0] == [0.0, 1]
    capsys.readouterr()
    assert main(["simulate", "-n", "5", "--replicas", "2", "--autoscaler", "magic"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "autoscaler" in err and len(err.strip().splitlines()) == 1
    assert main(["simulate", "-n", "5", "--replicas", "2", "--autoscaler", "load",
                 "--autoscaler-option", "interval_s=-1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "interval_s" in err and len(err.strip().splitlines()) == 1


def test_scale_out_to_the_desired_count_and_scale_in_waits_for_the_stabilization_window():
    # 5 requests at t=0 on 1 of 4 replicas, threshold 2: at t=1 the desired count is ceil(5/2) = 3, so two
    # replicas are ordered at once (cold start 0.5 s). The three short requests finish before t=3, so the load
    # (2 requests over 3 replicas = 0.67) is below scale_in_threshold 1 from then on, but no scale-in happens
    # before t = 1 + scale_in_delay_s = 4; then the idle replica 2 (tie on load -> highest index) goes at once.
    # Afterwards 2 requests over 2 replicas = 1, not below 1: no change until the long requests end.
    reqs = [Request(f"long{k}", 0.0, 128, 3000) for k in range(2)] + [
        Request(f"short{k}", 0.0, 128, 200) for k in range(3)]
    sim = AutoscaleSimulator(cfg(replicas=4, interval_s=1.0, scale_out_threshold=2.0, scale_in_threshold=1.0,
                                 cold_start_s=0.5, scale_in_delay_s=3.0), reqs)
    sim.run()
    assert max(finish(sim, f"short{k}") for k in range(3)) < 3.0
    assert sim.timeline[:3] == [(0.0, 1), (1.0, 3), (4.0, 2)]
    assert sim.lifetimes[2] == [[1.0, 4.0]] and sim.lifetimes[3] == []


def test_kv_metric_scales_on_reported_kv_usage():
    # the load is the mean *reported* KV usage of the routable replicas; 2 of 3 routable, reports 60 % and 20 %
    sim = AutoscaleSimulator(cfg(replicas=3, metric="kv", initial_replicas=2, interval_s=1.0,
                                 scale_out_threshold=0.35, scale_in_threshold=0.05, cold_start_s=1.0),
                             [Request("a", 5.0, 16, 4)])
    v0, v1 = sim.views[0], sim.views[1]
    sim._refresh = lambda now: None  # keep the hand-set reports
    v0.kv_used_blocks, v1.kv_used_blocks = int(0.6 * v0.kv_blocks), int(0.2 * v1.kv_blocks)
    assert sim.load() == pytest.approx(0.4, abs=1e-4)
    sim._tick(1.0)  # 0.4 > 0.35: total 0.8 / 0.35 -> ceil = 3 replicas, one more
    assert sim.state == ["active", "active", "warming"] and sim.timeline[-1] == (1.0, 3)
