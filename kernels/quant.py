"""Compressed optimizer state as device functions: the int8 / uint8 block codec, stochastic rounding to
bfloat16 and compact master weights, exactly as ``docs/compressed_state.md`` specifies them (the float64
emulation in ``lrsched_fused/reference/quant.py`` is the test oracle).

Codec (float32; one block is one row of a ``[blocks, QB]`` tile, ``mask`` marks its real elements)::

    encode m:  s = max |m|;  code = rne(m * (127 / s)) in [-127, 127]   (0 where s == 0)
    encode v:  r = sqrt_rn(v);  s = max r;  code = 0 where r == 0, else max(1, rne(r * (255 / s)))
    decode:    m = code * (s / 127);  r = code * (s / 255), v = r * r

``127 / s`` and ``s / 127`` are one correctly rounded division per block (``div_rn``). A NaN element
makes its block's scale ``inf`` (the block then decodes to NaN, as the emulation's NaN scale does).

``rne`` (round half to even) of a float32 product: on a GPU ``rint`` (``cvt.rni``), one instruction,
applied to the rounded product (a conversion, not an add, so fp contraction cannot fold the product into
it); under the interpreter, where libdevice does not run, the same function computed on the bit pattern.

Stochastic rounding: ``bf16 = (bits(x) + r) >> 16`` with ``r`` the low 16 bits of ``lowbias32(index *
K_INDEX ^ clock * K_CLOCK ^ salt * K_SALT ^ stream * K_STREAM)`` in uint32 arithmetic (``layout.SR_*``).

Compact master weights (bf16 / fp16 parameter ``p`` with an int8 / int16 correction ``c``, ``k`` =
``layout.MASTER_SHIFT8_*`` or 0)::

    master M = from_bits(bits(float32(p)) + c * 2^k)
    encode:  p = rne16(M);  d = bits(M) - bits(float32(p));  c = clamp(rne(d / 2^k)) (8-bit)
             16-bit: c = d, and for bf16 the tie d = +2^15 becomes p + 1 ulp, d = -2^15;  M not finite: c = 0
"""

from __future__ import annotations

import triton.language as tl
from triton.language.extra import libdevice

from ._jit import device_jit, interpreting

from . import layout as L
from .dtypes import DT_BF16, bf16_bits, precise_div

__all__ = ["rne_int", "encode_m", "encode_v", "decode_m", "decode_r", "sr_seed", "sr_bits", "bf16_sr_bits",
           "compact_decode", "compact_encode", "KEY_PARAM", "KEY_EXP_AVG", "KEY_EXP_AVG_SQ"]

_QM = tl.constexpr(float(L.Q_M_LEVELS))
_QV = tl.constexpr(float(L.Q_V_LEVELS))
_QM_I = tl.constexpr(L.Q_M_LEVELS)
_QV_I = tl.constexpr(L.Q_V_LEVELS)
_INF = tl.constexpr(float("inf"))
_BF16_NAN = tl.constexpr(0x7FC0)

_MASK32 = 0xFFFFFFFF
_K_INDEX = tl.constexpr(L.SR_K_INDEX)
_K_CLOCK = tl.constexpr(L.SR_K_CLOCK)
_K_SALT = tl.constexpr(L.SR_K_SALT)
_M1 = tl.constexpr(L.SR_HASH_M1)
_M2 = tl.constexpr(L.SR_HASH_M2)
#: ``stream * SR_K_STREAM`` (mod 2^32) of each stream: the per-stream key of the hash input
KEY_PARAM = tl.constexpr((L.SR_STREAM_PARAM * L.SR_K_STREAM) & _MASK32)
KEY_EXP_AVG = tl.constexpr((L.SR_STREAM_EXP_AVG * L.SR_K_STREAM) & _MASK32)
KEY_EXP_AVG_SQ = tl.constexpr((L.SR_STREAM_EXP_AVG_SQ * L.SR_K_STREAM) & _MASK32)

_MASTER_CORR16 = tl.constexpr(L.MASTER_CORR16)
_EXP_MASK = tl.constexpr(0x7F800000)


# --- round half to even -------------------------------------------------------------------------------------
@device_jit
def _rne_bits(y):
    """int32 nearest integer to float32 ``y`` (ties to even), from its bit pattern: exact for |y| < 2^23,
    0 for NaN, saturating (about 2^22 in magnitude) for larger or infinite values."""
    u = y.to(tl.uint32, bitcast=True)
    e = ((u >> 23) & 0xFF).to(tl.int32)
    mant = ((u & 0x7FFFFF) | 0x800000).to(tl.int32)
    frac_bits = 150 - e  # bits of the significand below the binary point
    sh = tl.minimum(tl.maximum(frac_bits, 1), 31)
    q = mant >> sh
    rem = mant - (q << sh)
    half = 1 << (sh - 1)
    q = q + ((rem > half) | ((rem == half) & ((q & 1) != 0))).to(tl.int32)
    q = tl.where(frac_bits > 24, 0, q)  # |y| < 0.5 (and zeros, subnormals)
    q = tl.where(y != y, 0, q)
    return tl.where((u >> 31) != 0, -q, q)


@device_jit
def _rne_rint(y):
    """int32 nearest integer to float32 ``y`` (ties to even): ``cvt.rni`` then an exact conversion (NaN: 0)."""
    return libdevice.rint(y).to(tl.int32)


