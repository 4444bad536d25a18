"""Where programs come from: SWE-agent trajectories, generators, and a JSON format for your own.

* **SWE-agent trajectories** (the Continuum per-round table ``continuum_swe_rounds_derived.jsonl``: one row
  per LLM call with ``traj_id, round, input_tokens_est, output_tokens_est, tool_names,
  tool_exec_time_s``): each trajectory is a chain LLM -> tool -> LLM -> ... where call ``r+1``'s prompt
  extends call ``r``'s context and the tool time is the measured gap. ``num_programs`` programs replay the
  trajectories in turn (program ``i`` uses trajectory ``i mod n``, with its own content) and arrive as a
  Poisson process at ``program_rate``. ``tool_scale`` multiplies every tool time (sensitivity studies).
* **generators** (seeded, numpy): ``react`` (ReAct loops), ``parallel-plan`` / ``sequential-plan``
  (LLMCompiler-style plans of dependent tool calls, executed as a DAG or one tool per ReAct turn — the same
  plans for the same seed), ``map-reduce`` (wide search: plan, parallel map branches with search tools,
  reduce), ``chat-sessions`` (multi-turn chat with user think time as tool calls) and ``agent-mix`` (short
  and long programs mixed, for least-attained-service studies).
* **JSON** (``{"programs": [...]}`` or JSON Lines with one program per line)::

    {"id": "p0", "arrival_s": 0.0, "deadline_s": 30, "tenant": "a",
     "calls": [{"id": "plan", "type": "llm", "prompt_tokens": 800, "output_tokens": 120},
               {"id": "search", "type": "tool", "tool": "web", "duration_s": 1.5, "after": ["plan"]},
               {"id": "answer", "type": "llm", "prompt_tokens": 1400, "output_tokens": 200,
                "after": ["search"], "context_from": "plan"}]}

  ``context_from`` defaults to the nearest earlier LLM call the call depends on (through tool calls).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tokensched.errors import UserError, read_user_text
from tokensched.programs.model import LLMCall, Node, Program, ToolCall


@dataclass
class ProgramWorkload:
    programs: list[Program]
    source: str
    format: str
    notes: list[str]


def _rng(seed: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(seed))


def _arrivals(rng: np.random.Generator, n: int, rate: float) -> np.ndarray:
    if n <= 1:
        return np.zeros(n)
    return np.concatenate(([0.0], np.cumsum(rng.exponential(1.0 / rate, size=n - 1))))


def _ln(rng: np.random.Generator, median: float, sigma: float, lo: int = 1, hi: int = 1 << 20) -> int:
    return int(min(hi, max(lo, round(median * float(np.exp(sigma * rng.standard_normal()))))))


# ----------------------------------------------------------------------------- SWE-agent trajectories

def load_swe_rounds(text: str, name: str) -> dict[str, list[dict[str, Any]]]:
    from tokensched.workload.loaders import _jsonl  # one JSON Lines reader: file:line errors

    trajs: dict[str, list[dict[str, Any]]] = {}
    for where, row in _jsonl(text, name):
        for k in ("traj_id", "round", "input_tokens_est", "output_tokens_est"):
            if k not in row:
                raise UserError(f"missing field {k!r}", where=where)
        for k in ("input_tokens_est", "output_tokens_est"):
            v = row[k]
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise UserError(f"field {k!r}: expected a non-negative integer, got {v!r}", where=where)
        t = row.get("tool_exec_time_s")
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or t < 0):
            raise UserError(f"field 'tool_exec_time_s': expected a non-negative number or null, got {t!r}", where=where)
        trajs.setdefault(str(row["traj_id"]), []).append(row)
    if not trajs:
        raise UserError("no trajectories in file", where=name)
    for rows in trajs.values():
        rows.sort(key=lambda r: r["round"])
    return trajs


def swe_programs(trajs: dict[str, list[dict[str, Any]]], num_programs: int, rate: float, seed: int,
                 tool_scale: float = 1.0) -> list[Program]:
    rng = _rng(seed)
    names = sorted(trajs)
    arrivals = _arrivals(rng, num_programs, rate)
    out = []
    for i in range(num_programs):
        rows = trajs[names[i % len(names)]]
        nodes: list[Node] = []
        prev_llm: str | None = None
        prev: str | None = None
        for r in rows:
            cid = f"c{r['round']}"
            nodes.append(LLMCall(cid, max(1, r["input_tokens_est"]), max(1, r["output_tokens_est"]),
                                 deps=(prev,) if prev else (), context_from=prev_llm))
            prev_llm = prev = cid
            t = r.get("tool_exec_time_s")
            if t is not None:
                tid = f"t{r['round']}"
                tool = "+".join(r.get("tool_names") or ["tool"])
                nodes.append(ToolCall(tid, float(t) * tool_scale, tool, deps=(cid,)))
                prev = tid
        out.append(Program(f"swe{i}", float(arrivals[i]), tuple(nodes), kind=f"swe:{names[i % len(names)][:24]}"))
    return out


# ----------------------------------------------------------------------------- generators

SYSTEM_TOKENS = 600  # shared system prompt of generated agents (one prefix group per generator)


def _react(rng: np.random.Generator, pid: str, t: float, steps: int, *, group: str = "react",
           tool_median_s: float = 1.0) -> Program:
    prompt = SYSTEM_TOKENS + _ln(rng, 300, 0.5, 20, 4000)
    nodes: list[Node] = []
    prev_llm = prev = None
    for s in range(steps + 1):
        out = _ln(rng, 120, 0.6, 8, 2000)
        cid = f"c{s}"
        nodes.append(LLMCall(cid, prompt, out, deps=(prev,) if prev else (), context_from=prev_llm))
        if s == steps:
            break
        tid = f"t{s}"
        nodes.append(ToolCall(tid, _lnf(rng, tool_median_s, 0.8), "tool", deps=(cid,)))
        prompt = prompt + out + _ln(rng, 400, 0.7, 10, 8000)
        prev_llm, prev = cid, tid
    return Program(pid, t, tuple(nodes), prefix_group=group, shared_prefix_tokens=SYSTEM_TOKENS, kind="react")


def _lnf(rng: np.random.Generator, median: float, sigma: float) -> float:
    return float(median * np.exp(sigma * rng.standard_normal()))


def _plan(rng: np.random.Generator, pid: str, t: float, mode: str, width: tuple[int, int] = (3, 8)) -> Program:
    """An LLMCompiler-style plan: k tool calls with dependencies, executed as a DAG or sequentially (ReAct)."""
    k = int(rng.integers(width[0], width[1] + 1))
    question = SYSTEM_TOKENS + _ln(rng, 250, 0.5, 20, 2000)
    plan_out = 40 + 30 * k
    durations = [_lnf(rng, 1.0, 0.8) for _ in range(k)]
    observations = [_ln(rng, 250, 0.6, 10, 4000) for _ in range(k)]
    deps = [tuple(j for j in range(i) if rng.random() < 0.25) for i in range(k)]
    answer = _ln(rng, 150, 0.5, 8, 2000)
    nodes: list[Node] = []
    if mode == "parallel":
        nodes.append(LLMCall("plan", question, plan_out))
        for i in range(k):
            nodes.append(ToolCall(f"t{i}", durations[i], "tool", deps=("plan",) + tuple(f"t{j}" for j in deps[i])))
        nodes.append(LLMCall("join", question + plan_out + sum(observations), answer,
                             deps=tuple(f"t{i}" for i in range(k)), context_from="plan"))
    else:  # ReAct: one tool per LLM turn, in a topological order of the same plan
        prompt = question
        prev_llm = prev = None
        for i in range(k):
            out = 30 + 30  # a thought and one call
            cid = f"c{i}"
            nodes.append(LLMCall(cid, prompt, out, deps=(prev,) if prev else (), context_from=prev_llm))
            nodes.append(ToolCall(f"t{i}", durations[i], "tool", deps=(cid,)))
            prompt = prompt + out + observations[i]
            prev_llm, prev = cid, f"t{i}"
        nodes.append(LLMCall("join", prompt, answer, deps=(prev,), context_from=prev_llm))
    return Program(pid, t, tuple(nodes), prefix_group="plan", shared_prefix_tokens=SYSTEM_TOKENS, kind=f"{mode}-plan")


def _map_reduce(rng: np.random.Generator, pid: str, t: float, width: tuple[int, int] = (4, 12)) -> Program:
    k = int(rng.integers(width[0], width[1] + 1))
    question = SYSTEM_TOKENS + _ln(rng, 300, 0.5, 20, 2000)
    plan_out = 30 + 25 * k
    nodes: list[Node] = [LLMCall("plan", question, plan_out)]
    ctx = question + plan_out
    summaries = []
    for i in range(k):
        q = _ln(rng, 40, 0.4, 4, 400)
        nodes.append(LLMCall(f"m{i}", ctx + q, _ln(rng, 40, 0.5, 4, 400), deps=("plan",), context_from="plan"))
        nodes.append(ToolCall(f"s{i}", _lnf(rng, 1.5, 0.7), "search", deps=(f"m{i}",)))
        pages = _ln(rng, 1500, 0.6, 50, 12000)
        summaries.append(_ln(rng, 200, 0.5, 10, 2000))
        m = nodes[-2]
        assert isinstance(m, LLMCall)
        nodes.append(LLMCall(f"r{i}", m.prompt_tokens + m.output_tokens + pages, summaries[-1], deps=(f"s{i}",),
                             context_from=f"m{i}"))
    nodes.append(LLMCall("reduce", ctx + sum(summaries), _ln(rng, 400, 0.5, 20, 4000),
                         deps=tuple(f"r{i}" for i in range(k)), context_from="plan"))
    return Program(pid, t, tuple(nodes), prefix_group="map-reduce", shared_prefix_tokens=SYSTEM_TOKENS,
                   kind="map-reduce")


def _chat(rng: np.random.Generator, pid: str, t: float) -> Program:
    turns = int(min(20, 1 + rng.geometric(0.2)))
    prompt = 200 + _ln(rng, 150, 0.8, 5, 4000)
    nodes: list[Node] = []
    prev_llm = prev = None
    for s in range(turns):
        out = _ln(rng, 250, 0.7, 5, 4000)
        cid = f"c{s}"
        nodes.append(LLMCall(cid, prompt, out, deps=(prev,) if prev else (), context_from=prev_llm))
        if s == turns - 1:
            break
        nodes.append(ToolCall(f"u{s}", _lnf(rng, 8.0, 0.8), "user", deps=(cid,)))
        prompt = prompt + out + _ln(rng, 80, 0.8, 2, 2000)
        prev_llm, prev = cid, f"u{s}"
    return Program(pid, t, tuple(nodes), prefix_group="chat", shared_prefix_tokens=200, kind="chat")


def _agent_mix(rng: np.random.Generator, pid: str, t: float, long_fraction: float = 0.2) -> Program:
    if rng.random() < long_fraction:
        p = _map_reduce(rng, pid, t, width=(8, 16)) if rng.random() < 0.5 else _react(rng, pid, t, 12)
        return Program(p.id, p.arrival_s, p.nodes, prefix_group=p.prefix_group,
                       shared_prefix_tokens=p.shared_prefix_tokens, kind="long-" + p.kind)
    p = _react(rng, pid, t, int(rng.integers(0, 2)))
    return Program(p.id, p.arrival_s, p.nodes, prefix_group=p.prefix_group,
                   shared_prefix_tokens=p.shared_prefix_tokens, kind="short-" + p.kind)


@dataclass(frozen=True)
class ProgramPreset:
    description: str
    rate: float  # programs per second by default
    make: Callable[[np.random.Generator, str, float], Program]


PROGRAM_PRESETS: dict[str, ProgramPreset] = {
    "react": ProgramPreset("ReAct agents: 1-10 tool steps, growing context, ~1 s tools", 1.0,
                           lambda r, pid, t: _react(r, pid, t, int(r.integers(1, 11)))),
    "parallel-plan": ProgramPreset("LLMCompiler plans: planner, 3-8 dependent tool calls run as a DAG, joiner", 1.0,
                                   lambda r, pid, t: _plan(r, pid, t, "parallel")),
    "sequential-plan": ProgramPreset("the same plans as parallel-plan, one tool per ReAct turn", 1.0,
                                     lambda r, pid, t: _plan(r, pid, t, "sequential")),
    "map-reduce": ProgramPreset("wide search: plan, 4-12 map branches (query, search, read), reduce", 0.5,
                                lambda r, pid, t: _map_reduce(r, pid, t)),
    "chat-sessions": ProgramPreset("multi-turn chat: 2-20 turns with ~8 s user think time", 2.0,
                                   lambda r, pid, t: _chat(r, pid, t)),
    "agent-mix": ProgramPreset("80 % short agents (1-2 calls), 20 % long (12-step ReAct or 8-16 wide map-reduce)", 2.0,
                               lambda r, pid, t: _agent_mix(r, pid, t)),
}


def generate_programs(preset: str, num_programs: int, rate: float | None = None, seed: int = 0) -> list[Program]:
    p = PROGRAM_PRESETS[preset]
    rng = _rng(seed)
    # arrivals first from their own stream, so the programs of one seed are the same at every rate
    times = _arrivals(_rng(seed + 1_000_003), num_programs, rate or p.rate)
    return [p.make(rng, f"{preset}{i}", float(times[i])) for i in range(num_programs)]


# ----------------------------------------------------------------------------- JSON programs

class _CallIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    type: Literal["llm", "tool"]
    after: list[str] = Field(default_factory=list)
    prompt_tokens: int | None = Field(None, ge=1)
    output_tokens: int | None = Field(None, ge=1)
    context_from: str | None = None
    tool: str = "tool"
    duration_s: float | None = Field(None, ge=0)


class _ProgramIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    arrival_s: float = Field(0.0, ge=0)
    deadline_s: float | None = Field(None, gt=0)
    tenant: str = "default"
    prefix_group: str | None = None
    shared_prefix_tokens: int = Field(0, ge=0)
    calls: list[_CallIn] = Field(min_length=1)


def _to_program(p: _ProgramIn, where: str) -> Program:
    nodes: list[Node] = []
    last_llm: dict[str, str | None] = {}
    for c in p.calls:
        w = f"{where}: program {p.id}, call {c.id}"
        if c.type == "llm":
            if c.prompt_tokens is None or c.output_tokens is None:
                raise UserError(f"{w}: an llm call needs prompt_tokens and output_tokens")
            ctx = c.context_from
            if ctx is None:  # nearest LLM ancestor through tool calls
                cands = [last_llm.get(d) for d in c.after]
                ctx = next((x for x in cands if x is not None), None)
            nodes.append(LLMCall(c.id, c.prompt_tokens, c.output_tokens, tuple(c.after), ctx))
            last_llm[c.id] = c.id
        else:
            if c.duration_s is None:
                raise UserError(f"{w}: a tool call needs duration_s")
            nodes.append(ToolCall(c.id, c.duration_s, c.tool, tuple(c.after)))
            last_llm[c.id] = next((last_llm.get(d) for d in c.after if last_llm.get(d)), None)
    try:
        return Program(p.id, p.arrival_s, tuple(nodes), p.deadline_s, p.tenant, p.prefix_group,
                       p.shared_prefix_tokens, kind="json")
    except UserError as e:
        raise UserError(f"{where}: {e}") from None


def _validation(e: ValidationError, where: str) -> UserError:
    err = e.errors()[0]
    field = ".".join(str(x) for x in err["loc"])
    return UserError(f"field '{field}': {err['msg']}", where=where)


def load_program_json(text: str, name: str) -> list[Program]:
    stripped = text.lstrip()
    items: list[tuple[str, Any]] = []
    if stripped.startswith("{") and '"programs"' in stripped[:2000] and not _is_jsonl(stripped):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"invalid JSON: {e.msg}", where=f"{name}:{e.lineno}") from None
        progs = doc.get("programs") if isinstance(doc, dict) else None
        if not isinstance(progs, list):
            raise UserError("expected {\"programs\": [...]}", where=name)
        items = [(f"{name}: programs[{i}]", p) for i, p in enumerate(progs)]
    else:
        for i, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    items.append((f"{name}:{i}", json.loads(line)))
                except json.JSONDecodeError as e:
                    raise UserError(f"invalid JSON: {e.msg}", where=f"{name}:{i}") from None
    out = []
    seen: set[str] = set()
    for where, obj in items:
        try:
            p = _ProgramIn.model_validate(obj)
        except ValidationError as e:
            raise _validation(e, where) from None
        if p.id in seen:
            raise UserError(f"duplicate program id {p.id!r}", where=where)
        seen.add(p.id)
        out.append(_to_program(p, where))
    if not out:
        raise UserError("no programs in file", where=name)
    return out


def _is_jsonl(text: str) -> bool:
    first = text.split("\n", 1)[0].strip()
    try:
        obj = json.loads(first)
    except json.JSONDecodeError:
        return False
    return isinstance(obj, dict) and "calls" in obj


# ----------------------------------------------------------------------------- entry point

def detect_program_file(text: str) -> str | None:
    head = text.lstrip()[:4000]
    first = head.split("\n", 1)[0]
    if '"traj_id"' in first and '"round"' in first:
        return "swe-rounds"
    if head.startswith("{") and ('"programs"' in head or '"calls"' in first):
        return "programs-json"
    return None


def is_program_workload(workload: str) -> bool:
    if workload.lower() in PROGRAM_PRESETS:
        return True
    p = Path(workload)
    if not p.is_file():
        return False
    try:
        with p.open("r", encoding="utf-8") as f:
            head = f.read(4000)
    except (OSError, UnicodeDecodeError):
        return False
    return detect_program_file(head) is not None


def load_programs(workload: str, *, num_programs: int | None = None, rate: float | None = None, seed: int = 0,
                  tool_scale: float = 1.0, deadline_s: float | None = None) -> ProgramWorkload:
    """Programs from a preset name, a SWE-agent rounds file or a programs JSON/JSONL file.

    ``deadline_s`` is given to every program that has no deadline of its own."""
    pw = _load_programs(workload, num_programs, rate, seed, tool_scale)
    if deadline_s is not None:
        pw.programs = [p if p.deadline_s is not None else
                       Program(p.id, p.arrival_s, p.nodes, deadline_s, p.tenant, p.prefix_group, p.shared_prefix_tokens,
                               p.kind) for p in pw.programs]
    return pw


def _load_programs(workload: str, num_programs: int | None, rate: float | None, seed: int,
                   tool_scale: float) -> ProgramWorkload:
    key = workload.lower()
    if key in PROGRAM_PRESETS:
        n = num_programs or 100
        progs = generate_programs(key, n, rate, seed)
        if tool_scale != 1.0:
            progs = [_scale_tools(p, tool_scale) for p in progs]
        return ProgramWorkload(progs, key, "generated", [])
    p = Path(workload)
    text = read_user_text(p, "program workload")
    fmt = detect_program_file(text)
    if fmt == "swe-rounds":
        trajs = load_swe_rounds(text, str(p))
        n = num_programs or len(trajs)
        r = rate or 0.5
        notes = [f"{len(trajs)} SWE-agent trajectories replayed as {n} programs, Poisson arrivals at {r:g}/s"
                 + (f", tool times x{tool_scale:g}" if tool_scale != 1.0 else "")]
        return ProgramWorkload(swe_programs(trajs, n, r, seed, tool_scale), str(p), fmt, notes)
    if fmt == "programs-json":
        progs = load_program_json(text, str(p))
        notes = []
        if num_programs is not None and num_programs < len(progs):
            progs = sorted(progs, key=lambda q: (q.arrival_s, q.id))[:num_programs]
            notes.append(f"kept the first {num_programs} programs")
        if tool_scale != 1.0:
            progs = [_scale_tools(q, tool_scale) for q in progs]
        return ProgramWorkload(progs, str(p), fmt, notes)
    raise UserError("not a program workload (expected a SWE-agent rounds JSONL or a programs JSON file)", where=str(p))


def _scale_tools(p: Program, k: float) -> Program:
    nodes = tuple(ToolCall(n.id, n.duration_s * k, n.tool, n.deps) if isinstance(n, ToolCall) else n
                  for n in p.nodes)
    return Program(p.id, p.arrival_s, nodes, p.deadline_s, p.tenant, p.prefix_group, p.shared_prefix_tokens, p.kind)


