"""Property tests of the schedule spec (issue 3): random valid specs from every constructor and random
chains of phases (tabulated included), evaluated at drawn steps (phase edges, 0, total, up to 2**40).

Properties, all on the float64 reference ``Schedule.__call__``:

* edges are exact: ``f(0) = init``, ``f(end of warmup) = peak``, ``f(total) = final`` (and every phase
  starts exactly at its start value), compared with ``==``;
* each phase is monotone in the direction of its endpoints;
* every value is finite and lies within ``[min, max]`` of its phase's endpoints;
* ``to_dict`` survives JSON and ``torch.load(weights_only=True)`` and rebuilds an equal schedule.

The strategies here (``cases()``, ``probe_steps()``) are reused by ``tests/test_schedule_parity.py``.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from lrsched_fused import schedules as S
from lrsched_fused.schedules import Phase, Schedule

HUGE = 2**40

# ---------------------------------------------------------------------------------------------------
# strategies
# ---------------------------------------------------------------------------------------------------
#: learning rates: exact zero, "nice" values and arbitrary floats over the useful range
lrs = st.one_of(st.just(0.0), st.sampled_from([1e-4, 3e-4, 1e-3, 2e-2, 0.1, 1.0]),
                st.floats(1e-6, 10.0, allow_nan=False, allow_infinity=False))
positive_lrs = st.one_of(st.sampled_from([1e-4, 3e-4, 1e-3, 2e-2, 1.0]), st.floats(1e-6, 10.0))
#: run lengths: short runs (every step visible) and huge ones (int64 clock, float64 progress)
totals = st.one_of(st.integers(1, 64), st.integers(1, HUGE))


@dataclass
class Case:
    """A drawn schedule plus what its constructor's arguments say about it.

    ``edges`` maps clock values to the value the schedule must take there *exactly*; ``approx`` the same
    for values the test computes through a different (not bit-identical) formula.
    """

    label: str
    sched: Schedule
    edges: dict[int, float] = field(default_factory=dict)
    approx: dict[int, float] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"Case({self.label}: {self.sched!r})"


def _split(draw, total: int, parts: int) -> list[int]:
    """``parts`` non-negative integers summing to at most ``total``."""
    cuts = sorted(draw(st.integers(0, total)) for _ in range(parts))
    return [cuts[0]] + [b - a for a, b in zip(cuts, cuts[1:])]


@st.composite
def warmup_decay_cases(draw) -> Case:
    kind = draw(st.sampled_from(["linear", "cosine", "rex"]))
    total = draw(totals)
    warm = draw(st.one_of(st.integers(0, min(total, 64)), st.integers(0, total)))
    peak, final, init = draw(lrs), draw(lrs), draw(lrs)
    kwargs = dict(peak_lr=peak, total_steps=total, warmup_steps=warm, final_lr=final, init_lr=init)
    if kind == "rex":
        kwargs["beta"] = draw(st.one_of(st.sampled_from([0.0, 0.5, 0.9]), st.floats(0.0, 0.999)))
    sched = getattr(S, kind)(**kwargs)
    edges = {total: final, total + 1: final, HUGE + total: final}
    if warm > 0:
        edges[0] = init
    if warm < total:
        edges[warm] = peak
    return Case(kind, sched, edges)


@st.composite
def wsd_cases(draw) -> Case:
    total = draw(totals)
    warm, n_decay = _split(draw, total, 2)
    decay = draw(st.sampled_from(S.DECAY_SHAPES))
    peak = draw(positive_lrs) if decay == "exp" else draw(lrs)
    final = draw(positive_lrs) if decay == "exp" else draw(lrs)
    init = draw(lrs)
    if draw(st.booleans()) or total == 0:
        kwargs = dict(decay_steps=n_decay)
    else:
        frac = n_decay / total
        assume(warm + round(frac * total) <= total)
        kwargs = dict(decay_fraction=frac)
        n_decay = round(frac * total)
    sched = S.wsd(peak_lr=peak, total_steps=total, warmup_steps=warm, decay=decay, final_lr=final, init_lr=init,
                  **kwargs)
    edges = {total: final, total + 7: final}
    if warm > 0:
        edges[0] = init
    if warm < total:
        edges[warm] = peak
    if n_decay > 0:
        edges[total - n_decay] = peak
    elif warm < total:
        edges[total - 1] = peak
    return Case(f"wsd-{decay}", sched, edges)


def _eta(n: int, cap: float, coef: float, b: float) -> float:
    """The power law ``min(cap, coef * n^b)`` written with ``**`` (not bit-identical to the spec's form)."""
    if n == 0:
        return cap if b < 0 else min(cap, coef if b == 0 else 0.0)
    return min(cap, coef * float(n) ** b)


@st.composite
def power_cases(draw) -> Case:
    total = draw(totals)
    warm, n_decay = _split(draw, total, 2)
    frac = n_decay / total
    assume(warm + round(frac * total) <= total)
    n_decay = round(frac * total)
    decay = draw(st.sampled_from(S.DECAY_SHAPES))
    cap = draw(positive_lrs)
    a = draw(st.one_of(st.just(4.6), st.floats(1e-3, 1e3)))
    b = draw(st.one_of(st.just(-0.51), st.floats(-1.0, 0.5)))
    bs = draw(st.one_of(st.just(1), st.integers(1, 4096)))
    final = draw(positive_lrs) if decay == "exp" else draw(lrs)
    unit = draw(st.sampled_from(["tokens", "steps"]))
    law_end = _eta(total - n_decay, cap, bs * a, b)
    assume(decay != "exp" or n_decay == 0 or law_end > 0)
    sched = S.power(max_lr=cap, a=a, b=b, total=total, warmup=warm, decay_fraction=frac, decay=decay,
                    final_lr=final, batch_size=bs, unit=unit)
    edges, approx = {}, {}
    if warm > 0:
        edges[0] = 0.0
    if warm < total:
        approx[warm] = _eta(warm, cap, bs * a, b)
    if n_decay > 0:
        edges[total] = final
        approx[total - n_decay] = law_end
    else:
        approx[total] = _eta(total, cap, bs * a, b)
    return Case(f"power-{unit}", sched, edges, approx)


@st.composite
def infinite_cases(draw) -> Case:
    total = draw(totals)
    warm, cool, anneal = _split(draw, total, 3)
    peak = draw(lrs)
    const = draw(positive_lrs) if anneal else draw(lrs)
    final = draw(positive_lrs) if anneal else draw(lrs)
    cooldown = draw(st.sampled_from(["cosine", "linear", "inv-sqrt"]))
    sched = S.infinite(peak_lr=peak, total_steps=total, warmup_steps=warm, cooldown_steps=cool, constant_lr=const,
                       anneal_steps=anneal, final_lr=final, cooldown=cooldown)
    end = final if anneal else const
    edges = {total: end, total + 1: end}
    if warm > 0:
        edges[0] = 0.0
    if cool > 0:
        edges[warm] = peak
    if warm + cool < total:
        edges[warm + cool] = const
    if anneal > 0:
        edges[total - anneal] = const
    return Case(f"infinite-{cooldown}", sched, edges)


@st.composite
def tabulated_cases(draw) -> Case:
    n = draw(st.integers(1, 8))
    gaps = draw(st.lists(st.one_of(st.integers(1, 20), st.integers(1, 2**36)), min_size=n - 1, max_size=n - 1))
    steps = [0]
    for gap in gaps:
        steps.append(steps[-1] + gap)
    values = draw(st.lists(lrs, min_size=n, max_size=n))
    sched = S.tabulated(steps, values)
    edges = dict(zip(steps, values))
    edges[steps[-1] + 1] = values[-1]
    return Case("tabulated", sched, edges)


@st.composite
def phases(draw, *, allow_power: bool = True) -> Phase:
    """One valid phase of any shape, possibly cut short (``span > length``)."""
    shapes = [s for s in S.SHAPES if allow_power or s != "power"]
    shape = draw(st.sampled_from(shapes))
    length = draw(st.one_of(st.integers(0, 40), st.integers(0, 2**38)))
    if shape == "exp":
        v0, v1 = draw(positive_lrs), draw(positive_lrs)
    else:
        v0, v1 = draw(lrs), draw(lrs)
    a = b = c = 0.0
    if shape == "rex":
        a = draw(st.floats(0.0, 0.999))
    elif shape == "poly":
        a = draw(st.floats(0.1, 5.0))
    elif shape == "inv-sqrt":
        a = draw(st.floats(0.1, 100.0))
    elif shape == "power":
        a, b, c = draw(st.floats(1e-3, 1e3)), draw(st.floats(-1.0, 0.5)), draw(positive_lrs)
    span = length + draw(st.one_of(st.just(0), st.integers(0, 50)))
    return Phase(shape, length, v0, v1, a=a, b=b, c=c, span=span)


@st.composite
def chain_cases(draw) -> Case:
    parts = draw(st.lists(phases(), min_size=1, max_size=5))
    final = draw(st.one_of(st.none(), lrs))
    sched = S.chain(*parts, final_value=final)
    edges = {sched.total: sched.final_value, sched.total + HUGE: sched.final_value}
    return Case("chain", sched, edges)


@st.composite
def rewarm_cases(draw) -> Case:
    base = draw(st.one_of(warmup_decay_cases(), wsd_cases(), infinite_cases(), tabulated_cases())).sched
    at = draw(st.one_of(st.integers(0, base.total + 2), st.integers(0, min(base.total + 2**20, HUGE))))
    total = at + draw(st.one_of(st.integers(0, 64), st.integers(0, HUGE)))
    assume(total >= 1)
    warm = draw(st.integers(0, total - at))
    decay = draw(st.sampled_from(S.DECAY_SHAPES))
    peak = draw(positive_lrs) if decay == "exp" else draw(lrs)
    final = draw(positive_lrs) if decay == "exp" else draw(lrs)
    init = draw(st.one_of(st.none(), st.just(0.0), lrs))
    sched = S.rewarm(base, at_step=at, warmup_steps=warm, peak_lr=peak, total_steps=total, final_lr=final,
                     decay=decay, init_lr=init)
    edges = {total: final, total + 3: final}
    for t in (0, at // 2, at - 1):
        if 0 <= t < at:
            edges[t] = base(t)
    if warm > 0:
        edges[at] = base(at) if init is None else init
    if at + warm < total:
        edges[at + warm] = peak
    return Case(f"rewarm-{decay}-init={'default' if init is None else 'given'}", sched, edges)


@st.composite
def constant_cases(draw) -> Case:
    lr = draw(lrs)
    return Case("constant", S.constant(lr), {0: lr, 1: lr, HUGE: lr})


def cases() -> st.SearchStrategy[Case]:
    """Random valid specs from every constructor, and random chains of phases."""
    return st.one_of(constant_cases(), warmup_decay_cases(), wsd_cases(), power_cases(), infinite_cases(),
                     rewarm_cases(), tabulated_cases(), chain_cases())


@st.composite
def probe_steps(draw, sched: Schedule, extra: int = 24) -> list[int]:
    """Clock values to look at: every phase edge and its neighbours, 0, total, 2**40, and random steps
    (inside the run, and beyond it up to 2**40)."""
    pts = {0, 1, sched.total, sched.total + 1, HUGE}
    for s, ph in zip(sched.starts, sched.phases):
        pts |= {s - 1, s, s + 1, s + ph.length // 2, s + ph.length - 1, s + ph.length}
    pts |= set(draw(st.lists(st.integers(0, max(sched.total, 1) + 2), max_size=extra)))
    pts |= set(draw(st.lists(st.integers(0, HUGE), max_size=4)))
    return sorted(t for t in pts if t >= 0)


# ---------------------------------------------------------------------------------------------------
# properties
# ---------------------------------------------------------------------------------------------------
def phase_bounds(sched: Schedule, i: int) -> tuple[float, float]:
    """The endpoint values of phase ``i`` (the power law's values at its two ends)."""
    ph, s = sched.phases[i], sched.starts[i]
    if ph.shape == "power":
        lo, hi = ph.value_at(s, s), ph.value_at(s + ph.length, s)
    else:
        lo, hi = ph.start_value, ph.end_value
    return min(lo, hi), max(lo, hi)


def phase_of(sched: Schedule, t: int) -> int | None:
    """Index of the phase holding ``t`` (``None`` past the end)."""
    for i, (s, ph) in enumerate(zip(sched.starts, sched.phases)):
        if s <= t < s + ph.length:
            return i
    return None


@given(case=cases(), data=st.data())
def test_constructor_edges_are_exact(case: Case, data) -> None:
    sched = case.sched
    for t, want in case.edges.items():
        assert sched(t) == want, f"{case}: f({t}) = {sched(t)!r}, want exactly {want!r}"
    for t, want in case.approx.items():
        assert sched(t) == pytest.approx(want, rel=1e-12, abs=0.0), f"{case}: f({t})"
    # past the end: final value, at any distance
    for t in data.draw(st.lists(st.integers(sched.total, sched.total + HUGE), max_size=4)):
        assert sched(t) == sched.final_value


@given(case=cases())
def test_every_phase_starts_exactly_at_its_start_value(case: Case) -> None:
    sched = case.sched
    for s, ph in zip(sched.starts, sched.phases):
        if ph.length > 0 and ph.shape != "power":  # the power law is a function of the absolute clock
            assert sched(s) == ph.start_value, f"{case}: phase {ph.describe()} at {s}"


@given(case=cases(), data=st.data())
def test_monotone_within_each_phase(case: Case, data) -> None:
    sched = case.sched
    steps = data.draw(probe_steps(sched))
    by_phase: dict[int, list[int]] = {}
    for t in steps:
        i = phase_of(sched, t)
        if i is not None:
            by_phase.setdefault(i, []).append(t)
    for i, ts in by_phase.items():
        ph, s = sched.phases[i], sched.starts[i]
        vals = [sched(t) for t in ts]
        if ph.shape == "power":
            increasing = ph.value_at(s + ph.length, s) >= ph.value_at(s, s)
        else:
            increasing = ph.end_value >= ph.start_value
        pairs = list(zip(vals, vals[1:]))
        if increasing:
            assert all(a <= b for a, b in pairs), f"{case}: phase {ph.describe()} not non-decreasing: {vals}"
        else:
            assert all(a >= b for a, b in pairs), f"{case}: phase {ph.describe()} not non-increasing: {vals}"


@given(case=cases(), data=st.data())
def test_values_finite_and_within_phase_endpoints(case: Case, data) -> None:
    sched = case.sched
    for t in data.draw(probe_steps(sched)):
        v = sched(t)
        assert math.isfinite(v), f"{case}: f({t}) = {v}"
        i = phase_of(sched, t)
        lo, hi = (sched.final_value, sched.final_value) if i is None else phase_bounds(sched, i)
        assert lo <= v <= hi, f"{case}: f({t}) = {v!r} outside [{lo!r}, {hi!r}]"


@given(case=cases())
def test_to_dict_survives_json_and_rebuilds_equal(case: Case) -> None:
    data = case.sched.to_dict()
    text = json.dumps(data, allow_nan=False)
    rebuilt = S.from_dict(json.loads(text))
    assert rebuilt == case.sched
    assert rebuilt.to_dict() == data
    assert [rebuilt(t) for t in case.sched.edges] == [case.sched(t) for t in case.sched.edges]


@given(case=cases())
def test_to_dict_survives_torch_load_weights_only(case: Case) -> None:
    buf = io.BytesIO()
    torch.save({"schedule": case.sched.to_dict()}, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    assert S.from_dict(loaded["schedule"]) == case.sched


@given(case=cases())
def test_parse_of_constructor_repr_rebuilds_equal(case: Case) -> None:
    """``repr`` of a constructor-built schedule is the call that built it (for named constructors)."""
    if case.sched.name == "chain":
        return
    assert S.parse(repr(case.sched)) == case.sched


@given(case=cases(), data=st.data())
def test_evaluate_reference_equals_call(case: Case, data) -> None:
    steps = data.draw(probe_steps(case.sched))
    got = S.evaluate(case.sched, torch.tensor(steps, dtype=torch.int64))
    assert got.dtype == torch.float64
    assert got.tolist() == [case.sched(t) for t in steps]


@given(case=cases())
def test_scaled_multiplies_every_value(case: Case) -> None:
    """Scaling by 2 is exact in binary floating point, so every value doubles exactly."""
    sched = case.sched
    twice = sched.scaled(2.0)
    for t in sched.edges + (sched.total + 5,):
        assert twice(t) == 2.0 * sched(t)
