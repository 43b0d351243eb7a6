"""The C++ int8-moment kernels for fp32 parameters, bit for bit against a float32 emulation in numpy.

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
        p.grad = g


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
