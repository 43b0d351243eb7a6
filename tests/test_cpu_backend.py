"""The C++ CPU backend (``backend="cpu"``) against float64 oracles.

The oracle is ``lrsched_fused.backends.reference`` (the backend contract written as plain torch code, no
shared code with csrc/) run on float64 copies of the parameters; for low-precision parameters the
oracle's copies are rounded to the storage dtype after each step, as the real storage is, while its math
stays in float64. Its moments are kept in the state dtype itself (it computes them in float64 and stores
them rounded, as the real storage is), so its LAMB forms ``r`` from the moments as stored, the meaning
every backend implements (``backends/_api.py``; for 16-bit states it differs from the fresh moments by
more than the tolerances: ``test_lamb_with_bf16_states_uses_the_stored_moments``). Tolerances are
``helpers.RTOL`` of the coarser of the parameter and state dtypes.
"""

from __future__ import annotations

import ast
import importlib.util
import math
import subprocess
import sys
import threading

import pytest
import torch
from hypothesis import given, settings, strategies as st

from helpers import RTOL, max_rel_err
from lrsched_fused import schedules as S
from lrsched_fused.backends import BackendUnavailable, StepContext, TensorBatch, get_backend
from lrsched_fused.kernels import layout as L

pytestmark = [
    pytest.mark.cpu_ext,
    pytest.mark.skipif(importlib.util.find_spec("lrsched_fused._cpu") is None,
                       reason="CPU extension lrsched_fused._cpu not built"),
]

if importlib.util.find_spec("lrsched_fused._cpu") is not None:
    from lrsched_fused.backends.cpu import CpuBackend, extension
else:  # pragma: no cover - the module is skipped
    CpuBackend = extension = None

REF = get_backend("reference")
CHUNK = 65536
LOW = (torch.bfloat16, torch.float16)

# (param dtype, state dtype, master weights)
COMBOS = [
    (torch.float32, torch.float32, False),
    (torch.float64, torch.float64, False),
    (torch.bfloat16, torch.float32, False),
    (torch.bfloat16, torch.float32, True),
    (torch.bfloat16, torch.bfloat16, False),
    (torch.float16, torch.float32, False),
    (torch.float16, torch.float32, True),
    (torch.float16, torch.float16, True),
    (torch.float32, torch.bfloat16, False),
]


def combo_id(c) -> str:
    p, s, m = c
    return f"p{str(p)[6:]}-s{str(s)[6:]}{'-master' if m else ''}"


# ------------------------------------------------------------------------------------------------------
# problem setup
# ------------------------------------------------------------------------------------------------------
def hp_row(kind: str, *, lr_scale=1.0, betas=(0.9, 0.999), eps=1e-8, wd=0.01, maximize=False,
           bias_correction=True, grad_averaging=True, adapt=True, trust=(0.0, math.inf), decoupled=False):
    row = [0.0] * L.HP_COLS
    row[L.HP_LR_SCALE] = lr_scale
    row[L.HP_BETA1], row[L.HP_BETA2] = betas
    row[L.HP_EPS] = eps
    row[L.HP_WEIGHT_DECAY] = wd
    row[L.HP_MAXIMIZE] = float(maximize and kind == "adamw")
    row[L.HP_BIAS_CORRECTION] = float(bias_correction or kind == "adamw")
    row[L.HP_GRAD_AVERAGING] = float(grad_averaging or kind == "adamw")
    row[L.HP_ADAPT] = float(adapt)
    row[L.HP_TRUST_MIN], row[L.HP_TRUST_MAX] = trust
    row[L.HP_DECOUPLED] = float(decoupled and kind == "lamb")
    return row


