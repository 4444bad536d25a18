"""Disaggregated prefill/decode: hand-computed KV transfer times, where TTFT and the first decode token happen,
completion of every request exactly once, the colocated default unchanged, and the pool-sizing search."""

from __future__ import annotations

import pytest

from tokensched.cluster.disagg import DisaggSimulator, disagg_simulator, kv_transfer_time
from tokensched.cluster.disagg_sizing import search_pool_split
from tokensched.cluster.sim import ClusterSimulator, simulate_cluster
from tokensched.cli import cli, main
from tokensched.config import SimConfig
from tokensched.errors import UserError
from tokensched.request import Request
from tokensched.workload import load_workload

KV_8B = 2 * 32 * 8 * 128 * 2  # Llama-3.1-8B: 2 (K, V) x 32 layers x 8 KV heads x 128 dims x 2 bytes = 131,072 B/token


def pd(p=1, d=1, tp=1, **disagg):
    return SimConfig(tp=tp, disagg=disagg, cluster=[{"name": "pre", "role": "prefill", "replicas": p},
                                                    {"name": "dec", "role": "decode", "replicas": d}])


def row(r, rid):
    return next(x for x in r.rows if x["id"] == rid)


def test_transfer_time_formula_by_hand():
    assert KV_8B == 131_072
    # 1,000 tokens = 131,072,000 B; at 10 GB/s: 13.1072 ms
    assert kv_transfer_time(1000, KV_8B, 10e9) == pytest.approx(0.0131072)
    # layer-wise, link fast enough: only the last of 32 layers remains: 13.1072 / 32 = 0.4096 ms
    assert kv_transfer_time(1000, KV_8B, 10e9, layers=32, overlap=True, prefill_s=0.030) == pytest.approx(0.0004096)
    # layer-wise, link too slow (1 GB/s: 131.072 ms) for a 30 ms prefill: 131.072 - 30 x 31/32 = 102.0095 ms
    assert kv_transfer_time(1000, KV_8B, 1e9, layers=32, overlap=True, prefill_s=0.030) == pytest.approx(
        0.131072 - 0.030 * 31 / 32)


def test_first_decode_token_comes_after_the_transfer():
    a = [Request("a", 0.0, 1000, 2)]
    colo = simulate_cluster(SimConfig(), a)  # one replica: prefill then one decode step
    r = simulate_cluster(pd(kv_link_gb_s=10), a)
    c, x = row(colo, "a"), row(r, "a")
    assert x["ttft_s"] == pytest.approx(c["ttft_s"])  # the prefill replica runs the prompt alone, as colocated
    # token 2 = TTFT + 13.1072 ms transfer + the same one-token decode step on the decode replica
    assert x["e2e_s"] == pytest.approx(c["e2e_s"] + 0.0131072)
    cl = r.summary["cluster"]
    assert cl["router"] == "disagg"
    assert cl["kv_transfers"] == 1 and cl["kv_transferred_bytes"] == 1000 * KV_8B
    assert cl["kv_transfer_mean_s"] == pytest.approx(0.0131072)
    # TTFT measured on the prefill replica, the request finished on the decode replica
    assert [x["completed"] for x in r.replicas] == [0, 1]
    assert [x["assigned"] for x in r.replicas] == [1, 1]


def test_default_link_is_min_tp_times_nvlink():
    a = [Request("a", 0.0, 1000, 2)]
    r = simulate_cluster(pd(tp=2), a)
    # H100 NVLink 4: 450 GB/s per GPU, 2 GPU pairs in parallel: 131,072,000 B / 900 GB/s
    assert r.summary["cluster"]["kv_transfer_mean_s"] == pytest.approx(1000 * KV_8B / 900e9)


def test_layerwise_overlap_hides_all_but_the_last_layer():
    a = [Request("a", 0.0, 1000, 2)]
    r = simulate_cluster(pd(kv_link_gb_s=10, layerwise_overlap=True), a)
    assert r.summary["cluster"]["kv_transfer_mean_s"] == pytest.approx(0.0131072 / 32)
    slow = simulate_cluster(pd(kv_link_gb_s=1, layerwise_overlap=True), a)
    ttft = row(slow, "a")["ttft_s"]  # the prefill started at 0, so the prefill time is the TTFT
    assert slow.summary["cluster"]["kv_transfer_mean_s"] == pytest.approx(0.131072 - ttft * 31 / 32)


