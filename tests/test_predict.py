"""``lrsched_fused.predict``: the annealing law (Tissue et al., arXiv 2408.11029): S1 and S2 by hand for tiny
schedules, the scan against the recurrence, the warmup rule, parameter recovery from noisy synthetic curves,
order independence, the curve CSV files, validation."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lrsched_fused import schedules as S
from lrsched_fused.predict import (PROFILE_DECAYS, AnnealingLaw, Curve, DecayProfile, areas, cumulative_areas, lr_drops,
                                   profile_threshold, read_curve, write_curve)
from lrsched_fused.schedules import Phase


def loop_areas(lrs, decay):
    """The definition as a loop: ``m_i = decay m_{i-1} + (lr_{i-1} - lr_i)``, ``lr_0 = lr_1``, where a rise above
    every earlier lr (warmup) counts only up to that maximum."""
    s1, s2, m, total1, total2, top = [0.0], [0.0], 0.0, 0.0, 0.0, None
    for i, lr in enumerate(lrs):
        prev = lrs[i - 1] if i else lr
        top = lr if top is None else top
        m = decay * m + (prev - min(lr, top))
        top = max(top, lr)
        total1 += lr
        total2 += m
        s1.append(total1)
        s2.append(total2)
    return np.array(s1), np.array(s2)


# -- S1 and S2 by hand ----------------------------------------------------------------------------------
@pytest.mark.parametrize("sched, decay, s1, s2", [
    (S.constant(0.1), 0.999, [0, 0.1, 0.2, 0.3, 0.4], [0, 0, 0, 0, 0]),
    # step drop 1 -> 0.5 after two updates: d = (0, 0, 0.5, 0), m = (0, 0, 0.5, 0.25)
    (S.chain(Phase("constant", 2, 1.0), Phase("constant", 2, 0.5)), 0.5, [0, 1, 2, 2.5, 3], [0, 0, 0, 0.5, 0.75]),
    # linear decay 1, .75, .5, .25: m = (0, .25, .475, .6775)
    (S.linear(peak_lr=1.0, total_steps=4), 0.9, [0, 1, 1.75, 2.25, 2.5], [0, 0, 0.25, 0.725, 1.4025]),
    # warmup 0, .5, then 1, 1, then 0: the rises add nothing, the drop of 1 at update 5 counts
    (S.wsd(peak_lr=1.0, total_steps=4, warmup_steps=2, decay_steps=1), 0.5, [0, 0, 0.5, 1.5, 2.5, 2.5],
     [0, 0, 0, 0, 0, 1.0]),
    # decay then a re-warm: the rise after the warmup counts (negative m), as the law's formula says
    # m = (0, 0.5, 0.5 * 0.5 - 0.5) = (0, 0.5, -0.25)
    (S.tabulated([0, 1, 2], [1.0, 0.5, 1.0]), 0.5, [0, 1, 1.5, 2.5], [0, 0, 0.5, 0.25]),
], ids=["constant", "step-drop", "linear-decay", "warmup", "rewarm"])
def test_areas_by_hand(sched, decay, s1, s2):
    steps = list(range(len(s1)))
    got1, got2 = areas(sched, steps, decay)
    np.testing.assert_allclose(got1, s1, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(got2, s2, rtol=1e-12, atol=1e-15)


def test_warmup_is_every_rise_above_the_earlier_maximum():
    # 0 -> .5 (warmup), .4 (a dip: counts), .6 (back to .5 cancels the dip; .5 -> .6 is warmup), .5 (counts)
    np.testing.assert_allclose(lr_drops([0.0, 0.5, 0.4, 0.6, 0.5]), [0, 0, 0.1, -0.1, 0.1], atol=1e-15)
    assert lr_drops([1.0]).tolist() == [0.0] and lr_drops([0.1, 0.2, 0.3]).tolist() == [0.0, 0.0, 0.0]


@given(lrs=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=300), decay=st.sampled_from([0.0, 0.5, 0.9, 0.999]))
def test_the_scan_equals_the_recurrence(lrs, decay):
    s1, s2 = cumulative_areas(lrs, decay)
    w1, w2 = loop_areas(lrs, decay)
    np.testing.assert_allclose(s1, w1, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(s2, w2, rtol=1e-9, atol=1e-9 * max(1.0, np.abs(w2).max()))


@given(data=st.data())
def test_decaying_after_warmup_gives_a_growing_nonnegative_annealing_area(data):
    total = data.draw(st.integers(2, 400))
    warm = data.draw(st.integers(0, total - 1))
    shape = data.draw(st.sampled_from(S.DECAY_SHAPES[:-1]))
    sched = S.wsd(peak_lr=1e-3, total_steps=total, warmup_steps=warm, decay_fraction=0.5 * (total - warm) / total,
                  decay=shape)
    s1, s2 = areas(sched, range(total + 5))
    assert np.all(np.diff(s1) >= 0) and np.all(s2 >= 0) and np.all(np.diff(s2) >= -1e-18)
    assert s2[warm + 1] == 0.0  # nothing during the warmup and the stable phase's first update


@given(lrs=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=100))
def test_a_never_decreasing_lr_has_no_annealing_area(lrs):
    _, s2 = cumulative_areas(sorted(lrs))
    assert np.all(s2 == 0.0)


def test_schedules_arrays_and_tensors_give_the_same_areas():
    sched = S.cosine(peak_lr=1e-3, total_steps=500, warmup_steps=50)
    lrs = [sched(t) for t in range(600)]
    a = areas(sched, [1, 10, 500, 600])
    for other in (lrs, np.array(lrs), torch.tensor(lrs, dtype=torch.float64)):
        b = areas(other, torch.tensor([1, 10, 500, 600]))
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


def test_every_step_counts():
    # a one-step spike halfway: a subsampling implementation would miss it
    lrs = np.full(1001, 1e-3)
    lrs[500] = 1e-4
    s1, s2 = areas(lrs, [1001])
    assert s1[0] == pytest.approx(1001e-3 - 9e-4) and s2[0] > 0


# -- the law: prediction and fit ---------------------------------------------------------------------
TRUE = AnnealingLaw(L0=2.5, A=0.6, alpha=0.5, C=0.8)
PEAK, TOTAL, WARM = 2e-3, 2000, 100


def synthetic_runs(noise: float, seed: int = 0, every: int = 10, law: AnnealingLaw = TRUE):
    rng = np.random.default_rng(seed)
    scheds = [S.wsd(PEAK, TOTAL, WARM, decay_steps=0), S.cosine(PEAK, TOTAL, WARM),
              S.wsd(PEAK, TOTAL, WARM, decay_fraction=0.2)]
    steps = np.arange(WARM, TOTAL + 1, every)
    out = []
    for s in scheds:
        clean = law.predict(s, steps)
        out.append((s, steps, clean * (1 + noise * rng.standard_normal(clean.size))))
    return out


def test_predict_is_the_formula():
    sched = S.wsd(PEAK, TOTAL, WARM, decay_fraction=0.2)
    steps = np.array([2, 100, 1700, 2000])  # S1(1) = 0: the warmup's first lr is 0
    s1, s2 = TRUE.areas(sched, steps)
    want = TRUE.L0 + TRUE.A * s1 ** -TRUE.alpha - TRUE.C * s2
    np.testing.assert_allclose(TRUE.predict(sched, steps), want, rtol=1e-14)
    assert TRUE.predict(S.constant(1e-3), [0])[0] == math.inf  # S1 = 0 before the first update


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_parameters_are_recovered_within_5_percent_from_curves_with_0_2_percent_noise(seed):
    law = AnnealingLaw.fit(synthetic_runs(0.002, seed))
    for name in ("L0", "A", "alpha", "C"):
        assert getattr(law, name) == pytest.approx(getattr(TRUE, name), rel=0.05), name
    assert law.decay == 0.999 and 0.0015 < law.residual < 0.0025 and law.points == 3 * 191


def test_decay_is_recovered_when_fitted():
    true = AnnealingLaw(L0=2.5, A=0.6, alpha=0.5, C=0.8, decay=0.995)
    law = AnnealingLaw.fit(synthetic_runs(0.002, 3, every=40, law=true), decay="fit")
    assert 1 - law.decay == pytest.approx(0.005, rel=0.2)
    for name in ("L0", "A", "alpha", "C"):
        assert getattr(law, name) == pytest.approx(getattr(true, name), rel=0.05), name


def test_noise_free_curves_are_fitted_exactly():
    law = AnnealingLaw.fit(synthetic_runs(0.0, every=50))
    for name in ("L0", "A", "alpha", "C"):
        assert getattr(law, name) == pytest.approx(getattr(TRUE, name), rel=1e-4), name
    assert law.residual < 1e-6


def test_the_fit_does_not_depend_on_the_order_of_the_runs():
    runs = synthetic_runs(0.002, every=40)
    laws = {AnnealingLaw.fit(list(p)) for p in itertools.permutations(runs)}
    assert len(laws) == 1


def test_runs_may_be_given_as_lr_arrays_and_tensors():
    runs = synthetic_runs(0.002, every=40)
    as_arrays = [([s(t) for t in range(TOTAL)], torch.tensor(steps), torch.tensor(losses)) for s, steps, losses in runs]
    assert AnnealingLaw.fit(as_arrays) == AnnealingLaw.fit(runs)


# -- the decay profile: does the fit pin lambda? ----------------------------------------------------------
def test_profile_threshold_is_the_likelihood_ratio_bound():
    # chi2 with 1 degree of freedom at 95% is 3.841458820694124 (tables); sigma ratio exp(chi2 / (2 n))
    assert profile_threshold(42) == pytest.approx(math.exp(3.841458820694124 / 84), rel=1e-12)
    assert profile_threshold(10, 0.99) == pytest.approx(math.exp(6.634896601021214 / 20), rel=1e-12)
    assert profile_threshold(10**6) == pytest.approx(1.0, abs=1e-5)


def test_runs_with_two_decay_lengths_pin_the_decay():
    """Curves of a law with decay 0.995 from a constant, a WSD and a cosine run (0.2% noise): the profile rejects
    every decay of its grid but the neighbours of 0.995, so a held-out prediction's range is narrow (it leaves
    out the noise and the other parameters: the best law is within 0.5% of the truth, not necessarily in it)."""
    true = AnnealingLaw(L0=2.5, A=0.6, alpha=0.5, C=0.8, decay=0.995)
    runs = synthetic_runs(0.002, 3, every=40, law=true)
    prof = AnnealingLaw.profile(runs)
    kept = [law.decay for law in prof.plausible()]
    assert len(prof.laws) == len(PROFILE_DECAYS) and kept and all(0.99 < d < 0.998 for d in kept)
    fine = AnnealingLaw.profile(runs, decays=list(np.linspace(0.99, 0.999, 19)))
    assert [round(law.decay, 4) for law in fine.plausible()] == [0.995, 0.9955]
    held = S.wsd(PEAK, TOTAL, WARM, decay_fraction=0.5, decay="1-sqrt")
    lo, hi = fine.predict_range(held, [TOTAL])
    truth = true.predict(held, [TOTAL])[0]
    assert lo[0] <= fine.best.predict(held, [TOTAL])[0] <= hi[0] and hi[0] - lo[0] < 1e-3 * truth
    assert fine.best.predict(held, [TOTAL])[0] == pytest.approx(truth, rel=5e-3)


def test_runs_without_a_decay_reject_no_decay_and_leave_a_wide_range():
    """A constant run has S2 = 0 at every decay: every decay fits as well, the profile keeps all of them, and a
    cosine's predictions spread over them (the prediction is not pinned)."""
    steps = np.arange(WARM, TOTAL + 1, 20)
    const = S.wsd(PEAK, TOTAL, WARM, decay_steps=0)
    prof = AnnealingLaw.profile([(const, steps, TRUE.predict(const, steps))], decays=[0.5, 0.9, 0.99, 0.999])
    assert [law.decay for law in prof.plausible()] == [0.5, 0.9, 0.99, 0.999]
    lo, hi = prof.predict_range(S.cosine(PEAK, TOTAL, WARM), [TOTAL])
    assert lo[0] == pytest.approx(min(law.predict(S.cosine(PEAK, TOTAL, WARM), [TOTAL])[0] for law in prof.laws))
    assert "lambda 0.5 to 0.999 kept at 95%: 4 of 4 fitted decays" in prof.describe()