class Problem:
    """Our tensors (storage dtypes) and the oracle's float64 copies, with their own clocks and steps."""

    def __init__(self, sizes, pdtype, sdtype, master, *, amsgrad=False, groups=None, init_steps=None, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.sizes, self.pdtype, self.sdtype, self.master, self.amsgrad = sizes, pdtype, sdtype, master, amsgrad
        n = len(sizes)
        p0 = [torch.randn(k, generator=g, dtype=torch.float64) for k in sizes]
        self.params = [p.to(pdtype) for p in p0]
        self.masters = [p.float() for p in p0] if master else None  # fp32 master from the exact values
        self.m = [torch.zeros(k, dtype=sdtype) for k in sizes]
        self.v = [torch.zeros(k, dtype=sdtype) for k in sizes]
        self.vmax = [torch.zeros(k, dtype=sdtype) for k in sizes] if amsgrad else None
        # oracle: float64; its "params" are the master weights when we keep them
        self.o_params = [t.to(torch.float64, copy=True) for t in (self.masters if master else self.params)]
        # oracle moments in the state dtype: float64 math, stored rounded (LAMB's r from the stored moments)
        self.o_m = [torch.zeros(k, dtype=sdtype) for k in sizes]
        self.o_v = [torch.zeros(k, dtype=sdtype) for k in sizes]
        self.o_vmax = [torch.zeros(k, dtype=sdtype) for k in sizes] if amsgrad else None
        self.group_index = torch.tensor(groups if groups is not None else [0] * n, dtype=torch.int64)
        steps = torch.tensor(init_steps if init_steps is not None else [0] * n, dtype=torch.float32)
        self.steps, self.o_steps = steps.clone(), steps.clone()
        self.gen = torch.Generator().manual_seed(seed + 1)

    def new_grads(self, scale: float = 1.0):
        grads = [(torch.randn(k, generator=self.gen, dtype=torch.float64) * scale).to(self.pdtype) for k in self.sizes]
        return grads, [gr.to(torch.float64, copy=True) for gr in grads]

    def ours(self, grads) -> TensorBatch:
        return TensorBatch(self.params, grads, self.m, self.v, self.vmax, self.masters, self.group_index, self.steps)

    def oracle(self, grads) -> TensorBatch:
        return TensorBatch(self.o_params, grads, self.o_m, self.o_v, self.o_vmax, None, self.group_index, self.o_steps)

    def round_oracle_storage(self) -> None:
        """Round the oracle's parameters to what our storage can hold (its math stays float64; its moments
        are stored in the state dtype already)."""
        if not self.master and self.pdtype != torch.float64:
            for p in self.o_params:
                p.copy_(p.to(self.pdtype).double())

    def check_close(self, rtol: float, what: str) -> None:
        ours = self.masters if self.master else self.params
        for i, (x, ref) in enumerate(zip(ours, self.o_params)):
            err = max_rel_err(x, ref)
            assert err <= rtol, f"{what}: tensor {i} (numel {x.numel()}) params differ by {err:.3g} > {rtol:.3g}"
            if self.master:  # the stored param is the master rounded to nearest even
                assert torch.equal(self.params[i], self.masters[i].to(self.pdtype)), f"{what}: param != round(master)"
        for i, (x, ref) in enumerate(zip(self.m, self.o_m)):
            err = max_rel_err(x, ref)
            assert err <= max(rtol, 10 * RTOL[self.sdtype]), f"{what}: tensor {i} exp_avg differs by {err:.3g}"


def context(tables, hparams, clock, found_inf=None, grad_scale=None) -> StepContext:
    return StepContext(tables, torch.tensor(hparams, dtype=torch.float64), clock, found_inf, grad_scale)


def tolerance(pdtype, sdtype) -> float:
    return max(RTOL[pdtype], RTOL[sdtype])


# ------------------------------------------------------------------------------------------------------
# strategies
# ------------------------------------------------------------------------------------------------------
def schedule_strategy(max_total: int = 120):
    """Schedules whose phase edges fall inside a 100-step run (warmup, decay, the final value)."""
    peak = st.floats(1e-4, 3e-2)

    @st.composite
    def build(draw):
        kind = draw(st.sampled_from(["constant", "cosine", "linear", "wsd", "rex", "tabulated"]))
        p = draw(peak)
        total = draw(st.integers(1, max_total))
        warm = draw(st.integers(0, total))
        init = draw(st.sampled_from([0.0, p / 10]))
        if kind == "constant":
            return S.constant(p)
        if kind == "cosine":
            return S.cosine(p, total, warmup_steps=warm, final_lr=p / 20, init_lr=init)
        if kind == "linear":
            return S.linear(p, total, warmup_steps=warm, init_lr=init)
        if kind == "wsd":
            decay = draw(st.integers(0, total - warm))
            shape = draw(st.sampled_from(["linear", "cosine", "1-sqrt", "square"]))
            return S.wsd(p, total, warmup_steps=warm, decay_steps=decay, decay=shape, final_lr=p / 10, init_lr=init)
        if kind == "rex":
            return S.rex(p, total, warmup_steps=warm, final_lr=0.0, init_lr=init)
        knots = sorted(set(draw(st.lists(st.integers(1, max_total), min_size=1, max_size=4))))
        return S.tabulated([0] + knots, [draw(peak) for _ in range(len(knots) + 1)])

    return build()


sizes_strategy = st.lists(st.sampled_from([0, 1, 2, 15, 16, 17, 63, 511, 513, 1000, 4099]), min_size=1, max_size=5)


# ------------------------------------------------------------------------------------------------------
# AdamW and LAMB over 100 steps against the float64 oracle
# ------------------------------------------------------------------------------------------------------
def run_adamw(prob: Problem, tables, hparams, steps: int, backend) -> None:
    clock, o_clock = torch.zeros(2, dtype=torch.int64), torch.zeros(2, dtype=torch.int64)
    lr_out, o_lr_out = torch.zeros(len(hparams)), torch.zeros(len(hparams))
    for _ in range(steps):
        grads, o_grads = prob.new_grads()
        backend.adamw(prob.ours(grads), context(tables, hparams, clock), amsgrad=prob.amsgrad)
        backend.advance(context(tables, hparams, clock), prob.steps, lr_out, None)
        REF.adamw(prob.oracle(o_grads), context(tables, hparams, o_clock), amsgrad=prob.amsgrad)
        REF.advance(context(tables, hparams, o_clock), prob.o_steps, o_lr_out, None)
        prob.round_oracle_storage()
        assert torch.equal(clock, o_clock) and torch.equal(prob.steps, prob.o_steps)
        assert max_rel_err(lr_out, o_lr_out) <= 1e-6


def run_lamb(prob: Problem, tables, hparams, steps: int, backend, clip: float | None = None) -> tuple:
    clock, o_clock = torch.zeros(2, dtype=torch.int64), torch.zeros(2, dtype=torch.int64)
    n = len(prob.sizes)
    norms, o_norms = torch.zeros(n, 3), torch.zeros(n, 3)
    lr_out, o_lr_out = torch.zeros(len(hparams)), torch.zeros(len(hparams))
    clip_div = None if clip is None else torch.tensor([clip], dtype=torch.float32)
    for _ in range(steps):
        grads, o_grads = prob.new_grads()
        backend.lamb(prob.ours(grads), context(tables, hparams, clock), norms_out=norms, clip_div=clip_div,
                     allreduce=None)
        backend.advance(context(tables, hparams, clock), prob.steps, lr_out, None)
        REF.lamb(prob.oracle(o_grads), context(tables, hparams, o_clock), norms_out=o_norms, clip_div=clip_div,
                 allreduce=None)
        REF.advance(context(tables, hparams, o_clock), prob.o_steps, o_lr_out, None)
        prob.round_oracle_storage()
    return norms, o_norms


def adamw_case(combo, sizes, sched, *, wd=0.01, amsgrad=False, maximize=False, eps=1e-8, beta2=0.999,
               groups=None, init_steps=None) -> None:
    pdtype, sdtype, master = combo
    prob = Problem(sizes, pdtype, sdtype, master, amsgrad=amsgrad, groups=groups, init_steps=init_steps)
    tables = S.encode_tables([sched, S.constant(1.0)])
    hparams = [hp_row("adamw", eps=eps, wd=wd, maximize=maximize, betas=(0.9, beta2)),
               hp_row("adamw", lr_scale=2e-3, betas=(0.8, 0.99), wd=0.1)]
    run_adamw(prob, tables, hparams, 100, CpuBackend())
    prob.check_close(tolerance(pdtype, sdtype), f"adamw {combo_id(combo)}")


def lamb_case(combo, sizes, sched, *, wd=0.01, decoupled=False, bias_correction=True, grad_averaging=True,
              adapt=True, trust=(0.0, math.inf), clip=None, groups=None, init_steps=None) -> None:
    pdtype, sdtype, master = combo
    n = len(sizes)
    prob = Problem(sizes, pdtype, sdtype, master, groups=groups, init_steps=init_steps)
    tables = S.encode_tables([sched, S.constant(1.0)])
    hparams = [hp_row("lamb", eps=1e-6, wd=wd, decoupled=decoupled, bias_correction=bias_correction,
                      grad_averaging=grad_averaging, adapt=adapt, trust=trust),
               hp_row("lamb", lr_scale=1e-3, wd=0.0, adapt=False)]
    norms, o_norms = run_lamb(prob, tables, hparams, 100, CpuBackend(), clip=clip)
    rtol = tolerance(pdtype, sdtype)
    prob.check_close(rtol, f"lamb {combo_id(combo)}")
    # telemetry of the last step: ||w||, ||u|| and the ratio, per tensor
    assert max_rel_err(norms[:, L.NORM_PARAM], o_norms[:, L.NORM_PARAM]) <= rtol
    for i in range(n):
        for col in (L.NORM_UPDATE, L.NORM_RATIO):
            assert norms[i, col].item() == pytest.approx(o_norms[i, col].item(), rel=max(rtol, 1e-4), abs=1e-6)


EDGE_SCHEDULE = S.wsd(1e-2, 60, warmup_steps=10, decay_steps=20, decay="cosine", final_lr=1e-3, init_lr=1e-3)
SIZES = [0, 1, 17, 513, 4099]


@pytest.mark.parametrize("combo", COMBOS, ids=combo_id)
def test_adamw_every_dtype_combination_over_100_steps(combo):
    adamw_case(combo, SIZES, EDGE_SCHEDULE, groups=[0, 1, 0, 1, 0], init_steps=[0, 0, 3, 0, 1])


@pytest.mark.parametrize("combo", COMBOS, ids=combo_id)
def test_lamb_every_dtype_combination_over_100_steps(combo):
    lamb_case(combo, SIZES, EDGE_SCHEDULE, groups=[0, 1, 0, 1, 0], init_steps=[0, 0, 3, 0, 1])


@settings(max_examples=25)
@given(combo=st.sampled_from(COMBOS), sizes=sizes_strategy, sched=schedule_strategy(),
       wd=st.sampled_from([0.0, 0.01, 0.3]), amsgrad=st.booleans(), maximize=st.booleans(),
       eps=st.sampled_from([1e-8, 1e-3]), beta2=st.sampled_from([0.999, 0.95]), two_groups=st.booleans(),
       data=st.data())
def test_adamw_matches_float64_reference_over_100_steps(combo, sizes, sched, wd, amsgrad, maximize, eps, beta2,
                                                        two_groups, data):
    n = len(sizes)
    groups = data.draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)) if two_groups else [0] * n
    init_steps = data.draw(st.lists(st.integers(0, 5), min_size=n, max_size=n))
    adamw_case(combo, sizes, sched, wd=wd, amsgrad=amsgrad, maximize=maximize, eps=eps, beta2=beta2, groups=groups,
               init_steps=init_steps)


