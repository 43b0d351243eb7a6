"""Decay branches of a schedule (:meth:`Schedule.branch <lrsched_fused.schedules.Schedule.branch>`).

A warmup-stable-decay run can be branched: keep training at the stable lr, and from a checkpoint at
``at_step`` start a short decay to the final lr (Hu et al., MiniCPM, arXiv 2404.06395, section 4; Haegele
et al., arXiv 2405.18392). Each branch is a complete run of ``at_step + decay_steps`` updates, so one long
stable run yields a loss-versus-budget curve. The branch of a schedule is

* equal to the schedule for ``t < at_step`` (its phases, cut at ``at_step``);
* a decay of ``decay_steps`` updates of the given shape from ``schedule(at_step)`` to ``final_lr``;
* ``final_lr`` for ``t >= at_step + decay_steps``.

This module builds the phases only; it imports nothing but :mod:`._phase`, so ``_spec`` can call it
without an import circle.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ._phase import Phase, _check_count, _check_finite, _shape_name

__all__ = ["BRANCH_SHAPES", "branch", "branch_phases"]

#: The WSD decay shapes (``schedules.DECAY_SHAPES``; a test keeps the two equal).
BRANCH_SHAPES = ("linear", "cosine", "1-sqrt", "square", "exp")


def branch(schedule: Any, at_step: int, decay_steps: int, shape: str = "linear", final_lr: float | None = None) -> Any:
    """``schedule.branch(at_step, decay_steps, shape, final_lr)`` as a constructor, so that schedule text can
    say it: ``branch(wsd(peak_lr=2e-2, total_steps=1000, decay_steps=0), at_step=600, decay_steps=100,
    shape='1-sqrt')`` (``schedules.parse``, ``lrsched-fused predict --schedule``, ``plot``)."""
    if not callable(getattr(schedule, "branch", None)):
        raise ValueError(f"schedule must be a Schedule (such as wsd(...)); got {type(schedule).__name__}")
    return schedule.branch(at_step, decay_steps, shape, final_lr)


def branch_phases(schedule: Any, at_step: Any, decay_steps: Any, shape: Any,
                  final_lr: Any) -> tuple[tuple[Phase, ...], float]:
    """The phases and final value of ``schedule``'s decay branch (see the module docstring).

    Decisions (``docs/schedule_science.md``): ``at_step`` may be any clock value >= 0, inside the warmup,
    the stable phase, the original decay or past the end (the branch then decays from the lr the
    schedule has there); ``decay_steps = 0`` ends the branch with a jump to ``final_lr``. A branch must
    not rise: ``final_lr <= schedule(at_step)``. ``final_lr=None`` is the schedule's ``final_value``.
    """
    at = _check_count("at_step", at_step)
    n = _check_count("decay_steps", decay_steps)
    try:
        name = _shape_name(shape, "shape")
    except ValueError:
        name = None
    if name not in BRANCH_SHAPES:
        raise ValueError(f"shape must be one of {', '.join(BRANCH_SHAPES)}; got {shape!r}")
    if at + n > 2**62:
        raise ValueError(f"at_step + decay_steps must be <= 2**62; got {at + n}")
    start = schedule(at)
    final = schedule.final_value if final_lr is None else _check_finite("final_lr", final_lr)
    if final < 0:
        raise ValueError(f"final_lr must be >= 0; got {final!r}")
    if final > start:
        raise ValueError(f"final_lr ({final!r}) must be <= the lr at at_step={at} ({start!r}): a decay branch "
                         "cannot rise")
    if name == "exp" and n > 0 and not (start > 0 and final > 0):
        raise ValueError(f"final_lr and the lr at at_step must both be > 0 for shape='exp' (geometric decay); "
                         f"got {final!r} and {start!r}")
    # a constant phase cut short keeps the full span in truncate(); its span has no effect, so give it its
    # own length (the branch of a WSD at its decay start then has the very phases of the matching wsd()).
    kept = tuple(replace(ph, span=ph.length) if ph.shape == "constant" else ph for ph in schedule.truncate(at))
    return kept + (Phase(name, n, start, final),), float(final)
