"""Bad input is refused with a ValueError naming the argument and its allowed range, before anything changes.

* constructor arguments and param-group entries (lr, betas, eps, weight_decay, trust_clip, max_grad_norm,
  lr_scale, schedules), parameters (dtype, device, duplicates, contiguity), zero-size parameters (handled);
* at ``step()``: gradients (sparse, wrong dtype / shape), group entries edited since the last step,
  ``tokens``, GradScaler attributes, backends that cannot run the bucket. A failed step leaves
  parameters, state and clock bit-for-bit as they were (hypothesis over random bad values), and the next
  good step gives exactly what it would have given without the failure.
"""

from __future__ import annotations

import math
from copy import deepcopy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import backends_on_cpu, tiny_backward, tiny_model
from lrsched_fused import FusedAdamW, FusedLAMB, schedules as S
from lrsched_fused.backends import BackendUnavailable
from lrsched_fused.optim import plan as _plan_module

BACKENDS = backends_on_cpu()
OPTIMIZERS = {"adamw": FusedAdamW, "lamb": FusedLAMB}
SCHED = S.wsd(peak_lr=1e-2, total_steps=20, warmup_steps=4, decay_steps=6)


# ------------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------------
def _make(kind: str, model: torch.nn.Module, backend: str = "reference", **kw):
    if kind == "lamb":
        kw.setdefault("max_grad_norm", 1.0)
    return OPTIMIZERS[kind](model.parameters(), lr=kw.pop("lr", SCHED), backend=backend, **kw)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)


def snapshot(opt) -> dict:
    """Every parameter, state entry and the clock, copied (compared bit for bit by `assert_same`)."""
    params = [p for g in opt.param_groups for p in g["params"]]
    return {
        "params": [p.detach().clone() for p in params],
        "state": [{k: (v.detach().clone() if isinstance(v, torch.Tensor) else deepcopy(v))
                   for k, v in opt.state[p].items()} if p in opt.state else None for p in params],
        "clock": None if opt.clock is None else opt.clock.detach().clone(),
    }


def assert_same(a: dict, b: dict) -> None:
    assert len(a["params"]) == len(b["params"])
    for i, (x, y) in enumerate(zip(a["params"], b["params"])):
        assert x.dtype == y.dtype and x.shape == y.shape, f"param {i} changed dtype/shape"
        assert torch.equal(_bits(x), _bits(y)), f"param {i} changed"
    for i, (x, y) in enumerate(zip(a["state"], b["state"])):
        assert (x is None) == (y is None), f"state of param {i} was created or dropped"
        if x is None:
            continue
        assert x.keys() == y.keys(), f"state keys of param {i} changed: {sorted(x)} -> {sorted(y)}"
        for k in x:
            if isinstance(x[k], torch.Tensor):
                assert x[k].dtype == y[k].dtype and x[k].shape == y[k].shape, f"state[{k!r}] of param {i} changed"
                assert torch.equal(_bits(x[k]), _bits(y[k])), f"state[{k!r}] of param {i} changed"
    assert (a["clock"] is None) == (b["clock"] is None), "the clock was created or dropped"
    if a["clock"] is not None:
        assert torch.equal(a["clock"], b["clock"]), "the clock changed"


