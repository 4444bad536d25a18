"""Disaggregated prefill and decode (Splitwise, Patel et al. ISCA'24; DistServe, Zhong et al. OSDI'24).

Selected when a ``cluster`` pool has ``role: prefill`` or ``role: decode`` (docs/cluster.md, section disagg).
An arrival goes to the prefill-capable replica (``prefill`` or ``mixed`` pools) with the fewest outstanding prompt
tokens (router-local and exact; the configured ``router`` is not used with roles). A replica of a ``prefill`` pool
runs the prompt and samples the first token (TTFT is measured there); right after that step the request leaves its
batch (``Replica.detach``) and its KV (``num_computed`` tokens) travels to the decode replica with the lowest
committed KV (used blocks plus blocks of transfers heading there). When the transfer ends the decode replica takes
it into its batch (``Replica.attach``) if it is between steps and has room, else at its next step end (FIFO). A
request with one output token finishes on the prefill replica; ``mixed`` replicas serve requests end to end.

Transfer time (``kv_transfer_time``): ``bytes = tokens x kv_bytes_per_token`` (K and V of every layer, all tensor
-parallel shards together); bandwidth ``kv_link_gb_s`` x 1e9 B/s when given (the whole link between the two
replicas), else ``min(tp_src, tp_dst) x`` the slower GPU's interconnect (same node: each GPU pair copies its
shard over NVLink in parallel). Without overlap the whole copy ``T_x = bytes / bandwidth`` follows the prefill.
With ``layerwise_overlap`` (Splitwise) layer ``l`` of ``L`` is sent once its prefill is done; the link sends
layers one after another, so the copy ends ``max(T_x / L, T_x - T_p (L - 1) / L)`` after the prefill ends,
where ``T_p`` is the request's prefill time (first token minus first scheduled): only the last layer's share
remains when the link keeps up, the unhidden rest otherwise.

Not modelled: contention between concurrent transfers on one link (each has the whole bandwidth), the copy's
HBM interference, and a transfer's fixed setup latency.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tokensched.cluster.routers import ReplicaView, Router
from tokensched.cluster.sim import ClusterSimulator
from tokensched.cluster.spec import pools_from_config
from tokensched.config import SimConfig
from tokensched.errors import UserError
from tokensched.hardware import get_gpu
from tokensched.models import get_model
from tokensched.request import Request
from tokensched.sequence import Sequence, SeqStatus

GB = 1e9  # decimal, as the GPU catalog


class DisaggOptions(BaseModel):
    """The ``disagg:`` block of a config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kv_link_gb_s: float | None = Field(None, gt=0, description="GB/s between a prefill and a decode replica "
                                       "(default: min tp x the GPUs' interconnect, same node)")
    layerwise_overlap: bool = Field(False, description="send each layer's KV as soon as its prefill is done")


def disagg_options(cfg: SimConfig) -> DisaggOptions:
    raw = {k.replace("-", "_"): v for k, v in (getattr(cfg, "disagg", None) or {}).items()}
    try:
        return DisaggOptions(**raw)
    except ValidationError as e:
        err = e.errors()[0]
        raise UserError(f"option '{'.'.join(str(x) for x in err['loc'])}': {err['msg']}", where="disagg") from None


def disagg_simulator(cfg: SimConfig) -> type[ClusterSimulator] | None:
    """:class:`DisaggSimulator` when the cluster's pools have prefill/decode roles, else None (colocated)."""
    roles = {pool.role for pool, _ in pools_from_config(cfg)}
    if roles <= {"mixed"}:
        if getattr(cfg, "disagg", None):
            raise UserError("disagg options need a cluster with a 'role: prefill' and a 'role: decode' pool",
                            where="disagg")
        return None
    if "prefill" not in roles or "decode" not in roles:
        raise UserError("a disaggregated cluster needs a pool with role prefill and one with role decode",
                        where="cluster")
    if getattr(cfg, "router", "").lower() == "llumnix":
        raise UserError("router llumnix cannot be combined with prefill/decode pool roles", where="router")
    return DisaggSimulator


