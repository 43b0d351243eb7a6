"""The schedule specification: an immutable chain of :class:`~._phase.Phase` objects laid end to end from
clock 0, its float64 reference evaluator (:meth:`Schedule.__call__`), its kernel encoding and plain-data
form, and the ``chain`` / ``tabulated`` builders. The phase shapes and their formulas: :mod:`._phase`.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping, Sequence

from lrsched_fused.kernels import layout as L

from ._phase import MAX_CLOCK, SHAPES, Phase, _check_count, _check_finite

__all__ = ["Phase", "Schedule", "SHAPES", "FORMAT_VERSION", "chain", "tabulated"]

#: Version of the plain-data form returned by :meth:`Schedule.to_dict`.
FORMAT_VERSION = 1

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

    def __copy__(self) -> "Schedule":
        return self

    def __deepcopy__(self, memo: dict) -> "Schedule":
        """A schedule is an immutable value (like a tuple of floats): copies are the object itself, so a
        param group copied by ``deepcopy`` (torch's ``add_param_group`` defaults, checkpoints) keeps it."""
        return self

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

    def branch(self, at_step: int, decay_steps: int, shape: str = "linear",
               final_lr: float | None = None) -> "Schedule":
        """The schedule of a decay branch started from a checkpoint at ``at_step`` (WSD branching: Hu et
        al., MiniCPM, arXiv 2404.06395): this schedule's values for ``t < at_step``, then a decay of
        ``decay_steps`` updates of ``shape`` (a WSD decay shape: linear, cosine, 1-sqrt, square, exp) from
        ``self(at_step)`` to ``final_lr`` (default: this schedule's ``final_value``), held afterwards.

        ``at_step`` may lie anywhere (stable phase, warmup, inside the original decay, past the end); the
        branch may not rise (``final_lr <= self(at_step)``). The branch of ``wsd(...)`` at its decay start
        with its decay equals it; ``wsd(total_steps=T).branch(a, d, s)`` equals ``wsd(total_steps=a + d,
        decay_steps=d, decay=s)`` for ``a`` in the stable phase. See :mod:`._branch`.
        """
        from ._branch import branch_phases

        phases, final = branch_phases(self, at_step, decay_steps, shape, final_lr)
        args = {"schedule": self, "at_step": at_step, "decay_steps": decay_steps, "shape": shape,
                "final_lr": final_lr}
        return Schedule(phases, final_value=final, unit=self.unit, name="branch", args=args)

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
