"""Program-level policies: which program's calls go first, whose KV survives a tool call.

Each policy is a small class chosen by name (``--program-policy``), with knobs from ``--program-option``.
It never sees simulated time as special: it gets ``now`` and the program's state, so the same code can sit in
a gateway. The replica orders waiting calls by the key a policy returns (``policies/program.py``).

* ``request-fcfs`` — baseline: every call is an independent request, served by the replica's own scheduler
  (vLLM FCFS by call arrival); KV of a finished call is evicted by LRU like any other.
* ``program-fcfs`` — calls ordered by their *program's* arrival (Continuum's program-level FCFS).
* ``continuum`` — program FCFS plus KV time-to-live pinning during tool calls (Continuum/CacheTTL, arXiv
  2511.02230). When a call ends in a tool call, its prompt's KV is pinned for ``tau`` seconds chosen to
  maximise ``F(tau) * benefit - memory_weight * f * tau``: ``F`` is the tool's duration CDF from the
  history of that tool's past calls (cold start: exponential prior with mean ``prior_mean_s``), ``benefit`` the
  prefill seconds the next call saves by hitting the pinned context (priced by the replica's timing model)
  plus ``requeue_benefit_s``, ``f`` the fraction of the replica's KV the pin holds. The paper's exact
  formula is not public (see docs/programs.md); ``ttl_s`` fixes the TTL instead. Pinned KV is not available to
  new admissions; running calls take it under memory pressure before anyone is preempted.
* ``plas`` / ``atlas`` — Autellix (arXiv 2502.13965): least attained service at program level. PLAS keys a
  call by its program's total service so far; ATLAS by the service along the program's critical path
  (``max_cp = max(max_cp, start_priority + call_service)``, each call snapshotting ``max_cp`` at its start).
  Service = engine time of a call (first scheduled to finish). Keys are discretised into the queues of
  ``thresholds_s`` (MLFQ, FCFS by program arrival inside a queue); ``discretize: false`` uses raw service;
  ``preempt: true`` lets a waiting call that cannot start displace running calls of lower queues;
  ``starvation_s`` promotes a call that has waited that long to the first queue (our rule: the paper's is not public).
* ``hexgen`` — HEXGEN-TEXT2SQL-style adaptive urgency: calls ordered by their program's slack,
  ``deadline - estimated remaining critical-path time`` (programs without a deadline go last, FCFS).
* ``kvflow`` — KVFlow (arXiv 2507.07400): program FCFS, and cached KV is evicted by *steps to execution*
  (the unit of the program that runs again furthest in the future goes first; finished programs' units
  before everything) instead of LRU. With a CPU KV tier (``--cpu-kv-gb``) evicted units go to host memory, and
  a program's context is prefetched back ``lead`` seconds before its tool call is expected to end (expected =
  mean of that tool's past durations), overlapped with compute, so its next call finds it on the GPU.

Every policy also takes ``pause_threshold`` (ThunderAgent-style pausing, see ``sim.py``).
"""

from __future__ import annotations

import bisect
import math
from collections import OrderedDict, defaultdict
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from tokensched.errors import UserError
from tokensched.programs.model import LLMCall, ToolCall
from tokensched.programs.state import ProgramState

if TYPE_CHECKING:
    from tokensched.programs.sim import ProgramSimulator


class ProgramOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    pause_threshold: float | None = Field(
        None, gt=0, le=4, description="pause idle programs when resident programs' contexts exceed this fraction "
        "of the cluster's KV tokens; resume them in arrival order when they fit (default: never pause)")


class ProgramPolicy:
    """Baseline: each call is an independent request, in the replica's own order."""

    name: ClassVar[str] = "request-fcfs"
    reference: ClassVar[str] = "vLLM FCFS per request (no program awareness)"
    Options: ClassVar[type[BaseModel]] = ProgramOptions
    orders_calls: ClassVar[bool] = False  # replica runs the "program" scheduler with call_key
    pins: ClassVar[bool] = False

    @property
    def preempts(self) -> bool:
        """Calls may displace running calls with larger keys (``program_preempt``)."""
        return bool(getattr(self.options, "preempt", False))

    def __init__(self, options: BaseModel, sim: ProgramSimulator) -> None:
        self.options: Any = options
        self.sim = sim

    def call_key(self, st: ProgramState, call: LLMCall, now: float) -> tuple[float, ...]:
        return (st.arrival_s,)

    def on_call_done(self, st: ProgramState, call: LLMCall, service_s: float, now: float) -> None:
        """``call`` of ``st`` finished after ``service_s`` seconds of engine time."""

    def pin_ttl(self, st: ProgramState, call: LLMCall, tools: list[ToolCall], blocks: int, num_blocks: int) -> float:
        """Seconds to pin ``call``'s KV while ``tools`` run (0: do not pin)."""
        return 0.0

    def make_evictor(self) -> Callable[[], Any] | None:
        """A factory of per-replica evictors replacing LRU (None: keep the configured one)."""
        return None


