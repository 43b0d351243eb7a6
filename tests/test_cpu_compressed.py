"""The C++ CPU backend with compressed state (docs/compressed_state.md) against a float64-moment oracle.

Driven through ``TensorBatch`` like ``test_cpu_backend.py``. The oracle does the optimizer math in float64
and the state formats exactly as the specification states them (the codec in float32, the compact
correction and stochastic rounding by bits): ``lrsched_fused.reference.quant``, the emulation every backend
is tested against. Each oracle step starts from our state, so every step of a trajectory is checked on its
own.

What may differ from the oracle after one step (float32 kernels against float64 math; ``TOL`` below):

========================  =====================================================================================
stored value              bound
========================  =====================================================================================
int8 / uint8 codes        ``|ours - oracle| <= 1``, and at most ``CODE_FLIPS[grad dtype]`` of the elements: a code
                          flips only where the oracle's ``m * 127 / s`` lies within float32 rounding (~2**-22
                          relative, ~3e-5 absolute at code 127) of a half-integer: measured <= 2e-5 of the
                          elements with fp32 gradients; bf16 / fp16 gradients put the first step's moments on a
                          lattice where exact half-integers are common (measured 4.8e-3 / 3e-4)
block scales              ``rtol 4e-6`` (a few float32 roundings of the moment)
parameter / master        ``rel * |p| + abs + 2e-6 * (|p| + lr)`` with ``(rel, abs) = TOL[mode, dtype]``: float32
                          rounding plus one quantum of the stored format where float32 and float64 round to
                          different neighbours (fp32 / fp32 master / bf16 with a 16-bit correction: none; bf16
                          2**-7, fp16 2**-10; 8-bit corrections 2**-15 (bf16) and 2**-18 (fp16) relative; fp16
                          subnormals 2**-24 absolute)
gradient-norm partials    ``rtol 1e-6`` against the float64 sums
========================  =====================================================================================

Paths that must agree bit for bit are compared bit for bit: thread counts, instruction sets, LAMB with and
without its scratch buffer and through the sharded stages, fp32 masters and exact 16-bit corrections.
"""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from lrsched_fused import schedules as S
from lrsched_fused.backends import StepContext, TensorBatch
from lrsched_fused.kernels import layout as L
from lrsched_fused.reference import quant as RQ

pytestmark = [
    pytest.mark.cpu_ext,
    pytest.mark.skipif(importlib.util.find_spec("lrsched_fused._cpu") is None,
                       reason="CPU extension lrsched_fused._cpu not built"),
]

if importlib.util.find_spec("lrsched_fused._cpu") is not None:
    from lrsched_fused.backends.cpu import CpuBackend, extension
else:  # pragma: no cover - the module is skipped
    CpuBackend = extension = None

LOW = (torch.bfloat16, torch.float16)
MASTER_DTYPES = {"none": None, "fp32": torch.float32, "corr8": torch.int8, "corr16": torch.int16}
#: fraction of codes that may differ by one from the oracle's, by gradient dtype (see the table above)
CODE_FLIPS = {torch.float32: 1e-3, torch.bfloat16: 1.5e-2, torch.float16: 3e-3}
SCALE_RTOL = 4e-6
GNORM_RTOL = 1e-6
#: one quantum of the stored parameter, (relative to |p|, absolute), by (master mode, param dtype); fp16's
#: absolute 2**-24 is its subnormal spacing (where corrections are clamped too)
TOL = {("none", torch.float32): (0.0, 0.0), ("none", torch.bfloat16): (2.0**-7, 0.0),
       ("none", torch.float16): (2.0**-10, 2.0**-24), ("fp32", torch.bfloat16): (0.0, 0.0),
       ("fp32", torch.float16): (0.0, 0.0), ("corr8", torch.bfloat16): (2.0**-15, 0.0),
       ("corr8", torch.float16): (2.0**-18, 2.0**-24), ("corr16", torch.bfloat16): (0.0, 0.0),
       ("corr16", torch.float16): (0.0, 2.0**-24)}