# ------------------------------------------------------------------------------------------------------
# constructor arguments: the message names the argument and its range
# ------------------------------------------------------------------------------------------------------
BAD_ARGS = [
    ("adamw", {"lr": -1e-3}, r"lr must be a finite float >= 0"),
    ("adamw", {"lr": math.nan}, r"lr must be a finite float >= 0.*nan"),
    ("adamw", {"lr": math.inf}, r"lr must be a finite float >= 0"),
    ("adamw", {"lr": torch.tensor([1e-3, 1e-3])}, r"lr as a tensor must hold one value"),
    ("adamw", {"lr": "1e-3"}, r"lr must be a finite float >= 0"),
    ("adamw", {"betas": (1.0, 0.999)}, r"betas\[0\] must be a float in \[0, 1\)"),
    ("adamw", {"betas": (0.9, -0.1)}, r"betas\[1\] must be a float in \[0, 1\)"),
    ("adamw", {"betas": (0.9, math.nan)}, r"betas\[1\] must be a float in \[0, 1\)"),
    ("adamw", {"betas": 0.9}, r"betas must be a pair \(beta1, beta2\) with each in \[0, 1\)"),
    ("adamw", {"betas": (0.9, 0.99, 0.9)}, r"betas must be a pair"),
    ("adamw", {"eps": 0.0}, r"eps must be a finite float > 0"),
    ("adamw", {"eps": -1e-8}, r"eps must be a finite float > 0"),
    ("adamw", {"eps": math.inf}, r"eps must be a finite float > 0"),
    ("adamw", {"weight_decay": -0.1}, r"weight_decay must be a finite float >= 0"),
    ("adamw", {"weight_decay": math.nan}, r"weight_decay must be a finite float >= 0"),
    ("adamw", {"amsgrad": 1}, r"amsgrad must be True or False"),
    ("adamw", {"maximize": None}, r"maximize must be True or False"),
    ("adamw", {"backend": "gpu"}, r"backend must be one of 'auto'"),
    ("adamw", {"skip_nonfinite": "yes"}, r"skip_nonfinite must be True or False"),
    ("adamw", {"state_dtype": torch.float16}, r"state_dtype must be None"),
    ("adamw", {"differentiable": True}, r"differentiable=True is not supported"),
    ("lamb", {"trust_clip": (2.0, 1.0)}, r"trust_clip must be None or a pair \(min, max\) with 0 <= min <= max"),
    ("lamb", {"trust_clip": (-0.1, 1.0)}, r"trust_clip must be None or a pair \(min, max\) with 0 <= min <= max"),
    ("lamb", {"trust_clip": (math.nan, 1.0)}, r"trust_clip\[0\] must be None or a pair"),
    ("lamb", {"trust_clip": 10.0}, r"trust_clip must be None or a pair"),
    ("lamb", {"max_grad_norm": 0.0}, r"max_grad_norm must be None \(off\) or a finite float > 0"),
    ("lamb", {"max_grad_norm": -1.0}, r"max_grad_norm must be None \(off\) or a finite float > 0"),
    ("lamb", {"max_grad_norm": math.inf}, r"max_grad_norm must be None \(off\) or a finite float > 0"),
    ("lamb", {"adapt": "always"}, r"adapt must be True or False"),
    ("lamb", {"bias_correction": 0}, r"bias_correction must be True or False"),
    ("lamb", {"eps": 0.0}, r"eps must be a finite float > 0"),
]


@pytest.mark.parametrize("kind,kwargs,match", BAD_ARGS,
                         ids=[f"{k}-{next(iter(kw))}={kw[next(iter(kw))]!r}" for k, kw, _ in BAD_ARGS])
def test_bad_constructor_argument_names_it_and_its_range(kind, kwargs, match):
    with pytest.raises(ValueError, match=match):
        OPTIMIZERS[kind](tiny_model().parameters(), **kwargs)


BAD_GROUP_ENTRIES = [
    ({"lr": -0.5}, r"param_groups\[1\]: lr must be a finite float >= 0"),
    ({"lr_scale": -1.0}, r"param_groups\[1\]: lr_scale must be a finite float >= 0"),
    ({"betas": (0.9, 1.0)}, r"param_groups\[1\]: betas\[1\] must be a float in \[0, 1\)"),
    ({"weight_decay": -1.0}, r"param_groups\[1\]: weight_decay must be a finite float >= 0"),
    ({"schedule": "wsd"}, r"param_groups\[1\]: schedule must be None, a Schedule or its to_dict\(\) data"),
]


@pytest.mark.parametrize("entry,match", BAD_GROUP_ENTRIES, ids=[next(iter(e)) for e, _ in BAD_GROUP_ENTRIES])
def test_bad_param_group_entry_names_the_group(entry, match):
    model = tiny_model()
    params = list(model.parameters())
    with pytest.raises(ValueError, match=match):
        FusedAdamW([{"params": params[:2]}, {"params": params[2:], **entry}], lr=SCHED)


