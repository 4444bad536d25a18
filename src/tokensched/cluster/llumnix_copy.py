"""The KV copy cost model of Llumnix's live migration: stages, bytes and link bandwidth.

Llumnix copies a running request's KV cache while the request keeps decoding on the source
(``llumnix/llumlet/migration_coordinator.py``, ``_migrate_out_onestage``): each stage sends the blocks written
since the previous stage except the last one (it is still being filled); when at most ``last_stage_max_blocks``
remain, the source stops the request and sends the rest (stop-and-copy), and the destination resumes it. More
than ``max_stages`` stages abort the migration. A stage of ``n`` blocks takes
``stage_overhead_s + n x block_bytes / bandwidth``.

Bytes per block are ``block_size x`` the model's KV bytes per token (K and V of every layer, all tensor-parallel
shards together). Bandwidth between two replicas: ``link_gb_s`` when given; otherwise, as replicas sit on
consecutive GPUs (``gpus_per_node`` per node, in replica order), replicas on the same node copy over the GPUs'
interconnect (NVLink: the catalog's per-direction figure) and others over ``network_gb_s`` per GPU; each of the
``min(tp_src, tp_dst)`` GPU pairs copies its shard in parallel. Not modelled: the copy's interference with the
engines' own HBM traffic (the paper measures it as negligible) and pipelining of the copy with the handshake.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokensched.cluster.llumnix_load import LlumnixOptions

GB = 1e9  # decimal, as the GPU catalog


def plan_stage(computed_blocks: int, copied_blocks: int, last_stage_max_blocks: int) -> tuple[bool, int]:
    """(is this the stop-and-copy stage, blocks this stage sends) for a request whose KV spans ``computed_blocks``
    blocks, ``copied_blocks`` of them sent by earlier stages."""
    incremental = computed_blocks - copied_blocks
    if incremental <= last_stage_max_blocks:
        return True, incremental
    return False, incremental - 1  # the last block is still being written


@dataclass(frozen=True, slots=True)
class ReplicaHW:
    """What the copy model needs to know about one replica."""

    tp: int
    interconnect_bytes_s: float  # per GPU, per direction
    block_bytes: int


class KVLink:
    """Copy times between replicas."""

    def __init__(self, opts: LlumnixOptions, replicas: list[ReplicaHW]) -> None:
        self.opts = opts
        self.hw = replicas
        self.node: list[int] = []
        gpu = 0
        for r in replicas:
            self.node.append(gpu // opts.gpus_per_node)
            gpu += r.tp

    def same_node(self, src: int, dst: int) -> bool:
        return self.node[src] == self.node[dst]

    def bandwidth(self, src: int, dst: int) -> float:
        """Bytes per second from ``src`` to ``dst``."""
        o = self.opts
        if o.link_gb_s is not None:
            return o.link_gb_s * GB
        a, b = self.hw[src], self.hw[dst]
        per_gpu = min(a.interconnect_bytes_s, b.interconnect_bytes_s) if self.same_node(src, dst) \
            else o.network_gb_s * GB
        return min(a.tp, b.tp) * per_gpu

    def stage_bytes(self, src: int, blocks: int) -> int:
        return blocks * self.hw[src].block_bytes

    def stage_time(self, src: int, dst: int, blocks: int) -> float:
        return self.opts.stage_overhead_s + self.stage_bytes(src, blocks) / self.bandwidth(src, dst)
