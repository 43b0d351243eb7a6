"""Each schedule constructor pinned to its cited formula, written out here; validation of every field;
the ``S.LRScheduler`` adapter.

The formulas below are test-local restatements of the papers' (and peers') definitions in their own
form (multiplier and closed form), not the package's phase machinery, so they check the constructors
rather than repeat them. Conventions (issue 3): the first update uses step 0; warmup is linear from
``init_lr`` at 0 to the peak at ``warmup_steps``; ``f(t) = final_lr`` for ``t >= total_steps``.
"""

from __future__ import annotations

import io
import math
import re

import pytest
import torch

from lrsched_fused import schedules as S
from lrsched_fused.schedules import Phase, Schedule

REL = 1e-12  # float64 restatements differ from the package's form only by rounding


def assert_matches(sched: Schedule, formula, steps) -> None:
    got = [sched(t) for t in steps]
    want = [formula(t) for t in steps]
    scale = max(max(abs(w) for w in want), 1e-300)
    worst = max(abs(g - w) for g, w in zip(got, want)) / scale
    assert worst <= REL, f"{sched!r}: max rel err {worst:.3g} (steps {list(steps)[:5]}...)"


def every_step(total: int):
    return range(0, total + 3)


def sampled_steps(total: int, warmup: int = 0):
    """Edges, their neighbours and a spread of interior points of a long run."""
    pts = {0, 1, warmup - 1, warmup, warmup + 1, total - 1, total, total + 1, 2**40}
    pts |= {int(total * k / 97) for k in range(98)}
    return sorted(t for t in pts if t >= 0)


def warmup_value(t: int, warmup: int, init: float, peak: float) -> float:
    """Linear warmup: ``init + (peak - init) t / W``."""
    return init + (peak - init) * t / warmup


# ---------------------------------------------------------------------------------------------------
# formulas
# ---------------------------------------------------------------------------------------------------
def linear_formula(peak, total, warmup=0, final=0.0, init=0.0):
    def f(t):
        if t >= total:
            return final
        if t < warmup:
            return warmup_value(t, warmup, init, peak)
        return peak - (peak - final) * (t - warmup) / (total - warmup)
    return f


def cosine_formula(peak, total, warmup=0, final=0.0, init=0.0):
    """SGDR (Loshchilov & Hutter, arXiv 1608.03983): ``final + (peak - final)(1 + cos(pi z)) / 2``."""
    def f(t):
        if t >= total:
            return final
        if t < warmup:
            return warmup_value(t, warmup, init, peak)
        z = (t - warmup) / (total - warmup)
        return final + 0.5 * (peak - final) * (1.0 + math.cos(math.pi * z))
    return f


def rex_paper_formula(peak, total, warmup=0, final=0.0, init=0.0):
    """REX (Chen, Wolfe, Kyrillidis, arXiv 2107.04197), the paper's profile ``(1-z) / (1/2 + (1-z)/2)``."""
    def f(t):
        if t >= total:
            return final
        if t < warmup:
            return warmup_value(t, warmup, init, peak)
        z = (t - warmup) / (total - warmup)
        return final + (peak - final) * (1.0 - z) / (0.5 + 0.5 * (1.0 - z))
    return f


def rex_code_formula(peak, total, warmup=0, final=0.0, init=0.0):
    """REX as in the authors' code and most ports: ``z' / (0.1 + 0.9 z')``, ``z' = 1 - z``."""
    def f(t):
        if t >= total:
            return final
        if t < warmup:
            return warmup_value(t, warmup, init, peak)
        zp = 1.0 - (t - warmup) / (total - warmup)
        return final + (peak - final) * zp / (0.1 + 0.9 * zp)
    return f


def wsd_formula(peak, total, warmup, decay_steps, decay, final=0.0, init=0.0):
    """WSD (Hu et al. arXiv 2404.06395; Haegele et al. arXiv 2405.18392 ``wsd_schedule`` cooldowns in
    their multiplier form ``fe + (1 - fe) c(p)``, written here with absolute lrs)."""
    cooldown = {
        "linear": lambda p: 1.0 - p,
        "cosine": lambda p: 0.5 * (1.0 + math.cos(math.pi * p)),
        "1-sqrt": lambda p: 1.0 - math.sqrt(p),
        "square": lambda p: 1.0 - p * p,
    }

    def f(t):
        if t >= total:
            return final
        if t < warmup:
            return warmup_value(t, warmup, init, peak)
        if t < total - decay_steps:
            return peak
        p = (t - (total - decay_steps)) / decay_steps
        if decay == "exp":
            return peak * (final / peak) ** p
        return final + (peak - final) * cooldown[decay](p)
    return f


