"""Argument checks shared by the optimizers: each raises ``ValueError`` naming the argument and its range."""

from __future__ import annotations

import math
from typing import Any

from lrsched_fused.schedules import Schedule

__all__ = ["check_lr", "check_betas", "check_eps", "check_weight_decay", "check_bool", "check_trust_clip",
           "check_positive_or_none", "check_lr_scale", "as_schedule"]


def _real(name: str, value: Any) -> float:
    if hasattr(value, "numel") and hasattr(value, "item"):
        raise ValueError(f"{name} must be a Python float, not a tensor (lr and hyperparameters live on the device "
                         "already; pass a schedule from lrsched_fused.schedules to vary the lr)")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a real number; got {value!r}")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"{name} must not be NaN")
    return value


def as_schedule(value: Any) -> Schedule | None:
    """A Schedule from a Schedule or its plain-data dict; ``None`` for anything else."""
    if isinstance(value, Schedule):
        return value
    if isinstance(value, dict) and "phases" in value:
        return Schedule.from_dict(value)
    return None


def check_lr(value: Any, name: str = "lr") -> float | Schedule:
    """A float ``>= 0`` (finite) or a :class:`Schedule` (or its dict form)."""
    sched = as_schedule(value)
    if sched is not None:
        return sched
    lr = _real(name, value)
    if not (math.isfinite(lr) and lr >= 0.0):
        raise ValueError(f"{name} must be a finite float >= 0 or a schedule from lrsched_fused.schedules; got {value!r}")
    return lr


def check_lr_scale(value: Any, name: str = "lr_scale") -> float:
    scale = _real(name, value)
    if not (math.isfinite(scale) and scale >= 0.0):
        raise ValueError(f"{name} must be a finite float >= 0; got {value!r}")
    return scale


def check_betas(value: Any, name: str = "betas") -> tuple[float, float]:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"{name} must be a pair (beta1, beta2) with each in [0, 1); got {value!r}")
    b1, b2 = (_real(f"{name}[{i}]", b) for i, b in enumerate(value))
    for i, b in enumerate((b1, b2)):
        if not 0.0 <= b < 1.0:
            raise ValueError(f"{name}[{i}] must be in [0, 1); got {b!r}")
    return (b1, b2)


def check_eps(value: Any, name: str = "eps") -> float:
    eps = _real(name, value)
    if not (math.isfinite(eps) and eps > 0.0):
        raise ValueError(f"{name} must be a finite float > 0; got {value!r}")
    return eps


def check_weight_decay(value: Any, name: str = "weight_decay") -> float:
    wd = _real(name, value)
    if not (math.isfinite(wd) and wd >= 0.0):
        raise ValueError(f"{name} must be a finite float >= 0; got {value!r}")
    return wd


def check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False; got {value!r}")
    return value


def check_trust_clip(value: Any, name: str = "trust_clip") -> tuple[float, float] | None:
    """``None`` (no clamp) or ``(min, max)`` with ``0 <= min <= max`` (``max`` may be ``inf``)."""
    if value is None:
        return None
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"{name} must be None or a pair (min, max) with 0 <= min <= max; got {value!r}")
    lo, hi = _real(f"{name}[0]", value[0]), _real(f"{name}[1]", value[1])
    if not (math.isfinite(lo) and lo >= 0.0 and hi >= lo):
        raise ValueError(f"{name} must be None or a pair (min, max) with 0 <= min <= max; got {value!r}")
    return (lo, hi)


def check_positive_or_none(value: Any, name: str) -> float | None:
    if value is None:
        return None
    x = _real(name, value)
    if not (math.isfinite(x) and x > 0.0):
        raise ValueError(f"{name} must be None (off) or a finite float > 0; got {value!r}")
    return x
