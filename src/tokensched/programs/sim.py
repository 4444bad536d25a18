"""Running programs on a simulated cluster: calls are issued as their dependencies finish.

:class:`ProgramSimulator` is a :class:`~tokensched.cluster.sim.ClusterSimulator` (one or many replicas, any
router) whose requests are not a fixed list: a program's arrival and every tool call are timers, and a
finished LLM call (``on_done``) releases the nodes that depended on it. Each call becomes a request with
``session_id`` = program id (so ``--router session-affinity`` keeps a program on one replica, as Autellix's
locality-aware balancer does) and, for program-aware policies, ``extra["program_key"]`` = the policy's key.

Pausing (``pause_threshold``, after ThunderAgent in NVIDIA Dynamo's experiments): programs are *resident*
while their contexts count toward a working set ``W`` (sum of each resident program's latest context tokens).
A program that is not resident starts its next LLM call only if ``W`` plus its context fits in
``pause_threshold`` x the cluster's KV tokens and no earlier program is waiting to resume (program FCFS);
otherwise it is paused. When a call ends in a tool call while ``W`` exceeds the budget, that idle program is
paused (its pins dropped, its KV left to eviction). Paused programs resume in arrival order as room appears;
one program always runs, so an oversized program cannot deadlock the cluster.

Macro-steps stay exact on one replica (a call finishing ends its replica's step; tool ends and program
arrivals are timers, which bound macro-steps). With several replicas a call finishing on one replica can
issue a call to another mid-macro-step, so replicas step one iteration at a time there.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import replace
from functools import partial
from typing import Any, Callable

import numpy as np
from pydantic import ValidationError

from tokensched.cluster.sim import ClusterResult, ClusterSimulator, cluster_result
from tokensched.config import SimConfig
from tokensched.errors import UserError
from tokensched.programs.model import HashAllocator, LLMCall, Program, ToolCall, call_hashes, call_request
from tokensched.programs.policies import ProgramPolicy, get_program_policy
from tokensched.programs.state import ProgramState
from tokensched.sequence import Sequence, SeqStatus
from tokensched.timing import BatchShape


def program_options(policy: type[ProgramPolicy], raw: dict[str, Any]) -> Any:
    try:
        return policy.Options(**{k.replace("-", "_"): v for k, v in raw.items()})
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(x) for x in err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = f"unknown option; valid: {', '.join(policy.Options.model_fields)}"
        raise UserError(f"option '{field}' of program policy {policy.name}: {msg}", where="program-options") from None


class ProgramSimulator(ClusterSimulator):
    def __init__(self, cfg: SimConfig, programs: list[Program], policy: str = "request-fcfs",
                 options: dict[str, Any] | None = None) -> None:
        pcls = get_program_policy(policy)
        opts = program_options(pcls, options or {})
        if pcls.orders_calls:
            if cfg.scheduler not in ("vllm", "program"):
                raise UserError(f"program policy {pcls.name} orders calls itself; drop --scheduler {cfg.scheduler}",
                                where="scheduler")
            cfg = cfg.model_copy(update={"scheduler": "program"})
        self.programs = sorted(programs, key=lambda p: (p.arrival_s, p.id))
        alloc = HashAllocator()
        self.hash_block = cfg.program_hash_tokens
        if self.hash_block % cfg.block_size and cfg.block_size % self.hash_block:
            raise UserError(f"program-hash-tokens {self.hash_block} and block-size {cfg.block_size}: one must divide "
                            "the other", where="program-hash-tokens")
        self.hashes = {p.id: call_hashes(p, alloc, self.hash_block) for p in self.programs}
        static = [call_request(p, c, self.hashes[p.id][c.id], p.arrival_s, self.hash_block) for p in self.programs
                  for c in p.llm_calls]
        super().__init__(cfg, static)
        self.cfg = cfg
        self.requests = []  # calls are issued as programs run
        if len(self.replicas) > 1:
            for r in self.replicas:
                r.macro_steps = False
        self.policy: ProgramPolicy = pcls(opts, self)
        factory = self.policy.make_evictor()
        self._owners: dict[int, str | None] | None = None
        if factory is not None:
            self._owners = {}
            for r in self.replicas:
                r.kv.set_evictor(factory())
        self.states: dict[str, ProgramState] = {}
        self._calls: dict[str, tuple[ProgramState, LLMCall]] = {}  # request id -> program, call
        self.tool_history: dict[str, list[float]] = {}
        self._tool_stats: dict[str, tuple[int, float]] = {}  # tool -> (calls, total seconds): expected duration
        self.now = 0.0
        self.epoch = 0  # bumped whenever a program's state changes (evictors may cache rankings per epoch)
        tm = self.replicas[0].timing
        self.tpot_estimate_s = tm.iteration_time(BatchShape(num_decodes=32, decode_context_sum=32 * 2048,
                                                            num_sampled=32))
        self._prefill_cache: dict[int, float] = {}
        # pause gate
        self.pause_threshold = opts.pause_threshold
        self.capacity_tokens = sum(r.kv.num_blocks * r.kv.block_size for r in self.replicas)
        self.working_set = 0
        self.resident = 0  # programs in the working set
        self._paused: list[tuple[float, str]] = []  # heap of (program arrival, id) waiting to resume
        self._paused_calls: dict[str, list[LLMCall]] = {}
        self.counters = {"pins": 0, "pinned_blocks": 0, "pins_expired_blocks": 0, "pauses": 0, "resumes": 0,
                         "prefetches": 0, "promotions": 0}
        self._prefetching = bool(getattr(opts, "prefetch", False)) and any(r.kv.host_blocks for r in self.replicas)
        for p in self.programs:
            self.add_timer(p.arrival_s, partial(self._arrive, p))

    # ---- estimates the policies use -------------------------------------------------------------
    def prefill_seconds(self, tokens: int) -> float:
        """Seconds one replica needs to prefill ``tokens`` alone (bucketed to 256 tokens)."""
        if tokens <= 0:
            return 0.0
        b = -(-tokens // 256) * 256
        t = self._prefill_cache.get(b)
        if t is None:
            t = self.replicas[0].timing.iteration_time(BatchShape(prefill_new=[b], prefill_cached=[0], num_sampled=1))
            self._prefill_cache[b] = t
        return t * tokens / b

    def unit_owner(self, key: int) -> str | None:
        assert self._owners is not None
        return self._owners.get(key)

    def next_use(self, pid: str) -> float:
        st = self.states[pid]
        if st.finish_s is not None or st.failed:
            return float("inf")
        if st.llm_inflight or st.paused or not st.tool_started:
            return self.now
        ends = []
        for nid, t0 in st.tool_started.items():
            node = st.program.by_id[nid]
            assert isinstance(node, ToolCall)
            n, total = self._tool_stats.get(node.tool, (0, 0.0))
            ends.append(t0 + (total / n if n else 1.0))
        return max(ends)

    # ---- program life ----------------------------------------------------------------------------
    def _arrive(self, program: Program, now: float) -> None:
        self.now = now
        st = ProgramState(program, now)
        self.states[program.id] = st
        for n in program.nodes:
            if not n.deps:
                self._start(st, n, now)

    def _start(self, st: ProgramState, node: Any, now: float) -> None:
        self.epoch += 1
        st.account(now)
        if isinstance(node, ToolCall):
            st.tools_running += 1
            st.tool_started[node.id] = now
            self.add_timer(now + node.duration_s, partial(self._tool_done, st, node))
            if self._prefetching and st.last_ctx is not None:
                i, _, blocks = st.last_ctx
                n, total = self._tool_stats.get(node.tool, (0, 0.0))
                expected = total / n if n else 1.0
                lead = self.policy.options.prefetch_lead_s
                if lead is None:  # the PCIe copy time of the whole context
                    lead = blocks * self.replicas[i].load_s_per_block
                self.add_timer(now + max(0.0, expected - lead), partial(self._prefetch, st))
            return
        if not self._gate(st, node):
            if st.id not in self._paused_calls:
                heapq.heappush(self._paused, (st.arrival_s, st.id))
                self._paused_calls[st.id] = []
                self.counters["pauses"] += 1
            st.paused += 1
            self._paused_calls[st.id].append(node)
            return
        self._issue(st, node, now)

    def _issue(self, st: ProgramState, call: LLMCall, now: float) -> None:
        req = call_request(st.program, call, self.hashes[st.id][call.id], now, self.hash_block)
        if self.policy.orders_calls:
            extra = {**req.extra, "program_key": self.policy.call_key(st, call, now)}
            if self.policy.preempts:
                extra["program_preempt"] = True
            req = replace(req, extra=extra)
        self._set_ctx(st, call.prompt_tokens + call.output_tokens)
        st.llm_inflight += 1
        self._calls[req.id] = (st, call)
        self.on_arrival(req, now)
        starve = getattr(self.policy.options, "starvation_s", None)
        if starve is not None:
            self.add_timer(now + starve, partial(self._promote, st, call))

    def on_delivered(self, i: int, seq: Sequence, now: float) -> None:
        st, call = self._calls[seq.request.id]
        st.seq_of[call.id] = (i, seq)
        if self._owners is not None:
            owners = self._owners
            for h, _ in seq.units:
                o = owners.get(h, st.id)
                owners[h] = st.id if o == st.id else None
        if seq.status is SeqStatus.REJECTED:
            st.account(now)
            st.llm_inflight -= 1
            st.failed = f"call {call.id}: {seq.reject_reason}"
            self._release(st, now)

    def on_done(self, i: int, done: list[Any], now: float) -> None:
        super().on_done(i, done, now)
        self.now = now
        for seq in done:
            st, call = self._calls.pop(seq.request.id)
            self._call_finished(i, st, call, seq, now)

    def _call_finished(self, i: int, st: ProgramState, call: LLMCall, seq: Sequence, now: float) -> None:
        self.epoch += 1
        st.account(now)
        st.llm_inflight -= 1
        service = now - (seq.first_scheduled_s if seq.first_scheduled_s is not None else now)
        self.policy.on_call_done(st, call, service, now)
        ctx = st.program.context_tokens(call)
        hit = seq.prefix_hit_tokens or 0
        st.calls.append({"call": call.id, "arrival_s": seq.request.arrival_s, "queue_s":
                         (seq.first_scheduled_s or now) - seq.request.arrival_s, "service_s": service,
                         "prompt": call.prompt_tokens, "context": ctx, "hit": hit, "preemptions": seq.preemptions})
        kv = self.replicas[i].kv
        keys = [h for h, _ in seq.units]
        st.last_ctx = (i, keys, seq.units[-1][1] // kv.block_size if seq.units else 0)
        self._drop_pins(st)  # what earlier pins still hold was not reused by this call: back to eviction
        tools = [st.program.by_id[c] for c in st.program.children[call.id]]
        tools = [t for t in tools if isinstance(t, ToolCall) and st.next_llm_calls(t.id)]
        if tools:
            if self.pause_threshold is not None and self.working_set > self.pause_threshold * self.capacity_tokens \
                    and len(self.states) > 1:
                self._evict_resident(st)  # idle program under memory pressure: pause it
                self._resume(now)  # its working set left the budget: earlier-paused programs may fit
            elif self.policy.pins:
                blocks_before = kv.pinned_blocks
                ttl = self.policy.pin_ttl(st, call, tools, kv.blocks_for(call.prompt_tokens + call.output_tokens),
                                          kv.num_blocks)
                if ttl > 0:
                    pinned = kv.pin(keys)
                    if pinned:
                        self.counters["pins"] += 1
                        self.counters["pinned_blocks"] += kv.pinned_blocks - blocks_before
                        st.pins.append((i, pinned))
                        self.add_timer(now + ttl, partial(self._expire, i, pinned))
        self._complete_node(st, call.id, now)

    def _tool_done(self, st: ProgramState, tool: ToolCall, now: float) -> None:
        self.now = now
        self.epoch += 1
        st.account(now)
        st.tools_running -= 1
        st.tool_started.pop(tool.id, None)
        hist = self.tool_history.setdefault(tool.tool, [])
        hist.append(tool.duration_s)
        n, total = self._tool_stats.get(tool.tool, (0, 0.0))
        self._tool_stats[tool.tool] = (n + 1, total + tool.duration_s)
        limit = getattr(self.policy.options, "history", 1000)
        if len(hist) > limit:
            del hist[: len(hist) - limit]
        self._complete_node(st, tool.id, now)

    def _complete_node(self, st: ProgramState, node_id: str, now: float) -> None:
        if st.failed:
            return
        st.done.add(node_id)
        for c in st.program.children[node_id]:
            st.pending_deps[c] -= 1
            if st.pending_deps[c] == 0:
                self._start(st, st.program.by_id[c], now)
        if len(st.done) == len(st.program.nodes):
            st.account(now)
            st.finish_s = now
            self._release(st, now)

    def _drop_pins(self, st: ProgramState) -> None:
        for i, keys in st.pins:
            self.replicas[i].kv.unpin(keys)
        st.pins.clear()

    def _release(self, st: ProgramState, now: float) -> None:
        """A program finished or failed: its pins end, its working set leaves the gate."""
        self._drop_pins(st)
        if st.resident:
            st.resident = False
            self.resident -= 1
            self.working_set -= st.ctx_tokens
        self._resume(now)

    def _promote(self, st: ProgramState, call: LLMCall, now: float) -> None:
        """Anti-starvation: a call still waiting ``starvation_s`` after it was issued moves to the first queue."""
        where = st.seq_of.get(call.id)
        if where is None:
            return
        i, seq = where
        if seq.status is not SeqStatus.WAITING or seq.first_scheduled_s is not None:
            return
        key = self.policy.promoted_key(st)  # type: ignore[attr-defined]
        if seq.request.extra.get("program_key", key) <= key:  # already in the first queue
            return
        seq.request.extra["program_key"] = key
        self.replicas[i].scheduler.policy.rekey()  # type: ignore[attr-defined]
        self.counters["promotions"] += 1

    def _prefetch(self, st: ProgramState, now: float) -> None:
        """KVFlow: bring the idle program's context back from CPU memory before its next call."""
        if st.llm_inflight or st.finish_s is not None or st.failed or st.last_ctx is None:
            return
        i, keys, _ = st.last_ctx
        if self.replicas[i].kv.prefetch(keys):
            self.counters["prefetches"] += 1

    def _expire(self, i: int, keys: list[int], now: float) -> None:
        """A pin's TTL ran out: what it still holds joins the eviction order, even if the program's next call has
        come back and waits for admission (keeping pins for waiting calls was measured to lock KV away from the
        admissions that would drain the queue: docs/programs.md)."""
        self.counters["pins_expired_blocks"] += self.replicas[i].kv.unpin(keys)

    # ---- pause gate ------------------------------------------------------------------------------
    def _set_ctx(self, st: ProgramState, tokens: int) -> None:
        if st.resident:
            self.working_set += tokens - st.ctx_tokens
        st.ctx_tokens = tokens

    def _gate(self, st: ProgramState, call: LLMCall) -> bool:
        if self.pause_threshold is None or st.resident:
            return True
        need = call.prompt_tokens + call.output_tokens
        ahead = bool(self._paused) and self._paused[0] < (st.arrival_s, st.id)
        if not self.resident or (not ahead and self.working_set + need <= self.pause_threshold * self.capacity_tokens):
            st.resident = True
            self.resident += 1
            self.working_set += st.ctx_tokens
            return True
        return False

    def _evict_resident(self, st: ProgramState) -> None:
        self._drop_pins(st)
        st.resident = False
        self.resident -= 1
        self.working_set -= st.ctx_tokens

    def _resume(self, now: float) -> None:
        while self._paused:
            _, pid = self._paused[0]
            st = self.states[pid]
            calls = self._paused_calls[pid]
            need = max(c.prompt_tokens + c.output_tokens for c in calls)
            if self.resident and self.working_set + need > self.pause_threshold * self.capacity_tokens:  # type: ignore[operator]
                return
            heapq.heappop(self._paused)
            st.account(now)
            st.resident = True
            self.resident += 1
            self.working_set += st.ctx_tokens
            self.counters["resumes"] += 1
            self._paused_calls.pop(pid)
            st.paused = 0
            for c in calls:
                self._issue(st, c, now)