def power_formula(max_lr, a, b, total, warmup=0, decay_fraction=0.0, decay="linear", final=0.0, batch_size=1):
    """Power scheduler (Shen et al., arXiv 2408.13359): ``eta(n) = min(max_lr, batch_size a n^b)``; linear
    warmup to ``eta(warmup)``; then ``eta(n)``; a decay over the last ``round(fraction * total)`` units."""
    n_decay = round(decay_fraction * total)

    def eta(n):
        return max_lr if n == 0 and b < 0 else min(max_lr, batch_size * a * n ** b)

    base = wsd_formula(eta(total - n_decay), total, 0, n_decay, decay, final)

    def f(n):
        if n >= total:
            return final if n_decay else eta(total)
        if n < warmup:
            return n / warmup * eta(warmup)
        if n < total - n_decay:
            return eta(n)
        return base(n)
    return f


def infinite_formula(peak, total, warmup, cooldown_steps, const, anneal, final, cooldown):
    """Infinite schedule (Ibrahim et al., arXiv 2403.08763), as the authors' ``infinite_lr``: warmup,
    cooldown to ``eta_c``, constant, anneal ``eta_c exp(-ln(eta_c / eta_min) p)``."""
    timescale = 10.0

    def g(p):
        return 1.0 / math.sqrt(1.0 + timescale * p) - 1.0

    def f(n):
        if n >= total:
            return final if anneal else const
        if n < warmup:
            return peak * n / warmup
        if n < warmup + cooldown_steps:
            p = (n - warmup) / cooldown_steps
            if cooldown == "cosine":
                return const + (peak - const) / 2.0 * (1.0 + math.cos(math.pi * p))
            if cooldown == "linear":
                return peak - (peak - const) * p
            return peak + (const - peak) * g(p) / g(1.0)
        if n < total - anneal:
            return const
        p = (n - (total - anneal)) / anneal
        return const * math.exp(-math.log(const / final) * p)
    return f


def rewarm_formula(base, at, warmup, peak, total, final, decay, init):
    """Re-warming (Gupta et al., arXiv 2308.04014): the old schedule, then linear warmup from ``init``
    (default: the old value at ``at``) and a decay to ``final`` at ``total``."""
    start = base(at) if init is None else init
    tail = wsd_formula(peak, total - at - warmup, 0, total - at - warmup, decay, final)

    def f(t):
        if t < at:
            return base(t)
        if t >= total:
            return final
        if t < at + warmup:
            return warmup_value(t - at, warmup, start, peak)
        return tail(t - at - warmup)
    return f


# ---------------------------------------------------------------------------------------------------
# pins
# ---------------------------------------------------------------------------------------------------
SHORT = dict(peak=3e-3, total=40, warmup=7, final=2e-4, init=1e-4)
LONG = dict(peak=3e-4, total=1_000_003, warmup=2_017, final=0.0, init=0.0)


@pytest.mark.parametrize("cfg", [SHORT, LONG, dict(SHORT, warmup=0), dict(SHORT, warmup=40)],
                         ids=["short", "long", "no-warmup", "all-warmup"])
@pytest.mark.parametrize("name, formula", [("linear", linear_formula), ("cosine", cosine_formula)],
                         ids=["linear", "cosine"])
def test_linear_and_cosine_follow_their_formulas(name, formula, cfg):
    sched = getattr(S, name)(cfg["peak"], cfg["total"], cfg["warmup"], final_lr=cfg["final"], init_lr=cfg["init"])
    f = formula(cfg["peak"], cfg["total"], cfg["warmup"], cfg["final"], cfg["init"])
    steps = every_step(cfg["total"]) if cfg["total"] < 100 else sampled_steps(cfg["total"], cfg["warmup"])
    assert_matches(sched, f, steps)


@pytest.mark.parametrize("cfg", [SHORT, LONG], ids=["short", "long"])
@pytest.mark.parametrize("beta, formula", [(0.5, rex_paper_formula), (0.9, rex_code_formula)],
                         ids=["beta0.5-paper", "beta0.9-code"])
def test_rex_follows_the_paper_and_the_code_variant(beta, formula, cfg):
    sched = S.rex(cfg["peak"], cfg["total"], cfg["warmup"], final_lr=cfg["final"], init_lr=cfg["init"], beta=beta)
    f = formula(cfg["peak"], cfg["total"], cfg["warmup"], cfg["final"], cfg["init"])
    steps = every_step(cfg["total"]) if cfg["total"] < 100 else sampled_steps(cfg["total"], cfg["warmup"])
    assert_matches(sched, f, steps)


