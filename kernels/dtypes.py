"""Element types the kernels read and write, and exact conversions between them.

A tensor's dtype reaches a kernel as a small integer code (a ``tl.constexpr``; the codes are defined once,
in :mod:`lrsched_fused.kernels.layout`, for every backend), so one kernel source serves every (parameter
dtype, state dtype) pair and each pair compiles once.

bfloat16 is handled as raw 16-bit patterns: a load widens the bits to float32 (exact), a store rounds
float32 to nearest even *by bits*::

    u = bits(x);  bf16 = (u + 0x7FFF + ((u >> 16) & 1)) >> 16       (NaN -> 0x7FC0)

which is what ``torch``'s cast does, on a GPU and in the Triton interpreter alike (the interpreter's own
float32 -> bfloat16 cast truncates). float16 uses the native cast (round to nearest even on the GPU,
numpy's correctly rounded cast in the interpreter). float64 values are narrowed through float32, as
``torch`` does for ``double -> bfloat16/half``.

The integer codes of compressed state (``DT_I8`` int8 first-moment codes and master corrections,
``DT_U8`` uint8 second-moment codes, ``DT_I16`` int16 corrections; ``docs/compressed_state.md``) load as
their exact value in the compute type and store from integer tensors (the codecs in :mod:`.quant` produce
in-range int32 codes, so the narrowing is exact).
"""

from __future__ import annotations

import triton.language as tl

from ._jit import device_jit
from . import layout as L

__all__ = ["DT_F32", "DT_BF16", "DT_F16", "DT_F64", "DT_I8", "DT_U8", "DT_I16", "dtype_code", "typed_ptr", "load_as",
           "store_as", "round_to_state", "to_compute", "precise_sqrt", "precise_div", "bf16_bits", "bf16_value"]

DT_F32 = tl.constexpr(L.DT_F32)
DT_BF16 = tl.constexpr(L.DT_BF16)
DT_F16 = tl.constexpr(L.DT_F16)
DT_F64 = tl.constexpr(L.DT_F64)
DT_I8 = tl.constexpr(L.DT_I8)
DT_U8 = tl.constexpr(L.DT_U8)
DT_I16 = tl.constexpr(L.DT_I16)

_BF16_HALF = tl.constexpr(0x7FFF)
_BF16_NAN = tl.constexpr(0x7FC0)


#: a torch dtype -> its ``DT_*`` code (defined with the codes, in ``layout``)
dtype_code = L.dtype_code


@device_jit
def typed_ptr(addr, DT: tl.constexpr):
    """The int64 address ``addr`` as a pointer to elements of dtype code ``DT`` (bf16: 16-bit patterns)."""
    if DT == DT_F32:
        return addr.to(tl.pointer_type(tl.float32))
    elif DT == DT_BF16:
        return addr.to(tl.pointer_type(tl.uint16))
    elif DT == DT_F16:
        return addr.to(tl.pointer_type(tl.float16))
    elif DT == DT_I8:
        return addr.to(tl.pointer_type(tl.int8))
    elif DT == DT_U8:
        return addr.to(tl.pointer_type(tl.uint8))
    elif DT == DT_I16:
        return addr.to(tl.pointer_type(tl.int16))
    else:
        return addr.to(tl.pointer_type(tl.float64))


@device_jit
def to_compute(x, F64: tl.constexpr):
    """``x`` in the compute type: float64 if ``F64`` else float32."""
    if F64:
        return x.to(tl.float64)
    else:
        return x.to(tl.float32)


@device_jit
def bf16_bits(x):
    """float32 -> bfloat16 bit pattern (uint32 holding 16 bits), rounded to nearest even."""
    u = x.to(tl.uint32, bitcast=True)
    r = (u + _BF16_HALF + ((u >> 16) & 1)) >> 16
    return tl.where(x != x, _BF16_NAN, r)


@device_jit
def bf16_value(bits):
    """bfloat16 bit pattern (any unsigned int type) -> float32, exact."""
    return (bits.to(tl.uint32) << 16).to(tl.float32, bitcast=True)


@device_jit
def load_as(ptr, offs, mask, DT: tl.constexpr, F64: tl.constexpr, MASKED: tl.constexpr):
    """Load ``ptr[offs]`` (a pointer from :func:`typed_ptr` with the same ``DT``) in the compute type."""
    if MASKED:
        raw = tl.load(ptr + offs, mask=mask, other=0)
    else:
        raw = tl.load(ptr + offs)
    if DT == DT_BF16:
        x = bf16_value(raw)
    else:
        x = raw
    return to_compute(x, F64)


@device_jit
def _narrow(x, DT: tl.constexpr):
    """A compute-type value as the stored representation of dtype code ``DT`` (integer codes: from an
    integer tensor holding in-range values)."""
    if DT == DT_I8:
        return x.to(tl.int8)
    elif DT == DT_U8:
        return x.to(tl.uint8)
    elif DT == DT_I16:
        return x.to(tl.int16)
    elif DT == DT_F64:
        return x.to(tl.float64)
    elif DT == DT_F32:
        return x.to(tl.float32)
    elif DT == DT_F16:
        return x.to(tl.float32).to(tl.float16)
    else:
        return bf16_bits(x.to(tl.float32)).to(tl.uint16)


@device_jit
def store_as(ptr, offs, x, mask, DT: tl.constexpr, MASKED: tl.constexpr):
    """Store compute-type ``x`` at ``ptr[offs]`` as dtype code ``DT``, rounded to nearest even."""
    y = _narrow(x, DT)
    if MASKED:
        tl.store(ptr + offs, y, mask=mask)
    else:
        tl.store(ptr + offs, y)


@device_jit
def round_to_state(x, DT: tl.constexpr, F64: tl.constexpr):
    """``x`` rounded to dtype code ``DT`` and widened back to the compute type (what a store then a
    load would give)."""
    if DT == DT_BF16:
        return to_compute(bf16_value(bf16_bits(x.to(tl.float32))), F64)
    elif DT == DT_F16:
        return to_compute(x.to(tl.float32).to(tl.float16), F64)
    elif DT == DT_F32:
        return to_compute(x.to(tl.float32), F64)
    else:
        return x


@device_jit
def precise_sqrt(x, F64: tl.constexpr):
    """Correctly rounded square root (IEEE ``sqrt``), as torch computes it."""
    if F64:
        return tl.sqrt(x)  # f64 sqrt lowers to sqrt.rn.f64
    else:
        return tl.sqrt_rn(x)


@device_jit
def precise_div(x, y, F64: tl.constexpr):
    """Correctly rounded division, as torch computes it."""
    if F64:
        return x / y  # f64 division lowers to div.rn.f64
    else:
        return tl.div_rn(x, y)
