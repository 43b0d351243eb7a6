"""Loads and stores every update kernel shares: the parameter in each master-weight mode and the moments,
with stochastic rounding where it applies (``docs/compressed_state.md``).

``MASTER`` (a ``tl.constexpr``, ``layout.MASTER_*``; ``False`` / ``True`` mean none / fp32):

=================  ===========================================================================================
``MASTER_NONE``    the parameter itself; bf16 stored with stochastic rounding when ``SR``
``MASTER_FP32``    the fp32 master is read and written, the parameter written rounded to nearest even
``MASTER_CORR8``   master = parameter + int8 correction (``quant.compact_decode``), both written
``MASTER_CORR16``  the same with an int16 correction
=================  ===========================================================================================

With every switch off the code is exactly the plain load / store (the switches are compile-time).
``idx32`` is the low 32 bits of each element's global index, ``seed`` the tensor's part of the hash
(``quant.sr_seed``); both are unused unless ``SR``.
"""

from __future__ import annotations

import triton.language as tl

from ._jit import device_jit

from . import layout as L
from .dtypes import DT_BF16, DT_F32, bf16_value, load_as, round_to_state, store_as
from .multi_tensor import ROW_ELEM_OFFSET, ROW_SALT, table_int
from .quant import KEY_PARAM, bf16_sr_bits, compact_decode, compact_encode, sr_bits, sr_seed

__all__ = ["load_param", "store_param", "store_state", "stored_state", "sr_setup", "store_gnorm"]

_FP32 = tl.constexpr(L.MASTER_FP32)
_CORR8 = tl.constexpr(L.MASTER_CORR8)
_CORR16 = tl.constexpr(L.MASTER_CORR16)
_K8_BF16 = tl.constexpr(L.MASTER_SHIFT8_BF16)
_K8_F16 = tl.constexpr(L.MASTER_SHIFT8_F16)
_STEPS = tl.constexpr(L.CLOCK_STEPS)
_GN_COLS = tl.constexpr(L.GN_COLS)
_GN_SUMSQ = tl.constexpr(L.GN_SUMSQ)
_GN_SUMABS = tl.constexpr(L.GN_SUMABS)


@device_jit
def _put(ptr, offs, x, mask, MASKED: tl.constexpr):
    if MASKED:
        tl.store(ptr + offs, x, mask=mask)
    else:
        tl.store(ptr + offs, x)


@device_jit
def load_param(p_ptr, m_ptr, offs, mask, P_DT: tl.constexpr, MASTER: tl.constexpr, F64: tl.constexpr,
               MASKED: tl.constexpr):
    """The master weight (or the parameter) in the compute type."""
    if MASTER == _FP32:
        return load_as(m_ptr, offs, mask, DT_F32, F64, MASKED)
    elif MASTER >= _CORR8:
        p = load_as(p_ptr, offs, mask, P_DT, False, MASKED)
        if MASKED:
            c = tl.load(m_ptr + offs, mask=mask, other=0)
        else:
            c = tl.load(m_ptr + offs)
        if MASTER == _CORR16:
            return compact_decode(p, c, 0)
        elif P_DT == DT_BF16:
            return compact_decode(p, c, _K8_BF16)
        else:
            return compact_decode(p, c, _K8_F16)
    else:
        return load_as(p_ptr, offs, mask, P_DT, F64, MASKED)


@device_jit
def store_param(p_ptr, m_ptr, offs, p, mask, idx32, seed, P_DT: tl.constexpr, MASTER: tl.constexpr,
                SR: tl.constexpr, MASKED: tl.constexpr):
    """Store the updated master weight ``p`` (compute type): the master or correction and the parameter."""
    if MASTER == _FP32:
        store_as(m_ptr, offs, p, mask, DT_F32, MASKED)
        store_as(p_ptr, offs, p, mask, P_DT, MASKED)
    elif MASTER >= _CORR8:
        if MASTER == _CORR16:
            q, c = compact_encode(p, P_DT, MASTER, 0)
            _put(m_ptr, offs, c.to(tl.int16), mask, MASKED)
        elif P_DT == DT_BF16:
            q, c = compact_encode(p, P_DT, MASTER, _K8_BF16)
            _put(m_ptr, offs, c.to(tl.int8), mask, MASKED)
        else:
            q, c = compact_encode(p, P_DT, MASTER, _K8_F16)
            _put(m_ptr, offs, c.to(tl.int8), mask, MASKED)
        if P_DT == DT_BF16:
            _put(p_ptr, offs, q.to(tl.uint16), mask, MASKED)
        else:
            _put(p_ptr, offs, q, mask, MASKED)
    elif SR and P_DT == DT_BF16:
        _put(p_ptr, offs, bf16_sr_bits(p.to(tl.float32), sr_bits(idx32, seed, KEY_PARAM)).to(tl.uint16), mask,
             MASKED)
    else:
        store_as(p_ptr, offs, p, mask, P_DT, MASKED)


@device_jit
def store_state(ptr, offs, x, mask, idx32, seed, S_DT: tl.constexpr, SR: tl.constexpr, KEY: tl.constexpr,
                MASKED: tl.constexpr):
    """Store a moment (compute type) in state dtype ``S_DT``: stochastically rounded (stream ``KEY``) when
    ``SR`` and the state is bf16, else to nearest even."""
    if SR and S_DT == DT_BF16:
        _put(ptr, offs, bf16_sr_bits(x.to(tl.float32), sr_bits(idx32, seed, KEY)).to(tl.uint16), mask, MASKED)
    else:
        store_as(ptr, offs, x, mask, S_DT, MASKED)


@device_jit
def stored_state(ptr, offs, x, mask, idx32, seed, S_DT: tl.constexpr, F64: tl.constexpr, SR: tl.constexpr,
                 KEY: tl.constexpr):
    """:func:`store_state` under ``mask`` (always masked), returning the value stored, widened back to the
    compute type (LAMB forms its update from the moments as stored)."""
    if SR and S_DT == DT_BF16:
        bits = bf16_sr_bits(x.to(tl.float32), sr_bits(idx32, seed, KEY))
        tl.store(ptr + offs, bits.to(tl.uint16), mask=mask)
        y = bf16_value(bits)
        if F64:
            return y.to(tl.float64)
        else:
            return y
    else:
        y = round_to_state(x, S_DT, F64)
        store_as(ptr, offs, y, mask, S_DT, True)
        return y


@device_jit
def sr_setup(ptr_table, clock, n_tensors, i, start, SR: tl.constexpr):
    """``(seed, base32)``: the stochastic-rounding hash's per-tensor part and the low 32 bits of the global
    index of element ``start`` (both 0, unused, unless ``SR``)."""
    if SR:
        return (sr_seed(tl.load(clock + _STEPS), table_int(ptr_table, ROW_SALT, n_tensors, i)),
                (start + table_int(ptr_table, ROW_ELEM_OFFSET, n_tensors, i)).to(tl.uint32))
    else:
        return 0, 0


@device_jit
def store_gnorm(gnorm_ptr, acc_sq, acc_abs):
    """This program's row of the gradient-norm partials: ``(sum g^2, sum |g|)`` as float32."""
    row = gnorm_ptr + tl.program_id(0).to(tl.int64) * _GN_COLS
    tl.store(row + _GN_SUMSQ, tl.sum(acc_sq).to(tl.float32))
    tl.store(row + _GN_SUMABS, tl.sum(acc_abs).to(tl.float32))
