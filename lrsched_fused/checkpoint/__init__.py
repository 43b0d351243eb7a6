"""Checkpoints of :class:`~lrsched_fused.FusedAdamW` / :class:`~lrsched_fused.FusedLAMB`, and conversion to and
from torch optimizers (public: ``lrsched_fused.checkpoint``).

``optimizer.state_dict()`` (:func:`finish_state_dict`) is torch's layout plus one entry, all plain data
(tensors, numbers, strings, lists, dicts), so it survives ``torch.load(weights_only=True)``::

    {"state": {param_id: {"step": float32 0-d tensor,          # updates applied to this parameter
                          "clock": int64 [2],                    # (updates applied, tokens consumed)
                          "exp_avg": ..., "exp_avg_sq": ...,     # moments, in the optimizer's state dtype
                          ["max_exp_avg_sq"], ["master_param"]}},
     "param_groups": [{"lr": float, "schedule": Schedule.to_dict() data or None, "lr_scale": float,
                       "clock": [updates applied, tokens consumed] or None (a copy in every group),
                       <hyperparameters>, "params": [param ids]}],
     "lrsched_fused": {"format": STATE_FORMAT_VERSION,
                       "clock": int64 [2] (updates applied, tokens consumed) or None (no step yet),
                       "options": {"backend": ..., "skip_nonfinite": ..., "master_weights": ...,
                                   "state_dtype": ..., ["max_grad_norm"]}}}

**The clock is a state entry**, as torch keeps ``step``: every checkpoint path keeps ``state`` (DCP with or
without ``flatten_optimizer_state_dict``, loaders that keep only ``state`` + ``param_groups``, trainers),
so every path resumes exactly. Each live state holds the optimizer's one device clock (int64: exact
for step and token counts up to 2**62; a float32 counter would stop being exact at 2**24); a state dict
holds independent copies, which must agree on load. The top-level entry and the group copies remain for
an optimizer that has no state yet (``set_clock`` before the first step): the state entries win, then
the top-level entry, then the group copies, then the largest per-parameter ``step``.

``torch.optim.AdamW`` loads the state dict as it is (it keeps unknown state entries and group keys,
casting the clock to the parameter's float dtype: exact up to 2**24, with a warning above when it comes
back); :func:`torch_scheduler_for` then positions a torch scheduler at the clock (and drops the group
copies of the clock, which a torch optimizer would not advance). A torch AdamW state dict (fused or
not) loads into ``FusedAdamW``: its groups carry no schedules (a group of the loading optimizer that
has one keeps it) and the step clock is the largest per-parameter ``step`` (torch's float32 ``step``;
the token clock is then unknown: 0, with a warning if a schedule counts tokens). A clock that came back
through a torch optimizer (a float copy) or a group copy behind the largest ``step`` is stale (a torch
optimizer trained on after loading ours): the steps win, with a warning.

Loading validates everything first (:func:`prepare_load` builds the new groups, state and clock without
touching the optimizer) and raises ``ValueError`` naming the group, the parameter and the entry that do
not fit; only then does the optimizer adopt them.
"""

from ._format import (EXTRA_KEY, GROUP_CLOCK_KEY, STATE_CLOCK_KEY, STATE_FORMAT_VERSION, clock_to_plain, describe_param,
                      finish_state_dict, pack_extra)
from ._convert import from_torch, master_value, to_torch
from ._load import LoadedState, prepare_load
from ._torch import clock_from_torch_scheduler, torch_scheduler_for

__all__ = ["STATE_FORMAT_VERSION", "EXTRA_KEY", "GROUP_CLOCK_KEY", "STATE_CLOCK_KEY", "LoadedState", "prepare_load", "pack_extra",
           "finish_state_dict", "clock_to_plain", "describe_param", "torch_scheduler_for",
           "clock_from_torch_scheduler", "to_torch", "from_torch", "master_value"]