def test_rex_default_beta_is_the_papers():
    assert S.rex(1.0, 10) == S.rex(1.0, 10, beta=0.5)


@pytest.mark.parametrize("decay", S.DECAY_SHAPES)
@pytest.mark.parametrize("cfg", [
    dict(peak=2e-3, total=50, warmup=5, decay_steps=12, final=1e-5, init=1e-4),
    dict(peak=2e-3, total=50, warmup=0, decay_steps=50, final=1e-5, init=0.0),
    dict(peak=2e-3, total=10_000_019, warmup=2_000, decay_steps=2_000_003, final=3e-5, init=0.0),
], ids=["short", "decay-only", "long"])
def test_wsd_follows_its_formula_for_every_decay_shape(decay, cfg):
    sched = S.wsd(cfg["peak"], cfg["total"], cfg["warmup"], decay_steps=cfg["decay_steps"], decay=decay,
                  final_lr=cfg["final"], init_lr=cfg["init"])
    f = wsd_formula(cfg["peak"], cfg["total"], cfg["warmup"], cfg["decay_steps"], decay, cfg["final"], cfg["init"])
    steps = every_step(cfg["total"]) if cfg["total"] < 100 else sorted(
        set(sampled_steps(cfg["total"], cfg["warmup"])) | {cfg["total"] - cfg["decay_steps"] + k for k in (-1, 0, 1)})
    assert_matches(sched, f, steps)


@pytest.mark.parametrize("total, fraction, want", [(1000, 0.2, 200), (10, 0.25, 2), (10, 0.35, 4), (7, 0.5, 4),
                                                   (100, 0.0, 0), (100, 1.0, 100)],
                         ids=["1000x0.2", "10x0.25-half-even", "10x0.35", "7x0.5", "zero", "all"])
def test_wsd_decay_fraction_rounds_with_python_round(total, fraction, want):
    sched = S.wsd(1.0, total, decay_fraction=fraction)
    assert sched.phases[-1].length == want == round(fraction * total)
    assert sched == S.wsd(1.0, total, decay_steps=want)


def test_wsd_stable_steps_derives_total():
    assert S.wsd(1.0, warmup_steps=10, stable_steps=70, decay_steps=20) == S.wsd(1.0, 100, 10, decay_steps=20)


@pytest.mark.parametrize("cfg", [
    dict(max_lr=0.02, a=4.6, b=-0.51, total=1000, warmup=50, decay_fraction=0.1, decay="exp", final=1e-4,
         batch_size=1),
    dict(max_lr=0.02, a=4.6, b=-0.51, total=1000, warmup=0, decay_fraction=0.0, decay="linear", final=0.0,
         batch_size=4),
    dict(max_lr=0.02, a=4.6, b=-0.51, total=10**12, warmup=10**9, decay_fraction=0.2, decay="linear", final=0.0,
         batch_size=1),
    dict(max_lr=1e-3, a=1e-6, b=0.3, total=500, warmup=10, decay_fraction=0.3, decay="cosine", final=1e-5,
         batch_size=8),
], ids=["paper-values-exp-decay", "no-decay-batch4", "tokens-1e12", "positive-exponent"])
def test_power_follows_its_formula(cfg):
    sched = S.power(cfg["max_lr"], cfg["a"], cfg["b"], cfg["total"], cfg["warmup"], cfg["decay_fraction"],
                    cfg["decay"], cfg["final"], cfg["batch_size"])
    f = power_formula(cfg["max_lr"], cfg["a"], cfg["b"], cfg["total"], cfg["warmup"], cfg["decay_fraction"],
                      cfg["decay"], cfg["final"], cfg["batch_size"])
    steps = every_step(cfg["total"]) if cfg["total"] <= 1000 else sampled_steps(cfg["total"], cfg["warmup"])
    assert_matches(sched, f, steps)
    assert sched.unit == "tokens"


def test_power_counts_steps_on_request():
    assert S.power(0.02, 4.6, -0.51, 100, unit="steps").unit == "steps"