class ProgramFCFS(ProgramPolicy):
    """Calls ordered by their program's arrival (program-level FCFS)."""

    name = "program-fcfs"
    reference = "Continuum (arXiv 2511.02230) program-level FCFS, without pinning"
    orders_calls = True


class ContinuumOptions(ProgramOptions):
    ttl_s: float | None = Field(None, ge=0, description="fixed TTL in seconds instead of the utility model")
    prior_mean_s: float = Field(1.0, gt=0, description="mean of the exponential tool-duration prior (cold start)")
    min_history: int = Field(5, ge=1, description="past calls of a tool before its empirical CDF replaces the prior")
    history: int = Field(1000, ge=1, description="most recent durations kept per tool")
    memory_weight: float = Field(1.0, ge=0, description="cost of holding a fraction f of KV for tau s: weight*f*tau")
    requeue_benefit_s: float = Field(0.0, ge=0, description="extra benefit of a hit: re-queueing delay avoided (s)")


class Continuum(ProgramFCFS):
    """Program FCFS + KV time-to-live pinning during tool calls, TTL from tool-duration history."""

    name = "continuum"
    reference = "Continuum / CacheTTL, arXiv 2511.02230"
    Options = ContinuumOptions
    pins = True

    def __init__(self, options: BaseModel, sim: ProgramSimulator) -> None:
        super().__init__(options, sim)
        self.ttls: list[float] = []

    def ttl(self, tool: str, benefit_s: float, frac: float) -> float:
        o = self.options
        if o.ttl_s is not None:
            return float(o.ttl_s)
        cost_rate = o.memory_weight * frac
        if benefit_s <= 0:
            return 0.0
        hist = self.sim.tool_history.get(tool, [])
        if len(hist) < o.min_history:  # exponential prior: d/dtau [B (1 - e^{-tau/mu}) - c tau] = 0
            mu = o.prior_mean_s
            if cost_rate <= 0:
                return 10 * mu
            x = benefit_s / (mu * cost_rate)
            return mu * math.log(x) if x > 1 else 0.0
        xs = sorted(hist)
        n = len(xs)
        best, best_u = 0.0, 0.0
        for i, tau in enumerate(xs):  # F(tau) steps up at each observed duration
            u = (i + 1) / n * benefit_s - cost_rate * tau
            if u > best_u:
                best, best_u = tau, u
        return best

    def pin_ttl(self, st: ProgramState, call: LLMCall, tools: list[ToolCall], blocks: int, num_blocks: int) -> float:
        benefit = self.sim.prefill_seconds(call.prompt_tokens) + self.options.requeue_benefit_s
        frac = blocks / num_blocks
        tau = max(self.ttl(t.tool, benefit, frac) for t in tools)
        self.ttls.append(tau)
        return tau


class PLASOptions(ProgramOptions):
    thresholds_s: list[float] = Field([2, 4, 8, 16, 32, 64], description="attained-service queue bounds (s)")
    discretize: bool = Field(True, description="key by MLFQ queue index (Autellix) instead of raw service")
    preempt: bool = Field(False, description="a waiting call that cannot start preempts running calls of "
                          "lower-priority queues (Autellix's queues are preemptive; see docs/programs.md)")
    starvation_s: float | None = Field(None, gt=0, description="anti-starvation: a call still waiting this long after "
                                       "it was issued moves to the first queue (default: never)")


class PLAS(ProgramPolicy):
    """Autellix PLAS: least attained service per program, discretised into priority queues."""

    name = "plas"
    reference = "Autellix, arXiv 2502.13965 (PLAS)"
    Options = PLASOptions
    orders_calls = True

    def __init__(self, options: BaseModel, sim: ProgramSimulator) -> None:
        super().__init__(options, sim)
        self._bounds = sorted(self.options.thresholds_s)

    def _level(self, service: float) -> float:
        if not self.options.discretize:
            return service
        return float(bisect.bisect_right(self._bounds, service))

    def service_key(self, st: ProgramState, call: LLMCall) -> float:
        return st.attained_s

    def call_key(self, st: ProgramState, call: LLMCall, now: float) -> tuple[float, ...]:
        return (self._level(self.service_key(st, call)), st.arrival_s)

    def promoted_key(self, st: ProgramState) -> tuple[float, ...]:
        """The key of a starving call: the first queue, FCFS by program arrival."""
        return (0.0, st.arrival_s)

    def on_call_done(self, st: ProgramState, call: LLMCall, service_s: float, now: float) -> None:
        st.attained_s += service_s


class ATLAS(PLAS):
    """Autellix ATLAS: least attained service along the program's critical path (DAG programs)."""

    name = "atlas"
    reference = "Autellix, arXiv 2502.13965 (ATLAS)"

    def service_key(self, st: ProgramState, call: LLMCall) -> float:
        st.call_start_priority[call.id] = st.critical_s
        return st.critical_s

    def on_call_done(self, st: ProgramState, call: LLMCall, service_s: float, now: float) -> None:
        st.attained_s += service_s
        st.critical_s = max(st.critical_s, st.call_start_priority.get(call.id, 0.0) + service_s)