@settings(max_examples=25)
@given(combo=st.sampled_from(COMBOS), sizes=sizes_strategy, sched=schedule_strategy(),
       wd=st.sampled_from([0.0, 0.01, 0.3]), decoupled=st.booleans(), bias_correction=st.booleans(),
       grad_averaging=st.booleans(), adapt=st.booleans(),
       trust=st.sampled_from([(0.0, math.inf), (0.01, 10.0), (0.0, 1.0)]), clip=st.sampled_from([None, 1.0, 3.5]),
       two_groups=st.booleans(), data=st.data())
def test_lamb_matches_float64_reference_over_100_steps(combo, sizes, sched, wd, decoupled, bias_correction,
                                                       grad_averaging, adapt, trust, clip, two_groups, data):
    n = len(sizes)
    groups = data.draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)) if two_groups else [0] * n
    lamb_case(combo, sizes, sched, wd=wd, decoupled=decoupled, bias_correction=bias_correction,
              grad_averaging=grad_averaging, adapt=adapt, trust=trust, clip=clip, groups=groups,
              init_steps=data.draw(st.lists(st.integers(0, 5), min_size=n, max_size=n)))


# ------------------------------------------------------------------------------------------------------
# determinism: threads, instruction sets, LAMB's scratch buffer
# ------------------------------------------------------------------------------------------------------
BIG_SIZES = [3 * CHUNK + 123, 17, 0, CHUNK, 5000, 2 * CHUNK - 1, 40000]


