"""Programs: DAGs of LLM calls and tool calls (agent runs, workflows, chat sessions).

A :class:`Program` arrives at ``arrival_s`` and runs its nodes as their dependencies finish:

* an :class:`LLMCall` is one request to the serving engine. Its prompt usually *extends* an earlier call's
  context: ``context_from`` names the call whose prompt and output are the first tokens of this prompt, so
  the prefix cache can reuse them (a ReAct turn extends the previous turn; a reduce step extends the plan).
The hashes cover each call's output too, so its generated blocks are cached as they fill, as in vLLM V1.
  Without ``context_from`` the prompt is new (a program's first call), except for ``shared_prefix_tokens``
  tokens common to every program of the same ``prefix_group`` (a shared system prompt).
* a :class:`ToolCall` takes ``duration_s`` of wall time outside the engine (a shell command, a search, a
  user's think time in a chat session); its result reaches later prompts through their token counts.

Dependencies (``deps``) make any DAG: fan-out (parallel tool calls, map steps), fan-in (join, reduce).
``deadline_s`` is relative to arrival. Node order must be topological (dependencies first): loaders check it.

Prefix sharing is made real with chained block hashes (``hash_block_size`` = 16 tokens, vLLM's block):
:func:`call_hashes` gives each call's prompt the hashes of its context parent's full blocks followed by
fresh ones, so two calls share exactly the blocks that hold the same tokens. The last sampled token of a
call never had its KV computed, so the block holding it is recomputed by the next call (as in vLLM).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Collection, Union

from tokensched.errors import UserError
from tokensched.request import Request

HASH_BLOCK = 16


@dataclass(frozen=True, slots=True)
class LLMCall:
    id: str
    prompt_tokens: int
    output_tokens: int
    deps: tuple[str, ...] = ()
    context_from: str | None = None  # the LLM call whose prompt + output start this prompt

    kind = "llm"


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    duration_s: float
    tool: str = "tool"
    deps: tuple[str, ...] = ()

    kind = "tool"


Node = Union[LLMCall, ToolCall]


@dataclass(frozen=True)
class Program:
    id: str
    arrival_s: float
    nodes: tuple[Node, ...]
    deadline_s: float | None = None
    tenant: str = "default"
    prefix_group: str | None = None
    shared_prefix_tokens: int = 0
    kind: str = "program"
    by_id: dict[str, Node] = field(default_factory=dict, compare=False, repr=False)
    children: dict[str, tuple[str, ...]] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        where = f"program {self.id}"
        if self.arrival_s < 0:
            raise UserError(f"{where}: arrival_s must be >= 0, got {self.arrival_s}")
        if self.deadline_s is not None and self.deadline_s <= 0:
            raise UserError(f"{where}: deadline_s must be > 0, got {self.deadline_s}")
        if not self.nodes:
            raise UserError(f"{where}: has no calls")
        if self.shared_prefix_tokens < 0:
            raise UserError(f"{where}: shared_prefix_tokens must be >= 0")
        by_id: dict[str, Node] = {}
        children: dict[str, list[str]] = {}
        for n in self.nodes:
            w = f"{where}, call {n.id}"
            if n.id in by_id:
                raise UserError(f"{w}: duplicate call id")
            for d in n.deps:
                if d not in by_id:
                    raise UserError(f"{w}: depends on {d!r}, which is not an earlier call of the program "
                                    "(calls must be listed after their dependencies)")
                children[d].append(n.id)
            if isinstance(n, LLMCall):
                if n.prompt_tokens < 1 or n.output_tokens < 1:
                    raise UserError(f"{w}: prompt_tokens and output_tokens must be >= 1")
                if n.context_from is not None:
                    parent = by_id.get(n.context_from)
                    if not isinstance(parent, LLMCall):
                        raise UserError(f"{w}: context_from {n.context_from!r} is not an earlier LLM call")
                    if not self._reaches(by_id, n.deps, n.context_from):
                        raise UserError(f"{w}: context_from {n.context_from!r} is not among its dependencies")
            elif n.duration_s < 0:
                raise UserError(f"{w}: duration_s must be >= 0, got {n.duration_s}")
            by_id[n.id] = n
            children[n.id] = []
        object.__setattr__(self, "by_id", by_id)
        object.__setattr__(self, "children", {k: tuple(v) for k, v in children.items()})

    @staticmethod
    def _reaches(by_id: dict[str, Node], deps: tuple[str, ...], target: str) -> bool:
        seen: set[str] = set()
        stack = list(deps)
        while stack:
            d = stack.pop()
            if d == target:
                return True
            if d not in seen:
                seen.add(d)
                stack.extend(by_id[d].deps)
        return False

    @property
    def llm_calls(self) -> list[LLMCall]:
        return [n for n in self.nodes if isinstance(n, LLMCall)]

    @property
    def deadline_abs(self) -> float | None:
        return None if self.deadline_s is None else self.arrival_s + self.deadline_s

    def critical_path(self, cost: Callable[[Node], float], done: Collection[str] = ()) -> float:
        """Length of the longest dependency chain, each node costing ``cost(node)`` (nodes in ``done``: 0)."""
        finish: dict[str, float] = {}
        for n in self.nodes:  # topological order
            start = max((finish[d] for d in n.deps), default=0.0)
            finish[n.id] = start + (0.0 if n.id in done else cost(n))
        return max(finish.values(), default=0.0)

    def context_tokens(self, call: LLMCall) -> int:
        """Tokens of ``call``'s prompt that an earlier call of this program (or the shared prefix) computed."""
        if call.context_from is None:
            return min(self.shared_prefix_tokens, call.prompt_tokens - 1)
        p = self.by_id[call.context_from]
        assert isinstance(p, LLMCall)
        return min(p.prompt_tokens + p.output_tokens, call.prompt_tokens - 1)


