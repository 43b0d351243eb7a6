"""The float64 references themselves (``lrsched_fused.reference``), checked against torch and against
closed forms, so that the optimizer tests compare to something trustworthy.

* ``run_adamw`` equals ``torch.optim.AdamW`` (for-loop path, float64) driven by ``LambdaLR`` to ~1e-12,
  with amsgrad, maximize, several param groups, ``lr_scale`` and missing gradients.
* ``lamb_step`` equals LAMB's first step written in closed form (``m_hat = g``, ``v_hat = g^2``), and
  keeps LAMB's defining invariant ``||update|| = lr * ||w||`` whenever the ratio is not clamped.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lrsched_fused import reference as R
from lrsched_fused import schedules as S

SCHED = S.wsd(5e-2, total_steps=20, warmup_steps=4, decay_steps=8, decay="cosine", init_lr=5e-3, final_lr=1e-3)


def random_problem(shapes, steps: int, seed: int, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen, dtype=dtype) for s in shapes]
    grads = [[torch.randn(s, generator=gen, dtype=dtype) for s in shapes] for _ in range(steps)]
    return params, grads


def torch_adamw_run(groups, grads, schedules):
    """torch.optim.AdamW (for-loop implementation) with one LambdaLR lambda per group, in float64."""
    tgroups = []
    for g in groups:
        tg = {k: v for k, v in g.items() if k not in ("lr", "lr_scale")}
        tg["params"] = [torch.nn.Parameter(p.clone()) for p in g["params"]]
        tgroups.append(tg)
    opt = torch.optim.AdamW(tgroups, lr=1.0, foreach=False, fused=False)
    lambdas = [(lambda s, f=f, c=g.get("lr_scale", 1.0): c * f(s)) for f, g in zip(schedules, groups)]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambdas)
    flat = [p for g in opt.param_groups for p in g["params"]]
    for step_grads in grads:
        for p, g in zip(flat, step_grads):
            p.grad = None if g is None else g.clone()
        opt.step()
        sched.step()
    return [p.detach() for p in flat], opt


def max_rel(a, b) -> float:
    return max(float((x - y).abs().max() / y.abs().max().clamp_min(1e-300)) if y.numel() else 0.0
               for x, y in zip(a, b))


@pytest.mark.parametrize("amsgrad", [False, True], ids=["adamw", "amsgrad"])
@pytest.mark.parametrize("maximize", [False, True], ids=["minimize", "maximize"])
def test_run_adamw_equals_torch_adamw_with_lambda_lr(amsgrad, maximize):
    shapes = [(3, 5), (7,), (), (0,), (2, 1, 4)]
    params, grads = random_problem(shapes, steps=25, seed=1)
    groups = [dict(params=params[:2], lr=SCHED, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1),
              dict(params=params[2:], lr=SCHED, weight_decay=0.0, lr_scale=0.3)]
    for g in groups:
        g.update(amsgrad=amsgrad, maximize=maximize)
    ours = R.run_adamw(groups, grads)
    theirs, _ = torch_adamw_run([{k: v for k, v in g.items()} for g in groups], grads, [SCHED, SCHED])
    assert max_rel(ours.params, theirs) <= 1e-12
    assert ours.lrs == [[SCHED(k), 0.3 * SCHED(k)] for k in range(25)]


def test_run_adamw_skips_parameters_without_gradients_like_torch():
    shapes = [(4,), (2, 3)]
    params, grads = random_problem(shapes, steps=10, seed=2)
    for k in (1, 4, 5):
        grads[k][0] = None
    ours = R.run_adamw(params, grads, lr=SCHED)
    theirs, opt = torch_adamw_run([dict(params=params)], grads, [SCHED])
    assert max_rel(ours.params, theirs) <= 1e-12
    assert ours.states[0]["step"] == 7 and ours.states[1]["step"] == 10
    assert float(opt.state[opt.param_groups[0]["params"][0]]["step"]) == 7


def test_run_adamw_float_lr_and_callable_lr():
    params, grads = random_problem([(5,)], steps=6, seed=3)
    by_float = R.run_adamw(params, grads, lr=2e-3)
    by_callable = R.run_adamw(params, grads, lr=lambda k: 2e-3)
    assert torch.equal(by_float.params[0], by_callable.params[0])
    assert by_float.lrs == [[2e-3]] * 6


def test_run_adamw_does_not_modify_its_inputs():
    params, grads = random_problem([(5,)], steps=3, seed=4)
    before = params[0].clone()
    R.run_adamw(params, grads)
    assert torch.equal(params[0], before)


def test_token_clock_feeds_token_schedules():
    sched = S.power(0.02, 4.6, -0.51, total=10_000, warmup=1_000, unit="tokens")
    params, grads = random_problem([(3,)], steps=5, seed=5)
    tokens = [300, 300, 700, 2000, 10]
    run = R.run_adamw(params, grads, lr=sched, tokens=tokens)
    assert [lr for (lr,) in run.lrs] == [sched(n) for n in (0, 300, 600, 1300, 3300)]


def test_param_storage_rounds_after_every_update():
    params, grads = random_problem([(64,)], steps=4, seed=6)
    run = R.run_adamw(params, grads, lr=1e-2, param_storage=torch.bfloat16)
    assert torch.equal(run.params[0], run.params[0].to(torch.bfloat16).double())
    exact = R.run_adamw(params, grads, lr=1e-2)
    assert not torch.equal(exact.params[0], run.params[0])


@pytest.mark.parametrize("bad, name", [
    (lambda: R.run_adamw([torch.ones(2)], [[torch.ones(2)]], lrr=1.0), "lrr"),
    (lambda: R.run_adamw([torch.ones(2)], [[torch.ones(2), torch.ones(2)]]), "grads[0]"),
    (lambda: R.run_adamw([], []), "params"),
    (lambda: R.run_lamb([torch.ones(2)], [[torch.ones(2)]], max_grad_norm=0.0), "max_grad_norm"),
    (lambda: R.run_lamb([torch.ones(2)], [[torch.ones(2)]], tokens=[-1]), "tokens"),
    (lambda: R.lr_at("fast", 0), "lr"),
], ids=["unknown-hyperparameter", "grads-count", "no-params", "max_grad_norm-zero", "tokens-negative", "lr-type"])
def test_reference_rejects_bad_arguments(bad, name):
    with pytest.raises(ValueError, match=name.replace("[", r"\[").replace("]", r"\]")):
        bad()


# ---------------------------------------------------------------------------------------------------
# LAMB
# ---------------------------------------------------------------------------------------------------
def lamb_first_step(p, g, lr, eps, wd):
    """Step 1 of LAMB with bias correction: m_hat = g, v_hat = g^2, so r = g / (|g| + eps)."""
    r = g / (g.abs() + eps)
    u = r + wd * p
    ratio = p.norm() / u.norm()
    return p - lr * ratio * u, float(p.norm()), float(u.norm()), float(ratio)


def test_lamb_first_step_equals_its_closed_form():
    params, grads = random_problem([(4, 3), (5,)], steps=1, seed=7)
    run = R.run_lamb(params, grads, lr=1e-2, eps=1e-6, weight_decay=0.05)
    for j, (p, g) in enumerate(zip(params, grads[0])):
        want, w_norm, u_norm, ratio = lamb_first_step(p, g, 1e-2, 1e-6, 0.05)
        assert torch.allclose(run.params[j], want, rtol=1e-14, atol=0)
        assert run.norms[0][j].param_norm == pytest.approx(w_norm, rel=1e-14)
        assert run.norms[0][j].update_norm == pytest.approx(u_norm, rel=1e-14)
        assert run.norms[0][j].trust_ratio == pytest.approx(ratio, rel=1e-14)


@given(seed=st.integers(0, 2**31 - 1), lr=st.floats(1e-5, 0.5), wd=st.floats(0.0, 0.3),
       decoupled=st.booleans(), grad_averaging=st.booleans(), bias_correction=st.booleans(),
       steps=st.integers(1, 6))
def test_lamb_update_norm_is_lr_times_weight_norm(seed, lr, wd, decoupled, grad_averaging, bias_correction, steps):
    """LAMB's defining property: with the ratio applied and unclamped, ``||p_new - w|| = lr ||w||``."""
    params, grads = random_problem([(6, 5), (9,)], steps=steps, seed=seed)
    state_run = R.run_lamb(params, grads[:-1], lr=lr, weight_decay=wd, decoupled_decay=decoupled,
                           grad_averaging=grad_averaging, bias_correction=bias_correction)
    before = [p.clone() for p in state_run.params]
    norms = R.lamb_step(state_run.params, grads[-1], state_run.states, lr=lr, weight_decay=wd,
                        decoupled_decay=decoupled, grad_averaging=grad_averaging, bias_correction=bias_correction)
    for p0, p1, nm in zip(before, state_run.params, norms):
        w = p0 * (1 - lr * wd) if decoupled else p0
        assert float((p1 - w).norm()) == pytest.approx(lr * float(w.norm()), rel=1e-12)
        assert nm.param_norm == pytest.approx(float(w.norm()), rel=1e-14)