def _snapshot(prob: Problem, norms=None):
    out = [t.clone() for t in prob.params + prob.m + prob.v + (prob.masters or [])]
    return out + ([norms.clone()] if norms is not None else [])


def _run_kind(kind: str, backend, combo, steps: int = 3):
    pdtype, sdtype, master = combo
    prob = Problem(BIG_SIZES, pdtype, sdtype, master, groups=[0, 1, 0, 1, 0, 0, 1], seed=7)
    tables = S.encode_tables([S.cosine(1e-2, 10, warmup_steps=2), S.constant(3e-3)])
    hparams = [hp_row(kind, wd=0.1), hp_row(kind, wd=0.0, decoupled=True)]
    clock = torch.zeros(2, dtype=torch.int64)
    norms = torch.zeros(len(BIG_SIZES), 3)
    lr_out = torch.zeros(2)
    for _ in range(steps):
        grads, _ = prob.new_grads()
        ctx = context(tables, hparams, clock)
        if kind == "adamw":
            backend.adamw(prob.ours(grads), ctx, amsgrad=False)
        else:
            backend.lamb(prob.ours(grads), ctx, norms_out=norms, clip_div=None, allreduce=None)
        backend.advance(ctx, prob.steps, lr_out, None)
    return _snapshot(prob, norms if kind == "lamb" else None)


