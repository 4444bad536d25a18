"""Invariants over random small workloads, and macro-step == single-step equivalence."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokensched.engine import Replica
from tokensched.hardware import get_gpu
from tokensched.kv_cache import KVCacheManager
from tokensched.metrics import request_rows, summarize
from tokensched.models import get_model
from tokensched.policies import get_scheduler
from tokensched.request import Request
from tokensched.scheduler import SchedulerConfig
from tokensched.sequence import SeqStatus
from tokensched.simulator import Simulator
from tokensched.timing import RooflineTiming

TIMING = RooflineTiming(get_model("llama-3.1-8b"), get_gpu("h100"), 1)


@st.composite
def scenarios(draw):
    n = draw(st.integers(1, 25))
    bs = draw(st.sampled_from([4, 16]))
    reqs = []
    t = 0.0
    cover = draw(st.booleans())  # hashes go on over the outputs (program calls): generated blocks are cached
    for i in range(n):
        t += draw(st.sampled_from([0.0, 0.001, 0.01, 0.05, 0.3]))
        prompt = draw(st.integers(1, 120))
        out = draw(st.integers(1, 60))
        group = draw(st.integers(0, 3))
        shared = draw(st.integers(0, 4))
        hashes = tuple(group * 1000 + j for j in range(shared)) + tuple(10_000 + i * 100 + j for j in range(8))
        if cover:  # blocks holding generated tokens are this request's own content
            own = prompt // 16
            hashes = hashes[:own] + tuple(20_000 + i * 100 + j for j in range(-(-(prompt + out) // 16) - own))
        else:
            hashes = hashes[: -(-prompt // 16)]
        reqs.append(Request(str(i), t, prompt, out, block_hashes=hashes, hash_block_size=16,
                            hashes_cover_output=cover))
    longest = max(r.prompt_tokens + r.output_tokens for r in reqs)
    blocks = -(-longest // bs) + draw(st.integers(0, 40))
    return dict(
        requests=reqs, bs=bs, blocks=blocks,
        policy=draw(st.sampled_from(["vllm", "sarathi", "orca"])),
        budget=draw(st.sampled_from([8, 32, 256])),
        max_seqs=draw(st.integers(1, 8)),
        prefix=draw(st.booleans()),
        host=draw(st.sampled_from([0, 0, 8, 64])),  # CPU KV tier (blocks)
    )


class CheckedReplica(Replica):
    """Checks block conservation and reference counts after every step."""

    def finish_step(self, step):
        assert step.end >= step.start
        done = super().finish_step(step)
        self.kv.check_invariants(self.scheduler.running)
        return done


def run(sc, macro):
    kv = KVCacheManager(sc["blocks"], sc["bs"], enable_prefix_caching=sc["prefix"], host_blocks=sc["host"])
    rep = CheckedReplica(SchedulerConfig(sc["max_seqs"], sc["budget"]), get_scheduler(sc["policy"]).factory(), kv,
                         TIMING, max_model_len=100_000, macro_steps=macro, load_s_per_block=1e-4)
    Simulator(rep, sc["requests"]).run()
    return rep


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_invariants_and_macro_equivalence(sc):
    single = run(sc, macro=False)
    rec = single.metrics
    # every request finishes exactly once, with exactly its tokens
    assert sorted(s.id for s in rec.finished) == sorted(r.id for r in sc["requests"])
    for s in rec.finished:
        assert s.status is SeqStatus.FINISHED
        assert s.num_generated == s.output_tokens
        assert s.num_computed == s.prompt_tokens + s.output_tokens - 1
        r = s.request
        assert r.arrival_s <= s.first_scheduled_s <= s.first_token_s <= s.finish_s
    # nothing leaked: everything is free or cached-and-evictable
    assert single.kv.used_blocks == 0
    single.kv.check_invariants([])
    # the macro-stepped run is identical, number for number
    macro = run(sc, macro=True)
    assert request_rows(macro.metrics.finished) == request_rows(rec.finished)
    kw = dict(preemptions=0)
    assert summarize(macro.metrics, macro.kv, **kw) == summarize(rec, single.kv, **kw)
    assert macro.scheduler.num_preemptions == single.scheduler.num_preemptions
    assert macro.metrics.iterations == rec.iterations