@pytest.mark.parametrize("cooldown", ["cosine", "linear", "inv-sqrt"])
@pytest.mark.parametrize("cfg", [
    dict(peak=1e-3, total=100, warmup=5, cool=15, const=2.5e-4, anneal=20, final=1e-4),
    dict(peak=1e-3, total=100, warmup=0, cool=30, const=2.5e-4, anneal=0, final=0.0),
    dict(peak=3e-4, total=2_000_000, warmup=100_000, cool=200_000, const=7.5e-5, anneal=400_000, final=3e-5),
], ids=["short", "no-anneal", "long"])
def test_infinite_follows_the_authors_formula(cooldown, cfg):
    sched = S.infinite(cfg["peak"], cfg["total"], cfg["warmup"], cfg["cool"], cfg["const"], cfg["anneal"],
                       cfg["final"], cooldown=cooldown)
    f = infinite_formula(cfg["peak"], cfg["total"], cfg["warmup"], cfg["cool"], cfg["const"], cfg["anneal"],
                         cfg["final"], cooldown)
    steps = every_step(cfg["total"]) if cfg["total"] <= 100 else sampled_steps(cfg["total"], cfg["warmup"])
    assert_matches(sched, f, steps)


def test_infinite_inv_sqrt_cooldown_is_front_loaded():
    """The inverse-sqrt cooldown drops faster than linear early on (that is its point)."""
    inv = S.infinite(1.0, 100, 0, 50, 0.25, 0, 0.0, cooldown="inv-sqrt")
    lin = S.infinite(1.0, 100, 0, 50, 0.25, 0, 0.0, cooldown="linear")
    assert all(inv(t) < lin(t) for t in range(1, 50))
    assert inv(50) == lin(50) == 0.25


@pytest.mark.parametrize("init", [None, 0.0, 5e-5], ids=["init-default", "init-0", "init-given"])
@pytest.mark.parametrize("base_name, at", [("mid-decay", 60), ("after-end", 130), ("at-0", 0)],
                         ids=["mid-decay", "after-end", "at-0"])
@pytest.mark.parametrize("decay", ["cosine", "linear"])
def test_rewarm_follows_its_formula(init, base_name, at, decay):
    base = S.cosine(1e-3, 100, 10, final_lr=1e-5)
    sched = S.rewarm(base, at_step=at, warmup_steps=8, peak_lr=5e-4, total_steps=at + 60, final_lr=2e-5,
                     decay=decay, init_lr=init)
    f = rewarm_formula(base, at, 8, 5e-4, at + 60, 2e-5, decay, init)
    assert_matches(sched, f, every_step(at + 60))
    assert sched(at) == (base(at) if init is None else init)
    assert sched(at + 8) == 5e-4


def test_rewarm_default_init_does_not_jump():
    base = S.wsd(1e-3, 1000, 100, decay_steps=200)
    sched = S.rewarm(base, at_step=850, warmup_steps=50, peak_lr=1e-3, total_steps=2000)
    assert [sched(t) for t in range(850)] == [base(t) for t in range(850)]
    assert sched(850) == base(850)
    assert abs(sched(851) - sched(850)) < 1e-3 / 50 + 1e-15


def test_constant_is_constant_everywhere():
    sched = S.constant(3e-4)
    assert [sched(t) for t in (0, 1, 7, 2**40, 2**62)] == [3e-4] * 5


def test_tabulated_interpolates_linearly_between_knots():
    sched = S.tabulated([0, 10, 30], [0.0, 1.0, 0.5])
    assert [sched(t) for t in (0, 5, 10, 20, 30, 99)] == [0.0, 0.5, 1.0, 0.75, 0.5, 0.5]


def test_chain_lays_phases_end_to_end():
    sched = S.chain(Phase("linear", 4, 0.0, 1.0), Phase("constant", 3, 1.0), Phase("cosine", 4, 1.0, 0.0),
                    final_value=0.0)
    assert sched.starts == (0, 4, 7) and sched.total == 11
    assert [sched(t) for t in range(12)] == pytest.approx(
        [0, 0.25, 0.5, 0.75, 1, 1, 1, 1, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4)), 0],
        rel=1e-15, abs=1e-17)


@pytest.mark.parametrize("shape", ["linear", "cosine", "1-sqrt", "square", "exp", "rex", "poly", "inv-sqrt"])
def test_decay_to_final_lr_never_undershoots_it(shape):
    """Regression: ``v0 + (v1 - v0) w`` rounds ``v1 - v0`` and could end an ulp below ``final_lr``
    (found by the property tests: cosine 1e-4 -> 1e-6 over 172140925 steps gave 9.999999999999972e-07)."""
    a = {"rex": 0.9, "poly": 2.0, "inv-sqrt": 10.0}.get(shape, 0.0)
    for span in (172_140_925, 999_999_937, 2**40 + 15):
        ph = Phase(shape, span, 1e-4, 1e-6, a=a)
        for t in (span - 1, span - 2, span - 1000):
            assert 1e-6 <= ph.value_at(t, 0) <= 1e-4


