"""``KernelLRScheduler``: a torch ``LRScheduler`` object for trainers, following the in-kernel schedule.

Trainers want a scheduler object next to the optimizer (HF ``Trainer(optimizers=(opt, sched))``,
Lightning's ``configure_optimizers``, accelerate's ``prepare``): they step it, save and load it with their
checkpoints, and log its ``get_last_lr()``. With :class:`~lrsched_fused.FusedAdamW` /
:class:`~lrsched_fused.FusedLAMB` and a schedule, the kernel already evaluates the lr from the device
clock. This scheduler only *reports* it:

* ``step()`` never changes what the kernel uses (it writes no ``group["lr"]``): extra or missing calls
  (accelerate steps it once per process; gradient accumulation skips some) change nothing;
* ``get_last_lr()`` returns what ``LambdaLR`` returns for the same schedule at the same point: the lr
  read at its last ``step()`` (or at construction), i.e. the lr the next optimizer step will use right
  after ``scheduler.step()``, and still the lr the last update used between ``optimizer.step()`` and
  ``scheduler.step()``, where the HF Trainer logs it. The value is the optimizer's ``group["lr"]``
  (``lrsched_fused/optim/lr_view.py``), corrected from the device at ``step()`` when an optimizer step may
  have been skipped (a GradScaler), else with no host sync;
* ``state_dict()`` / ``load_state_dict()`` round-trip (its own counters); the lr comes from the optimizer's
  clock, which travels in the optimizer's state dict, so a resume continues exactly in any load order.

It differs from :class:`lrsched_fused.schedules.LRScheduler`, which *drives* any torch optimizer by
writing ``group["lr"] = schedule(t)`` on the host at each ``step()``; use that one with optimizers that are
not ours.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["KernelLRScheduler"]


class KernelLRScheduler(torch.optim.lr_scheduler.LRScheduler):
    """Follows a fused optimizer's in-kernel schedule (see the module docstring). Create it with
    ``optimizer.lr_scheduler()``."""

    def __init__(self, optimizer: torch.optim.Optimizer, last_epoch: int = -1) -> None:
        if not hasattr(optimizer, "_sync_lrs"):
            raise ValueError(f"optimizer must be a FusedAdamW or FusedLAMB; got {type(optimizer).__name__} (for "
                             "other optimizers use lrsched_fused.schedules.LRScheduler, which drives them)")
        super().__init__(optimizer, last_epoch)

    def _current(self) -> list[float]:
        self.optimizer._sync_lrs()
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def get_lr(self) -> list[float]:
        return self._current()

    def step(self, epoch: int | None = None) -> None:
        """Count the call; change nothing the kernel uses."""
        self._step_count = getattr(self, "_step_count", 0) + 1
        self.last_epoch += 1
        self._last_lr = self._current()

    def get_last_lr(self) -> list[float]:
        """The lr read at the last ``step()``, as ``LambdaLR``: the lr the next update will use once the
        scheduler has stepped after the optimizer, and the one the last update used in between."""
        return list(self._last_lr)

    def state_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.__dict__.update(state_dict)
