"""Hyperparameter rows of the kernels' group table, for bench code that calls a backend directly.

A backend reads each param group's hyperparameters from one float64 row of ``StepContext.hparams``
(``[groups, HP_COLS]``, columns in ``lrsched_fused.kernels.layout``). The optimizers build these rows
themselves; the benchmarks (``bench.impls``: the C++ call alone) and the GPU check (``bench.gpu``: a
bucket driven through the Backend protocol) build them here, in this one place. When the optimizer
package offers a public builder of these rows, :func:`hparams_row` should call it.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

__all__ = ["hparams_row", "hparams_table"]


def hparams_row(*, lr_scale: float = 1.0, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                weight_decay: float = 0.0, maximize: bool = False, bias_correction: bool = True,
                grad_averaging: bool = True, adapt: bool = True,
                trust_clamp: tuple[float, float] = (0.0, math.inf), decoupled: bool = False) -> list[float]:
    """One group's row (a list of ``HP_COLS`` floats). The defaults are torch AdamW's (no decay); the
    LAMB columns default to the paper's LAMB (bias correction, gradient averaging, trust ratio on, no
    clamp, decay inside the update). Flags become 1.0 / 0.0."""
    from lrsched_fused.kernels import layout as L  # imports nothing; no Triton needed

    row = [0.0] * L.HP_COLS
    row[L.HP_LR_SCALE] = float(lr_scale)
    row[L.HP_BETA1], row[L.HP_BETA2] = float(betas[0]), float(betas[1])
    row[L.HP_EPS] = float(eps)
    row[L.HP_WEIGHT_DECAY] = float(weight_decay)
    row[L.HP_MAXIMIZE] = float(maximize)
    row[L.HP_BIAS_CORRECTION] = float(bias_correction)
    row[L.HP_GRAD_AVERAGING] = float(grad_averaging)
    row[L.HP_ADAPT] = float(adapt)
    row[L.HP_TRUST_MIN], row[L.HP_TRUST_MAX] = float(trust_clamp[0]), float(trust_clamp[1])
    row[L.HP_DECOUPLED] = float(decoupled)
    return row


def hparams_table(rows: Iterable[Sequence[float]], device=None):
    """The float64 ``[groups, HP_COLS]`` tensor of ``rows`` (from :func:`hparams_row`) on ``device``."""
    import torch

    return torch.tensor([list(r) for r in rows], dtype=torch.float64, device=device)