def test_huge_steps_keep_float64_precision():
    """Progress at 2**40 is exact integer arithmetic divided once (no float accumulation)."""
    total = 2**41
    sched = S.linear(1.0, total)
    assert sched(2**40) == 0.5
    assert sched(2**40 + 1) == 1.0 - (2**40 + 1) / total


def test_numpy_scalars_are_accepted():
    np = pytest.importorskip("numpy")
    assert S.cosine(np.float64(1e-3), np.int64(100), np.int32(10)) == S.cosine(1e-3, 100, 10)


# ---------------------------------------------------------------------------------------------------
# validation: every invalid field raises ValueError naming it
# ---------------------------------------------------------------------------------------------------
def _cosine(**kw):
    return S.cosine(**{**dict(peak_lr=1e-3, total_steps=100, warmup_steps=10), **kw})


def _wsd(**kw):
    return S.wsd(**{**dict(peak_lr=1e-3, total_steps=100, warmup_steps=10, decay_steps=20), **kw})


def _power(**kw):
    return S.power(**{**dict(max_lr=0.02, a=4.6, b=-0.51, total=1000, warmup=10), **kw})


def _infinite(**kw):
    return S.infinite(**{**dict(peak_lr=1e-3, total_steps=100, warmup_steps=5, cooldown_steps=10, constant_lr=3e-4,
                                anneal_steps=20, final_lr=1e-5), **kw})


def _rewarm(**kw):
    return S.rewarm(**{**dict(schedule=S.cosine(1e-3, 100), at_step=50, warmup_steps=10, peak_lr=1e-3,
                              total_steps=200), **kw})


def _phase(shape="linear", **kw):
    return Phase(**{**dict(shape=shape, length=10, start_value=1.0, end_value=0.5), **kw})