class HexgenOptions(ProgramOptions):
    tpot_s: float | None = Field(None, gt=0, description="decode seconds per output token for the estimate "
                                 "(default: the replica's timing at a batch of 32)")


class Hexgen(ProgramPolicy):
    """HEXGEN-TEXT2SQL-style urgency: least slack (deadline minus estimated remaining work) first."""

    name = "hexgen"
    reference = "HEXGEN-TEXT2SQL (papers.md #128): adaptive urgency; formula ours, see docs"
    Options = HexgenOptions
    orders_calls = True

    def remaining_s(self, st: ProgramState) -> float:
        """Estimated critical-path seconds of the program's unfinished calls (known tool durations)."""
        p = st.program
        tpot = self.options.tpot_s or self.sim.tpot_estimate_s

        def cost(n: Any) -> float:
            if isinstance(n, LLMCall):
                return self.sim.prefill_seconds(n.prompt_tokens - p.context_tokens(n)) + tpot * n.output_tokens
            return float(n.duration_s)

        return p.critical_path(cost, st.done)

    def call_key(self, st: ProgramState, call: LLMCall, now: float) -> tuple[float, ...]:
        deadline = st.program.deadline_abs
        if deadline is None:
            return (math.inf, st.arrival_s)
        return (deadline - self.remaining_s(st), st.arrival_s)


class KVFlowOptions(ProgramOptions):
    prefetch: bool = Field(True, description="prefetch a program's context from CPU before its tool call ends "
                           "(needs --cpu-kv-gb)")
    prefetch_lead_s: float | None = Field(None, ge=0, description="start prefetching this long before the expected "
                                          "tool end (default: the context's PCIe copy time)")


class KVFlow(ProgramFCFS):
    """KVFlow: program FCFS, KV evicted by steps to execution instead of LRU, overlapped CPU prefetch."""

    name = "kvflow"
    reference = "KVFlow, arXiv 2507.07400"
    Options = KVFlowOptions

    def make_evictor(self) -> Callable[[], Any]:
        sim = self.sim
        return lambda: StepsToExecutionEvictor(sim.unit_owner, sim.next_use, lambda: sim.epoch)


class StepsToExecutionEvictor:
    """Evicts first the cached unit whose owning program runs again furthest in the future.

    ``owner(key)`` names the program that last cached a unit (None: shared by several, e.g. a system prompt:
    evicted last); ``next_use(program)`` is that program's expected next engine time (``inf`` once it has
    finished). Inside one program, least recently released first (tail of a prompt before its head).
    """

    def __init__(self, owner: Callable[[int], str | None], next_use: Callable[[str], float],
                 epoch: Callable[[], int] = lambda: -1) -> None:
        self._owner = owner
        self._next_use = next_use
        self._epoch = epoch  # rankings only change when the epoch does (-1: never cache)
        self._cached: tuple[int, str | None] | None = None
        self._by: dict[str | None, OrderedDict[int, int]] = defaultdict(OrderedDict)
        self._where: dict[int, str | None] = {}
        self._sum = 0

    def push(self, key: int, blocks: int, hits: int, priority: int) -> None:
        o = self._owner(key)
        if self._cached is not None and self._cached[1] != o:
            self._cached = None  # a unit of another program may now rank first
        self._by[o][key] = blocks
        self._where[key] = o
        self._sum += blocks

    def remove(self, key: int) -> None:
        o = self._where.pop(key)
        self._sum -= self._by[o].pop(key)
        if not self._by[o]:
            del self._by[o]

    def pop(self) -> tuple[int, int]:
        def rank(o: str | None) -> tuple[float, str]:
            return (-math.inf, "") if o is None else (self._next_use(o), o)

        ep = self._epoch()
        c = self._cached
        if c is not None and ep != -1 and c[0] == ep and c[1] in self._by:
            victim = c[1]  # nothing changed since the last pop, and nothing ranks above a unit still there
        else:
            victim = max(self._by, key=rank)
            self._cached = (ep, victim)
        units = self._by[victim]
        key, blocks = units.popitem(last=False)
        if not units:
            del self._by[victim]
        del self._where[key]
        self._sum -= blocks
        return key, blocks

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, key: int) -> bool:
        return key in self._where

    def values_sum(self) -> int:
        return self._sum


PROGRAM_POLICIES: dict[str, type[ProgramPolicy]] = {
    c.name: c for c in (ProgramPolicy, ProgramFCFS, Continuum, PLAS, ATLAS, Hexgen, KVFlow)
}


def get_program_policy(name: str) -> type[ProgramPolicy]:
    try:
        return PROGRAM_POLICIES[name.lower()]
    except KeyError:
        raise UserError(f"unknown program policy {name!r}; choose one of: {', '.join(PROGRAM_POLICIES)}",
                        where="program-policy") from None
