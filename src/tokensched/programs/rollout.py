"""RL rollout scheduling: synchronous GRPO, APRIL partial rollouts and AReaL-style asynchronous RL.

A GRPO step needs N prompts x G samples each ("groups"); the trainer learns from *complete* groups only (the
advantage of a sample is relative to its group). Rollouts run on one simulated replica (``build_replica``),
training on separate trainer GPUs that take ``train_s`` (+ ``train_s_per_ktoken``) per step. Output lengths
are long-tailed, so a step that waits for every sample spends its end with a handful of long generations on
an almost empty GPU: the long-tail effect the three modes treat differently.

* ``sync``: launch N groups, wait for all, train; rollout and trainer take turns (each idles while the other works).
* ``april`` (APRIL, catalog #26): launch ``ceil((1 + over_provision) * N)`` groups (carried ones included); as
  soon as N groups are complete, cut every unfinished request (``Replica.abort``) and keep its partial output
  in a buffer; the next step resubmits those first. Resuming is not free: a resumed request's prompt is the
  original prompt plus the tokens generated so far, all of it prefilled again under the new weights (the
  original prompt may hit the prefix cache when a sibling brought it back first; the generated part never does).
  Training stays synchronous after each rollout step.
* ``async`` (AReaL, catalog #46): rollout never waits. A group may be launched only while groups launched so
  far stay <= ``(version + eta + 1) * N`` (AReaL's rule, ``eta = max_staleness``); the trainer takes N complete
  groups whenever it is idle and they exist. New weights interrupt every in-flight generation, which continues
  under them with its KV recomputed: modelled as an abort and a resubmission with prompt = prompt + tokens so far,
  at the first iteration boundary after training ends (plus ``weight_sync_s``). AReaL prefers older samples when
  it forms a batch; here a batch never leaves behind an unconsumed group launched under an older version than one
  it takes, and among groups of the same launch version it takes the ones that completed first. That order makes
  eta a hard bound: groups launched under versions <= v number at most (v + eta + 1) * N, so all of them are
  consumed by training step v + eta. When an older group is still running the trainer waits for it.

Versions and staleness. The policy version is the number of finished training steps; training step ``s`` learns
from samples with the weights of version ``s``. A sample's *staleness* is ``s`` minus the version its group was
launched under (the oldest weights any of its tokens can come from); its *off-policy tokens* are those generated
under a version older than ``s``. Every generated token is counted once: *useful* tokens belong to consumed
samples, *wasted* ones to samples never consumed (what is left when the run ends). All three modes share one
replica driver, a deterministic function of the config: the k-th group launched gets the k-th length draws in
every mode, so modes compare on identical samples (and ``async`` with eta 0 reproduces ``sync`` exactly).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tokensched.config import SimConfig
from tokensched.engine import Step
from tokensched.errors import UserError
from tokensched.request import Request
from tokensched.sequence import Sequence, SeqStatus
from tokensched.simulator import build_replica
from tokensched.timing import TimingModel

HASH_BLOCK = 16  # tokens per prompt hash (the group's prompt blocks are shared by its G samples)
INF = float("inf")


class RolloutConfig(BaseModel):
    """One RL rollout experiment: the groups, their length distributions, the trainer and the rollout replica."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_prompts: int = Field(32, ge=1, le=1_000_000, description="N: prompts (groups) the trainer consumes per step")
    group_size: int = Field(8, ge=1, le=4096, description="G: samples per prompt (one GRPO group)")
    steps: int = Field(5, ge=1, le=100_000, description="training steps to run")
    prompt_median: float = Field(512.0, gt=0, description="median prompt length in tokens (lognormal)")
    prompt_sigma: float = Field(0.5, ge=0, le=5, description="log-space sigma of prompt lengths (0: all equal)")
    prompt_max: int = Field(4096, ge=1, description="longest prompt in tokens; draws are clipped to it")
    output_median: float = Field(1536.0, gt=0, description="median output length in tokens (lognormal)")
    output_sigma: float = Field(1.0, ge=0, le=5,
                                description="log-space sigma of output lengths; 1.0 puts p99 near 10x the median")
    max_tokens: int = Field(16384, ge=1, description="generation cap in tokens; longer draws stop here")
    train_s: float = Field(30.0, ge=0, description="trainer seconds per training step (fixed part)")
    train_s_per_ktoken: float = Field(0.0, ge=0,
                                      description="extra trainer seconds per 1,000 consumed tokens (prompt + output)")
    weight_sync_s: float = Field(0.0, ge=0, description="seconds the rollout pauses to load new weights")
    over_provision: float = Field(0.5, ge=0, le=100,
                                  description="april: launch ceil((1 + this) * N) groups per step, carried ones included")
    max_staleness: int = Field(1, ge=0, le=10_000,
                               description="async: eta, the most policy versions a consumed sample may lag")
    seed: int = Field(0, ge=0, description="seed of the prompt and output length draws")
    sim: SimConfig = Field(default_factory=SimConfig,
                           description="the rollout replica: model, gpu, tp, scheduler, KV cache, timing")

    @model_validator(mode="after")
    def _one_replica(self) -> RolloutConfig:
        if self.sim.is_cluster:
            raise ValueError("sim: rollouts run on one replica; drop replicas, cluster and autoscaler")
        return self


