"""Model catalog: the shape of a transformer, which is all a serving simulator needs to know about it.

Weights decide how many bytes each forward pass reads and how many FLOPs each token costs; the attention
shape decides how many KV-cache bytes each token holds. Both come straight from a Hugging Face
``config.json``, so :func:`load_hf_config` accepts the user's own and the catalog below is just those files'
values, typed in (each entry names its HF repo).

Parameter counts follow the Llama/Mistral/Qwen2 layout: q/k/v/o projections without bias (Qwen2 adds q/k/v
bias), a SwiGLU MLP (gate, up, down = three hidden x intermediate matrices) per expert, a linear router for
MoE, two RMSNorms per layer plus a final one, input embedding and (unless tied) an lm_head of the same size.
Rotary embeddings have no weights. Architectures outside this family (MLA, parallel attention, ...) need their
own formulas.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tokensched.errors import UserError, read_user_text


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """A decoder-only transformer's shape. ``intermediate_size`` is per expert for MoE models."""

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    num_experts: int = 0
    experts_per_token: int = 0
    tie_word_embeddings: bool = False
    dtype_bytes: int = 2
    qkv_bias: bool = False
    shared_expert_intermediate_size: int = 0  # Qwen-MoE's always-on shared expert (0 = none)
    hf_id: str | None = field(default=None, compare=False)  # where the figures come from

    def __post_init__(self) -> None:
        for f in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim", "intermediate_size",
                  "vocab_size", "max_position_embeddings"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"model {self.name}: {f} must be a positive integer, got {v!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"model {self.name}: num_heads ({self.num_heads}) must be a multiple of "
                             f"num_kv_heads ({self.num_kv_heads})")
        if (self.num_experts > 0) != (self.experts_per_token > 0) or self.experts_per_token > self.num_experts:
            raise ValueError(f"model {self.name}: need 0 < experts_per_token <= num_experts for MoE (or both 0), "
                             f"got {self.experts_per_token} of {self.num_experts}")
        if self.dtype_bytes not in (1, 2, 4):
            raise ValueError(f"model {self.name}: dtype_bytes must be 1, 2 or 4, got {self.dtype_bytes}")
        if self.shared_expert_intermediate_size < 0:
            raise ValueError(f"model {self.name}: shared_expert_intermediate_size must be >= 0")

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def attn_params_per_layer(self) -> int:
        """q and o are hidden x (heads*head_dim); k and v are hidden x (kv_heads*head_dim); plus q/k/v bias."""
        q = self.num_heads * self.head_dim
        kv = self.num_kv_heads * self.head_dim
        bias = q + 2 * kv if self.qkv_bias else 0
        return self.hidden_size * q * 2 + self.hidden_size * kv * 2 + bias

    @property
    def _router_params(self) -> int:
        return self.hidden_size * self.num_experts

    @property
    def _shared_expert_params(self) -> int:
        """Shared expert (3 matrices) and its scalar sigmoid gate (hidden x 1), as in Qwen2-MoE."""
        s = self.shared_expert_intermediate_size
        return 3 * self.hidden_size * s + self.hidden_size if s else 0

    @property
    def mlp_params_per_layer(self) -> int:
        """Every expert's weights: what must sit in memory."""
        experts = max(1, self.num_experts)
        return 3 * self.hidden_size * self.intermediate_size * experts + self._router_params + self._shared_expert_params

    @property
    def active_mlp_params_per_token(self) -> int:
        """The MLP weights one token multiplies through: its top-k experts only. This sets FLOPs per token."""
        k = self.experts_per_token if self.is_moe else 1
        return 3 * self.hidden_size * self.intermediate_size * k + self._router_params + self._shared_expert_params

    @property
    def embedding_params(self) -> int:
        """Input embedding plus lm_head (one shared matrix when tied)."""
        return self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)

    @property
    def _norm_params(self) -> int:
        return 2 * self.hidden_size * self.num_layers + self.hidden_size

    @property
    def num_params(self) -> int:
        """All weights, as the model card counts them."""
        per_layer = self.attn_params_per_layer + self.mlp_params_per_layer
        return self.num_layers * per_layer + self.embedding_params + self._norm_params

    @property
    def active_params_per_token(self) -> int:
        """Weights one token touches (differs from ``num_params`` for MoE): ~half its forward FLOPs."""
        unused = self.mlp_params_per_layer - self.active_mlp_params_per_token
        return self.num_params - self.num_layers * unused

    @property
    def weight_bytes(self) -> int:
        return self.num_params * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V for every layer, whole model (divide by the tensor-parallel degree for one GPU's share)."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype_bytes


def _m(hf_id: str, name: str, layers: int, hidden: int, heads: int, kv_heads: int, inter: int, vocab: int,
       max_pos: int, **kw: Any) -> ModelConfig:
    """Catalog shorthand: head_dim defaults to hidden/heads, as in transformers."""
    kw.setdefault("head_dim", hidden // heads)
    return ModelConfig(name=name, num_layers=layers, hidden_size=hidden, num_heads=heads, num_kv_heads=kv_heads,
                       intermediate_size=inter, vocab_size=vocab, max_position_embeddings=max_pos, hf_id=hf_id, **kw)


_CATALOG = [
    # Llama 2 (meta-llama/Llama-2-{7,13,70}b-hf config.json); 7b and 70b also in shared/groundtruth.
    _m("meta-llama/Llama-2-7b-hf", "llama-2-7b", 32, 4096, 32, 32, 11008, 32000, 4096),
    _m("meta-llama/Llama-2-13b-hf", "llama-2-13b", 40, 5120, 40, 40, 13824, 32000, 4096),
    _m("meta-llama/Llama-2-70b-hf", "llama-2-70b", 80, 8192, 64, 8, 28672, 32000, 4096),
    # Llama 3.1 (meta-llama/Llama-3.1-{8,70}B config.json): 128k context, vocab 128256.
    _m("meta-llama/Llama-3.1-8B", "llama-3.1-8b", 32, 4096, 32, 8, 14336, 128256, 131072),
    _m("meta-llama/Llama-3.1-70B", "llama-3.1-70b", 80, 8192, 64, 8, 28672, 128256, 131072),
    # Llama 3.2 small models (meta-llama/Llama-3.2-{1,3}B): tied embeddings; 1B has head_dim 64.
    _m("meta-llama/Llama-3.2-1B", "llama-3.2-1b", 16, 2048, 32, 8, 8192, 128256, 131072,
       head_dim=64, tie_word_embeddings=True),
    _m("meta-llama/Llama-3.2-3B", "llama-3.2-3b", 28, 3072, 24, 8, 8192, 128256, 131072,
       tie_word_embeddings=True),
    # codellama/CodeLlama-34b-hf (the -Instruct-hf config in shared/groundtruth is identical in shape).
    _m("codellama/CodeLlama-34b-hf", "codellama-34b", 48, 8192, 64, 8, 22016, 32000, 16384),
    # mistralai/Mistral-7B-v0.1. Its sliding_window=4096 attention is ignored here: the KV cache is modelled
    # as full attention, which matches vLLM's paged cache for prompts up to 4096 tokens.
    _m("mistralai/Mistral-7B-v0.1", "mistral-7b", 32, 4096, 32, 8, 14336, 32000, 32768),
    # mistralai/Mixtral-8x7B-v0.1 (also in shared/groundtruth): 8 experts, top-2.
    _m("mistralai/Mixtral-8x7B-v0.1", "mixtral-8x7b", 32, 4096, 32, 8, 14336, 32000, 32768,
       num_experts=8, experts_per_token=2),
    # Qwen/Qwen2.5-{7,14,32,72}B base config.json: q/k/v carry a bias (Qwen2 architecture), untied.
    _m("Qwen/Qwen2.5-7B", "qwen2.5-7b", 28, 3584, 28, 4, 18944, 152064, 131072, qkv_bias=True),
    _m("Qwen/Qwen2.5-14B", "qwen2.5-14b", 48, 5120, 40, 8, 13824, 152064, 131072, qkv_bias=True),
    _m("Qwen/Qwen2.5-32B", "qwen2.5-32b", 64, 5120, 40, 8, 27648, 152064, 131072, qkv_bias=True),
    _m("Qwen/Qwen2.5-72B", "qwen2.5-72b", 80, 8192, 64, 8, 29568, 152064, 131072, qkv_bias=True),
]

MODELS: dict[str, ModelConfig] = {m.name: m for m in _CATALOG}

# Normalized spellings (see _norm_model) that are not catalog keys themselves.
MODEL_ALIASES: dict[str, str] = {
    "mistral-7b-v0.1": "mistral-7b",
    "mixtral-8x7b-v0.1": "mixtral-8x7b",
    "llama2-7b": "llama-2-7b",
    "llama2-13b": "llama-2-13b",
    "llama2-70b": "llama-2-70b",
    "llama3.1-8b": "llama-3.1-8b",
    "llama3.1-70b": "llama-3.1-70b",
    "code-llama-34b": "codellama-34b",
}

_DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "half": 2, "float32": 4, "float": 4, "float8": 1, "int8": 1}


def _norm_model(name: str) -> str:
    """'meta-llama/Meta-Llama-3.1-8B-Instruct' -> 'llama-3.1-8b': drop org, 'meta-', '-hf', '-instruct'/'-chat'."""
    s = re.sub(r"[\s_]+", "-", name.strip().lower()).rsplit("/", 1)[-1]
    s = s.removeprefix("meta-").removesuffix("-hf")
    return re.sub(r"-(instruct|chat|it)(?=-|$)", "", s)


def _field(cfg: dict[str, Any], key: str, where: str, *, default: Any = ..., kind: type = int) -> Any:
    """One config value, checked, so a bad file fails with its name and the field rather than a KeyError."""
    value = cfg.get(key)
    if value is None:
        if default is ...:
            raise UserError(f"missing required field {key!r}", where=where)
        return default
    if kind is int and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise UserError(f"field {key!r} must be a non-negative integer, got {value!r}", where=where)
    if kind is bool and not isinstance(value, bool):
        raise UserError(f"field {key!r} must be true or false, got {value!r}", where=where)
    return value


def _read_json(path: Path) -> dict[str, Any]:
    where = str(path)
    text = read_user_text(path, "file")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})", where=where) from None
    if not isinstance(data, dict):
        raise UserError(f"expected a JSON object, got {type(data).__name__}", where=where)
    return data


