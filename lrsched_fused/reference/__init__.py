"""Float64 references: the optimizers written as plain per-tensor loops, independent of the kernels.

These are what the tests compare every backend against (and what is compared to ``torch.optim.AdamW``
and to the published LAMB variants). They are slow and readable on purpose:

* :func:`adamw_step` / :func:`run_adamw`: ``torch.optim.AdamW`` (Loshchilov & Hutter, arXiv 1711.05101);
* :func:`lamb_step` / :func:`run_lamb`: LAMB (You et al., arXiv 1904.00962 v5) with the options of
  :class:`lrsched_fused.FusedLAMB`.

Learning rates are floats, :class:`~lrsched_fused.schedules.Schedule` objects (evaluated with their
float64 ``__call__`` at the 0-based clock) or callables of the clock.

>>> import torch
>>> from lrsched_fused import reference as R, schedules as S
>>> p = torch.ones(3)
>>> run = R.run_adamw([p], [[torch.ones(3)]] * 2, lr=S.linear(1e-2, total_steps=4))
>>> [lr for (lr,) in run.lrs]
[0.01, 0.0075]
"""

from ._common import LearningRate, lr_at, round_to_storage
from .adamw import ADAMW_DEFAULTS, AdamWRun, adamw_step, new_adamw_state, run_adamw
from .lamb import LAMB_DEFAULTS, LambNorms, LambRun, global_grad_norm, lamb_step, new_lamb_state, run_lamb, trust_ratio

__all__ = ["adamw_step", "run_adamw", "new_adamw_state", "AdamWRun", "ADAMW_DEFAULTS", "lamb_step", "run_lamb",
           "new_lamb_state", "LambRun", "LambNorms", "LAMB_DEFAULTS", "global_grad_norm", "trust_ratio", "lr_at",
           "round_to_storage", "LearningRate"]
