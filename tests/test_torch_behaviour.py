"""Behave like ``torch.optim`` where tools rely on it (issue 13): state dicts with entries torch allows,
non-contiguous parameters, duplicate parameters, a tensor lr, torch's exceptions and wording, and FSDP1's
flat parameters refused by LAMB. Each numeric check is against ``torch.optim.AdamW`` doing the same thing
(or the float64 LAMB reference)."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch

from helpers import backends_on_cpu, max_rel_err, tiny_backward, tiny_model
from lrsched_fused import FusedAdamW, FusedLAMB, reference as R, schedules as S

BACKENDS = [b for b in backends_on_cpu() if b != "triton"]


def _equal(a, b) -> bool:
    """Deep equality of state dicts (tensors by value and dtype)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


# -------------------------------------------------------------------------------------------------------
# state dicts
# -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["adamw", "lamb"])
def test_save_load_save_gives_equal_dicts_with_extra_entries_torch_allows(kind):
    model = tiny_model()
    cls = FusedAdamW if kind == "adamw" else FusedLAMB
    opt = cls(model.parameters(), lr=S.cosine(1e-2, 20, 2), backend="reference")
    for k in range(3):
        tiny_backward(model, k)
        opt.step()
    p = next(model.parameters())
    opt.state[p]["note"] = "checkpointed by a trainer"       # neither a tensor ...
    opt.state[p]["ema"] = {"decay": 0.99, "value": torch.ones(2)}  # ... nor a dict of tensors only
    for key, value in (("differentiable", False), ("foreach", None), ("decoupled_weight_decay", True)):
        opt.param_groups[0][key] = value  # keys torch's __setstate__ adds to groups
    tiny_backward(model, 3)
    opt.step()  # the plan copes with non-tensor state entries
    first = copy.deepcopy(opt.state_dict())
    fresh = cls(tiny_model(seed=1).parameters(), lr=1e-3, backend="reference")
    fresh.load_state_dict(copy.deepcopy(first))
    second = fresh.state_dict()
    assert _equal(first, second)


# -------------------------------------------------------------------------------------------------------
# non-contiguous parameters
# -------------------------------------------------------------------------------------------------------
def _odd_layouts(seed=0):
    torch.manual_seed(seed)
    conv = torch.nn.Conv2d(3, 8, 3).to(memory_format=torch.channels_last)
    return [torch.nn.Parameter(conv.weight.detach().clone(memory_format=torch.preserve_format)),
            torch.nn.Parameter(torch.randn(5, 7).t()),                 # a transposed view
            torch.nn.Parameter(torch.randn(4, 3, 2).permute(2, 0, 1)),  # a permutation
            torch.nn.Parameter(torch.randn(6))]


def _grads(params, k):
    g = torch.Generator().manual_seed(100 + k)
    return [torch.randn(p.shape, generator=g) for p in params]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("grad_layout", ["contiguous", "like-param"])
def test_non_contiguous_parameters_are_updated_like_torch(backend, grad_layout):
    ours, ref = _odd_layouts(), _odd_layouts()
    assert [p.is_contiguous() for p in ours] == [False, False, False, True]
    opt = FusedAdamW(ours, lr=S.cosine(1e-2, 40, 4), weight_decay=0.1, backend=backend)
    torch_opt = torch.optim.AdamW(ref, lr=1e-2, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(torch_opt, lambda t: S.cosine(1e-2, 40, 4)(t) / 1e-2)
    for k in range(50):
        for p, q, g in zip(ours, ref, _grads(ours, k)):
            p.grad = g.clone() if grad_layout == "contiguous" else torch.empty_like(p).copy_(g)
            q.grad = g.clone()
        opt.step()
        torch_opt.step()
        sched.step()
    for p, q in zip(ours, ref):
        assert p.stride() == q.stride()  # still the caller's layout
        assert max_rel_err(p, q) <= 1e-5
        assert opt.state[p]["exp_avg"].stride() == p.stride()  # state in the parameter's layout


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_parameters_under_lamb_match_the_reference(backend):
    ours = _odd_layouts()
    start = [p.detach().clone() for p in ours]
    opt = FusedLAMB(ours, lr=1e-2, weight_decay=0.1, backend=backend)
    grads = []
    for k in range(20):
        step = _grads(ours, k)
        grads.append(step)
        for p, g in zip(ours, step):
            p.grad = g.clone()
        opt.step()
    run = R.run_lamb(start, grads, lr=1e-2, weight_decay=0.1)
    for p, r in zip(ours, run.params):
        assert max_rel_err(p, r) <= 1e-5


def test_overlapping_parameters_are_refused_with_a_reason():
    with pytest.raises(ValueError, match=r"overlaps itself or has gaps .* make it contiguous"):
        FusedAdamW([torch.nn.Parameter(torch.randn(4, 1).expand(4, 3))])
    with pytest.raises(ValueError, match=r"overlaps itself or has gaps"):
        FusedAdamW([torch.nn.Parameter(torch.randn(4, 6)[:, ::2])])


# -------------------------------------------------------------------------------------------------------
# duplicate parameters
# -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["adamw", "lamb"])
def test_a_parameter_listed_twice_warns_as_torch_and_is_updated_as_torch_does(backend, kind):
    torch.manual_seed(0)
    a, b = torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4))
    a2, b2 = copy.deepcopy(a), copy.deepcopy(b)
    with pytest.warns(UserWarning, match="duplicate parameters; in future, this will cause an error"):
        ours = (FusedAdamW if kind == "adamw" else FusedLAMB)([b, a, b, b], lr=1e-2, weight_decay=0.1,
                                                             backend=backend)
    for k in range(6):
        g = _grads([a, b], k)
        a.grad, b.grad = g[0].clone(), g[1].clone()
        ours.step()
    if kind == "adamw":  # torch's for-loop AdamW: the listed-three-times tensor gets three updates per step
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = torch.optim.AdamW([b2, a2, b2, b2], lr=1e-2, weight_decay=0.1, foreach=False)
        for k in range(6):
            g = _grads([a2, b2], k)
            a2.grad, b2.grad = g[0].clone(), g[1].clone()
            ref.step()
        assert float(ours.state[b]["step"]) == float(ref.state[b2]["step"]) == 18.0
        for p, q in ((a, a2), (b, b2)):
            assert max_rel_err(p, q) <= 1e-5
    else:  # the float64 reference with the tensor listed three times, each listing updated in order
        assert float(ours.state[b]["step"]) == 18.0 and float(ours.state[a]["step"]) == 6.0
    sd = ours.state_dict()
    assert sd["param_groups"][0]["params"] == [3, 1, 3, 3]  # torch's packing: the last listing's index
    again = type(ours)([b, a, b, b], lr=1e-2, weight_decay=0.1, backend=backend)
    again.load_state_dict(sd)
    assert float(again.state[b]["step"]) == 18.0


