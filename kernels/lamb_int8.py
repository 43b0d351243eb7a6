"""LAMB stages 1 and 2 for int8 moments (``docs/compressed_state.md``); the reduction between them is
:func:`.lamb.lamb_reduce_kernel`, unchanged.

The stored-moment meaning of ``docs/lamb_variants.md``: stage 1 decodes the codes, updates ``m`` and ``v``
in float32, encodes and stores each block, and forms ``u`` from the *decoded stored* values; stage 2 decodes
the stored codes again (the same function of the same bits), so the update applied is the one whose norm
was taken::

    stage 1:  m = b1 m + beta3 g;  v = b2 v + (1 - b2) g^2;  (codes, s) = encode(m), encode(sqrt_rn(v))
              m_s, v_s = decode(codes, s);  w, u = direction(m_s, v_s, p);  partials += (w^2, u^2)
    stage 2:  m_s, v_s = decode(codes, s);  w, u = direction(m_s, v_s, p);  p = w - lr ratio u

Work rows, tiles, master weights, stochastic rounding and gradient-norm partials as in
:mod:`.adamw_int8`. With ``found_inf`` nonzero stage 1 still forms the norms (telemetry) and stores nothing
else; stage 2 stores nothing.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._jit import device_jit

from . import layout as L
from .dtypes import DT_F32, DT_I8, DT_U8, load_as, precise_div, precise_sqrt, to_compute
from .lamb import direction, lamb_scalars, trust_ratio
from .multi_tensor import (LIST_EXP_AVG, LIST_EXP_AVG_SCALE, LIST_EXP_AVG_SQ, LIST_EXP_AVG_SQ_SCALE, LIST_GRAD,
                           LIST_PARAM, ROW_LAST_DIM, block_tile, list_ptr, master_ptr, run_extent, table_int, work_item)
from .params import load_param, sr_setup, store_gnorm, store_param
from .quant import decode_m, decode_r, encode_m, encode_v

__all__ = ["lamb_int8_stage1_kernel", "lamb_int8_stage2_kernel"]

_HPC = tl.constexpr(L.HP_COLS)


@device_jit
def _pointers(ptr_table, n_tensors, i, start, first, P_DT: tl.constexpr, MASTER: tl.constexpr,
              ALIGNED: tl.constexpr):
    """Tensor ``i``'s pointers at its run: param, grad, master, m codes, v codes, m scales, v scales."""
    return (list_ptr(ptr_table, LIST_PARAM, n_tensors, i, P_DT, ALIGNED) + start,
            list_ptr(ptr_table, LIST_GRAD, n_tensors, i, P_DT, ALIGNED) + start,
            master_ptr(ptr_table, n_tensors, i, MASTER, ALIGNED) + start,
            list_ptr(ptr_table, LIST_EXP_AVG, n_tensors, i, DT_I8, ALIGNED) + start,
            list_ptr(ptr_table, LIST_EXP_AVG_SQ, n_tensors, i, DT_U8, ALIGNED) + start,
            list_ptr(ptr_table, LIST_EXP_AVG_SCALE, n_tensors, i, DT_F32, False) + first,
            list_ptr(ptr_table, LIST_EXP_AVG_SQ_SCALE, n_tensors, i, DT_F32, False) + first)


