"""What ``param_groups[i]["lr"]`` shows: the lr the next step will use, with no host sync in ``step()``.

A group with a schedule is driven by the kernel from the device clock; its ``group["lr"]`` is written
here, after construction and after every step, set_clock, schedule change and load, as
``lr_scale * schedule(clock)`` at the clock the next step will read: exactly what
``torch.optim.AdamW`` + ``LambdaLR`` shows. Loggers (Lightning's ``LearningRateMonitor``, wandb and
tensorboard callbacks) read that field.

The clock lives on the device; this module keeps a **host mirror** of it that advances with each step
(steps + 1, tokens + the step's ``tokens``). It is exact whenever it is known that every step was
applied. Two things make it uncertain: a step that may have been skipped (a GradScaler's ``found_inf``,
``skip_nonfinite=True``) and ``tokens`` passed as a device tensor. Then the mirror advances optimistically
(as if applied, by 0 tokens for a tensor) and is corrected from the device at the next place that reads it
anyway or may read it: ``state_dict()``, ``get_last_lr()``, ``set_clock`` and the lr scheduler's
``get_last_lr()`` (a logger's call, not the hot loop). Until then, after a skipped step, ``group["lr"]``
runs one step ahead of the kernel.

A group without a schedule follows its own ``group["lr"]`` (a float or tensor a torch scheduler writes):
it is never written here. A scheduled group's ``lr`` edited from outside (e.g. a trainer's own scheduler on
top of ours) is overwritten, with one warning that says what to pass instead.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import torch

from lrsched_fused.functional import GroupConfig
from lrsched_fused.kernels import layout as L

__all__ = ["LrView", "SECOND_SCHEDULER"]

SECOND_SCHEDULER = (
    "param_groups[{gi}]['lr'] was changed while a schedule drives that group (in the kernel, from the device "
    "clock): the schedule wins and group['lr'] shows the lr it gives. A second scheduler is probably attached (the "
    "HF Trainer builds one when given optimizers=(opt, None)): pass optimizers=(opt, opt.lr_scheduler()) to the "
    "Trainer, return opt.lr_scheduler() from Lightning's configure_optimizers, or call opt.set_schedule(None) to "
    "follow group['lr'] instead")


class LrView:
    """The host mirror of the clock and the lrs written into the param groups (see the module docstring)."""

    def __init__(self, clock: torch.Tensor | None = None) -> None:
        self.clock = [0] * L.NUM_CLOCKS
        self.exact = True
        self.reset(clock)
        self.written: list[float | None] = []
        self.warned = False

    def reset(self, clock: torch.Tensor | list[int] | None) -> None:
        """The mirror from the device clock (a host read: callers are off the hot loop) or known values."""
        if isinstance(clock, torch.Tensor):
            clock = clock.tolist()
        self.clock = [0] * L.NUM_CLOCKS if clock is None else [int(v) for v in clock]
        self.exact = True

    def advance(self, tokens: int | torch.Tensor | None, may_skip: bool) -> None:
        """After a step: the clock the next step reads, optimistically."""
        self.clock[L.CLOCK_STEPS] += 1
        if isinstance(tokens, torch.Tensor):
            self.exact = False
        elif tokens is not None:
            self.clock[L.CLOCK_TOKENS] += tokens
        if may_skip:
            self.exact = False

    def check_edits(self, groups: Sequence[dict]) -> None:
        """Warn once if a scheduled group's ``lr`` is not what was written (someone else writes it)."""
        if self.warned:
            return
        for gi, g in enumerate(groups):
            want = self.written[gi] if gi < len(self.written) else None
            if g.get("schedule") is not None and want is not None and not (type(g["lr"]) is float and g["lr"] == want):
                self.warned = True
                warnings.warn(SECOND_SCHEDULER.format(gi=gi), RuntimeWarning, stacklevel=5)
                return

    def publish(self, groups: Sequence[dict], configs: Sequence[GroupConfig]) -> None:
        """Write ``lr_scale * schedule(clock)`` into each scheduled group's ``lr``."""
        written: list[float | None] = []
        for g, c in zip(groups, configs):
            if c.schedule is None:
                written.append(None)
                continue
            lr = c.lr_at(self.clock)
            g["lr"] = lr
            written.append(lr)
        self.written = written