NAN, INF = float("nan"), float("inf")
INVALID = [
    # (id, call, name expected in the message)
    ("constant-lr-negative", lambda: S.constant(-1.0), "lr"),
    ("constant-lr-nan", lambda: S.constant(NAN), "lr"),
    ("constant-lr-string", lambda: S.constant("1e-3"), "lr"),
    ("linear-peak_lr-negative", lambda: S.linear(-1e-3, 100), "peak_lr"),
    ("linear-total_steps-zero", lambda: S.linear(1e-3, 0), "total_steps"),
    ("linear-warmup_steps-above-total", lambda: S.linear(1e-3, 100, 101), "warmup_steps"),
    ("linear-final_lr-negative", lambda: S.linear(1e-3, 100, final_lr=-1e-5), "final_lr"),
    ("linear-init_lr-inf", lambda: S.linear(1e-3, 100, init_lr=INF), "init_lr"),
    ("cosine-peak_lr-nan", lambda: _cosine(peak_lr=NAN), "peak_lr"),
    ("cosine-peak_lr-inf", lambda: _cosine(peak_lr=INF), "peak_lr"),
    ("cosine-total_steps-negative", lambda: _cosine(total_steps=-5), "total_steps"),
    ("cosine-total_steps-fractional", lambda: _cosine(total_steps=2.5), "total_steps"),
    ("cosine-total_steps-bool", lambda: _cosine(total_steps=True), "total_steps"),
    ("cosine-total_steps-above-2**62", lambda: _cosine(total_steps=2**62 + 1), "total_steps"),
    ("cosine-warmup_steps-negative", lambda: _cosine(warmup_steps=-1), "warmup_steps"),
    ("cosine-warmup_steps-above-total", lambda: _cosine(warmup_steps=101), "warmup_steps"),
    ("cosine-final_lr-negative", lambda: _cosine(final_lr=-1.0), "final_lr"),
    ("cosine-init_lr-negative", lambda: _cosine(init_lr=-1.0), "init_lr"),
    ("rex-beta-one", lambda: S.rex(1e-3, 100, beta=1.0), "beta"),
    ("rex-beta-negative", lambda: S.rex(1e-3, 100, beta=-0.1), "beta"),
    ("rex-beta-nan", lambda: S.rex(1e-3, 100, beta=NAN), "beta"),
    ("rex-total_steps-zero", lambda: S.rex(1e-3, 0), "total_steps"),
    ("rex-warmup_steps-above-total", lambda: S.rex(1e-3, 10, 11), "warmup_steps"),
    ("rex-final_lr-negative", lambda: S.rex(1e-3, 10, final_lr=-1.0), "final_lr"),
    ("rex-init_lr-nan", lambda: S.rex(1e-3, 10, init_lr=NAN), "init_lr"),
    ("rex-peak_lr-negative", lambda: S.rex(-1.0, 10), "peak_lr"),
    ("wsd-peak_lr-negative", lambda: _wsd(peak_lr=-1.0), "peak_lr"),
    ("wsd-total_steps-zero", lambda: _wsd(total_steps=0), "total_steps"),
    ("wsd-total_steps-missing", lambda: _wsd(total_steps=None), "total_steps"),
    ("wsd-warmup_steps-negative", lambda: _wsd(warmup_steps=-1), "warmup_steps"),
    ("wsd-warmup_steps-above-total", lambda: _wsd(warmup_steps=101, decay_steps=0), "warmup_steps"),
    ("wsd-decay_steps-and-decay_fraction", lambda: _wsd(decay_fraction=0.2), "decay_fraction"),
    ("wsd-decay_steps-neither", lambda: _wsd(decay_steps=None), "decay_steps"),
    ("wsd-decay_steps-negative", lambda: _wsd(decay_steps=-1), "decay_steps"),
    ("wsd-decay_steps-overlaps-warmup", lambda: _wsd(decay_steps=91), "decay_steps"),
    ("wsd-decay_fraction-above-1", lambda: _wsd(decay_steps=None, decay_fraction=1.5), "decay_fraction"),
    ("wsd-decay_fraction-negative", lambda: _wsd(decay_steps=None, decay_fraction=-0.1), "decay_fraction"),
    ("wsd-decay_fraction-nan", lambda: _wsd(decay_steps=None, decay_fraction=NAN), "decay_fraction"),
    ("wsd-decay-unknown", lambda: _wsd(decay="zigzag"), "decay"),
    ("wsd-decay-exp-final_lr-zero", lambda: _wsd(decay="exp", final_lr=0.0), "final_lr"),
    ("wsd-final_lr-negative", lambda: _wsd(final_lr=-1.0), "final_lr"),
    ("wsd-init_lr-negative", lambda: _wsd(init_lr=-1.0), "init_lr"),
    ("wsd-stable_steps-disagrees", lambda: _wsd(stable_steps=5), "stable_steps"),
    ("wsd-stable_steps-negative", lambda: _wsd(total_steps=None, stable_steps=-3), "stable_steps"),
    ("power-max_lr-zero", lambda: _power(max_lr=0.0), "max_lr"),
    ("power-max_lr-negative", lambda: _power(max_lr=-1.0), "max_lr"),
    ("power-a-zero", lambda: _power(a=0.0), "a"),
    ("power-a-nan", lambda: _power(a=NAN), "a"),
    ("power-b-inf", lambda: _power(b=INF), "b"),
    ("power-total-zero", lambda: _power(total=0), "total"),
    ("power-warmup-negative", lambda: _power(warmup=-1), "warmup"),
    ("power-warmup-above-total", lambda: _power(warmup=1001), "warmup"),
    ("power-decay_fraction-above-1", lambda: _power(decay_fraction=1.5), "decay_fraction"),
    ("power-decay_fraction-overlaps-warmup", lambda: _power(warmup=500, decay_fraction=0.6), "decay_fraction"),
    ("power-decay-unknown", lambda: _power(decay_fraction=0.1, decay="step"), "decay"),
    ("power-decay-exp-final_lr-zero", lambda: _power(decay_fraction=0.1, decay="exp", final_lr=0.0), "final_lr"),
    ("power-final_lr-negative", lambda: _power(final_lr=-1.0), "final_lr"),
    ("power-batch_size-zero", lambda: _power(batch_size=0), "batch_size"),
    ("power-unit-unknown", lambda: _power(unit="epochs"), "unit"),
    ("infinite-peak_lr-negative", lambda: _infinite(peak_lr=-1.0), "peak_lr"),
    ("infinite-total_steps-zero", lambda: _infinite(total_steps=0), "total_steps"),
    ("infinite-warmup_steps-above-total", lambda: _infinite(warmup_steps=101), "warmup_steps"),
    ("infinite-cooldown_steps-negative", lambda: _infinite(cooldown_steps=-1), "cooldown_steps"),
    ("infinite-constant_lr-negative", lambda: _infinite(constant_lr=-1.0), "constant_lr"),
    ("infinite-constant_lr-zero-with-anneal", lambda: _infinite(constant_lr=0.0), "constant_lr"),
    ("infinite-anneal_steps-negative", lambda: _infinite(anneal_steps=-1), "anneal_steps"),
    ("infinite-phases-longer-than-total", lambda: _infinite(anneal_steps=90), "anneal_steps"),
    ("infinite-final_lr-negative", lambda: _infinite(final_lr=-1.0), "final_lr"),
    ("infinite-final_lr-zero-with-anneal", lambda: _infinite(final_lr=0.0), "final_lr"),
    ("infinite-cooldown-unknown", lambda: _infinite(cooldown="square"), "cooldown"),
    ("rewarm-schedule-not-a-schedule", lambda: _rewarm(schedule="cosine"), "schedule"),
    ("rewarm-at_step-negative", lambda: _rewarm(at_step=-1), "at_step"),
    ("rewarm-at_step-past-total", lambda: _rewarm(at_step=195), "at_step"),
    ("rewarm-warmup_steps-negative", lambda: _rewarm(warmup_steps=-1), "warmup_steps"),
    ("rewarm-peak_lr-negative", lambda: _rewarm(peak_lr=-1.0), "peak_lr"),
    ("rewarm-total_steps-zero", lambda: _rewarm(at_step=0, warmup_steps=0, total_steps=0), "total_steps"),
    ("rewarm-final_lr-negative", lambda: _rewarm(final_lr=-1.0), "final_lr"),
    ("rewarm-decay-unknown", lambda: _rewarm(decay="triangle"), "decay"),
    ("rewarm-decay-exp-final_lr-zero", lambda: _rewarm(decay="exp"), "final_lr"),
    ("rewarm-init_lr-negative", lambda: _rewarm(init_lr=-1.0), "init_lr"),
    ("phase-shape-unknown", lambda: _phase(shape="zigzag"), "shape"),
    ("phase-length-negative", lambda: _phase(length=-1), "length"),
    ("phase-length-fractional", lambda: _phase(length=1.5), "length"),
    ("phase-start_value-nan", lambda: _phase(start_value=NAN), "start_value"),
    ("phase-end_value-inf", lambda: _phase(end_value=INF), "end_value"),
    ("phase-a-nan", lambda: _phase(a=NAN), "a"),
    ("phase-b-inf", lambda: _phase(b=-INF), "b"),
    ("phase-c-nan", lambda: _phase(c=NAN), "c"),
    ("phase-span-below-length", lambda: _phase(span=5), "span"),
    ("phase-exp-start_value-zero", lambda: _phase(shape="exp", start_value=0.0), "start_value"),
    ("phase-rex-a-one", lambda: _phase(shape="rex", a=1.0), "Phase.a"),
    ("phase-poly-a-zero", lambda: _phase(shape="poly", a=0.0), "Phase.a"),
    ("phase-inv-sqrt-a-zero", lambda: _phase(shape="inv-sqrt", a=0.0), "Phase.a"),
    ("phase-power-a-zero", lambda: _phase(shape="power", a=0.0, c=1.0), "Phase.a"),
    ("phase-power-c-zero", lambda: _phase(shape="power", a=1.0, c=0.0), "Phase.c"),
    ("schedule-phases-empty", lambda: Schedule(()), "phases"),
    ("schedule-phases-not-phase", lambda: Schedule((1.0,)), "phases[0]"),
    ("schedule-final_value-nan", lambda: Schedule((_phase(),), final_value=NAN), "final_value"),
    ("schedule-unit-unknown", lambda: Schedule((_phase(),), unit="epochs"), "unit"),
    ("schedule-total-above-2**62", lambda: S.chain(_phase(length=2**62), _phase(length=1)), "total"),
    ("schedule-call-t-negative", lambda: S.constant(1.0)(-1), "t"),
    ("schedule-call-t-fractional", lambda: S.constant(1.0)(1.5), "t"),
    ("schedule-scaled-factor-negative", lambda: S.constant(1.0).scaled(-2.0), "factor"),
    ("tabulated-lengths-differ", lambda: S.tabulated([0, 10], [1.0]), "values"),
    ("tabulated-steps-empty", lambda: S.tabulated([], []), "steps"),
    ("tabulated-steps[0]-not-zero", lambda: S.tabulated([1, 10], [1.0, 0.0]), "steps[0]"),
    ("tabulated-steps-not-increasing", lambda: S.tabulated([0, 10, 10], [1.0, 0.5, 0.0]), "steps"),
    ("tabulated-steps-negative", lambda: S.tabulated([0, -3], [1.0, 0.0]), "steps[1]"),
    ("tabulated-values-nan", lambda: S.tabulated([0, 10], [1.0, NAN]), "values[1]"),
    ("from_dict-phases-missing", lambda: S.from_dict({"format": 1}), "phases"),
    ("from_dict-format-unknown", lambda: S.from_dict({**S.constant(1.0).to_dict(), "format": 99}), "format"),
    ("evaluate-steps-negative", lambda: S.evaluate(S.constant(1.0), [0, -1]), "steps"),
    ("evaluate-schedule-not-a-schedule", lambda: S.evaluate(0.1, [0]), "schedule"),
    ("parse-constructor-unknown", lambda: S.parse("triangle(peak_lr=1.0)"), "constructor"),
    ("parse-syntax", lambda: S.parse("wsd(peak_lr=1.0"), "schedule"),
    ("parse-arguments-not-literal", lambda: S.parse("cosine(peak_lr=lr, total_steps=10)"),
     "literals"),
]