def _assert_bit_identical(a, b, what):
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b)):
        assert torch.equal(x.view(torch.uint8) if x.numel() else x, y.view(torch.uint8) if y.numel() else y), \
            f"{what}: tensor {i} differs"


@pytest.mark.parametrize("kind", ["adamw", "lamb"])
@pytest.mark.parametrize("combo", [COMBOS[0], COMBOS[1], COMBOS[3], COMBOS[4]], ids=combo_id)
def test_one_and_two_threads_give_identical_bits(kind, combo):
    one = _run_kind(kind, CpuBackend(threads=1), combo)
    two = _run_kind(kind, CpuBackend(threads=2), combo)
    three = _run_kind(kind, CpuBackend(threads=3), combo)
    _assert_bit_identical(one, two, f"{kind} 1 vs 2 threads")
    _assert_bit_identical(one, three, f"{kind} 1 vs 3 threads")


@pytest.mark.parametrize("kind", ["adamw", "lamb"])
@pytest.mark.parametrize("combo", [COMBOS[0], COMBOS[1], COMBOS[4], COMBOS[6]], ids=combo_id)
def test_every_instruction_set_gives_identical_bits(kind, combo):
    isas = extension.available_isas()
    before = extension.isa()
    results = {}
    try:
        for isa in isas:
            assert extension.set_isa(isa)
            results[isa] = _run_kind(kind, CpuBackend(threads=2), combo)
    finally:
        extension.set_isa(before)
    for isa in isas[1:]:
        _assert_bit_identical(results[isas[0]], results[isa], f"{kind}: {isas[0]} vs {isa}")


@pytest.mark.parametrize("combo", [COMBOS[0], COMBOS[8], COMBOS[4]], ids=combo_id)
@pytest.mark.parametrize("scratch", [0, 1000, 70000], ids=lambda s: f"scratch{s}")
def test_lamb_scratch_size_does_not_change_bits(scratch, combo):
    # with 16-bit states too: stage 2 reading u back or recomputing it from the rounded moments agree
    default = _run_kind("lamb", CpuBackend(threads=2), combo)
    _assert_bit_identical(default, _run_kind("lamb", CpuBackend(threads=2, lamb_scratch=scratch), combo),
                          f"lamb scratch={scratch}")


def test_set_isa_rejects_unknown_names():
    assert extension.set_isa("not-an-isa") is False
    assert extension.isa() in extension.available_isas()
    assert extension.available_isas()[0] == "baseline"


# ------------------------------------------------------------------------------------------------------
# the C++ schedule evaluator against the float64 reference
# ------------------------------------------------------------------------------------------------------
@st.composite
def random_schedules(draw):
    big = draw(st.booleans())
    max_len = 2**41 if big else 50
    phases = []
    for _ in range(draw(st.integers(1, 4))):
        shape = draw(st.sampled_from(list(L.SHAPE_CODES)))
        length = draw(st.integers(0, max_len))
        v0 = draw(st.floats(1e-5, 1.0))
        v1 = draw(st.floats(1e-5, 1.0))
        kwargs = {}
        if shape == "rex":
            kwargs["a"] = draw(st.floats(0.0, 0.95))
        elif shape == "poly":
            kwargs["a"] = draw(st.floats(0.1, 4.0))
        elif shape == "inv-sqrt":
            kwargs["a"] = draw(st.floats(0.1, 100.0))
        elif shape == "power":
            kwargs.update(a=draw(st.floats(1e-3, 10.0)), b=draw(st.floats(-1.0, 0.5)), c=draw(st.floats(1e-4, 1.0)))
        span = length + draw(st.sampled_from([0, 0, 7]))
        phases.append(S.Phase(shape, length, v0, v1, span=span, **kwargs))
    return S.Schedule(tuple(phases), final_value=draw(st.floats(0.0, 1.0)))


