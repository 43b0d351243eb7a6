"""The schedule specification: an immutable sequence of phases, and its float64 reference evaluator.

A :class:`Schedule` is a pure function of a clock ``t`` (updates applied so far, or tokens seen so far),
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
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping, Sequence

from lrsched_fused.kernels import layout as L

__all__ = ["Phase", "Schedule", "SHAPES", "FORMAT_VERSION"]

#: Version of the plain-data form returned by :meth:`Schedule.to_dict`.
FORMAT_VERSION = 1

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


@dataclass(frozen=True)
class Schedule:
    """An immutable chain of :class:`Phase` objects laid end to end from clock 0.

    ``schedule(t)`` is the float64 reference value at clock ``t``; ``final_value`` holds for
    ``t >= total`` (default: the last phase's end value). ``unit`` names the clock the schedule reads:
    ``"steps"`` (updates applied so far) or ``"tokens"`` (tokens consumed so far, passed to
    ``optimizer.step(tokens=...)``). ``name`` and ``args`` record the constructor call for display only.
    """

    phases: tuple[Phase, ...]
    final_value: float | None = None
    unit: str = "steps"
    name: str = "schedule"
    args: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        phases = tuple(self.phases)
        if not phases:
            raise ValueError("Schedule.phases must contain at least one Phase")
        for i, ph in enumerate(phases):
            if not isinstance(ph, Phase):
                raise ValueError(f"Schedule.phases[{i}] must be a Phase; got {type(ph).__name__}")
        total = sum(ph.length for ph in phases)
        if total > MAX_CLOCK:
            raise ValueError(f"Schedule total length must be <= 2**62; got {total}")
        final = phases[-1].end_value if self.final_value is None else _check_finite("final_value", self.final_value)
        if phases[-1].shape == "power" and self.final_value is None:
            final = phases[-1].value_at(total, total - phases[-1].length)
        if self.unit not in ("steps", "tokens"):
            raise ValueError(f"Schedule.unit must be 'steps' or 'tokens'; got {self.unit!r}")
        object.__setattr__(self, "phases", phases)
        object.__setattr__(self, "final_value", float(final))
        object.__setattr__(self, "args", dict(self.args))

    # -- geometry ------------------------------------------------------------------------------------
    @property
    def total(self) -> int:
        """Clock value at which the last phase ends and ``final_value`` begins."""
        return sum(ph.length for ph in self.phases)

    @property
    def starts(self) -> tuple[int, ...]:
        out, s = [], 0
        for ph in self.phases:
            out.append(s)
            s += ph.length
        return tuple(out)

    @property
    def edges(self) -> tuple[int, ...]:
        """Phase boundaries including 0 and ``total`` (sorted, duplicates removed)."""
        return tuple(sorted(set(self.starts) | {self.total}))

    @property
    def peak(self) -> float:
        """Largest value the schedule takes (phase endpoints; every shape is monotone within a phase)."""
        vals = [self.final_value]
        for s, ph in zip(self.starts, self.phases):
            if ph.length:
                vals += [ph.value_at(s, s), ph.value_at(s + ph.length - 1, s)]
        return max(vals)

    # -- float64 reference evaluator --------------------------------------------------------------------
    def __call__(self, t: int) -> float:
        """The value at clock ``t`` (float64). ``t`` counts updates (or tokens) already applied: the first
        update uses ``t = 0``."""
        if isinstance(t, bool) or not isinstance(t, int):
            if hasattr(t, "__index__"):
                t = int(t.__index__())
            else:
                raise ValueError(f"t must be an integer clock value >= 0; got {t!r}")
        if t < 0:
            raise ValueError(f"t must be an integer clock value >= 0; got {t}")
        start = 0
        for ph in self.phases:
            if t < start + ph.length:
                return ph.value_at(t, start)
            start += ph.length
        return self.final_value

    # -- composition -----------------------------------------------------------------------------------
    def then(self, *phases: Phase, final_value: float | None = None) -> "Schedule":
        """A new schedule with ``phases`` appended after this one's last phase."""
        return Schedule(self.phases + tuple(phases), final_value=final_value, unit=self.unit, name="schedule")

    def truncate(self, at: int) -> tuple[Phase, ...]:
        """The phases covering ``[0, at)``, the one holding ``at`` cut short (its shape keeps its span)."""
        at = _check_count("at_step", at)
        out, start = [], 0
        for ph in self.phases:
            if start >= at:
                break
            if start + ph.length <= at:
                out.append(ph)
            else:
                out.append(replace(ph, length=at - start, span=ph.span))
            start += ph.length
        if start < at:  # past the end: hold the final value up to `at`
            out.append(Phase("constant", at - start, self.final_value))
        return tuple(out)

    def scaled(self, factor: float) -> "Schedule":
        """Every value multiplied by ``factor`` (``factor >= 0``)."""
        factor = _check_finite("factor", factor)
        if factor < 0:
            raise ValueError(f"factor must be >= 0; got {factor}")
        phases = []
        for ph in self.phases:
            if ph.shape == "power":
                phases.append(replace(ph, start_value=ph.start_value * factor, end_value=ph.end_value * factor,
                                      a=ph.a * factor, c=ph.c * factor))
            else:
                phases.append(replace(ph, start_value=ph.start_value * factor, end_value=ph.end_value * factor))
        return Schedule(tuple(phases), final_value=self.final_value * factor, unit=self.unit, name=self.name,
                        args=self.args)

    # -- encodings -------------------------------------------------------------------------------------
    def encode(self) -> tuple[list[list[int]], list[list[float]]]:
        """Rows of the kernel table (see :mod:`lrsched_fused.kernels.layout`): ``(ints, floats)``.

        Zero-length phases are kept (they are never selected); a terminal constant phase holding
        ``final_value`` is appended so that the kernels need no special case past the end.
        """
        ints, floats, start = [], [], 0
        for ph in self.phases:
            ints.append([start, ph.length, ph.span, L.SHAPE_CODES[ph.shape]])
            floats.append([ph.start_value, ph.end_value, ph.a, ph.b, ph.c])
            start += ph.length
        ints.append([start, L.INFINITE_LENGTH, 1, L.SHAPE_CONSTANT])
        floats.append([self.final_value, self.final_value, 0.0, 0.0, 0.0])
        return ints, floats

    def to_dict(self) -> dict:
        """Plain data (numbers, strings, lists, dicts) that survives ``json`` and
        ``torch.load(weights_only=True)``; :meth:`from_dict` rebuilds an equal schedule."""
        return {"format": FORMAT_VERSION, "name": self.name, "unit": self.unit, "final_value": self.final_value,
                "phases": [ph.to_dict() for ph in self.phases], "args": _plain(self.args)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Schedule":
        if not isinstance(data, Mapping) or "phases" not in data:
            raise ValueError("schedule data must be a dict with a 'phases' list (from Schedule.to_dict())")
        version = data.get("format", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise ValueError(f"schedule data format must be {FORMAT_VERSION}; got {version!r}")
        phases = tuple(Phase(**{k: ph[k] for k in ("shape", "length", "start_value", "end_value", "a", "b", "c", "span")
                                if k in ph}) for ph in data["phases"])
        return cls(phases, final_value=data.get("final_value"), unit=data.get("unit", "steps"),
                   name=data.get("name", "schedule"), args=data.get("args", {}))

    def describe(self) -> str:
        """One line per phase with its clock range."""
        lines = [f"{self.name} ({self.unit}):"]
        for s, ph in zip(self.starts, self.phases):
            lines.append(f"  [{s}, {s + ph.length}) {ph.describe()}")
        lines.append(f"  [{self.total}, inf) constant({self.final_value:.6g})")
        return "\n".join(lines)

    def __repr__(self) -> str:
        if self.args:
            args = ", ".join(f"{k}={v!r}" for k, v in self.args.items())
            return f"{self.name}({args})"
        return f"Schedule({len(self.phases)} phases, total={self.total}, unit={self.unit!r})"


def _plain(obj: Any) -> Any:
    """Recursively convert to JSON-able plain data (schedules inside args become dicts)."""
    if isinstance(obj, Schedule):
        return obj.to_dict()
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, numbers.Integral):  # numpy scalars
        return int(obj)
    if isinstance(obj, numbers.Real):
        return float(obj)
    return repr(obj)


def chain(*parts: Phase | Schedule | Iterable[Phase], final_value: float | None = None,
          unit: str = "steps") -> Schedule:
    """Join phases and schedules end to end (each schedule contributes its phases, not its tail)."""
    phases: list[Phase] = []
    for part in parts:
        if isinstance(part, Phase):
            phases.append(part)
        elif isinstance(part, Schedule):
            phases.extend(part.phases)
        else:
            phases.extend(part)
    return Schedule(tuple(phases), final_value=final_value, unit=unit, name="chain")


def tabulated(steps: Sequence[int], values: Sequence[float], *, unit: str = "steps") -> Schedule:
    """A piecewise-linear schedule through the knots ``(steps[i], values[i])``.

    ``steps`` must start at 0 and increase strictly; the value is held at ``values[-1]`` after the last
    knot. It encodes as linear phases, so the kernels need no extra code (useful for schedules refined
    from data, e.g. Defazio et al., arXiv 2310.07831).
    """
    steps, values = list(steps), [_check_finite(f"values[{i}]", v) for i, v in enumerate(values)]
    if len(steps) != len(values) or len(steps) < 1:
        raise ValueError(f"steps and values must have the same non-zero length; got {len(steps)} and {len(values)}")
    steps = [_check_count(f"steps[{i}]", s) for i, s in enumerate(steps)]
    if steps[0] != 0:
        raise ValueError(f"steps[0] must be 0; got {steps[0]}")
    for i in range(1, len(steps)):
        if steps[i] <= steps[i - 1]:
            raise ValueError(f"steps must increase strictly; steps[{i}]={steps[i]} <= steps[{i - 1}]={steps[i - 1]}")
    if len(steps) == 1:
        phases = (Phase("constant", 0, values[0]),)
    else:
        phases = tuple(Phase("linear", s1 - s0, v0, v1)
                       for s0, s1, v0, v1 in zip(steps, steps[1:], values, values[1:]))
    return Schedule(phases, final_value=values[-1], unit=unit, name="tabulated",
                    args={"steps": steps, "values": values})
