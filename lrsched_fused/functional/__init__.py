"""The functional API: the optimizers' math as stateless functions (in the spirit of
``torch.optim._functional`` and optax), which :class:`~lrsched_fused.FusedAdamW` and
:class:`~lrsched_fused.FusedLAMB` call and which any training loop can call directly.

Pieces, bottom up:

* **Hyperparameters** (:mod:`.hyperparams`): :class:`AdamWHyper`, :class:`LambHyper` (validated, frozen)
  and :class:`GroupConfig` (a group's lr or schedule, ``lr_scale`` and hyperparameters); ``.row()`` is
  the one builder of a row of the kernels' hyperparameter table.
* **Tables**: :class:`GroupTables` (encoded schedules + hyperparameter rows of every group) and the
  device **clock** (:func:`new_clock`: int64 ``[updates applied, tokens consumed]``).
* **State bundles** (:mod:`.state`): a parameter's state dict in torch's layout, created by
  :func:`init_state`; :func:`make_batch` lays the parameters, gradients and bundles of one (param dtype,
  state dtype) combination out as a :class:`~lrsched_fused.backends.TensorBatch`.
* **Ops** (:mod:`.ops`): :func:`adamw`, :func:`lamb`, :func:`grad_sumsq` update or read a batch and never
  advance the clock; :func:`advance` ends a step. ``batch.slice(lo, hi)`` updates a subset.

>>> import torch
>>> from lrsched_fused import functional as F, schedules as S
>>> p = torch.ones(4); st = {}
>>> F.init_state(p, st, keys=F.AdamWHyper().state_keys, state_dtype=torch.float32, master=False, device=p.device)
>>> batch = F.make_batch([p], [torch.ones(4)], [st], steps=torch.zeros(1), group_index=torch.zeros(1, dtype=torch.int64),
...                      amsgrad=False, master=False)
>>> cfg = F.GroupConfig(lr=1e-2, schedule=S.linear(1e-2, total_steps=10), lr_scale=1.0, hyper=F.AdamWHyper(weight_decay=0.0))
>>> tables, clock = F.GroupTables.build([cfg.kernel_schedule], [cfg.row()]), F.new_clock()
>>> F.adamw(batch, tables, clock, backend="reference")
>>> F.advance(tables, clock, batch.steps, torch.zeros(1), backend="reference")
>>> round(float(p[0]), 6), clock.tolist()
(0.99, [1, 0])
"""

from lrsched_fused.backends import TensorBatch

from .compressed import StateFormat, check_storage_options
from .hyperparams import UNIT_SCHEDULE, AdamWHyper, GroupConfig, LambHyper, normalize_group, read_group
from .ops import GroupTables, adamw, advance, grad_sumsq, lamb, new_clock, resolve_backend
from .state import (LOW_PRECISION, STATE_DTYPE_OPTIONS, SUPPORTED_DTYPES, check_state, check_state_dtype_option,
                    flat, init_state, is_dense, is_dtensor, local, make_batch, same_layout, state_changes,
                    state_dtype_for, wants_master)

__all__ = ["StateFormat", "check_storage_options", "AdamWHyper", "LambHyper", "GroupConfig", "normalize_group", "read_group", "UNIT_SCHEDULE", "GroupTables",
           "new_clock", "adamw", "lamb", "grad_sumsq", "advance", "resolve_backend", "TensorBatch", "make_batch",
           "init_state", "state_changes", "check_state", "is_dense", "same_layout", "flat", "state_dtype_for", "wants_master", "check_state_dtype_option",
           "SUPPORTED_DTYPES", "LOW_PRECISION", "STATE_DTYPE_OPTIONS", "is_dtensor", "local"]