def load_hf_config(path: str | os.PathLike[str], *, name: str | None = None,
                   dtype_bytes: int | Literal["auto"] = 2) -> ModelConfig:
    """Read a Hugging Face ``config.json`` (or a directory holding one) into a :class:`ModelConfig`.

    ``dtype_bytes`` defaults to 2 because serving runs weights and KV cache in 16 bits whatever precision the
    checkpoint was saved in; pass ``"auto"`` to follow the file's ``torch_dtype``. ``name`` defaults to the
    file's ``_name_or_path`` or else its directory name.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "config.json"
        if not p.is_file():
            raise UserError("directory has no config.json", where=str(path))
    where = str(p)
    cfg = _read_json(p)
    # Multimodal wrappers (Llava, Gemma 3, Llama 4) keep the language model under text_config.
    if "hidden_size" not in cfg and isinstance(cfg.get("text_config"), dict):
        cfg = {**cfg, **cfg["text_config"]}

    hidden = _field(cfg, "hidden_size", where)
    heads = _field(cfg, "num_attention_heads", where)
    if heads == 0:
        raise UserError("field 'num_attention_heads' must be > 0", where=where)
    num_experts = _field(cfg, "num_local_experts", where, default=0) or _field(cfg, "num_experts", where, default=0)
    if num_experts:
        inter = _field(cfg, "moe_intermediate_size", where, default=None)
        if inter is None:
            inter = _field(cfg, "intermediate_size", where)
        top_k = _field(cfg, "num_experts_per_tok", where)
    else:
        inter, top_k = _field(cfg, "intermediate_size", where), 0

    if dtype_bytes == "auto":
        dt = cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16"
        if not isinstance(dt, str) or dt.lower().removeprefix("torch.") not in _DTYPE_BYTES:
            raise UserError(f"field 'torch_dtype' has unknown value {dt!r}; "
                            f"expected one of: {', '.join(_DTYPE_BYTES)}", where=where)
        nbytes = _DTYPE_BYTES[dt.lower().removeprefix("torch.")]
    else:
        nbytes = dtype_bytes

    src = cfg.get("_name_or_path")
    hf_id = src if isinstance(src, str) and src else None
    if name is None:
        name = hf_id or p.resolve().parent.name
    model_type = str(cfg.get("model_type", ""))
    try:
        return ModelConfig(
            name=name,
            num_layers=_field(cfg, "num_hidden_layers", where),
            hidden_size=hidden,
            num_heads=heads,
            num_kv_heads=_field(cfg, "num_key_value_heads", where, default=heads),
            head_dim=_field(cfg, "head_dim", where, default=hidden // heads),
            intermediate_size=inter,
            vocab_size=_field(cfg, "vocab_size", where),
            max_position_embeddings=_field(cfg, "max_position_embeddings", where),
            num_experts=num_experts,
            experts_per_token=top_k,
            tie_word_embeddings=_field(cfg, "tie_word_embeddings", where, default=False, kind=bool),
            dtype_bytes=nbytes,
            # Qwen2 configs say nothing about it; the architecture always has q/k/v bias.
            qkv_bias=_field(cfg, "attention_bias", where, default=model_type in ("qwen2", "qwen2_moe"), kind=bool),
            shared_expert_intermediate_size=_field(cfg, "shared_expert_intermediate_size", where, default=0)
            if num_experts else 0,
            hf_id=hf_id,
        )
    except ValueError as e:
        raise UserError(str(e), where=where) from None


def get_model(name_or_path: str | os.PathLike[str]) -> ModelConfig:
    """A catalog model by name or HF id (case-insensitive), or the config.json / directory at a path."""
    raw = os.fspath(name_or_path)
    if Path(raw).expanduser().exists():
        return load_hf_config(raw)
    key = _norm_model(raw)
    key = MODEL_ALIASES.get(key, key)
    if key in MODELS:
        return MODELS[key]
    if raw.endswith(".json") or raw.startswith(("/", "./", "../", "~")):
        raise UserError("no such file or directory", where=raw)
    raise UserError(f"unknown model {raw!r}; choose one of: {', '.join(MODELS)} "
                    "(or give the path of a Hugging Face config.json or its directory)")


__all__ = ["MODELS", "MODEL_ALIASES", "ModelConfig", "get_model", "load_hf_config"]
