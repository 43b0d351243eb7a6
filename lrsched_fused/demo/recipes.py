"""The two optimizer set-ups the demo compares, as factories ``model -> Recipe``.

* :func:`lamb_wsd`: :class:`lrsched_fused.FusedLAMB` driven by a warmup-stable-decay schedule that the
  optimizer evaluates itself (on the device, from its own step clock): no scheduler object, no host
  float per step.
* :func:`adamw_cosine`: the usual baseline, ``torch.optim.AdamW`` with a linear-warmup cosine
  multiplier in ``torch.optim.lr_scheduler.LambdaLR`` (the shape of transformers'
  ``get_cosine_schedule_with_warmup``), written out below as plain math, independent of this package.

Both use :func:`lrsched_fused.param_groups` (no weight decay, and for LAMB no trust ratio, on biases
and norm weights).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from lrsched_fused import FusedLAMB, param_groups
from lrsched_fused import schedules as S
from lrsched_fused.backends import select_backend
from lrsched_fused.schedules import Schedule

__all__ = ["Recipe", "RecipeFactory", "Hyper", "lamb_wsd", "adamw_cosine", "cosine_multiplier", "resolved_backend",
           "ADAMW_IMPLS"]


@dataclass
class Recipe:
    """What the training loop needs from an optimizer set-up.

    Attributes:
        name: label for tables and plots.
        optimizer: any ``torch.optim.Optimizer``.
        scheduler: stepped once after every ``optimizer.step()``, or ``None`` (the fused optimizers
            follow their schedule themselves).
        lr_used: called right after ``optimizer.step()`` (before ``scheduler.step()``): the lr that step
            used, a float or a 0-d tensor (tensors are collected without a host sync, read at the end).
        schedule: the lr as a function of the step (for plots and phase edges).
        backend: called after the first step: which implementation ran it (for the report).
    """

    name: str
    optimizer: torch.optim.Optimizer
    scheduler: object | None
    lr_used: Callable[[], float | torch.Tensor]
    schedule: Callable[[int], float]
    backend: Callable[[], str]


RecipeFactory = Callable[[torch.nn.Module], Recipe]


#: ``Hyper.adamw_impl`` -> keyword arguments of ``torch.optim.AdamW``. Without either flag torch runs
#: foreach on CUDA and a per-tensor for-loop on CPU; ``fused=True`` (CPU and CUDA since torch 2.4) is its
#: fastest, so the demo times against that by default.
ADAMW_IMPLS = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False}}


@dataclass(frozen=True)
class Hyper:
    """Hyperparameters of both recipes (the same budget: ``steps`` updates, ``warmup`` of them warmup).

    The defaults were chosen by a small learning-rate sweep on the demo's model and data (``docs/demo.md``).
    """

    steps: int = 250
    warmup: int = 25
    lamb_lr: float = 2e-2
    lamb_weight_decay: float = 0.01
    decay_fraction: float = 0.2
    adamw_lr: float = 2e-3
    adamw_weight_decay: float = 0.1
    final_lr_ratio: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    backend: str = "auto"
    adamw_impl: str = "fused"

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be an integer >= 1; got {self.steps!r}")
        if not isinstance(self.warmup, int) or not 0 <= self.warmup <= self.steps:
            raise ValueError(f"warmup must be an integer in [0, steps={self.steps}]; got {self.warmup!r}")
        for name in ("lamb_lr", "adamw_lr"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0; got {value!r}")
        if self.adamw_impl not in ADAMW_IMPLS:
            raise ValueError(f"adamw_impl must be one of {', '.join(ADAMW_IMPLS)}; got {self.adamw_impl!r}")
        if not 0.0 <= self.final_lr_ratio <= 1.0:
            raise ValueError(f"final_lr_ratio must be in [0, 1]; got {self.final_lr_ratio!r}")

    def wsd(self) -> Schedule:
        return S.wsd(peak_lr=self.lamb_lr, total_steps=self.steps, warmup_steps=self.warmup,
                     decay_fraction=self.decay_fraction, final_lr=self.final_lr_ratio * self.lamb_lr)


def cosine_multiplier(step: int, warmup: int, total: int, final_ratio: float = 0.0) -> float:
    """Linear warmup from 0, then half a cosine from 1 to ``final_ratio`` (Loshchilov & Hutter,
    arXiv 1608.03983), held after ``total``: the ``lr_lambda`` of the baseline."""
    if step < warmup:
        return step / warmup
    if step >= total:
        return final_ratio
    progress = (step - warmup) / max(1, total - warmup)
    return final_ratio + (1.0 - final_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def resolved_backend(name: str, device: torch.device) -> str:
    """The backend ``name`` (e.g. ``"auto"``) resolves to for tensors on ``device``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return select_backend(name, device).name


def lamb_wsd(hyper: Hyper) -> RecipeFactory:
    """FusedLAMB + WSD (the schedule lives in the optimizer)."""

    def make(model: torch.nn.Module) -> Recipe:
        schedule = hyper.wsd()
        device = next(model.parameters()).device
        opt = FusedLAMB(param_groups(model, weight_decay=hyper.lamb_weight_decay), lr=schedule, betas=hyper.betas,
                        eps=1e-6, backend=hyper.backend)
        return Recipe(name="FusedLAMB + WSD", optimizer=opt, scheduler=None,
                      lr_used=lambda: opt.telemetry()["lr"][0].clone(), schedule=schedule,
                      backend=lambda: f"lrsched_fused '{resolved_backend(hyper.backend, device)}' backend")

    return make


def adamw_cosine(hyper: Hyper) -> RecipeFactory:
    """``torch.optim.AdamW`` + ``LambdaLR`` cosine (the baseline)."""

    def make(model: torch.nn.Module) -> Recipe:
        opt = torch.optim.AdamW(param_groups(model, weight_decay=hyper.adamw_weight_decay), lr=hyper.adamw_lr,
                                betas=hyper.betas, eps=1e-8, **ADAMW_IMPLS[hyper.adamw_impl])

        def multiplier(step: int) -> float:
            return cosine_multiplier(step, hyper.warmup, hyper.steps, hyper.final_lr_ratio)

        sched = torch.optim.lr_scheduler.LambdaLR(opt, multiplier)
        return Recipe(name="torch AdamW + cosine", optimizer=opt, scheduler=sched,
                      lr_used=lambda: opt.param_groups[0]["lr"], schedule=lambda t: hyper.adamw_lr * multiplier(t),
                      backend=lambda: f"torch.optim.AdamW ({hyper.adamw_impl})")

    return make
