"""The C++ int8-moment kernels for fp32 and bf16 parameters (every master mode), bit for bit against a float32
emulation in numpy.

The kernels' int8 paths have no torch counterpart to follow, so their arithmetic is their own: it is written
out below one float32 operation at a time, in the kernels' order (``csrc/include/lrsched/adamw.h``,
``lamb.h``, ``quant.h``; ``docs/compressed_state.md``). numpy rounds every float32 operation on its own
(no contraction) and its square root is correctly rounded, so the emulation is exact, which torch's CPU
float32 ``sqrt`` is not (1 ulp off on ~0.7% of inputs). ``tests/test_cpu_compressed.py`` checks the same
kernels against the float64 reference with tolerances; this file pins every bit of the parameters, codes
and scales, so a change to how the kernels pipeline, vectorize or prefetch their blocks that changed a
single rounding fails here.
"""
from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch

from lrsched_fused import FusedAdamW, FusedLAMB

pytestmark = pytest.mark.skipif(importlib.util.find_spec("lrsched_fused._cpu") is None,
                                reason="the C++ backend is not built")

f32 = np.float32
BETAS = (0.9, 0.999)


def _blocks(x: np.ndarray, qb: int):
    """(row, start, stop) of every quantization block along the last dimension."""
    rows, last = x.shape
    for r in range(rows):
        for s in range(0, last, qb):
            yield r, s, min(s + qb, last)


def _decode(codes_m, scale_m, codes_v, scale_v, qb):
    m = np.empty(codes_m.shape, f32)
    v = np.empty(codes_v.shape, f32)
    for j, (r, s, e) in enumerate(_blocks(codes_m, qb)):
        b = j % scale_m.shape[1]
        dm = f32(scale_m[r, b]) / f32(127)
        dv = f32(scale_v[r, b]) / f32(255)
        m[r, s:e] = codes_m[r, s:e].astype(f32) * dm
        r0 = codes_v[r, s:e].astype(f32) * dv
        v[r, s:e] = r0 * r0
    return m, v