@triton.jit(do_not_specialize=["n_tensors"])
def lamb_int8_stage1_kernel(ptr_table, numels_ptr, work_ptr, group_index_ptr, steps_ptr,
                            sched_ints, sched_floats, group_sched, hparams, clock,
                            found_inf_ptr, grad_scale_ptr, clip_ptr, partials_ptr, gnorm_ptr, n_tensors,
                            P_DT: tl.constexpr, MASTER: tl.constexpr, HAS_SCALE: tl.constexpr,
                            HAS_CLIP: tl.constexpr, HAS_FOUND: tl.constexpr, SR: tl.constexpr, GNORM: tl.constexpr,
                            ALIGNED: tl.constexpr, FULL: tl.constexpr, QB: tl.constexpr, RUN: tl.constexpr,
                            TR: tl.constexpr, PHASE_BLOCK: tl.constexpr):
    """Stage 1 of run ``work[pid]``: moments encoded and stored, ``partials[pid] = (sum w^2, sum u^2)``."""
    i, run = work_item(work_ptr)
    numel = tl.load(numels_ptr + i)
    last_dim = table_int(ptr_table, ROW_LAST_DIM, n_tensors, i)
    g = tl.load(group_index_ptr + i)
    lr, w_factor, wd_in_u, b1, beta3, b2, one_minus_b2, bc1, sqrt_bc2, eps = lamb_scalars(
        sched_ints, sched_floats, group_sched, hparams, clock, steps_ptr, g, i, False, PHASE_BLOCK)
    w_factor = w_factor.to(tl.float32)
    wd_in_u = wd_in_u.to(tl.float32)
    b1 = b1.to(tl.float32)
    beta3 = beta3.to(tl.float32)
    b2 = b2.to(tl.float32)
    one_minus_b2 = one_minus_b2.to(tl.float32)
    bc1 = bc1.to(tl.float32)
    sqrt_bc2 = sqrt_bc2.to(tl.float32)
    eps = eps.to(tl.float32)
    scale = tl.load(grad_scale_ptr).to(tl.float32)  # dummy one-element tensors unless HAS_SCALE / HAS_CLIP
    clip = tl.load(clip_ptr).to(tl.float32)
    if HAS_FOUND:
        write = tl.load(found_inf_ptr) == 0.0
    else:
        write = numel >= 0  # found_inf_ptr is a dummy

    first, n_here, start, nb = run_extent(numel, last_dim, run, numel >= 0, RUN, QB, FULL, ALIGNED)
    n_store = tl.where(write, n_here, 0)
    p_ptr, g_ptr, mst_ptr, mc_ptr, vc_ptr, ms_ptr, vs_ptr = _pointers(ptr_table, n_tensors, i, start, first, P_DT,
                                                                      MASTER, ALIGNED)
    acc_w = tl.zeros([TR], dtype=tl.float32)
    acc_u = tl.zeros([TR], dtype=tl.float32)
    acc_sq = tl.zeros([TR], dtype=tl.float32)
    acc_abs = tl.zeros([TR], dtype=tl.float32)
    for t in range(0, tl.cdiv(n_here, TR)):
        offs, mask, r, ok = block_tile(first, t, n_here, start, last_dim, nb, TR, QB, FULL, ALIGNED)
        ok_w = r < n_store
        mask_w = mask & ok_w[:, None]
        gr = load_as(g_ptr, offs, mask, P_DT, False, True)
        if HAS_SCALE:
            gr = precise_div(gr, scale, False)
        if GNORM:
            acc_sq += tl.sum(gr * gr, axis=1)
            acc_abs += tl.sum(tl.abs(gr), axis=1)
        if HAS_CLIP:
            gr = precise_div(gr, clip, False)
        p = load_param(p_ptr, mst_ptr, offs, mask, P_DT, MASTER, False, True)
        m = decode_m(tl.load(mc_ptr + offs, mask=mask, other=0), tl.load(ms_ptr + r, mask=ok, other=0.0))
        rv = decode_r(tl.load(vc_ptr + offs, mask=mask, other=0), tl.load(vs_ptr + r, mask=ok, other=0.0))
        m = b1 * m + beta3 * gr
        v = b2 * (rv * rv) + one_minus_b2 * gr * gr

        code_m, s_m = encode_m(m, mask)
        code_v, s_v = encode_v(precise_sqrt(v, False), mask)
        tl.store(mc_ptr + offs, code_m.to(tl.int8), mask=mask_w)
        tl.store(vc_ptr + offs, code_v.to(tl.uint8), mask=mask_w)
        tl.store(ms_ptr + r, s_m, mask=ok_w)
        tl.store(vs_ptr + r, s_v, mask=ok_w)
        m = decode_m(code_m, s_m)
        rv = decode_r(code_v, s_v)
        w, u = direction(m, rv * rv, p, bc1, sqrt_bc2, eps, w_factor, wd_in_u, False)
        w = tl.where(mask, w, 0.0)
        u = tl.where(mask, u, 0.0)
        acc_w += tl.sum(w * w, axis=1)
        acc_u += tl.sum(u * u, axis=1)
    pid = tl.program_id(0).to(tl.int64)
    tl.store(partials_ptr + 2 * pid, tl.sum(acc_w, axis=0))
    tl.store(partials_ptr + 2 * pid + 1, tl.sum(acc_u, axis=0))
    if GNORM:
        store_gnorm(gnorm_ptr, acc_sq, acc_abs)


