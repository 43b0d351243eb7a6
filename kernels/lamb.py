"""Multi-tensor LAMB in three launches: moments and partial norms, a per-tensor reduction, the update.

LAMB (You et al., arXiv 1904.00962 v5, Algorithm 2) with the options of ``FusedLAMB`` as hyperparameter
columns of param group ``g`` (``t = steps[i] + 1``)::

    grad = grad / grad_scale / clip_div                        (each if given)
    m = b1 m + beta3 grad,  beta3 = 1 - b1 if grad_averaging else 1
    v = b2 v + (1 - b2) grad^2
    bc1, bc2 = (1 - b1^t, 1 - b2^t) if bias_correction else (1, 1)
    r = (m / bc1) / (sqrt(v) / sqrt(bc2) + eps)
    decoupled: w = p (1 - lr wd), u = r          else: w = p, u = r + wd p
    ratio = ||w|| / ||u|| (1 if a norm is 0 or adapt = 0), clamped to [trust_min, trust_max]
    p = w - lr ratio u

1. ``lamb_stage1_kernel`` (grid: work rows) updates the moments, stores them (state dtype) and writes the
   chunk's partial sums of ``w^2`` and ``u^2``. ``u`` is computed from the *stored* (rounded) moments, so
   that stage 2, which recomputes it from them, applies exactly the update whose norm was taken.
2. ``lamb_reduce_kernel`` (grid: tensor blocks) adds each tensor's chunk partials in chunk order, in
   float64: deterministic, no atomics. The caller may all-reduce the ``[n, 2]`` sums here (sharding).
3. ``lamb_stage2_kernel`` (grid: work rows) forms the trust ratio, writes the telemetry row
   (``||w||, ||u||, ratio``) from the tensor's first chunk, and applies the update.

No scratch copy of ``u``: stage 2 re-reads p, m, v. Bytes per element (fp32): stage 1 reads p, g, m, v
and writes m, v (24); stage 2 reads p, m, v and writes p (16): 40 in all, against AdamW's 28. With
``found_inf`` nonzero stage 1 still forms the norms (telemetry) but no program stores anything else.

The compile-time switches of :mod:`.adamw` apply here too: ``MASTER`` (fp32 or compact masters, read in
both stages, written in stage 2), ``SR`` (stage 1's bf16 moments: the stochastically rounded value is the
stored one that ``u`` is formed from; stage 2's bf16 parameters without masters), ``GNORM`` (stage 1:
partials of ``grad / grad_scale`` before clipping). int8 moments: :mod:`.lamb_int8`.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._jit import device_jit

from . import layout as L
from .bias_correction import one_minus_pow
from .dtypes import load_as, precise_div, precise_sqrt, to_compute
from .multi_tensor import (LIST_EXP_AVG, LIST_EXP_AVG_SQ, LIST_GRAD, LIST_PARAM, chunk_extent, list_ptr, master_ptr,
                           work_item)
from .params import load_param, sr_setup, store_gnorm, store_param, stored_state
from .quant import KEY_EXP_AVG, KEY_EXP_AVG_SQ
from .schedule import group_lr

__all__ = ["lamb_stage1_kernel", "lamb_reduce_kernel", "lamb_stage2_kernel", "lamb_scalars", "direction",
           "trust_ratio"]

_HPC = tl.constexpr(L.HP_COLS)
_BETA1 = tl.constexpr(L.HP_BETA1)
_BETA2 = tl.constexpr(L.HP_BETA2)
_EPS = tl.constexpr(L.HP_EPS)
_WD = tl.constexpr(L.HP_WEIGHT_DECAY)
_BIAS_CORRECTION = tl.constexpr(L.HP_BIAS_CORRECTION)
_GRAD_AVERAGING = tl.constexpr(L.HP_GRAD_AVERAGING)
_ADAPT = tl.constexpr(L.HP_ADAPT)
_TRUST_MIN = tl.constexpr(L.HP_TRUST_MIN)
_TRUST_MAX = tl.constexpr(L.HP_TRUST_MAX)
_DECOUPLED = tl.constexpr(L.HP_DECOUPLED)
_NORM_COLS = tl.constexpr(L.NORM_COLS)
_NORM_PARAM = tl.constexpr(L.NORM_PARAM)
_NORM_UPDATE = tl.constexpr(L.NORM_UPDATE)
_NORM_RATIO = tl.constexpr(L.NORM_RATIO)


@device_jit
def lamb_scalars(sched_ints, sched_floats, group_sched, hparams, clock, steps_ptr, g, i,
                  F64: tl.constexpr, PHASE_BLOCK: tl.constexpr):
    """Per-tensor scalars, float64: lr, 1 - lr wd (decoupled) or 1, wd inside u (or 0), beta1, beta3,
    beta2, 1 - beta2, bc1, sqrt(bc2), eps."""
    lr = group_lr(sched_ints, sched_floats, group_sched, hparams, clock, g, PHASE_BLOCK).to(tl.float64)
    hp = hparams + g * _HPC
    b1 = tl.load(hp + _BETA1)
    b2 = tl.load(hp + _BETA2)
    wd = tl.load(hp + _WD)
    decoupled = tl.load(hp + _DECOUPLED) != 0.0
    w_factor = tl.where(decoupled, 1.0 - lr * wd, 1.0)
    wd_in_u = tl.where(decoupled, 0.0, wd)
    beta3 = tl.where(tl.load(hp + _GRAD_AVERAGING) != 0.0, 1.0 - b1, 1.0)
    t = tl.load(steps_ptr + i) + 1.0
    corrected = tl.load(hp + _BIAS_CORRECTION) != 0.0
    bc1 = tl.where(corrected, one_minus_pow(b1, t).to(tl.float64), 1.0)
    bc2 = tl.where(corrected, one_minus_pow(b2, t).to(tl.float64), 1.0)
    return (lr, w_factor, wd_in_u, b1, beta3, b2, 1.0 - b2, bc1, tl.sqrt(bc2), tl.load(hp + _EPS))


@device_jit
def direction(m, v, p, bc1, sqrt_bc2, eps, w_factor, wd_in_u, F64: tl.constexpr):
    """``(w, u)`` from the stored moments and the param (the same code in both stages)."""
    r = precise_div(precise_div(m, bc1, F64), precise_div(precise_sqrt(v, F64), sqrt_bc2, F64) + eps, F64)
    return p * w_factor, r + wd_in_u * p


@device_jit
def _stage1_block(p_ptr, g_ptr, m_ptr, v_ptr, mst_ptr, offs, mask, write, store_limit, idx32, seed,
                  acc_w, acc_u, acc_sq, acc_abs, scale, clip, b1, beta3, b2, one_minus_b2, bc1, sqrt_bc2, eps,
                  w_factor, wd_in_u, P_DT: tl.constexpr, S_DT: tl.constexpr, F64: tl.constexpr,
                  MASTER: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_CLIP: tl.constexpr, SR: tl.constexpr,
                  GNORM: tl.constexpr, MASKED: tl.constexpr):
    g = load_as(g_ptr, offs, mask, P_DT, F64, MASKED)
    if HAS_SCALE:
        g = precise_div(g, scale, F64)
    if GNORM:
        acc_sq = acc_sq + g * g
        acc_abs = acc_abs + tl.abs(g)
    if HAS_CLIP:
        g = precise_div(g, clip, F64)
    p = load_param(p_ptr, mst_ptr, offs, mask, P_DT, MASTER, F64, MASKED)
    m = b1 * load_as(m_ptr, offs, mask, S_DT, F64, MASKED) + beta3 * g
    v = b2 * load_as(v_ptr, offs, mask, S_DT, F64, MASKED) + one_minus_b2 * g * g
    # write: a uniform scalar predicate (keeps the unmasked path's stores vectorized); in the masked tail,
    # store_limit is n_local or 0 (a scalar boolean does not combine with a block mask in the interpreter)
    store_mask = write
    if MASKED:
        store_mask = offs < store_limit
    m = stored_state(m_ptr, offs, m, store_mask, idx32, seed, S_DT, F64, SR, KEY_EXP_AVG)
    v = stored_state(v_ptr, offs, v, store_mask, idx32, seed, S_DT, F64, SR, KEY_EXP_AVG_SQ)
    w, u = direction(m, v, p, bc1, sqrt_bc2, eps, w_factor, wd_in_u, F64)
    if MASKED:
        w = tl.where(mask, w, 0.0)
        u = tl.where(mask, u, 0.0)
    return acc_w + w * w, acc_u + u * u, acc_sq, acc_abs


@triton.jit(do_not_specialize=["n_tensors"])
def lamb_stage1_kernel(ptr_table, numels_ptr, work_ptr, group_index_ptr, steps_ptr,
                       sched_ints, sched_floats, group_sched, hparams, clock,
                       found_inf_ptr, grad_scale_ptr, clip_ptr, partials_ptr, gnorm_ptr, n_tensors,
                       P_DT: tl.constexpr, S_DT: tl.constexpr, F64: tl.constexpr, MASTER: tl.constexpr,
                       HAS_SCALE: tl.constexpr, HAS_CLIP: tl.constexpr, HAS_FOUND: tl.constexpr,
                       SR: tl.constexpr, GNORM: tl.constexpr, ALIGNED: tl.constexpr, CHUNK: tl.constexpr,
                       BLOCK: tl.constexpr, PHASE_BLOCK: tl.constexpr):
    """Stage 1 of chunk ``work[pid]``: moments, and ``partials[pid] = (sum w^2, sum u^2)`` (float32); with
    ``GNORM`` also ``gnorm[pid]`` (a dummy otherwise)."""
    i, c = work_item(work_ptr)
    numel = tl.load(numels_ptr + i)
    g = tl.load(group_index_ptr + i)
    lr, w_factor, wd_in_u, b1, beta3, b2, one_minus_b2, bc1, sqrt_bc2, eps = lamb_scalars(
        sched_ints, sched_floats, group_sched, hparams, clock, steps_ptr, g, i, F64, PHASE_BLOCK)
    w_factor = to_compute(w_factor, F64)
    wd_in_u = to_compute(wd_in_u, F64)
    b1 = to_compute(b1, F64)
    beta3 = to_compute(beta3, F64)
    b2 = to_compute(b2, F64)
    one_minus_b2 = to_compute(one_minus_b2, F64)
    bc1 = to_compute(bc1, F64)
    sqrt_bc2 = to_compute(sqrt_bc2, F64)
    eps = to_compute(eps, F64)
    scale = to_compute(tl.load(grad_scale_ptr), F64)  # dummy one-element tensors unless HAS_SCALE / HAS_CLIP
    clip = to_compute(tl.load(clip_ptr), F64)
    if HAS_FOUND:
        write = tl.load(found_inf_ptr) == 0.0
    else:
        write = tl.full([], 1, tl.int1)  # found_inf_ptr is a dummy

    start, n_local = chunk_extent(numel, c, numel, CHUNK)
    store_limit = tl.where(write, n_local, 0)
    p_ptr = list_ptr(ptr_table, LIST_PARAM, n_tensors, i, P_DT, ALIGNED) + start
    g_ptr = list_ptr(ptr_table, LIST_GRAD, n_tensors, i, P_DT, ALIGNED) + start
    m_ptr = list_ptr(ptr_table, LIST_EXP_AVG, n_tensors, i, S_DT, ALIGNED) + start
    v_ptr = list_ptr(ptr_table, LIST_EXP_AVG_SQ, n_tensors, i, S_DT, ALIGNED) + start
    mst_ptr = master_ptr(ptr_table, n_tensors, i, MASTER, ALIGNED) + start
    seed, base32 = sr_setup(ptr_table, clock, n_tensors, i, start, SR)

    acc_w = to_compute(tl.zeros([BLOCK], dtype=tl.float32), F64)
    acc_u = to_compute(tl.zeros([BLOCK], dtype=tl.float32), F64)
    acc_sq = to_compute(tl.zeros([BLOCK], dtype=tl.float32), F64)
    acc_abs = to_compute(tl.zeros([BLOCK], dtype=tl.float32), F64)
    n_full = n_local // BLOCK
    for j in range(0, n_full):
        offs = j * BLOCK + tl.arange(0, BLOCK)
        acc_w, acc_u, acc_sq, acc_abs = _stage1_block(
            p_ptr, g_ptr, m_ptr, v_ptr, mst_ptr, offs, offs < n_local, write, store_limit, base32 + offs.to(tl.uint32),
            seed, acc_w, acc_u, acc_sq, acc_abs, scale, clip, b1, beta3, b2, one_minus_b2, bc1, sqrt_bc2, eps,
            w_factor, wd_in_u, P_DT, S_DT, F64, MASTER, HAS_SCALE, HAS_CLIP, SR, GNORM, False)
    offs = n_full * BLOCK + tl.arange(0, BLOCK)
    acc_w, acc_u, acc_sq, acc_abs = _stage1_block(
        p_ptr, g_ptr, m_ptr, v_ptr, mst_ptr, offs, offs < n_local, write, store_limit, base32 + offs.to(tl.uint32),
        seed, acc_w, acc_u, acc_sq, acc_abs, scale, clip, b1, beta3, b2, one_minus_b2, bc1, sqrt_bc2, eps,
        w_factor, wd_in_u, P_DT, S_DT, F64, MASTER, HAS_SCALE, HAS_CLIP, SR, GNORM, True)
    pid = tl.program_id(0).to(tl.int64)  # 2 * pid overflows int32 from 2**30 programs on
    tl.store(partials_ptr + 2 * pid, tl.sum(acc_w, axis=0).to(tl.float32))
    tl.store(partials_ptr + 2 * pid + 1, tl.sum(acc_u, axis=0).to(tl.float32))
    if GNORM:
        store_gnorm(gnorm_ptr, acc_sq, acc_abs)


@triton.jit(do_not_specialize=["n_tensors", "n_iters"])
def lamb_reduce_kernel(partials_ptr, first_work_ptr, chunks_ptr, sums_ptr, n_tensors, n_iters,
                       TB: tl.constexpr, CB: tl.constexpr):
    """``sums[i] = sum of partials[first_work[i] : first_work[i] + chunks[i]]`` (both columns), added in
    float64 in a fixed order. Grid: ``(cdiv(n_tensors, TB),)``; ``n_iters = cdiv(max chunks, CB)``."""
    tid = tl.program_id(0) * TB + tl.arange(0, TB)
    live = tid < n_tensors
    first = tl.load(first_work_ptr + tid, mask=live, other=0)
    count = tl.load(chunks_ptr + tid, mask=live, other=0)
    acc_w = tl.zeros([TB], dtype=tl.float64)
    acc_u = tl.zeros([TB], dtype=tl.float64)
    for k in range(0, n_iters):
        j = k * CB + tl.arange(0, CB)
        mask = live[:, None] & (j[None, :] < count[:, None])
        row = first[:, None].to(tl.int64) + j[None, :]
        acc_w += tl.sum(tl.load(partials_ptr + 2 * row, mask=mask, other=0.0).to(tl.float64), axis=1)
        acc_u += tl.sum(tl.load(partials_ptr + 2 * row + 1, mask=mask, other=0.0).to(tl.float64), axis=1)
    tl.store(sums_ptr + 2 * tid, acc_w.to(tl.float32), mask=live)
    tl.store(sums_ptr + 2 * tid + 1, acc_u.to(tl.float32), mask=live)


@device_jit
def _stage2_block(p_ptr, m_ptr, v_ptr, mst_ptr, offs, mask, idx32, seed, step, bc1, sqrt_bc2, eps, w_factor,
                  wd_in_u, P_DT: tl.constexpr, S_DT: tl.constexpr, F64: tl.constexpr, MASTER: tl.constexpr,
                  SR: tl.constexpr, MASKED: tl.constexpr):
    p = load_param(p_ptr, mst_ptr, offs, mask, P_DT, MASTER, F64, MASKED)
    m = load_as(m_ptr, offs, mask, S_DT, F64, MASKED)
    v = load_as(v_ptr, offs, mask, S_DT, F64, MASKED)
    w, u = direction(m, v, p, bc1, sqrt_bc2, eps, w_factor, wd_in_u, F64)
    store_param(p_ptr, mst_ptr, offs, w - step * u, mask, idx32, seed, P_DT, MASTER, SR, MASKED)


@device_jit
def trust_ratio(sums_ptr, norms_ptr, hp, i, c):
    """Tensor ``i``'s trust ratio (float64) from its summed ``(w^2, u^2)``; chunk 0 writes the telemetry row."""
    w_norm = tl.sqrt(tl.load(sums_ptr + 2 * i).to(tl.float64))
    u_norm = tl.sqrt(tl.load(sums_ptr + 2 * i + 1).to(tl.float64))
    ratio = tl.where((w_norm > 0.0) & (u_norm > 0.0), w_norm / tl.where(u_norm > 0.0, u_norm, 1.0), 1.0)
    ratio = tl.where(tl.load(hp + _ADAPT) != 0.0, ratio, 1.0)
    ratio = tl.minimum(tl.maximum(ratio, tl.load(hp + _TRUST_MIN)), tl.load(hp + _TRUST_MAX))
    first_chunk = c == 0
    row = norms_ptr + i * _NORM_COLS
    tl.store(row + _NORM_PARAM, w_norm.to(tl.float32), mask=first_chunk)
    tl.store(row + _NORM_UPDATE, u_norm.to(tl.float32), mask=first_chunk)
    tl.store(row + _NORM_RATIO, ratio.to(tl.float32), mask=first_chunk)
    return ratio


