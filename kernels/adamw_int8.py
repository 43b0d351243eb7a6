"""Multi-tensor AdamW with int8 moments (``docs/compressed_state.md``), one launch.

The math of :mod:`.adamw` in float32, in torch's meaning: decode the stored codes, update ``m`` and ``v``,
update the parameter from the *fresh* ``m`` and ``v``, then encode and store each block::

    m = code_m * (s_m / 127);  v = (code_v * (s_v / 255))^2               (decode, :mod:`.quant`)
    p = p (1 - lr wd);  m = m + (g - m)(1 - b1);  v = v b2 + (1 - b2) g^2
    r = sqrt_rn(v);  p = p - (lr / bc1) m / (r / sqrt(bc2) + eps)
    (code_m, s_m) = encode_m(m);  (code_v, s_v) = encode_v(r)               (per block of QB elements)

Work rows are ``(tensor, run of RUN whole blocks)`` (:mod:`.multi_tensor`); a program walks its run in
``[TR, QB]`` tiles, one block per tile row, so each block's max is a row reduction. The parameter goes
through :mod:`.params` (fp32 / compact masters, stochastic rounding), the gradient-norm partials as in
:mod:`.adamw`. Parameters fp32, bf16 or fp16; with ``found_inf`` nonzero nothing is stored.

Bytes per parameter (block scales add 4 x 4 / QB, 0.06 at QB = 256): fp32 params read p, g and the
codes (10) and write p and the codes (6): 16, against 28 with fp32 moments; bf16 params 10; bf16 with fp32
masters 16, with int8 / int16 corrections 12 / 14 (the table in ``lrsched_fused/backends/triton.py``).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .adamw import adamw_scalars
from .dtypes import DT_F32, DT_I8, DT_U8, load_as, precise_div, precise_sqrt
from .multi_tensor import (LIST_EXP_AVG, LIST_EXP_AVG_SCALE, LIST_EXP_AVG_SQ, LIST_EXP_AVG_SQ_SCALE, LIST_GRAD,
                           LIST_PARAM, ROW_LAST_DIM, block_tile, list_ptr, master_ptr, run_extent, table_int, work_item)
from .params import load_param, sr_setup, store_gnorm, store_param
from .quant import decode_m, decode_r, encode_m, encode_v

__all__ = ["adamw_int8_kernel"]


@triton.jit(do_not_specialize=["n_tensors"])
def adamw_int8_kernel(ptr_table, numels_ptr, work_ptr, group_index_ptr, steps_ptr,
                      sched_ints, sched_floats, group_sched, hparams, clock,
                      found_inf_ptr, grad_scale_ptr, gnorm_ptr, n_tensors,
                      P_DT: tl.constexpr, MASTER: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_FOUND: tl.constexpr,
                      SR: tl.constexpr, GNORM: tl.constexpr, ALIGNED: tl.constexpr, FULL: tl.constexpr,
                      QB: tl.constexpr, RUN: tl.constexpr, TR: tl.constexpr, PHASE_BLOCK: tl.constexpr):
    """One AdamW step of run ``work[pid]`` of int8-moment tensors. Grid: ``(n_work,)``."""
    i, run = work_item(work_ptr)
    numel = tl.load(numels_ptr + i)
    last_dim = table_int(ptr_table, ROW_LAST_DIM, n_tensors, i)
    g = tl.load(group_index_ptr + i)
    decay, step_size, sqrt_bc2, one_minus_b1, b2, one_minus_b2, eps, sign, scale = adamw_scalars(
        sched_ints, sched_floats, group_sched, hparams, clock, steps_ptr, grad_scale_ptr, g, i, False, PHASE_BLOCK)

    live = numel >= 0
    if HAS_FOUND:
        live = tl.load(found_inf_ptr) == 0.0
    first, n_here, start, nb = run_extent(numel, last_dim, run, live, RUN, QB, FULL, ALIGNED)
    p_ptr = list_ptr(ptr_table, LIST_PARAM, n_tensors, i, P_DT, ALIGNED) + start
    g_ptr = list_ptr(ptr_table, LIST_GRAD, n_tensors, i, P_DT, ALIGNED) + start
    mst_ptr = master_ptr(ptr_table, n_tensors, i, MASTER, ALIGNED) + start
    mc_ptr = list_ptr(ptr_table, LIST_EXP_AVG, n_tensors, i, DT_I8, ALIGNED) + start
    vc_ptr = list_ptr(ptr_table, LIST_EXP_AVG_SQ, n_tensors, i, DT_U8, ALIGNED) + start
    ms_ptr = list_ptr(ptr_table, LIST_EXP_AVG_SCALE, n_tensors, i, DT_F32, False) + first
    vs_ptr = list_ptr(ptr_table, LIST_EXP_AVG_SQ_SCALE, n_tensors, i, DT_F32, False) + first
    seed, base32 = sr_setup(ptr_table, clock, n_tensors, i, start, SR)
    acc_sq = tl.zeros([TR], dtype=tl.float32)
    acc_abs = tl.zeros([TR], dtype=tl.float32)

    for t in range(0, tl.cdiv(n_here, TR)):
        offs, mask, r, ok = block_tile(first, t, n_here, start, last_dim, nb, TR, QB, FULL, ALIGNED)
        gr = load_as(g_ptr, offs, mask, P_DT, False, True)
        if HAS_SCALE:
            gr = precise_div(gr, scale, False)
        if GNORM:
            acc_sq += tl.sum(gr * gr, axis=1)
            acc_abs += tl.sum(tl.abs(gr), axis=1)
        gr = gr * sign
        p = load_param(p_ptr, mst_ptr, offs, mask, P_DT, MASTER, False, True)
        m = decode_m(tl.load(mc_ptr + offs, mask=mask, other=0), tl.load(ms_ptr + r, mask=ok, other=0.0))
        rv = decode_r(tl.load(vc_ptr + offs, mask=mask, other=0), tl.load(vs_ptr + r, mask=ok, other=0.0))
        v = rv * rv

        p = p * decay
        m = m + (gr - m) * one_minus_b1
        v = v * b2 + one_minus_b2 * gr * gr
        rv = precise_sqrt(v, False)
        p = p - precise_div(step_size * m, precise_div(rv, sqrt_bc2, False) + eps, False)

        code_m, s_m = encode_m(m, mask)
        code_v, s_v = encode_v(rv, mask)
        tl.store(mc_ptr + offs, code_m.to(tl.int8), mask=mask)
        tl.store(vc_ptr + offs, code_v.to(tl.uint8), mask=mask)
        tl.store(ms_ptr + r, s_m, mask=ok)
        tl.store(vs_ptr + r, s_v, mask=ok)
        store_param(p_ptr, mst_ptr, offs, p, mask, base32 + offs.to(tl.uint32), seed, P_DT, MASTER, SR, True)
    if GNORM:
        store_gnorm(gnorm_ptr, acc_sq, acc_abs)
