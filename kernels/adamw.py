"""Multi-tensor AdamW in one launch, the learning rate read from the schedule at the device clock.

Per tensor ``i`` of param group ``g`` (``t = steps[i] + 1``; Loshchilov & Hutter, arXiv 1711.05101, in
``torch.optim.AdamW``'s order and rounding)::

    lr    = hparams[g, LR_SCALE] * schedule_g(clock)
    grad  = grad / grad_scale                    (GradScaler, if given)
    grad  = -grad                                (maximize)
    p     = p * (1 - lr * wd)
    m     = m + (grad - m) * (1 - b1)            (torch's lerp)
    v     = v * b2 + (1 - b2) * grad * grad
    vmax  = max(vmax, v)                         (amsgrad: the denominator uses vmax)
    p     = p - (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

Math in float32 (float64 for float64 parameters); parameters, moments and master weights in any of the
supported dtypes, stores rounded to nearest even. With ``found_inf`` nonzero every program stores
nothing. Bytes per element (fp32, no amsgrad): read p, g, m, v and write p, m, v = 28.

Each program owns one ``(tensor, chunk)`` row of the work table. The chunk runs in ``BLOCK``-element
steps without masks, then one masked tail step, so that the bulk of the traffic can use vector loads.

Compile-time switches, each free when off (``docs/compressed_state.md``): ``MASTER`` (``layout.MASTER_*``:
fp32 masters or compact int8 / int16 corrections, :mod:`.params`), ``SR`` (bf16 moments and bf16
parameters without masters stored with stochastic rounding), ``GNORM`` (``gnorm[pid] = (sum g^2, sum |g|)``
of ``grad / grad_scale``, accumulated while ``g`` is in registers; a skipped step writes zeros). The int8
moment kernel is :mod:`.adamw_int8`; both share :func:`adamw_scalars`.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._jit import device_jit

from . import layout as L
from .bias_correction import one_minus_pow
from .dtypes import load_as, precise_div, precise_sqrt, store_as, to_compute
from .multi_tensor import (LIST_EXP_AVG, LIST_EXP_AVG_SQ, LIST_GRAD, LIST_MAX_EXP_AVG_SQ, LIST_PARAM, chunk_extent,
                           list_ptr, master_ptr, work_item)
from .params import load_param, sr_setup, store_gnorm, store_param, store_state
from .quant import KEY_EXP_AVG, KEY_EXP_AVG_SQ
from .schedule import group_lr

__all__ = ["adamw_kernel", "adamw_scalars"]

_HPC = tl.constexpr(L.HP_COLS)
_BETA1 = tl.constexpr(L.HP_BETA1)
_BETA2 = tl.constexpr(L.HP_BETA2)
_EPS = tl.constexpr(L.HP_EPS)
_WD = tl.constexpr(L.HP_WEIGHT_DECAY)
_MAXIMIZE = tl.constexpr(L.HP_MAXIMIZE)


@device_jit
def adamw_scalars(sched_ints, sched_floats, group_sched, hparams, clock, steps_ptr, grad_scale_ptr, g, i,
                  F64: tl.constexpr, PHASE_BLOCK: tl.constexpr):
    """Tensor ``i``'s scalars in the compute type: ``(decay, step_size, sqrt_bc2, 1 - b1, b2, 1 - b2, eps,
    sign, grad_scale)``."""
    lr = group_lr(sched_ints, sched_floats, group_sched, hparams, clock, g, PHASE_BLOCK).to(tl.float64)
    hp = hparams + g * _HPC
    b1 = tl.load(hp + _BETA1)
    b2 = tl.load(hp + _BETA2)
    wd = tl.load(hp + _WD)
    t = tl.load(steps_ptr + i) + 1.0
    bc1 = one_minus_pow(b1, t).to(tl.float64)
    bc2 = one_minus_pow(b2, t).to(tl.float64)
    return (to_compute(1.0 - lr * wd, F64), to_compute(lr / bc1, F64), to_compute(tl.sqrt(bc2), F64),
            to_compute(1.0 - b1, F64), to_compute(b2, F64), to_compute(1.0 - b2, F64),
            to_compute(tl.load(hp + _EPS), F64),
            to_compute(tl.where(tl.load(hp + _MAXIMIZE) != 0.0, -1.0, 1.0), F64),
            to_compute(tl.load(grad_scale_ptr), F64))  # grad_scale: a dummy one-element tensor unless HAS_SCALE


@device_jit
def _adamw_block(p_ptr, g_ptr, m_ptr, v_ptr, vmax_ptr, mst_ptr, offs, mask, idx32, seed, acc_sq, acc_abs,
                 scale, sign, decay, one_minus_b1, b2, one_minus_b2, step_size, sqrt_bc2, eps,
                 P_DT: tl.constexpr, S_DT: tl.constexpr, F64: tl.constexpr, MASTER: tl.constexpr,
                 AMSGRAD: tl.constexpr, HAS_SCALE: tl.constexpr, SR: tl.constexpr, GNORM: tl.constexpr,
                 MASKED: tl.constexpr):
    g = load_as(g_ptr, offs, mask, P_DT, F64, MASKED)
    if HAS_SCALE:
        g = precise_div(g, scale, F64)
    if GNORM:
        acc_sq = acc_sq + g * g
        acc_abs = acc_abs + tl.abs(g)
    g = g * sign
    p = load_param(p_ptr, mst_ptr, offs, mask, P_DT, MASTER, F64, MASKED)
    m = load_as(m_ptr, offs, mask, S_DT, F64, MASKED)
    v = load_as(v_ptr, offs, mask, S_DT, F64, MASKED)

    p = p * decay
    m = m + (g - m) * one_minus_b1
    v = v * b2 + one_minus_b2 * g * g
    if AMSGRAD:
        vmax = tl.maximum(load_as(vmax_ptr, offs, mask, S_DT, F64, MASKED), v, propagate_nan=tl.PropagateNan.ALL)
        store_as(vmax_ptr, offs, vmax, mask, S_DT, MASKED)  # a running max: rounded to nearest even, also with SR
        den_v = vmax
    else:
        den_v = v
    denom = precise_div(precise_sqrt(den_v, F64), sqrt_bc2, F64) + eps
    p = p - precise_div(step_size * m, denom, F64)

    store_state(m_ptr, offs, m, mask, idx32, seed, S_DT, SR, KEY_EXP_AVG, MASKED)
    store_state(v_ptr, offs, v, mask, idx32, seed, S_DT, SR, KEY_EXP_AVG_SQ, MASKED)
    store_param(p_ptr, mst_ptr, offs, p, mask, idx32, seed, P_DT, MASTER, SR, MASKED)
    return acc_sq, acc_abs


@triton.jit(do_not_specialize=["n_tensors"])
def adamw_kernel(ptr_table, numels_ptr, work_ptr, group_index_ptr, steps_ptr,
                 sched_ints, sched_floats, group_sched, hparams, clock,
                 found_inf_ptr, grad_scale_ptr, gnorm_ptr, n_tensors,
                 P_DT: tl.constexpr, S_DT: tl.constexpr, F64: tl.constexpr, MASTER: tl.constexpr,
                 AMSGRAD: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_FOUND: tl.constexpr, SR: tl.constexpr,
                 GNORM: tl.constexpr, ALIGNED: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr,
                 PHASE_BLOCK: tl.constexpr):
    """One AdamW step of chunk ``work[pid]``; see the module docstring. Grid: ``(n_work,)``. ``gnorm`` is a
    dummy unless ``GNORM``."""
    i, c = work_item(work_ptr)
    numel = tl.load(numels_ptr + i)
    g = tl.load(group_index_ptr + i)
    decay, step_size, sqrt_bc2, one_minus_b1, b2, one_minus_b2, eps, sign, scale = adamw_scalars(
        sched_ints, sched_floats, group_sched, hparams, clock, steps_ptr, grad_scale_ptr, g, i, F64, PHASE_BLOCK)

    limit = numel
    if HAS_FOUND:
        limit = tl.where(tl.load(found_inf_ptr) != 0.0, 0, numel)
    start, n_local = chunk_extent(numel, c, limit, CHUNK)
    p_ptr = list_ptr(ptr_table, LIST_PARAM, n_tensors, i, P_DT, ALIGNED) + start
    g_ptr = list_ptr(ptr_table, LIST_GRAD, n_tensors, i, P_DT, ALIGNED) + start
    m_ptr = list_ptr(ptr_table, LIST_EXP_AVG, n_tensors, i, S_DT, ALIGNED) + start
    v_ptr = list_ptr(ptr_table, LIST_EXP_AVG_SQ, n_tensors, i, S_DT, ALIGNED) + start
    vmax_ptr = list_ptr(ptr_table, LIST_MAX_EXP_AVG_SQ, n_tensors, i, S_DT, ALIGNED) + start
    mst_ptr = master_ptr(ptr_table, n_tensors, i, MASTER, ALIGNED) + start
    seed, base32 = sr_setup(ptr_table, clock, n_tensors, i, start, SR)
    acc_sq = to_compute(tl.zeros([BLOCK], dtype=tl.float32), F64)
    acc_abs = to_compute(tl.zeros([BLOCK], dtype=tl.float32), F64)

    n_full = n_local // BLOCK
    for j in range(0, n_full):
        offs = j * BLOCK + tl.arange(0, BLOCK)
        acc_sq, acc_abs = _adamw_block(
            p_ptr, g_ptr, m_ptr, v_ptr, vmax_ptr, mst_ptr, offs, offs < n_local, base32 + offs.to(tl.uint32), seed,
            acc_sq, acc_abs, scale, sign, decay, one_minus_b1, b2, one_minus_b2, step_size, sqrt_bc2, eps,
            P_DT, S_DT, F64, MASTER, AMSGRAD, HAS_SCALE, SR, GNORM, False)
    offs = n_full * BLOCK + tl.arange(0, BLOCK)
    acc_sq, acc_abs = _adamw_block(
        p_ptr, g_ptr, m_ptr, v_ptr, vmax_ptr, mst_ptr, offs, offs < n_local, base32 + offs.to(tl.uint32), seed,
        acc_sq, acc_abs, scale, sign, decay, one_minus_b1, b2, one_minus_b2, step_size, sqrt_bc2, eps,
        P_DT, S_DT, F64, MASTER, AMSGRAD, HAS_SCALE, SR, GNORM, True)
    if GNORM:
        store_gnorm(gnorm_ptr, acc_sq, acc_abs)
