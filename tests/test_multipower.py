"""``lrsched_fused.predict.MultiPowerLaw`` (Luo et al., arXiv 2503.12811): the decay benefit by hand and
against a plain loop, its limits (constant lr, saturation, a drop to 0), held-out prediction from noisy
synthetic curves, order independence, validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lrsched_fused import schedules as S
from lrsched_fused.predict import MultiPowerLaw, decay_benefit, lr_sequence


def loop_benefit(lrs, t, C, beta, gamma):
    """The definition, one term at a time: ``sum_{k <= t} d_k (1 - (C lr_k^-gamma sum_{i=k..t} lr_i + 1)^-beta)``
    with the annealing law's drops (a rise to a new running maximum drops nothing), 1-based updates."""
    total, top = 0.0, lrs[0]
    for k in range(2, t + 1):  # update 1 drops nothing
        prev, lr = lrs[k - 2], lrs[k - 1]
        d = prev - min(lr, top)
        top = max(top, lr)
        after = sum(lrs[k - 1:t])
        if d == 0 or after == 0:
            continue
        x = math.inf if lr == 0 else C * after * lr ** -gamma
        total += d * (1.0 - (x + 1.0) ** -beta)
    return total


def test_decay_benefit_by_hand():
    # 1, 1, then 0.5 from update 3: one drop of 0.5 with eta = 0.5; C = 1, gamma = 1, beta = 1 so
    # G(x) = x / (x + 1) with x = S_3(t) / 0.5: t = 3, 4, 5 give x = 1, 2, 3
    got = decay_benefit([1.0, 1.0, 0.5, 0.5, 0.5], [0, 1, 2, 3, 4, 5], C=1.0, beta=1.0, gamma=1.0)
    np.testing.assert_allclose(got, [0, 0, 0, 0.5 * 1 / 2, 0.5 * 2 / 3, 0.5 * 3 / 4], rtol=1e-14, atol=0)


@given(st.lists(st.sampled_from([0.0, 0.1, 0.25, 0.5, 1.0]), min_size=1, max_size=12),
       st.floats(0.01, 10.0), st.floats(0.05, 3.0), st.floats(0.0, 1.5))
def test_decay_benefit_is_the_definition(lrs, C, beta, gamma):
    steps = list(range(len(lrs) + 1))
    want = [loop_benefit(lrs, t, C, beta, gamma) for t in steps]
    np.testing.assert_allclose(decay_benefit(lrs, steps, C=C, beta=beta, gamma=gamma), want, rtol=1e-12, atol=1e-15)


def test_a_constant_or_rising_lr_has_no_benefit():
    for lrs in ([0.3] * 50, list(np.linspace(0, 1, 50))):
        assert not decay_benefit(lrs, range(51), C=2.0, beta=0.5, gamma=0.5).any()


def test_the_benefit_saturates_at_the_total_drop():
    sched = S.linear(peak_lr=1.0, total_steps=200, final_lr=0.1)
    seq = lr_sequence(sched, 200)
    small = decay_benefit(seq, [200], C=1e-6, beta=0.5, gamma=0.5)[0]
    huge = decay_benefit(seq, [200], C=1e12, beta=0.5, gamma=0.5)[0]
    assert 0 < small < 1e-3 * (seq[0] - seq[-1])
    assert huge == pytest.approx(seq[0] - seq[-1], rel=1e-5)


def test_a_drop_to_zero_pays_off_only_once_an_lr_follows():
    assert not decay_benefit([1.0, 0.0, 0.0], [1, 2, 3], C=1.0, beta=1.0, gamma=1.0).any()
    # drop 1 to lr 0 (x = inf: G = 1), then 0 -> 0.5 below the maximum: a drop of -0.5 with x = 1, G = 1/2
    assert decay_benefit([1.0, 0.0, 0.5], [3], C=1.0, beta=1.0, gamma=1.0)[0] == pytest.approx(1.0 - 0.25)


def test_large_step_counts_are_chunked_without_changing_the_result():
    seq = np.linspace(1.0, 0.0, 3000)
    t = np.arange(0, 3001, 7)
    whole = decay_benefit(seq, t, C=0.5, beta=0.7, gamma=0.3)
    want = [loop_benefit(list(seq), int(s), 0.5, 0.7, 0.3) for s in t[::40]]
    np.testing.assert_allclose(whole[::40], want, rtol=1e-9)


TRUE = MultiPowerLaw(L0=2.5, A=0.6, alpha=0.5, B=400.0, C=2.0, beta=0.6, gamma=0.5)
PEAK, STEPS = 1e-3, 600
POINTS = np.arange(60, STEPS + 1, 12)


