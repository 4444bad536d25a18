"""Programs: DAG execution, context reuse, KV pins and TTLs, program-level orderings, sources and the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tokensched.cli import main
from tokensched.config import SimConfig
from tokensched.errors import UserError
from tokensched.kv_cache import NO_HIT, KVCacheManager, prompt_units
from tokensched.programs.model import HashAllocator, LLMCall, Program, ToolCall, call_hashes
from tokensched.programs.policies import StepsToExecutionEvictor
from tokensched.programs.sim import ProgramSimulator, simulate_programs
from tokensched.programs.sources import PROGRAM_PRESETS, generate_programs, load_programs
from tokensched.programs.state import ProgramState
from tokensched.request import Request
from tokensched.sequence import Sequence

SWE = Path(__file__).resolve().parents[2] / "shared/traces/continuum_swe/continuum_swe_rounds_derived.jsonl"


def rows_by_call(result) -> dict[str, dict]:
    return {r["id"]: r for r in result.rows}


def plan_program(pid: str = "p", t: float = 0.0, durations=(1.0, 3.0), deadline: float | None = None) -> Program:
    nodes = [LLMCall("plan", 500, 20)]
    nodes += [ToolCall(f"t{i}", d, "search", deps=("plan",)) for i, d in enumerate(durations)]
    nodes.append(LLMCall("join", 900, 30, deps=tuple(f"t{i}" for i in range(len(durations))), context_from="plan"))
    return Program(pid, t, tuple(nodes), deadline_s=deadline)


# ---- the model --------------------------------------------------------------------------------

@pytest.mark.parametrize("nodes, msg", [
    ((LLMCall("a", 10, 1, deps=("b",)),), "not an earlier call"),
    ((LLMCall("a", 10, 1), LLMCall("a", 10, 1)), "duplicate call id"),
    ((LLMCall("a", 10, 1), LLMCall("b", 10, 1), LLMCall("c", 30, 1, deps=("b",), context_from="a")),
     "not among its dependencies"),
    ((ToolCall("t", -1.0),), "duration_s must be >= 0"),
    ((ToolCall("t", 1.0), LLMCall("b", 10, 1, deps=("t",), context_from="t")), "not an earlier LLM call"),
])
def test_program_validation_names_the_call(nodes, msg):
    with pytest.raises(UserError, match=msg):
        Program("p", 0.0, nodes)


def test_child_prompt_shares_exactly_the_parents_full_blocks():
    p = Program("p", 0.0, (LLMCall("a", 100, 40), ToolCall("t", 1.0, deps=("a",)),
                           LLMCall("b", 300, 5, deps=("t",), context_from="a")))
    h = call_hashes(p, HashAllocator())
    assert len(h["a"]) == 9 and len(h["b"]) == 20  # prompt + output: ceil(140/16), ceil(305/16)
    # a's context = 140 tokens = 8 full blocks: b's prompt starts with them (prompt and output blocks of a)
    assert p.context_tokens(p.by_id["b"]) == 140
    assert h["b"][:8] == h["a"][:8]
    assert len(set(h["b"][8:]) & set(h["a"])) == 0  # the partial block and the new tokens are new content
    # a second program has different content, except a shared prefix group
    q = Program("q", 0.0, (LLMCall("a", 100, 40),), prefix_group="sys", shared_prefix_tokens=64)
    r = Program("r", 0.0, (LLMCall("a", 200, 40),), prefix_group="sys", shared_prefix_tokens=64)
    alloc = HashAllocator()
    hq, hr = call_hashes(q, alloc)["a"], call_hashes(r, alloc)["a"]
    assert hq[:4] == hr[:4] and hq[4] != hr[4]


# ---- DAG execution ------------------------------------------------------------------------------

def test_fan_in_waits_for_the_slowest_tool_and_jct_is_exact():
    res = simulate_programs(SimConfig(), [plan_program(durations=(1.0, 3.0, 2.0))], "program-fcfs")
    rows = rows_by_call(res)
    plan, join = rows["p/plan"], rows["p/join"]
    assert join["arrival_s"] == pytest.approx(plan["finish_s"] + 3.0)  # max of the parallel tools
    prog = res.programs[0]
    assert prog["jct_s"] == pytest.approx(join["finish_s"])
    assert prog["tool_idle_s"] == pytest.approx(3.0)
    assert prog["llm_time_s"] == pytest.approx(plan["e2e_s"] + join["e2e_s"])
    # the join reuses the plan's prompt and output blocks: 519 tokens had KV (not the last sampled one) -> 32 blocks
    assert join["prefix_hit_tokens"] == 32 * 16
    assert prog["context_tokens"] == 520 and prog["context_recomputed_tokens"] == 520 - 512


def test_sequential_chain_sums_tool_times():
    nodes = (LLMCall("c0", 200, 10), ToolCall("t0", 1.5, deps=("c0",)),
             LLMCall("c1", 400, 10, deps=("t0",), context_from="c0"), ToolCall("t1", 2.5, deps=("c1",)),
             LLMCall("c2", 600, 10, deps=("t1",), context_from="c1"))
    res = simulate_programs(SimConfig(), [Program("s", 0.0, nodes)])
    rows = rows_by_call(res)
    assert rows["s/c1"]["arrival_s"] == pytest.approx(rows["s/c0"]["finish_s"] + 1.5)
    assert rows["s/c2"]["arrival_s"] == pytest.approx(rows["s/c1"]["finish_s"] + 2.5)
    assert res.programs[0]["tool_idle_s"] == pytest.approx(4.0)


def test_deadline_attainment_and_determinism():
    progs = [plan_program("a", 0.0, deadline=100.0), plan_program("b", 0.1, deadline=0.5)]
    r1 = simulate_programs(SimConfig(), progs, "hexgen")
    r2 = simulate_programs(SimConfig(), progs, "hexgen")
    d = r1.summary["programs"]["deadline"]
    assert (d["programs"], d["met"], d["attainment"]) == (2, 1, 0.5)  # b's tools alone take 3 s
    assert r1.rows == r2.rows and r1.programs == r2.programs


def test_rejected_call_fails_its_program_only():
    big = Program("big", 0.0, (LLMCall("a", 5000, 10),))
    ok = Program("ok", 0.0, (LLMCall("a", 100, 10),))
    res = simulate_programs(SimConfig(max_model_len=1000), [big, ok])
    s = res.summary["programs"]
    assert (s["completed"], s["failed"]) == (1, 1)
    assert "max_model_len" in next(r for r in res.programs if r["program"] == "big")["error"]


# ---- KV pins --------------------------------------------------------------------------------------

def _seq(rid: str, prompt: int, hashes: tuple[int, ...]) -> Sequence:
    r = Request(rid, 0.0, prompt, 4, block_hashes=hashes, hash_block_size=16)
    return Sequence(r, prompt_units(r, 16))


def test_pinned_blocks_are_refused_to_admissions_but_given_to_running_sequences():
    kv = KVCacheManager(10, 16)
    a = _seq("a", 64, (1, 2, 3, 4))
    kv.allocate(a, 64, NO_HIT)
    kv.free(a)  # 4 cached, unreferenced blocks
    assert kv.pin([h for h, _ in a.units]) and kv.pinned_blocks == 4 and kv.evictable_blocks == 0
    assert kv.used_blocks == 4  # pins count as used
    b = _seq("b", 112, tuple(range(10, 17)))  # 7 blocks: only 6 are free of pins
    assert not kv.can_allocate(b, 112, NO_HIT)
    c = _seq("c", 96, tuple(range(20, 26)))
    kv.allocate(c, 96, NO_HIT)  # 6 blocks: exactly the unpinned ones
    assert kv.free_blocks == 0 and kv.can_append(c, 1)  # a running sequence may take a pinned block
    kv.append(c, 1)
    assert kv.pin_evictions == 1 and kv.pinned_blocks == 3
    kv.check_invariants([c])
    # a hit on a pinned unit ends its pin; unpin returns the rest to LRU
    a2 = _seq("a2", 64, (1, 2, 3, 4))
    hit = kv.find_prefix(a2)
    assert hit.num_units == 3 and hit.evictable_blocks == 0  # first unit was taken; pinned units are not "evictable"
    assert kv.unpin([h for h, _ in a.units]) == 3 and kv.evictable_blocks == 3 and kv.pinned_blocks == 0
    kv.check_invariants([c])


def _ttl_run(ttl: float, tool_s: float = 2.0):
    nodes = (LLMCall("c0", 1000, 10), ToolCall("t0", tool_s, "bash", deps=("c0",)),
             LLMCall("c1", 1100, 10, deps=("t0",), context_from="c0"))
    return simulate_programs(SimConfig(), [Program("p", 0.0, nodes)], "continuum", {"ttl_s": ttl})


def test_ttl_expires_before_a_longer_tool_and_holds_through_a_shorter_one():
    short = _ttl_run(0.5).summary["programs"]["pins"]
    assert short["pins"] == 1 and short["pins_expired_blocks"] == (1000 + 10 - 1) // 16 and short["pin_hits"] == 0
    long = _ttl_run(5.0).summary["programs"]["pins"]
    assert long["pins"] == 1 and long["pins_expired_blocks"] == 0 and long["pin_hits"] == (1000 + 10 - 1) // 16  # units hit (prompt and output)
    none = _ttl_run(0.0).summary["programs"]["pins"]
    assert none["pins"] == 0


def test_continuum_ttl_from_prior_and_from_history():
    sim = ProgramSimulator(SimConfig(), [plan_program()], "continuum", {"prior_mean_s": 2.0})
    pol = sim.policy
    # exponential prior: tau* = mu ln(B / (mu c)) with B = 1 s, c = 0.1 -> 2 ln 5
    assert pol.ttl("bash", 1.0, 0.1) == pytest.approx(2.0 * math.log(5.0))
    assert pol.ttl("bash", 0.1, 0.1) == 0.0  # benefit below mu*c: never pin
    # empirical CDF: durations 1, 2, 10 s; B = 3, c = 0.2: u(1) = 1 - .2, u(2) = 2 - .4, u(10) = 3 - 2 -> 2 s
    sim.tool_history["bash"] = [10.0, 1.0, 2.0, 2.0, 1.0]
    # sorted 1,1,2,2,10: F = .2,.4,.6,.8,1 -> u = .6-.2, 1.2-.2, 1.8-.4, 2.4-.4, 3-2 -> best tau = 2 (u = 2.0)
    assert pol.ttl("bash", 3.0, 0.2) == 2.0


# ---- program-level orderings ------------------------------------------------------------------------

def test_plas_and_atlas_keys_hand_computed():
    prog = Program("p", 5.0, (LLMCall("a", 10, 1), LLMCall("b", 10, 1), LLMCall("c", 10, 1, deps=("a", "b"))))
    for name, expect_key in (("plas", 5.0), ("atlas", 3.0)):
        sim = ProgramSimulator(SimConfig(), [prog], name, {"discretize": False})
        st = ProgramState(prog, 5.0)
        pol = sim.policy
        ka = pol.call_key(st, prog.by_id["a"], 5.0)
        kb = pol.call_key(st, prog.by_id["b"], 5.0)
        assert ka == kb == (0.0, 5.0)
        pol.on_call_done(st, prog.by_id["a"], 2.0, 7.0)  # parallel calls: 2 s and 3 s of service
        pol.on_call_done(st, prog.by_id["b"], 3.0, 8.0)
        # PLAS sums all service (5 s); ATLAS keeps the critical path: max(0 + 2, 0 + 3) = 3 s
        assert pol.call_key(st, prog.by_id["c"], 8.0) == (expect_key, 5.0)
    sim = ProgramSimulator(SimConfig(), [prog], "plas", {"thresholds_s": [1, 4]})
    st = ProgramState(prog, 5.0)
    st.attained_s = 3.0
    assert sim.policy.call_key(st, prog.by_id["c"], 0.0) == (1.0, 5.0)  # queue 1 of [0,1), [1,4), [4,inf)


def _queue_order(policy: str, **opts) -> list[str]:
    """One seat: the order in which waiting calls are admitted shows the policy's order."""
    long_ = Program("long", 0.0, (LLMCall("a", 4000, 300), ToolCall("t", 0.0, deps=("a",)),
                                  LLMCall("b", 4400, 50, deps=("t",), context_from="a")))
    shorts = [Program(f"s{i}", 0.5 + 0.01 * i, (LLMCall("a", 300, 50),)) for i in range(3)]
    res = simulate_programs(SimConfig(max_num_seqs=1), [long_, *shorts], policy, opts)
    return [r["id"] for r in sorted(res.rows, key=lambda r: r["finish_s"])]


