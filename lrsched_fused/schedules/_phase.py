"""One phase of a schedule: its shapes, their formulas and sources, and the float64 reference value.

A :class:`~._spec.Schedule` is a pure function of a clock ``t`` (updates applied so far, or tokens seen so far),
as in optax: the first update uses ``t = 0``. It is a chain of :class:`Phase` objects laid end to end
from ``t = 0``; after the last phase the value is ``final_value``.

Within a phase that starts at ``s`` the progress is ``p = (t - s) / span`` (``span`` is the phase's
length unless the phase was cut short, see :meth:`Schedule.truncate`), and the value is

.. math::  f(t) = v_0 + (v_1 - v_0)\\, w(p)

with a shape weight ``w`` that is exactly 0 at ``p = 0`` (so every phase starts exactly at its start
value) and 1 at ``p = 1``. The result is clamped to ``[min(v0, v1), max(v0, v1)]``, which removes
only the rounding of ``v1 - v0`` near ``p = 1`` (without it a decay could end an ulp below its
``final_lr``); evaluators should do the same.

============  ==========================================  =====================================
shape         ``w(p)``                                    source
============  ==========================================  =====================================
constant      0                                           --
linear        ``p``                                       --
cosine        ``(1 - cos(pi p)) / 2``                     Loshchilov & Hutter, SGDR (2017)
1-sqrt        ``sqrt(p)``                                 Haegele et al., arXiv 2405.18392
square        ``p^2``                                     Haegele et al., arXiv 2405.18392
exp           value ``v0 (v1 / v0)^p`` (geometric)        Hu et al. (MiniCPM), arXiv 2404.06395
rex           ``p (1 - beta) / (1 - beta p)``             Chen, Wolfe, Kyrillidis, arXiv 2107.04197
poly          ``1 - (1 - p)^power``                       --
inv-sqrt      ``g(p) / g(1)``, ``g = 1/sqrt(1 + a p) - 1``  Ibrahim et al., arXiv 2403.08763
power         value ``min(cap, coef * t^b)`` (absolute t)  Shen et al., arXiv 2408.13359
============  ==========================================  =====================================

The same spec is evaluated by the Triton device function (``lrsched_fused.kernels.schedule``) and the
C++ header (``csrc/include/lrsched/schedule.h``) from the table :meth:`Schedule.encode` produces; the
three agree to float32 rounding (``tests/test_schedule_parity.py``).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

from lrsched_fused.kernels import layout as L

__all__ = ["Phase", "SHAPES", "MAX_CLOCK"]

SHAPES = tuple(L.SHAPE_CODES)
_SHAPE_ALIASES = {"sqrt": "1-sqrt", "one_sqrt": "1-sqrt", "minus_sqrt": "1-sqrt", "inv_sqrt": "inv-sqrt",
                  "exponential": "exp", "const": "constant"}
#: Largest clock value the schedule tables are meant for; the clock is int64.
MAX_CLOCK = 2**62


def _shape_name(shape: str, what: str = "shape") -> str:
    if not isinstance(shape, str):
        raise ValueError(f"{what} must be one of {', '.join(SHAPES)}; got {shape!r}")
    name = _SHAPE_ALIASES.get(shape, shape)
    if name not in L.SHAPE_CODES:
        raise ValueError(f"{what} must be one of {', '.join(SHAPES)}; got {shape!r}")
    return name


def _check_finite(name: str, value: Any) -> float:
    # numbers.Real also admits numpy scalars (np.float32, np.int64); bools are rejected
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a finite real number; got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite real number; got {value!r}")
    return value


def _check_count(name: str, value: Any, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):  # numpy integers
            value = int(value)
        elif isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    if value < minimum or value > MAX_CLOCK:
        raise ValueError(f"{name} must be an integer in [{minimum}, 2**62]; got {value!r}")
    return int(value)


@dataclass(frozen=True)
class Phase:
    """One segment of a schedule.

    Args:
        shape: one of ``constant, linear, cosine, 1-sqrt, square, exp, rex, poly, inv-sqrt, power``.
        length: clock units the phase occupies (steps or tokens), ``>= 0``.
        start_value: value at the phase's first clock value (``v0``).
        end_value: value the shape reaches at ``p = 1`` (``v1``).
        a, b, c: shape parameters: ``rex``: ``a = beta`` in [0, 1); ``poly``: ``a = power > 0``;
            ``inv-sqrt``: ``a = timescale > 0``; ``power``: ``value = min(c, a * t**b)`` over the absolute
            clock ``t`` (``a > 0`` the coefficient, ``b`` the exponent, ``c > 0`` the cap).
        span: the denominator of the progress ``p = (t - start) / span``; defaults to ``length``.
            ``span > length`` describes a phase cut short (re-warming truncates the old schedule).
    """

    shape: str
    length: int
    start_value: float
    end_value: float | None = None
    a: float = 0.0
    b: float = 0.0
    c: float = 0.0
    span: int | None = None

    def __post_init__(self) -> None:
        shape = _shape_name(self.shape, "Phase.shape")
        length = _check_count("Phase.length", self.length)
        v0 = _check_finite("Phase.start_value", self.start_value)
        v1 = v0 if self.end_value is None else _check_finite("Phase.end_value", self.end_value)
        a = _check_finite("Phase.a", self.a)
        b = _check_finite("Phase.b", self.b)
        c = _check_finite("Phase.c", self.c)
        span = length if self.span is None else _check_count("Phase.span", self.span)
        if span < length:
            raise ValueError(f"Phase.span must be >= Phase.length ({length}); got {span}")
        if shape == "constant":
            v1 = v0
        elif shape == "exp" and length > 0 and not (v0 > 0 and v1 > 0):
            raise ValueError(
                f"Phase.start_value and Phase.end_value must both be > 0 for the 'exp' shape "
                f"(geometric interpolation); got {v0!r} and {v1!r}"
            )
        elif shape == "rex" and not 0.0 <= a < 1.0:
            raise ValueError(f"Phase.a (REX beta) must be in [0, 1); got {a!r}")
        elif shape == "poly" and not a > 0.0:
            raise ValueError(f"Phase.a (polynomial power) must be > 0; got {a!r}")
        elif shape == "inv-sqrt" and not a > 0.0:
            raise ValueError(f"Phase.a (inverse-sqrt timescale) must be > 0; got {a!r}")
        elif shape == "power":
            if not a > 0.0:
                raise ValueError(f"Phase.a (power-law coefficient) must be > 0; got {a!r}")
            if not c > 0.0:
                raise ValueError(f"Phase.c (power-law cap, max_lr) must be > 0; got {c!r}")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "length", length)
        object.__setattr__(self, "start_value", v0)
        object.__setattr__(self, "end_value", v1)
        object.__setattr__(self, "a", a)
        object.__setattr__(self, "b", b)
        object.__setattr__(self, "c", c)
        object.__setattr__(self, "span", span)

    # -- float64 reference ---------------------------------------------------------------------------
    def weight(self, p: float) -> float:
        """The shape's progress weight ``w(p)``: 0 at ``p = 0``, 1 at ``p = 1`` (not used by ``exp``/``power``)."""
        s, beta = self.shape, self.a
        if s == "constant":
            return 0.0
        if s == "linear":
            return p
        if s == "cosine":
            return 0.5 * (1.0 - math.cos(math.pi * p))
        if s == "1-sqrt":
            return math.sqrt(p)
        if s == "square":
            return p * p
        if s == "rex":
            # (1 - z) / ((1 - beta) + beta (1 - z)) is REX's profile; w = 1 - profile, simplified.
            return p * (1.0 - beta) / (1.0 - beta * p)
        if s == "poly":
            return 1.0 - (1.0 - p) ** self.a
        if s == "inv-sqrt":
            g = lambda x: 1.0 / math.sqrt(1.0 + self.a * x) - 1.0  # noqa: E731
            return g(p) / g(1.0)
        raise AssertionError(s)

    def value_at(self, t: int, start: int) -> float:
        """Value at absolute clock ``t`` for this phase placed at ``start`` (float64)."""
        if self.shape == "power":
            # lr(n) = min(max_lr, coef * n^b); 0^b for b < 0 is +inf, so the cap holds at n = 0.
            if t == 0:
                raw = math.inf if self.b < 0 else (self.a if self.b == 0 else 0.0)
            else:
                raw = self.a * math.exp(self.b * math.log(t))
            return min(self.c, raw)
        if self.shape == "constant" or self.span == 0:
            return self.start_value
        p = (t - start) / self.span
        v0, v1 = self.start_value, self.end_value
        if self.shape == "exp":
            value = v0 * math.exp(p * math.log(v1 / v0))
        else:
            value = v0 + (v1 - v0) * self.weight(p)
        # v0 + (v1 - v0) w rounds (v1 - v0), so near p = 1 it can land an ulp outside [v0, v1] (below a
        # final_lr); clamping to the endpoints removes only that rounding (it is monotone and leaves
        # f(start) = v0 exact).
        return min(max(value, min(v0, v1)), max(v0, v1))

    def describe(self) -> str:
        extra = {"rex": f", beta={self.a:g}", "poly": f", power={self.a:g}", "inv-sqrt": f", timescale={self.a:g}",
                 "power": f", coef={self.a:g}, b={self.b:g}, cap={self.c:g}"}.get(self.shape, "")
        span = f", span={self.span}" if self.span != self.length else ""
        return f"{self.shape}({self.start_value:.6g} -> {self.end_value:.6g} over {self.length}{span}{extra})"

    def to_dict(self) -> dict:
        return {"shape": self.shape, "length": self.length, "span": self.span, "start_value": self.start_value,
                "end_value": self.end_value, "a": self.a, "b": self.b, "c": self.c}