def noisy(law, schedule, seed, noise=0.002):
    rng = np.random.default_rng(seed)
    return law.predict(schedule, POINTS) * np.exp(rng.normal(0.0, noise, POINTS.size))


def fit_runs(seed):
    return [(S.constant(PEAK), POINTS, noisy(TRUE, S.constant(PEAK), seed)),
            (S.wsd(PEAK, STEPS, decay_steps=120), POINTS, noisy(TRUE, S.wsd(PEAK, STEPS, decay_steps=120), seed + 1))]


def test_held_out_final_losses_are_predicted_from_noisy_curves():
    law = MultiPowerLaw.fit(fit_runs(0), starts=4)
    assert law.points == 2 * POINTS.size and law.residual < 0.004
    for held_out in (S.cosine(PEAK, STEPS), S.wsd(PEAK, STEPS, decay_steps=200, decay="1-sqrt"), S.rex(PEAK, STEPS)):
        want, got = TRUE.predict(held_out, [STEPS])[0], law.predict(held_out, [STEPS])[0]
        assert abs(got / want - 1) < 0.005, (held_out.name, got, want)
    # the identified parameters come back; B, C, beta and gamma trade off against each other (see the docs)
    assert law.L0 == pytest.approx(TRUE.L0, rel=0.05) and law.alpha == pytest.approx(TRUE.alpha, rel=0.2)


def test_parameters_left_on_a_bound_are_named():
    # a law with beta far beyond its box: the fit must end on beta's upper bound, and say so
    law = MultiPowerLaw(**{**TRUE.__dict__, "beta": 40.0, "C": 0.02})
    runs = [(s, POINTS, law.predict(s, POINTS)) for s in (S.constant(PEAK), S.wsd(PEAK, STEPS, decay_steps=120))]
    fit = MultiPowerLaw.fit(runs, starts=2)
    assert "beta" in fit.on_bounds.split(",") and fit.beta == pytest.approx(5.0, rel=1e-6)
    assert "on a bound of the search" in fit.describe() and "on a bound" not in TRUE.describe()


def test_noise_free_curves_are_fitted_to_the_noise_floor():
    runs = [(s, POINTS, TRUE.predict(s, POINTS)) for s in (S.constant(PEAK), S.cosine(PEAK, STEPS))]
    assert MultiPowerLaw.fit(runs, starts=2).residual < 1e-4


def test_the_fit_does_not_depend_on_the_order_of_the_runs():
    runs = fit_runs(3)
    assert MultiPowerLaw.fit(runs, starts=1) == MultiPowerLaw.fit(runs[::-1], starts=1)


def test_predict_is_the_formula():
    sched = S.wsd(PEAK, 100, decay_steps=30)
    seq = lr_sequence(sched, 100)
    want = [TRUE.L0 + TRUE.A * seq[:t].sum() ** -TRUE.alpha
            - TRUE.B * loop_benefit(list(seq), t, TRUE.C, TRUE.beta, TRUE.gamma) for t in (1, 70, 85, 100)]
    np.testing.assert_allclose(TRUE.predict(sched, [1, 70, 85, 100]), want, rtol=1e-12)
    assert TRUE.predict(sched, [0])[0] == math.inf
    assert "S1^-0.5" in TRUE.describe()


@pytest.mark.parametrize("runs, kwargs, name", [
    ([], {}, "runs"),
    ("abc", {}, "runs"),
    ([(S.constant(PEAK), [10, 20], [3.0, 2.9])], {}, "at least 8 points"),
    ([(S.constant(PEAK), [0, 20], [3.0, 2.9])], {}, "steps must be >= 1"),
    ([(S.constant(PEAK), POINTS, np.ones(POINTS.size))], {"delta": 0}, "delta"),
    ([(S.constant(PEAK), POINTS, np.ones(POINTS.size))], {"starts": 0}, "starts"),
    ([(S.constant(PEAK), POINTS, np.ones(POINTS.size))], {"starts": 17}, "starts"),
])
def test_invalid_fits_raise_value_error(runs, kwargs, name):
    with pytest.raises(ValueError, match=name):
        MultiPowerLaw.fit(runs, **kwargs)


@pytest.mark.parametrize("field, value", [("C", 0.0), ("beta", -1.0), ("gamma", -0.1), ("A", math.nan),
                                          ("L0", "2"), ("on_bounds", ("beta",))])
def test_a_law_is_validated(field, value):
    with pytest.raises(ValueError, match=field):
        MultiPowerLaw(**{**TRUE.__dict__, field: value})