def _encode(m, root, qb):
    """quant.h: absmax scales; code_m = clamp(rne(m * 127 / s_m)); code_v = 0 for r == 0, else
    clamp(rne(r * 255 / s_v), 1, 255)."""
    cm = np.empty(m.shape, np.int8)
    cv = np.empty(m.shape, np.uint8)
    nb = -(-m.shape[1] // qb)
    sm = np.empty((m.shape[0], nb), f32)
    sv = np.empty((m.shape[0], nb), f32)
    for j, (r, s, e) in enumerate(_blocks(m, qb)):
        b = j % nb
        mb, rb = m[r, s:e], root[r, s:e]
        sm[r, b], sv[r, b] = np.max(np.abs(mb)), np.max(rb)
        qm = f32(127) / sm[r, b] if sm[r, b] > 0 else f32(0)
        qv = f32(255) / sv[r, b] if sv[r, b] > 0 else f32(0)
        cm[r, s:e] = np.clip(np.rint(mb * qm), -127, 127).astype(np.int8)
        cv[r, s:e] = np.where(rb == 0, 0, np.clip(np.rint(rb * qv), 1, 255)).astype(np.uint8)
    return cm, sm, cv, sv


def _adamw_step(p, g, st, *, lr, wd, eps, t, maximize, qb):
    """One int8 AdamW step (adamw_moments, sqrt, adamw_apply_q, encode), coefficients as adamw_coeffs."""
    b1, b2 = BETAS
    gmul = f32(-1.0 if maximize else 1.0)
    decay, omb1, beta2, omb2 = f32(1.0 - lr * wd), f32(1.0 - b1), f32(b2), f32(1.0 - b2)
    inv_bc2_sqrt = f32(1.0 / math.sqrt(1.0 - b2 ** t))
    step_size, eps = f32(lr / (1.0 - b1 ** t)), f32(eps)
    m, v = _decode(st["exp_avg"], st["exp_avg_scale"], st["exp_avg_sq"], st["exp_avg_sq_scale"], qb)
    gs = g * gmul
    p = p * decay
    m = m + (gs - m) * omb1
    v = v * beta2 + (omb2 * gs) * gs
    root = np.sqrt(v)
    denom = root * inv_bc2_sqrt + eps
    p = p - (step_size * m) / denom
    return p, _encode(m, root, qb)


def _lamb_codes(g, st, *, qb):
    """The codes and scales of one int8 LAMB step (lamb_moments, sqrt, encode; grad_averaging)."""
    b1, b2 = BETAS
    m, v = _decode(st["exp_avg"], st["exp_avg_scale"], st["exp_avg_sq"], st["exp_avg_sq_scale"], qb)
    m = f32(b1) * m + f32(1.0 - b1) * g
    v = f32(b2) * v + (f32(1.0 - b2) * g) * g
    return _encode(m, np.sqrt(v), qb)


def _numpy_state(opt, p):
    return {k: v.numpy().copy() for k, v in opt.state[p].items() if k.startswith("exp_avg")}


# shapes: whole blocks, a short last block per row, rows shorter than a block, one row; the blocks of a
# chunk alternate between lengths (the kernels pipeline equal neighbours and take the others one by one)
SHAPES = [(3, 1024), (5, 300), (4, 64), (1, 4096), (7, 17), (2, 1000)]


def _params(seed: int):
    rng = torch.Generator().manual_seed(seed)
    ps = []
    for k, shape in enumerate(SHAPES):
        p = torch.nn.Parameter(torch.randn(shape, generator=rng) * 0.1)
        ps.append(p)
    return ps, rng


def _grads(ps, rng, step):
    for k, p in enumerate(ps):
        g = torch.randn(p.shape, generator=rng) * 10.0 ** (k % 5 - 3)
        if k == 0:
            g[0, :256] = 0  # an all-zero block
        if k == 1 and step == 1:
            g[1, :5] = 1e-41  # subnormal gradients (a second moment that must not encode to 0)
        if k == 2:
            g[:, :3] *= 1e6  # huge next to tiny in one block
        p.grad = g.to(p.dtype)


@pytest.fixture(params=[1, 2], ids=lambda n: f"{n}threads")
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def _assert_codes(st, codes, where):
    cm, sm, cv, sv = codes
    assert np.array_equal(st["exp_avg"].numpy(), cm), where
    assert np.array_equal(st["exp_avg_sq"].numpy(), cv), where
    assert np.array_equal(st["exp_avg_scale"].numpy().view(np.int32), sm.view(np.int32)), where
    assert np.array_equal(st["exp_avg_sq_scale"].numpy().view(np.int32), sv.view(np.int32)), where


@pytest.mark.parametrize("qb", [256, 64, 128])
@pytest.mark.parametrize("maximize", [False, True])
def test_int8_adamw_matches_the_float32_emulation_bit_for_bit(qb, maximize, threads):
    lr, wd, eps = 1e-2, 0.1, 1e-8
    ps, rng = _params(qb + maximize)
    opt = FusedAdamW(ps, lr=lr, betas=BETAS, eps=eps, weight_decay=wd, maximize=maximize, backend="cpu",
                     state_dtype="int8", quant_block=qb, quant_min_numel=1)
    _grads(ps, rng, 0)
    opt.step()
    for step in range(1, 4):
        _grads(ps, rng, step)
        want = [_adamw_step(p.detach().numpy().copy(), p.grad.numpy(), _numpy_state(opt, p), lr=lr, wd=wd, eps=eps,
                            t=step + 1, maximize=maximize, qb=qb) for p in ps]
        opt.step()
        for p, (wp, codes) in zip(ps, want):
            assert np.array_equal(p.detach().numpy().view(np.int32), wp.view(np.int32)), (p.shape, step)
            _assert_codes(opt.state[p], codes, (p.shape, step))


@pytest.mark.parametrize("qb", [256, 64])
@pytest.mark.parametrize("decoupled", [False, True])
def test_int8_lamb_codes_match_the_float32_emulation_bit_for_bit(qb, decoupled, threads):
    """Stage 1's codes and scales (the parameters depend on the trust ratio's double lane sums, which
    test_cpu_compressed.py emulates)."""
    ps, rng = _params(7 * qb + decoupled)
    opt = FusedLAMB(ps, lr=1e-2, betas=BETAS, eps=1e-6, weight_decay=0.1, decoupled_decay=decoupled,
                    backend="cpu", state_dtype="int8", quant_block=qb, quant_min_numel=1)
    _grads(ps, rng, 0)
    opt.step()
    for step in range(1, 3):
        _grads(ps, rng, step)
        want = [_lamb_codes(p.grad.numpy(), _numpy_state(opt, p), qb=qb) for p in ps]
        opt.step()
        for p, codes in zip(ps, want):
            _assert_codes(opt.state[p], codes, (p.shape, step))


# ---- bf16 parameters: no master weights, fp32 masters, int8 / int16 compact corrections ----------------
# quant.h's storage rules, one integer operation at a time (the kernels' vector loops must store these bits)

MODES = [("none", False, 8), ("fp32", True, 8), ("compact8", "compact", 8), ("compact16", "compact", 16)]


def _bf16_bits_rne(x: np.ndarray) -> np.ndarray:
    """convert.h f32_to_bf16: round to nearest even by bits, NaN -> 0x7FC0 (uint32 holding 16 bits)."""
    u = x.view(np.uint32).astype(np.uint64)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint32)
    return np.where(np.isnan(x), np.uint32(0x7FC0), rounded)


