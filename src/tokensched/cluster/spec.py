"""What a cluster is made of: pools of identical replicas, each pool with its own GPU, parallelism and price.

A pool overrides any replica-level field of the run's :class:`~tokensched.config.SimConfig` (model, gpu, tp,
scheduler, max_num_seqs, kv_blocks, ...). Without a ``cluster`` description, ``--replicas N`` makes one pool
of N replicas from the run's own settings.

YAML (inside a ``--config`` file)::

    router: cache-aware
    cluster:
      - {name: fast, gpu: h100, tp: 2, replicas: 2, price_per_gpu_hour: 2.5}
      - {name: cheap, gpu: a100-80gb, tp: 2, replicas: 4, price_per_gpu_hour: 1.2}
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tokensched.config import SimConfig
from tokensched.errors import UserError

# replica-level SimConfig fields a pool may override
POOL_OVERRIDES = ("model", "gpu", "tp", "scheduler", "admission", "preemption", "eviction", "policy_options",
                  "max_num_seqs", "max_batched_tokens", "block_size", "kv_blocks", "gpu_memory_utilization",
                  "prefix_caching", "max_model_len", "timing")


class PoolSpec(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field("pool", description="label in reports")
    replicas: int = Field(1, ge=1, le=4096)
    price_per_gpu_hour: float | None = Field(None, ge=0, description="USD per GPU-hour, for cost reports")
    role: Literal["prefill", "decode", "mixed"] = Field(
        "mixed", description="disaggregated serving (docs/cluster.md, disagg): prefill, decode or mixed")


def pools_from_config(cfg: SimConfig) -> list[tuple[PoolSpec, SimConfig]]:
    """Each pool with the SimConfig its replicas run (the run's config with the pool's overrides)."""
    raw: list[dict[str, Any]] | None = getattr(cfg, "cluster", None)
    if not raw:
        pool = PoolSpec(name="pool", replicas=getattr(cfg, "replicas", 1),
                        price_per_gpu_hour=getattr(cfg, "price_per_gpu_hour", None))
        return [(pool, cfg)]
    out: list[tuple[PoolSpec, SimConfig]] = []
    names: set[str] = set()
    for i, item in enumerate(raw):
        where = f"cluster[{i}]"
        if not isinstance(item, dict):
            raise UserError("each pool must be a mapping such as {gpu: h100, tp: 2, replicas: 4}", where=where)
        item = {k.replace("-", "_"): v for k, v in item.items()}
        extra = {k: v for k, v in item.items() if k not in PoolSpec.model_fields}
        bad = [k for k in extra if k not in POOL_OVERRIDES or k not in SimConfig.model_fields]
        if bad:
            raise UserError(f"unknown pool key {bad[0]!r}; valid keys: name, replicas, price_per_gpu_hour, role, "
                            + ", ".join(k for k in POOL_OVERRIDES if k in SimConfig.model_fields), where=where)
        try:
            pool = PoolSpec(**{k: v for k, v in item.items() if k in PoolSpec.model_fields})
            pool_cfg = cfg.model_copy(update=extra)
            SimConfig.model_validate(pool_cfg.model_dump())  # validate the overrides' values
        except ValidationError as e:
            err = e.errors()[0]
            raise UserError(f"field '{'.'.join(str(x) for x in err['loc'])}': {err['msg']}", where=where) from None
        if pool.name in names:
            pool = pool.model_copy(update={"name": f"{pool.name}-{i}"})
        names.add(pool.name)
        out.append((pool, pool_cfg))
    return out