@pytest.mark.parametrize("call, name", [(c, n) for _, c, n in INVALID], ids=[i for i, _, _ in INVALID])
def test_invalid_field_raises_value_error_naming_it(call, name):
    with pytest.raises(ValueError, match=re.escape(name)):
        call()


# ---------------------------------------------------------------------------------------------------
# the LRScheduler adapter
# ---------------------------------------------------------------------------------------------------
def _torch_opt(groups: int = 1, lr: float = 1.0) -> torch.optim.Optimizer:
    params = [{"params": [torch.nn.Parameter(torch.zeros(2))]} for _ in range(groups)]
    return torch.optim.SGD(params, lr=lr)


SCHED = S.wsd(2e-3, total_steps=30, warmup_steps=5, decay_steps=10, decay="cosine", init_lr=1e-4, final_lr=1e-5)


def test_lr_scheduler_first_step_uses_step_0_and_follows_the_schedule():
    opt = _torch_opt()
    sched = S.LRScheduler(opt, SCHED)
    seen = []
    for _ in range(40):
        seen.append(opt.param_groups[0]["lr"])  # the lr the next optimizer.step() would use
        opt.step()
        sched.step()
        assert sched.get_last_lr() == [opt.param_groups[0]["lr"]]
    assert seen == [SCHED(t) for t in range(40)]


