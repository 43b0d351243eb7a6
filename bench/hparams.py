"""Hyperparameter rows of the kernels' group table, for bench code that calls a backend directly.

A backend reads each param group's hyperparameters from one float64 row of ``StepContext.hparams``
(``[groups, HP_COLS]``, columns in ``lrsched_fused.kernels.layout``). The rows come from the public
builders ``lrsched_fused.functional.AdamWHyper.row`` / ``LambHyper.row``; the benchmarks (``bench.impls``:
the C++ call alone) and the GPU check (``bench.gpu``: a bucket driven through the Backend protocol) use
one row for both kernels, which each read only their own columns.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

__all__ = ["hparams_row", "hparams_table"]


def hparams_row(*, lr_scale: float = 1.0, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                weight_decay: float = 0.0, maximize: bool = False, bias_correction: bool = True,
                grad_averaging: bool = True, adapt: bool = True,
                trust_clamp: tuple[float, float] = (0.0, math.inf), decoupled: bool = False) -> list[float]:
    """One group's row (a list of ``HP_COLS`` floats) serving both kernels. The defaults are torch AdamW's
    (no decay); the LAMB columns default to the paper's LAMB (bias correction, gradient averaging, trust
    ratio on, no clamp, decay inside the update)."""
    from lrsched_fused.functional import AdamWHyper, LambHyper
    from lrsched_fused.kernels import layout as L

    betas = (float(betas[0]), float(betas[1]))
    lamb = LambHyper(betas=betas, eps=eps, weight_decay=weight_decay, bias_correction=bias_correction,
                     grad_averaging=grad_averaging, adapt=adapt, trust_clip=trust_clamp,
                     decoupled_decay=decoupled).row(float(lr_scale))
    adamw = AdamWHyper(betas=betas, eps=eps, weight_decay=weight_decay, maximize=maximize).row(float(lr_scale))
    return [adamw[c] if c == L.HP_MAXIMIZE else v for c, v in enumerate(lamb)]


def hparams_table(rows: Iterable[Sequence[float]], device=None):
    """The float64 ``[groups, HP_COLS]`` tensor of ``rows`` (from :func:`hparams_row`) on ``device``."""
    import torch

    return torch.tensor([list(r) for r in rows], dtype=torch.float64, device=device)
