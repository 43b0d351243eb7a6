r"""AdamW written out as a plain per-tensor loop in float64: the reference every backend is tested against.

Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019, arXiv 1711.05101, with the
exact order of operations of ``torch.optim.AdamW`` (torch 2.x ``_single_tensor_adam`` with
``decoupled_weight_decay=True``). For one tensor at update count ``t`` (1-based) and learning rate
``eta`` (read from the schedule at the 0-based clock):

.. math::
    g &\leftarrow -g \quad\text{if maximize} \\
    \theta &\leftarrow \theta\,(1 - \eta\lambda) \\
    m &\leftarrow \beta_1 m + (1 - \beta_1) g \\
    v &\leftarrow \beta_2 v + (1 - \beta_2) g^2 \\
    \hat v &= \max(\hat v_{prev}, v) \ \text{(amsgrad, on the uncorrected } v\text{)}, \text{ else } v \\
    \theta &\leftarrow \theta - \frac{\eta}{1 - \beta_1^t}\,
            \frac{m}{\sqrt{\hat v}/\sqrt{1 - \beta_2^t} + \epsilon}

(``eps`` is added after bias-correcting the square root, as torch does.) A parameter without a gradient
in a step is skipped and its count ``t`` does not advance; the clock advances once per step regardless.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import torch

from ._common import ClockTracker, as_float64, check_grads, lr_at, normalize_groups, round_to_storage

__all__ = ["adamw_step", "run_adamw", "AdamWRun", "ADAMW_DEFAULTS"]

#: torch.optim.AdamW's defaults (plus ``lr_scale``, the per-group multiplier of the lr).
ADAMW_DEFAULTS: dict[str, Any] = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False,
                                      maximize=False, lr_scale=1.0)


def new_adamw_state(p: torch.Tensor, amsgrad: bool) -> dict:
    """Zero moments (float64) and update count 0."""
    state = {"step": 0, "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
    if amsgrad:
        state["max_exp_avg_sq"] = torch.zeros_like(p)
    return state


def adamw_step(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor | None], states: Sequence[dict], *,
               lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2,
               amsgrad: bool = False, maximize: bool = False) -> None:
    """One AdamW update of every tensor of ``params`` that has a gradient, in place.

    Args:
        params: float64 tensors (updated in place).
        grads: one gradient (any float dtype; read as float64) or ``None`` per parameter.
        states: one dict per parameter (``step`` int, ``exp_avg``, ``exp_avg_sq`` and with amsgrad
            ``max_exp_avg_sq``, float64), updated in place; see :func:`new_adamw_state`.
        lr: the learning rate of this update (already evaluated from the schedule).
    """
    beta1, beta2 = betas
    for p, g, st in zip(params, grads, states):
        if g is None:
            continue
        g = g.detach().to(device=p.device, dtype=torch.float64)
        if maximize:
            g = -g
        st["step"] += 1
        t = st["step"]
        # decoupled decay uses the parameter before this update and this update's lr
        p.mul_(1.0 - lr * weight_decay)
        st["exp_avg"] = beta1 * st["exp_avg"] + (1.0 - beta1) * g
        st["exp_avg_sq"] = beta2 * st["exp_avg_sq"] + (1.0 - beta2) * g * g
        second = st["exp_avg_sq"]
        if amsgrad:
            st["max_exp_avg_sq"] = torch.maximum(st["max_exp_avg_sq"], st["exp_avg_sq"])
            second = st["max_exp_avg_sq"]
        bias_correction1 = 1.0 - beta1 ** t
        bias_correction2 = 1.0 - beta2 ** t
        denom = second.sqrt() / math.sqrt(bias_correction2) + eps
        p.sub_((lr / bias_correction1) * st["exp_avg"] / denom)


@dataclass
class AdamWRun:
    """What :func:`run_adamw` returns.

    Attributes:
        params: the final parameters (float64, CPU), flattened over the groups in order.
        states: the final per-parameter states (float64 moments, int ``step``).
        lrs: ``lrs[k][i]`` the lr group ``i`` used in update ``k``.
        groups: the normalized groups (hyperparameters with defaults filled in).
    """

    params: list[torch.Tensor]
    states: list[dict]
    lrs: list[list[float]] = field(default_factory=list)
    groups: list[dict] = field(default_factory=list)


def run_adamw(params: Iterable[Any], grads: Sequence[Sequence[torch.Tensor | None]], *,
              tokens: Sequence[int] | None = None, param_storage: torch.dtype | None = None,
              **defaults: Any) -> AdamWRun:
    """Run ``len(grads)`` AdamW updates from ``params`` and return the float64 result.

    Args:
        params: tensors, or torch-style param groups (dicts with ``params`` and any of ``lr``, ``betas``,
            ``eps``, ``weight_decay``, ``amsgrad``, ``maximize``, ``lr_scale``). The tensors are copied to
            float64; they are not modified.
        grads: per update, one gradient (or ``None``) per parameter, in the flattened group order.
        tokens: per update, the tokens it consumed (advances the token clock schedules with
            ``unit="tokens"`` read); ``None`` leaves the token clock at 0.
        param_storage: if set (``torch.bfloat16``/``torch.float16``), every parameter is rounded to this
            dtype after each update, as an optimizer that stores low-precision parameters without fp32
            master weights does.
        **defaults: hyperparameters for groups that do not set them (see :data:`ADAMW_DEFAULTS`).
            ``lr`` is a float, a :class:`~lrsched_fused.schedules.Schedule` or a callable of the clock;
            the update at clock ``k`` uses ``lr_scale * lr(k)``.
    """
    unknown = set(defaults) - set(ADAMW_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown AdamW hyperparameters: {sorted(unknown)}")
    groups = normalize_groups(params, {**ADAMW_DEFAULTS, **defaults})
    flat = [as_float64(p) for g in groups for p in g["params"]]
    states = []
    spans, k = [], 0
    for g in groups:
        n = len(g["params"])
        spans.append((k, k + n))
        states += [new_adamw_state(p, g["amsgrad"]) for p in flat[k:k + n]]
        k += n
    clock = ClockTracker()
    lrs = []
    for step, step_grads in enumerate(grads):
        check_grads(step, step_grads, len(flat))
        used = []
        for g, (lo, hi) in zip(groups, spans):
            lr = lr_at(g["lr"], clock.read(g["lr"]), g["lr_scale"])
            used.append(lr)
            adamw_step(flat[lo:hi], step_grads[lo:hi], states[lo:hi], lr=lr, betas=tuple(g["betas"]), eps=g["eps"],
                       weight_decay=g["weight_decay"], amsgrad=g["amsgrad"], maximize=g["maximize"])
            for i in range(lo, hi):
                if step_grads[i] is not None:
                    flat[i].copy_(round_to_storage(flat[i], param_storage))
        lrs.append(used)
        clock.advance(None if tokens is None else tokens[step])
    return AdamWRun(params=flat, states=states, lrs=lrs, groups=groups)
