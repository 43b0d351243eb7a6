"""FusedLAMB: layer-wise adaptive moments (LAMB) with per-tensor trust ratios, fused over all tensors."""

from __future__ import annotations

from typing import Any, Iterable

import torch

from lrsched_fused._validate import check_positive_or_none
from lrsched_fused.functional import GroupTables, LambHyper, grad_sumsq, lamb
from lrsched_fused.kernels import layout as L
from lrsched_fused.schedules import Schedule

from ._distributed import check_global_norm_reducible, reduce_bucket_sums
from .base import FusedOptimizer
from .plan import Plan

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
        backend, skip_nonfinite, master_weights, state_dtype, quant_block, quant_min_numel, master_bits,
        stochastic_rounding, telemetry_history: as :class:`FusedAdamW`.

    After a step, ``telemetry()`` holds per-tensor ``param_norm``, ``update_norm`` and ``trust_ratio``
    (device tensors, no sync). ``docs/lamb_variants.md`` maps apex FusedLAMB, DeepSpeed FusedLamb and
    timm Lamb settings onto these options.
    """

    hyperparams = LambHyper

    def __init__(self, params: Iterable, lr: float | Schedule = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.01, *, bias_correction: bool = True,
                 grad_averaging: bool = True, adapt: bool = True, trust_clip: tuple[float, float] | None = None,
                 decoupled_decay: bool = False, max_grad_norm: float | None = None, backend: str = "auto",
                 skip_nonfinite: bool = False, master_weights: bool | str = False, state_dtype: Any = None,
                 quant_block: int = 256, quant_min_numel: int = 4096, master_bits: int = 8,
                 stochastic_rounding: bool = False, telemetry_history: int = 65536) -> None:
        max_grad_norm = check_positive_or_none(max_grad_norm, "max_grad_norm")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, bias_correction=bias_correction,
                        grad_averaging=grad_averaging, adapt=adapt, trust_clip=trust_clip,
                        decoupled_decay=decoupled_decay)
        super().__init__(params, defaults, backend=backend, skip_nonfinite=skip_nonfinite,
                         master_weights=master_weights, state_dtype=state_dtype, quant_block=quant_block,
                         quant_min_numel=quant_min_numel, master_bits=master_bits,
                         stochastic_rounding=stochastic_rounding, telemetry_history=telemetry_history)
        self._options["max_grad_norm"] = max_grad_norm

    def _check_buckets(self, buckets: list[list[torch.Tensor]]) -> None:
        for params in buckets:
            if any(getattr(p, "_is_flat_param", False) for p in params):
                raise ValueError(
                    "FusedLAMB got an FSDP1 FlatParameter (torch.distributed.fsdp.FullyShardedDataParallel flattens "
                    "every tensor of a module into one flat parameter and shards that): LAMB's trust ratio "
                    "||w|| / ||r + lambda w|| is per tensor (layer), and over a flat parameter it would be taken over "
                    "a shard of several concatenated layers. Use FSDP2 (torch.distributed.fsdp.fully_shard), whose "
                    "DTensor parameters keep each tensor (the ratio is then whole-tensor, across shards), or FusedAdamW "
                    "(elementwise, correct on flat parameters)")
        if self._options.get("max_grad_norm") is not None:
            check_global_norm_reducible(buckets)

    def _norms(self, plan: Plan) -> torch.Tensor:
        """float32 ``[n, NORM_COLS]`` per-tensor telemetry of ``plan`` (allocated once per plan)."""
        norms = plan.extra.get("norms")
        if norms is None:
            norms = plan.extra["norms"] = torch.zeros(len(plan.order), L.NORM_COLS, dtype=torch.float32,
                                                      device=plan.device)
            self._telemetry = {"param_norm": norms[:, L.NORM_PARAM], "update_norm": norms[:, L.NORM_UPDATE],
                               "trust_ratio": norms[:, L.NORM_RATIO]}
        return norms

    def _clip_div(self, plan: Plan, tables: GroupTables, grad_scale: torch.Tensor | None) -> torch.Tensor | None:
        """``max(1, ||g|| / max_grad_norm)`` with ``||g||`` over every gradient (whole tensors, across shards)."""
        max_norm = self._options.get("max_grad_norm")
        if max_norm is None:
            return None
        totals = torch.stack([grad_sumsq(b.batch, tables, self._clock, grad_scale=grad_scale, backend=b.backend)
                              .reshape(()).to(torch.float32) for b in plan.buckets])
        reducers = [bucket.allreduce for bucket in plan.buckets]
        if any(r is not None for r in reducers):
            reduce_bucket_sums(totals, reducers)  # sharded buckets summed over their shards; whole ones once
        grad_norm = totals.sum().sqrt()
        self._telemetry["grad_norm"] = grad_norm
        return torch.clamp(grad_norm / max_norm, min=1.0).reshape(1)

    def _run(self, plan: Plan, tables: GroupTables, found_inf: torch.Tensor | None,
             grad_scale: torch.Tensor | None) -> None:
        norms = self._norms(plan)
        clip_div = self._clip_div(plan, tables, grad_scale)
        for bucket in plan.buckets:
            for batch, rows in self._passes(bucket, found_inf):
                lamb(batch, tables, self._clock, norms_out=norms[rows], clip_div=clip_div, allreduce=bucket.allreduce,
                     found_inf=found_inf, grad_scale=grad_scale, backend=bucket.backend)
