"""``lrsched_fused.functional`` on its own: the stateless ops against the float64 references, updates that
never advance the clock, subset updates that add up to a whole update, the one builder of hyperparameter
rows, and its documented example (a doctest)."""

from __future__ import annotations

import doctest
import math

import pytest
import torch

from helpers import backends_on_cpu, max_rel_err
from lrsched_fused import functional as F, reference as R, schedules as S
from lrsched_fused.kernels import layout as L

BACKENDS = backends_on_cpu()
SHAPES = [(3, 4), (0,), (17,), (1,), (2, 5, 3)]
SCHED = S.wsd(peak_lr=1e-2, total_steps=12, warmup_steps=3, decay_steps=4, final_lr=1e-3)


def _setup(hyper, seed=0, shapes=SHAPES):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen) for s in shapes]
    states = [{} for _ in params]
    for p, st in zip(params, states):
        F.init_state(p, st, keys=hyper.state_keys, state_dtype=torch.float32, master=False, device=p.device)
    steps = torch.zeros(len(params))
    group_index = torch.zeros(len(params), dtype=torch.int64)
    return params, states, steps, group_index


def _grads(step, shapes=SHAPES):
    gen = torch.Generator().manual_seed(100 + step)
    return [torch.randn(s, generator=gen) for s in shapes]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["adamw", "lamb"])
def test_functional_ops_match_the_float64_reference(backend, kind):
    hyper = F.AdamWHyper(weight_decay=0.1) if kind == "adamw" else F.LambHyper(weight_decay=0.1)
    cfg = F.GroupConfig(lr=SCHED.peak, schedule=SCHED, lr_scale=0.5, hyper=hyper)
    params, states, steps, gi = _setup(hyper)
    start = [p.clone() for p in params]
    tables, clock = F.GroupTables.build([cfg.kernel_schedule], [cfg.row()]), F.new_clock()
    lr_out = torch.zeros(1)
    norms = torch.zeros(len(params), L.NORM_COLS)
    for k in range(14):
        batch = F.make_batch(params, _grads(k), states, steps=steps, group_index=gi, amsgrad=False, master=False)
        if kind == "adamw":
            F.adamw(batch, tables, clock, backend=backend)
        else:
            F.lamb(batch, tables, clock, norms_out=norms, backend=backend)
        F.advance(tables, clock, steps, lr_out, backend=backend)
    run = (R.run_adamw if kind == "adamw" else R.run_lamb)(
        [{"params": start, "lr": SCHED, "lr_scale": 0.5, "weight_decay": 0.1}], [_grads(k) for k in range(14)],
        **({"eps": 1e-8} if kind == "adamw" else {"eps": 1e-6}))
    for p, ref in zip(params, run.params):
        assert max_rel_err(p, ref) <= 1e-5
    assert clock.tolist() == [14, 0] and steps.tolist() == [14.0] * len(params)
    assert lr_out.item() == pytest.approx(0.5 * SCHED(13), rel=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_update_never_advances_the_clock_or_the_counts(backend):
    hyper = F.AdamWHyper()
    cfg = F.GroupConfig(lr=1e-3, schedule=None, lr_scale=1.0, hyper=hyper)
    params, states, steps, gi = _setup(hyper)
    tables, clock = F.GroupTables.build([cfg.kernel_schedule], [cfg.row()]), F.new_clock()
    batch = F.make_batch(params, _grads(0), states, steps=steps, group_index=gi, amsgrad=False, master=False)
    before = [p.clone() for p in params]
    F.adamw(batch, tables, clock, backend=backend)
    assert clock.tolist() == [0, 0] and steps.tolist() == [0.0] * len(params)
    assert any(not torch.equal(a, b) for a, b in zip(before, params) if a.numel())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["adamw", "lamb"])