def test_attained_service_lets_new_programs_pass_a_long_one():
    # program FCFS: long's second call (program arrival 0) goes before the shorts that arrived at 0.5
    assert _queue_order("program-fcfs") == ["long/a", "long/b", "s0/a", "s1/a", "s2/a"]
    # PLAS: long has attained ~3 s of service; the shorts have none, so they go first
    assert _queue_order("plas", discretize=False) == ["long/a", "s0/a", "s1/a", "s2/a", "long/b"]


def test_hexgen_orders_by_slack():
    prog_tight = plan_program("tight", 1.0, deadline=10.0)
    prog_loose = plan_program("loose", 0.0, deadline=100.0)
    sim = ProgramSimulator(SimConfig(), [prog_tight, prog_loose], "hexgen")
    kt = sim.policy.call_key(ProgramState(prog_tight, 1.0), prog_tight.by_id["plan"], 1.0)
    kl = sim.policy.call_key(ProgramState(prog_loose, 0.0), prog_loose.by_id["plan"], 1.0)
    assert kt < kl
    rem = sim.policy.remaining_s(ProgramState(prog_tight, 1.0))
    assert rem > 3.0  # the slowest tool alone is 3 s
    assert kt[0] == pytest.approx(11.0 - rem)


def test_steps_to_execution_evictor_order():
    owner = {1: "done", 2: "soon", 3: "later", 4: None, 5: "later"}
    next_use = {"done": math.inf, "soon": 1.0, "later": 9.0}
    ev = StepsToExecutionEvictor(owner.get, next_use.__getitem__)
    for k in (4, 2, 3, 1, 5):
        ev.push(k, 1, 1, 0)
    assert ev.values_sum() == 5 and len(ev) == 5
    assert [ev.pop()[0] for _ in range(5)] == [1, 3, 5, 2, 4]