#: the interpreter cannot run libdevice: there the bit-pattern form, on a GPU one ``cvt.rni``
rne_int = _rne_bits if interpreting() else _rne_rint


# --- block codec ----------------------------------------------------------------------------------------------
@device_jit
def _block_max(a, mask):
    """Per row of a ``[blocks, QB]`` tile: the largest of ``a >= 0`` over the real elements (NaN counts as
    inf, so that a NaN poisons its block on a GPU and in the interpreter alike)."""
    a = tl.where(a == a, a, _INF)
    return tl.max(tl.where(mask, a, 0.0), axis=1)


@device_jit
def encode_m(m, mask):
    """``(codes, scales)`` of a tile of fresh first moments: int32 codes in [-127, 127], float32 ``[blocks]``."""
    s = _block_max(tl.abs(m), mask)
    inv = tl.where(s > 0.0, precise_div(tl.zeros_like(s) + _QM, tl.where(s > 0.0, s, 1.0), False), 0.0)
    y = m * inv[:, None]
    q = tl.minimum(tl.maximum(rne_int(y), -_QM_I), _QM_I)
    return tl.where(m == 0.0, 0, q), s  # a block of moments below ~1e-37 overflows 127 / s: its zeros stay 0


@device_jit
def encode_v(r, mask):
    """``(codes, scales)`` of a tile of ``r = sqrt_rn(v)``: int32 codes in [0, 255] (>= 1 where r > 0)."""
    s = _block_max(r, mask)
    inv = tl.where(s > 0.0, precise_div(tl.zeros_like(s) + _QV, tl.where(s > 0.0, s, 1.0), False), 0.0)
    q = tl.minimum(tl.maximum(rne_int(r * inv[:, None]), 0), _QV_I)
    return tl.where(r > 0.0, tl.maximum(q, 1), 0), s


@device_jit
def decode_m(codes, scales):
    """float32 first moments of a tile: ``code * (s / 127)``."""
    return codes.to(tl.float32) * precise_div(scales, tl.zeros_like(scales) + _QM, False)[:, None]


@device_jit
def decode_r(codes, scales):
    """float32 ``sqrt(v)`` of a tile: ``code * (s / 255)`` (the second moment is its square)."""
    return codes.to(tl.float32) * precise_div(scales, tl.zeros_like(scales) + _QV, False)[:, None]


# --- stochastic rounding --------------------------------------------------------------------------------------
@device_jit
def sr_seed(clock_steps, salt):
    """uint32 ``clock * K_CLOCK ^ salt * K_SALT`` (the low 32 bits of each): the tensor's part of the hash."""
    return (clock_steps.to(tl.uint32) * _K_CLOCK) ^ (salt.to(tl.uint32) * _K_SALT)


@device_jit
def sr_bits(idx32, seed, KEY: tl.constexpr):
    """The 16 random bits (uint32) of the elements at global indices ``idx32`` (their low 32 bits, uint32)."""
    x = (idx32 * _K_INDEX) ^ seed ^ KEY
    x = x ^ (x >> 16)
    x = x * _M1
    x = x ^ (x >> 15)
    x = x * _M2
    x = x ^ (x >> 16)
    return x & 0xFFFF


@device_jit
def bf16_sr_bits(x, r):
    """float32 ``x`` as a bfloat16 bit pattern (uint32) by ``(bits(x) + r) >> 16`` (NaN: 0x7FC0)."""
    u = x.to(tl.uint32, bitcast=True)
    return tl.where(x != x, _BF16_NAN, (u + r) >> 16)


# --- compact master weights -----------------------------------------------------------------------------------
@device_jit
def compact_decode(p, c, K: tl.constexpr):
    """float32 master from a float32-widened parameter ``p`` and its integer correction ``c``."""
    b = p.to(tl.int32, bitcast=True) + (c.to(tl.int32) << K)
    return b.to(tl.float32, bitcast=True)


@device_jit
def _rne_shift(d, K: tl.constexpr):
    """``rne(d / 2^K)`` for int32 ``d`` and ``K >= 1`` (floor by an arithmetic shift, then half to even)."""
    q = d >> K
    rem = d - (q << K)
    half = tl.full([], 1, tl.int32) << (K - 1)
    return q + ((rem > half) | ((rem == half) & ((q & 1) != 0))).to(tl.int32)


@device_jit
def compact_encode(master, P_DT: tl.constexpr, MASTER: tl.constexpr, K: tl.constexpr):
    """``(p, c)``: the parameter in its stored form (bf16: uint32 bit pattern; fp16: float16) and its int32
    correction, in range for int8 (``MASTER_CORR8``) or int16 (``MASTER_CORR16``)."""
    mb = master.to(tl.int32, bitcast=True)
    if P_DT == DT_BF16:
        p = bf16_bits(master)
        d = mb - (p << 16).to(tl.int32, bitcast=True)
        if MASTER == _MASTER_CORR16:
            tie = d == 32768  # a tie rounded down in magnitude: the neighbour up keeps c in int16
            p = tl.where(tie, p + 1, p)
            d = tl.where(tie, d - 65536, d)
    else:
        p = master.to(tl.float16)
        d = mb - p.to(tl.float32).to(tl.int32, bitcast=True)
    if MASTER == _MASTER_CORR16:
        c = tl.minimum(tl.maximum(d, -32768), 32767)
    else:
        c = tl.minimum(tl.maximum(_rne_shift(d, K), -128), 127)
    return p, tl.where((mb & _EXP_MASK) != _EXP_MASK, c, 0)