def test_one_token_request_finishes_on_the_prefill_replica():
    r = simulate_cluster(pd(), [Request("b", 0.0, 500, 1)])
    assert r.summary["cluster"]["kv_transfers"] == 0
    assert [x["completed"] for x in r.replicas] == [1, 0]


def test_every_request_completes_once_and_queues_for_a_full_decoder():
    reqs = load_workload("chat", num_requests=150, qps=20, seed=3).requests
    cfg = SimConfig(max_num_seqs=8, cluster=[{"name": "pre", "role": "prefill", "replicas": 2},
                                             {"name": "dec", "role": "decode", "replicas": 2}])
    r = simulate_cluster(cfg, reqs)
    ids = [x["id"] for x in r.rows]
    assert sorted(ids) == sorted(q.id for q in reqs) and len(set(ids)) == len(ids)
    assert all(x["status"] == "finished" for x in r.rows)
    cl = r.summary["cluster"]
    multi = sum(1 for q in reqs if q.output_tokens > 1)
    assert cl["kv_transfers"] == multi
    assert sum(x["completed"] for x in r.replicas[2:]) == multi  # decode pool finished all multi-token requests
    assert cl["decode_attach_wait_mean_s"] > 0  # 8 seats per decoder: transfers had to wait for room
    assert simulate_cluster(cfg, reqs).rows == r.rows  # deterministic


def test_colocated_is_unchanged():
    reqs = load_workload("chat", num_requests=60, qps=10, seed=1).requests
    plain = SimConfig(replicas=2)
    mixed = SimConfig(cluster=[{"name": "pool", "replicas": 2, "role": "mixed"}])
    assert disagg_simulator(plain) is None and disagg_simulator(mixed) is None
    assert disagg_simulator(pd()) is DisaggSimulator
    a = simulate_cluster(plain, reqs)
    b = simulate_cluster(mixed, reqs)
    c = simulate_cluster(plain, reqs, simulator=ClusterSimulator)
    assert a.rows == b.rows == c.rows
    assert "kv_transfers" not in a.summary["cluster"]


@pytest.mark.parametrize("cfg, msg", [
    (SimConfig(cluster=[{"role": "prefill", "replicas": 2}]), "role prefill and one with role decode"),
    (SimConfig(replicas=2, disagg={"kv_link_gb_s": 5}), "need a cluster"),
    (pd(kv_link_gb_s=-1), "kv_link_gb_s"),
    (pd(bogus=1), "bogus"),
])
def test_user_errors(cfg, msg):
    with pytest.raises(UserError, match=msg):
        simulate_cluster(cfg, [Request("a", 0.0, 100, 4)])


def test_bad_role_is_a_user_error():
    with pytest.raises(UserError, match="role"):
        simulate_cluster(SimConfig(cluster=[{"role": "both"}]), [Request("a", 0.0, 100, 4)])


def test_cli_runs_a_disaggregated_yaml(tmp_path, capsys):
    from click.testing import CliRunner

    cfg = tmp_path / "pd.yaml"
    cfg.write_text("workload: chat\nnum_requests: 30\ndisagg: {kv_link_gb_s: 50, layerwise_overlap: true}\n"
                   "cluster:\n  - {name: pre, role: prefill, replicas: 1}\n  - {name: dec, role: decode, replicas: 1}\n")
    res = CliRunner().invoke(cli, ["simulate", "--config", str(cfg), "--json"])
    assert res.exit_code == 0, res.output
    assert '"kv_transfers"' in res.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("cluster:\n  - {role: decoder}\n")
    assert main(["simulate", "--config", str(bad)]) == 2
    assert "error:" in capsys.readouterr().err


def test_pool_sizing_search_tries_every_split():
    reqs = load_workload("chat", num_requests=80, qps=12, seed=2).requests
    res = search_pool_split(SimConfig(slo_ttft=1.0, slo_tpot=0.05), reqs, 4)
    assert [x["split"] for x in res.rows] == ["colocated x4", "1P:3D", "2P:2D", "3P:1D"]
    assert all(x["gpus"] == 4 for x in res.rows)
    assert res.best["attainment"] == max(x["attainment"] for x in res.rows)
    for x in res.rows:
        assert x["attainment"] <= min(x["ttft_attainment"], x["tpot_attainment"]) + 1e-12
    with pytest.raises(UserError, match="slo"):
        search_pool_split(SimConfig(), reqs, 4)
