"""Argument checks shared by the optimizers.

Each check raises ``ValueError`` naming the argument and its allowed range (and the value it got), and
returns the normalised value. None of them touches a tensor's data: they run before any state changes.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch

from lrsched_fused.schedules import Schedule

__all__ = ["check_nonnegative", "check_lr", "check_betas", "check_eps", "check_weight_decay", "check_bool", "check_trust_clip",
           "check_positive_or_none", "check_lr_scale", "check_count", "as_schedule", "MAX_CLOCK"]

#: torch.optim's words for a bad value of these arguments: our messages (same type: ValueError) say the
#: allowed range, then end with torch's words, so that code matching torch's message matches ours
TORCH_WORDING = {"lr": "Invalid learning rate", "eps": "Invalid epsilon value",
                 "weight_decay": "Invalid weight_decay value", "betas[0]": "Invalid beta parameter at index 0",
                 "betas[1]": "Invalid beta parameter at index 1"}


def _invalid(name: str, value: Any, allowed: str) -> ValueError:
    torch_words = TORCH_WORDING.get(name)
    suffix = f" ({torch_words}: {value!r})" if torch_words else ""
    return ValueError(f"{name} must be {allowed}; got {value!r}{suffix}")


#: Largest clock value (steps or tokens) the int64 device clock holds with headroom (as the schedules).
MAX_CLOCK = 2**62


def _real(name: str, value: Any, allowed: str) -> float:
    """``value`` as a Python float; ``ValueError`` (naming ``name`` and ``allowed``) for anything else."""
    if hasattr(value, "numel") and hasattr(value, "item"):
        raise ValueError(f"{name} must be {allowed} as a Python number, not a tensor (the optimizer keeps lr and "
                         "hyperparameters on the device itself; pass a schedule from lrsched_fused.schedules to "
                         f"vary the lr); got a {type(value).__name__}")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _invalid(name, value, allowed)
    value = float(value)
    if math.isnan(value):
        raise _invalid(name, value, allowed)
    return value


def as_schedule(value: Any) -> Schedule | None:
    """A Schedule from a Schedule or its plain-data dict (``Schedule.to_dict()``); ``None`` for anything
    else. A dict that looks like schedule data but is not valid raises ``ValueError`` naming the field."""
    if isinstance(value, Schedule):
        return value
    if isinstance(value, dict) and "phases" in value:
        try:
            return Schedule.from_dict(value)
        except (TypeError, KeyError) as exc:
            raise ValueError(f"schedule data is not valid Schedule.to_dict() data: {exc}") from None
    return None


def check_lr(value: Any, name: str = "lr") -> float | Schedule | torch.Tensor:
    """A finite float ``>= 0``, a :class:`Schedule` (or its dict form), or a one-element floating-point
    tensor (as torch's fused AdamW accepts: the kernels read it on the device each step, so its value is
    not checked here: that would be a host read)."""
    sched = as_schedule(value)
    if sched is not None:
        return sched
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} as a tensor must hold one value (as torch's fused AdamW); got shape "
                             f"{tuple(value.shape)} (Tensor lr must be 1-element)")
        if not value.is_floating_point():
            raise ValueError(f"{name} as a tensor must be floating point; got {value.dtype}")
        return value.detach()
    allowed = "a finite float >= 0, a one-element tensor or a schedule from lrsched_fused.schedules"
    lr = _real(name, value, allowed)
    if not (math.isfinite(lr) and lr >= 0.0):
        raise _invalid(name, value, allowed)
    return lr


def check_nonnegative(value: Any, name: str) -> float:
    """A finite float ``>= 0``."""
    allowed = "a finite float >= 0"
    x = _real(name, value, allowed)
    if not (math.isfinite(x) and x >= 0.0):
        raise _invalid(name, value, allowed)
    return x


def check_lr_scale(value: Any, name: str = "lr_scale") -> float:
    """A finite float ``>= 0`` multiplying the group's lr (or schedule)."""
    return check_nonnegative(value, name)


def check_betas(value: Any, name: str = "betas") -> tuple[float, float]:
    """A pair ``(beta1, beta2)``, each in ``[0, 1)``."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"{name} must be a pair (beta1, beta2) with each in [0, 1); got {value!r}")
    out = []
    for i, b in enumerate(value):
        beta = _real(f"{name}[{i}]", b, "a float in [0, 1)")
        if not 0.0 <= beta < 1.0:
            raise _invalid(f"{name}[{i}]", b, "a float in [0, 1)")
        out.append(beta)
    return (out[0], out[1])


def check_eps(value: Any, name: str = "eps") -> float:
    """A finite float ``> 0``."""
    allowed = "a finite float > 0"
    eps = _real(name, value, allowed)
    if not (math.isfinite(eps) and eps > 0.0):
        raise _invalid(name, value, allowed)
    return eps


def check_weight_decay(value: Any, name: str = "weight_decay") -> float:
    """A finite float ``>= 0``."""
    return check_nonnegative(value, name)


def check_bool(value: Any, name: str) -> bool:
    """``True`` or ``False`` (not 0/1, not a tensor)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False; got {value!r}")
    return value


def check_trust_clip(value: Any, name: str = "trust_clip") -> tuple[float, float] | None:
    """``None`` (no clamp) or ``(min, max)`` with ``0 <= min <= max`` (``min`` finite, ``max`` may be ``inf``)."""
    allowed = "None or a pair (min, max) with 0 <= min <= max (min finite, max may be inf)"
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"{name} must be {allowed}; got {value!r}")
    lo, hi = _real(f"{name}[0]", value[0], allowed), _real(f"{name}[1]", value[1], allowed)
    if not (math.isfinite(lo) and lo >= 0.0 and hi >= lo):
        raise ValueError(f"{name} must be {allowed}; got {value!r}")
    return (lo, hi)


def check_positive_or_none(value: Any, name: str) -> float | None:
    """``None`` (off) or a finite float ``> 0``."""
    allowed = "None (off) or a finite float > 0"
    if value is None:
        return None
    x = _real(name, value, allowed)
    if not (math.isfinite(x) and x > 0.0):
        raise ValueError(f"{name} must be {allowed}; got {value!r}")
    return x


def check_count(value: Any, name: str, *, maximum: int = MAX_CLOCK) -> int:
    """A Python int in ``[0, maximum]`` (clock values, token counts)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an int in [0, {maximum}]; got {value!r}")
    value = int(value)
    if not 0 <= value <= maximum:
        raise ValueError(f"{name} must be an int in [0, {maximum}]; got {value}")
    return value