def test_bad_schedule_fields_are_refused_at_construction():
    data = SCHED.to_dict()
    data["phases"][1]["length"] = -3
    with pytest.raises(ValueError, match=r"length"):
        FusedAdamW(tiny_model().parameters(), lr=data)
    with pytest.raises(ValueError, match=r"warmup_steps"):
        S.wsd(peak_lr=1e-3, total_steps=10, warmup_steps=11, decay_steps=1)
    with pytest.raises(ValueError, match=r"peak_lr"):
        S.wsd(peak_lr=math.nan, total_steps=10, warmup_steps=1, decay_steps=1)


# ------------------------------------------------------------------------------------------------------
# parameters
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.complex64, torch.bool], ids=str)
def test_unsupported_parameter_dtype_is_refused(dtype):
    bad = torch.zeros(3, dtype=dtype)
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['params'\]\[1\] of shape \(3,\) has dtype"):
        FusedAdamW([torch.nn.Parameter(torch.zeros(2)), bad])


def test_parameters_on_mixed_devices_are_refused():
    cpu, meta = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2, device="meta"))
    with pytest.raises(ValueError, match=r"params'\]\[1\] .* is on meta but other parameters are on \['cpu'\]"):
        FusedAdamW([cpu, meta])
    opt = FusedAdamW([cpu])
    with pytest.raises(ValueError, match=r"param_groups\[1\]\['params'\]\[0\] .* is on meta"):
        opt.add_param_group({"params": [meta]})
    assert len(opt.param_groups) == 1


def test_parameter_on_another_device_added_behind_the_optimizers_back_fails_the_step_cleanly():
    model = tiny_model()
    opt = _make("adamw", model)
    tiny_backward(model, 0)
    opt.step()
    meta = torch.nn.Parameter(torch.zeros(3, device="meta"))
    meta.grad = torch.zeros(3, device="meta")
    opt.param_groups[0]["params"].append(meta)  # torch does not stop this
    tiny_backward(model, 1)
    cpu_params = [p for p in opt.param_groups[0]["params"] if p is not meta]
    before = [p.detach().clone() for p in cpu_params], [opt.state[p]["exp_avg"].clone() for p in cpu_params]
    clock = opt.clock.clone()
    with pytest.raises(ValueError, match=r"all parameters must be on one device; got \['cpu', 'meta'\]"):
        opt.step()
    assert torch.equal(opt.clock, clock) and meta not in opt.state
    for p, x, m in zip(cpu_params, *before):
        assert torch.equal(p, x) and torch.equal(opt.state[p]["exp_avg"], m)


def test_duplicate_parameters_warn_within_a_group_and_are_refused_across_groups():
    """As torch 2.13 (issue 13): listed twice in a group, a warning (kept and updated per listing,
    tests/test_torch_behaviour.py); in two groups, torch's ValueError; a set, a TypeError."""
    p = torch.nn.Parameter(torch.zeros(3))
    with pytest.warns(UserWarning, match=r"duplicate parameters.*param_groups\[0\]\['params'\]\[1\] of shape \(3,\)"):
        FusedAdamW([p, p])
    with pytest.raises(ValueError, match=r"more than one parameter group"):
        FusedAdamW([{"params": [p]}, {"params": [p]}])
    with pytest.raises(TypeError, match=r"not a set"):
        FusedAdamW({p})


def test_overlapping_parameter_is_refused_clearly():
    """Dense layouts (transposed, channels_last) are accepted (issue 13); an overlapping one is not."""
    with pytest.raises(ValueError, match=r"params'\]\[0\] of shape \(4, 3\) overlaps itself .* make it contiguous"):
        FusedAdamW([torch.nn.Parameter(torch.randn(4, 1).expand(4, 3))])
    # made overlapping after construction: refused at step, nothing changes
    model = tiny_model()
    opt = _make("adamw", model)
    tiny_backward(model, 0)
    opt.step()
    tiny_backward(model, 1)
    w = model[0].weight
    w.data = torch.randn(w.shape[0], 1).expand(w.shape)  # new storage, overlapping layout
    before = snapshot(opt)
    with pytest.raises(ValueError, match=r"overlaps itself"):
        opt.step()
    assert_same(before, snapshot(opt))


