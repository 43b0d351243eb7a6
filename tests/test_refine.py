"""``schedules.refine``: schedule refinement from gradient norms (Defazio et al., arXiv 2310.07831;
``algorithms.md`` C.6): the closed form, the reference's median smoothing and padding, warmup, the knot cap
and its error bound, validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lrsched_fused import schedules as S
from lrsched_fused.schedules._refine import knot_error_bound, knots, median_smooth, refined_lrs


def values(sched: S.Schedule, n: int) -> np.ndarray:
    return np.array([sched(t) for t in range(n)])


def closed_form(g: np.ndarray, p: float) -> np.ndarray:
    """The authors' ``find_closed_form_schedule`` as plain loops, normalized to max 1."""
    w = [x ** -p for x in g]
    out = [w[t] * sum(w[t + 1:]) for t in range(len(w))]
    top = max(out)
    return np.array([x / top for x in out])


def median_filter_loop(x: np.ndarray, width: int) -> np.ndarray:
    """scipy.ndimage.median_filter(x, size=width, mode='nearest') for odd ``width``, as a loop."""
    h, n = width // 2, len(x)
    return np.array([np.median([x[min(max(j, 0), n - 1)] for j in range(i - h, i + h + 1)]) for i in range(n)])


def reference_smoothing(g: np.ndarray, tau: float) -> np.ndarray:
    width = 2 * (int(tau * len(g)) // 2) + 1
    pad = 2 * width
    return median_filter_loop(np.pad(g, (0, pad), mode="reflect"), width)[:-pad]


@pytest.mark.parametrize("variant", ["sgd", "adam"])
@pytest.mark.parametrize("steps", [2, 3, 100, 65536])
def test_constant_norms_give_linear_decay_to_zero(variant, steps):
    sched = refine(np.full(steps, 2.5), peak_lr=0.1, variant=variant)
    assert sched.name == "tabulated" and len(sched.phases) == 1  # one linear phase: two knots
    t = np.arange(0, steps, max(1, steps // 1000))
    np.testing.assert_allclose([sched(int(k)) for k in t], 0.1 * (steps - 1 - t) / (steps - 1), rtol=1e-12,
                               atol=1e-15)
    assert sched(steps - 1) == 0.0 and sched(10 * steps) == 0.0


def refine(*args, **kwargs):
    return S.refine(*args, **kwargs)


def test_warmup_is_prepended_and_the_decay_uses_the_norms_after_it():
    g = np.concatenate([np.full(10, 100.0), np.full(91, 3.0)])  # warmup norms are ignored
    sched = refine(g, peak_lr=1.0, warmup_steps=10, init_lr=0.1)
    assert sched(0) == 0.1 and sched(5) == pytest.approx(0.55) and sched(10) == 1.0
    assert sched(55) == pytest.approx(0.5) and sched(100) == 0.0 and sched.total == 100


@pytest.mark.parametrize("variant, p", [("sgd", 2.0), ("adam", 1.0)])
def test_dense_schedule_is_the_closed_form(variant, p):
    g = np.random.default_rng(3).lognormal(0.0, 0.5, 40)
    np.testing.assert_allclose(refined_lrs(g, peak_lr=2.0, variant=variant), 2.0 * closed_form(g, p), rtol=1e-12,
                               atol=1e-15)


@pytest.mark.parametrize("tau", [0.0, 0.01, 0.05, 0.1, 0.3, 1.0])
@pytest.mark.parametrize("steps", [7, 50, 333])
def test_median_smoothing_follows_the_reference_padding(tau, steps):
    g = np.random.default_rng(steps).lognormal(0.0, 0.4, steps)
    np.testing.assert_array_equal(median_smooth(g, tau), reference_smoothing(g, tau))


def test_median_smoothing_matches_scipy_when_installed():
    ndimage = pytest.importorskip("scipy.ndimage")
    g = np.random.default_rng(0).lognormal(0.0, 0.4, 500)
    width = 2 * (int(0.07 * 500) // 2) + 1
    want = ndimage.median_filter(np.pad(g, (0, 2 * width), mode="reflect"), size=width, mode="nearest")[:-2 * width]
    np.testing.assert_array_equal(median_smooth(g, 0.07), want)


def test_smoothing_width_formula():
    g = np.zeros(100)
    g[50] = 1.0  # a spike survives a median filter of width 1 only
    assert median_smooth(g, 0.019)[50] == 1.0  # int(1.9) = 1 -> width 2 * (1 // 2) + 1 = 1
    assert median_smooth(g, 0.02)[50] == 0.0  # int(2.0) = 2 -> width 3
    h = np.zeros(100)
    h[48:52] = 1.0  # a plateau of 4 survives width 7 (4 of 7 values are 1), not width 9
    assert median_smooth(h, 0.06)[50] == 1.0 and median_smooth(h, 0.08)[50] == 0.0


def test_a_long_run_becomes_at_most_64_knots_with_a_small_error():
    steps, warm = 65536, 2000
    t = np.arange(steps)
    g = (1 + t / 6000) ** -0.3 * (1 + 0.3 * np.exp(-t / 1300))  # smooth: decaying, with an early transient
    dense = refined_lrs(g, peak_lr=3e-3, warmup_steps=warm)
    sched = refine(g, peak_lr=3e-3, warmup_steps=warm)
    assert len(sched.phases) <= 63
    got = values(sched, steps)
    err = np.abs(got - dense).max()
    assert err <= knot_error_bound(dense, 64, 3)  # the guarantee (any input)
    assert err <= 1e-3 * 3e-3  # measured on smooth norms: ~5e-4 of the peak at 64 knots
    assert sched(warm) == pytest.approx(dense[warm]) and sched(steps - 1) == 0.0


@given(data=st.data())
def test_knots_respect_the_budget_and_the_error_bound(data):
    n = data.draw(st.integers(2, 400))
    v = np.array(data.draw(st.lists(st.floats(0.0, 1.0), min_size=n, max_size=n)))
    k = data.draw(st.sampled_from([8, 9, 16, 64]))
    keep = data.draw(st.integers(0, n - 1))
    ks, vs, err = knots(v, k, keep=(keep,))
    assert len(ks) <= k and ks[0] == 0 and ks[-1] == n - 1 and ks == sorted(set(ks))
    assert keep in ks or keep == 0
    fit = np.interp(np.arange(n), ks, vs)
    assert np.abs(fit - v).max() == pytest.approx(err, abs=1e-15)
    assert err <= knot_error_bound(v, k, len({0, n - 1, keep}))


@given(data=st.data())
def test_refined_schedules_are_valid_for_any_positive_norms(data):
    n = data.draw(st.integers(3, 300))
    g = np.array(data.draw(st.lists(st.floats(1e-3, 1e3), min_size=n, max_size=n)))
    warm = data.draw(st.integers(0, n - 2))
    tau = data.draw(st.sampled_from([0.0, 0.05, 0.2]))
    sched = refine(g, peak_lr=0.5, variant=data.draw(st.sampled_from(["sgd", "adam"])), smoothing=tau,
                   warmup_steps=warm)
    vals = values(sched, n)
    assert len(sched.phases) <= 63 and sched.total == n - 1
    assert vals.min() >= 0.0 and vals.max() <= 0.5 * (1 + 1e-12)
    assert sched(n - 1) == 0.0 and (warm == 0 or sched(0) == 0.0)


def test_torch_tensors_and_lists_are_accepted():
    g = [3.0, 2.0, 2.5, 1.0, 1.5]
    a, b = refine(torch.tensor(g), peak_lr=1.0), refine(g, peak_lr=1.0)
    assert a == b


def test_the_refined_schedule_runs_in_the_kernels():
    if "cpu" not in S.evaluators():
        pytest.skip("the C++ extension is not built")
    g = np.random.default_rng(0).lognormal(0.0, 0.3, 500)
    sched = refine(g, peak_lr=1e-3, smoothing=0.1, warmup_steps=25)
    steps = torch.arange(0, 520)
    ref = S.evaluate(sched, steps)
    got = S.evaluate(sched, steps, backend="cpu").double()
    assert (got - ref).abs().max() <= 2e-6 * ref.abs().max()


@pytest.mark.parametrize("kwargs, name", [
    (dict(grad_norms=[1.0]), "grad_norms"),
    (dict(grad_norms=[[1.0, 2.0]]), "grad_norms"),
    (dict(grad_norms=[1.0, 0.0, 2.0]), "grad_norms"),
    (dict(grad_norms=[1.0, float("nan"), 2.0]), "grad_norms"),
    (dict(grad_norms="abc"), "grad_norms"),
    (dict(peak_lr=0.0), "peak_lr"),
    (dict(init_lr=-1.0), "init_lr"),
    (dict(variant="lion"), "variant"),
    (dict(smoothing=1.5), "smoothing"),
    (dict(warmup_steps=9), "warmup_steps"),
    (dict(warmup_steps=-1), "warmup_steps"),
    (dict(max_knots=4), "max_knots"),
    (dict(max_knots=64.0), "max_knots"),
])
def test_invalid_arguments_raise_value_error_naming_them(kwargs, name):
    args = dict(grad_norms=np.ones(10), peak_lr=1.0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        refine(args.pop("grad_norms"), **args)