def kv_transfer_time(tokens: int, kv_bytes_per_token: int, bandwidth_bytes_s: float, *, layers: int = 1,
                     overlap: bool = False, prefill_s: float = 0.0) -> float:
    """Seconds the KV copy of ``tokens`` adds after the prefill ends (see the module docstring)."""
    t_x = tokens * kv_bytes_per_token / bandwidth_bytes_s
    if not overlap:
        return t_x
    return max(t_x / layers, t_x - prefill_s * (layers - 1) / layers)


class PrefillRouter(Router):
    """Fewest outstanding prompt tokens among the prefill-capable replicas (ties: lowest index)."""

    name = "disagg"

    def __init__(self, views: list[ReplicaView], eligible: list[int]) -> None:
        super().__init__(None, views)
        self.eligible = eligible
        self.prompt_load = [0] * len(views)

    def route(self, req: Request, views: list[ReplicaView], now: float) -> int:
        return min(self.eligible, key=lambda j: (self.prompt_load[j], j))


class DisaggSimulator(ClusterSimulator):
    def __init__(self, cfg: SimConfig, requests: list[Request]) -> None:
        super().__init__(cfg, requests)
        self.opts = disagg_options(cfg)
        self.role = [self.pools[p].role for p in self.replica_pool]
        prefill = [i for i, r in enumerate(self.role) if r in ("prefill", "mixed")]
        self.decoders = [i for i, r in enumerate(self.role) if r == "decode"]
        self.router = PrefillRouter(self.views, prefill)
        self.kv_per_token: list[int] = []
        self.link_bw: list[float] = []  # per GPU interconnect, bytes/s
        self.tp: list[int] = []
        self.layers: list[int] = []
        self.compat: list[str] = []
        for pool, pcfg in pools_from_config(cfg):
            model, gpu = get_model(pcfg.model), get_gpu(pcfg.gpu)
            for _ in range(pool.replicas):
                self.kv_per_token.append(model.kv_bytes_per_token)
                self.link_bw.append(gpu.interconnect_bandwidth)
                self.tp.append(pcfg.tp)
                self.layers.append(model.num_layers)
                self.compat.append(model.name)
        if len({self.compat[i] for i in prefill + self.decoders}) > 1:
            raise UserError("prefill and decode pools must serve the same model", where="cluster")
        self.incoming_blocks = [0] * len(self.replicas)  # committed by transfers in flight or queued
        self.queue: list[deque[Sequence]] = [deque() for _ in self.replicas]
        self.transfers = 0
        self.transferred_bytes = 0
        self.transfer_s: list[float] = []
        self.attach_wait_s: list[float] = []
        self.recomputed = 0
        self._arrived: dict[Sequence, float] = {}

    # ---- links -------------------------------------------------------------------------------------------
    def bandwidth(self, src: int, dst: int) -> float:
        if self.opts.kv_link_gb_s is not None:
            return self.opts.kv_link_gb_s * GB
        return min(self.tp[src], self.tp[dst]) * min(self.link_bw[src], self.link_bw[dst])

    # ---- routing -----------------------------------------------------------------------------------------
    def on_arrival(self, req: Request, now: float) -> None:
        self._refresh(now)
        j = self.router.route(req, self.views, now)
        if req.prompt_tokens + req.output_tokens <= self.replicas[j].max_model_len:  # else rejected: no load
            self.router.prompt_load[j] += req.prompt_tokens
        self.assign(j, req, now)

    def _release(self, i: int, seq: Sequence) -> None:
        """Router bookkeeping: ``seq`` no longer occupies replica ``i``."""
        v = self.views[i]
        v.outstanding -= 1
        v.outstanding_tokens -= seq.prompt_tokens + seq.output_tokens

    def on_done(self, i: int, done: list[Any], now: float) -> None:
        super().on_done(i, done, now)
        if self.role[i] != "decode":
            for seq in done:
                self.router.prompt_load[i] -= seq.prompt_tokens

    def _pick_decoder(self, seq: Sequence) -> int:
        def committed(d: int) -> tuple[float, int]:
            kv = self.replicas[d].kv
            return ((kv.used_blocks + self.incoming_blocks[d]) / kv.num_blocks, d)

        return min(self.decoders, key=committed)

    # ---- prefill -> decode ------------------------------------------------------------------------------
    def on_step_end(self, i: int, now: float) -> None:
        rep = self.replicas[i]
        if self.role[i] == "prefill":
            for seq in [s for s in rep.scheduler.running if s.is_decoding]:
                self._send(i, seq, now)
        elif self.role[i] == "decode" and self.queue[i]:
            self._attach_queued(i, now)

    def _send(self, i: int, seq: Sequence, now: float) -> None:
        self.replicas[i].detach(seq)
        self._release(i, seq)
        self.router.prompt_load[i] -= seq.prompt_tokens
        d = self._pick_decoder(seq)
        tokens = seq.num_computed
        nbytes = tokens * self.kv_per_token[i]
        start = seq.first_scheduled_s if seq.first_scheduled_s is not None else now
        prefill_s = now - start  # the first token was sampled at the end of this step, i.e. now
        dt = kv_transfer_time(tokens, self.kv_per_token[i], self.bandwidth(i, d), layers=self.layers[i],
                              overlap=self.opts.layerwise_overlap, prefill_s=prefill_s)
        self.transfers += 1
        self.transferred_bytes += nbytes
        self.transfer_s.append(dt)
        v = self.views[d]
        v.outstanding += 1
        v.outstanding_tokens += seq.prompt_tokens + seq.output_tokens
        self.assigned[d] += 1
        self.incoming_blocks[d] += self.replicas[d].kv.blocks_for(tokens + 1)
        self.add_timer(now + dt, lambda t, seq=seq, d=d: self._arrive(d, seq, t))

    def _arrive(self, d: int, seq: Sequence, now: float) -> None:
        self._arrived[seq] = now
        self.queue[d].append(seq)
        if not self.replicas[d].busy:
            self._attach_queued(d, now)

    def _attach_queued(self, d: int, now: float) -> None:
        rep, q = self.replicas[d], self.queue[d]
        while q:
            seq = q[0]
            if not rep.can_attach(seq):
                if rep.scheduler.running or len(rep.scheduler.policy):
                    break  # retry at this replica's next step end
                # nothing here will ever free room (the KV cannot fit this replica): recompute it here
                q.popleft()
                self._done_waiting(d, seq, now)
                seq.num_computed = 0
                seq.num_tokens = seq.prompt_tokens + seq.num_generated
                seq.status = SeqStatus.WAITING
                rep.scheduler.policy.add(seq, now)
                self.recomputed += 1
                continue
            q.popleft()
            self._done_waiting(d, seq, now)
            rep.attach(seq, now)
        self.wake(d, now)

    def _done_waiting(self, d: int, seq: Sequence, now: float) -> None:
        self.attach_wait_s.append(now - self._arrived.pop(seq))
        self.incoming_blocks[d] -= self.replicas[d].kv.blocks_for(seq.num_computed + 1)

    def summary_extra(self) -> dict[str, Any]:
        ts, ws = self.transfer_s, self.attach_wait_s
        return {
            "kv_transfers": self.transfers,
            "kv_transferred_bytes": self.transferred_bytes,
            "kv_transfer_mean_s": sum(ts) / len(ts) if ts else 0.0,
            "kv_transfer_max_s": max(ts, default=0.0),
            "decode_attach_wait_mean_s": sum(ws) / len(ws) if ws else 0.0,
            "decode_recomputed": self.recomputed,
            "kv_link_gb_s": self.opts.kv_link_gb_s,
            "layerwise_overlap": self.opts.layerwise_overlap,
        }

