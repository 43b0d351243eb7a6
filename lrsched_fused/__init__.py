"""lrsched-fused: fused AdamW and LAMB for PyTorch with the learning-rate schedule evaluated in the kernel.

>>> from lrsched_fused import FusedAdamW, FusedLAMB, param_groups, schedules as S

Modules: :mod:`.schedules` (the schedule spec), :mod:`.functional` (the stateless ops the optimizers
call), :mod:`.checkpoint` (state dicts and torch interop), :mod:`.reference` (float64 references),
:mod:`.release` (gradient release: the step inside backward).
"""

from . import checkpoint, functional, release, schedules
from ._version import __version__
from .optim import (FusedAdamW, FusedLAMB, clock_from_torch_scheduler, default_no_decay, param_groups,
                    torch_scheduler_for)

__all__ = ["FusedAdamW", "FusedLAMB", "param_groups", "default_no_decay", "torch_scheduler_for",
           "clock_from_torch_scheduler", "schedules", "functional", "checkpoint", "release", "__version__"]