def test_kvflow_and_pausing_complete_every_program():
    progs = generate_programs("react", 12, rate=4.0, seed=3)
    base = simulate_programs(SimConfig(kv_blocks=1500), progs, "program-fcfs")
    for policy, opts in (("kvflow", {}), ("program-fcfs", {"pause_threshold": 0.3})):
        res = simulate_programs(SimConfig(kv_blocks=1500), progs, policy, opts)
        s = res.summary["programs"]
        assert s["completed"] == 12 and s["failed"] == 0
        assert res.summary["requests"]["completed"] == base.summary["requests"]["completed"]
    assert s["pause"]["pauses"] > 0 and s["pause"]["resumes"] == s["pause"]["pauses"]
    assert s["time_per_program_s"]["paused"] > 0


def test_session_affinity_keeps_a_program_on_one_replica():
    progs = generate_programs("react", 8, rate=2.0, seed=1)
    cfg = SimConfig(replicas=3, router="session-affinity", router_options={"load_factor": 100})  # no spill-over
    sim = ProgramSimulator(cfg, progs, "continuum")
    sim.run()
    where: dict[str, set[int]] = {}
    for st in sim.states.values():
        where[st.id] = {i for i, _ in st.seq_of.values()}
    assert all(len(v) == 1 for v in where.values())
    assert all(st.finish_s is not None for st in sim.states.values())


