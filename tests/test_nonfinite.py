"""Non-finite gradients.

* With ``torch.amp.GradScaler``: the optimizer takes ``grad_scale`` / ``found_inf`` from the scaler (as
  torch's fused AdamW); ``found_inf`` skips the update, the per-parameter ``step`` and the clock. The peer
  is ``torch.optim.AdamW(fused=True)`` under the same scaler: same scale sequence, same skipped steps, same
  weights (within fp32 rounding), same ``step`` counts. ``grad_scale`` unscales exactly.
* Without a scaler, ``skip_nonfinite=True`` makes the same decision on the device.
* The default is ``skip_nonfinite=False``, as torch: non-finite gradients are applied (NaN spreads to the
  weights exactly where torch's AdamW spreads it).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import RTOL, backends_on_cpu, max_rel_err
from lrsched_fused import FusedAdamW, FusedLAMB, schedules as S

BACKENDS = backends_on_cpu()
FAST = {"reference": 6, "cpu": 6, "triton": 2}  # hypothesis examples per backend (interpreter is slow)
WSD = S.wsd(peak_lr=1e-2, total_steps=10, warmup_steps=2, decay_steps=3)
BAD_VALUES = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))


def _loss(model: torch.nn.Module, step: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(3000 + step)
    x, y = torch.randn(5, 6, generator=gen), torch.randn(5, 2, generator=gen)
    return torch.nn.functional.mse_loss(model(x), y)


def _poison(model: torch.nn.Module, where: tuple[int, int, str]) -> None:
    index, element, value = where
    p = list(model.parameters())[index]
    p.grad.view(-1)[element % p.numel()] = BAD_VALUES[value]


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def _snapshot(model, opt) -> tuple:
    params = list(model.parameters())
    return ([p.detach().clone() for p in params],
            [{k: v.clone() for k, v in opt.state[p].items()} for p in params if p in opt.state],
            None if opt.clock is None else opt.clock.clone())


def _assert_same(a: tuple, b: tuple) -> None:
    for x, y in zip(a[0], b[0]):
        assert torch.equal(_bits(x), _bits(y))
    assert len(a[1]) == len(b[1])
    for x, y in zip(a[1], b[1]):
        assert x.keys() == y.keys() and all(torch.equal(_bits(x[k]), _bits(y[k])) for k in x)
    assert (a[2] is None and b[2] is None) or torch.equal(a[2], b[2])


# ------------------------------------------------------------------------------------------------------
# GradScaler parity with torch.optim.AdamW(fused=True)
# ------------------------------------------------------------------------------------------------------
def _scaled_run(make_opt, poison: dict[int, tuple], n_steps: int, *, unscale_first: bool = False,
                init_scale: float = 2.0**12):
    model = _model()
    opt = make_opt(model)
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale, growth_interval=3)
    scales, weights = [], []
    for step in range(n_steps):
        opt.zero_grad(set_to_none=True)
        scaler.scale(_loss(model, step)).backward()
        if step in poison:
            _poison(model, poison[step])
        if unscale_first:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1e3)
        scaler.step(opt)
        scaler.update()
        scales.append(scaler.get_scale())
        weights.append([p.detach().clone() for p in model.parameters()])
    return model, opt, scales, weights


def _peer(model):
    return torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, fused=True)


def _compare_with_peer(backend: str, poison: dict[int, tuple], n_steps: int, unscale_first: bool = False) -> None:
    ours = _scaled_run(lambda m: FusedAdamW(m.parameters(), lr=1e-2, weight_decay=0.1, backend=backend),
                       poison, n_steps, unscale_first=unscale_first)
    theirs = _scaled_run(_peer, poison, n_steps, unscale_first=unscale_first)
    model, opt, scales, weights = ours
    t_model, t_opt, t_scales, t_weights = theirs
    assert scales == t_scales, "the scale sequences differ (a different step was skipped)"
    applied = n_steps - len(poison)
    for p, q in zip(model.parameters(), t_model.parameters()):
        assert float(opt.state[p]["step"]) == float(t_opt.state[q]["step"]) == applied
    assert opt.clock.tolist() == [applied, 0]
    for step, (w, tw) in enumerate(zip(weights, t_weights)):
        for x, y in zip(w, tw):
            assert max_rel_err(x, y) <= RTOL[torch.float32], f"step {step}: weights differ from torch fused AdamW"


POISON = st.dictionaries(st.integers(0, 7), st.tuples(st.integers(0, 5), st.integers(0, 47),
                                                      st.sampled_from(sorted(BAD_VALUES))), max_size=4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradscaler_skips_like_torch_fused_adamw(backend):
    @settings(max_examples=FAST.get(backend, 2))
    @given(poison=POISON)
    def check(poison):
        _compare_with_peer(backend, poison, 8)

    check()


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradscaler_after_unscale_like_torch_fused_adamw(backend):
    """``scaler.unscale_(opt)`` first (to clip), then ``scaler.step(opt)``: no grad_scale, found_inf from the
    unscale."""
    _compare_with_peer(backend, {1: (0, 3, "inf"), 2: (4, 0, "nan"), 5: (2, 1, "-inf")}, 7, unscale_first=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradscaler_natural_fp16_overflow_like_torch_fused_adamw(backend):
    """fp16 autocast with a huge initial scale: the first steps overflow for real and are skipped."""
    def run(make_opt):
        model = _model()
        opt = make_opt(model)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40, growth_interval=100)
        skipped = 0
        for step in range(8):
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.float16):
                loss = _loss(model, step)
            scaler.scale(loss).backward()
            before = scaler.get_scale()
            scaler.step(opt)
            scaler.update()
            skipped += scaler.get_scale() < before
        return model, opt, skipped

    model, opt, skipped = run(lambda m: FusedAdamW(m.parameters(), lr=1e-2, weight_decay=0.1, backend=backend))
    t_model, t_opt, t_skipped = run(_peer)
    assert skipped == t_skipped >= 2
    assert opt.clock.tolist() == [8 - skipped, 0]
    for p, q in zip(model.parameters(), t_model.parameters()):
        assert float(opt.state[p]["step"]) == float(t_opt.state[q]["step"]) == 8 - skipped
        assert max_rel_err(p, q) <= RTOL[torch.float32]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["adamw", "lamb"])
def test_grad_scale_unscales_exactly_and_leaves_grads_alone(kind, backend):
    """A power-of-two scale commutes exactly with the backward pass, so the scaled run is bit for bit the
    unscaled one; ``p.grad`` keeps the scaled values (the kernel divides, it does not write back)."""
    def make(model):
        if kind == "adamw":
            return FusedAdamW(model.parameters(), lr=WSD, weight_decay=0.1, backend=backend)
        return FusedLAMB(model.parameters(), lr=WSD, max_grad_norm=0.5, backend=backend)

    plain_model, model = _model(), _model()
    plain, opt = make(plain_model), make(model)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=2)
    for step in range(5):
        plain.zero_grad(set_to_none=True)
        _loss(plain_model, step).backward()
        plain.step()
        opt.zero_grad(set_to_none=True)
        scaler.scale(_loss(model, step)).backward()
        grads = [p.grad.clone() for p in model.parameters()]
        scaler.step(opt)
        scaler.update()
        for p, g in zip(model.parameters(), grads):
            assert torch.equal(p.grad, g)
    assert scaler.get_scale() == 2.0**12  # it grew: no step was skipped
    for p, q in zip(plain_model.parameters(), model.parameters()):
        assert torch.equal(_bits(p), _bits(q))


def test_scheduled_lr_does_not_advance_on_skipped_steps():
    model = _model()
    opt = FusedAdamW(model.parameters(), lr=WSD, backend="reference")
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=1000)
    poison = {1: (0, 0, "inf"), 2: (1, 1, "nan"), 5: (3, 0, "inf")}
    applied, lrs = 0, []
    for step in range(9):
        opt.zero_grad(set_to_none=True)
        scaler.scale(_loss(model, step)).backward()
        if step in poison:
            _poison(model, poison[step])
        scaler.step(opt)
        scaler.update()
        lrs.append(opt.get_last_lr()[0])
        assert lrs[-1] == pytest.approx(WSD(applied), rel=1e-6, abs=1e-12)  # the lr used (or that would be)
        applied += step not in poison
    assert opt.clock.tolist() == [applied, 0] == [6, 0]


# ------------------------------------------------------------------------------------------------------
# skip_nonfinite=True (no scaler)
# ------------------------------------------------------------------------------------------------------
def _make(kind, model, backend, **kw):
    if kind == "adamw":
        return FusedAdamW(model.parameters(), lr=WSD, weight_decay=0.1, backend=backend, **kw)
    return FusedLAMB(model.parameters(), lr=WSD, max_grad_norm=1.0, backend=backend, **kw)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # interpreter computing on NaN
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["adamw", "lamb"])
def test_skip_nonfinite_skips_update_and_clock(kind, backend):
    @settings(max_examples=FAST.get(backend, 2))
    @given(where=st.tuples(st.integers(0, 5), st.integers(0, 47), st.sampled_from(sorted(BAD_VALUES))),
           steps_before=st.sampled_from([0, 2]))
    def check(where, steps_before):
        model, twin_model = _model(), _model()
        opt, twin = _make(kind, model, backend, skip_nonfinite=True), _make(kind, twin_model, backend)
        for step in range(steps_before):
            for m, o in ((model, opt), (twin_model, twin)):
                o.zero_grad(set_to_none=True)
                _loss(m, step).backward()
                o.step()
        opt.zero_grad(set_to_none=True)
        _loss(model, steps_before).backward()
        _poison(model, where)
        before = _snapshot(model, opt)
        opt.step()
        after = _snapshot(model, opt)
        assert after[2].tolist() == [steps_before, 0]
        if steps_before:
            _assert_same(before, after)
        else:  # first step: state is created (zeros, step 0) as torch does, nothing else moves
            _assert_same((before[0], [], None), (after[0], [], None))
            assert all(float(s["step"]) == 0 and not s["exp_avg"].any() for s in after[1])
        # a good step afterwards is exactly the twin's next step
        for m, o in ((model, opt), (twin_model, twin)):
            o.zero_grad(set_to_none=True)
            _loss(m, steps_before).backward()
            o.step()
        for p, q in zip(model.parameters(), twin_model.parameters()):
            assert torch.equal(_bits(p), _bits(q))
        assert torch.equal(opt.clock, twin.clock)

    check()


def test_skip_nonfinite_ignores_empty_tensors_and_combines_with_found_inf():
    model = _model()
    empty = torch.nn.Parameter(torch.zeros(0))
    opt = FusedAdamW([{"params": list(model.parameters())}, {"params": [empty]}], lr=WSD, skip_nonfinite=True,
                     backend="reference")
    for step in range(2):
        opt.zero_grad(set_to_none=True)
        _loss(model, step).backward()
        empty.grad = torch.zeros(0)
        opt.step()
    assert opt.clock.tolist() == [2, 0]
    opt.found_inf = torch.ones(1)  # as a GradScaler would set it
    opt.grad_scale = torch.ones(1)
    opt.step()
    assert opt.clock.tolist() == [2, 0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_default_applies_nonfinite_gradients_as_torch(backend):
    """Default ``skip_nonfinite=False``: a NaN gradient element poisons exactly the weights torch's AdamW
    poisons (that element), and the clock counts the step."""
    model, t_model = _model(), _model()
    opt = FusedAdamW(model.parameters(), lr=1e-2, weight_decay=0.1, backend=backend)
    t_opt = torch.optim.AdamW(t_model.parameters(), lr=1e-2, weight_decay=0.1)
    for m, o in ((model, opt), (t_model, t_opt)):
        o.zero_grad(set_to_none=True)
        _loss(m, 0).backward()
        _poison(m, (0, 7, "nan"))
        o.step()
    assert opt.clock.tolist() == [1, 0]
    for p, q in zip(model.parameters(), t_model.parameters()):
        assert torch.equal(p.isnan(), q.isnan())
    assert list(model.parameters())[0].isnan().sum() == 1
