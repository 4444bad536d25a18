"""End-to-end command line: the first run, JSON and files, determinism, and one-line errors (exit 2)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tokensched.cli import main


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tokensched.cli", *args], capture_output=True, text=True,
                          timeout=120)


def test_default_simulate_prints_latency_table(capsys):
    assert main(["simulate", "--num-requests", "200"]) == 0
    out = capsys.readouterr().out
    for word in ("TTFT", "TPOT", "E2E", "requests/s", "output tokens/s", "llama-3.1-8b"):
        assert word in out


def test_json_is_the_only_stdout_and_has_the_documented_keys(capsys):
    assert main(["simulate", "-n", "100", "--json", "--slo-ttft", "200ms", "--slo-tpot", "0.05"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert set(s) >= {"requests", "duration_s", "throughput", "ttft_s", "tpot_s", "itl_s", "e2e_s", "queue_s",
                      "prefix_cache", "preemptions", "slo", "wall_s"}
    assert set(s["requests"]) == {"total", "completed", "failed"}
    assert set(s["throughput"]) == {"requests_per_s", "input_tokens_per_s", "output_tokens_per_s"}
    for k in ("ttft_s", "tpot_s", "itl_s", "e2e_s", "queue_s"):
        assert set(s[k]) == {"mean", "p50", "p90", "p99"}
    assert s["requests"]["total"] == 100
    assert 0 <= s["slo"]["attainment"] <= 1 and s["slo"]["ttft_s"] == 0.2


def test_same_seed_same_bytes_and_output_files(tmp_path, capsys):
    outs = []
    for d in ("a", "b"):
        assert main(["simulate", "-n", "300", "--seed", "7", "--scheduler", "sarathi", "-o", str(tmp_path / d)]) == 0
        outs.append(tmp_path / d)
    capsys.readouterr()
    for name in ("requests.csv", "timeline.csv", "config.yaml"):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes()
    s1, s2 = (json.loads((o / "summary.json").read_text()) for o in outs)
    s1.pop("wall_s"), s2.pop("wall_s")
    assert s1 == s2
    rows = (outs[0] / "requests.csv").read_text().splitlines()
    assert rows[0].startswith("id,arrival_s,prompt_tokens,output_tokens") and len(rows) == 301


def test_config_file_with_flag_override(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: llama-2-7b\nmax-num-seqs: 32\nnum_requests: 50\nslo-ttft: 1s\n")
    assert main(["simulate", "--config", str(cfg), "--json", "--num-requests", "60"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["requests"]["total"] == 60 and s["slo"]["ttft_s"] == 1.0


def test_list_shows_every_catalog(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for word in ("vllm", "sarathi", "orca", "llama-3.1-70b", "mixtral-8x7b", "h200", "l40s", "chat", "mooncake",
                 "azure", "burstgpt"):
        assert word in out


def _bad(tmp_path: Path) -> list[tuple[list[str], str]]:
    neg = tmp_path / "neg.jsonl"
    neg.write_text('{"arrival_s": 0, "prompt_tokens": 10, "output_tokens": 5}\n'
                   '{"arrival_s": 1, "prompt_tokens": -3, "output_tokens": 5}\n')
    bad_csv = tmp_path / "az.csv"
    bad_csv.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,12,3\n"
                       "2023-11-16 18:15:47.0000000,abc,3\n")
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("model: llama-2-7b\n\ntp: zero\n")
    cfg2 = tmp_path / "bad2.yaml"
    cfg2.write_text("modle: llama-2-7b\n")
    return [
        (["simulate", "-w", str(tmp_path / "missing.csv")], "missing.csv"),
        (["simulate", "-w", str(neg)], "neg.jsonl:2"),
        (["simulate", "-w", str(bad_csv)], "az.csv:3"),
        (["simulate", "--model", "gpt-9"], "unknown model"),
        (["simulate", "--gpu", "h900"], "unknown GPU"),
        (["simulate", "--scheduler", "fifo"], "unknown scheduler"),
        (["simulate", "-n", "20", "--kv-blocks", "10"], "KV cache too small"),
        (["simulate", "--tp", "0"], "tp"),
        (["simulate", "--slo-ttft", "fast"], "slo-ttft"),
        (["simulate", "--tp", "x"], "--tp"),
        (["simulate", "--config", str(cfg)], "bad.yaml:3"),
        (["simulate", "--config", str(cfg2)], "modle"),
        (["simulate", "--config", str(tmp_path / "nope.yaml")], "nope.yaml"),
        (["simulate", "--window", "5m:1m"], "window"),
        (["simulate", "--model", "llama-2-70b", "--gpu", "l40s"], "no room for a KV cache"),
        (["list", "things"], "things"),
    ]


def test_bad_inputs_give_one_line_and_exit_2(tmp_path, capsys):
    for args, needle in _bad(tmp_path):
        code = main(args)
        err = capsys.readouterr().err
        assert code == 2, (args, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, err)
        assert needle in lines[0], (args, lines[0])
        assert "Traceback" not in err


def test_console_script_exit_code_and_no_traceback():
    p = cli("simulate", "--model", "nope")
    assert p.returncode == 2 and p.stderr.startswith("error: unknown model") and "Traceback" not in p.stderr
    p = cli("simulate", "-n", "50", "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["requests"]["completed"] == 50


@pytest.mark.parametrize("scheduler", ["vllm", "sarathi", "orca"])
def test_every_scheduler_runs_every_preset(scheduler, capsys):
    for preset in ("chat", "code", "long-context"):
        assert main(["simulate", "-w", preset, "-n", "60", "-s", scheduler, "--json"]) == 0
        s = json.loads(capsys.readouterr().out)
        assert s["requests"]["completed"] == 60
