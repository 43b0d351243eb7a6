r"""The compressed formats of ``docs/compressed_state.md``, written out in plain torch: the emulation every
backend is tested against (independent of the kernels and of the ``reference`` backend).

* int8 first moments: per block of ``B`` elements along the last dimension within a row,
  ``s = max|m|``, ``code = rne(m * (127 / s))``; decode ``code * (s / 127)``;
* uint8 second moments, linear in the square-root domain: ``r = sqrt(v)``, ``s = max r``,
  ``code = max(1, rne(r * (255 / s)))`` for ``r > 0`` (a nonzero ``v`` never decodes to 0), 0 for ``r = 0``;
  decode ``r = code * (s / 255)``, ``v = r^2``;
* compact master weights: ``M = from_bits(bits(float32(p)) + c * 2^k)``;
* stochastic rounding to bf16 with the stated ``lowbias32`` hash.

The codec works in float32, as the specification states its operations (so that codes agree with the
kernels exactly wherever the moments agree); the moments themselves come from whatever precision the
caller computes them in (the float64 references).
"""

from __future__ import annotations

import torch

from lrsched_fused.kernels import layout as L

__all__ = ["blocks", "encode_m", "decode_m", "encode_v", "decode_v", "lowbias32", "sr_bits",
           "round_bf16_stochastic", "compact_encode", "compact_decode", "compact_shift"]

_MASK32 = 0xFFFFFFFF