def _bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << np.uint32(16)).view(f32)


def _compact_decode(pbits: np.ndarray, corr: np.ndarray, bits: int) -> np.ndarray:
    k = 8 if bits == 8 else 0
    u = (pbits.astype(np.int64) << 16) + corr.astype(np.int64) * (1 << k)
    return (u & 0xFFFFFFFF).astype(np.uint32).view(f32)


def _compact_encode(master: np.ndarray, bits: int):
    """quant.h compact_encode for bf16: p = rne16(master), d = bits(master) - bits(p); int8: rne(d / 2**8)
    clamped to [-128, 127]; int16: d, except a tie rounded down (d = 2**15), which takes the neighbour up in
    magnitude and c = -2**15; c = 0 for a non-finite master."""
    pb = _bf16_bits_rne(master).astype(np.int64)
    d = master.view(np.uint32).astype(np.int64) - (pb << 16)
    d = np.where(d >= 2**31, d - 2**32, d)
    if bits == 8:
        q, rem = d >> 8, d & 255
        code = q + ((rem > 128) | ((rem == 128) & (q & 1 == 1))).astype(np.int64)
        code = np.clip(code, -128, 127)
    else:
        tie = d == 32768
        pb = pb + tie
        code = np.where(tie, -32768, d)
    code = np.where(np.isfinite(master), code, 0)
    return pb.astype(np.uint16), code.astype(np.int8 if bits == 8 else np.int16)


def _bf16_state(opt, p, mode):
    """The compute value of p (float32) from its storage under mode, and the stored bits to compare."""
    pbits = p.detach().view(torch.int16).numpy().view(np.uint16).copy()
    st = opt.state[p]
    if mode == "none":
        return _bf16_to_f32(pbits)
    if mode == "fp32":
        return st["master_param"].numpy().copy()
    return _compact_decode(pbits, st["master_correction"].numpy(), 8 if mode == "compact8" else 16)


def _bf16_store(value: np.ndarray, mode: str):
    """The parameter bits and master storage that a store of ``value`` leaves."""
    if mode == "none":
        return _bf16_bits_rne(value).astype(np.uint16), None
    if mode == "fp32":
        return _bf16_bits_rne(value).astype(np.uint16), value
    return _compact_encode(value, 8 if mode == "compact8" else 16)


def _assert_bf16_stored(opt, p, want, where):
    wp, wm = want
    assert np.array_equal(p.detach().view(torch.int16).numpy().view(np.uint16), wp), where
    st = opt.state[p]
    if "master_param" in st:
        assert np.array_equal(st["master_param"].numpy().view(np.int32), wm.view(np.int32)), where
    elif "master_correction" in st:
        assert np.array_equal(st["master_correction"].numpy(), wm), where


