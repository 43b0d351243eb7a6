"""The optimizers: :class:`FusedAdamW`, :class:`FusedLAMB`, :func:`param_groups`, and the helpers that
move a run between these optimizers and torch's (:func:`torch_scheduler_for`,
:func:`clock_from_torch_scheduler`, from :mod:`lrsched_fused.checkpoint`)."""

from lrsched_fused.checkpoint import clock_from_torch_scheduler, torch_scheduler_for

from ._groups import default_no_decay, param_groups
from .adamw import FusedAdamW
from .base import FusedOptimizer
from .lamb import FusedLAMB
from .lr_scheduler import KernelLRScheduler

__all__ = ["FusedAdamW", "FusedLAMB", "FusedOptimizer", "KernelLRScheduler", "param_groups", "default_no_decay", "torch_scheduler_for",
           "clock_from_torch_scheduler"]
