"""Host-side adapter: any torch optimizer can follow a :class:`Schedule` through torch's scheduler API."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ._spec import Schedule

__all__ = ["LRScheduler"]


class LRScheduler(torch.optim.lr_scheduler.LRScheduler):
    """A ``torch.optim.lr_scheduler.LRScheduler`` that sets ``group["lr"] = schedule(t)``.

    ``t`` is the scheduler's ``last_epoch`` (the number of ``scheduler.step()`` calls so far), so, as with
    every torch scheduler, the first optimizer step uses ``schedule(0)``. Give one schedule for all
    groups or a sequence with one per group; a group's ``lr_scale`` (if present) multiplies its value.
    The state dict stores the schedules as plain data, so it survives ``torch.load(weights_only=True)``.
    This evaluates on the host (a Python float per step) and *drives* the optimizer by writing
    ``group["lr"]``; :class:`lrsched_fused.FusedAdamW` and :class:`lrsched_fused.FusedLAMB` evaluate the same
    schedules on the device instead, and their ``opt.lr_scheduler()``
    (``lrsched_fused.optim.KernelLRScheduler``) only *follows* that in-kernel schedule for trainers, writing
    nothing. Use this class with optimizers that are not ours.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: Schedule | Sequence[Schedule],
                 last_epoch: int = -1) -> None:
        groups = optimizer.param_groups
        scheds = [schedule] * len(groups) if isinstance(schedule, Schedule) else list(schedule)
        if len(scheds) != len(groups):
            raise ValueError(f"schedule must be one Schedule or one per param group ({len(groups)}); got {len(scheds)}")
        for i, s in enumerate(scheds):
            if not isinstance(s, Schedule):
                raise ValueError(f"schedule[{i}] must be a Schedule; got {type(s).__name__}")
            if s.unit != "steps":
                raise ValueError(f"schedule[{i}] counts {s.unit}; LRScheduler steps once per update, so it needs a "
                                 "schedule over steps (use FusedAdamW/FusedLAMB with step(tokens=...) for tokens)")
        self.schedules = scheds
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        t = max(self.last_epoch, 0)
        return [s(t) * float(g.get("lr_scale", 1.0)) for s, g in zip(self.schedules, self.optimizer.param_groups)]

    def _get_closed_form_lr(self) -> list[float]:
        return self.get_lr()

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["schedules"] = [s.to_dict() for s in self.schedules]
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        scheds = state.pop("schedules", None)
        super().load_state_dict(state)
        if scheds is not None:
            self.schedules = [Schedule.from_dict(s) for s in scheds]
