"""The optimizers: :class:`FusedAdamW`, :class:`FusedLAMB`, and :func:`param_groups`."""

from ._groups import default_no_decay, param_groups
from .adamw import FusedAdamW
from .lamb import FusedLAMB

__all__ = ["FusedAdamW", "FusedLAMB", "param_groups", "default_no_decay"]
