"""``Schedule.branch``: WSD decay branches from a stable-phase checkpoint (MiniCPM, arXiv 2404.06395):
values, edges, every decay shape, equality with ``wsd`` of the matching total, and validation."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lrsched_fused import schedules as S
from lrsched_fused.schedules._branch import BRANCH_SHAPES

PEAK, FINAL = 3e-3, 3e-5


def long_wsd(total: int = 1000, warmup: int = 100, decay: int = 100) -> S.Schedule:
    return S.wsd(peak_lr=PEAK, total_steps=total, warmup_steps=warmup, decay_steps=decay, final_lr=FINAL)


def assert_same_values(a: S.Schedule, b: S.Schedule, upto: int) -> None:
    for t in range(upto + 3):
        assert a(t) == pytest.approx(b(t), rel=1e-12, abs=1e-18), t


def test_branch_shapes_are_the_wsd_decay_shapes():
    assert BRANCH_SHAPES == S.DECAY_SHAPES


@pytest.mark.parametrize("shape", S.DECAY_SHAPES)
@pytest.mark.parametrize("at", [100, 101, 450, 900])
def test_branch_equals_wsd_of_the_matching_total(shape, at):
    decay = 60
    branch = long_wsd().branch(at, decay, shape)
    want = S.wsd(peak_lr=PEAK, total_steps=at + decay, warmup_steps=100, decay_steps=decay, decay=shape,
                 final_lr=FINAL)
    assert branch.total == at + decay and branch.final_value == FINAL
    assert_same_values(branch, want, at + decay)
    if at > 100:  # a cut constant phase gets its own span: the very phases of the wsd
        assert branch.phases == want.phases


def test_branch_keeps_the_values_up_to_at_step_and_hits_the_edges():
    base = long_wsd()
    b = base.branch(500, 40, "cosine")
    for t in range(500):
        assert b(t) == base(t)
    assert b(500) == PEAK and b(540) == FINAL and b(10**9) == FINAL
    assert FINAL < b(520) < PEAK
    assert b.edges[-1] == 540 and b.unit == base.unit


def test_branch_at_the_decay_start_with_its_decay_is_the_schedule_itself():
    base = long_wsd()
    assert_same_values(base.branch(900, 100, "linear"), base, 1000)


@pytest.mark.parametrize("shape, mid", [("linear", 0.5), ("cosine", 0.5), ("1-sqrt", 1 - math.sqrt(0.5)),
                                        ("square", 0.75), ("exp", None)])
def test_branch_shape_at_half_of_the_decay(shape, mid):
    b = long_wsd().branch(400, 100, shape)
    if mid is None:  # geometric: the geometric mean
        assert b(450) == pytest.approx(math.sqrt(PEAK * FINAL), rel=1e-12)
    else:
        assert b(450) == pytest.approx(FINAL + (PEAK - FINAL) * mid, rel=1e-12)


def test_branch_in_the_warmup_inside_the_decay_and_past_the_end():
    base = long_wsd()
    warm = base.branch(50, 10, "linear")  # decays from the warmup's lr at step 50
    assert warm(50) == base(50) == pytest.approx(PEAK / 2) and warm(60) == FINAL
    inside = base.branch(950, 10, "linear")  # from the partly decayed lr
    assert inside(950) == base(950) and inside(960) == FINAL
    past = base.branch(2000, 10, "linear")
    assert past(1500) == FINAL and past(2005) == FINAL


def test_branch_of_a_constant_needs_a_final_lr():
    const = S.constant(1e-3)
    assert const.branch(100, 50, "linear")(149) == 1e-3  # the final value of a constant is itself
    b = const.branch(100, 50, "linear", final_lr=0.0)
    assert b(99) == 1e-3 and b(125) == pytest.approx(5e-4) and b(150) == 0.0


def test_decay_steps_zero_ends_at_final_lr():
    b = long_wsd().branch(300, 0, "linear")
    assert b(299) == PEAK and b(300) == FINAL


def test_branch_round_trips_through_to_dict():
    b = long_wsd().branch(300, 30, "1-sqrt")
    again = S.from_dict(b.to_dict())
    assert again == b and "branch" in repr(b)


@pytest.mark.parametrize("kwargs, name", [
    (dict(at_step=-1, decay_steps=10), "at_step"),
    (dict(at_step=1.5, decay_steps=10), "at_step"),
    (dict(at_step=10, decay_steps=-3), "decay_steps"),
    (dict(at_step=10, decay_steps=5, shape="rex"), "shape"),
    (dict(at_step=10, decay_steps=5, shape="nope"), "shape"),
    (dict(at_step=300, decay_steps=5, final_lr=1.0), "final_lr"),
    (dict(at_step=300, decay_steps=5, final_lr=-1e-4), "final_lr"),
    (dict(at_step=300, decay_steps=5, final_lr=math.nan), "final_lr"),
    (dict(at_step=300, decay_steps=5, shape="exp", final_lr=0.0), "final_lr"),
    (dict(at_step=2**62, decay_steps=5), "at_step + decay_steps"),
])
def test_invalid_branch_raises_value_error_naming_the_field(kwargs, name):
    with pytest.raises(ValueError, match=re.escape(name)):
        long_wsd().branch(**kwargs)


@given(total=st.integers(10, 5000), data=st.data())
def test_branch_is_monotone_and_continuous_at_at_step(total, data):
    warmup = data.draw(st.integers(0, total // 2))
    base = S.wsd(peak_lr=1.0, total_steps=total, warmup_steps=warmup, decay_steps=0)
    at = data.draw(st.integers(warmup, total - 1))  # stable phase (the lr is 0 after total)
    n = data.draw(st.integers(1, 500))
    shape = data.draw(st.sampled_from([s for s in S.DECAY_SHAPES if s != "exp"]))
    b = base.branch(at, n, shape, final_lr=0.0)
    values = [b(t) for t in range(at, at + n + 1, max(1, n // 50))] + [b(at + n)]
    assert values[0] == 1.0 and values[-1] == 0.0
    assert all(x >= y for x, y in zip(values, values[1:]))


def test_branch_and_chain_in_schedule_text():
    """``branch(...)`` and ``chain(...)`` are constructors of the text form (parse, predict --schedule, plot)."""
    text = "wsd(peak_lr=0.003, total_steps=1000, warmup_steps=100, decay_steps=100, final_lr=3e-05)"
    assert S.parse(f"branch({text}, at_step=500, decay_steps=40, shape='cosine')") == long_wsd().branch(500, 40, "cosine")
    assert S.parse(f"branch({text}, 300, 20, final_lr=1e-4)") == long_wsd().branch(300, 20, "linear", 1e-4)
    assert S.branch(long_wsd(), 300, 20) == long_wsd().branch(300, 20)
    with pytest.raises(ValueError, match="schedule must be a Schedule"):
        S.parse("branch(0.1, at_step=5, decay_steps=5)")
    with pytest.raises(ValueError, match="shape must be one of"):
        S.parse(f"branch({text}, at_step=5, decay_steps=5, shape='wiggle')")
    joined = S.parse("chain(cosine(peak_lr=0.6, total_steps=500, final_lr=0.3), linear(peak_lr=0.3, total_steps=500))")
    want = S.chain(S.cosine(peak_lr=0.6, total_steps=500, final_lr=0.3), S.linear(peak_lr=0.3, total_steps=500))
    assert joined == want and joined(500) == 0.3
