"""GPU and model catalogs: figures against published numbers, config.json loading, and user errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from tokensched.errors import UserError
from tokensched.hardware import GPUS, get_gpu
from tokensched.models import MODELS, ModelConfig, get_model, load_hf_config

GROUNDTRUTH = Path(__file__).resolve().parents[2] / "shared" / "groundtruth" / "vllm-h100"
GT_MODELS = {
    "Llama-2-7b-hf": "llama-2-7b",
    "Llama-2-70b-hf": "llama-2-70b",
    "CodeLlama-34b-Instruct-hf": "codellama-34b",
    "Mixtral-8x7B-v0.1": "mixtral-8x7b",
}

# Sizes from the model cards / Hugging Face safetensors metadata.
PUBLISHED_PARAMS = {
    "llama-2-7b": 6.74e9,
    "llama-2-13b": 13.02e9,
    "llama-2-70b": 68.98e9,
    "llama-3.1-8b": 8.03e9,
    "llama-3.1-70b": 70.6e9,
    "llama-3.2-1b": 1.24e9,
    "llama-3.2-3b": 3.21e9,
    "codellama-34b": 33.7e9,
    "mistral-7b": 7.24e9,
    "mixtral-8x7b": 46.7e9,
    "qwen2.5-7b": 7.62e9,
    "qwen2.5-72b": 72.7e9,
}


# ---------------------------------------------------------------- models


@pytest.mark.parametrize("key,published", PUBLISHED_PARAMS.items())
def test_num_params_matches_published(key: str, published: float) -> None:
    assert MODELS[key].num_params == pytest.approx(published, rel=0.02)


def test_every_catalog_entry_is_cited_and_keyed_by_name() -> None:
    for key, m in MODELS.items():
        assert m.name == key
        assert m.hf_id and "/" in m.hf_id


def test_kv_bytes_per_token_hand_computed() -> None:
    assert MODELS["llama-2-7b"].kv_bytes_per_token == 2 * 32 * 32 * 128 * 2 == 524288
    assert MODELS["llama-3.1-8b"].kv_bytes_per_token == 2 * 32 * 8 * 128 * 2 == 131072


def test_moe_active_params() -> None:
    mixtral = MODELS["mixtral-8x7b"]
    assert mixtral.is_moe and not MODELS["llama-2-7b"].is_moe
    assert mixtral.mlp_params_per_layer == 3 * 4096 * 14336 * 8 + 4096 * 8
    assert mixtral.active_mlp_params_per_token == 3 * 4096 * 14336 * 2 + 4096 * 8
    assert mixtral.active_params_per_token == pytest.approx(12.9e9, rel=0.02)  # Mistral's "12.9B active"
    dense = MODELS["llama-3.1-8b"]
    assert dense.active_params_per_token == dense.num_params


def test_qwen_bias_and_tied_embeddings_are_counted() -> None:
    q = MODELS["qwen2.5-7b"]
    no_bias = dataclasses.replace(q, qkv_bias=False)
    assert q.attn_params_per_layer - no_bias.attn_params_per_layer == 28 * 128 + 2 * 4 * 128
    small = MODELS["llama-3.2-1b"]
    assert small.embedding_params == 128256 * 2048


def _gt_dir(name: str) -> Path:
    d = GROUNDTRUTH / "model_configs" / name
    if not (d / "config.json").is_file():
        pytest.skip(f"{d} absent")
    return d


@pytest.mark.parametrize("dirname,key", GT_MODELS.items())
def test_groundtruth_configs_match_catalog(dirname: str, key: str) -> None:
    d = _gt_dir(dirname)
    for loaded in (load_hf_config(d), load_hf_config(d / "config.json"), get_model(str(d))):
        assert loaded.name == dirname
        assert dataclasses.replace(loaded, name=key) == MODELS[key]
    # The directory name is also an HF-style id that maps onto the catalog.
    assert get_model(dirname) is MODELS[key]


def test_groundtruth_h100_sheet_matches_catalog() -> None:
    path = GROUNDTRUTH / "h100-sxm.json"
    if not path.is_file():
        pytest.skip(f"{path} absent")
    sheet = json.loads(path.read_text())
    h100 = GPUS["h100"]
    assert sheet["compute"]["with_sparsity"] is True
    assert h100.bf16_flops == pytest.approx(sheet["compute"]["bf16_tensor_core"] * 1e12 / 2, rel=1e-3)
    assert h100.hbm_bandwidth == pytest.approx(sheet["memory"]["bandwidth_tb_s"] * 1e12)
    assert h100.interconnect_bandwidth == pytest.approx(sheet["interconnect"]["nvlink_bandwidth_gb_s"] * 1e9 / 2)
    assert h100.pcie_bandwidth == pytest.approx(sheet["interconnect"]["pcie_bandwidth_gb_s"] * 1e9 / 2)
    assert 0.95 * 80e9 < h100.hbm_bytes <= 80 * 2**30


def _write(tmp_path: Path, cfg: object, text: str | None = None) -> Path:
    p = tmp_path / "config.json"
    p.write_text(text if text is not None else json.dumps(cfg))
    return p


BASE = {"hidden_size": 1024, "num_hidden_layers": 4, "num_attention_heads": 8, "intermediate_size": 4096,
        "vocab_size": 1000, "max_position_embeddings": 2048}


def test_load_defaults(tmp_path: Path) -> None:
    m = load_hf_config(_write(tmp_path, {**BASE, "torch_dtype": "float32"}))
    assert (m.num_kv_heads, m.head_dim, m.dtype_bytes, m.num_experts, m.qkv_bias) == (8, 128, 2, 0, False)
    assert load_hf_config(tmp_path, dtype_bytes="auto").dtype_bytes == 4
    assert m.name == tmp_path.name


def test_load_qwen_moe(tmp_path: Path) -> None:
    cfg = {**BASE, "model_type": "qwen2_moe", "num_experts": 60, "num_experts_per_tok": 4,
           "moe_intermediate_size": 1408, "shared_expert_intermediate_size": 5632}
    m = load_hf_config(_write(tmp_path, cfg))
    assert (m.num_experts, m.experts_per_token, m.intermediate_size, m.qkv_bias) == (60, 4, 1408, True)
    assert m.active_mlp_params_per_token == 3 * 1024 * 1408 * 4 + 1024 * 60 + 3 * 1024 * 5632 + 1024


@pytest.mark.parametrize("missing", ["hidden_size", "num_hidden_layers", "vocab_size", "intermediate_size"])
def test_missing_field_is_user_error(tmp_path: Path, missing: str) -> None:
    cfg = {k: v for k, v in BASE.items() if k != missing}
    p = _write(tmp_path, cfg)
    with pytest.raises(UserError) as err:
        load_hf_config(p)
    msg = str(err.value)
    assert missing in msg and str(p) in msg and "\n" not in msg


def test_moe_without_top_k_is_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="num_experts_per_tok"):
        load_hf_config(_write(tmp_path, {**BASE, "num_local_experts": 8}))


@pytest.mark.parametrize("bad,needle", [({"hidden_size": "big"}, "hidden_size"),
                                        ({"num_key_value_heads": 3}, "num_kv_heads"),
                                        ({"tie_word_embeddings": "yes"}, "tie_word_embeddings")])
def test_bad_values_are_user_errors(tmp_path: Path, bad: dict[str, object], needle: str) -> None:
    with pytest.raises(UserError, match=needle):
        load_hf_config(_write(tmp_path, {**BASE, **bad}))


def test_invalid_json_is_user_error_with_line(tmp_path: Path) -> None:
    p = _write(tmp_path, None, text='{\n  "hidden_size": 1024,\n  oops\n}')
    with pytest.raises(UserError) as err:
        load_hf_config(p)
    assert str(p) in str(err.value) and "line 3" in str(err.value)
    with pytest.raises(UserError, match="JSON object"):
        load_hf_config(_write(tmp_path, [1, 2]))


def test_missing_file_or_dir_is_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no config.json"):
        load_hf_config(tmp_path)
    with pytest.raises(UserError, match="no such file"):
        load_hf_config(tmp_path / "nope.json")
    with pytest.raises(UserError, match="no such file"):
        get_model(str(tmp_path / "nope.json"))


@pytest.mark.parametrize("alias,key", [
    ("LLAMA-2-7B", "llama-2-7b"),
    ("meta-llama/Llama-2-7b-hf", "llama-2-7b"),
    ("meta-llama/Llama-2-7b-chat-hf", "llama-2-7b"),
    ("meta-llama/Llama-3.1-8B", "llama-3.1-8b"),
    ("meta-llama/Meta-Llama-3.1-8B-Instruct", "llama-3.1-8b"),
    ("meta-llama/Llama-3.1-70B-Instruct", "llama-3.1-70b"),
    ("codellama/CodeLlama-34b-Instruct-hf", "codellama-34b"),
    ("mistralai/Mistral-7B-v0.1", "mistral-7b"),
    ("mistralai/Mixtral-8x7B-Instruct-v0.1", "mixtral-8x7b"),
    ("Qwen/Qwen2.5-72B-Instruct", "qwen2.5-72b"),
])
def test_model_aliases(alias: str, key: str) -> None:
    assert get_model(alias) is MODELS[key]


def test_unknown_model_lists_catalog() -> None:
    with pytest.raises(UserError) as err:
        get_model("gpt-5")
    msg = str(err.value)
    assert "'gpt-5'" in msg and all(k in msg for k in MODELS) and "\n" not in msg


def test_model_config_validates() -> None:
    with pytest.raises(ValueError, match="experts_per_token"):
        dataclasses.replace(MODELS["mixtral-8x7b"], experts_per_token=0)
    assert isinstance(MODELS["llama-2-7b"], ModelConfig)


# ---------------------------------------------------------------- GPUs


def test_required_gpus_present() -> None:
    assert {"a100-40gb", "a100-80gb", "h100", "h100-pcie", "h200", "l40s", "b200"} <= set(GPUS)
    for key, gpu in GPUS.items():
        assert gpu.key == key


def test_gpu_data_sheet_figures() -> None:
    assert GPUS["h100"].bf16_flops == pytest.approx(989.4e12)
    assert GPUS["h100"].hbm_bytes == 81559 * 2**20 == 85_520_809_984
    assert GPUS["h200"].hbm_bandwidth == pytest.approx(4.8e12)
    assert GPUS["a100-80gb"].interconnect_bandwidth == pytest.approx(300e9)
    assert GPUS["b200"].bf16_flops == pytest.approx(2250e12)
    assert GPUS["l40s"].interconnect == "pcie4" and GPUS["l40s"].interconnect_bandwidth == pytest.approx(32e9)
    # Ordering sanity: newer parts are faster, and an "80 GB" part exposes less than 80 GiB.
    assert GPUS["b200"].hbm_bandwidth > GPUS["h200"].hbm_bandwidth > GPUS["h100"].hbm_bandwidth
    for gpu in GPUS.values():
        assert gpu.pcie_bandwidth <= gpu.interconnect_bandwidth


@pytest.mark.parametrize("alias,key", [
    ("H100", "h100"), ("h100-sxm", "h100"), ("nvidia-h100-80gb-hbm3", "h100"), ("NVIDIA H100 80GB HBM3", "h100"),
    ("NVIDIA_H100_SXM5_80GB", "h100"), ("H100-PCIe", "h100-pcie"), ("A100-SXM4-80GB", "a100-80gb"),
    ("h200-sxm", "h200"), ("L40S", "l40s"), ("NVIDIA B200", "b200"),
])
def test_gpu_aliases(alias: str, key: str) -> None:
    assert get_gpu(alias) is GPUS[key]


def test_unknown_gpu_lists_keys() -> None:
    with pytest.raises(UserError) as err:
        get_gpu("h900")
    msg = str(err.value)
    assert msg.startswith("unknown GPU 'h900'") and all(k in msg for k in GPUS) and "\n" not in msg