@given(sched=random_schedules(), data=st.data())
def test_cpp_schedule_evaluator_matches_python_reference(sched, data):
    edges = [e + d for e in sched.edges for d in (-1, 0, 1) if e + d >= 0]
    extra = data.draw(st.lists(st.integers(0, max(sched.total + 10, 2**41)), max_size=20))
    near_2_40 = [2**40 + d for d in (-1, 0, 1, 12345)]
    steps = sorted(set(edges + extra + near_2_40 + [0]))
    ref = S.evaluate(sched, steps, backend="reference")
    got = S.evaluate(sched, steps, backend="cpu")
    assert got.dtype == torch.float32
    scale = ref.abs().max().item()
    err = (got.double() - ref).abs().max().item()
    assert err <= 2e-6 * scale, f"max |cpp - ref| = {err:.3g} > 2e-6 * {scale:.3g}"


def test_schedule_offset_inside_a_phase_is_exact_beyond_2_pow_40():
    # a linear phase starting at 2**40 + 3: p = (t - start) / span must come from the exact int64 offset
    start = 2**40 + 3
    sched = S.chain(S.Phase("constant", start, 1.0), S.Phase("linear", 1000, 0.0, 1.0), final_value=1.0)
    steps = torch.tensor([start - 1, start, start + 1, start + 500, start + 999, start + 1000], dtype=torch.int64)
    got = S.evaluate(sched, steps, backend="cpu")
    want = torch.tensor([1.0, 0.0, 1e-3, 0.5, 0.999, 1.0], dtype=torch.float32)
    assert torch.equal(got, want)


# ------------------------------------------------------------------------------------------------------
# GradScaler protocol, telemetry, the clock
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["adamw", "lamb"])
def test_found_inf_skips_the_update_and_the_clock(kind):
    prob = Problem([100, 7, 0], torch.float32, torch.float32, False, init_steps=[4, 4, 4])
    tables = S.encode_tables([S.linear(1e-2, 20, warmup_steps=5)])
    hparams = [hp_row(kind)]
    clock = torch.tensor([3, 11], dtype=torch.int64)
    before = _snapshot(prob)
    grads, o_grads = prob.new_grads()
    found = torch.ones(1)
    ctx = context(tables, hparams, clock, found_inf=found)
    norms, o_norms = torch.full((3, 3), -1.0), torch.full((3, 3), -1.0)
    be = CpuBackend()
    if kind == "adamw":
        be.adamw(prob.ours(grads), ctx, amsgrad=False)
    else:
        be.lamb(prob.ours(grads), ctx, norms_out=norms, clip_div=None, allreduce=None)
        REF.lamb(prob.oracle(o_grads), context(tables, hparams, clock.clone(), found_inf=found), norms_out=o_norms,
                 clip_div=None, allreduce=None)
        assert max_rel_err(norms, o_norms) <= 1e-5, "telemetry is still written on a skipped step"
    lr_out = torch.zeros(1)
    be.advance(ctx, prob.steps, lr_out, torch.tensor([64]))
    _assert_bit_identical(before, _snapshot(prob), "skipped step")
    assert prob.steps.tolist() == [4.0, 4.0, 4.0]
    assert clock.tolist() == [3, 11]
    assert lr_out.item() == pytest.approx(S.linear(1e-2, 20, warmup_steps=5)(3), rel=1e-6)
    found.zero_()  # same buffers, no skip: everything moves
    be.advance(ctx, prob.steps, lr_out, torch.tensor([64]))
    assert prob.steps.tolist() == [5.0, 5.0, 5.0] and clock.tolist() == [4, 75]


@pytest.mark.parametrize("kind", ["adamw", "lamb"])
@pytest.mark.parametrize("scale", [1024.0, 3.0])
def test_grad_scale_divides_the_gradients(kind, scale):
    sizes = [300, 5]
    prob = Problem(sizes, torch.float32, torch.float32, False)
    tables = S.encode_tables([S.constant(1e-2)])
    hparams = [hp_row(kind, wd=0.05)]
    gs = torch.tensor([scale])
    for _ in range(5):
        grads, o_grads = prob.new_grads()
        scaled = [g * scale for g in grads]
        clock = torch.zeros(2, dtype=torch.int64)
        if kind == "adamw":
            CpuBackend().adamw(prob.ours(scaled), context(tables, hparams, clock, grad_scale=gs), amsgrad=False)
            REF.adamw(prob.oracle(o_grads), context(tables, hparams, clock), amsgrad=False)
        else:
            n1, n2 = torch.zeros(2, 3), torch.zeros(2, 3)
            CpuBackend().lamb(prob.ours(scaled), context(tables, hparams, clock, grad_scale=gs), norms_out=n1,
                              clip_div=None, allreduce=None)
            REF.lamb(prob.oracle(o_grads), context(tables, hparams, clock), norms_out=n2, clip_div=None,
                     allreduce=None)
    prob.check_close(1e-5, f"{kind} grad_scale={scale}")