def summarize_programs(sim: ProgramSimulator) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Program metrics: job completion time, deadline attainment, where time went, prefill reuse."""
    rows: list[dict[str, Any]] = []
    for st in sorted(sim.states.values(), key=lambda s: (s.arrival_s, s.id)):
        p = st.program
        jct = None if st.finish_s is None else st.finish_s - p.arrival_s
        dl = p.deadline_s
        rows.append({
            "program": p.id, "kind": p.kind, "tenant": p.tenant, "arrival_s": p.arrival_s,
            "finish_s": st.finish_s, "jct_s": jct, "deadline_s": dl,
            "met_deadline": None if dl is None or jct is None else jct <= dl,
            "llm_calls": len(st.calls), "tool_calls": sum(1 for n in p.nodes if isinstance(n, ToolCall)),
            "llm_time_s": st.time_llm_s, "tool_idle_s": st.time_tool_s, "paused_s": st.time_paused_s,
            "queue_s": sum(c["queue_s"] for c in st.calls),
            "prompt_tokens": sum(c["prompt"] for c in st.calls),
            "context_tokens": sum(c["context"] for c in st.calls),
            "hit_tokens": sum(c["hit"] for c in st.calls),
            "context_recomputed_tokens": sum(max(0, c["context"] - c["hit"]) for c in st.calls),
            "preemptions": sum(c["preemptions"] for c in st.calls),
            "error": st.failed,
        })
    done = [r for r in rows if r["jct_s"] is not None]
    jcts = np.array([r["jct_s"] for r in done], dtype=float)

    def stats(a: np.ndarray) -> dict[str, float | None]:
        if not len(a):
            return {"mean": None, "p50": None, "p90": None, "p99": None, "max": None}
        return {"mean": float(a.mean()), "p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
                "p99": float(np.percentile(a, 99)), "max": float(a.max())}

    with_dl = [r for r in done if r["deadline_s"] is not None]
    n_dl = sum(1 for r in rows if r["deadline_s"] is not None)
    prompt = sum(r["prompt_tokens"] for r in done)
    ctx = sum(r["context_tokens"] for r in done)
    hit = sum(r["hit_tokens"] for r in done)
    summary = {
        "policy": sim.policy.name,
        "count": len(sim.programs), "completed": len(done), "failed": sum(1 for r in rows if r["error"]),
        "jct_s": stats(jcts),
        "deadline": {"programs": n_dl, "met": sum(1 for r in with_dl if r["met_deadline"]),
                     "attainment": (sum(1 for r in with_dl if r["met_deadline"]) / n_dl) if n_dl else None},
        "time_per_program_s": {
            "llm": float(np.mean([r["llm_time_s"] for r in done])) if done else None,
            "tool_idle": float(np.mean([r["tool_idle_s"] for r in done])) if done else None,
            "paused": float(np.mean([r["paused_s"] for r in done])) if done else None,
            "queue": float(np.mean([r["queue_s"] for r in done])) if done else None,
        },
        "prefill_tokens": {
            "prompt": prompt, "context": ctx, "hit": hit,
            "context_saved": ctx - sum(r["context_recomputed_tokens"] for r in done),
            "context_recomputed": sum(r["context_recomputed_tokens"] for r in done),
            "computed": prompt - hit,
        },
        "pins": {**{k: sim.counters[k] for k in ("pins", "pinned_blocks", "pins_expired_blocks")},
                 "pin_hits": sum(r.kv.pin_hits for r in sim.replicas),
                 "pin_evictions": sum(r.kv.pin_evictions for r in sim.replicas),
                 "released_idle_blocks": sum(r.kv.pins_released for r in sim.replicas)},
        "pause": {"threshold": sim.pause_threshold, "pauses": sim.counters["pauses"],
                  "resumes": sim.counters["resumes"]},
        "prefetches": sim.counters["prefetches"],
        "promotions": sim.counters["promotions"],
    }
    return summary, rows


def simulate_programs(cfg: SimConfig, programs: list[Program], policy: str = "request-fcfs",
                      options: dict[str, Any] | None = None,
                      on_progress: Callable[[int], None] | None = None) -> ClusterResult:
    """Run ``programs`` on the deployment ``cfg`` describes under program policy ``policy``."""
    if cfg.autoscaler != "none" or cfg.router.lower() == "llumnix" or any(
            isinstance(p, dict) and p.get("role", "mixed") != "mixed" for p in (cfg.cluster or [])):
        raise UserError("program workloads run on plain clusters: no autoscaler, llumnix or prefill/decode roles yet",
                        where="workload")
    if not programs:
        raise UserError("the program workload has no programs", where=cfg.workload)
    t0 = time.perf_counter()
    sim = ProgramSimulator(cfg, programs, policy, options)
    sim.run(on_progress)
    result = cluster_result(sim, sim.cfg, t0)
    summary, rows = summarize_programs(sim)
    result.summary["programs"] = summary
    result.summary["wall_s"] = time.perf_counter() - t0
    result.info["program_policy"] = sim.policy.name
    result.programs = rows
    return result
