"""Program-level scheduling: agent runs, workflows and chat sessions as DAGs of LLM and tool calls.

``model`` (Program, LLMCall, ToolCall), ``sources`` (SWE-agent trajectories, generators, the JSON format),
``policies`` (program FCFS, Continuum, Autellix PLAS/ATLAS, HEXGEN urgency, KVFlow), ``sim`` (running them on a
cluster, program metrics) and ``rollout`` (RL rollouts: synchronous, APRIL, asynchronous). See docs/programs.md.
"""

from tokensched.programs.model import LLMCall, Program, ToolCall

__all__ = ["LLMCall", "Program", "ToolCall"]