def test_non_contiguous_gradient_is_handled():
    ref_model, model = tiny_model(), tiny_model()
    ref, opt = _make("adamw", ref_model), _make("adamw", model)
    for step in range(3):
        tiny_backward(ref_model, step)
        tiny_backward(model, step)
        w = model[0].weight
        w.grad = w.grad.t().contiguous().t()  # same values, transposed strides
        assert not w.grad.is_contiguous()
        ref.step()
        opt.step()
    for p, q in zip(ref_model.parameters(), model.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["adamw", "lamb"])
def test_zero_size_parameters_are_handled(kind, backend):
    """An empty parameter gets state and a step count, and changes nothing about the others' updates."""
    ref_model, model = tiny_model(), tiny_model()
    empty = torch.nn.Parameter(torch.zeros(0, 4))
    ref = _make(kind, ref_model, backend)
    opt = OPTIMIZERS[kind]([{"params": list(model.parameters())}, {"params": [empty]}], lr=SCHED, backend=backend,
                           **({"max_grad_norm": 1.0} if kind == "lamb" else {}))
    for step in range(3):
        tiny_backward(ref_model, step)
        tiny_backward(model, step)
        empty.grad = torch.zeros(0, 4)
        ref.step()
        opt.step()
    for p, q in zip(ref_model.parameters(), model.parameters()):
        assert torch.equal(p, q)
    assert opt.state[empty]["exp_avg"].shape == (0, 4) and float(opt.state[empty]["step"]) == 3.0
    assert opt.clock.tolist() == [3, 0]


# ------------------------------------------------------------------------------------------------------
# gradients
# ------------------------------------------------------------------------------------------------------
def _sparse_grad(p: torch.Tensor) -> None:
    p.grad = torch.zeros_like(p).to_sparse()


def _grad_other_dtype(p: torch.Tensor) -> None:
    p.data = p.data.double()  # e.g. model.double() between backward and step


def _grad_other_shape(p: torch.Tensor) -> None:
    p.data = torch.zeros(p.shape[0] + 1, *p.shape[1:])


BAD_GRADS = {
    "sparse": (_sparse_grad, r"the gradient of param_groups\[0\]\['params'\]\[0\] .* is sparse"),
    "dtype": (_grad_other_dtype, r"the gradient of param_groups\[0\]\['params'\]\[0\] .* has dtype torch.float32; "
                                 r"it must have the parameter's dtype torch.float64"),
    "shape": (_grad_other_shape, r"the gradient of param_groups\[0\]\['params'\]\[0\] .* has shape \(4, 5\); it must "
                                 r"have the parameter's shape \(5, 5\)"),
}


@pytest.mark.parametrize("kind", ["adamw", "lamb"])
@pytest.mark.parametrize("bad", sorted(BAD_GRADS))
@pytest.mark.parametrize("after_steps", [0, 2], ids=["first-step", "third-step"])
def test_bad_gradient_fails_the_step_and_changes_nothing(bad, kind, after_steps):
    model = tiny_model()
    opt = _make(kind, model)
    for step in range(after_steps):
        tiny_backward(model, step)
        opt.step()
    tiny_backward(model, after_steps)
    corrupt, match = BAD_GRADS[bad]
    corrupt(model[0].weight)
    before = snapshot(opt)
    with pytest.raises(ValueError, match=match):
        opt.step()
    assert_same(before, snapshot(opt))


def test_named_parameters_are_named_in_errors():
    model = tiny_model()
    opt = FusedAdamW(model.named_parameters(), lr=SCHED, backend="reference")
    tiny_backward(model, 0)
    model[2].bias.data = model[2].bias.data.double()
    with pytest.raises(ValueError, match=r"\['params'\]\[5\] \('2.bias'\) of shape \(2,\) and dtype float64"):
        opt.step()


# ------------------------------------------------------------------------------------------------------
# a failed step changes nothing (hypothesis over random bad values)
# ------------------------------------------------------------------------------------------------------
def _floats_outside(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = True):
    """Floats outside [lo, hi) (with the given open ends), plus nan and infinities."""
    below = st.floats(max_value=lo, exclude_max=not lo_open, allow_nan=False)
    above = st.floats(min_value=hi, exclude_min=not hi_open, allow_nan=False)
    return st.one_of(below, above, st.just(math.nan))


