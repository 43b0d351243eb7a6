"""FusedLAMB: layer-wise adaptive moments (LAMB) with per-tensor trust ratios, fused over all tensors."""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch

from lrsched_fused.backends import StepContext
from lrsched_fused.kernels import layout as L
from lrsched_fused.schedules import Schedule

from ._base import FusedOptimizer
from ._plan import Plan
from ._validate import check_betas, check_bool, check_eps, check_positive_or_none, check_trust_clip, check_weight_decay

__all__ = ["FusedLAMB"]


class FusedLAMB(FusedOptimizer):
    r"""LAMB (You et al., "Large Batch Optimization for Deep Learning: Training BERT in 76 minutes",
    arXiv 1904.00962, v5 Algorithm 2). Per tensor (layer) ``i``:

    .. math::
        m \leftarrow \beta_1 m + \beta_3 g,\quad v \leftarrow \beta_2 v + (1-\beta_2) g^2,\quad
        r = \frac{m / (1-\beta_1^t)}{\sqrt{v}/\sqrt{1-\beta_2^t} + \epsilon}\\
        x \leftarrow x - \eta_t\, \phi\!\left(\frac{\lVert x\rVert}{\lVert r + \lambda x\rVert}\right) (r + \lambda x)

    with ``beta3 = 1 - beta1`` (``grad_averaging``), ratio 1 when either norm is 0, and ``phi`` the
    identity unless ``trust_clip`` clamps it. The default is the paper's algorithm: decay inside the
    update and the ratio's denominator, no clamp, no clipping.

    Args:
        lr: float ``>= 0`` or a schedule (per group). Default 1e-3.
        betas, eps, weight_decay: as the paper (defaults (0.9, 0.999), 1e-6, 0.01).
        bias_correction: de-bias the moments (v5; v3 and DeepSpeed's ``u`` do not). Per group.
        grad_averaging: ``beta3 = 1 - beta1`` (else 1). Per group.
        adapt: apply the trust ratio to this group (``False``: plain Adam-with-decay step). Per group;
            :func:`lrsched_fused.param_groups` turns it off for biases and norm weights.
        trust_clip: ``None`` or ``(min, max)`` clamp of the ratio (DeepSpeed (0.01, 10); timm's
            ``trust_clip=True`` is (0, 1)). Per group.
        decoupled_decay: ``x *= 1 - lr*wd`` before the update and the decay out of the ratio (timm's
            ``decoupled_decay``). Per group.
        max_grad_norm: ``None`` (off) or ``> 0``: divide every gradient by ``max(1, ||g||/max_grad_norm)``
            with ``||g||`` the global norm over all parameters (across shards), computed on the device.
            ``p.grad`` is not modified. A hyperparameter: ``load_state_dict`` restores the checkpoint's.
        backend, skip_nonfinite, master_weights, state_dtype: as :class:`FusedAdamW`.

    After a step, ``telemetry()`` holds per-tensor ``param_norm``, ``update_norm`` and ``trust_ratio``
    (device tensors, no sync). ``docs/lamb_variants.md`` maps apex FusedLAMB, DeepSpeed FusedLamb and
    timm Lamb settings onto these options.
    """

    _checkpoint_options = {"max_grad_norm": check_positive_or_none}

    def __init__(self, params: Iterable, lr: float | Schedule = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.01, *, bias_correction: bool = True,
                 grad_averaging: bool = True, adapt: bool = True, trust_clip: tuple[float, float] | None = None,
                 decoupled_decay: bool = False, max_grad_norm: float | None = None, backend: str = "auto",
                 skip_nonfinite: bool = False, master_weights: bool = False, state_dtype: Any = None) -> None:
        max_grad_norm = check_positive_or_none(max_grad_norm, "max_grad_norm")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, bias_correction=bias_correction,
                        grad_averaging=grad_averaging, adapt=adapt, trust_clip=trust_clip,
                        decoupled_decay=decoupled_decay)
        super().__init__(params, defaults, backend=backend, skip_nonfinite=skip_nonfinite,
                         master_weights=master_weights, state_dtype=state_dtype)
        self._options["max_grad_norm"] = max_grad_norm

    def _check_group(self, group: dict) -> None:
        group["betas"] = check_betas(group["betas"])
        group["eps"] = check_eps(group["eps"])
        group["weight_decay"] = check_weight_decay(group["weight_decay"])
        for name in ("bias_correction", "grad_averaging", "adapt", "decoupled_decay"):
            group[name] = check_bool(group[name], name)
        clip = check_trust_clip(group["trust_clip"])
        group["trust_clip"] = None if clip is None else tuple(clip)

    def _hp_row(self, group: dict) -> list[float]:
        row = [0.0] * L.HP_COLS
        row[L.HP_BETA1], row[L.HP_BETA2] = group["betas"]
        row[L.HP_EPS] = group["eps"]
        row[L.HP_WEIGHT_DECAY] = group["weight_decay"]
        row[L.HP_BIAS_CORRECTION] = float(group["bias_correction"])
        row[L.HP_GRAD_AVERAGING] = float(group["grad_averaging"])
        row[L.HP_ADAPT] = float(group["adapt"])
        lo, hi = group["trust_clip"] if group["trust_clip"] is not None else (0.0, math.inf)
        row[L.HP_TRUST_MIN], row[L.HP_TRUST_MAX] = lo, hi
        row[L.HP_DECOUPLED] = float(group["decoupled_decay"])
        return row

    def _on_plan_built(self, plan: Plan) -> None:
        self._norms = torch.zeros(len(plan.order), L.NORM_COLS, dtype=torch.float32, device=plan.device)
        self._extra_telemetry = {"param_norm": self._norms[:, L.NORM_PARAM],
                                 "update_norm": self._norms[:, L.NORM_UPDATE],
                                 "trust_ratio": self._norms[:, L.NORM_RATIO]}

    def _check_buckets(self, buckets: list[list[torch.Tensor]]) -> None:
        if self._options.get("max_grad_norm") is not None:
            from ._distributed import check_global_norm_reducible

            check_global_norm_reducible(buckets)

    def _clip_div(self, plan: Plan, ctx: StepContext) -> torch.Tensor | None:
        """``max(1, ||g|| / max_grad_norm)`` with ``||g||`` over every gradient (whole tensors, across shards)."""
        max_norm = self._options.get("max_grad_norm")
        if max_norm is None:
            return None
        totals = torch.stack([bucket.backend.grad_sumsq(bucket.batch, ctx).reshape(()).to(torch.float32)
                              for bucket in plan.buckets])
        reducers = [bucket.allreduce for bucket in plan.buckets]
        if any(r is not None for r in reducers):
            from ._distributed import reduce_bucket_sums

            reduce_bucket_sums(totals, reducers)  # sharded buckets summed over their shards; whole ones once
        grad_norm = totals.sum().sqrt()
        self._extra_telemetry["grad_norm"] = grad_norm
        return torch.clamp(grad_norm / max_norm, min=1.0).reshape(1)

    def _update(self, plan: Plan, ctx: StepContext) -> None:
        clip_div = self._clip_div(plan, ctx)
        for bucket in plan.buckets:
            bucket.backend.lamb(bucket.batch, ctx, norms_out=self._norms[bucket.rows], clip_div=clip_div,
                                allreduce=bucket.allreduce)
