"""A program while it runs: which calls are done, what it has consumed, where its time went."""

from __future__ import annotations

from typing import Any

from tokensched.programs.model import LLMCall, Program


class ProgramState:
    __slots__ = (
        "program", "start_s", "finish_s", "pending_deps", "done", "llm_inflight", "tools_running", "paused",
        "resident", "ctx_tokens", "attained_s", "critical_s", "call_start_priority", "calls", "failed",
        "time_llm_s", "time_tool_s", "time_paused_s", "_mark", "pins", "seq_of", "tool_started", "last_ctx",
    )

    def __init__(self, program: Program, now: float) -> None:
        self.program = program
        self.start_s = now
        self.finish_s: float | None = None
        self.pending_deps = {n.id: len(n.deps) for n in program.nodes}
        self.done: set[str] = set()
        self.llm_inflight = 0
        self.tools_running = 0
        self.paused = 0  # LLM calls held by the pause gate
        self.resident = False  # counted in the pause gate's working set
        self.ctx_tokens = 0  # tokens of the program's latest context (its KV working set)
        self.attained_s = 0.0  # Autellix PLAS: service of completed calls
        self.critical_s = 0.0  # Autellix ATLAS: attained service along the critical path
        self.call_start_priority: dict[str, float] = {}
        self.calls: list[dict[str, Any]] = []  # one record per finished LLM call
        self.failed: str | None = None
        self.time_llm_s = 0.0  # some LLM call waiting or running
        self.time_tool_s = 0.0  # only tool calls running: the program is idle on tools
        self.time_paused_s = 0.0  # held by the pause gate (no LLM call in the engine)
        self._mark = now
        self.pins: list[tuple[int, list[int]]] = []  # (replica, pinned unit keys)
        self.seq_of: dict[str, Any] = {}
        self.tool_started: dict[str, float] = {}
        self.last_ctx: tuple[int, list[int], int] | None = None  # (replica, unit keys, blocks) of the last call

    @property
    def id(self) -> str:
        return self.program.id

    @property
    def arrival_s(self) -> float:
        return self.program.arrival_s

    def account(self, now: float) -> None:
        """Charge the time since the last change to the state the program was in."""
        dt = now - self._mark
        if dt > 0:
            if self.llm_inflight:
                self.time_llm_s += dt
            elif self.paused:
                self.time_paused_s += dt
            elif self.tools_running:
                self.time_tool_s += dt
        self._mark = now

    def next_llm_calls(self, node_id: str) -> list[LLMCall]:
        """LLM calls reachable from ``node_id`` through tool calls only (what a tool call is waiting to feed)."""
        p = self.program
        out: list[LLMCall] = []
        stack = list(p.children[node_id])
        seen: set[str] = set()
        while stack:
            c = stack.pop()
            if c in seen:
                continue
            seen.add(c)
            n = p.by_id[c]
            if isinstance(n, LLMCall):
                out.append(n)
            else:
                stack.extend(p.children[c])
        return out