# ---- sources ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("preset", sorted(PROGRAM_PRESETS))
def test_presets_generate_valid_deterministic_programs(preset):
    a = generate_programs(preset, 20, seed=7)
    b = generate_programs(preset, 20, seed=7)
    assert a == b and len(a) == 20
    assert all(p.llm_calls for p in a)
    assert [p.arrival_s for p in a] == sorted(p.arrival_s for p in a)


def test_parallel_and_sequential_plans_are_the_same_plans():
    par = generate_programs("parallel-plan", 10, seed=2)
    seq = generate_programs("sequential-plan", 10, seed=2)
    for p, s in zip(par, seq):
        pt = sorted(n.duration_s for n in p.nodes if isinstance(n, ToolCall))
        st = sorted(n.duration_s for n in s.nodes if isinstance(n, ToolCall))
        assert pt == st and len(s.llm_calls) == len(pt) + 1 and len(p.llm_calls) == 2


@pytest.mark.skipif(not SWE.exists(), reason="../shared traces not present")
def test_swe_trajectories_become_llm_tool_chains():
    w = load_programs(str(SWE))
    assert len(w.programs) == 5 and sum(len(p.llm_calls) for p in w.programs) == 125
    p = w.programs[0]
    calls = p.llm_calls
    assert calls[0].context_from is None and all(c.context_from == calls[i].id for i, c in enumerate(calls[1:]))
    assert all(isinstance(p.by_id[c.deps[0]], ToolCall) for c in calls[1:])
    w10 = load_programs(str(SWE), num_programs=10, rate=2.0, tool_scale=10)
    tools = [n for n in w10.programs[0].nodes if isinstance(n, ToolCall)]
    base = [n for n in w.programs[0].nodes if isinstance(n, ToolCall)]
    assert tools[0].duration_s == pytest.approx(10 * base[0].duration_s)


