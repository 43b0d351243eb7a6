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

__all__ = ["to_device", "capturing", "check_capture", "TOKENS_MAX", "check_tokens", "tokens_tensor", "scalar_attr", "nonfinite_flag"]

TOKENS_MAX = 2**63 - 1


def to_device(t: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``t`` on ``device`` as ``dtype``. A host-to-GPU copy is non-blocking (stream-ordered before the kernels
    that read it); any other copy is blocking: a GPU-to-host copy (a GradScaler's ``found_inf`` on the GPU
    for an optimizer whose parameters live on the CPU, as with FSDP2's ``CPUOffloadPolicy``) must have
    landed before the CPU kernels read it, and a non-blocking one would not have."""
    if t.device == device and t.dtype == dtype:
        return t
    return t.to(device=device, dtype=dtype, non_blocking=device.type == "cuda" and t.device.type == "cpu")


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


def capturing(device: torch.device) -> bool:
    """Whether a CUDA graph is being captured on ``device``'s current stream."""
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def check_capture(new_plan: bool, tables_change: bool, tokens: Any) -> None:
    """``ValueError`` for a step that cannot be captured in a CUDA graph: a captured graph replays the
    kernels with the buffers and values it saw, and the Python of ``step()`` does not run at replay.
    A step that builds a plan (allocates state and tables), changes the group tables (a new schedule,
    an edited hyperparameter), or takes ``tokens`` as a Python int (frozen into the graph) cannot."""
    if new_plan:
        raise ValueError("a CUDA graph capture must not contain the optimizer's first step (or the first after a "
                         "change of parameters, gradients' presence or state): it allocates state and tables. "
                         "Run a few warm-up steps on a side stream before capturing, as torch's capturable "
                         "optimizers require")
    if tables_change:
        raise ValueError("the param groups' schedules or hyperparameters changed during a CUDA graph capture: a "
                         "replay reads the tables as they were captured. Change them (set_schedule, group values) "
                         "before capturing; a schedule changes the lr of every replay by itself")
    if tokens is not None and not isinstance(tokens, torch.Tensor):
        raise ValueError("during a CUDA graph capture, step(tokens=...) must be a one-element integer tensor on "
                         "the GPU: a Python int would be frozen into the graph (every replay would add the "
                         "captured count). Write each step's count into that tensor before the replay")


def tokens_tensor(plan: Plan, tokens: int | torch.Tensor | None) -> torch.Tensor | None:
    """The checked ``tokens`` as a one-element int64 tensor on the plan's device (a Python int is written
    into a buffer kept with the plan)."""
    if tokens is None:
        return None
    if isinstance(tokens, torch.Tensor):
        return to_device(tokens.reshape(1), plan.device, torch.int64)
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
    return to_device(value.reshape(1), device, torch.float32)


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
