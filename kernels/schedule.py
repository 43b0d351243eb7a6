"""The learning-rate schedule as a Triton device function, read from the encoded tables.

Tables (``lrsched_fused.schedules.encode_tables``, layout in :mod:`lrsched_fused.kernels.layout`):
``ints`` int64 ``[rows, 4]`` = (start, length, span, shape), ``floats`` float64 ``[rows, 5]`` =
(v0, v1, a, b, c), ``group_sched`` int64 ``[groups, 3]`` = (first row, row count, clock index).

At clock ``t`` (int64) the phase is the last row of the group's rows with ``start <= t``: a masked load of
the starts over ``PHASE_BLOCK`` rows (a power of two, at least 16, so ordinary schedule edits and
re-warms never recompile) and a count. The progress comes from an exact int64 offset,
``p = (t - start) / span`` and ``q = 1 - p = (span - (t - start)) / span``, so clocks near 2**40 lose
nothing before the single float32 division. Values follow ``Phase.value_at`` (the float64 reference in
``lrsched_fused/schedules/_phase.py``), computed in float32 in forms that avoid cancellation:

==========  ====================================================================================
constant    ``v0``
linear      ``v0 + (v1 - v0) p``
cosine      ``v0 + (v1 - v0) sin^2(pi p / 2)``            (= (1 - cos(pi p)) / 2)
1-sqrt      ``v0 + (v1 - v0) sqrt(p)``
square      ``v0 + (v1 - v0) p^2``
exp         ``v0 * 2^(p log2(v1 / v0))``
rex         ``v0 + (v1 - v0) p (1 - a) / (1 - a p)``
poly        ``v0 + (v1 - v0) (1 - 2^(a log2 q))``
inv-sqrt    ``v0 + (v1 - v0) p s1 (1 + s1) / (s (1 + s))``, ``s = sqrt(1 + a p)``, ``s1 = sqrt(1 + a)``
            (= g(p) / g(1) with g(x) = 1/sqrt(1 + a x) - 1)
power       ``min(c, a * 2^(b log2 t))`` over the absolute clock, ``log2 t = e + log2(m)`` split at the
            binary exponent so that large clocks keep float32 accuracy; ``t = 0``: ``min(c, inf | a | 0)``
            for ``b <, =, > 0``
==========  ====================================================================================

Every shape but ``power`` is clamped to ``[min(v0, v1), max(v0, v1)]`` as the reference is. Every shape
is evaluated and the selected one picked with ``tl.where``: unselected branches may hold
inf or NaN without harm. No libdevice calls (they do not run in the interpreter): powers are
``exp2(y * log2(x))``.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._jit import device_jit

from . import layout as L

__all__ = ["phase_value", "schedule_value", "group_lr", "evaluate_schedule_kernel", "phase_block"]

_IC = tl.constexpr(L.SCHED_INT_COLS)
_FC = tl.constexpr(L.SCHED_FLOAT_COLS)
_START = tl.constexpr(L.SCHED_START)
_SPAN = tl.constexpr(L.SCHED_SPAN)
_SHAPE = tl.constexpr(L.SCHED_SHAPE)
_V0 = tl.constexpr(L.SCHED_V0)
_V1 = tl.constexpr(L.SCHED_V1)
_A = tl.constexpr(L.SCHED_A)
_B = tl.constexpr(L.SCHED_B)
_C = tl.constexpr(L.SCHED_C)
_GSC = tl.constexpr(L.GROUP_SCHED_COLS)
_GS_FIRST = tl.constexpr(L.GS_FIRST_ROW)
_GS_ROWS = tl.constexpr(L.GS_ROWS)
_GS_CLOCK = tl.constexpr(L.GS_CLOCK)
_HPC = tl.constexpr(L.HP_COLS)
_HP_LR_SCALE = tl.constexpr(L.HP_LR_SCALE)

_CONSTANT = tl.constexpr(L.SHAPE_CONSTANT)
_LINEAR = tl.constexpr(L.SHAPE_LINEAR)
_COSINE = tl.constexpr(L.SHAPE_COSINE)
_ONE_SQRT = tl.constexpr(L.SHAPE_ONE_SQRT)
_SQUARE = tl.constexpr(L.SHAPE_SQUARE)
_EXP = tl.constexpr(L.SHAPE_EXP)
_REX = tl.constexpr(L.SHAPE_REX)
_POLY = tl.constexpr(L.SHAPE_POLY)
_INV_SQRT = tl.constexpr(L.SHAPE_INV_SQRT)
_POWER = tl.constexpr(L.SHAPE_POWER)

_HALF_PI = tl.constexpr(1.5707963267948966)
_INF = tl.constexpr(float("inf"))
_TINY = tl.constexpr(1.1754943508222875e-38)  # smallest normal float32
_MIN_PHASE_BLOCK = 16


def phase_block(max_rows: int) -> int:
    """``PHASE_BLOCK`` for tables whose longest schedule has ``max_rows`` rows: a power of two >= 16."""
    return max(_MIN_PHASE_BLOCK, triton.next_power_of_2(max(int(max_rows), 1)))


@device_jit
def _log2_of_clock(t):
    """log2(t) for int64 ``t >= 1`` as (exponent, log2(mantissa)) so that ``b * log2 t`` keeps float32
    accuracy when ``t`` is large (a float32 log2 near 40 has an ulp of 4e-6)."""
    bits = t.to(tl.float32).to(tl.int32, bitcast=True)
    e = ((bits >> 23) & 0xFF) - 127
    mant = ((bits & 0x7FFFFF) | 0x3F800000).to(tl.float32, bitcast=True)  # in [1, 2)
    return e.to(tl.float32), tl.log2(mant)


@device_jit
def phase_value(t, start, span, shape, v0d, v1d, ad, bd, cd):
    """float32 value at int64 clock ``t`` of a phase (int64 ``start, span``, int ``shape``, float64
    ``v0, v1, a, b, c``) placed at ``start``; elementwise over tensors of one shape."""
    off = t - start
    span1 = tl.maximum(span, 1)
    span_f = span1.to(tl.float32)
    p = off.to(tl.float32) / span_f
    q = (span1 - off).to(tl.float32) / span_f
    v0 = v0d.to(tl.float32)
    dv = (v1d - v0d).to(tl.float32)
    a = ad.to(tl.float32)
    b = bd.to(tl.float32)
    c = cd.to(tl.float32)

    sn = tl.sin(p * _HALF_PI)
    w_cos = sn * sn
    w_sqrt = tl.sqrt_rn(tl.maximum(p, 0.0))
    # Clamps below only keep unselected branches quiet (no 0/0, no log2(0)); for the shape that owns
    # the parameter they change nothing: rex (1 - a) + a q >= 1 - a > 0, poly q >= 1/span, inv-sqrt a > 0.
    one_minus_a = (1.0 - ad).to(tl.float32)
    rex_den = one_minus_a + a * q  # = 1 - a p
    w_rex = p * one_minus_a / tl.where(rex_den > 0.0, rex_den, 1.0)
    w_poly = 1.0 - tl.exp2(a * tl.log2(tl.maximum(q, _TINY)))
    a_pos = tl.maximum(a, 0.0)
    s = tl.sqrt_rn(1.0 + a_pos * p)
    s1 = tl.sqrt_rn(1.0 + a_pos)
    w_inv = p * (s1 * (1.0 + s1)) / (s * (1.0 + s))

    w = tl.where(shape == _LINEAR, p, 0.0)
    w = tl.where(shape == _COSINE, w_cos, w)
    w = tl.where(shape == _ONE_SQRT, w_sqrt, w)
    w = tl.where(shape == _SQUARE, p * p, w)
    w = tl.where(shape == _REX, w_rex, w)
    w = tl.where(shape == _POLY, w_poly, w)
    w = tl.where(shape == _INV_SQRT, w_inv, w)
    value = v0 + dv * w

    ratio = (v1d / tl.where(v0d != 0.0, v0d, 1.0)).to(tl.float32)
    ratio = tl.where(ratio > 0.0, ratio, 1.0)
    value = tl.where(shape == _EXP, v0 * tl.exp2(p * tl.log2(ratio)), value)
    # as the reference: clamp to the phase's endpoints (removes rounding just past v1; monotone)
    v1 = v1d.to(tl.float32)
    value = tl.minimum(tl.maximum(value, tl.minimum(v0, v1)), tl.maximum(v0, v1))

    e, lm = _log2_of_clock(tl.maximum(t, 1))
    raw = a * tl.exp2(b * e + b * lm)
    raw_at_zero = tl.where(b < 0.0, _INF, tl.where(b == 0.0, a, 0.0))
    raw = tl.where(t == 0, raw_at_zero, raw)
    value = tl.where(shape == _POWER, tl.minimum(c, raw), value)

    return tl.where((shape == _CONSTANT) | (span == 0), v0, value)


@device_jit
def schedule_value(ints_ptr, floats_ptr, first_row, n_rows, t, PHASE_BLOCK: tl.constexpr):
    """float32 ``[B]`` values of the schedules whose rows are ``[first_row, first_row + n_rows)`` at
    clocks ``t`` (``first_row``, ``n_rows``, ``t``: int64 ``[B]``; ``n_rows <= PHASE_BLOCK``)."""
    j = tl.arange(0, PHASE_BLOCK)
    rows = first_row[:, None] + j[None, :]
    valid = j[None, :] < n_rows[:, None]
    starts = tl.load(ints_ptr + rows * _IC + _START, mask=valid, other=0)
    below = (starts <= t[:, None]) & valid
    k = tl.maximum(tl.sum(below.to(tl.int32), axis=1) - 1, 0)
    row = first_row + k
    ip = ints_ptr + row * _IC
    fp = floats_ptr + row * _FC
    return phase_value(t, tl.load(ip + _START), tl.load(ip + _SPAN), tl.load(ip + _SHAPE),
                       tl.load(fp + _V0), tl.load(fp + _V1), tl.load(fp + _A), tl.load(fp + _B),
                       tl.load(fp + _C))


@device_jit
def group_lr(ints_ptr, floats_ptr, group_sched_ptr, hparams_ptr, clock_ptr, g, PHASE_BLOCK: tl.constexpr):
    """float32 scalar learning rate of param group ``g`` this step:
    ``hparams[g, HP_LR_SCALE] * schedule_g(clock[group_sched[g, GS_CLOCK]])``."""
    gs = group_sched_ptr + g * _GSC
    one = tl.zeros([1], dtype=tl.int64)
    first = one + tl.load(gs + _GS_FIRST)
    rows = one + tl.load(gs + _GS_ROWS)
    t = one + tl.load(clock_ptr + tl.load(gs + _GS_CLOCK))
    value = tl.sum(schedule_value(ints_ptr, floats_ptr, first, rows, t, PHASE_BLOCK), axis=0)
    scale = tl.load(hparams_ptr + g * _HPC + _HP_LR_SCALE).to(tl.float32)
    return scale * value


@triton.jit(do_not_specialize=["n"])
def evaluate_schedule_kernel(ints_ptr, floats_ptr, group_sched_ptr, t_ptr, out_ptr, n,
                             PHASE_BLOCK: tl.constexpr, BLOCK: tl.constexpr):
    """``out[i] = schedule_0(t[i])`` (float32) for the schedule in row 0 of ``group_sched``."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    t = tl.load(t_ptr + offs, mask=mask, other=0)
    zero = tl.zeros([BLOCK], dtype=tl.int64)
    first = zero + tl.load(group_sched_ptr + _GS_FIRST)
    rows = zero + tl.load(group_sched_ptr + _GS_ROWS)
    tl.store(out_ptr + offs, schedule_value(ints_ptr, floats_ptr, first, rows, t, PHASE_BLOCK), mask=mask)