def _bf16_opt(ps, mw, bits, qb, **kw):
    return FusedAdamW(ps, lr=1e-2, betas=BETAS, eps=1e-8, weight_decay=0.1, backend="cpu", state_dtype="int8",
                      quant_block=qb, quant_min_numel=1, master_weights=mw, master_bits=bits, **kw)


@pytest.mark.parametrize("qb", [256, 64])
@pytest.mark.parametrize("mode, mw, bits", MODES, ids=[m[0] for m in MODES])
def test_int8_adamw_bf16_params_match_the_float32_emulation_bit_for_bit(mode, mw, bits, qb, threads):
    ps, rng = _params(11 * qb + bits)
    ps = [torch.nn.Parameter(p.detach().bfloat16()) for p in ps]
    opt = _bf16_opt(ps, mw, bits, qb)
    _grads(ps, rng, 0)
    opt.step()
    ties = 0
    for step in range(1, 4):
        _grads(ps, rng, step)
        want = []
        for p in ps:
            g = _bf16_to_f32(p.grad.view(torch.int16).numpy().view(np.uint16))
            wp, codes = _adamw_step(_bf16_state(opt, p, mode), g, _numpy_state(opt, p), lr=1e-2, wd=0.1, eps=1e-8,
                                    t=step + 1, maximize=False, qb=qb)
            want.append((_bf16_store(wp, mode), codes))
            if mode == "compact8":  # masters halfway between two corrections (ties of rne(d / 2**8))
                d = wp.view(np.uint32).astype(np.int64) - (_bf16_bits_rne(wp).astype(np.int64) << 16)
                ties += int(((d & 255) == 128).sum())
        opt.step()
        for p, (stored, codes) in zip(ps, want):
            _assert_bf16_stored(opt, p, stored, (p.shape, step))
            _assert_codes(opt.state[p], codes, (p.shape, step))
    assert mode != "compact8" or ties > 0


@pytest.mark.parametrize("bits", [8, 16])
def test_compact_corrections_reencode_bit_for_bit_at_zero_update(bits, threads):
    """Zero gradients and no weight decay leave every master as it is, so the step re-encodes the master of
    each (parameter, correction) pair: corrections over their whole range, including the lowest next to an
    odd parameter, whose master lies halfway between two bf16 values and rounds down to the even one (d =
    2**15: int8 clamps the code 128 to 127, int16 takes the neighbour up in magnitude)."""
    rng = np.random.default_rng(bits)
    shape = (4, 1000)
    pbits = rng.integers(0x3000, 0x4000, size=shape).astype(np.uint16)  # finite, normal, either sign below
    pbits[1] |= 0x8000
    pbits[0, 0] &= 0xFFFE  # the lowest correction next to an even and an odd parameter
    pbits[2, 0] |= 1
    p = torch.nn.Parameter(torch.from_numpy(pbits.view(np.int16)).view(torch.bfloat16))
    opt = FusedAdamW([p], lr=1e-2, weight_decay=0.0, backend="cpu", state_dtype="int8", quant_min_numel=1,
                     master_weights="compact", master_bits=bits)
    p.grad = torch.zeros_like(p)
    opt.step()
    lo, hi = (-128, 127) if bits == 8 else (-32768, 32767)
    corr = rng.integers(lo, hi + 1, size=shape)
    corr[0, :4] = [lo, hi, 0, -1]
    corr[2, :2] = [lo, hi]
    dtype = np.int8 if bits == 8 else np.int16
    opt.state[p]["master_correction"].copy_(torch.from_numpy(corr.astype(dtype)))
    master = _compact_decode(pbits, corr.astype(dtype), bits)
    want = _compact_encode(master, bits)
    opt.step()
    _assert_bf16_stored(opt, p, want, "re-encode")
    # the cases the vector loops must get right are there
    d = master.view(np.uint32).astype(np.int64) - (_bf16_bits_rne(master).astype(np.int64) << 16)
    d = np.where(d >= 2**31, d - 2**32, d)
    assert (d == 32768).any()  # c = -2**(bits-1) next to an odd parameter: a tie rounded down