def _set_group(key, value):
    def corrupt(opt, model):
        opt.param_groups[0][key] = value
    corrupt.label = f"param_groups[0][{key!r}] = {value!r}"
    return corrupt


def _bad_group_values(kind: str):
    common = [
        _floats_outside(0.0, 1.0).map(lambda b: _set_group("betas", (0.9, b))),
        _floats_outside(0.0, 1.0).map(lambda b: _set_group("betas", (b, 0.999))),
        st.floats(max_value=0.0).map(lambda e: _set_group("eps", e)),
        st.sampled_from([math.inf, math.nan]).map(lambda e: _set_group("eps", e)),
        st.one_of(st.floats(max_value=0.0, exclude_max=True), st.sampled_from([math.nan, math.inf]))
          .map(lambda w: _set_group("weight_decay", w)),
        st.one_of(st.floats(max_value=0.0, exclude_max=True), st.sampled_from([math.nan, -math.inf]))
          .map(lambda s: _set_group("lr_scale", s)),
        st.sampled_from([None, "0.9", (0.9,), torch.tensor([0.9, 0.99])]).map(lambda b: _set_group("betas", b)),
    ]
    if kind == "lamb":
        common += [
            st.tuples(st.floats(min_value=0.0, max_value=10.0), st.floats(min_value=0.0, max_value=10.0))
              .filter(lambda t: t[1] < t[0]).map(lambda t: _set_group("trust_clip", t)),
            st.floats(max_value=0.0, exclude_max=True).map(lambda lo: _set_group("trust_clip", (lo, 1.0))),
            st.sampled_from([1, None, "yes"]).map(lambda v: _set_group("adapt", v)),
        ]
    else:
        common += [st.sampled_from([1, None, "yes"]).map(lambda v: _set_group("amsgrad", v))]
    return common


def _float_lr_group(value):
    def corrupt(opt, model):
        opt.set_schedule(None)  # follow group["lr"], as with a torch scheduler
        opt.param_groups[0]["lr"] = value
    corrupt.label = f"float lr = {value!r}"
    corrupt.float_lr = True
    return corrupt


def _bad_schedule(field_name, value):
    def corrupt(opt, model):
        data = SCHED.to_dict()
        data["phases"][0][field_name] = value
        opt.param_groups[0]["schedule"] = data
    corrupt.label = f"schedule phase field {field_name} = {value!r}"
    return corrupt


def _bad_tokens(value):
    def corrupt(opt, model):
        corrupt.tokens = value
    corrupt.label = f"tokens = {value!r}"
    corrupt.tokens = None
    return corrupt


def _bad_attr(name, value):
    def corrupt(opt, model):
        setattr(opt, name, value)
    corrupt.label = f"optimizer.{name} = {value!r}"
    corrupt.attr = name
    return corrupt


def _bad_grad(name):
    def corrupt(opt, model):
        BAD_GRADS[name][0](model[0].weight)
    corrupt.label = f"{name} gradient"
    corrupt.grad = True
    return corrupt


def bad_step_inputs(kind: str):
    return st.one_of(
        *_bad_group_values(kind),
        st.one_of(st.floats(max_value=0.0, exclude_max=True), st.sampled_from([math.nan, math.inf]),
                  st.just(torch.tensor([1e-3, 1e-3]))).map(_float_lr_group),
        st.sampled_from([("length", -1), ("start_value", math.nan), ("shape", "zigzag")])
          .map(lambda a: _bad_schedule(*a)),
        st.one_of(st.integers(max_value=-1), st.sampled_from([1.5, True, "8", 2**63, torch.tensor([1, 2]),
                                                             torch.tensor(3.0)])).map(_bad_tokens),
        st.sampled_from([("found_inf", torch.zeros(2)), ("found_inf", 0.0), ("grad_scale", torch.tensor([1, 2])),
                         ("grad_scale", torch.tensor(2))]).map(lambda a: _bad_attr(*a)),
        st.sampled_from(sorted(BAD_GRADS)).map(_bad_grad),
    )