@dataclass(frozen=True, slots=True)
class StepRecord:
    """One training step: when it trained, which groups it consumed and how stale they were."""

    index: int
    train_start_s: float
    train_end_s: float
    groups: tuple[int, ...]  # consumed group indices (launch order)
    lags: tuple[int, ...]  # staleness of each consumed group
    cut_samples: int = 0  # april: unfinished samples cut at the end of this step's rollout


@dataclass(frozen=True)
class RolloutResult:
    """What a rollout run measured; the same fields for every mode."""

    mode: str
    steps: int
    total_s: float  # until the last training step ends
    consumed_samples: int
    useful_tokens: int  # output tokens of consumed samples
    generated_tokens: int  # every output token generated, once each
    wasted_tokens: int  # generated but never consumed
    reprefill_tokens: int  # generated tokens fed back as prompt on resume (their KV computed again)
    cut_samples: int  # generations aborted (april) or interrupted by new weights (async)
    samples_per_s: float  # consumed samples / total_s
    useful_tokens_per_s: float  # useful tokens / total_s
    useful_tokens_per_busy_s: float  # useful tokens / rollout-GPU busy seconds
    rollout_busy_s: float  # a batch was running
    rollout_idle_s: float
    mean_busy_batch: float  # running sequences per batch, time-weighted over busy seconds
    trainer_busy_s: float
    trainer_idle_s: float
    off_policy_token_fraction: float  # of useful tokens, those generated under an older version than their step's
    mean_staleness: float  # over consumed samples
    max_staleness: int
    preemptions: int  # inside the replica (KV pressure)
    step_log: tuple[StepRecord, ...] = ()


@dataclass(frozen=True, slots=True)
class Submission:
    """A request put on the replica for one sample: the first one or a resumption."""

    request: Request
    group: int
    sample: int
    generated_before: int  # tokens of this sample generated by earlier submissions (part of the prompt now)
    version: int  # policy version the replica runs while serving it


@dataclass(eq=False)
class Sample:
    group: Group
    index: int
    output_tokens: int  # drawn length (capped at max_tokens)
    segments: list[tuple[int, int]] = field(default_factory=list)  # (version, tokens) of ended submissions
    seq: Sequence | None = None  # the submission on the replica now
    version: int = 0  # version of the weights serving ``seq``
    submissions: int = 0
    done: bool = False

    @property
    def generated(self) -> int:
        """Tokens generated so far, the running submission's included."""
        return sum(n for _, n in self.segments) + (self.seq.num_generated if self.seq is not None else 0)


@dataclass(eq=False)
class Group:
    index: int
    prompt_tokens: int
    launch_version: int
    samples: list[Sample] = field(default_factory=list)
    pending: int = 0  # samples not done
    complete_s: float | None = None
    consumed_step: int | None = None


def _batch_order(g: Group) -> tuple[int, float, int]:
    """Oldest launch version first, then earliest completion, then launch order."""
    assert g.complete_s is not None
    return g.launch_version, g.complete_s, g.index