def blocks(t: torch.Tensor, block: int) -> tuple[torch.Tensor, int, int]:
    """``t`` as ``[rows, nb, block]`` (zero-padded at each row's end), with its ``D`` and ``nb``. A 0-d or
    1-d tensor is one row."""
    d = t.shape[-1] if t.dim() >= 1 else 1
    rows = t.numel() // d if d else 0
    nb = -(-d // block) if d else 0
    padded = torch.zeros(rows, nb * block, dtype=t.dtype)
    padded[:, :d] = t.reshape(rows, d)
    return padded.reshape(rows, nb, block), d, nb


def _unblock(x: torch.Tensor, shape: torch.Size, d: int) -> torch.Tensor:
    return x.reshape(x.shape[0], x.shape[1] * x.shape[2])[:, :d].reshape(shape)


def _scale_shape(shape: torch.Size, nb: int) -> tuple[int, ...]:
    return (*shape[:-1], nb) if len(shape) >= 1 else (nb,)


def encode_m(m: torch.Tensor, block: int = L.QUANT_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 codes (shape of ``m``) and float32 block scales (``(*rows, nb)``) of a first moment."""
    x, d, nb = blocks(m.to(torch.float32), block)
    s = x.abs().amax(dim=-1, keepdim=True)
    inv = torch.where(s > 0, torch.tensor(float(L.Q_M_LEVELS), dtype=torch.float32) / s, torch.zeros_like(s))
    codes = torch.round(x * inv).clamp(-L.Q_M_LEVELS, L.Q_M_LEVELS).to(torch.int8)  # round: half to even
    return _unblock(codes, m.shape, d), s.reshape(_scale_shape(m.shape, nb))


def decode_m(codes: torch.Tensor, scales: torch.Tensor, block: int = L.QUANT_BLOCK) -> torch.Tensor:
    """float32 first moment from int8 codes and block scales."""
    x, d, nb = blocks(codes.to(torch.float32), block)
    step = scales.reshape(x.shape[0], nb, 1) / torch.tensor(float(L.Q_M_LEVELS), dtype=torch.float32)
    return _unblock(x * step, codes.shape, d)


def encode_v(v: torch.Tensor, block: int = L.QUANT_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 codes and float32 block scales of a second moment (linear in ``sqrt(v)``)."""
    # sqrt in float64, rounded once to float32, is the correctly rounded float32 sqrt the specification
    # states (sqrt_rn); torch's float32 CPU sqrt is not correctly rounded on every input
    x, d, nb = blocks(torch.sqrt(v.to(torch.float32).to(torch.float64)).to(torch.float32), block)
    s = x.amax(dim=-1, keepdim=True)
    inv = torch.where(s > 0, torch.tensor(float(L.Q_V_LEVELS), dtype=torch.float32) / s, torch.zeros_like(s))
    q = torch.round(x * inv).clamp(0, L.Q_V_LEVELS)
    q = torch.where(x > 0, q.clamp(min=1), torch.zeros_like(q))
    return _unblock(q.to(torch.uint8), v.shape, d), s.reshape(_scale_shape(v.shape, nb))


def decode_v(codes: torch.Tensor, scales: torch.Tensor, block: int = L.QUANT_BLOCK) -> torch.Tensor:
    """float32 second moment ``(code * (s / 255))^2``."""
    x, d, nb = blocks(codes.to(torch.float32), block)
    step = scales.reshape(x.shape[0], nb, 1) / torch.tensor(float(L.Q_V_LEVELS), dtype=torch.float32)
    r = x * step
    return _unblock(r * r, codes.shape, d)


# --- stochastic rounding ---------------------------------------------------------------------------------
def lowbias32(x: torch.Tensor) -> torch.Tensor:
    """The lowbias32 integer hash on uint32 values held in int64 (Wellons)."""
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = (x * L.SR_HASH_M1) & _MASK32
    x = x ^ (x >> 15)
    x = (x * L.SR_HASH_M2) & _MASK32
    return x ^ (x >> 16)


def sr_bits(index: torch.Tensor, clock: int, salt: int, stream: int) -> torch.Tensor:
    """The 16 random bits (int64 in [0, 2^16)) for elements at global ``index`` (int64 tensor)."""
    c = (int(clock) & _MASK32) * L.SR_K_CLOCK & _MASK32
    s = (int(salt) & _MASK32) * L.SR_K_SALT & _MASK32
    k = (int(stream) & _MASK32) * L.SR_K_STREAM & _MASK32
    x = ((index.to(torch.int64) & _MASK32) * L.SR_K_INDEX & _MASK32) ^ c ^ s ^ k
    return lowbias32(x) & 0xFFFF


def round_bf16_stochastic(x: torch.Tensor, index: torch.Tensor, clock: int, salt: int, stream: int) -> torch.Tensor:
    """float32 ``x`` to bfloat16 by ``(bits(x) + r) >> 16`` (NaN -> the quiet NaN 0x7FC0)."""
    x = x.to(torch.float32)
    u = x.view(torch.int32).to(torch.int64) & _MASK32
    hi = ((u + sr_bits(index, clock, salt, stream)) >> 16) & 0xFFFF
    hi = torch.where(torch.isnan(x), torch.full_like(hi, 0x7FC0), hi)
    hi = torch.where(hi >= 0x8000, hi - 0x10000, hi).to(torch.int16)  # the bf16 bit pattern, as int16
    return hi.view(torch.bfloat16).reshape(x.shape)


# --- compact master weights ------------------------------------------------------------------------------
def compact_shift(param_dtype: torch.dtype, bits: int) -> int:
    """``k``: float32 steps per correction step."""
    if bits == 16:
        return 0
    return L.MASTER_SHIFT8_BF16 if param_dtype == torch.bfloat16 else L.MASTER_SHIFT8_F16


def _bits(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float32).view(torch.int32).to(torch.int64)


def _from_bits(b: torch.Tensor) -> torch.Tensor:
    b = b & _MASK32
    return torch.where(b >= 2**31, b - 2**32, b).to(torch.int32).view(torch.float32)


def compact_decode(p: torch.Tensor, c: torch.Tensor, bits: int) -> torch.Tensor:
    """The float32 master weight of parameter ``p`` (bf16 / fp16) with correction ``c``."""
    return _from_bits(_bits(p) + c.to(torch.int64) * (1 << compact_shift(p.dtype, bits)))


def compact_encode(master: torch.Tensor, param_dtype: torch.dtype, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(p, c)`` for a float32 master weight: ``p = rne(master)`` in ``param_dtype`` (16-bit bf16: the
    neighbour up on the one tie where ``c`` would not fit) and its int8 / int16 correction."""
    m = master.to(torch.float32)
    p = m.to(param_dtype)  # round to nearest even
    d = _bits(m) - _bits(p)
    k = compact_shift(param_dtype, bits)
    if bits == 16:
        if param_dtype == torch.bfloat16:
            tie = d == 2**15  # rounded down on a tie: take the neighbour up in magnitude
            p_up = ((p.view(torch.int16).to(torch.int64) + 1) & 0xFFFF)
            p_up = torch.where(p_up >= 0x8000, p_up - 0x10000, p_up).to(torch.int16).view(torch.bfloat16)
            p = torch.where(tie, p_up, p)
            d = _bits(m) - _bits(p)
        c = d.clamp(-2**15, 2**15 - 1).to(torch.int16)
    else:
        c = torch.round(d.to(torch.float32) / (1 << k)).clamp(-128, 127).to(torch.int8)
    finite = torch.isfinite(m)
    c = torch.where(finite, c, torch.zeros_like(c))
    return p, c
