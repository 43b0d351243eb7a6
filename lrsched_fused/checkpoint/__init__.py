"""Checkpoints of :class:`~lrsched_fused.FusedAdamW` / :class:`~lrsched_fused.FusedLAMB`, and conversion to and
from torch optimizers (public: ``lrsched_fused.checkpoint``).

``optimizer.state_dict()`` (:func:`finish_state_dict`) is torch's layout plus one entry, all plain data
(tensors, numbers, strings, lists, dicts), so it survives ``torch.load(weights_only=True)``::

    {"state": {param_id: {"step": float32 0-d tensor,          # updates applied to this parameter
                          "exp_avg": ..., "exp_avg_sq": ...,     # moments, in the optimizer's state dtype
                          ["max_exp_avg_sq"], ["master_param"]}},
     "param_groups": [{"lr": float, "schedule": Schedule.to_dict() data or None, "lr_scale": float,
                       "clock": [updates applied, tokens consumed] or None (a copy in every group),
                       <hyperparameters>, "params": [param ids]}],
     "lrsched_fused": {"format": STATE_FORMAT_VERSION,
                       "clock": int64 [2] (updates applied, tokens consumed) or None (no step yet),
                       "options": {"backend": ..., "skip_nonfinite": ..., "master_weights": ...,
                                   "state_dtype": ..., ["max_grad_norm"]}}}

The clock is also written into every param group because ``torch.distributed.checkpoint``
(``get_optimizer_state_dict``) keeps only ``state`` and ``param_groups``; the top-level entry wins when
both are there. ``torch.optim.AdamW`` loads the state dict as it is (it reads ``state`` and
``param_groups`` and keeps unknown group keys); :func:`torch_scheduler_for` then positions a torch
scheduler at the clock (and drops the group copies of the clock, which a torch optimizer would not
advance). A torch AdamW state dict (fused or not) loads into ``FusedAdamW``: its groups carry no
schedules (a group of the loading optimizer that has one keeps it) and the step clock is the largest
per-parameter ``step`` (the token clock is then unknown: 0, with a warning if a schedule counts tokens).
A group clock behind the largest ``step`` is stale (the state came back from a torch optimizer that
trained on): the steps win, with a warning.

Loading validates everything first (:func:`prepare_load` builds the new groups, state and clock without
touching the optimizer) and raises ``ValueError`` naming the group, the parameter and the entry that do
not fit; only then does the optimizer adopt them.
"""

from ._format import (EXTRA_KEY, GROUP_CLOCK_KEY, STATE_FORMAT_VERSION, clock_to_plain, describe_param,
                      finish_state_dict, pack_extra)
from ._load import LoadedState, prepare_load
from ._torch import clock_from_torch_scheduler, torch_scheduler_for

__all__ = ["STATE_FORMAT_VERSION", "EXTRA_KEY", "GROUP_CLOCK_KEY", "LoadedState", "prepare_load", "pack_extra",
           "finish_state_dict", "clock_to_plain", "describe_param", "torch_scheduler_for",
           "clock_from_torch_scheduler"]