@triton.jit(do_not_specialize=["n_tensors"])
def lamb_int8_stage2_kernel(ptr_table, numels_ptr, work_ptr, group_index_ptr, steps_ptr,
                            sched_ints, sched_floats, group_sched, hparams, clock,
                            found_inf_ptr, sums_ptr, norms_ptr, n_tensors,
                            P_DT: tl.constexpr, MASTER: tl.constexpr, HAS_FOUND: tl.constexpr, SR: tl.constexpr,
                            ALIGNED: tl.constexpr, FULL: tl.constexpr, QB: tl.constexpr, RUN: tl.constexpr,
                            TR: tl.constexpr, PHASE_BLOCK: tl.constexpr):
    """Stage 2 of run ``work[pid]``: trust ratio from ``sums[i]``, telemetry row, ``p = w - lr ratio u``."""
    i, run = work_item(work_ptr)
    numel = tl.load(numels_ptr + i)
    last_dim = table_int(ptr_table, ROW_LAST_DIM, n_tensors, i)
    g = tl.load(group_index_ptr + i)
    lr, w_factor, wd_in_u, b1, beta3, b2, one_minus_b2, bc1, sqrt_bc2, eps = lamb_scalars(
        sched_ints, sched_floats, group_sched, hparams, clock, steps_ptr, g, i, False, PHASE_BLOCK)
    ratio = trust_ratio(sums_ptr, norms_ptr, hparams + g * _HPC, i, run)
    step = to_compute(lr * ratio, False)
    w_factor = w_factor.to(tl.float32)
    wd_in_u = wd_in_u.to(tl.float32)
    bc1 = bc1.to(tl.float32)
    sqrt_bc2 = sqrt_bc2.to(tl.float32)
    eps = eps.to(tl.float32)
    live = numel >= 0
    if HAS_FOUND:
        live = tl.load(found_inf_ptr) == 0.0

    first, n_here, start, nb = run_extent(numel, last_dim, run, live, RUN, QB, FULL, ALIGNED)
    p_ptr, g_ptr, mst_ptr, mc_ptr, vc_ptr, ms_ptr, vs_ptr = _pointers(ptr_table, n_tensors, i, start, first, P_DT,
                                                                      MASTER, ALIGNED)
    seed, base32 = sr_setup(ptr_table, clock, n_tensors, i, start, SR)
    for t in range(0, tl.cdiv(n_here, TR)):
        offs, mask, r, ok = block_tile(first, t, n_here, start, last_dim, nb, TR, QB, FULL, ALIGNED)
        p = load_param(p_ptr, mst_ptr, offs, mask, P_DT, MASTER, False, True)
        m = decode_m(tl.load(mc_ptr + offs, mask=mask, other=0), tl.load(ms_ptr + r, mask=ok, other=0.0))
        rv = decode_r(tl.load(vc_ptr + offs, mask=mask, other=0), tl.load(vs_ptr + r, mask=ok, other=0.0))
        w, u = direction(m, rv * rv, p, bc1, sqrt_bc2, eps, w_factor, wd_in_u, False)
        store_param(p_ptr, mst_ptr, offs, w - step * u, mask, base32 + offs.to(tl.uint32), seed, P_DT, MASTER, SR,
                    True)
