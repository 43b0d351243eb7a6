"""A param group's hyperparameters as the kernels read them: one validated value object per group, and the
one builder of its row of the hyperparameter table (columns ``lrsched_fused.kernels.layout.HP_*``).

A group's learning rate at clock ``t`` (updates applied, or tokens consumed) is::

    lr_t = lr_scale * (schedule(t) if the group has a schedule else lr)

The kernels read ``schedule`` from the schedule tables (a group without one gets ``constant(1)``) and the
factor in front of it from column ``HP_LR_SCALE``: ``lr_scale`` with a schedule, ``lr_scale * lr``
without. Everything here is host data; nothing touches a tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Callable, ClassVar, Mapping

import torch

from lrsched_fused._validate import (as_schedule, check_betas, check_bool, check_eps, check_lr, check_lr_scale,
                                     check_positive_or_none, check_trust_clip, check_weight_decay)
from lrsched_fused.kernels import layout as L
from lrsched_fused.schedules import Schedule, constant

__all__ = ["AdamWHyper", "LambHyper", "GroupConfig", "normalize_group", "read_group", "UNIT_SCHEDULE"]

#: the kernel schedule of a group that follows a float lr (its lr is then the HP_LR_SCALE factor)
UNIT_SCHEDULE = constant(1.0)


def _base_row(lr_factor: float, betas: tuple[float, float], eps: float, weight_decay: float) -> list[float]:
    """A row with the columns every algorithm has; the rest 0."""
    row = [0.0] * L.HP_COLS
    row[L.HP_LR_SCALE] = lr_factor
    row[L.HP_BETA1], row[L.HP_BETA2] = betas
    row[L.HP_EPS] = eps
    row[L.HP_WEIGHT_DECAY] = weight_decay
    return row


def _from_group(cls, group: Mapping[str, Any]):
    names = [f.name for f in fields(cls)]
    missing = [n for n in names if n not in group]
    if missing:
        raise ValueError(f"the group lacks the entr{'y' if len(missing) == 1 else 'ies'} {', '.join(map(repr, missing))}")
    return cls(**{n: group[n] for n in names})


@dataclass(frozen=True)
class AdamWHyper:
    """AdamW's per-group hyperparameters (``torch.optim.AdamW``'s names and defaults), validated."""

    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 1e-2
    amsgrad: bool = False
    maximize: bool = False

    #: optimizer-wide options that checkpoints carry like hyperparameters: name -> check(value, name)
    checkpoint_options: ClassVar[Mapping[str, Callable[[Any, str], Any]]] = {}

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", check_betas(self.betas))
        object.__setattr__(self, "eps", check_eps(self.eps))
        object.__setattr__(self, "weight_decay", check_weight_decay(self.weight_decay))
        object.__setattr__(self, "amsgrad", check_bool(self.amsgrad, "amsgrad"))
        object.__setattr__(self, "maximize", check_bool(self.maximize, "maximize"))

    @classmethod
    def from_group(cls, group: Mapping[str, Any]) -> "AdamWHyper":
        """The hyperparameters a param group holds (``ValueError`` naming a missing or invalid one)."""
        return _from_group(cls, group)

    @property
    def state_keys(self) -> tuple[str, ...]:
        """The moment-like state entries a parameter of such a group has (torch.optim.AdamW's keys)."""
        return ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if self.amsgrad else ("exp_avg", "exp_avg_sq")

    def row(self, lr_factor: float) -> list[float]:
        """The group's row of the hyperparameter table."""
        row = _base_row(lr_factor, self.betas, self.eps, self.weight_decay)
        row[L.HP_MAXIMIZE] = 1.0 if self.maximize else 0.0
        row[L.HP_BIAS_CORRECTION] = row[L.HP_GRAD_AVERAGING] = row[L.HP_ADAPT] = 1.0
        row[L.HP_TRUST_MAX] = math.inf
        return row


@dataclass(frozen=True)
class LambHyper:
    """LAMB's per-group hyperparameters (``FusedLAMB``'s names and defaults), validated."""

    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-6
    weight_decay: float = 0.01
    bias_correction: bool = True
    grad_averaging: bool = True
    adapt: bool = True
    trust_clip: tuple[float, float] | None = None
    decoupled_decay: bool = False

    checkpoint_options: ClassVar[Mapping[str, Callable[[Any, str], Any]]] = {"max_grad_norm": check_positive_or_none}
    amsgrad: ClassVar[bool] = False
    state_keys: ClassVar[tuple[str, ...]] = ("exp_avg", "exp_avg_sq")

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", check_betas(self.betas))
        object.__setattr__(self, "eps", check_eps(self.eps))
        object.__setattr__(self, "weight_decay", check_weight_decay(self.weight_decay))
        for name in ("bias_correction", "grad_averaging", "adapt", "decoupled_decay"):
            object.__setattr__(self, name, check_bool(getattr(self, name), name))
        object.__setattr__(self, "trust_clip", check_trust_clip(self.trust_clip))

    @classmethod
    def from_group(cls, group: Mapping[str, Any]) -> "LambHyper":
        return _from_group(cls, group)

    def row(self, lr_factor: float) -> list[float]:
        row = _base_row(lr_factor, self.betas, self.eps, self.weight_decay)
        row[L.HP_BIAS_CORRECTION] = float(self.bias_correction)
        row[L.HP_GRAD_AVERAGING] = float(self.grad_averaging)
        row[L.HP_ADAPT] = float(self.adapt)
        row[L.HP_TRUST_MIN], row[L.HP_TRUST_MAX] = self.trust_clip if self.trust_clip is not None else (0.0, math.inf)
        row[L.HP_DECOUPLED] = float(self.decoupled_decay)
        return row


Hyper = AdamWHyper | LambHyper


@dataclass(frozen=True)
class GroupConfig:
    """One param group as the kernels see it (see the module docstring).

    Attributes:
        lr: the float lr the group follows, or (with a schedule) the schedule's peak, for display; or a
            one-element tensor (as torch's fused AdamW accepts), which the kernels' table reads on the
            device at every step (``lr_tensor``; ``row()`` then holds ``lr_scale`` as a placeholder).
        schedule: the group's :class:`~lrsched_fused.schedules.Schedule`, or ``None``.
        lr_scale: multiplies the lr (or the schedule).
        hyper: the algorithm's hyperparameters (:class:`AdamWHyper`, :class:`LambHyper`).
    """

    lr: float | torch.Tensor
    schedule: Schedule | None
    lr_scale: float
    hyper: Hyper

    @property
    def kernel_schedule(self) -> Schedule:
        """The schedule the kernels evaluate for this group."""
        return UNIT_SCHEDULE if self.schedule is None else self.schedule

    @property
    def lr_tensor(self) -> torch.Tensor | None:
        """The group's tensor lr (followed on the device: ``lr_scale * lr`` goes into column ``HP_LR_SCALE``
        by a device copy at every step), or ``None``."""
        return self.lr if self.schedule is None and isinstance(self.lr, torch.Tensor) else None

    @property
    def lr_factor(self) -> float:
        """Column ``HP_LR_SCALE``: what the kernel multiplies ``kernel_schedule(clock)`` by (for a tensor lr,
        ``lr_scale``: the tensor's value is multiplied in on the device)."""
        if self.schedule is not None or self.lr_tensor is not None:
            return self.lr_scale
        return self.lr_scale * self.lr

    def row(self) -> list[float]:
        return self.hyper.row(self.lr_factor)

    def lr_at(self, clocks: list[int] | tuple[int, ...]) -> float:
        """The lr this group uses at the clock ``[updates applied, tokens consumed]`` (float64, host)."""
        if self.lr_tensor is not None:
            return self.lr_scale * float(self.lr_tensor)  # a host read: for logging, not the hot loop
        if self.schedule is None:
            return self.lr_factor
        return self.lr_scale * self.schedule(clocks[L.CLOCK_TOKENS if self.schedule.unit == "tokens" else L.CLOCK_STEPS])


def _schedule_of(value: Any) -> Schedule | None:
    if value is None:
        return None
    sched = as_schedule(value)
    if sched is None:
        raise ValueError(f"schedule must be None, a Schedule or its to_dict() data; got {type(value).__name__}")
    return sched


def normalize_group(group: dict, hyper_cls: type, *, explicit_lr: bool) -> GroupConfig:
    """Validate a new param group and normalise it in place; returns its :class:`GroupConfig`.

    ``lr`` may be a float or a schedule: a schedule goes to ``group["schedule"]`` (a :class:`Schedule`
    object, immutable) and ``group["lr"]`` becomes its peak (a readable float). A group given an explicit
    float lr and no ``schedule`` follows its lr. The algorithm's hyperparameters are normalised too
    (``betas`` and ``trust_clip`` become tuples). ``ValueError`` names what is wrong.
    """
    lr = check_lr(group.get("lr"), "lr")
    if isinstance(lr, Schedule):
        group["schedule"], group["lr"] = lr, lr.peak
    else:
        group["lr"] = lr
        if explicit_lr:
            group.setdefault("schedule", None)
        group["schedule"] = _schedule_of(group.get("schedule"))
    group["lr_scale"] = check_lr_scale(group.get("lr_scale", 1.0))
    hyper = hyper_cls.from_group(group)
    for f in fields(hyper):
        group[f.name] = getattr(hyper, f.name)
    return GroupConfig(lr=group["lr"], schedule=group["schedule"], lr_scale=group["lr_scale"], hyper=hyper)


def read_group(group: Mapping[str, Any], hyper_cls: type) -> GroupConfig:
    """The :class:`GroupConfig` of a live param group, validated without changing it (the group may have
    been edited since the last step: a torch scheduler writing ``lr``, a user assigning ``schedule``)."""
    schedule = _schedule_of(group.get("schedule"))
    if schedule is None:
        lr = check_lr(group.get("lr"), "lr")
        if isinstance(lr, Schedule):
            raise ValueError("lr must be a float; to drive the group with a schedule assign group['schedule'] "
                             "or use opt.set_schedule(schedule, group)")
    else:  # the schedule drives the group; its lr is for display
        lr = group.get("lr")
        lr = schedule.peak if not isinstance(lr, (int, float)) or isinstance(lr, bool) else float(lr)
    return GroupConfig(lr=lr, schedule=schedule, lr_scale=check_lr_scale(group.get("lr_scale", 1.0)),
                       hyper=hyper_cls.from_group(group))
