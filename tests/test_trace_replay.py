"""Full replays of real traces: everything completes, prefix caching works on Mooncake's hashes."""

from __future__ import annotations

import json

from tokensched.cli import main


def test_mooncake_conversation_full_replay(shared, capsys):
    trace = shared / "traces" / "mooncake" / "conversation_trace.jsonl"
    assert main(["simulate", "-w", str(trace), "-m", "llama-3.1-8b", "-g", "h100", "--tp", "2", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["requests"] == {"total": 12031, "completed": 12031, "failed": 0}
    # the trace's ideal hit rate at 512-token granularity is 37.4 %; a finite cache under load gets less
    assert 0.15 < s["prefix_cache"]["hit_rate"] < 0.374
    assert s["prefix_cache"]["hit_tokens"] > 0


def test_mooncake_without_prefix_caching_hits_nothing(shared, capsys):
    trace = shared / "traces" / "mooncake" / "conversation_trace.jsonl"
    assert main(["simulate", "-w", str(trace), "--tp", "4", "-n", "1500", "--no-prefix-caching", "--json"]) == 0
    off = json.loads(capsys.readouterr().out)
    assert main(["simulate", "-w", str(trace), "--tp", "4", "-n", "1500", "--json"]) == 0
    on = json.loads(capsys.readouterr().out)
    assert off["prefix_cache"]["hit_rate"] == 0.0 and on["prefix_cache"]["hit_rate"] > 0.05
    assert on["ttft_s"]["mean"] < off["ttft_s"]["mean"]


def test_azure_conversation_full_replay(shared, capsys):
    trace = shared / "traces" / "azure_llm_2023" / "AzureLLMInferenceTrace_conv.csv"
    assert main(["simulate", "-w", str(trace), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["requests"]["completed"] == 19366
    assert 5.0 < s["throughput"]["requests_per_s"] < 6.0  # keeps up with the trace's 5.53 req/s


def test_groundtruth_replay_runs_with_its_server_settings(shared, capsys):
    wl = next((shared / "groundtruth" / "vllm-h100" / "workloads").glob("*llama-2-7b-tp1-roleplay.json"))
    assert main(["simulate", "-w", str(wl), "-m", "llama-2-7b", "--max-num-seqs", "128",
                 "--max-batched-tokens", "2048", "--kv-blocks", "7462", "--max-model-len", "4096", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["requests"]["completed"] == s["requests"]["total"] > 1000
