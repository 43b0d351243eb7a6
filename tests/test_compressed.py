"""Compressed optimizer state (issue 15), the optimizer side and the ``reference`` backend: int8 moments,
compact master weights, stochastic rounding, checkpoints, the memory table, the gradient-norm history.

The oracle is a float64 AdamW loop that stores its moments through ``lrsched_fused.reference.quant`` (the
emulation of ``docs/compressed_state.md``). Tolerances (one table):

==========================  ===================================================================
quantity                    bound after ``STEPS`` steps
==========================  ===================================================================
parameters                  ``max|p - ref| <= 1e-4 max|ref|`` (a code may flip where the oracle's
                            float64 moment is within float32 rounding of a boundary)
int8 / uint8 codes          differ by at most 1, in at most 1% of the elements
block scales                relative 1e-5
==========================  ===================================================================

The C++ and Triton backends have their own files (``tests/test_cpu_compressed.py``,
``tests/test_triton_compressed.py``) against the same emulation.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from helpers import backends_on_cpu, max_rel_err
from lrsched_fused import FusedAdamW, FusedLAMB, checkpoint as C, schedules as S
from lrsched_fused.reference import quant as Q

STEPS = 8
SCHED = S.wsd(peak_lr=1e-2, total_steps=20, warmup_steps=2, decay_steps=5, final_lr=1e-4)
PARAM_RTOL = 1e-4


def _params(shapes, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter((torch.randn(s, generator=gen) * torch.logspace(-2, 1, s[-1])).to(dtype)) for s in shapes]


def _grads(shapes, k):
    gen = torch.Generator().manual_seed(1000 + k)
    return [torch.randn(s, generator=gen) * torch.logspace(-3, 1, s[-1]) for s in shapes]


def _oracle_adamw(start, grads, *, block, lr, wd=0.1, b1=0.9, b2=0.999, eps=1e-8):
    """float64 AdamW whose moments are stored as int8 / uint8 codes with block scales between steps."""
    params = [p.detach().double().clone() for p in start]
    store = [(Q.encode_m(torch.zeros_like(p), block), Q.encode_v(torch.zeros_like(p), block)) for p in params]
    for k, step_grads in enumerate(grads):
        t = k + 1
        lr_k = lr(k)
        for i, (p, g) in enumerate(zip(params, step_grads)):
            (mc, ms), (vc, vs) = store[i]
            m, v = Q.decode_m(mc, ms, block).double(), Q.decode_v(vc, vs, block).double()
            g = g.double()
            p.mul_(1 - lr_k * wd)
            m = m + (g - m) * (1 - b1)
            v = v * b2 + (1 - b2) * g * g
            p.sub_((lr_k / (1 - b1 ** t)) * m / (v.sqrt() / math.sqrt(1 - b2 ** t) + eps))
            store[i] = (Q.encode_m(m, block), Q.encode_v(v, block))
    return params, store


SHAPES = [(3, 300), (17, 64), (2, 5, 33), (1, 1000)]  # a row longer than a block, short rows, 3-d, one row


@pytest.mark.parametrize("block", [64, 256])
def test_reference_backend_int8_adamw_matches_the_emulation(block):
    params = _params(SHAPES)
    start = [p.detach().clone() for p in params]
    grads = [_grads(SHAPES, k) for k in range(STEPS)]
    opt = FusedAdamW(params, lr=SCHED, weight_decay=0.1, backend="reference", state_dtype="int8", quant_block=block,
                     quant_min_numel=1)
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        opt.step()
    ref, store = _oracle_adamw(start, grads, block=block, lr=SCHED)
    for i, (p, r) in enumerate(zip(params, ref)):
        assert max_rel_err(p, r) <= PARAM_RTOL, f"param {i}"
        st_ = opt.state[p]
        (mc, ms), (vc, vs) = store[i]
        for got, want in ((st_["exp_avg"], mc), (st_["exp_avg_sq"], vc)):
            diff = (got.to(torch.int32) - want.to(torch.int32)).abs()
            assert int(diff.max()) <= 1 and float((diff > 0).float().mean()) <= 0.01
        assert max_rel_err(st_["exp_avg_scale"], ms) <= 1e-5 and max_rel_err(st_["exp_avg_sq_scale"], vs) <= 1e-5


# ---------------------------------------------------------------------------------------------------------
# the codec's properties
# ---------------------------------------------------------------------------------------------------------
magnitudes = st.sampled_from([1e-30, 1e-12, 1e-3, 1.0, 1e6, 1e30])
root_magnitudes = st.sampled_from([1e-18, 1e-6, 1e-3, 1.0, 1e6, 1e18])  # v = r^2 within float32's range


@settings(deadline=None)
@given(rows=st.integers(0, 4), d=st.integers(1, 600), block=st.sampled_from([32, 64, 256]), scale=magnitudes,
       root=root_magnitudes, zero_rows=st.booleans(), seed=st.integers(0, 100))
def test_codec_bounds_and_zero_point(rows, d, block, scale, root, zero_rows, seed):
    gen = torch.Generator().manual_seed(seed)
    m = torch.randn(rows, d, generator=gen, dtype=torch.float64) * scale
    r = torch.randn(rows, d, generator=gen, dtype=torch.float64) * root
    r = r * torch.rand(rows, d, generator=gen, dtype=torch.float64) ** 4  # spread within each block
    if zero_rows and rows:
        m[0] = 0.0  # all-zero blocks
        r[0] = 0.0
    v = r * r
    mc, ms = Q.encode_m(m, block)
    vc, vs = Q.encode_v(v, block)
    assert mc.shape == m.shape and ms.shape == (rows, -(-d // block)) and mc.dtype == torch.int8
    dm = Q.decode_m(mc, ms, block).double()
    # |error| <= half a step of its block (plus float32 rounding of the values)
    step = torch.repeat_interleave(ms.double(), block, dim=-1)[..., :d] / 127
    assert bool(((dm - m).abs() <= 0.5 * step * (1 + 1e-5) + m.abs() * 2e-7).all())
    # a nonzero v never decodes to zero; a zero v decodes to zero
    dv = Q.decode_v(vc, vs, block).double()
    assert bool(((v.float() > 0) <= (dv > 0)).all()) and bool((dv[v == 0] == 0).all())
    assert not bool(ms[m.abs().amax(-1) == 0].any()) if rows else True


def test_update_is_bounded_where_v_is_tiny_in_its_block():
    """The zero-point problem: one huge gradient long ago keeps its element's v (and so the block's v scale)
    large for ~1/(1 - b2) steps while its m has long decayed, so the other elements' m codes are nonzero
    and their true sqrt(v) is far below one step of the block's code. If such a v decoded to 0, the step
    would be ~ lr * m / eps. With codes >= 1 for nonzero v every step stays within the exact algorithm's
    bound lr * (1 - b1) / sqrt(1 - b2) (Kingma & Ba, section 2.1); the naive code (round to nearest, zero
    allowed) on the same state gives a step over 10^4 times larger."""
    lr, b1, b2, eps, steps = 1e-3, 0.9, 0.999, 1e-8, 100
    p = torch.nn.Parameter(torch.zeros(1, 256))
    opt = FusedAdamW([p], lr=lr, betas=(b1, b2), eps=eps, weight_decay=0.0, backend="reference",
                     state_dtype="int8", quant_min_numel=1)
    bound = lr * (1 - b1) / math.sqrt(1 - b2)
    v = torch.zeros(1, 256, dtype=torch.float64)  # the exact second moment, for the naive code below
    worst = 0.0
    for t in range(1, steps + 1):
        g = torch.full((1, 256), 1e-3)
        g[0, 0] = 1e3 if t == 1 else 0.0
        v = b2 * v + (1 - b2) * g.double() ** 2
        before = p.detach().clone()
        p.grad = g
        opt.step()
        worst = max(worst, float((p.detach() - before).abs().max()))
    state = opt.state[p]
    assert int(state["exp_avg"][0, 1]) != 0 and int(state["exp_avg_sq"][0, 1]) == 1  # the case in question
    assert worst <= bound
    m = Q.decode_m(state["exp_avg"], state["exp_avg_scale"], 256).double()
    s = v.sqrt().amax()
    naive = torch.round(v.sqrt() / s * 255) * s / 255
    naive_step = lr * (m / (1 - b1**steps)) / (naive / math.sqrt(1 - b2**steps) + eps)
    assert float(naive_step.abs().max()) > 1e4 * bound


# ---------------------------------------------------------------------------------------------------------
# compact master weights, stochastic rounding
# ---------------------------------------------------------------------------------------------------------
def _train(opt, params, shapes, steps, start=0):
    for k in range(start, start + steps):
        for p, g in zip(params, _grads(shapes, k)):
            p.grad = g.to(p.dtype)
        opt.step()


@pytest.mark.parametrize("kind", ["adamw", "lamb"])
def test_compact16_is_exactly_fp32_masters_for_bf16(kind):
    shapes = [(8, 70), (33,)]
    cls = FusedAdamW if kind == "adamw" else FusedLAMB
    a, b = _params(shapes, torch.bfloat16), _params(shapes, torch.bfloat16)
    full = cls(a, lr=SCHED, backend="reference", master_weights=True)
    compact = cls(b, lr=SCHED, backend="reference", master_weights="compact", master_bits=16)
    _train(full, a, shapes, STEPS)
    _train(compact, b, shapes, STEPS)
    for p, q in zip(a, b):
        master = Q.compact_decode(q.detach(), compact.state[q]["master_correction"], 16)
        assert torch.equal(master, full.state[p]["master_param"])
        # the parameter is the master rounded to nearest (even; the neighbour up on the one tie)
        assert float((q.detach().float() - master).abs().max()) <= float(master.abs().max()) * 2 ** -8


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_compact8_keeps_16_more_bits_and_the_param_is_rne_of_the_master(dtype):
    shapes = [(8, 70)]
    a, b = _params(shapes, dtype), _params(shapes, dtype)
    full = FusedAdamW(a, lr=1e-3, backend="reference", master_weights=True)
    compact = FusedAdamW(b, lr=1e-3, backend="reference", master_weights="compact")
    _train(full, a, shapes, STEPS)
    _train(compact, b, shapes, STEPS)
    master = Q.compact_decode(b[0].detach(), compact.state[b[0]]["master_correction"], 8)
    ref = full.state[a[0]]["master_param"]
    assert max_rel_err(master, ref) <= (2e-4 if dtype == torch.bfloat16 else 2e-5)
    assert torch.equal(b[0].detach(), master.to(dtype))  # p = RNE(master)
    # bf16 alone (no master) drifts much further from the fp32-master run
    alone = _params(shapes, dtype)
    plain = FusedAdamW(alone, lr=1e-3, backend="reference")
    _train(plain, alone, shapes, STEPS)
    assert max_rel_err(alone[0].float(), ref) > 5 * max_rel_err(master, ref)


def test_an_edited_parameter_resets_its_correction():
    p = _params([(4, 50)], torch.bfloat16)[0]
    opt = FusedAdamW([p], lr=1e-2, backend="reference", master_weights="compact")
    _train(opt, [p], [(4, 50)], 3)
    assert opt.state[p]["master_correction"].abs().sum() > 0
    with torch.no_grad():
        p.add_(1.0)  # changed outside the optimizer
    _train(opt, [p], [(4, 50)], 1, start=3)
    # the step started from the edited p with a zero correction: p = RNE(p_edited - update) exactly
    assert opt.state[p]["master_correction"].abs().max() <= 127


def test_stochastic_rounding_is_unbiased_and_a_resume_is_exact():
    shapes = [(16, 128)]
    a = _params(shapes, torch.bfloat16)
    opt = FusedAdamW(a, lr=1e-3, backend="reference", state_dtype=torch.bfloat16, stochastic_rounding=True)
    _train(opt, a, shapes, 4)
    sd = copy.deepcopy(opt.state_dict())
    snap = [p.detach().clone() for p in a]
    _train(opt, a, shapes, 3, start=4)
    b = [torch.nn.Parameter(t.clone()) for t in snap]
    again = FusedAdamW(b, lr=1e-3, backend="reference", state_dtype=torch.bfloat16, stochastic_rounding=True)
    again.load_state_dict(sd)
    _train(again, b, shapes, 3, start=4)
    assert torch.equal(a[0], b[0]) and torch.equal(opt.state[a[0]]["exp_avg"], again.state[b[0]]["exp_avg"])
    # unbiased: the mean of SR(x) over many elements is x
    x = torch.full((200_000,), 1.0 + 2 ** -10)
    r = Q.round_bf16_stochastic(x, torch.arange(x.numel()), clock=5, salt=0, stream=0)
    assert abs(float(r.float().mean()) - float(x[0])) < 2e-5
    assert set(r.float().unique().tolist()) == {1.0, 1.0078125}


# ---------------------------------------------------------------------------------------------------------
# checkpoints and memory
# ---------------------------------------------------------------------------------------------------------
def test_int8_state_dicts_are_compact_round_trip_through_torch_and_resume_exactly():
    shapes = [(32, 300), (7,)]
    a = _params(shapes)
    make = lambda ps: FusedAdamW(ps, lr=SCHED, backend="reference", state_dtype="int8", quant_min_numel=1000)  # noqa
    opt = make(a)
    _train(opt, a, shapes, 4)
    sd = copy.deepcopy(opt.state_dict())
    st0 = sd["state"][0]
    assert st0["exp_avg"].dtype == torch.int8 and st0["exp_avg_sq"].dtype == torch.uint8
    assert st0["exp_avg_scale"].shape == (32, 2) and sd["state"][1]["exp_avg"].dtype == torch.float32  # 1-d: fp32
    torch_sd = C.to_torch(sd)
    assert all(v.dtype != torch.int8 for v in torch_sd["state"][0].values())
    plain = torch.optim.AdamW([torch.nn.Parameter(p.detach().clone()) for p in a])
    plain.load_state_dict(torch_sd)
    back = C.from_torch(plain.state_dict(), quant_min_numel=1000)
    # decode -> re-encode keeps every code; a scale may move by float32 rounding (s/255*255, sqrt(r^2))
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(back["state"][0][key], st0[key]), key
    for key in ("exp_avg_scale", "exp_avg_sq_scale"):
        assert max_rel_err(back["state"][0][key], st0[key]) <= 2 * 2.0**-23, key
    snap = [p.detach().clone() for p in a]
    _train(opt, a, shapes, 3, start=4)
    b = [torch.nn.Parameter(t.clone()) for t in snap]
    again = make(b)
    again.load_state_dict(sd)
    _train(again, b, shapes, 3, start=4)
    assert all(torch.equal(p, q) for p, q in zip(a, b))


CONFIGS = {
    "bf16 params, fp32 moments": dict(),
    "bf16 params, fp32 masters": dict(master_weights=True),
    "bf16 params, bf16 moments": dict(state_dtype=torch.bfloat16),
    "bf16 params, int8 moments": dict(state_dtype="int8"),
    "bf16 params, int8 moments, compact masters": dict(state_dtype="int8", master_weights="compact"),
    "bf16 params, int8 moments, compact16 masters": dict(state_dtype="int8", master_weights="compact", master_bits=16),
}
EXPECTED = {"bf16 params, fp32 moments": 10.0, "bf16 params, fp32 masters": 14.0, "bf16 params, bf16 moments": 6.0,
            "bf16 params, int8 moments": 4.0, "bf16 params, int8 moments, compact masters": 5.0,
            "bf16 params, int8 moments, compact16 masters": 6.0}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_state_bytes_per_parameter(name):
    """The README's memory table, measured from the real tensors (grads excluded; block scales add
    4 / quant_block bytes per parameter)."""
    shapes = [(256, 512), (256, 512)]
    params = _params(shapes, torch.bfloat16)
    opt = FusedAdamW(params, lr=1e-3, backend="reference", **CONFIGS[name])
    _train(opt, params, shapes, 1)
    got = opt.state_bytes()
    assert got["per_param_without_grads"] == pytest.approx(EXPECTED[name] + (4 * 2 / 256 if "int8" in name else 0),
                                                           abs=0.01)
    assert got["grads"] == 2 * 256 * 512 * 2


def test_telemetry_history_records_the_gradient_norms_of_applied_steps():
    shapes = [(5, 40), (9,)]
    params = _params(shapes)
    opt = FusedLAMB(params, lr=1e-3, backend="reference", telemetry_history=4)
    want = {}
    for k in range(7):
        grads = _grads(shapes, k)
        if k == 3:
            grads[1][0] = float("inf")  # a skipped step (skip via GradScaler protocol below)
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.found_inf = torch.ones(1) if k == 3 else torch.zeros(1)
        opt.step()
        if k != 3:
            flat = torch.cat([g.reshape(-1).double() for g in grads])
            want[len(want)] = (float(flat.norm()), float(flat.abs().sum()))
    hist = opt.telemetry_history()
    assert hist["step"].tolist() == [2, 3, 4, 5]  # the ring holds the last 4 applied steps
    for s, l2, l1 in zip(hist["step"].tolist(), hist["grad_norm_l2"].tolist(), hist["grad_norm_l1"].tolist()):
        assert l2 == pytest.approx(want[s][0], rel=1e-6) and l1 == pytest.approx(want[s][1], rel=1e-6)



def _history_run(opt, params, shapes, ks):
    for k in ks:
        for p, g in zip(params, _grads(shapes, k)):
            p.grad = g.clone()
        opt.step()


def test_telemetry_history_survives_the_optimizers_own_state_dict():
    """A resume through the optimizer's state dict (torch.save / torch.load(weights_only=True)) keeps the
    whole run's history: the resumed run reports exactly the uninterrupted run's rows."""
    import io
    shapes = [(5, 40), (9,)]
    whole, first = _params(shapes), _params(shapes)
    opt_whole = FusedLAMB(whole, lr=1e-3, backend="reference", telemetry_history=6)
    _history_run(opt_whole, whole, shapes, range(5))
    opt_first = FusedLAMB(first, lr=1e-3, backend="reference", telemetry_history=6)
    _history_run(opt_first, first, shapes, range(3))
    buf = io.BytesIO()
    torch.save(opt_first.state_dict(), buf)
    buf.seek(0)
    resumed_params = [p.detach().clone().requires_grad_() for p in first]
    resumed = FusedLAMB(resumed_params, lr=1e-3, backend="reference", telemetry_history=6)
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    assert resumed.telemetry_history()["step"].tolist() == [0, 1, 2]  # readable before the next step
    _history_run(resumed, resumed_params, shapes, range(3, 5))
    got, want = resumed.telemetry_history(), opt_whole.telemetry_history()
    assert got["step"].tolist() == want["step"].tolist() == [0, 1, 2, 3, 4]
    for key in ("grad_norm_l2", "grad_norm_l1"):
        assert torch.equal(got[key], want[key]), key


def test_telemetry_history_after_a_load_without_rows_reports_only_the_steps_it_saw():
    """A torch state dict (or DCP, or another capacity) carries no rows: the history restarts at the loaded
    clock and never reports zero rows for steps it did not see."""
    shapes = [(5, 40), (9,)]
    params = _params(shapes)
    opt = FusedLAMB(params, lr=1e-3, backend="reference", telemetry_history=8)
    _history_run(opt, params, shapes, range(3))
    sd = opt.state_dict()
    del sd["lrsched_fused"]["telemetry_history"]
    other = FusedLAMB(params, lr=1e-3, backend="reference", telemetry_history=8)
    other.load_state_dict(sd)
    assert other.telemetry_history()["step"].tolist() == []
    _history_run(other, params, shapes, range(3, 5))
    hist = other.telemetry_history()
    assert hist["step"].tolist() == [3, 4]
    assert (hist["grad_norm_l2"] > 0).all()
    # another capacity: the rows do not fit the ring and are dropped the same way
    small = FusedLAMB(params, lr=1e-3, backend="reference", telemetry_history=2)
    small.load_state_dict(opt.state_dict())
    assert small.telemetry_history()["step"].tolist() == []


def test_telemetry_history_rows_of_the_wrong_shape_are_refused_before_anything_changes():
    shapes = [(5, 40), (9,)]
    params = _params(shapes)
    opt = FusedLAMB(params, lr=1e-3, backend="reference", telemetry_history=4)
    _history_run(opt, params, shapes, range(2))
    sd = opt.state_dict()
    sd["lrsched_fused"]["telemetry_history"] = torch.zeros(4, 7)
    before = opt.telemetry_history()
    with pytest.raises(ValueError, match="telemetry_history"):
        opt.load_state_dict(sd)
    after = opt.telemetry_history()
    assert after["step"].tolist() == before["step"].tolist() == [0, 1]
    assert torch.equal(after["grad_norm_l2"], before["grad_norm_l2"])


# ---------------------------------------------------------------------------------------------------------
# every backend, through the optimizer, against the reference backend
# ---------------------------------------------------------------------------------------------------------
BACKEND_CONFIGS = {
    "int8 moments": (torch.float32, dict(state_dtype="int8", quant_min_numel=1)),
    "compact8": (torch.bfloat16, dict(master_weights="compact")),
    "compact16": (torch.bfloat16, dict(master_weights="compact", master_bits=16)),
    "bf16 moments, stochastic rounding": (torch.bfloat16, dict(state_dtype=torch.bfloat16, stochastic_rounding=True)),
    "int8 moments, compact8": (torch.bfloat16, dict(state_dtype="int8", master_weights="compact", quant_min_numel=1)),
}
MIXED_SHAPES = [(4, 300), (3, 70), (5,), (0, 4), (600,)]  # across and within blocks, empty, 1-d


def _master_of(opt, p):
    """The master value a parameter stands for: the fp32 master, or the parameter plus its correction."""
    return C.master_value(p, opt.state[p])


def test_master_value_is_the_weight_each_master_option_stands_for():
    """``checkpoint.master_value``: the fp32 master itself, the bf16 parameter plus its correction (16-bit:
    exactly the fp32 master an identical run keeps; 8-bit, after one step from bf16 weights: the fp32
    master rounded to 16 significant bits, so within half a correction step, 2**-16 of the value), or the
    parameter when there is no master."""
    shapes = [(6, 300)]
    runs = {}
    for name, options in (("fp32", dict(master_weights=True)), ("c16", dict(master_weights="compact", master_bits=16)),
                          ("c8", dict(master_weights="compact")), ("none", {})):
        params = _params(shapes, torch.bfloat16)
        opt = FusedAdamW(params, lr=1e-3, backend="reference", **options)
        _train(opt, params, shapes, 1)
        runs[name] = C.master_value(params[0], opt.state[params[0]])
        assert runs[name].dtype == torch.float32
        if name == "none":
            assert torch.equal(runs[name], params[0].detach().float())
    assert torch.equal(runs["c16"], runs["fp32"])
    assert bool(((runs["c8"] - runs["fp32"]).abs() <= runs["fp32"].abs() * 2.0 ** -16).all())
    assert not torch.equal(runs["c8"], runs["none"])  # the correction carries bits the parameter lacks


@pytest.mark.parametrize("backend", [b for b in backends_on_cpu() if b != "reference"])
@pytest.mark.parametrize("config", list(BACKEND_CONFIGS))
@pytest.mark.parametrize("kind", ["adamw", "lamb"])
def test_backends_match_the_reference_backend_through_the_optimizer(kind, config, backend):
    """Same steps on ``backend`` and on ``reference``: masters agree to float32 rounding of the update
    (1e-6 of the largest; 1e-5 with int8 moments, where a moment within rounding of a code boundary may
    flip its code by one, moving that element's update by up to lr / 127), a 16-bit parameter by at most
    one unit in its last place (RNE of masters that differ by rounding), int8 codes by at most 1 in at most
    1% of elements, and the gradient-norm history to float32 summation order (1e-6)."""
    dtype, options = BACKEND_CONFIGS[config]
    cls = FusedAdamW if kind == "adamw" else FusedLAMB
    runs = {}
    for name in ("reference", backend):
        params = _params(MIXED_SHAPES, dtype)
        opt = cls(params, lr=SCHED, weight_decay=0.1, backend=name, telemetry_history=8, **options)
        _train(opt, params, MIXED_SHAPES, 4)
        runs[name] = (params, opt)
    (ref_params, ref_opt), (params, opt) = runs["reference"], runs[backend]
    for p, q in zip(params, ref_params):
        if not q.numel():
            continue
        master_tol = 1e-5 if options.get("state_dtype") == "int8" else 1e-6
        assert max_rel_err(_master_of(opt, p), _master_of(ref_opt, q)) <= master_tol
        if dtype == torch.bfloat16:
            ulp = q.detach().float().abs() * 2.0 ** -7
            assert bool(((p.detach().float() - q.detach().float()).abs() <= ulp).all())
        for key in ("exp_avg", "exp_avg_sq"):
            a, b = opt.state[p][key], ref_opt.state[q][key]
            if a.dtype in (torch.int8, torch.uint8):
                diff = (a.int() - b.int()).abs()
                assert int(diff.max()) <= 1 and float((diff > 0).float().mean()) <= 0.01, key
    got, want = opt.telemetry_history(), ref_opt.telemetry_history()
    assert torch.equal(got["step"], want["step"]) and got["step"].tolist() == [0, 1, 2, 3]
    for key in ("grad_norm_l2", "grad_norm_l1"):
        assert max_rel_err(got[key], want[key]) <= 1e-6, key
