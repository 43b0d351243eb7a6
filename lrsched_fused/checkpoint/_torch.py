"""Moving a run between these optimizers and torch's: a torch scheduler positioned at the clock, and the
clock from a torch scheduler (see :mod:`lrsched_fused.checkpoint`)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from lrsched_fused._validate import as_schedule
from lrsched_fused.kernels import layout as L
from lrsched_fused.schedules import LRScheduler, Schedule

from ._format import EXTRA_KEY, GROUP_CLOCK_KEY
from ._load import clock_values

__all__ = ["torch_scheduler_for", "clock_from_torch_scheduler"]


def _source_groups_and_clock(source) -> tuple[list[Mapping], int]:
    if isinstance(source, torch.optim.Optimizer) and hasattr(source, "clock"):
        clock = source.clock
        steps = 0 if clock is None else int(clock[L.CLOCK_STEPS])
        return list(source.param_groups), steps
    if isinstance(source, Mapping) and "param_groups" in source:
        groups = list(source["param_groups"])
        extra = source.get(EXTRA_KEY)
        if isinstance(extra, Mapping) and "clock" in extra:
            clock = extra["clock"]
        else:
            clock = groups[0].get(GROUP_CLOCK_KEY) if groups and isinstance(groups[0], Mapping) else None
        steps = 0 if clock is None else clock_values(clock, "the source's clock")[L.CLOCK_STEPS]
        return groups, steps
    raise ValueError("source must be a FusedAdamW / FusedLAMB or its state_dict(); got "
                     f"{type(source).__name__}")


def torch_scheduler_for(optimizer: torch.optim.Optimizer, source) -> LRScheduler:
    """A torch scheduler that makes ``optimizer`` (any ``torch.optim`` optimizer, e.g. ``torch.optim.AdamW``
    after ``load_state_dict(fused.state_dict())``) continue the lr of ``source`` (a ``FusedAdamW`` /
    ``FusedLAMB`` or its ``state_dict()``).

    The fused optimizer's next update uses ``lr = lr_scale * schedule(c)`` with ``c`` its step clock; a
    torch scheduler whose ``last_epoch`` is ``c`` sets the same lr (it has stepped ``c`` times: torch's
    scheduler sets ``schedule(last_epoch)`` for the coming update, and the first update uses
    ``schedule(0)``). So this returns ``lrsched_fused.schedules.LRScheduler(optimizer, schedules,
    last_epoch=c - 1)`` (its constructor steps once), with ``initial_lr`` filled in as torch requires when
    resuming. A group without a schedule keeps a constant lr (``constant(group["lr"])``). Call
    ``scheduler.step()`` after each ``optimizer.step()`` as usual.

    Raises ``ValueError`` when a group's schedule counts tokens (a torch scheduler steps once per update:
    no position corresponds to a token clock) or the group counts differ.
    """
    from lrsched_fused.schedules import constant

    groups, clock = _source_groups_and_clock(source)
    if len(groups) != len(optimizer.param_groups):
        raise ValueError(f"source has {len(groups)} param groups; optimizer has {len(optimizer.param_groups)}")
    scheds: list[Schedule] = []
    for gi, g in enumerate(groups):
        sched = as_schedule(g.get("schedule"))
        if sched is None:
            sched = constant(float(g["lr"]))
        if sched.unit != "steps":
            raise ValueError(f"param_groups[{gi}]'s schedule counts {sched.unit}; a torch scheduler steps once per "
                             "update, so only schedules over steps convert")
        scheds.append(sched)
    for g, src, sched in zip(optimizer.param_groups, groups, scheds):
        g["lr_scale"] = float(src.get("lr_scale", 1.0))
        g.setdefault("initial_lr", sched.peak)
        g.pop(GROUP_CLOCK_KEY, None)  # a torch optimizer does not advance it: drop the stale copy
    return LRScheduler(optimizer, scheds, last_epoch=clock - 1)


def clock_from_torch_scheduler(scheduler: torch.optim.lr_scheduler.LRScheduler) -> int:
    """The step clock matching a torch scheduler's position: ``scheduler.last_epoch`` (the number of
    ``scheduler.step()`` calls after its construction step, i.e. of updates applied when the scheduler is
    stepped once per update, as torch prescribes). Pass it to ``FusedOptimizer.set_clock(steps=...)``."""
    last = getattr(scheduler, "last_epoch", None)
    if isinstance(last, bool) or not isinstance(last, int) or last < 0:
        raise ValueError(f"scheduler.last_epoch must be an int >= 0 (a constructed torch scheduler); got {last!r}")
    return last