def test_grad_sumsq_matches_float64_sum():
    sizes = [CHUNK + 5, 0, 33, 1000]
    g = torch.Generator().manual_seed(3)
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        grads = [(torch.randn(k, generator=g) * 8).to(dtype) for k in sizes]
        prob = Problem(sizes, dtype, torch.float64 if dtype == torch.float64 else torch.float32, False)
        batch = prob.ours(grads)
        tables = S.encode_tables([S.constant(1.0)])
        for scale in (None, 8.0):
            ctx = context(tables, [hp_row("lamb")], torch.zeros(2, dtype=torch.int64),
                          grad_scale=None if scale is None else torch.tensor([scale]))
            got = CpuBackend().grad_sumsq(batch, ctx)
            want = sum(float((gr.double() / (scale or 1.0)).pow(2).sum()) for gr in grads)
            assert got.dtype == torch.float32 and got.shape == ()
            assert got.item() == pytest.approx(want, rel=1e-6)


def test_sharded_lamb_through_allreduce_matches_the_whole_tensors():
    """Two shards updated in two threads, summing their partial norms in ``allreduce``, give the update of
    the unsharded tensors (the trust ratio uses whole-tensor norms); a rank whose shard of a tensor is
    empty still reports that tensor's whole norms."""
    sizes = [1000, 37, 2 * CHUNK + 9, 2]
    whole = Problem(sizes, torch.float32, torch.float32, False, seed=5)
    tables = S.encode_tables([S.constant(1e-2)])
    hparams = [hp_row("lamb", wd=0.1)]
    grads, _ = whole.new_grads()
    cut = [k // 3 for k in sizes]
    shards = []
    for lo_hi in (lambda k, c: (0, c), lambda k, c: (c, k)):
        rng = [lo_hi(k, c) for k, c in zip(sizes, cut)]
        sl = lambda ts: [t[a:b].clone() for t, (a, b) in zip(ts, rng)]  # noqa: E731
        shards.append(TensorBatch(sl(whole.params), sl(grads), sl(whole.m), sl(whole.v), None, None,
                                  whole.group_index.clone(), whole.steps.clone()))
    barrier = threading.Barrier(2)
    box: dict[int, torch.Tensor] = {}

    def allreduce_for(rank):
        def allreduce(sums):
            box[rank] = sums.clone()
            barrier.wait()
            sums.copy_(box[0] + box[1])
            barrier.wait()
        return allreduce

    n = len(sizes)
    norms = [torch.zeros(n, 3), torch.zeros(n, 3)]
    errors = []

    def run(rank):
        try:
            CpuBackend(threads=1).lamb(shards[rank], context(tables, hparams, torch.zeros(2, dtype=torch.int64)),
                                       norms_out=norms[rank], clip_div=None, allreduce=allreduce_for(rank))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    whole_norms = torch.zeros(n, 3)
    CpuBackend().lamb(whole.ours(grads), context(tables, hparams, torch.zeros(2, dtype=torch.int64)),
                      norms_out=whole_norms, clip_div=None, allreduce=None)
    assert torch.allclose(norms[0], whole_norms, rtol=1e-6) and torch.equal(norms[0], norms[1])
    assert shards[0].params[3].numel() == 0 and norms[0][3, L.NORM_PARAM] > 0
    for i in range(n):
        joined = torch.cat([shards[0].params[i], shards[1].params[i]])
        assert max_rel_err(joined, whole.params[i]) <= 1e-6


# ------------------------------------------------------------------------------------------------------
# dtypes, the registry, the optimizers, the OpenMP runtime
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pdtype,sdtype", [(torch.float64, torch.float32), (torch.float16, torch.bfloat16),
                                           (torch.float64, torch.bfloat16)])
def test_unsupported_dtype_combinations_raise_backend_unavailable(pdtype, sdtype):
    with pytest.raises(BackendUnavailable, match=str(pdtype)) as info:
        CpuBackend().check(torch.device("cpu"), pdtype, sdtype)
    assert str(sdtype) in str(info.value)