@pytest.mark.parametrize("kwargs, name", [(dict(decays=[]), "decays"), (dict(decays=[0.5, 1.0]), "decay"),
                                          (dict(decays="0.9"), "decays")])
def test_invalid_profile_options_raise_value_error(kwargs, name):
    with pytest.raises(ValueError, match=name):
        AnnealingLaw.profile(synthetic_runs(0.0, every=200), **kwargs)


def test_a_profile_needs_fitted_laws_and_a_valid_level():
    with pytest.raises(ValueError, match="from a fit"):
        DecayProfile((TRUE,))
    with pytest.raises(ValueError, match="at least one"):
        DecayProfile(())
    with pytest.raises(ValueError, match="level"):
        profile_threshold(10, 1.0)
    with pytest.raises(ValueError, match="points"):
        profile_threshold(0)


@pytest.mark.parametrize("runs, name", [
    ([], "runs"),
    ("abc", "runs"),
    ([(S.constant(1e-3), [0, 1, 2, 3, 4], [3.0] * 5)], "steps must be >= 1"),
    ([(S.constant(1e-3), [1, 2, 3], [3.0, 2.0])], "same non-zero length"),
    ([(S.constant(1e-3), [1, 2, 3, 4, 5], [3.0, -1.0, 2.0, 2.0, 2.0])], "losses"),
    ([(S.constant(1e-3), [1, 2], [3.0, 2.0])], "at least 5 points"),
    ([([1e-3] * 3, [1, 2, 3, 4, 5], [3.0] * 5)], "holds 3 lrs"),
    ([(S.wsd(1e-3, 100, 10, decay_steps=0), [1, 2, 3, 4, 5], [3.0] * 5)], "S1"),
    ([(S.constant(1e-3), [1.5, 2, 3, 4, 5], [3.0] * 5)], "steps"),
    ([(1, 2)], r"runs\[0\]"),
])
def test_invalid_runs_raise_value_error(runs, name):
    with pytest.raises(ValueError, match=name):
        AnnealingLaw.fit(runs)