class _Rollout:
    """The replica driver every mode shares: draws, submissions, cuts, steps, training and the accounting."""

    mode: ClassVar[str] = "base"

    def __init__(self, config: RolloutConfig, *, timing: TimingModel | None = None) -> None:
        self.config = c = config
        self.rng = np.random.Generator(np.random.PCG64(c.seed))
        probe = Request("probe", 0.0, c.prompt_max, c.max_tokens)  # the longest request possible must fit in KV
        self.replica, self.info = build_replica(c.sim, [probe], timing)
        self.now = 0.0
        self.version = 0  # weights loaded in the rollout replica
        self.groups: list[Group] = []  # every group launched, in launch order
        self.open: list[Group] = []  # launched, not consumed (launch order)
        self.live: dict[str, Sample] = {}  # request id -> sample, in submission order
        self.submissions: list[Submission] = []
        self.records: list[StepRecord] = []
        self.busy_s = self.batch_s = self.trainer_busy_s = 0.0
        self.generated = self.reprefill = self.cut = 0
        self.useful = self.off_policy = self.consumed = self.lag_sum = self.lag_max = 0

    # ---- groups and requests -------------------------------------------------------------------
    def _draw(self, median: float, sigma: float, cap: int, n: int) -> list[int]:
        x = self.rng.lognormal(math.log(median), sigma, size=n)
        return [int(v) for v in np.clip(np.rint(x), 1, cap)]

    def _launch_group(self) -> Group:
        """Draw the next group (prompt, then G outputs: the k-th group gets the same draws in every mode), submit it."""
        c = self.config
        prompt = self._draw(c.prompt_median, c.prompt_sigma, c.prompt_max, 1)[0]
        g = Group(len(self.groups), prompt, self.version)
        g.samples = [Sample(g, i, n) for i, n in enumerate(self._draw(c.output_median, c.output_sigma,
                                                                      c.max_tokens, c.group_size))]
        g.pending = len(g.samples)
        self.groups.append(g)
        self.open.append(g)
        for s in g.samples:
            self._submit(s)
        return g

    def _hashes(self, g: Group) -> tuple[int, ...]:
        """The group's whole prompt blocks, named per (group, version): siblings share them, new weights do not."""
        base = (1 << 100) | (self.version << 60) | (g.index << 24)
        return tuple(range(base, base + g.prompt_tokens // HASH_BLOCK))

    def _submit(self, s: Sample) -> None:
        g = s.group
        before = s.generated
        req = Request(f"g{g.index}.s{s.index}.{s.submissions}", self.now, g.prompt_tokens + before,
                      s.output_tokens - before, block_hashes=self._hashes(g), hash_block_size=HASH_BLOCK)
        seq = self.replica.add_request(req, self.now)
        if seq.status is SeqStatus.REJECTED:
            raise UserError(f"rollout request {req.id} rejected: {seq.reject_reason}; lower prompt_max or max_tokens")
        s.seq, s.version = seq, self.version
        s.submissions += 1
        self.live[req.id] = s
        self.reprefill += before
        self.submissions.append(Submission(req, g.index, s.index, before, self.version))

    def _end(self, s: Sample) -> None:
        """Close the sample's submission, keeping the tokens it generated under its version."""
        seq = s.seq
        assert seq is not None
        n = seq.num_generated
        if n:
            s.segments.append((s.version, n))
        self.generated += n
        del self.live[seq.id]
        s.seq = None

    def _cut_all(self) -> list[Sample]:
        """Abort every unfinished generation (between steps); returns them in submission order."""
        cut = list(self.live.values())
        for s in cut:
            assert s.seq is not None
            try:
                self.replica.abort(s.seq)
            except ValueError as e:  # a policy keeping its waiting queue outside SchedulerPolicy._queue
                raise UserError(f"scheduler {self.config.sim.scheduler!r} cannot drop a waiting request ({e}); "
                                "its policy needs a remove() method") from None
            self._end(s)
        self.cut += len(cut)
        return cut

    # ---- the replica ---------------------------------------------------------------------------
    def _start(self, horizon: float) -> Step | None:
        step = self.replica.start_step(self.now, horizon)
        if step is not None:
            d = step.end - step.start
            self.busy_s += d
            self.batch_s += d * len(step.batch.seqs)
        return step

    def _finish(self, step: Step) -> None:
        self.now = step.end
        for seq in self.replica.finish_step(step):
            s = self.live[seq.id]
            self._end(s)
            s.done = True
            g = s.group
            g.pending -= 1
            if g.pending == 0:
                g.complete_s = self.now

    # ---- training ------------------------------------------------------------------------------
    def _train(self, batch: list[Group], start: float, cut: int = 0) -> float:
        """Training step ``len(records)`` consumes ``batch`` from ``start``; returns when it ends."""
        c = self.config
        step = len(self.records)
        tokens = 0
        for g in batch:
            assert g.complete_s is not None and g.consumed_step is None
            g.consumed_step = step
            self.open.remove(g)
            lag = step - g.launch_version
            self.lag_sum += lag * len(g.samples)
            self.lag_max = max(self.lag_max, lag)
            for s in g.samples:
                self.useful += s.output_tokens
                self.off_policy += sum(n for v, n in s.segments if v < step)
                tokens += g.prompt_tokens + s.output_tokens
            self.consumed += len(g.samples)
        dur = c.train_s + c.train_s_per_ktoken * tokens / 1000
        self.trainer_busy_s += dur
        self.records.append(StepRecord(step, start, start + dur, tuple(g.index for g in batch),
                                       tuple(step - g.launch_version for g in batch), cut))
        return start + dur

    def _complete(self) -> list[Group]:
        return [g for g in self.open if g.complete_s is not None]

    def _result(self, total_s: float) -> RolloutResult:
        assert not self.live, "generations still in flight at the end"
        busy = self.busy_s
        return RolloutResult(
            mode=self.mode, steps=len(self.records), total_s=total_s, consumed_samples=self.consumed,
            useful_tokens=self.useful, generated_tokens=self.generated, wasted_tokens=self.generated - self.useful,
            reprefill_tokens=self.reprefill, cut_samples=self.cut,
            samples_per_s=self.consumed / total_s if total_s else 0.0,
            useful_tokens_per_s=self.useful / total_s if total_s else 0.0,
            useful_tokens_per_busy_s=self.useful / busy if busy else 0.0,
            rollout_busy_s=busy, rollout_idle_s=max(total_s - busy, 0.0),
            mean_busy_batch=self.batch_s / busy if busy else 0.0,
            trainer_busy_s=self.trainer_busy_s, trainer_idle_s=total_s - self.trainer_busy_s,
            off_policy_token_fraction=self.off_policy / self.useful if self.useful else 0.0,
            mean_staleness=self.lag_sum / self.consumed if self.consumed else 0.0,
            max_staleness=self.lag_max, preemptions=self.replica.scheduler.num_preemptions,
            step_log=tuple(self.records),
        )

    def run(self) -> RolloutResult:
        raise NotImplementedError


class _PhasedRollout(_Rollout):
    """Rollout, then training, then the next rollout: sync and APRIL differ only in how many groups they launch."""

    def groups_per_step(self) -> int:
        raise NotImplementedError

    def run(self) -> RolloutResult:
        c = self.config
        n = c.num_prompts
        self.carried: list[tuple[tuple[int, int, int], ...]] = []  # per step: (group, sample, generated) cut
        for step in range(c.steps):
            if step:
                self.now += c.weight_sync_s
            for g in list(self.open):  # resume carried partials first, oldest group first
                for s in g.samples:
                    if not s.done:
                        self._submit(s)
            for _ in range(self.groups_per_step() - len(self.open)):
                self._launch_group()
            while len(self._complete()) < n:
                st = self._start(INF)
                if st is None:
                    raise RuntimeError("rollout idle before N groups completed")  # a bug, not a user error
                self._finish(st)
            batch = sorted(self._complete(), key=_batch_order)[:n]
            cut = self._cut_all()
            self.carried.append(tuple((s.group.index, s.index, s.generated) for s in cut))
            self.now = self._train(batch, self.now, len(cut))
            self.version += 1
        return self._result(self.now)


class SyncRollout(_PhasedRollout):
    """Synchronous GRPO: N groups per step, all of them awaited (the long tail), then training."""

    mode = "sync"

    def groups_per_step(self) -> int:
        return self.config.num_prompts


class AprilRollout(_PhasedRollout):
    """APRIL: over-provision groups, cut the rest once N are complete, resume the partials first next step."""

    mode = "april"

    def groups_per_step(self) -> int:
        c = self.config
        return math.ceil((1 + c.over_provision) * c.num_prompts - 1e-9)


class AsyncRollout(_Rollout):
    """AReaL-style: continuous rollout under the launch rule, interruptible generation, eta-bounded staleness."""

    mode = "async"

    def _launch(self) -> None:
        c = self.config
        while len(self.groups) < (self.version + c.max_staleness + 1) * c.num_prompts:
            self._launch_group()

    def _pick(self) -> list[Group] | None:
        """N complete groups, never skipping an older launch version (see the module docstring); None: wait."""
        need = self.config.num_prompts
        by_version: dict[int, list[Group]] = {}
        for g in self.open:
            by_version.setdefault(g.launch_version, []).append(g)
        batch: list[Group] = []
        for v in sorted(by_version):
            members = by_version[v]
            done = [g for g in members if g.complete_s is not None]
            if len(members) <= need:
                if len(done) < len(members):
                    return None
                batch += members
                need -= len(members)
            else:
                if len(done) < need:
                    return None
                batch += sorted(done, key=lambda g: (g.complete_s, g.index))[:need]
                need = 0
            if need == 0:
                return sorted(batch, key=_batch_order)
        return None

    def _maybe_train(self, t: float) -> None:
        if self.train_end is None and len(self.records) < self.config.steps:
            batch = self._pick()
            if batch is not None:
                self.train_end = self._train(batch, t)

    def _update_weights(self) -> None:
        """Load the trainer's latest version: in-flight generations restart under it (KV recomputed), new groups launch."""
        self.version = self.trained
        for s in self._cut_all():
            self._submit(s)
        self._launch()

    def run(self) -> RolloutResult:
        c = self.config
        self.trained = 0
        self.train_end: float | None = None
        paused_until = 0.0
        self._launch()
        while True:
            self._maybe_train(self.now)
            if len(self.records) == c.steps:
                break
            st = self._start(INF if self.train_end is None else self.train_end) if self.now >= paused_until else None
            if st is None:  # idle until the pause or the training ends
                nxt = min(paused_until if self.now < paused_until else INF,
                          INF if self.train_end is None else self.train_end)
                if nxt == INF:
                    raise RuntimeError("async rollout stalled")  # a bug, not a user error
                self.now = nxt
                end = nxt
            else:
                end = st.end
            updated = False
            while self.train_end is not None and self.train_end <= end:  # the trainer finished during [now, end]
                t = self.train_end
                self.train_end = None
                self.trained += 1
                updated = True
                self._maybe_train(t)  # picks from what had completed by t
            if st is not None:
                self._finish(st)
            if len(self.records) == c.steps:
                break
            if updated:
                self._update_weights()
                paused_until = self.now + c.weight_sync_s
        self._cut_all()  # the last batch is taken: whatever is still generating is wasted
        last = self.records[-1].train_end_s
        return self._result(max(last, self.now))


MODES: dict[str, type[_Rollout]] = {"sync": SyncRollout, "april": AprilRollout, "async": AsyncRollout}


def run_rollout(mode: str, config: RolloutConfig | Mapping[str, Any] | None = None, *,
                timing: TimingModel | None = None) -> RolloutResult:
    """Run ``mode`` (sync, april or async) on ``config`` (a RolloutConfig or its fields; default: all defaults).

    ``timing`` replaces the replica's timing model (tests use a constant one)."""
    if mode not in MODES:
        raise UserError(f"unknown rollout mode {mode!r}; choose one of: {', '.join(MODES)}")
    if config is None:
        cfg = RolloutConfig()
    elif isinstance(config, RolloutConfig):
        cfg = config
    else:
        cfg = RolloutConfig.model_validate(dict(config))
    return MODES[mode](cfg, timing=timing).run()