def test_lamb_ratio_is_one_on_zero_norms_and_without_adaptation():
    zero_param = torch.zeros(4)
    zero_update = torch.ones(4)
    params = [zero_param, zero_update, torch.ones(3)]
    grads = [[torch.ones(4), torch.zeros(4), torch.full((3,), 2.0)]]
    run = R.run_lamb([dict(params=params[:2], weight_decay=0.0), dict(params=params[2:], adapt=False)], grads,
                     lr=0.1)
    ratios = [n.trust_ratio for n in run.norms[0]]
    assert ratios == [1.0, 1.0, 1.0]
    assert run.norms[0][0].param_norm == 0.0 and run.norms[0][1].update_norm == 0.0
    assert torch.equal(run.params[1], torch.ones(4, dtype=torch.float64))  # zero gradient, no decay: unchanged


@pytest.mark.parametrize("w_norm, clip, want", [(100.0, (0.01, 10.0), 10.0), (1e-4, (0.01, 10.0), 0.01),
                                                 (3.0, (0.0, 1.0), 1.0), (0.5, (2.0, 3.0), 2.0)],
                         ids=["deepspeed-max", "deepspeed-min", "timm", "raise-to-min"])
def test_trust_ratio_clamps(w_norm, clip, want):
    assert R.trust_ratio(w_norm, 1.0, trust_clip=clip) == want
    assert R.trust_ratio(w_norm, 1.0) == w_norm
    assert R.trust_ratio(0.0, 1.0, trust_clip=clip) == min(max(1.0, clip[0]), clip[1])


