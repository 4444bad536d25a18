"""Trace loaders: every real trace in ../shared/traces, detection by content, and every error path."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tokensched.errors import UserError
from tokensched.request import Request
from tokensched.workload import (
    TRACE_FORMATS,
    ideal_prefix_hit_rate,
    load_trace,
    load_workload,
    write_native,
)

SHARED = Path(__file__).resolve().parents[2] / "shared"
TRACES = SHARED / "traces"
REPLAYS = SHARED / "groundtruth" / "vllm-h100" / "workloads"


def trace(rel: str) -> Path:
    p = TRACES / rel
    if not p.exists():
        pytest.skip(f"trace {rel} not available (../shared/traces)")
    return p


AZURE_CONV = "azure_llm_2023/AzureLLMInferenceTrace_conv.csv"
AZURE_CODE = "azure_llm_2023/AzureLLMInferenceTrace_code.csv"
MOONCAKE_CONV = "mooncake/conversation_trace.jsonl"
MOONCAKE_SYN = "mooncake/synthetic_trace.jsonl"
BURSTGPT = "burstgpt/BurstGPT_1_first33rows_hfviewer.csv"
SHAREGPT = "sharegpt_lengths/sharegpt_8k_filtered_stats_llama2_tokenizer.csv"
ARXIV = "vidur_processed/arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv"


# ----------------------------------------------------------------------------- real traces


@pytest.mark.traces
def test_azure_conv() -> None:
    w = load_trace(trace(AZURE_CONV))
    assert w.format == "azure" and len(w) == 19366
    r0, r1 = w.requests[:2]
    assert (r0.id, r0.arrival_s, r0.prompt_tokens, r0.output_tokens) == ("0", 0.0, 374, 44)
    assert r1.arrival_s == pytest.approx(4.314579, abs=1e-7) and r1.prompt_tokens == 396
    assert w.span_s == pytest.approx(3501.721937, abs=1e-6)
    assert w.rate == pytest.approx(5.53, abs=0.01)


@pytest.mark.traces
def test_azure_code_matches_vidur_rebased_copy() -> None:
    w = load_trace(trace(AZURE_CODE))
    v = load_trace(trace("vidur_processed/splitwise_code.csv"))
    assert w.format == "azure" and v.format == "vidur" and len(w) == len(v) == 8819
    assert w.requests[0].prompt_tokens == 4808 and w.requests[0].output_tokens == 10
    for a, b in zip(w.requests, v.requests):
        assert a.arrival_s == pytest.approx(b.arrival_s, abs=1e-5)
        assert (a.prompt_tokens, a.output_tokens) == (b.prompt_tokens, b.output_tokens)


@pytest.mark.traces
def test_vidur_conv() -> None:
    w = load_trace(trace("vidur_processed/splitwise_conv.csv"))
    assert w.format == "vidur" and len(w) == 19366
    assert w.requests[1].arrival_s == pytest.approx(4.314579)


@pytest.mark.traces
@pytest.mark.parametrize("rel,count,hit", [(MOONCAKE_CONV, 12031, 0.374), (MOONCAKE_SYN, 3993, 0.651)])
def test_mooncake(rel: str, count: int, hit: float) -> None:
    w = load_trace(trace(rel))
    assert w.format == "mooncake" and len(w) == count
    for r in w.requests:
        assert r.hash_block_size == 512
        assert len(r.block_hashes) == math.ceil(r.prompt_tokens / 512)
    # the same check against the raw file, independently of the loader
    with trace(rel).open() as f:
        for line in f:
            d = json.loads(line)
            assert len(d["hash_ids"]) == math.ceil(d["input_length"] / 512)
    assert ideal_prefix_hit_rate(w.requests) == pytest.approx(hit, abs=0.001)


@pytest.mark.traces
def test_mooncake_conversation_first_row_and_block0() -> None:
    w = load_trace(trace(MOONCAKE_CONV))
    r0 = w.requests[0]
    assert (r0.prompt_tokens, r0.output_tokens, r0.block_hashes) == (6758, 500, tuple(range(14)))
    assert all(r.block_hashes[0] == 0 for r in w.requests)
    assert w.rate == pytest.approx(3.40, abs=0.01)


@pytest.mark.traces
def test_burstgpt_skips_failed_rows_explicitly() -> None:
    w = load_trace(trace(BURSTGPT))
    assert w.format == "burstgpt" and len(w) == 32  # 33 rows, one failed (0 response tokens)
    assert any("skipped 1 row " in n and "response tokens" in n for n in w.notes)
    r0 = w.requests[0]
    assert (r0.arrival_s, r0.prompt_tokens, r0.output_tokens, r0.tenant) == (5.0, 472, 18, "default")
    assert r0.extra == {"model": "ChatGPT", "log_type": "Conversation log"}
    assert w.requests[2].extra["model"] == "GPT-4"
    ids = [r.id for r in w.requests]
    assert "20" not in ids and "21" in ids  # the failed row keeps its index: ids point back into the file


@pytest.mark.traces
@pytest.mark.parametrize("rel,count,first", [(SHAREGPT, 30731, (74, 918)), (ARXIV, 28257, (3772, 54))])
def test_length_tables_are_offline_batches(rel: str, count: int, first: tuple[int, int]) -> None:
    w = load_trace(trace(rel))
    assert w.format == "lengths" and len(w) == count
    assert (w.requests[0].prompt_tokens, w.requests[0].output_tokens) == first
    assert all(r.arrival_s == 0.0 for r in w.requests) and w.rate is None
    assert any("offline batch" in n for n in w.notes)


@pytest.mark.traces
def test_replay_files() -> None:
    files = sorted(REPLAYS.glob("*.json"))
    if not files:
        pytest.skip("replay workloads not available (../shared/groundtruth)")
    for f in files:
        doc = json.loads(f.read_text())
        reqs = doc["requests"]
        usable = [r for r in reqs if r["output_tokens"] > 0 and r["input_tokens"] > 0]
        w = load_trace(f)
        assert w.format == "replay" and len(w) == len(usable), f.name
        assert w.engine_hints["max_num_seqs"] == doc["config"]["max_num_seqs"]
        assert w.engine_hints["kv_blocks"] == doc["config"]["kv_blocks_total_gpu"]
        assert w.engine_hints["model"] == doc["model_id"]
        assert w.engine_hints["model_config"] == doc["model_config"]
        by_id = {r.id: r for r in w.requests}
        for r in usable[:50]:
            got = by_id[str(r["index"])]
            assert got.arrival_s == pytest.approx(r["arrival_time_us"] / 1e6)
            assert got.extra["has_error"] == r["has_error"]
        skipped = len(reqs) - len(usable)
        assert (skipped > 0) == any(n.startswith(f"skipped {skipped} row") for n in w.notes)


@pytest.mark.traces
@pytest.mark.parametrize("rel", [AZURE_CONV, MOONCAKE_CONV])
def test_big_traces_load_deterministically(rel: str) -> None:
    # load time is measured by benchmarks/bench_sim.py, not asserted here (timed tests flake on busy machines)
    p = trace(rel)
    assert load_trace(p).requests == load_trace(p).requests


# ----------------------------------------------------------------------------- detection by content


@pytest.mark.traces
def test_detection_uses_content_not_extension(tmp_path: Path) -> None:
    lines = trace(MOONCAKE_CONV).read_text().splitlines()[:20]
    txt = tmp_path / "requests.txt"
    txt.write_text("\n".join(lines) + "\n")
    assert load_trace(txt).format == "mooncake"
    fake = tmp_path / "azure.json"
    fake.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,374,44\n")
    assert load_trace(fake).format == "azure"


def test_forced_format(tmp_path: Path) -> None:
    p = tmp_path / "t.csv"
    p.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n1.5,10,2\n0.5,20,3\n")
    assert [r.arrival_s for r in load_trace(p).requests] == [0.5, 1.5]
    assert [r.arrival_s for r in load_trace(p, fmt="lengths").requests] == [0.0, 0.0]
    with pytest.raises(UserError, match="unknown trace format 'xyz'.*azure.*native"):
        load_trace(p, fmt="xyz")
    with pytest.raises(UserError, match=r"t.csv:1: missing column 'TIMESTAMP'"):
        load_trace(p, fmt="azure")


def test_trace_formats_listed() -> None:
    assert set(TRACE_FORMATS) == {"azure", "burstgpt", "mooncake", "replay", "lengths", "vidur", "native"}


# ----------------------------------------------------------------------------- error paths


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


AZ_HEAD = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
AZ_ROW = "2023-11-16 18:15:46.6805900,374,44\n"


@pytest.mark.parametrize(
    "name,text,pattern",
    [
        ("e.csv", "", r"e.csv: empty file"),
        ("e.csv", "\n  \n", r"e.csv: empty file"),
        ("h.csv", AZ_HEAD, r"h.csv: no requests"),
        ("short.csv", AZ_HEAD + AZ_ROW + "2023-11-16 18:15:47.1,12\n", r"short.csv:3: expected 3 columns, got 2"),
        ("neg.csv", AZ_HEAD + AZ_ROW + AZ_ROW + "2023-11-16 18:15:47.1,-5,3\n",
         r"neg.csv:4: column 'ContextTokens': expected a non-negative integer, got '-5'"),
        ("abc.csv", AZ_HEAD + "2023-11-16 18:15:47.1,12,abc\n",
         r"abc.csv:2: column 'GeneratedTokens': expected a non-negative integer, got 'abc'"),
        ("frac.csv", AZ_HEAD + "2023-11-16 18:15:47.1,12.5,3\n", r"frac.csv:2: column 'ContextTokens'"),
        ("time.csv", AZ_HEAD + AZ_ROW + "16/11/2023 18:15,12,3\n", r"time.csv:3: column 'TIMESTAMP': expected a date"),
        ("vt.csv", "arrived_at,num_prefill_tokens,num_decode_tokens\n0,1,1\nsoon,1,1\n",
         r"vt.csv:3: column 'arrived_at': expected a non-negative time"),
        ("vneg.csv", "arrived_at,num_prefill_tokens,num_decode_tokens\n-1,1,1\n", r"vneg.csv:2: column 'arrived_at'"),
        ("b.csv", "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n1,GPT-4,0,0,0,API log\n",
         r"b.csv: no usable requests: all 1 rows were skipped"),
        ("u.csv", "a,b,c\n1,2,3\n", r"u.csv: unrecognised trace content.*supported formats: azure, burstgpt"),
        ("arr.json", "[1, 2]\n", r"arr.json: unrecognised trace content"),
        ("m.jsonl", '{"timestamp": 0, "input_length": 600, "output_length": 5, "hash_ids": [1, 2]}\n{"timestamp": 1,',
         r"m.jsonl:2: invalid JSON"),
        ("mh.jsonl", '{"timestamp": 0, "input_length": 600, "output_length": 5, "hash_ids": [1, 2]}\n'
         '{"timestamp": 0, "input_length": 600, "output_length": 5, "hash_ids": [1]}\n',
         r"mh.jsonl:2: field 'hash_ids': expected ceil\(600/512\) = 2 hashes, got 1"),
        ("mn.jsonl", '{"timestamp": 0, "input_length": -3, "output_length": 5}\n',
         r"mn.jsonl:1: field 'input_length': expected a non-negative integer, got -3"),
        ("mt.jsonl", '{"timestamp": "x", "input_length": 3, "output_length": 5}\n', r"mt.jsonl:1: field 'timestamp'"),
        ("mk.jsonl", '{"input_length": 3, "output_length": 5}\n', r"mk.jsonl:1: missing field 'timestamp'"),
        ("r.json", '{"config": {}, "requests": [{"arrival_time_us": 0, "input_tokens": 5}]}',
         r"r.json:requests\[0\]: missing field 'output_tokens'"),
        ("r2.json", '{\n "requests": [\n', r"r2.json:\d+: invalid JSON"),
    ],
)
def test_bad_input_raises_user_error(tmp_path: Path, name: str, text: str, pattern: str) -> None:
    p = write(tmp_path, name, text)
    with pytest.raises(UserError, match=pattern):
        load_trace(p)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such file"):
        load_trace(tmp_path / "nope.csv")
    with pytest.raises(UserError, match="is a directory"):
        load_trace(tmp_path)


def test_binary_file(tmp_path: Path) -> None:
    p = tmp_path / "bin.csv"
    p.write_bytes(b"\xff\xfe\x00\x81garbage")
    with pytest.raises(UserError, match="bin.csv: not UTF-8 text"):
        load_trace(p)


def test_unsorted_rows_sorted_stably_and_noted(tmp_path: Path) -> None:
    p = write(tmp_path, "v.csv", "arrived_at,num_prefill_tokens,num_decode_tokens\n2,1,1\n1,2,1\n2,3,1\n1,4,1\n")
    w = load_trace(p)
    assert [r.id for r in w.requests] == ["1", "3", "0", "2"]
    assert any("not in arrival order" in n for n in w.notes)


def test_zero_token_rows_counted(tmp_path: Path) -> None:
    p = write(tmp_path, "z.csv", "num_prefill_tokens,num_decode_tokens\n5,0\n0,5\n5,5\n5,0\n")
    w = load_trace(p)
    assert [r.id for r in w.requests] == ["2"]
    assert "skipped 2 rows with 0 num_decode_tokens" in w.notes
    assert "skipped 1 row with 0 num_prefill_tokens" in w.notes


# ----------------------------------------------------------------------------- native JSONL


def test_native_round_trip(tmp_path: Path) -> None:
    reqs = [
        Request("a", 0.0, 20, 3, block_hashes=(7, 8), hash_block_size=16, tenant="t1", priority=2,
                slo_ttft_s=0.5, slo_tpot_s=0.05, session_id="s", extra={"k": 1}),
        Request("b", 1.25, 5, 1),
    ]
    p = tmp_path / "n.jsonl"
    write_native(reqs, p)
    w = load_trace(p)
    assert w.format == "native" and w.requests == reqs and w.requests[0].extra == {"k": 1}


def test_native_defaults_and_ids(tmp_path: Path) -> None:
    p = write(tmp_path, "n.jsonl", '{"arrival_s": 0, "prompt_tokens": 3, "output_tokens": 1}\n\n'
              '{"arrival_s": 0.5, "prompt_tokens": 3, "output_tokens": 2, "id": 17}\n')
    w = load_trace(p)
    assert [r.id for r in w.requests] == ["0", "17"] and w.requests[0].hash_block_size == 16


@pytest.mark.parametrize(
    "line2,pattern",
    [
        ('{"arrival_s": 0, "prompt_tokens": 3, "output_tokens": 1, "colour": "red"}', r"n.jsonl:2: unknown field 'colour'"),
        ('{"arrival_s": 0, "prompt_tokens": 3}', r"n.jsonl:2: missing field 'output_tokens'"),
        ('{"arrival_s": 0, "prompt_tokens": 3, "output_tokens": 1, "id": "x"}', r"n.jsonl:2: duplicate id 'x'"),
        ('{"arrival_s": -1, "prompt_tokens": 3, "output_tokens": 1}', r"n.jsonl:2: field 'arrival_s'"),
        ('{"arrival_s": 0, "prompt_tokens": 3.5, "output_tokens": 1}', r"n.jsonl:2: field 'prompt_tokens'"),
        ('{"arrival_s": 0, "prompt_tokens": 40, "output_tokens": 1, "block_hashes": [1, 2]}',
         r"n.jsonl:2: field 'block_hashes': expected ceil\(40/16\) = 3 hashes, got 2"),
        ('{"arrival_s": 0, "prompt_tokens": 4, "output_tokens": 1, "block_hashes": ["a"]}',
         r"n.jsonl:2: field 'block_hashes': expected a list of integers"),
        ('{"arrival_s": 0, "prompt_tokens": 4, "output_tokens": 1, "hash_block_size": 0}',
         r"n.jsonl:2: field 'hash_block_size'"),
        ('{"arrival_s": 0, "prompt_tokens": 4, "output_tokens": 1, "priority": "high"}', r"n.jsonl:2: field 'priority'"),
        ('{"arrival_s": 0, "prompt_tokens": 4, "output_tokens": 1, "slo_ttft_s": 0}', r"n.jsonl:2: field 'slo_ttft_s'"),
        ('{"arrival_s": 0, "prompt_tokens": 4, "output_tokens": 1, "tenant": 5}', r"n.jsonl:2: field 'tenant'"),
        ('[1]', r"n.jsonl:2: expected a JSON object"),
    ],
)
def test_native_errors(tmp_path: Path, line2: str, pattern: str) -> None:
    p = write(tmp_path, "n.jsonl", '{"id": "x", "arrival_s": 0, "prompt_tokens": 3, "output_tokens": 1}\n' + line2 + "\n")
    with pytest.raises(UserError, match=pattern):
        load_trace(p)


# ----------------------------------------------------------------------------- load_workload


def test_load_workload_path_window_rate_limit(tmp_path: Path) -> None:
    rows = "".join(f"{t},{10 + t},{1 + t}\n" for t in range(10))
    p = write(tmp_path, "v.csv", "arrived_at,num_prefill_tokens,num_decode_tokens\n" + rows)
    w = load_workload(str(p), num_requests=3, qps=2.0, seed=0, window=(2, 7))
    # window keeps t=2..6 (5 requests, span 4 s) -> rate 2 means span 2.5 s -> scale 0.625 -> first 3
    assert [r.prompt_tokens for r in w.requests] == [12, 13, 14]
    assert [r.arrival_s for r in w.requests] == pytest.approx([0.0, 0.625, 1.25])
    assert len(w.notes) == 4


@pytest.mark.traces
def test_load_workload_offline_batch_gets_rate() -> None:
    w = load_workload(str(trace(SHAREGPT)), num_requests=None, qps=10.0, seed=3)
    assert w.rate == pytest.approx(10.0, rel=0.05)
    assert any("Poisson arrivals at 10 req/s" in n for n in w.notes)


def test_load_workload_unknown_source() -> None:
    with pytest.raises(UserError, match="'nothing-here' is neither a preset \\(chat, code, long-context\\)"):
        load_workload("nothing-here", num_requests=None, qps=None, seed=0)


def test_load_workload_forced_format(tmp_path: Path) -> None:
    p = write(tmp_path, "v.csv", "arrived_at,num_prefill_tokens,num_decode_tokens\n1.5,10,2\n")
    assert load_workload(str(p), fmt="lengths").format == "lengths"
    with pytest.raises(UserError, match="not an existing file"):
        load_workload("chat", fmt="azure")