def test_program_json_format_and_errors(tmp_path):
    doc = {"programs": [{"id": "p0", "arrival_s": 0.5, "deadline_s": 30, "calls": [
        {"id": "plan", "type": "llm", "prompt_tokens": 800, "output_tokens": 120},
        {"id": "s", "type": "tool", "tool": "web", "duration_s": 1.5, "after": ["plan"]},
        {"id": "answer", "type": "llm", "prompt_tokens": 1400, "output_tokens": 200, "after": ["s"]}]}]}
    f = tmp_path / "progs.json"
    f.write_text(json.dumps(doc, indent=1))
    (p,) = load_programs(str(f)).programs
    assert p.deadline_s == 30 and p.by_id["answer"].context_from == "plan"  # inferred through the tool call
    doc["programs"][0]["calls"][1]["duration_s"] = -1
    f.write_text(json.dumps(doc))
    with pytest.raises(UserError, match=r"progs.json: programs\[0\].*duration_s"):
        load_programs(str(f))
    lines = tmp_path / "progs.jsonl"
    lines.write_text('{"id": "a", "calls": [{"id": "x", "type": "llm", "prompt_tokens": 5, "output_tokens": 1}]}\n'
                     '{"id": "b", "calls": [{"id": "x", "type": "llm", "prompt_tokens": 5}]}\n')
    with pytest.raises(UserError, match="progs.jsonl:2.*needs prompt_tokens and output_tokens"):
        load_programs(str(lines))


# ---- command line ---------------------------------------------------------------------------------

