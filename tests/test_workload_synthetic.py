"""Generators, presets and transforms: determinism, statistics, prefix structure, exact small cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tokensched.errors import UserError
from tokensched.request import Request
from tokensched.workload import (
    PRESETS,
    PrefixGroups,
    WorkloadSpec,
    coarsen_hashes,
    default_preset,
    empirical,
    gamma,
    generate,
    get_preset,
    ideal_prefix_hit_rate,
    limit,
    load_workload,
    lognormal,
    poisson,
    poissonize,
    rebase,
    rescale_rate,
    take_window,
)

RNG = np.random.Generator


def rng(seed: int = 0) -> RNG:
    return np.random.Generator(np.random.PCG64(seed))


def gaps(reqs: list[Request]) -> np.ndarray:
    return np.diff([r.arrival_s for r in reqs])


# ----------------------------------------------------------------------------- generators


@pytest.mark.parametrize("name", list(PRESETS))
def test_generate_is_deterministic(name: str) -> None:
    spec = PRESETS[name].spec
    a, b = generate(spec, 300, seed=7), generate(spec, 300, seed=7)
    assert a == b and [r.extra for r in a] == [r.extra for r in b]
    assert generate(spec, 300, seed=8) != a
    assert [r.id for r in a] == [str(i) for i in range(300)]
    assert all(x.arrival_s <= y.arrival_s for x, y in zip(a, a[1:])) and a[0].arrival_s == 0.0


@pytest.mark.parametrize("cv", [1.0, 0.5, 3.0])
def test_arrival_process_rate_and_cv(cv: float) -> None:
    t = gamma(4.0, cv).sample(rng(1), 40000)
    d = np.diff(t)
    assert t[0] == 0.0
    assert d.mean() == pytest.approx(0.25, rel=0.05)
    assert d.std() / d.mean() == pytest.approx(cv, rel=0.1)


def test_poisson_is_gamma_cv1() -> None:
    assert poisson(2.0) == gamma(2.0, 1.0)


def test_lognormal_median_and_bounds() -> None:
    x = lognormal(500, 1.0, 10, 4000).sample(rng(), 20000)
    assert np.median(x) == pytest.approx(500, rel=0.05)
    assert x.min() >= 10 and x.max() <= 4000


def test_empirical_inverse_cdf() -> None:
    d = empirical([(0.0, 10), (0.5, 20), (1.0, 100)])
    x = d.sample(rng(), 50000)
    assert x.min() >= 10 and x.max() <= 100
    assert np.median(x) == pytest.approx(20, abs=1)
    assert np.quantile(x, 0.75) == pytest.approx(60, abs=2)  # halfway between 20 and 100


@pytest.mark.parametrize(
    "make,pattern",
    [
        (lambda: poisson(0), "arrival rate"),
        (lambda: gamma(1, -1), "inter-arrival CV"),
        (lambda: lognormal(0, 1), "lognormal median"),
        (lambda: lognormal(10, 1, 5, 2), "lognormal bounds"),
        (lambda: empirical([(0.0, 1)]), "at least two"),
        (lambda: empirical([(0.1, 1), (1.0, 2)]), "quantiles must rise"),
        (lambda: empirical([(0.0, 5), (1.0, 2)]), "non-decreasing"),
        (lambda: PrefixGroups(0, 100), "num_groups"),
        (lambda: PrefixGroups(2, 100, popularity="pareto"), "popularity"),
        (lambda: PrefixGroups(2, 100, common_prefix_tokens=200), "common prefix"),
        (lambda: generate(PRESETS["chat"].spec, 0, 1), "number of requests"),
    ],
)
def test_generator_argument_errors(make, pattern: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UserError, match=pattern):
        make()


def test_prefix_groups_hash_structure() -> None:
    spec = WorkloadSpec(poisson(1.0), empirical([(0, 100), (1, 300)]), empirical([(0, 1), (1, 5)]),
                        prefix=PrefixGroups(3, 64, "uniform", common_prefix_tokens=32))
    reqs = generate(spec, 200, seed=3)
    unique_part: set[int] = set()
    for r in reqs:
        assert len(r.block_hashes) == math.ceil(r.prompt_tokens / 16) and r.hash_block_size == 16
        g = r.extra["prefix_group"]
        mine = r.block_hashes[4:]  # 64-token system prompt = 4 blocks (every prompt here is > 64 tokens)
        assert not unique_part & set(mine)
        unique_part.update(mine)
        for s in reqs[:20]:
            same = r.block_hashes[:4] == s.block_hashes[:4]
            assert same == (s.extra["prefix_group"] == g)
            assert r.block_hashes[:2] == s.block_hashes[:2]  # the 32-token common prefix
    assert {r.extra["prefix_group"] for r in reqs} == {0, 1, 2}
    # no request-unique hash ever equals a group/common hash
    shared = {h for r in reqs for h in r.block_hashes[:4]}
    assert not shared & unique_part


def test_short_prompt_never_fully_shared() -> None:
    spec = WorkloadSpec(poisson(1.0), empirical([(0, 20), (1, 20)]), empirical([(0, 1), (1, 1)]),
                        prefix=PrefixGroups(1, 1024))
    a, b = generate(spec, 2, seed=0)
    assert a.block_hashes[0] == b.block_hashes[0] and a.block_hashes[1] != b.block_hashes[1]


def test_max_total_tokens_cap() -> None:
    spec = WorkloadSpec(poisson(1.0), empirical([(0, 900), (1, 1000)]), empirical([(0, 50), (1, 2000)]),
                        max_total_tokens=1024)
    for r in generate(spec, 500, seed=0):
        assert r.prompt_tokens + r.output_tokens <= 1024 and r.prompt_tokens >= 1


# ----------------------------------------------------------------------------- presets


def test_preset_registry() -> None:
    assert default_preset == "chat" and {"chat", "code", "long-context"} <= set(PRESETS)
    for name, p in PRESETS.items():
        assert p.name == name and p.description and p.source
    with pytest.raises(UserError, match="unknown preset 'nope'; presets: chat, code, long-context"):
        get_preset("nope")


def test_chat_preset_statistics() -> None:
    reqs = generate(PRESETS["chat"].spec, 5000, seed=11)
    assert np.median([r.prompt_tokens for r in reqs]) == pytest.approx(1020, rel=0.10)
    assert np.median([r.output_tokens for r in reqs]) == pytest.approx(129, rel=0.10)
    assert len(reqs) / reqs[-1].arrival_s == pytest.approx(5.53, rel=0.10)
    d = gaps(reqs)
    assert d.std() / d.mean() == pytest.approx(1.09, rel=0.15)


def test_code_preset_statistics() -> None:
    reqs = generate(PRESETS["code"].spec, 5000, seed=11)
    assert np.median([r.prompt_tokens for r in reqs]) == pytest.approx(1469, rel=0.10)
    assert np.median([r.output_tokens for r in reqs]) == pytest.approx(13, abs=1)
    assert len(reqs) / reqs[-1].arrival_s == pytest.approx(2.57, rel=0.15)
    d = gaps(reqs)
    assert d.std() / d.mean() > 2.0  # bursty


def test_long_context_preset_statistics() -> None:
    reqs = generate(PRESETS["long-context"].spec, 2000, seed=5)
    prompts = np.array([r.prompt_tokens for r in reqs])
    assert np.median(prompts) == pytest.approx(6909, rel=0.10)
    assert prompts.mean() == pytest.approx(12035, rel=0.15)
    assert all(r.prompt_tokens + r.output_tokens <= 131072 for r in reqs)
    assert 0.30 <= ideal_prefix_hit_rate(reqs, 512) <= 0.45
    block0 = {coarsen_hashes(r.block_hashes, r.prompt_tokens, 16, 512)[0] for r in reqs}
    assert len(block0) == 1  # every request shares its first 512-token block, as in Mooncake
    assert len(reqs) / reqs[-1].arrival_s == pytest.approx(3.40, rel=0.10)


def test_load_workload_preset_with_qps_override() -> None:
    w = load_workload("code", num_requests=None, qps=20.0, seed=1)
    assert w.format == "preset" and len(w) == 1000
    assert w.rate == pytest.approx(20.0, rel=0.3)
    assert load_workload("code", num_requests=None, qps=20.0, seed=1).requests == w.requests
    assert len(load_workload("chat", num_requests=50, qps=None, seed=0)) == 50


# ----------------------------------------------------------------------------- transforms


def R(i: int, t: float) -> Request:
    return Request(str(i), t, 10, 2)


def times(reqs: list[Request]) -> list[float]:
    return [r.arrival_s for r in reqs]


def test_rebase_and_window() -> None:
    reqs = [R(0, 5.0), R(1, 7.0), R(2, 9.0), R(3, 12.0)]
    assert times(rebase(reqs)) == [0.0, 2.0, 4.0, 7.0]
    w = take_window(reqs, 6.0, 12.0)
    assert [r.id for r in w] == ["1", "2"] and times(w) == [0.0, 2.0]
    assert times(reqs) == [5.0, 7.0, 9.0, 12.0]  # input untouched
    with pytest.raises(UserError, match="contains no requests"):
        take_window(reqs, 20, 30)
    with pytest.raises(UserError, match="need 0 <= start < end"):
        take_window(reqs, 5, 5)


def test_limit() -> None:
    reqs = [R(0, 3.0), R(1, 1.0), R(2, 2.0)]
    assert [r.id for r in limit(reqs, 2)] == ["1", "2"]
    assert len(limit(reqs, 10)) == 3
    for bad in (0, -1, 1.5, True):
        with pytest.raises(UserError, match="positive integer"):
            limit(reqs, bad)  # type: ignore[arg-type]


def test_rescale_rate_exact() -> None:
    reqs = [R(0, 10.0), R(1, 11.0), R(2, 14.0), R(3, 18.0)]  # n=4, span 8 -> 0.5 req/s
    out = rescale_rate(reqs, 1.0)  # span must become 4
    assert times(out) == pytest.approx([0.0, 0.5, 2.0, 4.0])
    assert len(out) / (out[-1].arrival_s - out[0].arrival_s) == pytest.approx(1.0)
    with pytest.raises(UserError, match="rate"):
        rescale_rate(reqs, 0)
    with pytest.raises(UserError, match="rate"):
        rescale_rate(reqs, float("nan"))


def test_rescale_offline_batch_is_poisson_and_seeded() -> None:
    reqs = [R(i, 0.0) for i in range(4000)]
    a = rescale_rate(reqs, 8.0, seed=2)
    assert a == rescale_rate(reqs, 8.0, seed=2) and a != rescale_rate(reqs, 8.0, seed=3)
    assert [r.id for r in a] == [r.id for r in reqs]
    assert len(a) / a[-1].arrival_s == pytest.approx(8.0, rel=0.05)
    assert a == poissonize(reqs, 8.0, seed=2)


def test_coarsen_hashes_and_ideal_hit_rate() -> None:
    assert coarsen_hashes((1, 2, 3, 4, 5), 70, 16, 32) == (2, 4, 5)
    assert coarsen_hashes((1, 2), 20, 16, 16) == (1, 2)
    with pytest.raises(UserError, match="not a multiple"):
        coarsen_hashes((1,), 10, 16, 24)
    a = Request("a", 0.0, 40, 1, block_hashes=(1, 2, 3))  # 16 + 16 + 8 tokens
    b = Request("b", 1.0, 40, 1, block_hashes=(1, 2, 9))
    c = Request("c", 2.0, 40, 1, block_hashes=(1, 7, 3))  # block 2 hash seen, but block 1 missed: no hit
    assert ideal_prefix_hit_rate([a, b, c]) == pytest.approx((32 + 16) / 120)
    assert ideal_prefix_hit_rate([a, b, c], block_size=32) == pytest.approx(32 / 120)
    assert ideal_prefix_hit_rate([R(0, 0.0)]) == 0.0