# ======================================================================================================
# the specification's formats: lrsched_fused.reference.quant, on flat tensors with a last dimension
# ======================================================================================================
class Q:
    """``lrsched_fused.reference.quant`` (the emulation every backend is tested against) for the flat tensors
    and flat scales this file keeps."""

    @staticmethod
    def _rows(x: torch.Tensor, last_dim: int) -> torch.Tensor:
        return x.reshape(-1, last_dim)

    @staticmethod
    def encode_m(m: torch.Tensor, last_dim: int, block: int) -> tuple[torch.Tensor, torch.Tensor]:
        codes, scales = RQ.encode_m(Q._rows(m.float(), last_dim), block)
        return codes.reshape(-1), scales.reshape(-1)

    @staticmethod
    def encode_v(v: torch.Tensor, last_dim: int, block: int) -> tuple[torch.Tensor, torch.Tensor]:
        """From v itself: the emulation takes sqrt(v) in float32, as the kernels do."""
        codes, scales = RQ.encode_v(Q._rows(v.float(), last_dim), block)
        return codes.reshape(-1), scales.reshape(-1)

    @staticmethod
    def decode_m(codes, scales, last_dim, block):
        if not codes.numel():  # (the emulation cannot reshape an empty tensor)
            return torch.zeros(0)
        return RQ.decode_m(Q._rows(codes, last_dim), scales, block).reshape(-1)

    @staticmethod
    def decode_v(codes, scales, last_dim, block):
        if not codes.numel():
            return torch.zeros(0)
        return RQ.decode_v(Q._rows(codes, last_dim), scales, block).reshape(-1)

    sr_bits = staticmethod(RQ.sr_bits)
    round_bf16_stochastic = staticmethod(RQ.round_bf16_stochastic)

    @staticmethod
    def compact_decode(p: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return RQ.compact_decode(p, c, 8 if c.dtype == torch.int8 else 16)

    compact_encode = staticmethod(RQ.compact_encode)


# ======================================================================================================
# a bucket of compressed state
# ======================================================================================================
def hp_row(kind: str, *, lr_scale=1.0, betas=(0.9, 0.999), eps=1e-8, wd=0.01, decoupled=False,
           trust=(0.0, math.inf)):
    row = [0.0] * L.HP_COLS
    row[L.HP_LR_SCALE] = lr_scale
    row[L.HP_BETA1], row[L.HP_BETA2] = betas
    row[L.HP_EPS] = eps
    row[L.HP_WEIGHT_DECAY] = wd
    row[L.HP_BIAS_CORRECTION] = row[L.HP_GRAD_AVERAGING] = row[L.HP_ADAPT] = 1.0
    row[L.HP_TRUST_MIN], row[L.HP_TRUST_MAX] = trust
    row[L.HP_DECOUPLED] = float(decoupled and kind == "lamb")
    return row


def context(hparams, clock, sched=None, found_inf=None, grad_scale=None, partials=None, history=None):
    tables = S.encode_tables([sched or S.constant(1e-2)] * len(hparams))
    return StepContext(tables, torch.tensor(hparams, dtype=torch.float64), clock, found_inf, grad_scale, partials,
                       history)


class Bucket:
    """Parameters of the given shapes in ``pdtype`` with ``master`` ("none", "fp32", "corr8", "corr16") and int8
    moments (``moments="int8"``) or floating ones (a torch dtype); copies are independent."""

    def __init__(self, shapes, pdtype=torch.float32, master="none", *, moments="int8", block=256, sr=False,
                 seed=0, param_scale=1.0, offsets=None, salts=None):
        g = torch.Generator().manual_seed(seed)
        self.shapes, self.pdtype, self.master, self.moments = shapes, pdtype, master, moments
        self.block, self.sr, self.offsets, self.salts = block, sr, offsets, salts
        self.gen = torch.Generator().manual_seed(seed + 1)
        masters = [(torch.randn(s, generator=g, dtype=torch.float64) * param_scale).float() for s in shapes]
        self.params, self.masters = [], None
        if master in ("corr8", "corr16"):
            bits = 8 if master == "corr8" else 16
            pairs = [Q.compact_encode(mv.reshape(-1), pdtype, bits) for mv in masters]
            self.params = [p.reshape(s) for (p, _), s in zip(pairs, shapes)]
            self.masters = [c.reshape(s) for (_, c), s in zip(pairs, shapes)]
        else:
            self.params = [mv.to(pdtype) for mv in masters]
            if master == "fp32":
                self.masters = masters
        self.last_dims = [s[-1] if len(s) else 1 for s in shapes]
        if moments == "int8":
            self.m = [torch.zeros(s, dtype=torch.int8) for s in shapes]
            self.v = [torch.zeros(s, dtype=torch.uint8) for s in shapes]
            nbs = [(math.prod(s) // d if d else 0) * -(-d // block) for s, d in zip(shapes, self.last_dims)]
            self.sm = [torch.zeros(k) for k in nbs]
            self.sv = [torch.zeros(k) for k in nbs]
        else:
            self.m = [torch.zeros(s, dtype=moments) for s in shapes]
            self.v = [torch.zeros(s, dtype=moments) for s in shapes]
            self.sm = self.sv = None
        self.group_index = torch.zeros(len(shapes), dtype=torch.int64)
        self.steps = torch.zeros(len(shapes))
        self.gnorm = torch.zeros(1, L.GN_COLS)

    def clone(self) -> "Bucket":
        other = object.__new__(Bucket)
        other.__dict__.update(self.__dict__)
        for key in ("params", "masters", "m", "v", "sm", "sv"):
            val = getattr(self, key)
            setattr(other, key, None if val is None else [t.clone() for t in val])
        other.steps, other.group_index, other.gnorm = self.steps.clone(), self.group_index.clone(), self.gnorm.clone()
        other.gen = torch.Generator().manual_seed(0)
        other.gen.set_state(self.gen.get_state())
        return other

    def new_grads(self, scale=1.0):
        return [(torch.randn(s, generator=self.gen, dtype=torch.float64) * scale).to(self.pdtype) for s in self.shapes]

    def batch(self, grads, gnorm=True) -> TensorBatch:
        return TensorBatch(self.params, grads, self.m, self.v, None, self.masters, self.group_index, self.steps,
                           exp_avg_scales=self.sm, exp_avg_sq_scales=self.sv, last_dims=self.last_dims,
                           elem_offsets=self.offsets, salts=self.salts, quant_block=self.block,
                           stochastic_rounding=self.sr, gnorm_out=self.gnorm if gnorm else None)

    def values(self) -> list[torch.Tensor]:
        """The compute values of the parameters (masters decoded), float32 and flat."""
        if self.master in ("corr8", "corr16"):
            return [Q.compact_decode(p.reshape(-1), c.reshape(-1)) for p, c in zip(self.params, self.masters)]
        src = self.masters if self.master == "fp32" else self.params
        return [t.reshape(-1).float() for t in src]

    def moments_f32(self, i) -> tuple[torch.Tensor, torch.Tensor]:
        """Tensor i's moments as the kernels decode them (flat float32)."""
        if self.moments != "int8":
            return self.m[i].reshape(-1).float(), self.v[i].reshape(-1).float()
        d = self.last_dims[i]
        return (Q.decode_m(self.m[i].reshape(-1), self.sm[i], d, self.block),
                Q.decode_v(self.v[i].reshape(-1), self.sv[i], d, self.block))

    def snapshot(self) -> list[torch.Tensor]:
        out = self.params + self.m + self.v + (self.masters or []) + (self.sm or []) + (self.sv or [])
        return [t.clone() for t in out] + [self.gnorm.clone()]


def bits_equal(a: list[torch.Tensor], b: list[torch.Tensor], what: str) -> None:
    assert len(a) == len(b)
    for k, (x, y) in enumerate(zip(a, b)):
        assert x.dtype == y.dtype and x.shape == y.shape, f"{what}: entry {k}"
        if x.numel():
            assert torch.equal(x.reshape(-1).view(torch.uint8), y.reshape(-1).view(torch.uint8)), \
                f"{what}: entry {k} differs"


# ======================================================================================================
# the float64-moment oracle: one step from a bucket's state
# ======================================================================================================
LR = 1e-2


def _coeffs(b: Bucket, i: int, hp):
    t = float(b.steps[i]) + 1.0
    return t, hp[L.HP_BETA1], hp[L.HP_BETA2], hp[L.HP_EPS], hp[L.HP_WEIGHT_DECAY]


def oracle_adamw(b: Bucket, grads, hp, lr=LR, grad_scale=1.0):
    """Per tensor: (new compute value, new m, new v), float64, from b's state (AdamW: the fresh moments)."""
    out = []
    for i, (p, g) in enumerate(zip(b.values(), grads)):
        t, b1, b2, eps, wd = _coeffs(b, i, hp)
        m, v = (x.double() for x in b.moments_f32(i))
        g = g.reshape(-1).double() / grad_scale
        p = p.double() * (1 - lr * wd)
        m = m + (g - m) * (1 - b1)
        v = v * b2 + (1 - b2) * g * g
        p = p - (lr / (1 - b1**t)) * m / (v.sqrt() / math.sqrt(1 - b2**t) + eps)
        out.append((p, m, v))
    return out


def oracle_lamb_moments(b: Bucket, grads, hp, grad_scale=1.0):
    out = []
    for i, g in enumerate(grads):
        _, b1, b2, _, _ = _coeffs(b, i, hp)
        m, v = (x.double() for x in b.moments_f32(i))
        g = g.reshape(-1).double() / grad_scale
        out.append((b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g))
    return out


def oracle_lamb_update(before: Bucket, after: Bucket, hp, lr=LR):
    """New compute values of one LAMB step from ``before``'s parameters and ``after``'s stored moments (the
    stored meaning: u from the moments as stored; the moments themselves are checked separately), and the
    per-tensor (||w||, ||u||, ratio)."""
    out, norms = [], []
    for i, p in enumerate(before.values()):
        t, b1, b2, eps, wd = _coeffs(before, i, hp)
        md, vd = (x.double() for x in after.moments_f32(i))
        r = (md / (1 - b1**t)) / (vd.sqrt() / math.sqrt(1 - b2**t) + eps)
        p = p.double()
        decoupled = hp[L.HP_DECOUPLED] != 0.0
        w = p * (1 - lr * wd) if decoupled else p
        u = r if decoupled else r + wd * p
        wn, un = float(w.norm()), float(u.norm())
        ratio = wn / un if wn > 0 and un > 0 else 1.0
        ratio = min(max(ratio, hp[L.HP_TRUST_MIN]), hp[L.HP_TRUST_MAX])
        out.append(w - lr * ratio * u)
        norms.append((wn, un, ratio))
    return out, norms


def check_params(b: Bucket, want: list[torch.Tensor], what: str, lr=LR) -> None:
    rel, absolute = TOL[(b.master, b.pdtype)]
    for i, (x, ref) in enumerate(zip(b.values(), want)):
        if not ref.numel():
            continue
        x = x.double()
        bound = rel * ref.abs() + absolute + 2e-6 * (ref.abs() + lr)
        bad = (x - ref).abs() > bound
        assert not bad.any(), (f"{what}: tensor {i} {int(bad.sum())} of {ref.numel()} params off, worst "
                               f"{float(((x - ref).abs() - bound).max()):.3g} beyond the bound")
        if b.master == "fp32":  # the stored param is the master rounded to nearest even
            assert torch.equal(b.params[i].reshape(-1), b.masters[i].reshape(-1).to(b.pdtype)), f"{what}: param"


def check_codes(b: Bucket, new_moments: list[tuple[torch.Tensor, torch.Tensor]], what: str) -> None:
    """Our int8 codes and scales against the specification's encoding of the oracle's float64 moments."""
    for i, (m, v) in enumerate(new_moments):
        if not m.numel():
            continue
        d = b.last_dims[i]
        for label, ours, oscale, (codes, scales) in (
                ("exp_avg", b.m[i], b.sm[i], Q.encode_m(m.float(), d, b.block)),
                ("exp_avg_sq", b.v[i], b.sv[i], Q.encode_v(v.float(), d, b.block))):
            diff = (ours.reshape(-1).to(torch.int32) - codes.to(torch.int32)).abs()
            assert int(diff.max()) <= 1, f"{what}: tensor {i} {label} codes differ by {int(diff.max())}"
            flips = int((diff > 0).sum())
            assert flips <= max(1, CODE_FLIPS[b.pdtype] * diff.numel()), f"{what}: tensor {i} {label}: {flips} flips"
            err = (oscale.double() - scales.double()).abs() / scales.double().clamp_min(1e-30)
            assert float(err.max()) <= SCALE_RTOL, f"{what}: tensor {i} {label} scales differ by {float(err.max()):.3g}"
            assert torch.equal(oscale == 0, scales == 0)


def run_adamw(b: Bucket, grads, hp, clock=None, threads=None, **ctx_kw):
    clock = torch.zeros(2, dtype=torch.int64) if clock is None else clock
    CpuBackend(threads=threads).adamw(b.batch(grads), context([hp], clock, **ctx_kw), amsgrad=False)


def run_lamb(b: Bucket, grads, hp, clock=None, threads=None, scratch=None, sharded=False, **ctx_kw):
    clock = torch.zeros(2, dtype=torch.int64) if clock is None else clock
    norms = torch.zeros(len(b.shapes), L.NORM_COLS)
    CpuBackend(threads=threads, lamb_scratch=scratch).lamb(
        b.batch(grads), context([hp], clock, **ctx_kw), norms_out=norms, clip_div=None,
        allreduce=(lambda sums: None) if sharded else None)
    return norms


# ======================================================================================================
# shapes: blocks along the last dimension, within a row
# ======================================================================================================
# D not a multiple of the block (300 = 256 + 44), D smaller than a block (3-d, D = 70), a tensor smaller than
# one block (7 elements), a 1-d tensor of whole and partial blocks over two chunks (70000 = 273 * 256 + 112),
# an empty tensor, and 300 rows of one block each (two chunks of 256 blocks).
SHAPES = [(4, 300), (2, 3, 70), (7,), (70000,), (0, 5), (300, 200)]
SMALL_SHAPES = [(4, 300), (2, 3, 70), (7,), (1000,)]
COMBOS = [(torch.float32, "none"), (torch.bfloat16, "none"), (torch.bfloat16, "fp32"), (torch.bfloat16, "corr8"),
          (torch.bfloat16, "corr16"), (torch.float16, "none"), (torch.float16, "fp32"), (torch.float16, "corr8"),
          (torch.float16, "corr16")]


def combo_id(c) -> str:
    return f"{str(c[0])[6:]}-{c[1]}"


# ======================================================================================================
# the codec, through the kernel
# ======================================================================================================
@pytest.mark.parametrize("block", [32, 256, 4096])
def test_first_step_codes_are_the_specified_codec_of_the_gradient(block):
    """From zero state with beta1 = beta2 = 0 the fresh moments are g and g^2 exactly (and sqrt(g^2) = |g|), so
    the stored codes and scales are the specification's encoding of g, bit for bit: blocks of any length at
    the end of a row, all-zero blocks (codes and scale 0), huge and tiny magnitudes."""
    shapes = [(4, 300), (2, 3, 70), (7,), (70000,), (3, 5000)]
    b = Bucket(shapes, block=block, seed=3)
    grads = [t.clone() for t in b.new_grads()]
    grads[0][1] = 0.0  # a whole row of zero blocks
    grads[0][2, :block // 2] = 0.0
    grads[1][0] *= 1e18  # huge (g^2 = 1e36 still finite in float32)
    grads[1][1] *= 1e-18  # tiny (g^2 = 1e-36 still normal)
    grads[4][0, ::3] = 0.0  # scattered zeros: v codes 0 exactly there
    run_adamw(b, grads, hp_row("adamw", betas=(0.0, 0.0), wd=0.0))
    for i, g in enumerate(grads):
        d = b.last_dims[i]
        cm, sm = Q.encode_m(g.reshape(-1), d, block)
        cv, sv = Q.encode_v(g.reshape(-1) * g.reshape(-1), d, block)
        assert torch.equal(b.m[i].reshape(-1), cm) and torch.equal(b.sm[i], sm), f"tensor {i}: exp_avg"
        assert torch.equal(b.v[i].reshape(-1), cv) and torch.equal(b.sv[i], sv), f"tensor {i}: exp_avg_sq"
    nb = -(-300 // block)
    assert not b.sm[0].reshape(4, nb)[1].any() and not b.m[0][1].any() and not b.sv[0].reshape(4, nb)[1].any()
    assert int(b.v[4][0, ::3].abs().sum()) == 0 and int(b.v[4][0, 1]) >= 1
    rows = b.sm[1].reshape(6, -1)
    assert float(rows[:3].min()) > 1e17 and 0 < float(rows[3:].max()) < 1e-17


def test_a_nonzero_second_moment_keeps_a_nonzero_code():
    # one huge element per block: the others are far below s_v / 510 and still decode to s_v / 255
    b = Bucket([(2, 256)], seed=1)
    g = torch.full((2, 256), 1e-6)
    g[:, 0] = 1.0
    run_adamw(b, [g], hp_row("adamw", betas=(0.0, 0.0), wd=0.0))
    assert int(b.v[0].min()) == 1 and int(b.v[0][:, 0].min()) == 255
    assert int(b.m[0][:, 1:].abs().max()) == 0  # the first moment may round to 0


# ======================================================================================================
# AdamW and LAMB against the float64-moment oracle, step by step
# ======================================================================================================
@pytest.mark.parametrize("sr", [False, True], ids=["rne", "sr"])
@pytest.mark.parametrize("combo", COMBOS, ids=combo_id)
def test_adamw_int8_moments_follow_the_oracle(combo, sr):
    pdtype, master = combo
    b = Bucket(SHAPES, pdtype, master, sr=sr, seed=11)
    hp = hp_row("adamw", wd=0.1)
    for step in range(6):
        grads = b.new_grads(scale=10.0 ** (step % 3 - 1))
        want = oracle_adamw(b, grads, hp)
        run_adamw(b, grads, hp, clock=torch.tensor([step, 0]))
        b.steps += 1
        check_params(b, [p for p, _, _ in want], f"adamw {combo_id(combo)} step {step}")
        check_codes(b, [(m, v) for _, m, v in want], f"adamw {combo_id(combo)} step {step}")


@pytest.mark.parametrize("sr", [False, True], ids=["rne", "sr"])
@pytest.mark.parametrize("combo", COMBOS, ids=combo_id)
def test_lamb_int8_moments_follow_the_oracle(combo, sr):
    pdtype, master = combo
    b = Bucket(SHAPES, pdtype, master, sr=sr, seed=12)
    for step, decoupled in enumerate([False, True, False, True]):
        hp = hp_row("lamb", wd=0.05, eps=1e-6, decoupled=decoupled)
        grads = b.new_grads()
        before = b.clone()
        moments = oracle_lamb_moments(b, grads, hp)
        norms = run_lamb(b, grads, hp, clock=torch.tensor([step, 0]))
        b.steps += 1
        what = f"lamb {combo_id(combo)} step {step}"
        check_codes(b, moments, what)
        want, want_norms = oracle_lamb_update(before, b, hp)
        check_params(b, want, what)
        got = norms.double()
        for i, (wn, un, ratio) in enumerate(want_norms):
            assert got[i].tolist() == pytest.approx([wn, un, ratio], rel=1e-5, abs=1e-12), f"{what}: norms {i}"


MOMENT_COMBOS = [(torch.bfloat16, torch.float32, "corr8"), (torch.bfloat16, torch.float32, "corr16"),
                 (torch.bfloat16, torch.bfloat16, "corr8"), (torch.bfloat16, torch.bfloat16, "corr16"),
                 (torch.float16, torch.float32, "corr8"), (torch.float16, torch.float32, "corr16"),
                 (torch.float16, torch.float16, "corr8"), (torch.float16, torch.float16, "corr16"),
                 (torch.float32, torch.bfloat16, "none"), (torch.bfloat16, torch.bfloat16, "none"),
                 (torch.bfloat16, torch.float32, "none"), (torch.bfloat16, torch.bfloat16, "fp32")]


def moment_combo_id(c) -> str:
    return f"p{str(c[0])[6:]}-s{str(c[1])[6:]}-{c[2]}"


@pytest.mark.parametrize("sr", [False, True], ids=["rne", "sr"])
@pytest.mark.parametrize("kind", ["adamw", "lamb"])
@pytest.mark.parametrize("combo", MOMENT_COMBOS, ids=moment_combo_id)
def test_compact_masters_and_floating_moments_follow_the_oracle(combo, kind, sr):
    pdtype, sdtype, master = combo
    b = Bucket(SMALL_SHAPES, pdtype, master, moments=sdtype, sr=sr, seed=13)
    for step in range(4):
        hp = hp_row(kind, wd=0.05, eps=1e-6 if kind == "lamb" else 1e-8)
        grads = b.new_grads()
        before = b.clone()
        what = f"{kind} {moment_combo_id(combo)} step {step}"
        if kind == "adamw":
            want = oracle_adamw(b, grads, hp)
            run_adamw(b, grads, hp, clock=torch.tensor([step, 0]))
            new = [p for p, _, _ in want]
            moments = [(m, v) for _, m, v in want]
        else:
            moments = oracle_lamb_moments(b, grads, hp)
            run_lamb(b, grads, hp, clock=torch.tensor([step, 0]))
            new = None
        b.steps += 1
        # the moments as stored: one rounding to the state dtype (nearest or stochastic: within one ulp) of a
        # float32 value within a few float32 roundings of its terms
        ulp = {torch.float32: 0.0, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}[sdtype]
        tiny = 2.0**-24 if sdtype == torch.float16 else 1e-35  # fp16 subnormal spacing
        for i, (m, v) in enumerate(moments):
            old_m, old_v = (x.double().abs() for x in before.moments_f32(i))
            g = grads[i].reshape(-1).double()
            for label, ours, ref, terms in (("exp_avg", b.m[i], m, old_m + g.abs()),
                                            ("exp_avg_sq", b.v[i], v, old_v + g * g)):
                err = (ours.reshape(-1).double() - ref).abs()
                bound = ulp * ref.abs() + 2.0**-21 * (terms + ref.abs()) + tiny
                assert bool((err <= bound).all()), f"{what}: tensor {i} {label}"
        if new is None:
            new, _ = oracle_lamb_update(before, b, hp)
        check_params(b, new, what)


@pytest.mark.parametrize("kind", ["adamw", "lamb"])
@pytest.mark.parametrize("moments", ["int8", torch.float32, torch.bfloat16])
def test_bf16_with_16_bit_corrections_is_bf16_with_fp32_masters(kind, moments):
    """A 16-bit correction reconstructs the fp32 master of a bf16 parameter exactly: the trajectory is the fp32
    master's bit for bit, and the parameter is its nearest-even rounding except on exact ties, where it is the
    neighbour up in magnitude (so that the correction fits in 16 bits)."""
    shapes = [(40, 300), (7,), (3, 4, 70)]
    ref = Bucket(shapes, torch.bfloat16, "fp32", moments=moments, seed=21)
    cmp = Bucket(shapes, torch.bfloat16, "corr16", moments=moments, seed=21)
    for mv, c in zip(cmp.values(), ref.masters):
        assert torch.equal(mv, c.reshape(-1))
    hp = hp_row(kind, wd=0.1, eps=1e-6)
    for _ in range(8):
        grads = ref.new_grads()
        for bk in (ref, cmp):
            (run_adamw if kind == "adamw" else run_lamb)(bk, grads, hp)
            bk.steps += 1
        for i in range(len(shapes)):
            master = ref.masters[i].reshape(-1)
            assert torch.equal(cmp.values()[i], master), f"tensor {i}: reconstructed master differs"
            p, rne = cmp.params[i].reshape(-1), master.to(torch.bfloat16)
            tie = p != rne
            bits = master[tie].view(torch.int32) & 0xFFFF
            assert bool((bits == 0x8000).all()), "a parameter differs from rne(master) off a tie"
            up = (rne[tie].view(torch.int16).to(torch.int32) + 1).to(torch.int16).view(torch.bfloat16)
            assert torch.equal(p[tie], up)
            assert torch.equal(cmp.m[i], ref.m[i]) and torch.equal(cmp.v[i], ref.v[i])


def test_fp16_with_16_bit_corrections_is_fp16_with_fp32_masters_in_the_normal_range():
    shapes = [(50, 200)]
    ref = Bucket(shapes, torch.float16, "fp32", seed=22)
    cmp = Bucket(shapes, torch.float16, "corr16", seed=22)
    hp = hp_row("adamw", wd=0.1)
    normal = ref.masters[0].reshape(-1).abs() >= 2.0**-14  # elementwise: an element stays exact while normal
    for _ in range(5):
        grads = ref.new_grads()
        for bk in (ref, cmp):
            run_adamw(bk, grads, hp)
            bk.steps += 1
        master = ref.masters[0].reshape(-1)
        normal &= master.abs() >= 2.0**-14
        assert torch.equal(cmp.values()[0][normal], master[normal])
    assert normal.float().mean() > 0.99


# ======================================================================================================
# stochastic rounding: the stated hash, bit for bit
# ======================================================================================================
CLOCK = 2**33 + 7  # the seed takes the clock's low 32 bits


def test_stochastic_rounding_of_bf16_moments_is_the_stated_hash():
    """beta1 = beta2 = 0 from zero state: the fresh moments are g and g * g exactly, so the stored bf16 moments
    are the specification's stochastic rounding of them, with the global index (offset + local index), the
    clock's low 32 bits, the salt and the stream of each moment."""
    shapes = [(3, 100), (17,)]
    offsets, salts = [1000, 2**31 + 5], [3, 2**32 + 9]
    b = Bucket(shapes, torch.float32, moments=torch.bfloat16, sr=True, offsets=offsets, salts=salts, seed=5)
    grads = b.new_grads()
    run_adamw(b, grads, hp_row("adamw", betas=(0.0, 0.0), wd=0.0), clock=torch.tensor([CLOCK, 0]))
    differs = 0
    for i, g in enumerate(grads):
        g = g.reshape(-1)
        index = offsets[i] + torch.arange(g.numel())
        for ours, x, stream in ((b.m[i], g, L.SR_STREAM_EXP_AVG), (b.v[i], g * g, L.SR_STREAM_EXP_AVG_SQ)):
            want = Q.round_bf16_stochastic(x, index, CLOCK, salts[i], stream)
            assert torch.equal(ours.reshape(-1).view(torch.int16), want.view(torch.int16))
            differs += int((want != x.to(torch.bfloat16)).sum())
    assert differs > 100  # it is not rounding to nearest


@pytest.mark.parametrize("moments", [torch.float32, "int8"])
def test_stochastic_rounding_of_bf16_params_is_the_stated_hash(moments):
    """bf16 parameters without master weights: the first step from zero moments, emulated in float32 in the
    kernels' order of operations (adamw.h), then stored with the stream SR_STREAM_PARAM."""
    shapes = [(5, 300), (33,)]
    offsets, salts = [7, 123456], [11, 0]
    b = Bucket(shapes, torch.bfloat16, moments=moments, sr=True, offsets=offsets, salts=salts, seed=6)
    lr, b1, b2, eps, wd = 3e-2, 0.9, 0.99, 1e-3, 0.1
    p0 = [p.reshape(-1).float() for p in b.params]
    grads = b.new_grads()
    run_adamw(b, grads, hp_row("adamw", betas=(b1, b2), eps=eps, wd=wd),
              sched=S.constant(lr), clock=torch.tensor([CLOCK, 0]))
    f32 = lambda x: torch.tensor(x, dtype=torch.float32)  # noqa: E731 - coefficients: double, rounded once
    decay, omb1, omb2 = f32(1 - lr * wd), f32(1 - b1), f32(1 - b2)
    bc2_sqrt, step_size, eps32 = f32(math.sqrt(1 - b2)), f32(lr / (1 - b1)), f32(eps)
    for i, g in enumerate(grads):
        g = g.reshape(-1).float()
        m = (g - 0.0) * omb1
        v = (omb2 * g) * g
        p = p0[i] * decay
        p = p - (step_size * m) / (torch.sqrt(v) / bc2_sqrt + eps32)
        index = offsets[i] + torch.arange(g.numel())
        want = Q.round_bf16_stochastic(p, index, CLOCK, salts[i], L.SR_STREAM_PARAM)
        assert torch.equal(b.params[i].reshape(-1).view(torch.int16), want.view(torch.int16))


def test_stochastic_rounding_is_unbiased_and_deterministic():
    shapes = [(64, 256)]
    x = torch.full(shapes[0], 1.0 + 2.0**-9, dtype=torch.float32)  # a quarter of a bf16 step above 1
    outs = []
    for _ in range(2):
        b = Bucket(shapes, torch.float32, moments=torch.bfloat16, sr=True, seed=7)
        run_adamw(b, [x], hp_row("adamw", betas=(0.0, 0.0), wd=0.0), clock=torch.tensor([5, 0]))
        outs.append(b.m[0].clone())
    assert torch.equal(outs[0], outs[1])
    up = (outs[0].float() > 1.0).float().mean()
    assert 0.22 < float(up) < 0.28  # rounds up with probability 1/4


# ======================================================================================================
# gradient-norm partials and the history ring
# ======================================================================================================
def _gnorm_want(grads, scale=1.0):
    g = torch.cat([x.reshape(-1).double() for x in grads]) / scale
    return float((g * g).sum()), float(g.abs().sum())


GNORM_BUCKETS = {
    "fp32": dict(pdtype=torch.float32, moments=torch.float32),
    "fp64": dict(pdtype=torch.float64, moments=torch.float64),
    "bf16-int8": dict(pdtype=torch.bfloat16, master="fp32"),
    "fp32-int8": dict(pdtype=torch.float32),
}


@pytest.mark.parametrize("path", ["adamw", "lamb", "lamb-noscratch", "lamb-sharded"])
@pytest.mark.parametrize("name", list(GNORM_BUCKETS))
def test_gradient_norm_partials_match_a_float64_sum(name, path):
    b = Bucket(SHAPES + [(3 * 65536 + 5,)], seed=8, **GNORM_BUCKETS[name])
    grads = b.new_grads(scale=3.0)
    scaled = [(g.double() * 1024.0).to(g.dtype) for g in grads]
    hp = hp_row("adamw" if path == "adamw" else "lamb")
    kw = dict(grad_scale=torch.tensor([1024.0]))
    if path == "adamw":
        run_adamw(b, scaled, hp, **kw)
    else:
        run_lamb(b, scaled, hp, scratch=0 if path == "lamb-noscratch" else None, sharded=path == "lamb-sharded", **kw)
    want = _gnorm_want(grads)
    assert b.gnorm.shape == (1, L.GN_COLS) and CpuBackend().gnorm_rows(b.batch(grads)) == 1
    got = b.gnorm[0].double().tolist()
    assert got == pytest.approx(list(want), rel=GNORM_RTOL)


@pytest.mark.parametrize("kind", ["adamw", "lamb"])
def test_a_skipped_step_writes_the_partials_and_nothing_else(kind):
    b = Bucket(SHAPES, torch.bfloat16, "corr8", seed=9)
    before = b.snapshot()
    grads = b.new_grads()
    found = torch.ones(1)
    if kind == "adamw":
        run_adamw(b, grads, hp_row(kind), found_inf=found)
    else:
        norms = run_lamb(b, grads, hp_row(kind), found_inf=found)
        assert float(norms[0, L.NORM_PARAM]) > 0  # telemetry
    after = b.snapshot()
    bits_equal(before[:-1], after[:-1], "skipped step")
    assert b.gnorm[0].double().tolist() == pytest.approx(list(_gnorm_want(grads)), rel=GNORM_RTOL)


def test_an_empty_batch_writes_zero_partials():
    b = Bucket([], seed=1)
    b.gnorm.fill_(5.0)
    run_adamw(b, [], hp_row("adamw"))
    assert b.gnorm.tolist() == [[0.0, 0.0]]


def test_advance_writes_the_summed_partials_into_the_history_ring():
    """Every bucket's rows summed in row order (float64, stored float32) into history[clock % capacity], unless
    the step is skipped (then nothing, and the clock stays); the ring wraps."""
    be = CpuBackend()
    capacity = 3
    history = torch.full((capacity, L.GN_COLS), -1.0)
    clock = torch.tensor([5, 0])
    steps = torch.zeros(2)
    lr_out = torch.zeros(1)
    written = {}
    rng = torch.Generator().manual_seed(0)
    for k in range(7):
        partials = torch.rand(4, L.GN_COLS, generator=rng) * 10 ** torch.randint(-3, 4, (4, 1), generator=rng)
        skip = k == 3
        found = torch.tensor([1.0 if skip else 0.0])
        ctx = context([hp_row("adamw")], clock, found_inf=found, partials=partials, history=history)
        slot = int(clock[0]) % capacity
        be.advance(ctx, steps, lr_out, None)
        if not skip:
            written[slot] = partials.double().sum(0).float()
        for s, row in written.items():
            assert torch.equal(history[s], row), f"step {k} slot {s}"
    assert int(clock[0]) == 5 + 6 and float(steps[0]) == 6.0
    assert len(written) == capacity  # wrapped around: every slot written, some twice


def test_advance_without_a_history_changes_nothing_else():
    be = CpuBackend()
    clock = torch.tensor([0, 0])
    be.advance(context([hp_row("adamw")], clock, partials=torch.ones(2, L.GN_COLS)), torch.zeros(1),
               torch.zeros(1), None)
    assert clock.tolist() == [1, 0]


# ======================================================================================================
# paths that must give the same bits
# ======================================================================================================
# large enough for LAMB's cooperative path (tensors above a quarter of a thread's share) and several chunks
BIG = [(300, 200), (70000,), (2, 3, 70), (7,), (130, 1000), (0, 4)]
PATH_COMBOS = [(torch.float32, "none", "int8", False), (torch.bfloat16, "corr8", "int8", False),
               (torch.bfloat16, "none", "int8", True), (torch.float16, "corr16", "int8", False),
               (torch.bfloat16, "corr16", torch.bfloat16, True), (torch.float32, "none", torch.bfloat16, True)]


def path_id(c) -> str:
    return f"{str(c[0])[6:]}-{c[1]}-{c[2] if isinstance(c[2], str) else str(c[2])[6:]}{'-sr' if c[3] else ''}"


def _run_trajectory(combo, kind, steps=3, block=256, **run_kw) -> tuple[Bucket, torch.Tensor | None]:
    pdtype, master, moments, sr = combo
    b = Bucket(BIG, pdtype, master, moments=moments, sr=sr, block=block, seed=31)
    norms = None
    for step in range(steps):
        hp = hp_row(kind, wd=0.1, eps=1e-6, decoupled=step % 2 == 1)
        grads = b.new_grads()
        clock = torch.tensor([step, 0])
        if kind == "adamw":
            run_adamw(b, grads, hp, clock=clock, **run_kw)
        else:
            norms = run_lamb(b, grads, hp, clock=clock, **run_kw)
        b.steps += 1
    return b, norms


def _trajectory(combo, kind, steps=3, block=256, **run_kw) -> list[torch.Tensor]:
    b, norms = _run_trajectory(combo, kind, steps, block, **run_kw)
    return b.snapshot() + ([norms] if norms is not None else [])


@pytest.mark.parametrize("combo", PATH_COMBOS, ids=path_id)
def test_lamb_scratch_and_sharded_stages_give_the_same_bits(combo):
    """u kept in the scratch buffer, rebuilt (int8: by decoding the stored codes), or the sharded stages (with
    an identity all-reduce: the float32 sums give the same ratio only up to their rounding, so the moments
    and codes are compared bit for bit and the parameters closely)."""
    ref = _trajectory(combo, "lamb", threads=2)
    for scratch in (0, 1000, 70000):
        bits_equal(ref, _trajectory(combo, "lamb", threads=2, scratch=scratch), f"scratch={scratch}")
    fused, _ = _run_trajectory(combo, "lamb", threads=2)
    rtol = TOL[(combo[1], combo[0])][0] + 1e-5
    for threads in (1, 2):
        sharded, _ = _run_trajectory(combo, "lamb", threads=threads, sharded=True)
        stored = lambda b: b.m + b.v + (b.sm or []) + (b.sv or []) + [b.gnorm]  # noqa: E731
        bits_equal(stored(fused), stored(sharded), f"sharded, {threads} threads: moments, scales, gnorm")
        for x, y in zip(fused.values(), sharded.values()):
            assert torch.allclose(x.double(), y.double(), rtol=rtol, atol=1e-6)
    bits_equal(_trajectory(combo, "lamb", threads=1, sharded=True), _trajectory(combo, "lamb", threads=3, sharded=True),
               "sharded 1 vs 3 threads")


@pytest.mark.parametrize("kind", ["adamw", "lamb"])
@pytest.mark.parametrize("combo", PATH_COMBOS, ids=path_id)
def test_thread_counts_give_the_same_bits(combo, kind):
    one = _trajectory(combo, kind, threads=1)
    for threads in (2, 3):
        bits_equal(one, _trajectory(combo, kind, threads=threads), f"{kind}: 1 vs {threads} threads")


# bf16 parameters with int8 moments take vector loops on AVX2 / AVX-512 and the per-element loops on the
# baseline build: across instruction sets, every master mode compares the two
ISA_COMBOS = [PATH_COMBOS[1], PATH_COMBOS[2], PATH_COMBOS[4], (torch.bfloat16, "none", "int8", False),
              (torch.bfloat16, "fp32", "int8", False), (torch.bfloat16, "corr16", "int8", False)]


@pytest.mark.parametrize("kind", ["adamw", "lamb"])
@pytest.mark.parametrize("combo", ISA_COMBOS, ids=path_id)
def test_instruction_sets_give_the_same_bits(combo, kind):
    isas = extension.available_isas()
    before = extension.isa()
    results = {}
    try:
        for isa in isas:
            assert extension.set_isa(isa)
            results[isa] = _trajectory(combo, kind, steps=2, threads=2)
            if kind == "lamb":  # stage 2 from the stored codes (no scratch for u) as well
                results[isa] += _trajectory(combo, kind, steps=2, threads=2, scratch=0)
    finally:
        extension.set_isa(before)
    for isa in isas[1:]:
        bits_equal(results[isas[0]], results[isa], f"{kind}: {isas[0]} vs {isa}")


@pytest.mark.parametrize("kind", ["adamw", "lamb"])
@pytest.mark.parametrize("combo", [PATH_COMBOS[0], PATH_COMBOS[1]], ids=path_id)
def test_software_prefetch_changes_no_bit(combo, kind):
    """The int8 kernels' software prefetch (on by default except on AMD; ``_cpu.set_prefetch``) only
    touches cache lines ahead, clamped to each tensor: both settings give the same bits."""
    before = extension.prefetch()
    results = {}
    try:
        for on in (False, True):
            extension.set_prefetch(on)
            assert extension.prefetch() is on
            results[on] = _trajectory(combo, kind, steps=2, threads=2)
    finally:
        extension.set_prefetch(before)
    bits_equal(results[False], results[True], f"{kind}: prefetch off vs on")


def _lane_sum_of_squares(x: torch.Tensor, block: int) -> float:
    """The kernels' sum of squares of a tensor with int8 moments, emulated operation for operation
    (kernel_common.h): quantization blocks along the last dimension, chunks of CHUNK_ELEMS / block whole
    blocks, and in each block sub-blocks of 512 from its start whose 16 float32 lanes (lane j % 16) are
    folded into 16 double lanes at the sub-block's end; a chunk's partial is the pairwise lane total, and
    the tensor's sum adds its chunks' partials in order."""
    rows = x.reshape(-1, x.shape[-1]).to(torch.float32)
    blocks = [row[c:c + block] for row in rows for c in range(0, rows.shape[1], block)]
    per_chunk = extension.CHUNK_ELEMS // block
    total = 0.0
    for k in range(0, len(blocks), per_chunk):
        acc = [0.0] * 16
        for blk in blocks[k:k + per_chunk]:
            for o in range(0, blk.numel(), 512):
                lanes = torch.zeros(16, dtype=torch.float32)
                sub = blk[o:o + 512]
                for j in range(0, sub.numel(), 16):
                    part = sub[j:j + 16]
                    lanes[:part.numel()] = lanes[:part.numel()] + part * part
                acc = [a + float(v) for a, v in zip(acc, lanes.tolist())]
        l8 = [acc[i] + acc[i + 8] for i in range(8)]
        l4 = [l8[i] + l8[i + 4] for i in range(4)]
        total += (l4[0] + l4[2]) + (l4[1] + l4[3])
    return total


@pytest.mark.parametrize("pdtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("block", [256, 4096])
def test_lamb_int8_parameter_norm_is_the_kernels_lane_sum(block, pdtype):
    """With coupled weight decay w = p, so LAMB's parameter norm is the lane sum of p^2, emulated exactly:
    this pins the lane and fold layout of the int8 stage 1 (fp32 parameters fuse it into the encoder, others
    do not), including blocks longer than a 512-element sub-block and rows ending in a partial group of 16."""
    b = Bucket([(3, 4096), (2, 1060), (5, 300)], pdtype, "none", block=block, seed=12)
    before = [p.detach().clone() for p in b.params]
    norms = run_lamb(b, b.new_grads(), hp_row("lamb", wd=0.1, decoupled=False))
    for i, p in enumerate(before):
        want = torch.tensor(math.sqrt(_lane_sum_of_squares(p.float(), block)), dtype=torch.float64).float()
        assert torch.equal(norms[i, L.NORM_PARAM], want), (i, float(norms[i, L.NORM_PARAM]), float(want))


@pytest.mark.parametrize("block", [32, 4096])
def test_other_block_sizes(block):
    for kind in ("adamw", "lamb"):
        bits_equal(_trajectory(PATH_COMBOS[1], kind, steps=2, block=block, threads=1),
                   _trajectory(PATH_COMBOS[1], kind, steps=2, block=block, threads=3), f"{kind} block {block}")
    b = Bucket(SMALL_SHAPES, torch.bfloat16, "corr8", block=block, seed=4)
    hp = hp_row("adamw")
    grads = b.new_grads()
    want = oracle_adamw(b, grads, hp)
    run_adamw(b, grads, hp)
    b.steps += 1
    check_params(b, [p for p, _, _ in want], f"block {block}")
    check_codes(b, [(m, v) for _, m, v in want], f"block {block}")


# ======================================================================================================
# what is refused
# ======================================================================================================
def test_amsgrad_and_bad_blocks_are_refused_for_int8_moments():
    b = Bucket(SMALL_SHAPES, seed=1)
    grads = b.new_grads()
    batch = b.batch(grads)
    batch.max_exp_avg_sqs = [torch.zeros(s) for s in b.shapes]
    with pytest.raises(ValueError, match="amsgrad"):
        CpuBackend().adamw(batch, context([hp_row("adamw")], torch.zeros(2, dtype=torch.int64)), amsgrad=True)
    b = Bucket([(4, 10000)], block=8192, seed=1)
    with pytest.raises(ValueError, match="quant_block"):
        run_adamw(b, b.new_grads(), hp_row("adamw"))


def test_unsupported_combinations_name_the_master_mode():
    from lrsched_fused.backends import BackendUnavailable

    b = Bucket([(4, 300)], torch.float32, "none", seed=1)
    batch = b.batch(b.new_grads())
    batch.master_params = [torch.zeros(4, 300, dtype=torch.int8)]  # compact corrections of an fp32 param
    with pytest.raises(BackendUnavailable, match="int8 compact master"):
        CpuBackend().adamw(batch, context([hp_row("adamw")], torch.zeros(2, dtype=torch.int64)), amsgrad=False)


@pytest.mark.parametrize("pdtype", [torch.float32, torch.float64, torch.bfloat16])
def test_the_gradient_norm_lanes_change_no_update(pdtype):
    """AdamW with and without gnorm_out gives the same bits (fp32 has a loop of its own for it), on every
    instruction set, and the partials are the same on every instruction set."""
    sizes = [(70000,), (3, 333), (5,)]
    isas = extension.available_isas()
    before = extension.isa()
    results = {}
    try:
        for isa in isas:
            assert extension.set_isa(isa)
            for gnorm in (False, True):
                b = Bucket(sizes, pdtype, "fp32" if pdtype == torch.bfloat16 else "none",
                           moments=torch.float64 if pdtype == torch.float64 else torch.float32, seed=3)
                for step in range(2):
                    grads = b.new_grads()
                    ctx = context([hp_row("adamw")], torch.tensor([step, 0]))
                    CpuBackend(threads=2).adamw(b.batch(grads, gnorm=gnorm), ctx, amsgrad=False)
                results[isa, gnorm] = b.snapshot()
    finally:
        extension.set_isa(before)
    for isa in isas:
        bits_equal(results[isa, False][:-1], results[isa, True][:-1], f"{isa}: with / without gnorm_out")
        bits_equal(results[isas[0], True], results[isa, True], f"{isas[0]} vs {isa}")