class HashAllocator:
    """Fresh block-hash ids, deterministic in allocation order; shared-prefix groups get one fixed run each."""

    def __init__(self) -> None:
        self._next = 1
        self._groups: dict[str, list[int]] = {}

    def fresh(self, n: int) -> list[int]:
        start = self._next
        self._next += n
        return list(range(start, start + n))

    def group(self, name: str, blocks: int) -> list[int]:
        g = self._groups.setdefault(name, [])
        if len(g) < blocks:
            g.extend(self.fresh(blocks - len(g)))
        return g[:blocks]


def call_hashes(program: Program, alloc: HashAllocator, block: int = HASH_BLOCK) -> dict[str, tuple[int, ...]]:
    """Chained ``block``-token hashes of every LLM call's prompt and output (see the module docstring)."""
    ctx: dict[str, list[int]] = {}  # call id -> hashes of its prompt + output blocks
    out: dict[str, tuple[int, ...]] = {}
    for n in program.nodes:
        if not isinstance(n, LLMCall):
            continue
        shared = program.context_tokens(n)
        full = shared // block
        if n.context_from is not None:
            head = ctx[n.context_from][:full]
        elif program.prefix_group is not None and full:
            head = alloc.group(program.prefix_group, full)
        else:
            head = []
        total = -(-(n.prompt_tokens + n.output_tokens) // block)
        mine = head + alloc.fresh(total - len(head))
        ctx[n.id] = mine
        out[n.id] = tuple(mine)
    return out


def call_request(program: Program, call: LLMCall, hashes: tuple[int, ...], arrival_s: float,
                 block: int = HASH_BLOCK) -> Request:
    """The engine request for ``call`` issued at ``arrival_s`` (``hashes`` from :func:`call_hashes` at ``block``)."""
    return Request(
        id=f"{program.id}/{call.id}", arrival_s=arrival_s, prompt_tokens=call.prompt_tokens,
        output_tokens=call.output_tokens, block_hashes=hashes, hash_block_size=block, tenant=program.tenant,
        session_id=program.id, hashes_cover_output=True, extra={"program": program.id, "call": call.id},
    )
