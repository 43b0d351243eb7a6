"""The cached "plan" of an optimizer: its tensors sorted into buckets, the device tables, the buffers.

Built on the first step and rebuilt only when the set of parameters with gradients, their storage, or
the optimizer state changes (``load_state_dict``, ``add_param_group``, a state entry replaced by the
user). Everything that goes into a plan is validated before any state is created or touched.
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
    has_dtensor: bool = False             # any parameter is a DTensor (found-inf flags agree across ranks)
    group_rows: list[int] = field(default_factory=list)  # host copy of batch.group_index (no device reads)


@dataclass
class Plan:
    """Everything a step reuses while the optimizer's parameters, gradients' presence and state stay the
    same; ``FusedOptimizer._reusable_grads`` checks that cheaply at every step."""

    device: torch.device
    order: list[torch.Tensor]             # params with gradients in row order (buckets back to back)
    states: list[dict]                    # the state dict object of each param in `order`
    step_views: list[torch.Tensor]        # state["step"] of each param: views into `steps`
    state_values: list                    # every value of every dict in `states`, in order (identity checked)
    steps: torch.Tensor                   # float32 [n]: per-param update counts
    buckets: list[Bucket]
    primary: Backend                      # runs `advance` for the whole optimizer
    all_params: list[torch.Tensor]        # every param of every group, in group order
    has_grad: list[bool]                  # which of `all_params` had a gradient
    order_index: list[int]                # position in `all_params` of each param in `order`
    order_group: list[int]                # param group of each param in `order`
    flags: list[tuple]                    # each group's options that select state tensors (amsgrad)
    param_ptrs: list[int]                 # data_ptr of each (local) param in `order`
    has_dtensor: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