def test_a_parameter_in_two_groups_raises_torchs_error():
    p = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="some parameters appear in more than one parameter group"):
        FusedAdamW([{"params": [p]}, {"params": [p]}])
    with pytest.raises(ValueError, match="some parameters appear in more than one parameter group"):
        torch.optim.AdamW([{"params": [p]}, {"params": [p]}])


# -------------------------------------------------------------------------------------------------------
# a tensor lr
# -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_tensor_lr_follows_a_torch_scheduler_like_torch_fused_adamw(backend):
    torch.manual_seed(0)
    ours_model, ref_model = tiny_model(), tiny_model()
    ours = FusedAdamW(ours_model.parameters(), lr=torch.tensor(1e-2), weight_decay=0.1, backend=backend)
    ref = torch.optim.AdamW(ref_model.parameters(), lr=torch.tensor(1e-2), weight_decay=0.1, fused=True)
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, lambda t: 1.0 / (1 + t)) for o in (ours, ref)]
    for k in range(10):
        for m, o in ((ours_model, ours), (ref_model, ref)):
            tiny_backward(m, k)
            o.step()
        for s in scheds:
            s.step()  # fills the tensor in place
    assert isinstance(ours.param_groups[0]["lr"], torch.Tensor)
    for p, q in zip(ours_model.parameters(), ref_model.parameters()):
        assert max_rel_err(p, q) <= 1e-5
    assert ours.get_last_lr() == pytest.approx([1e-2 / 10], rel=1e-6)


# -------------------------------------------------------------------------------------------------------
# torch's exceptions and wording
# -------------------------------------------------------------------------------------------------------
TORCH_ERRORS = [
    ({"lr": -1e-3}, ValueError, "Invalid learning rate: -0.001"),
    ({"eps": -1e-8}, ValueError, "Invalid epsilon value: -1e-08"),
    ({"betas": (1.0, 0.999)}, ValueError, "Invalid beta parameter at index 0: 1.0"),
    ({"betas": (0.9, -0.5)}, ValueError, "Invalid beta parameter at index 1: -0.5"),
    ({"weight_decay": -0.1}, ValueError, "Invalid weight_decay value: -0.1"),
    ({"lr": torch.tensor([1e-3, 1e-3])}, ValueError, "Tensor lr must be 1-element"),
    ({"lr": torch.tensor(1e-3), "foreach": True}, ValueError,
     "lr as a Tensor is not supported for capturable=False and foreach=True"),
    ({"foreach": True, "fused": True}, RuntimeError, "`fused` and `foreach` cannot be `True` together."),
]


@pytest.mark.parametrize("kwargs, exc, text", TORCH_ERRORS, ids=[t for _, _, t in TORCH_ERRORS])
def test_bad_hyperparameters_raise_torchs_exception_with_torchs_words_and_ours(kwargs, exc, text):
    with pytest.raises(exc) as torch_error:
        torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], **kwargs)
    assert text in str(torch_error.value)
    with pytest.raises(exc) as ours:
        FusedAdamW([torch.nn.Parameter(torch.zeros(2))], **kwargs)
    message = str(ours.value)
    assert text in message and len(message) > len(text) + 30, message  # torch's words, and our sentence


# -------------------------------------------------------------------------------------------------------
# FSDP1 flat parameters
# -------------------------------------------------------------------------------------------------------
def test_lamb_refuses_fsdp1_flat_parameters_before_any_state():
    from torch.distributed.fsdp._flat_param import FlatParameter

    flat = FlatParameter(torch.randn(12), requires_grad=True)
    opt = FusedLAMB([flat], lr=1e-3, backend="reference")
    flat.grad = torch.ones(12)
    with pytest.raises(ValueError, match="FSDP1 FlatParameter .*fully_shard"):
        opt.step()
    assert not opt.state and opt.clock is None
    adamw = FusedAdamW([flat], lr=1e-3, backend="reference")  # elementwise: fine on a flat parameter
    adamw.step()
    assert math.isfinite(float(flat.detach().sum()))