def test_subset_updates_then_one_advance_equal_one_whole_update(backend, kind):
    """What gradient release builds on: ``batch.slice`` updates, then one ``advance``, give the bits of
    updating the whole batch (LAMB's trust ratios are per tensor, so slicing between tensors is exact)."""
    hyper = F.AdamWHyper(weight_decay=0.1) if kind == "adamw" else F.LambHyper(weight_decay=0.1)
    cfg = F.GroupConfig(lr=SCHED.peak, schedule=SCHED, lr_scale=1.0, hyper=hyper)
    tables = F.GroupTables.build([cfg.kernel_schedule], [cfg.row()])
    results = []
    for cuts in ([0, len(SHAPES)], [0, 2, 3, len(SHAPES)]):
        params, states, steps, gi = _setup(hyper)
        clock, lr_out = F.new_clock(), torch.zeros(1)
        norms = torch.zeros(len(params), L.NORM_COLS)
        for k in range(6):
            batch = F.make_batch(params, _grads(k), states, steps=steps, group_index=gi, amsgrad=False, master=False)
            for lo, hi in zip(cuts, cuts[1:]):
                part = batch.slice(lo, hi)
                if kind == "adamw":
                    F.adamw(part, tables, clock, backend=backend)
                else:
                    F.lamb(part, tables, clock, norms_out=norms[lo:hi], backend=backend)
            F.advance(tables, clock, steps, lr_out, backend=backend)
        results.append((params, states, clock.clone(), steps.clone()))
    (p1, s1, c1, n1), (p2, s2, c2, n2) = results
    assert all(torch.equal(a, b) for a, b in zip(p1, p2))
    assert all(torch.equal(a["exp_avg_sq"], b["exp_avg_sq"]) for a, b in zip(s1, s2))
    assert torch.equal(c1, c2) and torch.equal(n1, n2)


def test_a_slice_shares_storage_with_its_batch():
    hyper = F.AdamWHyper()
    params, states, steps, gi = _setup(hyper)
    batch = F.make_batch(params, _grads(0), states, steps=steps, group_index=gi, amsgrad=False, master=False)
    part = batch.slice(1, 3)
    assert len(part) == 2 and part.params[0] is params[1]
    part.steps.add_(1.0)
    assert steps.tolist() == [0.0, 1.0, 1.0, 0.0, 0.0]


def test_rows_come_from_one_builder_with_named_columns():
    adamw = F.AdamWHyper(betas=(0.8, 0.9), eps=1e-7, weight_decay=0.3, maximize=True).row(0.5)
    assert len(adamw) == L.HP_COLS
    assert (adamw[L.HP_LR_SCALE], adamw[L.HP_BETA1], adamw[L.HP_BETA2], adamw[L.HP_EPS]) == (0.5, 0.8, 0.9, 1e-7)
    assert (adamw[L.HP_WEIGHT_DECAY], adamw[L.HP_MAXIMIZE], adamw[L.HP_TRUST_MAX]) == (0.3, 1.0, math.inf)
    lamb = F.LambHyper(trust_clip=(0.01, 10.0), decoupled_decay=True, adapt=False, bias_correction=False).row(2.0)
    assert (lamb[L.HP_TRUST_MIN], lamb[L.HP_TRUST_MAX], lamb[L.HP_DECOUPLED]) == (0.01, 10.0, 1.0)
    assert (lamb[L.HP_ADAPT], lamb[L.HP_BIAS_CORRECTION], lamb[L.HP_GRAD_AVERAGING]) == (0.0, 0.0, 1.0)
    # with a schedule the lr column is lr_scale alone; with a float lr it is lr_scale * lr
    hyper = F.AdamWHyper()
    assert F.GroupConfig(lr=1e-3, schedule=SCHED, lr_scale=0.5, hyper=hyper).row()[L.HP_LR_SCALE] == 0.5
    assert F.GroupConfig(lr=1e-3, schedule=None, lr_scale=0.5, hyper=hyper).row()[L.HP_LR_SCALE] == 0.5e-3


@pytest.mark.parametrize("make, message", [
    (lambda: F.AdamWHyper(betas=(0.9, 1.0)), r"betas\[1\] must be a float in \[0, 1\)"),
    (lambda: F.AdamWHyper(eps=0.0), "eps must be a finite float > 0"),
    (lambda: F.LambHyper(trust_clip=(2.0, 1.0)), "trust_clip must be None or a pair"),
    (lambda: F.LambHyper(adapt=1), "adapt must be True or False"),
    (lambda: F.AdamWHyper.from_group({"betas": (0.9, 0.99)}), "lacks the entries 'eps'"),
])
def test_hyperparameters_are_validated_with_the_parameter_named(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_the_documented_example_runs():
    result = doctest.testmod(F, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 6 and result.failed == 0