@triton.jit(do_not_specialize=["n_tensors"])
def lamb_stage2_kernel(ptr_table, numels_ptr, work_ptr, group_index_ptr, steps_ptr,
                       sched_ints, sched_floats, group_sched, hparams, clock,
                       found_inf_ptr, sums_ptr, norms_ptr, n_tensors,
                       P_DT: tl.constexpr, S_DT: tl.constexpr, F64: tl.constexpr, MASTER: tl.constexpr,
                       HAS_FOUND: tl.constexpr, SR: tl.constexpr, ALIGNED: tl.constexpr, CHUNK: tl.constexpr,
                       BLOCK: tl.constexpr, PHASE_BLOCK: tl.constexpr):
    """Stage 2 of chunk ``work[pid]``: trust ratio from ``sums[i]``, telemetry row, ``p = w - lr ratio u``."""
    i, c = work_item(work_ptr)
    numel = tl.load(numels_ptr + i)
    g = tl.load(group_index_ptr + i)
    lr, w_factor, wd_in_u, b1, beta3, b2, one_minus_b2, bc1, sqrt_bc2, eps = lamb_scalars(
        sched_ints, sched_floats, group_sched, hparams, clock, steps_ptr, g, i, F64, PHASE_BLOCK)
    ratio = trust_ratio(sums_ptr, norms_ptr, hparams + g * _HPC, i, c)

    step = to_compute(lr * ratio, F64)
    w_factor = to_compute(w_factor, F64)
    wd_in_u = to_compute(wd_in_u, F64)
    bc1 = to_compute(bc1, F64)
    sqrt_bc2 = to_compute(sqrt_bc2, F64)
    eps = to_compute(eps, F64)
    limit = numel
    if HAS_FOUND:
        limit = tl.where(tl.load(found_inf_ptr) != 0.0, 0, numel)
    start, n_local = chunk_extent(numel, c, limit, CHUNK)
    p_ptr = list_ptr(ptr_table, LIST_PARAM, n_tensors, i, P_DT, ALIGNED) + start
    m_ptr = list_ptr(ptr_table, LIST_EXP_AVG, n_tensors, i, S_DT, ALIGNED) + start
    v_ptr = list_ptr(ptr_table, LIST_EXP_AVG_SQ, n_tensors, i, S_DT, ALIGNED) + start
    mst_ptr = master_ptr(ptr_table, n_tensors, i, MASTER, ALIGNED) + start
    seed, base32 = sr_setup(ptr_table, clock, n_tensors, i, start, SR)

    n_full = n_local // BLOCK
    for j in range(0, n_full):
        offs = j * BLOCK + tl.arange(0, BLOCK)
        _stage2_block(p_ptr, m_ptr, v_ptr, mst_ptr, offs, offs < n_local, base32 + offs.to(tl.uint32), seed, step,
                      bc1, sqrt_bc2, eps, w_factor, wd_in_u, P_DT, S_DT, F64, MASTER, SR, False)
    offs = n_full * BLOCK + tl.arange(0, BLOCK)
    _stage2_block(p_ptr, m_ptr, v_ptr, mst_ptr, offs, offs < n_local, base32 + offs.to(tl.uint32), seed, step,
                  bc1, sqrt_bc2, eps, w_factor, wd_in_u, P_DT, S_DT, F64, MASTER, SR, True)