def _run_failing_step(kind: str, backend: str, steps_before: int, corrupt) -> None:
    model, twin_model = tiny_model(), tiny_model()
    opt, twin = _make(kind, model, backend), _make(kind, twin_model, backend)
    for step in range(steps_before):
        for m, o in ((model, opt), (twin_model, twin)):
            tiny_backward(m, step)
            o.step()
    tiny_backward(model, steps_before)
    good_groups = deepcopy([{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups])
    good_data = [p.data for p in model.parameters()]
    corrupt(opt, model)
    before = snapshot(opt)
    with pytest.raises(ValueError):
        opt.step(tokens=getattr(corrupt, "tokens", None))
    assert_same(before, snapshot(opt))
    if steps_before == 0:
        assert not opt.state and opt.clock is None, f"{corrupt.label}: the failed first step created state"
    # undo the bad input; the next step is exactly the step the twin makes
    for g, good in zip(opt.param_groups, good_groups):
        g.update(deepcopy(good))
    for p, data in zip(model.parameters(), good_data):
        p.data = data
    for name in ("found_inf", "grad_scale"):
        if hasattr(opt, name):
            delattr(opt, name)
    tiny_backward(model, steps_before)
    tiny_backward(twin_model, steps_before)
    opt.step()
    twin.step()
    for p, q in zip(model.parameters(), twin_model.parameters()):
        assert torch.equal(p, q), f"{corrupt.label}: the step after the failure differs"
    assert torch.equal(opt.clock, twin.clock)


#: examples per backend: the property is about the front end; compiled backends join with a few examples
#: (the Triton interpreter takes ~1 s per optimizer step here)
EXAMPLES = {"reference": 25, "cpu": 10, "triton": 3}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["adamw", "lamb"])
def test_failed_step_changes_nothing_property(kind, backend):
    @settings(max_examples=EXAMPLES.get(backend, 3))
    @given(data=st.data(), steps_before=st.sampled_from([0, 2]))
    def failed_step_changes_nothing(data, steps_before):
        corrupt = data.draw(bad_step_inputs(kind), label="bad input")
        _run_failing_step(kind, backend, steps_before, corrupt)

    failed_step_changes_nothing()


@pytest.mark.parametrize("kind", ["adamw", "lamb"])
@pytest.mark.parametrize("corrupt", [
    _set_group("betas", (0.9, 1.5)), _set_group("eps", 0.0), _set_group("weight_decay", -0.01),
    _float_lr_group(-1e-3), _float_lr_group(math.nan), _bad_schedule("length", -1), _bad_tokens(-1),
    _bad_attr("found_inf", torch.zeros(2)), _bad_grad("dtype"),
], ids=lambda c: c.label)
@pytest.mark.parametrize("steps_before", [0, 2], ids=["first-step", "third-step"])
def test_failed_step_changes_nothing_examples(kind, corrupt, steps_before):
    """Named examples of the property above (readable failures; these are the cases that changed
    parameters or created state before the step was made check-then-run)."""
    _run_failing_step(kind, "reference", steps_before, corrupt)


def test_token_schedule_requires_tokens_before_anything_changes():
    model = tiny_model()
    sched = S.power(max_lr=1e-2, a=1.0, b=-0.5, total=10_000, warmup=1_000, unit="tokens")
    opt = FusedAdamW(model.parameters(), lr=sched, backend="reference")
    tiny_backward(model, 0)
    with pytest.raises(ValueError, match=r"step\(tokens=...\) is required"):
        opt.step()
    assert not opt.state and opt.clock is None
    opt.step(tokens=100)
    assert opt.clock.tolist() == [1, 100]


class _NoSuchDtypeBackend:
    """A backend that cannot run anything (as a compiled backend without bf16 support)."""

    name = "fake"

    def check(self, device, param_dtype, state_dtype):
        raise BackendUnavailable(f"fake backend cannot run {param_dtype} params with {state_dtype} states on {device}")


def test_unavailable_backend_fails_before_state_is_created(monkeypatch):
    model = tiny_model()
    opt = _make("adamw", model)
    tiny_backward(model, 0)
    monkeypatch.setattr(_plan_module, "select_backend", lambda name, device: _NoSuchDtypeBackend())
    with pytest.raises(BackendUnavailable, match=r"cannot run torch.float32 params"):
        opt.step()
    assert not opt.state and opt.clock is None
    assert all(p.grad is not None for p in model.parameters())


