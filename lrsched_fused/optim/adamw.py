"""FusedAdamW: ``torch.optim.AdamW`` semantics, one fused launch per step, lr from an in-kernel schedule."""

from __future__ import annotations

from typing import Any, Iterable

import torch

from lrsched_fused.functional import AdamWHyper, GroupTables, adamw
from lrsched_fused.schedules import Schedule

from .base import FusedOptimizer
from .plan import Plan

__all__ = ["FusedAdamW"]


class FusedAdamW(FusedOptimizer):
    r"""AdamW (Loshchilov & Hutter, "Decoupled Weight Decay Regularization", arXiv 1711.05101) with exactly
    ``torch.optim.AdamW``'s update, for every parameter in a constant number of kernel launches.

    .. math::
        \theta \leftarrow \theta (1 - \eta_t\lambda);\quad
        m \leftarrow \beta_1 m + (1-\beta_1) g;\quad v \leftarrow \beta_2 v + (1-\beta_2) g^2;\\
        \theta \leftarrow \theta - \frac{\eta_t}{1-\beta_1^t}\,\frac{m}{\sqrt{v}/\sqrt{1-\beta_2^t} + \epsilon}

    with ``t`` the parameter's 1-based update count and ``eta_t = lr_scale * lr(clock)``: ``lr`` is a float
    (followed at every step, so torch schedulers work) or a schedule from :mod:`lrsched_fused.schedules`
    evaluated on the device from the optimizer's clock (first update: clock 0).

    Args:
        params: iterable of parameters or param groups (groups may set every argument below except
            ``backend``, plus ``lr_scale``).
        lr: float ``>= 0`` or a :class:`~lrsched_fused.schedules.Schedule`. Default 1e-3.
        betas: ``(beta1, beta2)``, each in [0, 1). Default (0.9, 0.999).
        eps: added to the denominator, ``> 0``. Default 1e-8.
        weight_decay: decoupled decay ``lambda >= 0``. Default 1e-2.
        amsgrad: use the running maximum of ``v`` (torch's AMSGrad). Default False.
        maximize: ascend the objective. Default False.
        backend: ``"auto"``, ``"triton"``, ``"cpu"``, ``"cuda"`` or ``"reference"``.
        skip_nonfinite: skip the update (and the clock) when any gradient holds inf/NaN, decided on the
            device. Default False (as torch: a GradScaler does this when you use one).
        master_weights: ``True``: fp32 master copies of bf16/fp16 parameters (``state["master_param"]``);
            ``"compact"``: the 16-bit parameter plus an int8 (``master_bits=8``, ~16 significant bits) or
            int16 (``master_bits=16``, exact for bf16) correction (``state["master_correction"]``).
        state_dtype: ``None`` (fp32 moments for bf16/fp16 params, the param dtype otherwise), ``"param"``
            (torch's layout: moments in the param dtype), ``torch.float32``, ``torch.bfloat16``, or
            ``"int8"``: block-quantized moments (int8 / uint8 codes with fp32 block scales, for tensors of at
            least 2 dimensions and ``quant_min_numel`` elements; docs/compressed_state.md).
        quant_block, quant_min_numel, master_bits, stochastic_rounding: storage options
            (docs/compressed_state.md); ``stochastic_rounding`` rounds bf16 moments and bf16 parameters
            without master weights stochastically, seeded so that a resume is exact.
        telemetry_history: steps of gradient-norm history kept on the device (``telemetry_history()``; 0: none).
        foreach, fused, capturable: accepted for drop-in compatibility and ignored (this optimizer is
            always fused and capturable). ``differentiable=True`` is not supported.

    State per parameter (torch's layout for fp32/fp64 params): ``step`` (0-d float32 on the
    parameter's device), ``exp_avg``, ``exp_avg_sq`` and, with amsgrad, ``max_exp_avg_sq``; plus ``clock``,
    the optimizer's int64 device clock (one tensor shared by every state), so that every checkpoint path
    carries it (``lrsched_fused.checkpoint``).

    Checkpoints: ``state_dict()`` adds the schedules (plain data in each group), the device clock and the
    options, and loads with ``torch.load(weights_only=True)``; ``load_state_dict`` takes it back on any
    device (the checkpoint's hyperparameters, schedule and clock win) or a ``torch.optim.AdamW`` state dict.
    ``torch.optim.AdamW`` loads ours; :func:`lrsched_fused.checkpoint.torch_scheduler_for` positions a
    torch scheduler at the clock, :func:`~lrsched_fused.checkpoint.clock_from_torch_scheduler` and
    :meth:`set_clock` go the other way.

    Non-finite gradients: with a ``torch.amp.GradScaler`` the scaler's ``found_inf`` skips the update and
    the clock, and its scale is divided out in the kernel (``p.grad`` keeps the scaled values, unlike
    torch's fused AdamW, which writes the unscaled gradients back). Without a scaler they are applied
    (default, as torch) unless ``skip_nonfinite=True``.
    """

    hyperparams = AdamWHyper

    def __init__(self, params: Iterable, lr: float | Schedule = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False, *, maximize: bool = False,
                 backend: str = "auto", skip_nonfinite: bool = False, master_weights: bool | str = False,
                 state_dtype: Any = None, quant_block: int = 256, quant_min_numel: int = 4096, master_bits: int = 8,
                 stochastic_rounding: bool = False, telemetry_history: int = 65536, foreach: bool | None = None,
                 fused: bool | None = None, capturable: bool | None = None, differentiable: bool = False) -> None:
        if differentiable:
            raise ValueError("differentiable=True is not supported by FusedAdamW (use torch.optim.AdamW)")
        for name, flag in (("foreach", foreach), ("fused", fused), ("capturable", capturable)):
            if flag is not None and not isinstance(flag, bool):
                raise ValueError(f"{name} must be None or a bool; got {flag!r}")
        if isinstance(lr, torch.Tensor) and foreach and not capturable:  # torch.optim.AdamW's contract
            raise ValueError("FusedAdamW is always fused and capturable and reads a tensor lr on the device, but "
                             "torch.optim.AdamW refuses this combination of arguments, and so do we: drop "
                             "foreach=True or pass capturable=True (lr as a Tensor is not supported for "
                             "capturable=False and foreach=True)")
        if foreach and fused:
            raise RuntimeError("FusedAdamW is always fused: drop foreach=True (`fused` and `foreach` cannot be "
                               "`True` together.)")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize)
        super().__init__(params, defaults, backend=backend, skip_nonfinite=skip_nonfinite,
                         master_weights=master_weights, state_dtype=state_dtype, quant_block=quant_block,
                         quant_min_numel=quant_min_numel, master_bits=master_bits,
                         stochastic_rounding=stochastic_rounding, telemetry_history=telemetry_history)

    def _run(self, plan: Plan, tables: GroupTables, found_inf: torch.Tensor | None,
             grad_scale: torch.Tensor | None) -> None:
        for bucket in plan.buckets:
            for batch, _ in self._passes(bucket, found_inf):
                adamw(batch, tables, self._clock, amsgrad=bucket.key.amsgrad, found_inf=found_inf,
                      grad_scale=grad_scale, backend=bucket.backend)
