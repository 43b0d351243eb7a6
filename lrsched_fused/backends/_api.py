"""The contract between the optimizers and the backends that run their math.

An optimizer step is, per (device, dtype) bucket of tensors, one call of :meth:`Backend.adamw` or
:meth:`Backend.lamb`, then once per optimizer :meth:`Backend.advance`. Backends know nothing about
``torch.optim``: they see parallel tensor lists (:class:`TensorBatch`) and device tables
(:class:`StepContext`). Each backend keeps whatever it caches (pointer tables, chunk tables) in
``batch.cache``, which the optimizer clears whenever it rebuilds the batch.

Math every backend implements (``t = steps[i] + 1`` the 1-based update count of tensor ``i``;
``k = clock[group_sched[g, GS_CLOCK]]`` the 0-based schedule clock; ``lr = hp[g, HP_LR_SCALE] *
schedule_g(k)``; ``g`` the gradient divided by ``grad_scale`` (if given) and by ``clip_div`` (LAMB, if
given); all math in float32, float64 for float64 parameters):

AdamW (``torch.optim.AdamW``; Loshchilov & Hutter, arXiv 1711.05101)::

    g = -g if maximize
    p = p * (1 - lr * wd)
    m = m + (g - m) * (1 - b1)                      # torch's lerp
    v = v * b2 + (1 - b2) * g * g
    vmax = max(vmax, v)  (amsgrad; the denominator then uses vmax)
    p = p - (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

LAMB (You et al., arXiv 1904.00962 v5, Algorithm 2, with the options of ``FusedLAMB``)::

    m = b1 m + (1 - b1 if grad_averaging else 1) g ;  v = b2 v + (1 - b2) g^2
    bc1, bc2 = (1 - b1^t, 1 - b2^t) if bias_correction else (1, 1)
    r = (m / bc1) / (sqrt(v) / sqrt(bc2) + eps)
    decoupled: w = p (1 - lr wd), u = r          else: w = p, u = r + wd p
    ratio = ||w|| / ||u|| per tensor (whole tensor: summed over shards through ``allreduce``),
            1 if either norm is 0 or the group has adapt = 0, then clamped to [trust_min, trust_max]
    p = w - lr * ratio * u

Moments are stored in the state dtype (rounded to nearest even for bf16/fp16 states). For fp32/fp64
states every backend gives the same update up to float rounding; with 16-bit states a backend may form
``r`` from the fresh moments (as torch's fused kernels do: the reference and the C++ backend) or from the
stored ones (the Triton LAMB, whose second stage re-reads them), which differ by the state's rounding.

When ``found_inf`` is given and nonzero, nothing is written (params, moments, steps, clock) except
telemetry. Low-precision parameters with fp32 master weights update the master copy and write the
param rounded to nearest even.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch

from lrsched_fused.schedules import ScheduleTables

__all__ = ["TensorBatch", "StepContext", "Backend", "BackendUnavailable"]


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run here (not built, no device, or the dtype is not supported)."""


@dataclass
class TensorBatch:
    """The tensors of one (device, dtype) bucket, as parallel lists (all contiguous, same device).

    Attributes:
        params: updated in place (for FSDP2, the local shards). fp32, bf16, fp16 or fp64.
        grads: same shapes and dtype as ``params``; refreshed by the optimizer before each call.
        exp_avgs, exp_avg_sqs: moments (fp32 for low-precision params by default, else param dtype).
        max_exp_avg_sqs: AdamW amsgrad running maxima, or ``None``.
        master_params: fp32 master copies of low-precision params, or ``None``.
        group_index: int64 ``[n]`` on the device: row of the group tables for each tensor.
        steps: float32 ``[n]`` on the device: each tensor's update count before this step (a view into
            the optimizer's steps buffer; :meth:`Backend.advance` increments it).
        cache: the backend's private cache; cleared by the optimizer when the batch is rebuilt.
    """

    params: list[torch.Tensor]
    grads: list[torch.Tensor]
    exp_avgs: list[torch.Tensor]
    exp_avg_sqs: list[torch.Tensor]
    max_exp_avg_sqs: list[torch.Tensor] | None
    master_params: list[torch.Tensor] | None
    group_index: torch.Tensor
    steps: torch.Tensor
    cache: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.params)

    def cached_tables(self, key: str, build: Callable[[TensorBatch], Any]) -> Any:
        """``cache[key]``: built by ``build(self)`` on first use; on later calls its ``refresh_grads(grads)``
        is called with this step's gradients (the one thing that changes between steps of a batch)."""
        tables = self.cache.get(key)
        if tables is None:
            tables = self.cache[key] = build(self)
        else:
            tables.refresh_grads(self.grads)
        return tables

    @property
    def device(self) -> torch.device:
        return self.params[0].device

    @property
    def dtype(self) -> torch.dtype:
        return self.params[0].dtype

    @property
    def state_dtype(self) -> torch.dtype:
        return self.exp_avgs[0].dtype


@dataclass
class StepContext:
    """Device tables shared by every bucket of one optimizer step.

    Attributes:
        sched: the schedule tables of all param groups.
        hparams: float64 ``[groups, HP_COLS]`` (column meanings in ``lrsched_fused.kernels.layout``).
        clock: int64 ``[NUM_CLOCKS]`` (updates applied, tokens consumed); read-only until ``advance``.
        found_inf: float32 scalar tensor or ``None``: nonzero means skip the whole step.
        grad_scale: float32 scalar tensor or ``None``: gradients are divided by it (GradScaler).
    """

    sched: ScheduleTables
    hparams: torch.Tensor
    clock: torch.Tensor
    found_inf: torch.Tensor | None = None
    grad_scale: torch.Tensor | None = None


class Backend(Protocol):
    """What every backend provides. All methods are asynchronous on the device (no host sync)."""

    name: str

    def check(self, device: torch.device, param_dtype: torch.dtype, state_dtype: torch.dtype) -> None:
        """Raise :class:`BackendUnavailable` (naming device and dtypes) if this combination cannot run."""

    def adamw(self, batch: TensorBatch, ctx: StepContext, *, amsgrad: bool) -> None:
        """One AdamW update of every tensor in ``batch`` (moments, params; not ``steps``)."""

    def lamb(self, batch: TensorBatch, ctx: StepContext, *, norms_out: torch.Tensor,
             clip_div: torch.Tensor | None,
             allreduce: Callable[[torch.Tensor], None] | None) -> None:
        """One LAMB update. ``norms_out`` float32 ``[n, NORM_COLS]`` receives ``||w||``, ``||u||`` and the
        applied ratio per tensor. ``clip_div`` (float32 scalar, >= 1) divides the gradients (global-norm
        clipping). ``allreduce``, when given, is called once with a float32 ``[n, 2]`` tensor of
        per-tensor partial sums (``sum w^2``, ``sum u^2``) and must sum it in place across shards."""

    def grad_sumsq(self, batch: TensorBatch, ctx: StepContext) -> torch.Tensor:
        """float32 scalar tensor: sum of squares of the (unscaled) gradients of the batch."""

    def advance(self, ctx: StepContext, steps: torch.Tensor, lr_out: torch.Tensor,
                tokens: torch.Tensor | None) -> None:
        """Finish the step: write each group's lr used this step into ``lr_out`` (float32 ``[groups]``);
        then, unless ``found_inf``: ``steps += 1``, ``clock[STEPS] += 1``, ``clock[TOKENS] += tokens``."""

    def evaluate_schedule(self, tables: ScheduleTables, t: torch.Tensor) -> torch.Tensor:
        """float32 values of schedule 0 of ``tables`` at clock values ``t`` (int64)."""