@pytest.mark.parametrize("kwargs, name", [(dict(decay=1.0), "decay"), (dict(decay="auto"), "decay"),
                                          (dict(delta=0.0), "delta")])
def test_invalid_fit_options_raise_value_error(kwargs, name):
    with pytest.raises(ValueError, match=name):
        AnnealingLaw.fit(synthetic_runs(0.0, every=200), **kwargs)


def test_a_law_is_frozen_and_validated():
    with pytest.raises(ValueError, match="alpha"):
        AnnealingLaw(L0=1.0, A=1.0, alpha=math.nan, C=0.0)
    with pytest.raises(ValueError, match="decay"):
        AnnealingLaw(L0=1.0, A=1.0, alpha=0.5, C=0.0, decay=-0.1)
    with pytest.raises(AttributeError):
        TRUE.L0 = 3.0  # type: ignore[misc]
    assert "S1^-0.5" in TRUE.describe()


# -- curves ----------------------------------------------------------------------------------------------
def test_curve_csv_round_trips(tmp_path):
    path = write_curve(tmp_path / "run.csv", losses=[5.0, 4.0, 3.5], lrs=[0.0, 1e-3, 2e-3], val={0: 5.1, 3: 3.3})
    lines = path.read_text().splitlines()
    assert lines[0] == "step,loss,lr,val_loss" and lines[-1] == "3,,,3.3"
    c = read_curve(path)
    np.testing.assert_array_equal(c.lrs, [0.0, 1e-3, 2e-3])
    assert c.steps == 3 and list(c.train_steps) == [0, 1, 2] and list(c.val_steps) == [0, 3]
    steps, losses, kind = c.points("train")
    assert kind == "train" and list(steps) == [1, 2] and list(losses) == [4.0, 3.5]
    assert c.points("auto")[2] == "train"  # fewer than 4 validation points
    assert list(c.points("val")[0]) == [3]


def test_curve_auto_points_prefer_validation_losses():
    c = Curve(lrs=np.full(10, 1e-3), train_steps=np.arange(10), train_losses=np.full(10, 3.0),
              val_steps=np.arange(0, 11, 2), val_losses=np.full(6, 2.9))
    steps, _, kind = c.points("auto", start=2)
    assert kind == "val" and list(steps) == [2, 4, 6, 8, 10]


@pytest.mark.parametrize("text, name", [
    ("step,loss\n0,1.0\n", "missing lr"),
    ("step,loss,lr\n0,1.0,0.1\n2,1.0,0.1\n", "without gaps"),
    ("step,loss,lr\n0,1.0,abc\n", "not a number"),
    ("step,loss,lr\n-1,1.0,0.1\n", "step must be"),
    ("step,loss,lr\n0,-1.0,0.1\n1,1.0,0.1\n", "loss values must be > 0"),
])
def test_bad_curve_files_are_rejected(tmp_path, text, name):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=name):
        read_curve(path)
    with pytest.raises(ValueError, match="does not exist"):
        read_curve(tmp_path / "missing.csv")