def test_lr_scheduler_applies_lr_scale_and_per_group_schedules():
    opt = _torch_opt(groups=3)
    opt.param_groups[1]["lr_scale"] = 0.1
    other = S.cosine(1e-3, 20)
    sched = S.LRScheduler(opt, [SCHED, SCHED, other])
    for t in range(25):
        assert sched.get_last_lr() == [SCHED(t), 0.1 * SCHED(t), other(t)]
        opt.step()
        sched.step()


def test_lr_scheduler_state_dict_is_plain_data_and_resumes():
    opt = _torch_opt()
    sched = S.LRScheduler(opt, SCHED)
    for _ in range(12):
        opt.step()
        sched.step()
    buf = io.BytesIO()
    torch.save(sched.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    json_state = __import__("json").loads(__import__("json").dumps(state["schedules"]))
    assert [Schedule.from_dict(s) for s in json_state] == [SCHED]

    opt2 = _torch_opt()
    resumed = S.LRScheduler(opt2, S.constant(5.0))  # the checkpoint's schedule wins
    resumed.load_state_dict(state)
    for _ in range(25):
        opt.step()
        sched.step()
        opt2.step()
        resumed.step()
        assert resumed.get_last_lr() == sched.get_last_lr()
        assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    assert resumed.last_epoch == 37 and opt2.param_groups[0]["lr"] == SCHED(37)


@pytest.mark.parametrize("bad, name", [
    (lambda opt: S.LRScheduler(opt, [SCHED, SCHED]), "schedule"),
    (lambda opt: S.LRScheduler(opt, [0.1]), "schedule[0]"),
    (lambda opt: S.LRScheduler(opt, S.power(0.02, 4.6, -0.51, 1000)), "schedule[0]"),
], ids=["one-per-group", "not-a-schedule", "token-clock"])
def test_lr_scheduler_rejects_bad_schedules(bad, name):
    with pytest.raises(ValueError, match=re.escape(name)):
        bad(_torch_opt())
