"""The Triton backend's compressed state (``docs/compressed_state.md``): int8 moments, compact master
weights, stochastic rounding, and the gradient-norm partials and history, against the plain-torch emulation
``lrsched_fused/reference/quant.py`` (CPU tensors under ``TRITON_INTERPRET=1``; CUDA tensors on a GPU).

Two kinds of check:

* **bit-exact** where the kernel's float32 inputs to a rounding are known exactly: codes and scales after
  one step against the same step emulated in float32 (in the interpreter; on a GPU, fp contraction may move
  a moment by an ulp, so a code may differ by one, rarely), the codec on designed values (ties, huge and
  tiny magnitudes, zero blocks) through an update that makes ``m = g`` and ``v = g^2`` exactly, stochastic
  rounding bits against the emulation's hash, compact corrections (ties, non-finite, fp16 overflow);
* **a float64-moment oracle** over several steps (the documented math in float64, every store quantized or
  rounded with the emulation), compared with the tolerances of :data:`TOL`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import pytest
import torch

pytest.importorskip("triton")

from helpers import max_rel_err, requires_triton  # noqa: E402
from lrsched_fused import functional as F, schedules as S  # noqa: E402
from lrsched_fused.backends import BackendUnavailable, StepContext, TensorBatch  # noqa: E402
from lrsched_fused.kernels import layout as L  # noqa: E402
from lrsched_fused.reference import quant as Q  # noqa: E402
from lrsched_fused.schedules import encode_tables  # noqa: E402

pytestmark = [pytest.mark.triton, requires_triton]

DEVICE = torch.device("cpu" if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0") else "cuda")
EXACT = DEVICE.type == "cpu"  # the interpreter computes in plain float32, as the emulation does
BF16, F16, F32 = torch.bfloat16, torch.float16, torch.float32
NONE, FP32, CORR8, CORR16 = L.MASTER_NONE, L.MASTER_FP32, L.MASTER_CORR8, L.MASTER_CORR16

#: ``max|x - ref| / max|ref|`` per tensor after :data:`N_STEPS` steps against the float64-moment oracle
#: (lr 1e-2, parameters of magnitude ~1). A tensor's tolerance is the larger of its own entry and the
#: ``update`` entry of its moments' storage.
#: param: one rounding to the parameter dtype per step (a few ulps), fp32 at float32 rounding of the math.
#: master: fp32 masters and 16-bit corrections at float32 rounding; 8-bit corrections keep ~16 bits.
#: moment: a decoded int8 moment may be a code off where the float32 (kernel) and float64 (oracle) moments
#: straddle a rounding edge (one code: 1/127 of the block max); bf16 moments an ulp (2^-8); fp32 rounding.
#: update: such a code moves that step's update by about lr / 127 (bf16: lr 2^-8) of a parameter.
TOL = {
    ("param", F32): 2e-5, ("param", BF16): 2e-2, ("param", F16): 4e-3,
    ("master", FP32): 2e-5, ("master", CORR16): 2e-5, ("master", CORR8): 1e-4,
    ("moment", "int8"): 2e-2, ("moment", "bf16"): 2e-2, ("moment", "fp32"): 2e-5,
    ("update", "int8"): 3e-4, ("update", "bf16"): 1e-4, ("update", "fp32"): 0.0,
}
N_STEPS = 5
QB = 64
#: rows of D = 200 (3 full blocks and a tail of 8), D < QB, a 3-d tensor (D = 96), 1-d tensors smaller
#: than a block and of several blocks, an empty tensor
RAGGED = [(3, 200), (2, 30), (2, 3, 96), (40,), (300,), (0, 8)]
#: every D a multiple of QB: the kernels' FULL path (blocks at k * QB)
FULL = [(4, 128), (2, 64), (3, 2, 64), (64,)]


def _encode(kind: str, x: torch.Tensor, qb: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The emulation's ``encode_m`` / ``encode_v``; empty tensors handled here (``quant.blocks`` cannot
    reshape 0 rows), and ``v`` encoded from ``sqrt_rn(v)`` as the specification states: torch 2.13's float32
    CPU ``sqrt`` (which ``encode_v`` calls) is 1 ulp off on about 0.7 % of inputs, so the steps of
    ``encode_v`` follow here with a correctly rounded square root (float64, rounded once: exact)."""
    if x.numel() == 0:
        nb = -(-x.shape[-1] // qb)
        return (torch.zeros(x.shape, dtype=torch.int8 if kind == "m" else torch.uint8),
                torch.zeros((*x.shape[:-1], nb)))
    if kind == "m":
        return Q.encode_m(x, qb)
    r, d, nb = Q.blocks(x.double().sqrt().float(), qb)
    s = r.amax(dim=-1, keepdim=True)
    inv = torch.where(s > 0, torch.tensor(float(L.Q_V_LEVELS)) / s, torch.zeros_like(s))
    q = torch.round(r * inv).clamp(0, L.Q_V_LEVELS)
    q = torch.where(r > 0, q.clamp(min=1), torch.zeros_like(q)).to(torch.uint8)
    return q.reshape(q.shape[0], -1)[:, :d].reshape(x.shape), s.reshape(*x.shape[:-1], nb)


def _decode(kind: str, codes: torch.Tensor, scales: torch.Tensor, qb: int) -> torch.Tensor:
    if codes.numel() == 0:
        return torch.zeros(codes.shape)
    return (Q.decode_m if kind == "m" else Q.decode_v)(codes, scales, qb)


def _backend(chunking: str):
    from lrsched_fused.backends.triton import TritonBackend

    # small: several runs per tensor and several tiles per run (RUN = 4 blocks, TR = 2) or, with QB > block,
    # one block per tile
    return {"whole": TritonBackend(), "small": TritonBackend(chunk=256, block=128),
            "tiny": TritonBackend(chunk=64, block=32)}[chunking]


# ---------------------------------------------------------------------------------------------------------
# a case and its state: the kernel's batch and the oracle's copy
# ---------------------------------------------------------------------------------------------------------
@dataclass
class Spec:
    algo: str = "adamw"
    dtype: torch.dtype = F32
    master: int = NONE
    state: str = "int8"  # "int8" | "fp32" | "bf16"
    sr: bool = False
    shapes: list = field(default_factory=lambda: list(RAGGED))
    qb: int = QB
    chunking: str = "whole"
    grad_scale: float | None = None
    clock0: int = 2**32 + 3  # the hash takes the clock's low 32 bits
    seed: int = 0

    @property
    def bits(self) -> int:
        return 16 if self.master == CORR16 else 8

    def grads(self, step: int) -> list[torch.Tensor]:
        gen = torch.Generator().manual_seed(1000 * self.seed + step)
        scale = self.grad_scale or 1.0
        return [(torch.randn(s, generator=gen) * scale * (1 + i)).to(self.dtype) for i, s in enumerate(self.shapes)]


@dataclass
class Stored:
    """One tensor's stored state, on the host: the parameter, its master entry, the moments (codes and
    scales, or floating tensors)."""

    p: torch.Tensor
    master: torch.Tensor | None
    m: torch.Tensor
    v: torch.Tensor
    ms: torch.Tensor | None = None
    vs: torch.Tensor | None = None


def _initial(spec: Spec) -> list[Stored]:
    gen = torch.Generator().manual_seed(spec.seed)
    out = []
    for i, shape in enumerate(spec.shapes):
        p = (torch.randn(shape, generator=gen) * (1 + i)).to(spec.dtype)
        master = None
        if spec.master == FP32:
            master = p.float() * (1 + 1e-3 * torch.randn(shape, generator=gen))
        elif spec.master in (CORR8, CORR16):
            lim = 127 if spec.bits == 8 else (2**15 - 1 if spec.dtype == BF16 else 2**12 - 1)
            corr = torch.randint(-lim, lim + 1, shape, generator=gen)
            master = corr.to(torch.int8 if spec.bits == 8 else torch.int16)
        m0 = torch.randn(shape, generator=gen) * 0.1
        v0 = torch.rand(shape, generator=gen) * 0.01
        if spec.state == "int8":
            (mc, ms), (vc, vs) = _encode("m", m0, spec.qb), _encode("v", v0, spec.qb)
            out.append(Stored(p, master, mc, vc, ms, vs))
        else:
            sdt = BF16 if spec.state == "bf16" else F32
            out.append(Stored(p, master, m0.to(sdt), v0.to(sdt)))
    return out


def _batch(spec: Spec, state: list[Stored], *, elem_offsets=None, salts=None) -> TensorBatch:
    dev = lambda ts: [t.clone().reshape(-1).to(DEVICE) for t in ts]  # noqa: E731 - the flat views make_batch gives
    n = len(state)
    quant = spec.state == "int8"
    return TensorBatch(
        params=dev(s.p for s in state), grads=[], exp_avgs=dev(s.m for s in state),
        exp_avg_sqs=dev(s.v for s in state), max_exp_avg_sqs=None,
        master_params=dev(s.master for s in state) if spec.master != NONE else None,
        group_index=torch.zeros(n, dtype=torch.int64, device=DEVICE), steps=torch.zeros(n, device=DEVICE),
        exp_avg_scales=dev(s.ms for s in state) if quant else None,
        exp_avg_sq_scales=dev(s.vs for s in state) if quant else None,
        last_dims=[s[-1] if len(s) else 1 for s in spec.shapes], elem_offsets=elem_offsets, salts=salts,
        quant_block=spec.qb, stochastic_rounding=spec.sr)


def _hyper_row(algo: str, **kw) -> list[float]:
    return (F.AdamWHyper(**kw) if algo == "adamw" else F.LambHyper(**kw)).row(1.0)


def _ctx(spec: Spec, lr: float = 1e-2, **hyper) -> StepContext:
    row = _hyper_row(spec.algo, **hyper)
    return StepContext(encode_tables([S.constant(lr)], DEVICE), torch.tensor([row], dtype=torch.float64, device=DEVICE),
                       torch.tensor([spec.clock0, 0], dtype=torch.int64, device=DEVICE),
                       grad_scale=None if spec.grad_scale is None else torch.tensor([spec.grad_scale], device=DEVICE))


def _kernel_state(spec: Spec, batch: TensorBatch) -> list[Stored]:
    host = lambda t, s: t.detach().cpu().clone().reshape(s)  # noqa: E731 - never aliases the batch
    out = []
    for i, shape in enumerate(spec.shapes):
        nb = -(-shape[-1] // spec.qb) if len(shape) else 1
        sshape = (*shape[:-1], nb)
        out.append(Stored(host(batch.params[i], shape),
                          host(batch.master_params[i], shape) if batch.master_params is not None else None,
                          host(batch.exp_avgs[i], shape), host(batch.exp_avg_sqs[i], shape),
                          host(batch.exp_avg_scales[i], sshape) if batch.quantized else None,
                          host(batch.exp_avg_sq_scales[i], sshape) if batch.quantized else None))
    return out


# ---------------------------------------------------------------------------------------------------------
# the oracle: float64 moments and math, every store as the specification states it
# ---------------------------------------------------------------------------------------------------------
def _master_value(spec: Spec, s: Stored) -> torch.Tensor:
    if spec.master == FP32:
        return s.master.double()
    if spec.master in (CORR8, CORR16):
        return Q.compact_decode(s.p, s.master, spec.bits).double()
    return s.p.double()


def _moments(spec: Spec, s: Stored) -> tuple[torch.Tensor, torch.Tensor]:
    if spec.state == "int8":
        return _decode("m", s.m, s.ms, spec.qb).double(), _decode("v", s.v, s.vs, spec.qb).double()
    return s.m.double(), s.v.double()


def _store_moments(spec: Spec, s: Stored, m, v, idx, clock, salt) -> None:
    if spec.state == "int8":
        (s.m, s.ms), (s.v, s.vs) = _encode("m", m.float(), spec.qb), _encode("v", v.float(), spec.qb)
    elif spec.state == "bf16" and spec.sr:
        s.m = Q.round_bf16_stochastic(m.float(), idx, clock, salt, L.SR_STREAM_EXP_AVG)
        s.v = Q.round_bf16_stochastic(v.float(), idx, clock, salt, L.SR_STREAM_EXP_AVG_SQ)
    else:
        sdt = BF16 if spec.state == "bf16" else F32
        s.m, s.v = m.float().to(sdt), v.float().to(sdt)


def _store_param(spec: Spec, s: Stored, p, idx, clock, salt) -> None:
    p32 = p.float()
    if spec.master == FP32:
        s.master, s.p = p32, p32.to(spec.dtype)
    elif spec.master in (CORR8, CORR16):
        s.p, s.master = Q.compact_encode(p32, spec.dtype, spec.bits)
    elif spec.sr and spec.dtype == BF16:
        s.p = Q.round_bf16_stochastic(p32, idx, clock, salt, L.SR_STREAM_PARAM)
    else:
        s.p = p32.to(spec.dtype)


def oracle_step(spec: Spec, state: list[Stored], grads, clock: int, t: int, lr: float, hp: dict,
                sums_factor=(1.0, 1.0), offsets=None) -> list[tuple[float, float]]:
    """One step of every tensor; returns LAMB's per-tensor (sum w^2, sum u^2) before ``sums_factor``."""
    b1, b2 = hp.get("betas", (0.9, 0.999))
    eps, wd = hp.get("eps", 1e-8 if spec.algo == "adamw" else 1e-6), hp.get("weight_decay", 0.01)
    bc1, bc2 = 1 - b1**t, 1 - b2**t
    sums = []
    for i, (s, g) in enumerate(zip(state, grads)):
        idx = (offsets[i] if offsets else 0) + torch.arange(s.p.numel()).reshape(s.p.shape)
        p = _master_value(spec, s)
        g = g.double() / (spec.grad_scale or 1.0)
        m, v = _moments(spec, s)
        if spec.algo == "adamw":
            p = p * (1 - lr * wd)
            m = m + (g - m) * (1 - b1)
            v = v * b2 + (1 - b2) * g * g
            p = p - (lr / bc1) * m / (v.sqrt() / math.sqrt(bc2) + eps)
            _store_moments(spec, s, m, v, idx, clock, i)
        else:  # the stored-moment meaning: u from the moments as stored
            _store_moments(spec, s, b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g, idx, clock, i)
            m, v = _moments(spec, s)
            u = (m / bc1) / (v.sqrt() / math.sqrt(bc2) + eps) + wd * p
            sw, su = float(p.pow(2).sum()), float(u.pow(2).sum())
            sums.append((sw, su))
            sw, su = sw * sums_factor[0], su * sums_factor[1]
            ratio = math.sqrt(sw) / math.sqrt(su) if sw > 0 and su > 0 else 1.0
            p = p - lr * ratio * u
        _store_param(spec, s, p, idx, clock, i)
    return sums


def _step_kernel(spec, backend, batch, ctx, grads, norms=None, allreduce=None):
    batch.grads = [g.reshape(-1).to(DEVICE) for g in grads]
    if spec.algo == "adamw":
        backend.adamw(batch, ctx, amsgrad=False)
    else:
        norms = norms if norms is not None else torch.zeros(len(batch), L.NORM_COLS, device=DEVICE)
        backend.lamb(batch, ctx, norms_out=norms, clip_div=None, allreduce=allreduce)
    backend.advance(ctx, batch.steps, torch.zeros(1, device=DEVICE), None)


def _compare(spec: Spec, got: list[Stored], ref: list[Stored]) -> None:
    flip = TOL[("update", spec.state)]
    for i, (a, b) in enumerate(zip(got, ref)):
        where = f"tensor {i} {tuple(spec.shapes[i])}"
        assert max_rel_err(a.p, b.p) <= max(TOL[("param", spec.dtype)], flip), f"param of {where}"
        if spec.master != NONE:
            assert max_rel_err(_master_value(spec, a), _master_value(spec, b)) <= max(TOL[("master", spec.master)],
                                                                                     flip), f"master of {where}"
        for k, (x, y) in enumerate(zip(_moments(spec, a), _moments(spec, b))):
            assert max_rel_err(x, y) <= TOL[("moment", spec.state)], f"moment {k + 1} of {where}"


# ---------------------------------------------------------------------------------------------------------
# multi-step runs against the oracle: every param dtype x master x rounding combination, both algorithms
# ---------------------------------------------------------------------------------------------------------
COMBOS = [  # (param dtype, master, state, stochastic rounding, shapes, chunking)
    (F32, NONE, "int8", False, RAGGED, "small"),
    (F32, NONE, "int8", False, FULL, "whole"),
    (BF16, NONE, "int8", True, RAGGED, "whole"),
    (BF16, FP32, "int8", False, FULL, "small"),
    (BF16, CORR8, "int8", False, RAGGED, "whole"),
    (F16, CORR16, "int8", False, RAGGED[:2], "tiny"),  # one program per block: the interpreter's slowest
    (F16, NONE, "int8", False, FULL, "whole"),
    (BF16, CORR16, "fp32", False, RAGGED, "small"),
    (F16, CORR8, "fp32", False, RAGGED, "whole"),
    (BF16, NONE, "bf16", True, RAGGED, "small"),
    (BF16, FP32, "bf16", True, RAGGED, "whole"),
    (F32, NONE, "bf16", True, FULL, "whole"),
]


def _combo_id(c) -> str:
    names = {NONE: "", FP32: "+m32", CORR8: "+c8", CORR16: "+c16"}
    return (f"{str(c[0]).removeprefix('torch.')}{names[c[1]]}-{c[2]}{'-sr' if c[3] else ''}-"
            f"{'full' if c[4] is FULL else 'ragged'}-{c[5]}")


@pytest.mark.parametrize("algo", ["adamw", "lamb"])
@pytest.mark.parametrize("combo", COMBOS, ids=_combo_id)
def test_matches_float64_moment_oracle(algo, combo):
    dtype, master, state, sr, shapes, chunking = combo
    spec = Spec(algo, dtype, master, state, sr, list(shapes), chunking=chunking,
                grad_scale=8.0 if dtype == F16 else None, seed=len(shapes))
    backend = _backend(chunking)
    ref = _initial(spec)
    batch = _batch(spec, ref)
    ref = _kernel_state(spec, batch)  # the same starting bits
    hp = dict(weight_decay=0.05)
    ctx = _ctx(spec, lr=1e-2, **hp)
    calls = []

    def allreduce(sums):  # LAMB's hook: as if two identical shards were summed (ratio unchanged)
        calls.append(sums.clone())
        sums.mul_(2.0)

    for k in range(N_STEPS):
        grads = spec.grads(k)
        _step_kernel(spec, backend, batch, ctx, grads, allreduce=allreduce if algo == "lamb" else None)
        expected = oracle_step(spec, ref, grads, spec.clock0 + k, k + 1, 1e-2, hp)
        if algo == "lamb":
            assert max_rel_err(calls[-1].cpu(), torch.tensor(expected)) <= 1e-4, \
                "the hook sees each tensor's sum(w^2), sum(u^2) from the stored moments"
    _compare(spec, _kernel_state(spec, batch), ref)


# ---------------------------------------------------------------------------------------------------------
# bit-exact checks
# ---------------------------------------------------------------------------------------------------------
def _codes_agree(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    if EXACT:
        assert torch.equal(got, want), f"{what}: {(got.int() != want.int()).sum()} codes differ"
    else:  # fp contraction on a GPU: a moment an ulp off may round to the neighbouring code
        diff = (got.int() - want.int()).abs()
        assert diff.max() <= 1 and (diff > 0).float().mean() <= 1e-3, what


@pytest.mark.parametrize("algo", ["adamw", "lamb"])
@pytest.mark.parametrize("shapes,chunking,qb", [(RAGGED, "small", 64), (FULL, "whole", 64), (RAGGED, "small", 256),
                                                ([(5, 1000), (33,)], "whole", 32)],
                         ids=["ragged-small", "full-whole", "qb-over-block", "qb32"])
def test_one_step_codes_and_scales_equal_the_float32_emulation(algo, shapes, chunking, qb):
    spec = Spec(algo, F32, NONE, "int8", False, list(shapes), qb=qb, chunking=chunking, grad_scale=4.0, seed=7)
    state = _initial(spec)
    batch = _batch(spec, state)
    b1, b2 = 0.9, 0.99
    grads = spec.grads(0)
    _step_kernel(spec, _backend(chunking), batch, _ctx(spec, betas=(b1, b2)), grads)
    got = _kernel_state(spec, batch)
    f = lambda x: torch.tensor(x, dtype=torch.float64).float()  # noqa: E731 - a float64 scalar rounded once
    for i, (s, g) in enumerate(zip(state, grads)):
        g = g.float() / torch.tensor(4.0)
        m, v = _decode("m", s.m, s.ms, qb), _decode("v", s.v, s.vs, qb)
        if algo == "adamw":  # the kernels' float32 operations in their order
            m, v = m + (g - m) * f(1 - b1), v * f(b2) + f(1 - b2) * g * g
        else:
            m, v = f(b1) * m + f(1 - b1) * g, f(b2) * v + f(1 - b2) * g * g
        (mc, ms), (vc, vs) = _encode("m", m, qb), _encode("v", v, qb)
        _codes_agree(got[i].m, mc, f"m codes of tensor {i}")
        _codes_agree(got[i].v, vc, f"v codes of tensor {i}")
        if EXACT:
            assert torch.equal(got[i].ms, ms) and torch.equal(got[i].vs, vs), f"scales of tensor {i}"
        else:
            assert torch.allclose(got[i].ms, ms, rtol=1e-6) and torch.allclose(got[i].vs, vs, rtol=1e-6)


def _designed_values(qb: int) -> torch.Tensor:
    """Rows that probe the codec: ties k + 1/2 under a block max of 127 (m codes) and 255 (v codes), 18 binades
    of magnitude (1e-15 .. 1e15), an all-zero row, a lone nonzero, mixed signs; D = 2.5 blocks (ragged)."""
    d = qb * 5 // 2
    rows = []
    ties = torch.arange(d, dtype=torch.float32) % 127 - 63 + 0.5
    ties[::qb] = 127.0  # every block's max: 127 / s = 1, so the codes are the values, rounded
    rows.append(ties)
    vties = (torch.arange(d, dtype=torch.float32) % 254) + 0.5
    vties[1::qb] = 255.0
    rows.append(vties)
    gen = torch.Generator().manual_seed(5)
    for e in (-15, -9, -3, 0, 4, 9, 15):
        rows.append(torch.randn(d, generator=gen) * 10.0**e)
    rows.append(torch.zeros(d))
    lone = torch.zeros(d)
    lone[qb + 3] = -2.5e-4
    rows.append(lone)
    wide = torch.randn(d, generator=gen) * torch.logspace(-6, 6, d)
    rows.append(wide)
    return torch.stack(rows)


@pytest.mark.parametrize("qb", [32, 64])
def test_codec_on_designed_values_is_exact(qb):
    """AdamW from zero moments with betas (0, 0) makes ``m = g`` and ``v = g * g`` exactly, so the stored
    codes must be the emulation's ``encode_m(g)`` and ``encode_v(g * g)``, bit for bit, on any device."""
    g = _designed_values(qb)
    spec = Spec("adamw", F32, NONE, "int8", False, [tuple(g.shape), (7,)], qb=qb, seed=1)
    state = _initial(spec)
    for s in state:
        s.m.zero_(), s.v.zero_(), s.ms.zero_(), s.vs.zero_()
    batch = _batch(spec, state)
    _step_kernel(spec, _backend("whole"), batch, _ctx(spec, betas=(0.0, 0.0)), [g, torch.zeros(7)])
    got = _kernel_state(spec, batch)
    (mc, ms), (vc, vs) = _encode("m", g, qb), _encode("v", g * g, qb)
    assert torch.equal(got[0].m, mc) and torch.equal(got[0].ms, ms)
    assert torch.equal(got[0].v, vc) and torch.equal(got[0].vs, vs)
    tie = torch.ones(mc.shape[1], dtype=torch.bool)
    tie[::qb] = False
    assert (mc[0, tie] % 2 == 0).all() and (vc[1, 2::qb] % 2 == 0).all(), "ties go to even codes"
    assert (got[1].m == 0).all() and (got[1].ms == 0).all() and (got[1].vs == 0).all(), "an all-zero tensor"
    nonzero = g != 0
    assert (got[0].v[nonzero] >= 1).all(), "a nonzero v keeps a code >= 1"


def test_stochastic_rounding_bits_equal_the_emulation_hash():
    """bf16 moments of fp32 params (``m = g``, ``v = g * g`` exactly) and bf16 params updated only by
    decay (``p * 0.75`` exactly in float32), in AdamW and LAMB, int8 and floating moments: every stored
    bf16 pattern is ``(bits(x) + r) >> 16`` with the emulation's ``r``, for global indices from shard
    offsets, salts from the batch and the clock's low 32 bits."""
    offsets, salts, clock = [5, 2**33 + 11], [3, 70000], 2**32 + 9
    shapes = [(4, 100), (300,)]
    for algo in ("adamw", "lamb"):
        hp = dict(betas=(0.0, 0.0), weight_decay=0.5)
        if algo == "lamb":
            hp["decoupled_decay"] = True
        # moments: fp32 params, bf16 moments
        spec = Spec(algo, F32, NONE, "bf16", True, shapes, clock0=clock)
        state = _initial(spec)
        for s in state:
            s.m.zero_(), s.v.zero_()
        batch = _batch(spec, state, elem_offsets=offsets, salts=salts)
        grads = spec.grads(0)
        _step_kernel(spec, _backend("small"), batch, _ctx(spec, lr=0.5, **hp), grads)
        got = _kernel_state(spec, batch)
        for i, g in enumerate(grads):
            idx = offsets[i] + torch.arange(g.numel()).reshape(g.shape)
            want_m = Q.round_bf16_stochastic(g, idx, clock, salts[i], L.SR_STREAM_EXP_AVG)
            want_v = Q.round_bf16_stochastic(g * g, idx, clock, salts[i], L.SR_STREAM_EXP_AVG_SQ)
            assert torch.equal(got[i].m.view(torch.int16), want_m.view(torch.int16)), f"{algo} m of tensor {i}"
            assert torch.equal(got[i].v.view(torch.int16), want_v.view(torch.int16)), f"{algo} v of tensor {i}"
        # params: bf16 without masters, g = 0 and zero moments: the update is the decay alone
        for state_kind in ("int8", "fp32"):
            spec = Spec(algo, BF16, NONE, state_kind, True, shapes, clock0=clock)
            state = _initial(spec)
            for s in state:
                s.m.zero_(), s.v.zero_()
                if s.ms is not None:
                    s.ms.zero_(), s.vs.zero_()
            batch = _batch(spec, state, elem_offsets=offsets, salts=salts)
            _step_kernel(spec, _backend("whole"), batch, _ctx(spec, lr=0.5, **hp), [torch.zeros(s, dtype=BF16)
                                                                                     for s in shapes])
            got = _kernel_state(spec, batch)
            for i, s in enumerate(state):
                idx = offsets[i] + torch.arange(s.p.numel()).reshape(s.p.shape)
                want = Q.round_bf16_stochastic(s.p.float() * 0.75, idx, clock, salts[i], L.SR_STREAM_PARAM)
                assert torch.equal(got[i].p.view(torch.int16), want.view(torch.int16)), f"{algo} {state_kind} p {i}"
                assert not torch.equal(want, (s.p.float() * 0.75).to(BF16)), "the draw must differ from RNE somewhere"


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")  # the interpreter's fp16 cast of M > 65520
@pytest.mark.parametrize("dtype,bits", [(BF16, 8), (BF16, 16), (F16, 8), (F16, 16)], ids=["bf16-8", "bf16-16",
                                                                                     "fp16-8", "fp16-16"])
@pytest.mark.parametrize("state_kind", ["fp32", "int8"])
def test_compact_corrections_equal_the_emulation(dtype, bits, state_kind):
    """With g = 0 and zero moments the new master is ``M * decay`` exactly; the stored (p, c) must be the
    emulation's ``compact_encode``: random masters under decay 0.75 (every rounding of ``d / 2^k``), and
    under no decay the bf16 16-bit tie (``d = +2^15`` moves to the neighbour up), infinities, NaN and an
    fp16 master beyond the fp16 range."""
    master = CORR16 if bits == 16 else CORR8
    shape = (6, 70)
    for decay in (0.75, 1.0):
        spec = Spec("adamw", dtype, master, state_kind, False, [shape], seed=11)
        state = _initial(spec)
        s = state[0]
        s.m.zero_(), s.v.zero_()
        if s.ms is not None:
            s.ms.zero_(), s.vs.zero_()
        if decay == 1.0:
            flat_p, flat_c = s.p.view(-1), s.master.view(-1)
            if dtype == BF16 and bits == 16:
                flat_c[:40] = -2**15  # M a tie between p - ulp and p: whichever of them is odd moves up
            flat_p[40], flat_c[40] = float("inf"), 0
            flat_p[41], flat_c[41] = float("nan"), 0
            flat_p[42], flat_c[42] = -float("inf"), 0
            if dtype == F16:
                flat_p[43], flat_c[43] = 65504.0, 127 if bits == 8 else 2**15 - 1  # M overflows fp16
        batch = _batch(spec, state)
        wd = 0.5 if decay == 0.75 else 0.0
        _step_kernel(spec, _backend("whole"), batch, _ctx(spec, lr=0.5, weight_decay=wd),
                     [torch.zeros(shape, dtype=dtype)])
        got = _kernel_state(spec, batch)[0]
        m_new = Q.compact_decode(s.p, s.master, bits) * decay
        want_p, want_c = Q.compact_encode(m_new, dtype, bits)
        same_p = (got.p.view(torch.int16) == want_p.view(torch.int16)) | (got.p.isnan() & want_p.isnan())
        assert same_p.all(), f"decay {decay}: {(~same_p).sum()} params differ"
        assert torch.equal(got.master, want_c), f"decay {decay}: {(got.master != want_c).sum()} corrections differ"
        if decay == 1.0 and dtype == BF16 and bits == 16:
            assert (got.master.view(-1)[:40] == -2**15).all()


# ---------------------------------------------------------------------------------------------------------
# gradient-norm partials and the history ring
# ---------------------------------------------------------------------------------------------------------
def _norms64(grads, scale) -> tuple[float, float]:
    return (sum(float((g.double() / scale).pow(2).sum()) for g in grads),
            sum(float((g.double() / scale).abs().sum()) for g in grads))


@pytest.mark.parametrize("algo", ["adamw", "lamb"])
@pytest.mark.parametrize("state_kind,chunking", [("int8", "small"), ("fp32", "small"), ("int8", "whole")])
def test_gnorm_partials_sum_to_the_float64_norms(algo, state_kind, chunking):
    spec = Spec(algo, BF16, FP32, state_kind, False, list(RAGGED), chunking=chunking, grad_scale=16.0, seed=3)
    backend = _backend(chunking)
    batch = _batch(spec, _initial(spec))
    rows = backend.gnorm_rows(batch)
    batch.gnorm_out = torch.full((rows, L.GN_COLS), float("nan"), device=DEVICE)
    ctx = _ctx(spec)
    grads = spec.grads(0)
    batch.grads = [g.reshape(-1).to(DEVICE) for g in grads]
    norms = torch.zeros(len(batch), L.NORM_COLS, device=DEVICE)
    for call in range(2):  # the same rows, bit for bit, every call
        if algo == "adamw":
            backend.adamw(batch, ctx, amsgrad=False)
        else:
            backend.lamb(batch, ctx, norms_out=norms, clip_div=torch.tensor([3.0], device=DEVICE), allreduce=None)
        if call == 0:
            first = batch.gnorm_out.clone()
    assert rows == batch.cache["triton"].n_work
    assert torch.equal(first, batch.gnorm_out) and not first.isnan().any()
    total = batch.gnorm_out.double().sum(0).cpu()
    sq, ab = _norms64(grads, 16.0)  # before clipping
    assert abs(total[L.GN_SUMSQ] - sq) <= 1e-5 * sq and abs(total[L.GN_SUMABS] - ab) <= 1e-5 * ab


def test_gnorm_out_is_checked_and_skipped_adamw_writes_zeros():
    spec = Spec("adamw", F32, NONE, "int8", False, list(FULL))
    backend = _backend("whole")
    batch = _batch(spec, _initial(spec))
    batch.grads = [g.reshape(-1).to(DEVICE) for g in spec.grads(0)]
    batch.gnorm_out = torch.zeros(backend.gnorm_rows(batch) + 1, L.GN_COLS, device=DEVICE)
    with pytest.raises(ValueError, match="gnorm_out"):
        backend.adamw(batch, _ctx(spec), amsgrad=False)
    batch.gnorm_out = torch.full((backend.gnorm_rows(batch), L.GN_COLS), 7.0, device=DEVICE)
    ctx = _ctx(spec)
    ctx.found_inf = torch.ones(1, device=DEVICE)
    before = _kernel_state(spec, batch)
    backend.adamw(batch, ctx, amsgrad=False)
    assert (batch.gnorm_out == 0).all(), "a skipped AdamW step reads no gradient: its rows are zeros"
    after = _kernel_state(spec, batch)
    for a, b in zip(before, after):
        assert all(torch.equal(x, y) for x, y in [(a.p, b.p), (a.m, b.m), (a.v, b.v), (a.ms, b.ms), (a.vs, b.vs)])


def test_history_ring_wraps_and_skipped_steps_write_nothing():
    """Two buckets (int8 LAMB, fp32 AdamW) write their rows into one partials tensor; advance sums them into
    ``history[clock % 3]``; step 2 is skipped (nothing written, the clock stays); 6 steps wrap the ring."""
    specs = [Spec("lamb", F32, NONE, "int8", False, [(3, 200), (40,)], chunking="small", grad_scale=2.0, seed=1),
             Spec("adamw", BF16, FP32, "fp32", False, [(2, 64), (100,)], chunking="small", grad_scale=2.0, seed=2)]
    backend = _backend("small")
    batches = [_batch(s, _initial(s)) for s in specs]
    rows = [backend.gnorm_rows(b) for b in batches]
    partials = torch.full((sum(rows), L.GN_COLS), float("nan"), device=DEVICE)
    batches[0].gnorm_out, batches[1].gnorm_out = partials[:rows[0]], partials[rows[0]:]
    history = torch.full((3, L.GN_COLS), -1.0, device=DEVICE)
    ctx = _ctx(specs[0])
    ctx.clock.zero_()
    ctx.gnorm_partials, ctx.history = partials, history
    expected = history.clone().cpu().double()
    clock = 0
    for k in range(7):
        grads = [s.grads(k) for s in specs]
        skip = k == 2
        ctx.found_inf = torch.tensor([1.0 if skip else 0.0], device=DEVICE)
        for s, b, g in zip(specs, batches, grads):
            b.grads = [x.reshape(-1).to(DEVICE) for x in g]
            if s.algo == "adamw":
                backend.adamw(b, ctx, amsgrad=False)
            else:
                backend.lamb(b, ctx, norms_out=torch.zeros(len(b), L.NORM_COLS, device=DEVICE), clip_div=None,
                             allreduce=None)
        backend.advance(ctx, torch.zeros(1, device=DEVICE), torch.zeros(1, device=DEVICE), None)
        if not skip:
            expected[clock % 3] = torch.tensor(_norms64(grads[0] + grads[1], 2.0))
            clock += 1
        assert int(ctx.clock[L.CLOCK_STEPS]) == clock
        assert torch.allclose(history.cpu().double(), expected, rtol=1e-5, atol=0), f"after step {k}"
    with pytest.raises(ValueError, match="gnorm_partials"):
        ctx.gnorm_partials = None
        backend.advance(ctx, torch.zeros(1, device=DEVICE), torch.zeros(1, device=DEVICE), None)


# ---------------------------------------------------------------------------------------------------------
# the rest of the contract
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("algo", ["adamw", "lamb"])
def test_found_inf_writes_no_codes_scales_params_or_corrections(algo):
    spec = Spec(algo, BF16, CORR8, "int8", True, list(RAGGED), chunking="small")
    backend = _backend("small")
    batch = _batch(spec, _initial(spec))
    ctx = _ctx(spec)
    _step_kernel(spec, backend, batch, ctx, spec.grads(0))
    before = _kernel_state(spec, batch)
    ctx.found_inf = torch.ones(1, device=DEVICE)
    _step_kernel(spec, backend, batch, ctx, spec.grads(1))
    for a, b in zip(before, _kernel_state(spec, batch)):
        for x, y in [(a.p, b.p), (a.master, b.master), (a.m, b.m), (a.v, b.v), (a.ms, b.ms), (a.vs, b.vs)]:
            assert torch.equal(x.view(torch.uint8), y.view(torch.uint8))


@pytest.mark.parametrize("algo", ["adamw", "lamb"])
def test_launch_count_is_unchanged_by_compressed_state(algo, monkeypatch):
    from lrsched_fused.backends import triton as tb

    launches = []

    def counted(name, kernel):
        class Launch:
            def __getitem__(self, grid):
                launches.append((name, grid[0]))
                return kernel[grid]
        return Launch()

    for module in tb.KERNEL_MODULES:
        for name in dir(module):
            if name.endswith("_kernel"):
                monkeypatch.setattr(module, name, counted(name, getattr(module, name)))
    spec = Spec(algo, BF16, CORR16, "int8", True, list(RAGGED))
    backend = _backend("whole")
    batch = _batch(spec, _initial(spec))
    batch.gnorm_out = torch.zeros(backend.gnorm_rows(batch), L.GN_COLS, device=DEVICE)
    ctx = _ctx(spec)
    ctx.gnorm_partials, ctx.history = batch.gnorm_out, torch.zeros(4, L.GN_COLS, device=DEVICE)
    _step_kernel(spec, backend, batch, ctx, spec.grads(0))
    expected = {"adamw": ["adamw_int8_kernel", "advance_kernel"],
                "lamb": ["lamb_int8_stage1_kernel", "lamb_reduce_kernel", "lamb_int8_stage2_kernel",
                         "advance_kernel"]}[algo]
    assert [n for n, _ in launches] == expected
    assert launches[0][1] == backend.gnorm_rows(batch)


def test_grad_sumsq_of_a_quantized_batch_reads_element_chunks():
    spec = Spec("lamb", F32, NONE, "int8", False, list(RAGGED), grad_scale=4.0)
    backend = _backend("small")
    batch = _batch(spec, _initial(spec))
    grads = spec.grads(0)
    batch.grads = [g.reshape(-1).to(DEVICE) for g in grads]
    got = float(backend.grad_sumsq(batch, _ctx(spec)))
    sq, _ = _norms64(grads, 4.0)
    assert abs(got - sq) <= 1e-5 * sq


def test_what_the_backend_refuses():
    from lrsched_fused.backends.triton import TritonBackend

    backend = TritonBackend()
    backend.check(DEVICE, BF16, torch.int8)
    with pytest.raises(BackendUnavailable, match="float64"):
        backend.check(DEVICE, torch.float64, torch.int8)
    spec = Spec("adamw", F32, NONE, "int8", False, [(2, 64)])
    batch = _batch(spec, _initial(spec))
    batch.grads = [g.reshape(-1).to(DEVICE) for g in spec.grads(0)]
    batch.max_exp_avg_sqs = [torch.zeros(128, device=DEVICE)]
    with pytest.raises(ValueError, match="amsgrad"):
        backend.adamw(batch, _ctx(spec), amsgrad=True)
    spec = Spec("adamw", F32, NONE, "fp32", False, [(2, 64)])
    batch = _batch(spec, _initial(spec))
    batch.master_params = [torch.zeros(128, dtype=torch.int8, device=DEVICE)]
    batch.grads = [g.reshape(-1).to(DEVICE) for g in spec.grads(0)]
    with pytest.raises(ValueError, match="compact master"):
        backend.adamw(batch, _ctx(spec), amsgrad=False)