def test_cpu_backend_rejects_cuda_devices():
    with pytest.raises(BackendUnavailable, match="CPU"):
        CpuBackend().check(torch.device("cuda"), torch.float32, torch.float32)


def test_auto_selects_cpu_for_cpu_tensors():
    from lrsched_fused.backends import select_backend

    assert select_backend("auto", torch.device("cpu")).name == "cpu"


@pytest.mark.parametrize("amsgrad", [False, True])
def test_fused_adamw_on_cpu_backend_tracks_torch_adamw(amsgrad):
    from lrsched_fused import FusedAdamW

    g = torch.Generator().manual_seed(0)
    shapes = [(33, 7), (1,), (513,), (4, 4, 4)]
    ours = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    opt = FusedAdamW(ours, lr=3e-3, weight_decay=0.1, amsgrad=amsgrad, backend="cpu")
    topt = torch.optim.AdamW(theirs, lr=3e-3, weight_decay=0.1, amsgrad=amsgrad)
    for _ in range(20):
        for a, b in zip(ours, theirs):
            a.grad = torch.randn(a.shape, generator=g)
            b.grad = a.grad.clone()
        opt.step()
        topt.step()
    for a, b in zip(ours, theirs):
        assert max_rel_err(a, b) <= 1e-6
    assert opt.state[ours[0]]["step"].item() == 20.0


def test_fused_lamb_on_cpu_backend_matches_reference_backend():
    from lrsched_fused import FusedLAMB

    g = torch.Generator().manual_seed(1)
    shapes = [(64, 9), (9,), (3, 3)]
    a = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    sched = S.wsd(1e-2, 30, warmup_steps=5, decay_fraction=0.3)
    oa = FusedLAMB(a, lr=sched, weight_decay=0.01, max_grad_norm=1.0, backend="cpu")
    ob = FusedLAMB(b, lr=sched, weight_decay=0.01, max_grad_norm=1.0, backend="reference")
    for _ in range(30):
        for x, y in zip(a, b):
            x.grad = torch.randn(x.shape, generator=g)
            y.grad = x.grad.clone()
        oa.step()
        ob.step()
    for x, y in zip(a, b):
        assert max_rel_err(x, y) <= 1e-5
    ta, tb = oa.telemetry(), ob.telemetry()
    for key in ("trust_ratio", "param_norm", "update_norm", "lr", "grad_norm"):
        assert max_rel_err(ta[key], tb[key]) <= 1e-5, key


def test_lamb_with_bf16_states_uses_the_stored_moments():
    """FusedLAMB on the CPU backend with fp32 params and bf16 moments forms its update from the moments as
    stored: it follows ``run_lamb(..., state_storage=torch.bfloat16)`` over 20 steps of a WSD schedule
    (``||update - ref|| <= BF16_STATE_TOL ||ref||``, see test_optim_lamb.py), agrees with the reference
    backend to float32 rounding (both compute in float32 and round the same moments), and the check has
    teeth: r from the fresh moments misses the reference by more than three times the tolerance."""
    from test_optim_lamb import (BF16_STATE_SCHED, BF16_STATE_TOL, bf16_state_problem, fresh_moment_lamb,
                                 run_bf16_state_lamb, update_rel_err)

    from lrsched_fused import reference as R

    hp = dict(weight_decay=0.05, decoupled_decay=True, max_grad_norm=20.0)
    params0, grads = bf16_state_problem(seed=1)
    ref = R.run_lamb(params0, grads, lr=BF16_STATE_SCHED, state_storage=torch.bfloat16, **hp).params
    fresh = fresh_moment_lamb(params0, grads, BF16_STATE_SCHED, **hp)
    assert update_rel_err(fresh, ref, params0) > 3 * BF16_STATE_TOL
    ours = run_bf16_state_lamb("cpu", params0, grads, **hp)
    err = update_rel_err(ours, ref, params0)
    assert err <= BF16_STATE_TOL, f"update differs from the stored-moment reference by {err:.3g}"
    theirs = run_bf16_state_lamb("reference", params0, grads, **hp)
    for a, b in zip(ours, theirs):
        assert max_rel_err(a, b) <= 1e-6


def test_extension_shares_torchs_openmp_runtime():
    code = ("import torch, lrsched_fused.backends.cpu as c, re;"
            "maps = open('/proc/self/maps').read();"
            "print(sorted(set(re.findall(r'\\S*(?:libgomp|libomp|libiomp)\\S*', maps))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    libs = ast.literal_eval(out)
    assert len(libs) == 1, f"more than one OpenMP runtime loaded: {libs}"