def _reset_exp_avg(st, w):
    st["exp_avg"] = torch.zeros_like(w)


def _reset_exp_avg_sq(st, w):
    st["exp_avg_sq"] = torch.zeros_like(w)


def _new_step_tensor(st, w):
    st["step"] = st["step"].clone()


def _extra_entry(st, w):
    st["note"] = "user data"


def _reinsert_exp_avg(st, w):
    st["exp_avg"] = st.pop("exp_avg").clone()


@pytest.mark.parametrize("mutate", [_reset_exp_avg, _reset_exp_avg_sq, _new_step_tensor, _extra_entry,
                                    _reinsert_exp_avg])
def test_changed_state_entry_is_picked_up(mutate):
    """Any entry of a state dict replaced, added or re-inserted by the user: the cached plan rebuilds and the
    run equals one whose plan was dropped on purpose (bit for bit)."""
    model, twin_model = tiny_model(), tiny_model()
    opt, twin = _make("adamw", model), _make("adamw", twin_model)
    for step in range(3):
        for m, o in ((model, opt), (twin_model, twin)):
            tiny_backward(m, step)
            o.step()
    for o, m in ((opt, model), (twin, twin_model)):
        w = m[0].weight
        mutate(o.state[w], w)
    twin._plan = None
    plan = opt._plan
    for step in range(3, 5):
        for m, o in ((model, opt), (twin_model, twin)):
            tiny_backward(m, step)
            o.step()
    assert opt._plan is not plan
    assert opt.state[model[0].weight]["exp_avg"].abs().sum() > 0  # the kernels updated the new tensor
    for p, q in zip(model.parameters(), twin_model.parameters()):
        assert torch.equal(p, q)
    for p, q in zip(model.parameters(), twin_model.parameters()):
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(opt.state[p][key], twin.state[q][key]), key


def test_tensor_lr_written_by_a_scheduler_is_followed_on_the_device():
    """torch >= 2.x schedulers may write a tensor into group['lr']: as torch's fused AdamW, the next step
    uses it (read on the device: no host read in step(), tests/test_no_sync.py)."""
    model = tiny_model()
    opt = FusedAdamW(model.parameters(), lr=1e-3, backend="reference")
    tiny_backward(model, 0)
    opt.step()
    opt.param_groups[0]["lr"] = torch.tensor(5e-4)
    tiny_backward(model, 1)
    opt.step()
    assert float(opt.telemetry()["lr"][0]) == pytest.approx(5e-4, rel=1e-6)


def test_switching_amsgrad_on_mid_run_is_picked_up():
    """A group option that changes which state tensors exist rebuilds the plan (torch's AdamW would
    raise a KeyError here; ours starts the running maximum from zero, like a fresh amsgrad state)."""
    model = tiny_model()
    opt = _make("adamw", model)
    for step in range(2):
        tiny_backward(model, step)
        opt.step()
    opt.param_groups[0]["amsgrad"] = True
    tiny_backward(model, 2)
    opt.step()
    for p in model.parameters():
        st_ = opt.state[p]
        assert torch.equal(st_["max_exp_avg_sq"], st_["exp_avg_sq"])  # max(0, v) = v after one step
    assert opt.clock.tolist() == [3, 0]


@pytest.mark.parametrize("kind", ["adamw", "lamb"])
@pytest.mark.parametrize("backend", backends_on_cpu())
def test_step_without_any_gradient_changes_nothing(kind, backend):
    """As in torch, ``step()`` when no parameter has a gradient is a no-op; the clock counts updates, so it
    stays too (before the first step and after some)."""
    model = tiny_model()
    opt = _make(kind, model, backend)
    before = snapshot(opt)
    assert opt.step() is None
    assert_same(before, snapshot(opt))
    assert not opt.state
    for step in range(2):
        tiny_backward(model, step)
        opt.step()
    opt.zero_grad(set_to_none=True)
    before = snapshot(opt)
    opt.step()
    assert_same(before, snapshot(opt))
    assert int(opt.clock[0]) == 2
