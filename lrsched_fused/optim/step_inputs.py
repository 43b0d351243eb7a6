"""What ``step()`` receives besides the gradients, checked on the host and turned into device scalars:
``tokens`` (the token clock's advance), GradScaler's ``grad_scale`` / ``found_inf``, and the on-device
non-finite check of ``skip_nonfinite=True``. None of these reads a device value."""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from lrsched_fused._validate import check_count

from ._distributed import allreduce_flag
from .plan import Bucket, Plan

__all__ = ["TOKENS_MAX", "check_tokens", "tokens_tensor", "scalar_attr", "nonfinite_flag"]

TOKENS_MAX = 2**63 - 1


def check_tokens(tokens: Any, required: bool) -> int | torch.Tensor | None:
    """``tokens`` of ``step(tokens=...)``: ``None``, an int in ``[0, 2**63)`` or a one-element integer tensor
    (whose value is not range-checked: that would be a host read). ``required``: a schedule counts tokens."""
    if tokens is None:
        if required:
            raise ValueError("step(tokens=...) is required: a param group's schedule counts tokens (unit='tokens'); "
                             "pass the number of tokens this update consumed (an int >= 0)")
        return None
    if isinstance(tokens, torch.Tensor):
        if tokens.numel() != 1 or tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
            raise ValueError("tokens must be an int in [0, 2**63) or a one-element integer tensor; got a "
                             f"{tokens.dtype} tensor of shape {tuple(tokens.shape)}")
        return tokens
    return check_count(tokens, "tokens", maximum=TOKENS_MAX)


def tokens_tensor(plan: Plan, tokens: int | torch.Tensor | None) -> torch.Tensor | None:
    """The checked ``tokens`` as a one-element int64 tensor on the plan's device (a Python int is written
    into a buffer kept with the plan)."""
    if tokens is None:
        return None
    if isinstance(tokens, torch.Tensor):
        return tokens.reshape(1).to(device=plan.device, dtype=torch.int64, non_blocking=True)
    buf = plan.extra.get("tokens")
    if buf is None:
        buf = plan.extra["tokens"] = torch.zeros(1, dtype=torch.int64, device=plan.device)
    buf.fill_(tokens)
    return buf


def scalar_attr(optimizer: Any, name: str, device: torch.device) -> torch.Tensor | None:
    """``optimizer.<name>`` (``found_inf`` / ``grad_scale``, as torch.amp.GradScaler sets them) as a float32
    ``[1]`` tensor on ``device``, or ``None``."""
    value = getattr(optimizer, name, None)
    if value is None:
        return None
    if not isinstance(value, torch.Tensor) or value.numel() != 1 or not value.is_floating_point():
        raise ValueError(f"optimizer.{name} must be None or a one-element floating-point tensor (as "
                         f"torch.amp.GradScaler sets it); got {value!r}")
    if value.device != device:
        value = value.to(device, non_blocking=True)
    return value.reshape(1).to(torch.float32)


def _agree_across_shards(bucket: Bucket, flag: torch.Tensor) -> None:
    allreduce_flag(bucket.allreduce if bucket.allreduce is not None else bucket.params, flag)


def nonfinite_flag(plan: Plan, buckets: Sequence[Bucket], found_inf: torch.Tensor | None) -> torch.Tensor:
    """found_inf for ``skip_nonfinite=True``: GradScaler's rule (any inf/NaN gradient), decided on the
    device without writing the gradients: the largest ``|g|`` of each bucket is inf or NaN. Sharded
    buckets agree across their ranks (``MAX``), so every rank skips the same steps."""
    flag = torch.zeros(1, dtype=torch.float32, device=plan.device)
    for bucket in buckets:
        grads = [g for g in bucket.batch.grads if g.numel()]
        if grads:
            largest = torch.stack(torch._foreach_norm(grads, math.inf)).amax().reshape(1)
            flag = torch.maximum(flag, (~torch.isfinite(largest)).to(torch.float32))
        if bucket.allreduce is not None or bucket.has_dtensor:
            _agree_across_shards(bucket, flag)
    if found_inf is not None:
        flag = torch.maximum(flag, found_inf)
    return flag
