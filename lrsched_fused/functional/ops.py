"""The optimizer math as stateless functions over a batch of tensors, the group tables and the device clock.

Each call is a constant number of kernel launches on the chosen backend, whatever the number of tensors,
and reads nothing on the host. An update never advances the clock: :func:`advance` does, once per
training step, after every update of that step. So a caller can update any subsets of its tensors (one
:meth:`~lrsched_fused.backends.TensorBatch.slice` at a time, e.g. as their gradients become ready) and
then advance once, with the same result as one update of the whole batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from lrsched_fused.backends import Backend, StepContext, TensorBatch, select_backend
from lrsched_fused.kernels import layout as L
from lrsched_fused.schedules import Schedule, ScheduleTables, encode_tables

__all__ = ["GroupTables", "new_clock", "adamw", "lamb", "grad_sumsq", "advance", "resolve_backend"]


@dataclass(frozen=True)
class GroupTables:
    """What the kernels read about the param groups: the encoded schedules (``sched``, one per group) and
    the float64 hyperparameter table ``hparams`` ``[groups, HP_COLS]`` (rows from
    :meth:`GroupConfig.row <lrsched_fused.functional.GroupConfig.row>` or ``AdamWHyper.row``)."""

    sched: ScheduleTables
    hparams: torch.Tensor

    @classmethod
    def build(cls, schedules: Sequence[Schedule], rows: Sequence[Sequence[float]],
              device: torch.device | str = "cpu") -> "GroupTables":
        if len(schedules) != len(rows):
            raise ValueError(f"one schedule per hyperparameter row: got {len(schedules)} and {len(rows)}")
        for gi, row in enumerate(rows):
            if len(row) != L.HP_COLS:
                raise ValueError(f"rows[{gi}] must have {L.HP_COLS} columns (layout.HP_*); got {len(row)}")
        return cls(encode_tables(schedules, device), torch.tensor(rows, dtype=torch.float64, device=device))

    def context(self, clock: torch.Tensor, found_inf: torch.Tensor | None = None,
                grad_scale: torch.Tensor | None = None, gnorm_partials: torch.Tensor | None = None,
                history: torch.Tensor | None = None) -> StepContext:
        return StepContext(self.sched, self.hparams, clock, found_inf, grad_scale, gnorm_partials, history)


def new_clock(device: torch.device | str = "cpu") -> torch.Tensor:
    """A zero clock: int64 ``[NUM_CLOCKS]`` = (updates applied, tokens consumed)."""
    return torch.zeros(L.NUM_CLOCKS, dtype=torch.int64, device=device)


def resolve_backend(backend: str | Backend, device: torch.device) -> Backend:
    """A backend object: ``backend`` itself, or the one named (``"auto"`` picks by device)."""
    return select_backend(backend, device) if isinstance(backend, str) else backend


def _device(batch: TensorBatch, clock: torch.Tensor) -> torch.device:
    return batch.device if len(batch) else clock.device


def adamw(batch: TensorBatch, tables: GroupTables, clock: torch.Tensor, *, amsgrad: bool = False,
          found_inf: torch.Tensor | None = None, grad_scale: torch.Tensor | None = None,
          backend: str | Backend = "auto") -> None:
    r"""One AdamW update of every tensor of ``batch`` (``torch.optim.AdamW``'s math; Loshchilov & Hutter,
    arXiv 1711.05101), with ``lr = hparams[g, LR_SCALE] * schedule_g(clock)`` for a tensor of group ``g``:

    .. math:: \theta \leftarrow \theta(1 - \eta\lambda) - \frac{\eta}{1-\beta_1^t}
              \frac{m}{\sqrt{v}/\sqrt{1-\beta_2^t} + \epsilon}

    ``t = batch.steps + 1``. Writes params, moments (and master weights); not ``steps``, not the clock.
    ``found_inf`` nonzero: nothing is written. ``grad_scale``: gradients are divided by it.
    """
    resolve_backend(backend, _device(batch, clock)).adamw(batch, tables.context(clock, found_inf, grad_scale),
                                                           amsgrad=amsgrad)


def lamb(batch: TensorBatch, tables: GroupTables, clock: torch.Tensor, *, norms_out: torch.Tensor,
         clip_div: torch.Tensor | None = None, allreduce: Callable[[torch.Tensor], None] | None = None,
         found_inf: torch.Tensor | None = None, grad_scale: torch.Tensor | None = None,
         backend: str | Backend = "auto") -> None:
    r"""One LAMB update of every tensor of ``batch`` (You et al., arXiv 1904.00962 v5, with
    :class:`~lrsched_fused.FusedLAMB`'s options from the group rows):

    .. math:: \theta \leftarrow w - \eta\,\phi\!\left(\frac{\lVert w\rVert}{\lVert u\rVert}\right) u

    per tensor, ``u`` the bias-corrected Adam direction formed from the moments as stored (plus
    ``lambda theta`` unless decay is decoupled). ``norms_out`` float32 ``[n, NORM_COLS]`` receives
    ``||w||``, ``||u||`` and the ratio applied; ``clip_div`` (scalar) divides the gradients;
    ``allreduce`` sums the ``[n, 2]`` per-tensor partial sums across shards between the two stages.
    """
    resolve_backend(backend, _device(batch, clock)).lamb(batch, tables.context(clock, found_inf, grad_scale),
                                                          norms_out=norms_out, clip_div=clip_div, allreduce=allreduce)


def grad_sumsq(batch: TensorBatch, tables: GroupTables, clock: torch.Tensor, *,
               grad_scale: torch.Tensor | None = None, backend: str | Backend = "auto") -> torch.Tensor:
    """float32 scalar tensor: the sum of squares of the batch's gradients divided by ``grad_scale``."""
    return resolve_backend(backend, _device(batch, clock)).grad_sumsq(batch, tables.context(clock, None, grad_scale))


def advance(tables: GroupTables, clock: torch.Tensor, steps: torch.Tensor, lr_out: torch.Tensor, *,
            tokens: torch.Tensor | None = None, found_inf: torch.Tensor | None = None,
            gnorm_partials: torch.Tensor | None = None, history: torch.Tensor | None = None,
            backend: str | Backend = "auto") -> None:
    """End a training step: ``lr_out[g]`` = the lr group ``g`` used at this clock; then, unless
    ``found_inf`` is nonzero, ``history[clock % capacity]`` = the sum of the ``gnorm_partials`` rows the
    updates wrote (``sum g^2``, ``sum |g|``; when both are given), ``steps += 1`` (the update counts of the
    tensors updated this step), ``clock[STEPS] += 1`` and ``clock[TOKENS] += tokens``. One single-program
    launch."""
    ctx = tables.context(clock, found_inf, gnorm_partials=gnorm_partials, history=history)
    resolve_backend(backend, clock.device).advance(ctx, steps, lr_out, tokens)
