"""The cached "plan" of an optimizer: its tensors sorted into buckets, the device tables, the buffers.

Built on the first step and rebuilt only when the set of parameters with gradients, their storage, or
the optimizer state changes (``load_state_dict``, ``add_param_group``, a state entry replaced by the
user). Everything here is validated before any state is created or touched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from lrsched_fused.backends import Backend, TensorBatch

__all__ = ["Bucket", "Plan", "local", "is_dtensor", "SUPPORTED_DTYPES"]

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
LOW_PRECISION = (torch.bfloat16, torch.float16)


def is_dtensor(t: torch.Tensor) -> bool:
    return type(t).__name__ == "DTensor" and hasattr(t, "to_local")


def local(t: torch.Tensor) -> torch.Tensor:
    """The tensor a kernel updates: the local shard of a DTensor, else the tensor itself."""
    return t.to_local() if is_dtensor(t) else t


@dataclass
class Bucket:
    """Tensors of one (param dtype, state dtype, master weights) combination and the backend for them."""

    key: tuple
    backend: Backend
    batch: TensorBatch
    params: list[torch.Tensor]            # the optimizer's parameters (DTensors stay DTensors here)
    rows: slice                           # rows of this bucket in the plan's steps / norms buffers
    allreduce: Callable[[torch.Tensor], None] | None = None


@dataclass
class Plan:
    device: torch.device
    key: tuple                            # identity of params, their storage and their grads' presence
    order: list[torch.Tensor]             # params in row order (telemetry rows follow it)
    states: list[dict]                    # the state dict object of each param, for change detection
    step_views: list[torch.Tensor]        # state["step"] of each param: views into `steps`
    steps: torch.Tensor                   # float32 [n]: per-param update counts
    buckets: list[Bucket]
    primary: Backend                      # runs `advance` for the whole optimizer
    extra: dict[str, Any] = field(default_factory=dict)
