r"""LAMB written out as a plain per-tensor loop in float64: the reference every backend is tested against.

You, Li, Reddi, Hseu, Kumar, Bhojanapalli, Song, Demmel, Keutzer, Hsieh, "Large Batch Optimization for
Deep Learning: Training BERT in 76 minutes", ICLR 2020, arXiv 1904.00962 (v5, Algorithm 2), with the
options of :class:`lrsched_fused.FusedLAMB`. For one tensor (layer) at update count ``t`` (1-based)
and learning rate ``eta`` (read from the schedule at the 0-based clock):

.. math::
    g &\leftarrow g / c, \quad c = \max\bigl(1, \lVert g_{all}\rVert_2 / \text{max\_grad\_norm}\bigr)
        \quad\text{(global clipping, optional)} \\
    m &\leftarrow \beta_1 m + \beta_3 g, \qquad \beta_3 = 1 - \beta_1 \text{ (grad\_averaging) else } 1 \\
    v &\leftarrow \beta_2 v + (1 - \beta_2) g^2 \\
    r &= \frac{m / (1 - \beta_1^t)}{\sqrt{v}/\sqrt{1 - \beta_2^t} + \epsilon}
        \quad\text{(without bias\_correction: } m / (\sqrt v + \epsilon)\text{)} \\
    (w, u) &= (\theta, r + \lambda\theta) \text{, or } (\theta(1 - \eta\lambda), r) \text{ with decoupled\_decay} \\
    \rho &= \operatorname{clamp}\bigl(\lVert w\rVert / \lVert u\rVert, \rho_{min}, \rho_{max}\bigr)
        \quad(\text{the ratio is 1 if either norm is 0 or adapt is off, then clamped}) \\
    \theta &\leftarrow w - \eta\,\rho\,u

The paper's default is ``decoupled_decay=False`` (decay inside the update and the ratio's denominator),
no clamp (``trust_clip=None``), no clipping; ``phi`` of the paper is the identity. Ratio 1 on a zero
norm follows the TF reference implementation (tensorflow/addons ``lamb.py``).

16-bit moment states (``state_storage``)
----------------------------------------
With ``state_storage=torch.bfloat16`` (or ``float16``) the moments are rounded to that dtype (to nearest
even, :func:`round_to_storage`) right after each update, and ``r`` is formed from the rounded moments:
:math:`m \leftarrow \operatorname{rnd}(\beta_1 m + \beta_3 g)`, :math:`v \leftarrow
\operatorname{rnd}(\beta_2 v + (1 - \beta_2) g^2)`, then ``r`` as above. This is what every backend of
the package computes for 16-bit states (the update applied is the one whose norm gave the trust ratio;
``docs/lamb_variants.md``). The rest of the math stays float64. ``None`` (default) keeps float64 moments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import torch

from ._common import ClockTracker, as_float64, check_grads, l2_norm, lr_at, normalize_groups, round_to_storage

__all__ = ["lamb_step", "run_lamb", "global_grad_norm", "LambRun", "LambNorms", "LAMB_DEFAULTS", "trust_ratio"]

#: FusedLAMB's defaults (the paper's algorithm), plus ``lr_scale``.
LAMB_DEFAULTS: dict[str, Any] = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01, bias_correction=True,
                                     grad_averaging=True, adapt=True, trust_clip=None, decoupled_decay=False,
                                     lr_scale=1.0)


@dataclass(frozen=True)
class LambNorms:
    """Per-tensor LAMB quantities of one update: ``||w||``, ``||u||`` and the ratio applied."""

    param_norm: float
    update_norm: float
    trust_ratio: float


def trust_ratio(w_norm: float, u_norm: float, *, adapt: bool = True,
                trust_clip: tuple[float, float] | None = None) -> float:
    """``||w|| / ||u||``; 1 when either norm is 0 or ``adapt`` is off; then clamped to ``trust_clip``."""
    ratio = w_norm / u_norm if (adapt and w_norm > 0.0 and u_norm > 0.0) else 1.0
    if trust_clip is not None:
        lo, hi = trust_clip
        ratio = min(max(ratio, lo), hi)
    return ratio


def global_grad_norm(grads: Iterable[torch.Tensor | None]) -> float:
    """``sqrt(sum of g^2)`` over every gradient given (``None`` entries skipped), in float64."""
    return math.sqrt(sum(l2_norm(g) ** 2 for g in grads if g is not None))


def new_lamb_state(p: torch.Tensor) -> dict:
    return {"step": 0, "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}


def lamb_step(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor | None], states: Sequence[dict], *,
              lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6, weight_decay: float = 0.01,
              bias_correction: bool = True, grad_averaging: bool = True, adapt: bool = True,
              trust_clip: tuple[float, float] | None = None, decoupled_decay: bool = False,
              clip_div: float = 1.0, state_storage: torch.dtype | None = None) -> list[LambNorms | None]:
    """One LAMB update of every tensor of ``params`` that has a gradient, in place.

    Args:
        params: float64 tensors (updated in place).
        grads: one gradient (read as float64) or ``None`` per parameter.
        states: per-parameter dicts (``step`` int, ``exp_avg``, ``exp_avg_sq``), updated in place.
        lr: this update's learning rate.
        clip_div: every gradient is divided by it (global-norm clipping: see :func:`run_lamb`).
        state_storage: ``None`` (float64 moments) or the dtype the moments are stored in (e.g.
            ``torch.bfloat16``): they are rounded to it after each update and ``r`` is formed from the
            rounded values (see the module docstring).

    Returns:
        The per-tensor :class:`LambNorms` (``None`` for parameters without a gradient).
    """
    beta1, beta2 = betas
    beta3 = (1.0 - beta1) if grad_averaging else 1.0
    out: list[LambNorms | None] = []
    for p, g, st in zip(params, grads, states):
        if g is None:
            out.append(None)
            continue
        g = g.detach().to(device=p.device, dtype=torch.float64) / clip_div
        st["step"] += 1
        t = st["step"]
        st["exp_avg"] = round_to_storage(beta1 * st["exp_avg"] + beta3 * g, state_storage)
        st["exp_avg_sq"] = round_to_storage(beta2 * st["exp_avg_sq"] + (1.0 - beta2) * g * g, state_storage)
        if bias_correction:
            bias_correction1, bias_correction2 = 1.0 - beta1 ** t, 1.0 - beta2 ** t
        else:
            bias_correction1 = bias_correction2 = 1.0
        r = (st["exp_avg"] / bias_correction1) / (st["exp_avg_sq"].sqrt() / math.sqrt(bias_correction2) + eps)
        if decoupled_decay:
            w, u = p * (1.0 - lr * weight_decay), r
        else:
            w, u = p.clone(), r + weight_decay * p
        w_norm, u_norm = l2_norm(w), l2_norm(u)
        ratio = trust_ratio(w_norm, u_norm, adapt=adapt, trust_clip=trust_clip)
        p.copy_(w - lr * ratio * u)
        out.append(LambNorms(w_norm, u_norm, ratio))
    return out


@dataclass
class LambRun:
    """What :func:`run_lamb` returns.

    Attributes:
        params: final parameters (float64, CPU), flattened over the groups in order.
        states: final per-parameter states.
        lrs: ``lrs[k][i]`` the lr group ``i`` used in update ``k``.
        norms: ``norms[k][j]`` the :class:`LambNorms` of parameter ``j`` in update ``k`` (or ``None``).
        grad_norms: ``grad_norms[k]`` the global gradient norm of update ``k`` (before clipping).
        groups: the normalized groups.
    """

    params: list[torch.Tensor]
    states: list[dict]
    lrs: list[list[float]] = field(default_factory=list)
    norms: list[list[LambNorms | None]] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    groups: list[dict] = field(default_factory=list)


def run_lamb(params: Iterable[Any], grads: Sequence[Sequence[torch.Tensor | None]], *,
             max_grad_norm: float | None = None, tokens: Sequence[int] | None = None,
             param_storage: torch.dtype | None = None, state_storage: torch.dtype | None = None,
             **defaults: Any) -> LambRun:
    """Run ``len(grads)`` LAMB updates from ``params`` and return the float64 result.

    Args:
        params: tensors or torch-style param groups (dicts with ``params`` and any key of
            :data:`LAMB_DEFAULTS`). Copied to float64, not modified.
        grads: per update, one gradient (or ``None``) per parameter in the flattened group order.
        max_grad_norm: ``None`` (no clipping) or ``> 0``: every gradient of the update is divided by
            ``max(1, ||g|| / max_grad_norm)`` with ``||g||`` the norm over all gradients of all groups
            (apex FusedLAMB and timm Lamb clip this way).
        tokens: per update, the tokens it consumed (the token clock).
        param_storage: round parameters to this dtype after each update (see :func:`run_adamw`).
        state_storage: round the moments to this dtype after each update and form ``r`` from the rounded
            moments (16-bit moment states; see the module docstring). ``None``: float64 moments.
        **defaults: hyperparameters for groups that do not set them.
    """
    unknown = set(defaults) - set(LAMB_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown LAMB hyperparameters: {sorted(unknown)}")
    if max_grad_norm is not None and not (math.isfinite(max_grad_norm) and max_grad_norm > 0):
        raise ValueError(f"max_grad_norm must be None or a finite float > 0; got {max_grad_norm!r}")
    groups = normalize_groups(params, {**LAMB_DEFAULTS, **defaults})
    flat = [as_float64(p) for g in groups for p in g["params"]]
    states = [new_lamb_state(p) for p in flat]
    spans, k = [], 0
    for g in groups:
        spans.append((k, k + len(g["params"])))
        k += len(g["params"])
    clock = ClockTracker()
    run = LambRun(params=flat, states=states, groups=groups)
    for step, step_grads in enumerate(grads):
        check_grads(step, step_grads, len(flat))
        grad_norm = global_grad_norm(step_grads)
        clip_div = max(1.0, grad_norm / max_grad_norm) if max_grad_norm is not None else 1.0
        used, norms = [], []
        for g, (lo, hi) in zip(groups, spans):
            lr = lr_at(g["lr"], clock.read(g["lr"]), g["lr_scale"])
            used.append(lr)
            clip = g["trust_clip"]
            norms += lamb_step(flat[lo:hi], step_grads[lo:hi], states[lo:hi], lr=lr, betas=tuple(g["betas"]),
                               eps=g["eps"], weight_decay=g["weight_decay"], bias_correction=g["bias_correction"],
                               grad_averaging=g["grad_averaging"], adapt=g["adapt"],
                               trust_clip=None if clip is None else tuple(clip),
                               decoupled_decay=g["decoupled_decay"], clip_div=clip_div,
                               state_storage=state_storage)
            for i in range(lo, hi):
                if step_grads[i] is not None:
                    flat[i].copy_(round_to_storage(flat[i], param_storage))
        run.lrs.append(used)
        run.norms.append(norms)
        run.grad_norms.append(grad_norm)
        clock.advance(None if tokens is None else tokens[step])
    return run