def test_cli_simulates_programs_and_writes_programs_csv(tmp_path, capsys):
    args = ["simulate", "-w", "map-reduce", "--num-programs", "6", "--program-policy", "atlas"]
    assert main([*args, "--json"]) == 0
    s1 = capsys.readouterr().out
    assert main([*args, "--json"]) == 0
    s2 = capsys.readouterr().out
    a, b = json.loads(s1), json.loads(s2)
    a.pop("wall_s"), b.pop("wall_s")
    assert a == b and a["programs"]["completed"] == 6 and a["programs"]["policy"] == "atlas"
    assert main([*args, "-o", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Job completion time" in out and "program policy atlas" in out
    assert (tmp_path / "programs.csv").read_text().startswith("program,kind,")


@pytest.mark.parametrize("args, msg", [
    (["-w", "react", "--qps", "3"], "--qps applies to request traces"),
    (["-w", "react", "--program-policy", "nope"], "unknown program policy"),
    (["-w", "react", "--program-option", "ttl=3", "--program-policy", "continuum"], "unknown option"),
    (["-w", "react", "--program-policy", "plas", "--scheduler", "sarathi"], "orders calls itself"),
])
def test_cli_program_errors_are_one_line(args, msg, capsys):
    assert main(["simulate", "--num-programs", "3", *args]) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1


@pytest.mark.parametrize("policy, opts", [("request-fcfs", {}), ("continuum", {"ttl_s": 9.0}), ("kvflow", {})])
def test_macro_steps_are_exact_for_programs(policy, opts):
    """Output blocks are cached inside macro-steps too: single steps and macro-steps give the same run."""
    progs = generate_programs("chat-sessions", 20, rate=8.0, seed=5)
    a = simulate_programs(SimConfig(kv_blocks=500, macro_steps=True), progs, policy, opts)
    b = simulate_programs(SimConfig(kv_blocks=500, macro_steps=False), progs, policy, opts)
    assert a.rows == b.rows and a.programs == b.programs
    s = a.summary
    assert s["programs"]["prefill_tokens"]["context_saved"] > 0 and s["preemptions"] > 0
    assert (s["programs"]["pins"]["pin_evictions"] > 0) == (policy == "continuum")
    # pinned KV yields when it would otherwise idle the engine (every program completes, no deadlock)
    assert (s["programs"]["pins"]["released_idle_blocks"] > 0) == (policy == "continuum")
    assert s["programs"]["completed"] == 20


def test_cli_rollout_compares_modes(capsys):
    assert main(["rollout", "--steps", "2", "--num-prompts", "4", "--group-size", "4", "--json"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["mode"] for r in rows] == ["sync", "april", "async"]
    assert all(r["consumed_samples"] == 2 * 4 * 4 for r in rows)
    assert main(["rollout", "--mode", "april", "--over-provision", "-1"]) == 2
    assert "--over-provision" in capsys.readouterr().err


# ---- CPU KV tier and KVFlow prefetch -------------------------------------------------------------------

def test_cpu_tier_offloads_evicted_units_and_loads_them_back():
    kv = KVCacheManager(6, 16, host_blocks=3)
    a = _seq("a", 64, (1, 2, 3, 4))
    kv.allocate(a, 64, NO_HIT)
    kv.free(a)  # 4 cached units, LRU order tail first: 4, 3, 2, 1
    b = _seq("b", 80, tuple(range(10, 15)))
    kv.allocate(b, 80, NO_HIT)  # 5 blocks: evicts a's units 4, 3, 2 (tail first) into the 3-block CPU tier
    assert kv.offloaded_blocks == 3 and kv.host_used == 3
    kv.check_invariants([b])
    kv.free(b)
    a2 = _seq("a2", 64, (1, 2, 3, 4))
    hit = kv.find_prefix(a2)  # unit 1 on the GPU, units 2-3 in CPU memory; unit 4 is never hit (last token)
    assert (hit.num_units, hit.tokens, hit.host_units, hit.host_blocks) == (3, 48, 2, 2)
    assert kv.can_allocate(a2, 16, hit)
    kv.allocate(a2, 16, hit)
    assert kv.pending_load_blocks == 2 and kv.loaded_blocks == 2
    # the 3 GPU blocks it took evicted 3 of b's units into CPU memory, pushing a's unit 4 out of it
    assert kv.offloaded_blocks == 6 and kv.host_used == 3
    assert a2.slot_tokens == 64 and len(a2.held_units) == 4  # 3 hit units + the recomputed 4th
    kv.check_invariants([a2])


def test_prefetch_brings_host_units_back_as_evictable_cache():
    kv = KVCacheManager(4, 16, host_blocks=8)
    a = _seq("a", 64, (1, 2, 3, 4))
    kv.allocate(a, 64, NO_HIT)
    kv.free(a)
    c = _seq("c", 64, (7, 8, 9, 10))
    kv.allocate(c, 64, NO_HIT)  # evicts all of a into CPU memory
    assert kv.host_used == 4
    kv.free(c)
    assert kv.prefetch([h for h, _ in a.units]) == 4  # evicts c's cached units to make room
    assert kv.prefetched_blocks == 4 and kv.pending_load_blocks == 0  # off the critical path
    hit = kv.find_prefix(_seq("a3", 64, (1, 2, 3, 4)))
    assert hit.host_units == 0 and hit.num_units == 3
    kv.check_invariants([])


def test_cpu_tier_cuts_recomputation_and_is_charged_pcie_time():
    progs = generate_programs("react", 16, rate=6.0, seed=4)
    no_cpu = simulate_programs(SimConfig(kv_blocks=700), progs, "request-fcfs")
    cpu = simulate_programs(SimConfig(kv_blocks=700, cpu_kv_gb=20), progs, "request-fcfs")
    a, b = no_cpu.summary, cpu.summary
    assert "cpu_kv" not in a and b["cpu_kv"]["loaded_blocks"] > 0
    assert b["programs"]["prefill_tokens"]["context_recomputed"] < a["programs"]["prefill_tokens"]["context_recomputed"]
    # KVFlow prefetches idle programs' contexts before their tools end; macro-steps stay exact with the tier
    kf = simulate_programs(SimConfig(kv_blocks=700, cpu_kv_gb=20), progs, "kvflow")
    kf1 = simulate_programs(SimConfig(kv_blocks=700, cpu_kv_gb=20, macro_steps=False), progs, "kvflow")
    assert kf.summary["programs"]["prefetches"] > 0 and kf.summary["cpu_kv"]["prefetched_blocks"] > 0
    assert kf.rows == kf1.rows
    off = simulate_programs(SimConfig(kv_blocks=700, cpu_kv_gb=20), progs, "kvflow", {"prefetch": False})
    assert off.summary["programs"]["prefetches"] == 0


def test_compare_runs_program_policies_as_variants(capsys):
    args = ["compare", "-w", "react", "--num-programs", "12", "--kv-blocks", "600", "--variant", "base=",
            "--variant", "cont=program_policy=continuum,program_options.ttl_s=30", "--qps", "6", "-j", "1"]
    assert main([*args, "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    by = {p["variant"]: p["summary"]["programs"] for p in res["points"]}
    assert by["base"]["policy"] == "request-fcfs" and by["cont"]["policy"] == "continuum"
    assert by["cont"]["pins"]["pins"] > 0 and by["base"]["pins"]["pins"] == 0
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "Programs" in out and "programs/s" in out


@pytest.mark.parametrize("preempt", [True, False])
def test_plas_preempts_a_call_of_a_program_with_more_service(preempt):
    long_ = Program("long", 0.0, (LLMCall("a", 2000, 50), ToolCall("t", 0.0, deps=("a",)),
                                  LLMCall("b", 2100, 2000, deps=("t",), context_from="a")))
    short = Program("short", 2.0, (LLMCall("a", 300, 20),))
    res = simulate_programs(SimConfig(max_num_seqs=1), [long_, short], "plas",
                            {"discretize": False, "preempt": preempt})
    rows = rows_by_call(res)
    assert rows["long/a"]["finish_s"] < 2.0 < rows["long/b"]["finish_s"]  # b runs when short arrives
    if preempt:  # short (0 s attained) displaces b (its program attained ~0.5 s) and finishes first
        assert rows["short/a"]["finish_s"] < rows["long/b"]["finish_s"] and rows["long/b"]["preemptions"] == 1
        assert rows["short/a"]["queue_s"] < 0.05
    else:
        assert rows["short/a"]["finish_s"] > rows["long/b"]["finish_s"] and rows["long/b"]["preemptions"] == 0


def test_program_deadline_flag_applies_to_programs_without_one(capsys):
    assert main(["simulate", "-w", "react", "--num-programs", "5", "--program-deadline", "1ms", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)["programs"]["deadline"]
    assert (d["programs"], d["met"]) == (5, 0)
    assert main(["simulate", "-w", "react", "--num-programs", "5", "--program-deadline", "soon"]) == 2
    assert "program-deadline" in capsys.readouterr().err


def test_pin_expires_at_its_ttl_even_if_the_next_call_waits():
    nodes = (LLMCall("c0", 1000, 10), ToolCall("t0", 0.1, "bash", deps=("c0",)),
             LLMCall("c1", 1100, 10, deps=("t0",), context_from="c0"))
    hog = Program("hog", 0.01, (LLMCall("a", 200, 2000),))  # takes the only seat while p is in its tool call
    res = simulate_programs(SimConfig(max_num_seqs=1), [Program("p", 0.0, nodes), hog], "continuum", {"ttl_s": 0.2})
    rows = rows_by_call(res)
    assert rows["p/c1"]["queue_s"] > 1.0  # c1 came back after 0.1 s and waited for the seat long past the TTL
    pins = res.summary["programs"]["pins"]
    assert pins["pins_expired_blocks"] == (1000 + 10 - 1) // 16 and pins["pin_hits"] == 0
    # nothing evicted the expired units (the hog needs 13 blocks of 28k): c1 still reuses the whole context
    assert rows["p/c1"]["prefix_hit_tokens"] == (1000 + 10 - 1) // 16 * 16


def test_coarser_program_hashes_floor_reuse_to_their_size():
    res = simulate_programs(SimConfig(program_hash_tokens=48), [plan_program()], "program-fcfs")
    assert rows_by_call(res)["p/join"]["prefix_hit_tokens"] == 519 // 48 * 48  # 480, not 16-token 512
    with pytest.raises(UserError, match="one must divide the other"):
        simulate_programs(SimConfig(program_hash_tokens=24), [plan_program()])


def test_starving_call_is_promoted_to_the_first_queue():
    long_ = Program("long", 0.0, (LLMCall("a", 2000, 400), ToolCall("t", 0.0, deps=("a",)),
                                  LLMCall("b", 2500, 50, deps=("t",), context_from="a")))
    shorts = [Program(f"s{i}", 1.0 + 0.4 * i, (LLMCall("a", 300, 60),)) for i in range(30)]

    def run(**opts):
        return rows_by_call(simulate_programs(SimConfig(max_num_seqs=1), [long_, *shorts], "plas",
                                              {"discretize": False, **opts}))

    never = run()
    assert never["long/b"]["finish_s"] > max(never[f"s{i}/a"]["finish_s"] for i in range(30))  # starves to the end
    res = simulate_programs(SimConfig(max_num_seqs=1), [long_, *shorts], "plas",
                            {"discretize": False, "starvation_s": 2.0})
    rows = rows_by_call(res)
    assert res.summary["programs"]["promotions"] == 1
    # promoted 2 s after it was issued, it takes the seat when the running short call ends
    assert rows["long/b"]["queue_s"] < 2.0 + 1.0
    assert rows["long/b"]["finish_s"] < max(rows[f"s{i}/a"]["finish_s"] for i in range(30))