def test_lamb_global_clipping_equals_pre_clipped_gradients():
    params, grads = random_problem([(3, 3), (4,)], steps=6, seed=8)
    grads = [[g * (10.0 if k % 2 else 0.01) for g in step] for k, step in enumerate(grads)]
    clipped = R.run_lamb(params, grads, lr=1e-2, max_grad_norm=1.0)
    pre = []
    for k, step in enumerate(grads):
        norm = math.sqrt(sum(float((g ** 2).sum()) for g in step))
        assert clipped.grad_norms[k] == pytest.approx(norm, rel=1e-14)
        pre.append([g / max(1.0, norm / 1.0) for g in step])
    unclipped = R.run_lamb(params, pre, lr=1e-2)
    assert max_rel(clipped.params, unclipped.params) <= 1e-14
    assert max_rel(clipped.params, R.run_lamb(params, grads, lr=1e-2).params) > 1e-6  # clipping mattered


def test_lamb_without_bias_correction_and_grad_averaging_first_step():
    params, grads = random_problem([(5,)], steps=1, seed=9)
    p, g = params[0], grads[0][0]
    b2, eps = 0.999, 1e-6  # beta1 does not enter step 1 with m = 0 and beta3 = 1
    run = R.run_lamb(params, grads, lr=1e-2, weight_decay=0.0, bias_correction=False, grad_averaging=False)
    m, v = g, (1 - b2) * g * g  # grad_averaging=False: beta3 = 1
    u = m / (v.sqrt() + eps)
    want = p - 1e-2 * (p.norm() / u.norm()) * u
    assert torch.allclose(run.params[0], want, rtol=1e-14, atol=0)


def test_lamb_state_storage_forms_r_from_the_rounded_moments():
    """``state_storage=torch.bfloat16``: the moments are rounded to bf16 (nearest even) after each update and
    ``r`` comes from the rounded values (the meaning every backend implements for 16-bit states); the
    first step written out by hand, then a 20-step run that differs from the float64-moment one."""
    params, grads = random_problem([(7, 5), (11,)], steps=20, seed=10)
    b1, b2, eps, wd, lr = 0.9, 0.999, 1e-6, 0.01, 1e-2
    run = R.run_lamb(params, grads[:1], lr=lr, eps=eps, weight_decay=wd, state_storage=torch.bfloat16)
    for j, (p, g) in enumerate(zip(params, grads[0])):
        m = ((1 - b1) * g).to(torch.bfloat16).double()
        v = ((1 - b2) * g * g).to(torch.bfloat16).double()
        assert torch.equal(run.states[j]["exp_avg"], m) and torch.equal(run.states[j]["exp_avg_sq"], v)
        r = (m / (1 - b1)) / (v.sqrt() / math.sqrt(1 - b2) + eps)
        u = r + wd * p
        want = p - lr * (p.norm() / u.norm()) * u
        assert torch.allclose(run.params[j], want, rtol=1e-14, atol=0)
        assert run.norms[0][j].update_norm == pytest.approx(float(u.norm()), rel=1e-14)
        fresh_u = lamb_first_step(p, g, lr, eps, wd)[2]
        assert abs(run.norms[0][j].update_norm - fresh_u) > 1e-6 * fresh_u  # the rounding is visible
    stored = R.run_lamb(params, grads, lr=SCHED, state_storage=torch.bfloat16)
    for st_ in stored.states:  # every stored moment is a bf16 value
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(st_[key], st_[key].to(torch.bfloat16).double())
    wide = R.run_lamb(params, grads, lr=SCHED)
    assert max_rel(stored.params, wide.params) > 1e-4
    assert max_rel(R.run_lamb(params, grads, lr=SCHED, state_storage=torch.float64).params, wide.params) == 0.0
    assert max_rel(R.run_lamb(params, grads, lr=SCHED, state_storage=None).params, wide.params) == 0.0
