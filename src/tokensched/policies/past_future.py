"""Past-Future admission (Gong et al., "Past-Future Scheduler for LLM Serving under SLA Guarantees"; LightLLM).

Why: aggressive admission (vLLM) starts whatever fits now and pays later with preemptions; conservative
admission reserves every request's maximum output and queues. Past-Future estimates the *peak* future KV
demand of the running batch plus the candidate from the output lengths of recently finished requests ("the
past"), and admits only if that peak fits.

The rule, as in LightLLM's ``PastFutureQueue`` (``lightllm/server/router/req_queue/chunked_prefill/
impl_past_future.py``):

* ``history``: the output lengths of the last ``history`` finished requests. Before any request has finished
  the window is seeded with ``history // 2`` copies of ``max_new_tokens`` (LightLLM seeds it with
  ``router_max_new_token_len``), so a cold start behaves like conservative admission and relaxes as real
  lengths replace the seeds. (With ``history = 1`` nothing is seeded; while the window is empty the
  candidate's length is its ``max_new_tokens``.)
* For each running request with ``d`` tokens generated so far, draw its final length from the sorted history
  values ``> d``, bracketed by ``d`` below and its ``max_new_tokens`` above, by linear interpolation at a
  uniform position; it still needs ``r = final - d`` tokens and already holds ``c = prompt + d``.
* The candidate's final length is drawn uniformly from the whole history.
* Sort by ``r`` descending; the batch's peak demand is ``need = max_k (k * r_(k) + sum_{i<=k} c_(i))`` (when
  the k-th longest finishes, the k requests still running hold everything they have plus what the k-th
  still adds, and every shorter one has already left).
* Repeat over ``n = min(samples, 200 // len(running) + 1)`` independent draws (LightLLM's MAXIMUM_LISTS
  and MINIMUM_SAMPLES) and admit iff ``max(need) <= headroom * kv_blocks * block_size``.
* Paged KV: LightLLM's KV pool is token-granular, ours holds whole blocks, so every request's ``c`` also
  counts ``block_size - 1`` tokens for its partly filled last block (without it, a batch of hundreds of
  requests overruns the estimate by a few percent and preempts: 776 against 86 preemptions at 15 req/s in
  ``experiments/past_future.py``, measured with and without the slack).

Differences from LightLLM, all deliberate: draws come from a seeded ``numpy`` Generator (deterministic
output); the running batch is re-sampled at every admission check instead of once per scheduling round (a
request admitted earlier in the same round is therefore sampled as running with ``d`` generated tokens,
not from the whole history); LightLLM compares with ``<`` against a token pool, we compare with ``<=``
against the block pool in tokens (``headroom`` plays the role of LightLLM's reserved fraction). Tokens
shared through the prefix cache are counted once per holder, as LightLLM does.

The decision depends on how far running requests have progressed, so it can change while only decodes
run: ``monotone = False`` (no macro-steps while requests wait).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from tokensched.policies.base import AdmissionPolicy
from tokensched.sequence import Sequence

if TYPE_CHECKING:
    from tokensched.kv_cache import KVCacheManager

MINIMUM_SAMPLES = 200  # LightLLM: fewer draws per check when the batch is large (n = 200 // batch + 1)


class PastFutureOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    history: int = Field(200, ge=1, description="finished output lengths remembered (LightLLM WINDOW_SIZE)")
    samples: int = Field(5, ge=1, description="most draws per admission check (LightLLM MAXIMUM_LISTS)")
    headroom: float = Field(1.0, gt=0, le=1, description="fraction of KV token capacity the peak may use")
    max_new_tokens: int = Field(2048, ge=1, description="per-request output cap (at least its real length); "
                                                        "also the cold-start history value")
    seed: int = Field(0, ge=0, description="seed of the sampling generator")


def sample_final_lengths(history_sorted: np.ndarray, generated: np.ndarray, cap: np.ndarray,
                         u: np.ndarray) -> np.ndarray:
    """Final output lengths of running requests, LightLLM's interpolated conditional draw.

    For request ``j`` the support is ``[d_j] + [h in history if h > d_j] + [cap_j]`` (``m_j`` points);
    ``u[..., j]`` in [0, 1) picks position ``p = u * (m_j - 1)`` and the value is interpolated linearly
    between points ``floor(p)`` and ``floor(p) + 1``, then rounded half to even (Python's ``round``).
    ``u`` may have a leading sample axis.
    """
    h = history_sorted
    w = len(h)
    d = generated.astype(np.int64)
    pos = np.searchsorted(h, d, side="right")  # first history value > d
    m = w - pos + 2
    p = u * (m - 1)
    lo = np.floor(p).astype(np.int64)
    frac = p - lo

    def point(j: np.ndarray) -> np.ndarray:
        inner = np.clip(pos + j - 1, 0, max(w - 1, 0))
        mid = h[inner] if w else np.zeros_like(j)
        return np.where(j == 0, d, np.where(j >= m - 1, cap, mid))

    lv = point(lo).astype(np.float64)
    rv = point(lo + 1).astype(np.float64)
    return np.round(lv + (rv - lv) * frac).astype(np.int64)


def peak_tokens(held: np.ndarray, remaining: np.ndarray) -> np.ndarray:
    """``max_k (k * r_(k) + sum_{i<=k} c_(i))`` with requests sorted by remaining length ``r`` descending.

    ``held`` and ``remaining`` are ``(samples, requests)``; returns one peak per sample. Ties in ``r`` do not
    matter: among equal ``r`` the maximum is reached at the last of them, whatever their order.
    """
    if held.shape[-1] == 0:
        return np.zeros(held.shape[:-1], dtype=np.int64)
    order = np.argsort(-remaining, axis=-1, kind="stable")
    r = np.take_along_axis(remaining, order, axis=-1)
    c = np.take_along_axis(held, order, axis=-1)
    k = np.arange(1, r.shape[-1] + 1, dtype=np.int64)
    return (r * k + np.cumsum(c, axis=-1)).max(axis=-1)


class PastFutureAdmission(AdmissionPolicy):
    """Admit iff the sampled peak KV demand of the running batch plus the candidate fits (LightLLM)."""

    name = "past-future"
    Options = PastFutureOptions
    monotone = False

    def __init__(self, options: BaseModel | None = None, *, max_model_len: int = 1 << 30) -> None:
        super().__init__(options, max_model_len=max_model_len)
        o = self.options
        self.history: deque[int] = deque([o.max_new_tokens] * (o.history // 2), maxlen=o.history)
        self._sorted: np.ndarray | None = None
        self._rng = np.random.Generator(np.random.PCG64(o.seed))
        self.last_need = 0  # the peak estimated by the latest check (for tests and inspection)
        self.block_slack = 0  # tokens each request may waste in its last KV block (block size - 1)

    def _cap(self, seq: Sequence) -> int:
        return max(1, min(max(self.options.max_new_tokens, seq.output_tokens), self.max_model_len - seq.prompt_tokens))

    def _history_sorted(self) -> np.ndarray:
        if self._sorted is None:
            self._sorted = np.sort(np.fromiter(self.history, dtype=np.int64, count=len(self.history)))
        return self._sorted

    def estimate_peak(self, seq: Sequence, running: list[Sequence]) -> int:
        """Largest sampled peak KV demand (tokens) if ``seq`` joined ``running``."""
        hist = self._history_sorted()
        rng = self._rng
        b = len(running)
        n = min(self.options.samples, MINIMUM_SAMPLES // max(b, 1) + 1)
        d = np.fromiter((s.num_generated for s in running), dtype=np.int64, count=b)
        c = np.fromiter((s.prompt_tokens + s.num_generated for s in running), dtype=np.int64, count=b)
        cap = np.fromiter((self._cap(s) for s in running), dtype=np.int64, count=b)
        final = sample_final_lengths(hist, d, cap, rng.random((n, b)))
        r = np.maximum(final - d, 0)
        # the candidate: a length drawn from the whole history
        if len(hist):
            cand_final = hist[rng.integers(0, len(hist), size=n)]
        else:
            cand_final = np.full(n, self._cap(seq), dtype=np.int64)
        cand_r = np.maximum(cand_final - seq.num_generated, 0)
        held = np.concatenate((np.broadcast_to(c, (n, b)), np.full((n, 1), seq.prompt_tokens + seq.num_generated)), axis=1)
        held = held + self.block_slack
        rem = np.concatenate((r, cand_r[:, None]), axis=1)
        need = int(peak_tokens(held, rem).max())
        self.last_need = need
        return need

    def admits(self, seq: Sequence, num_new: int, running: list[Sequence], kv: KVCacheManager) -> bool:
        self.block_slack = kv.block_size - 1
        capacity = self.options.headroom * kv.num_blocks * kv.block_size
        return self.estimate_peak(seq, running) <= capacity

    def on_finish(self, seq: Sequence) -> None:
        self.history.append(seq.num_generated)
        self._sorted = None
