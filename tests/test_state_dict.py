"""``state_dict()`` / ``load_state_dict()``: plain data, the right devices and dtypes, misfits refused before
anything changes, and interop with ``torch.optim.AdamW`` (both directions, float lr and schedules).

Interop comparisons run FusedAdamW and torch's AdamW side by side; their fp32 arithmetic differs in the
last bits, so those use the per-dtype ``RTOL`` of ``helpers`` (the other tests compare bit for bit).
"""

from __future__ import annotations

import io
import math
from copy import deepcopy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import RTOL, backends_on_cpu, max_rel_err, tiny_backward, tiny_model
from lrsched_fused import FusedAdamW, FusedLAMB, schedules as S
from lrsched_fused.checkpoint import (EXTRA_KEY, STATE_FORMAT_VERSION, clock_from_torch_scheduler,
                                        torch_scheduler_for)

BACKENDS = backends_on_cpu()
SCHED = S.wsd(peak_lr=1e-2, total_steps=12, warmup_steps=3, decay_steps=4, final_lr=1e-3)


# ------------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------------
def _train(model, opt, start: int, stop: int, scheduler=None) -> None:
    for step in range(start, stop):
        tiny_backward(model, step)
        opt.step()
        if scheduler is not None:
            scheduler.step()


def _through_disk(sd: dict) -> dict:
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True, map_location="cpu")


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)


def _params(opt) -> list[torch.Tensor]:
    return [p for g in opt.param_groups for p in g["params"]]


def snapshot(opt) -> dict:
    return {
        "params": [p.detach().clone() for p in _params(opt)],
        "state": [{k: (v.detach().clone() if isinstance(v, torch.Tensor) else deepcopy(v))
                   for k, v in opt.state[p].items()} if p in opt.state else None for p in _params(opt)],
        "clock": None if opt.clock is None else opt.clock.detach().clone(),
        "groups": deepcopy([{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]),
        "options": deepcopy(opt._options),
    }


def assert_same(a: dict, b: dict) -> None:
    for i, (x, y) in enumerate(zip(a["params"], b["params"])):
        assert torch.equal(_bits(x), _bits(y)), f"param {i} changed"
    for i, (x, y) in enumerate(zip(a["state"], b["state"])):
        assert (x is None) == (y is None), f"state of param {i} created or dropped"
        if x is not None:
            assert x.keys() == y.keys(), f"state keys of param {i} changed"
            for k in x:
                if isinstance(x[k], torch.Tensor):
                    assert x[k].dtype == y[k].dtype and x[k].device == y[k].device, f"state[{k!r}] of {i} moved"
                    assert torch.equal(_bits(x[k]), _bits(y[k])), f"state[{k!r}] of param {i} changed"
    assert (a["clock"] is None) == (b["clock"] is None) and (a["clock"] is None or torch.equal(a["clock"], b["clock"]))
    assert a["groups"] == b["groups"], "param groups changed"
    assert a["options"] == b["options"], "options changed"


# ------------------------------------------------------------------------------------------------------
# the format
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["adamw", "lamb"])
def test_state_dict_is_plain_data_with_everything_needed(kind, backend):
    model = tiny_model()
    if kind == "adamw":
        opt = FusedAdamW(model.parameters(), lr=SCHED, amsgrad=True, backend=backend)
    else:
        opt = FusedLAMB(model.parameters(), lr=SCHED, max_grad_norm=0.5, trust_clip=(0.0, 10.0), backend=backend)
    _train(model, opt, 0, 4)
    sd = _through_disk(opt.state_dict())  # weights_only=True: plain data only
    extra = sd[EXTRA_KEY]
    assert extra["format"] == STATE_FORMAT_VERSION
    assert extra["clock"].dtype == torch.int64 and extra["clock"].tolist() == [4, 0]
    assert extra["options"]["backend"] == backend and extra["options"]["skip_nonfinite"] is False
    if kind == "lamb":
        assert extra["options"]["max_grad_norm"] == 0.5
    (group,) = sd["param_groups"]
    assert type(group["lr"]) is float and group["lr"] == SCHED.peak
    assert S.from_dict(group["schedule"]) == SCHED and group["lr_scale"] == 1.0
    moments = ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if kind == "adamw" else ())
    for pid, p in zip(group["params"], model.parameters()):
        st_ = sd["state"][pid]
        assert st_["step"].shape == () and st_["step"].dtype == torch.float32 and float(st_["step"]) == 4.0
        for k in moments:
            assert st_[k].shape == p.shape and st_[k].dtype == torch.float32
    # the step entries are independent tensors (not views of the optimizer's shared steps buffer)
    live = opt.state_dict()
    live["state"][0]["step"].add_(100)
    assert float(opt.state[next(model.parameters())]["step"]) == 4.0


def test_state_dict_before_the_first_step_loads():
    model = tiny_model()
    sd = _through_disk(FusedAdamW(model.parameters(), lr=SCHED, backend="reference").state_dict())
    assert sd[EXTRA_KEY]["clock"] is None and sd["state"] == {}
    opt = FusedAdamW(tiny_model().parameters(), lr=0.5, backend="reference")
    opt.load_state_dict(sd)
    assert opt.clock.tolist() == [0, 0] and opt.param_groups[0]["schedule"] == SCHED
    assert opt.get_last_lr() == [SCHED(0)]


def test_get_last_lr_after_load_is_the_lr_of_the_next_step():
    model = tiny_model()
    opt = FusedAdamW(model.parameters(), lr=SCHED, backend="reference")
    _train(model, opt, 0, 5)
    fresh = FusedAdamW(tiny_model().parameters(), lr=1e-4, backend="reference")
    fresh.load_state_dict(opt.state_dict())
    assert fresh.get_last_lr() == pytest.approx([SCHED(5)], rel=0, abs=0)


# ------------------------------------------------------------------------------------------------------
# devices and dtypes on load
# ------------------------------------------------------------------------------------------------------
def test_low_precision_params_keep_fp32_states_through_load():
    """torch's Optimizer.load_state_dict casts floating state to the parameter dtype (bf16 here), losing
    the fp32 moments; ours keeps the state dtype the options call for, bit for bit."""
    model = tiny_model(dtype=torch.bfloat16)
    opt = FusedAdamW(model.parameters(), lr=SCHED, backend="reference")
    _train(model, opt, 0, 3)
    sd = _through_disk(opt.state_dict())
    fresh_model = tiny_model(seed=1, dtype=torch.bfloat16)
    fresh = FusedAdamW(fresh_model.parameters(), lr=1.0, backend="reference")
    fresh.load_state_dict(sd)
    for p, q in zip(model.parameters(), fresh_model.parameters()):
        for k in ("exp_avg", "exp_avg_sq"):
            assert fresh.state[q][k].dtype == torch.float32
            assert torch.equal(fresh.state[q][k], opt.state[p][k])
    # the hazard this guards against: torch's base implementation would have downcast
    plain = FusedAdamW(tiny_model(seed=1, dtype=torch.bfloat16).parameters(), backend="reference")
    torch.optim.Optimizer.load_state_dict(plain, sd)
    assert next(iter(plain.state.values()))["exp_avg"].dtype == torch.bfloat16


@pytest.mark.parametrize("option,param_dtype,want", [
    ("param", torch.bfloat16, torch.bfloat16),
    (torch.bfloat16, torch.float32, torch.bfloat16),
    (None, torch.float16, torch.float32),
    (None, torch.float64, torch.float64),
], ids=["param-bf16", "bf16-states-fp32-params", "default-fp16", "default-fp64"])
def test_load_converts_to_the_state_dtype_of_the_options(option, param_dtype, want):
    model = tiny_model()
    opt = FusedAdamW(model.parameters(), lr=SCHED, backend="reference")
    _train(model, opt, 0, 2)
    sd = _through_disk(opt.state_dict())
    fresh_model = tiny_model(dtype=param_dtype)
    fresh = FusedAdamW(fresh_model.parameters(), lr=SCHED, backend="reference", state_dtype=option)
    fresh.load_state_dict(sd)
    for p, q in zip(model.parameters(), fresh_model.parameters()):
        assert fresh.state[q]["exp_avg"].dtype == want
        assert fresh.state[q]["step"].dtype == torch.float32 and fresh.state[q]["step"].shape == ()
        assert torch.equal(fresh.state[q]["exp_avg"], opt.state[p]["exp_avg"].to(want))
    _train(fresh_model, fresh, 2, 3)  # and it runs
    assert fresh.clock.tolist() == [3, 0]


def test_load_moves_state_to_the_parameters_device():
    """A checkpoint loaded on the CPU goes to the parameters' device ("meta" stands in for a GPU)."""
    model = tiny_model()
    opt = FusedAdamW(model.parameters(), lr=SCHED, backend="reference")
    _train(model, opt, 0, 2)
    sd = _through_disk(opt.state_dict())
    meta_model = tiny_model().to("meta")
    meta_opt = FusedAdamW(meta_model.parameters(), lr=1e-3, backend="reference")
    meta_opt.load_state_dict(sd)
    for q in meta_model.parameters():
        st_ = meta_opt.state[q]
        assert st_["step"].device.type == "meta" and st_["step"].dtype == torch.float32 and st_["step"].shape == ()
        assert st_["exp_avg"].device.type == "meta" and st_["exp_avg_sq"].device.type == "meta"
    assert meta_opt.clock.device.type == "meta"


def test_loaded_state_does_not_alias_the_checkpoint():
    model = tiny_model()
    opt = FusedAdamW(model.parameters(), lr=SCHED, backend="reference")
    _train(model, opt, 0, 2)
    sd = opt.state_dict()
    fresh_model = tiny_model()
    fresh = FusedAdamW(fresh_model.parameters(), lr=SCHED, backend="reference")
    fresh.load_state_dict(sd)
    before = snapshot(fresh)
    for st_ in sd["state"].values():
        for v in st_.values():
            v.add_(1)  # (the clock entry is an int64 tensor)
    sd[EXTRA_KEY]["clock"].add_(7)
    sd["param_groups"][0]["schedule"]["phases"][0]["length"] = 99
    assert_same(before, snapshot(fresh))


def test_lamb_max_grad_norm_and_master_weights_round_trip():
    model = tiny_model(dtype=torch.bfloat16)
    opt = FusedLAMB(model.parameters(), lr=SCHED, max_grad_norm=0.25, master_weights=True, backend="reference")
    _train(model, opt, 0, 3)
    sd = _through_disk(opt.state_dict())
    fresh_model = tiny_model(seed=3, dtype=torch.bfloat16)
    fresh_model.load_state_dict(model.state_dict())
    fresh = FusedLAMB(fresh_model.parameters(), lr=1e-3, master_weights=True, backend="reference")
    fresh.load_state_dict(sd)
    assert fresh._options["max_grad_norm"] == 0.25  # a hyperparameter: the checkpoint's value wins
    for p, q in zip(model.parameters(), fresh_model.parameters()):
        assert fresh.state[q]["master_param"].dtype == torch.float32
        assert torch.equal(fresh.state[q]["master_param"], opt.state[p]["master_param"])


# ------------------------------------------------------------------------------------------------------
# a state that does not fit is refused before anything changes
# ------------------------------------------------------------------------------------------------------
def _set_state(index, key, value):
    def corrupt(sd):
        sd["state"][index][key] = value
    return corrupt


def _del_state(index, key):
    def corrupt(sd):
        del sd["state"][index][key]
    return corrupt


def _set_group(key, value):
    def corrupt(sd):
        sd["param_groups"][0][key] = value
    return corrupt


def _set_extra(key, value):
    def corrupt(sd):
        sd[EXTRA_KEY][key] = value
    return corrupt


def _set_phase(key, value):
    def corrupt(sd):
        sd["param_groups"][0]["schedule"]["phases"][1][key] = value
    return corrupt


def _drop_param(sd):
    sd["param_groups"][0]["params"].pop()


def _extra_group(sd):
    sd["param_groups"].append(deepcopy(sd["param_groups"][0]))


def _unknown_id(sd):
    sd["state"][99] = deepcopy(sd["state"][0])


MISFITS = {
    "moment-shape": (_set_state(0, "exp_avg", torch.zeros(7)),
                     r"state\['exp_avg'\] of param_groups\[0\]\['params'\]\[0\] .* has shape \(7,\) but the parameter "
                     r"has shape \(4, 5\)"),
    "moment-missing": (_del_state(2, "exp_avg_sq"), r"loaded state of param_groups\[0\]\['params'\]\[2\] .* lacks"),
    "moment-int": (_set_state(1, "exp_avg", torch.zeros(4, dtype=torch.int32)), r"must be a floating-point tensor"),
    "moment-not-tensor": (_set_state(1, "exp_avg", [0.0] * 4), r"must be a tensor"),
    "step-shape": (_set_state(0, "step", torch.zeros(2)), r"state\['step'\] .* must hold one real number"),
    "step-negative": (_set_state(3, "step", torch.tensor(-1.0)), r"must be a whole number of updates >= 0"),
    "step-nan": (_set_state(3, "step", torch.tensor(math.nan)), r"must be a whole number of updates >= 0"),
    "step-fraction": (_set_state(3, "step", torch.tensor(2.5)), r"must be a whole number of updates >= 0"),
    "master-shape": (_set_state(0, "master_param", torch.zeros(3)), r"state\['master_param'\] .* has shape"),
    "group-count": (_extra_group, r"has 2 param groups; this optimizer has 1"),
    "param-count": (_drop_param, r"loaded param_groups\[0\] has 5 params; this optimizer's has 6"),
    "unknown-id": (_unknown_id, r"entries for param ids \[99\]"),
    "betas": (_set_group("betas", (1.0, 0.9)), r"loaded param_groups\[0\]: .*betas\[0\] must be a float in \[0, 1\)"),
    "lr": (_set_group("lr", -1.0), r"loaded param_groups\[0\]: .*lr must be a finite float >= 0"),
    "eps": (_set_group("eps", 0.0), r"loaded param_groups\[0\]: .*eps must be a finite float > 0"),
    "schedule-length": (_set_phase("length", -2), r"loaded param_groups\[0\]: .*length"),
    "schedule-value": (_set_phase("start_value", math.inf), r"loaded param_groups\[0\]: .*start_value"),
    "schedule-type": (_set_group("schedule", "wsd"), r"loaded param_groups\[0\]: schedule must be None"),
    "clock-shape": (_set_extra("clock", torch.zeros(3, dtype=torch.int64)),
                    r"clock must be an int64 tensor \(or list of ints\) of shape \[2\]"),
    "clock-float": (_set_extra("clock", torch.zeros(2)), r"clock must be an int64 tensor"),
    "clock-negative": (_set_extra("clock", torch.tensor([-1, 0])), r"clock \(steps\) must be an int in \[0, "),
    "format": (_set_extra("format", 99), r"\['format'\] must be 1"),
    "not-a-dict": (lambda sd: sd.pop("state"), r"must have 'state' \(dict\) and 'param_groups' \(list\)"),
}


def _trained_adamw():
    model = tiny_model()
    opt = FusedAdamW(model.parameters(), lr=SCHED, backend="reference")
    _train(model, opt, 0, 3)
    return model, opt


@pytest.mark.parametrize("misfit", sorted(MISFITS))
def test_misfit_state_is_refused_before_anything_changes(misfit):
    model, opt = _trained_adamw()
    sd = deepcopy(opt.state_dict())
    corrupt, match = MISFITS[misfit]
    corrupt(sd)
    target_model = tiny_model(seed=5)
    target = FusedAdamW(target_model.parameters(), lr=0.3, backend="reference")
    _train(target_model, target, 0, 2)
    before = snapshot(target)
    with pytest.raises(ValueError, match=match):
        target.load_state_dict(sd)
    assert_same(before, snapshot(target))
    _train(target_model, target, 2, 3)  # still works
    assert target.clock.tolist() == [3, 0]


@settings(max_examples=30)
@given(index=st.integers(0, 5), key=st.sampled_from(["exp_avg", "exp_avg_sq", "step"]),
       value=st.one_of(st.floats(allow_nan=True, allow_infinity=True).filter(
                           lambda x: not (math.isfinite(x) and x >= 0 and x == round(x))).map(torch.tensor),
                       st.lists(st.integers(1, 3), min_size=1, max_size=3).map(lambda s: torch.zeros(*s)),
                       st.sampled_from([None, "x", torch.zeros(0)])))
def test_random_misfit_state_is_refused_before_anything_changes(index, key, value):
    model, opt = _trained_adamw()
    sd = deepcopy(opt.state_dict())
    sd["state"][index][key] = value
    target = FusedAdamW(tiny_model(seed=5).parameters(), lr=0.3, backend="reference")
    target.load_state_dict(deepcopy(opt.state_dict()))
    before = snapshot(target)
    try:
        target.load_state_dict(sd)
    except ValueError:
        assert_same(before, snapshot(target))
        return
    # accepted: only a value that fits (a moment of the right shape, or a whole step) can be
    assert key == "step" or tuple(value.shape) == tuple(_params(target)[index].shape)


# ------------------------------------------------------------------------------------------------------
# interop with torch.optim.AdamW
# ------------------------------------------------------------------------------------------------------
def _torch_adamw(model, fused: bool, lr=1e-3):
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, fused=fused, foreach=False if fused else None)


def _assert_close(a_model, b_model, rtol=RTOL[torch.float32]):
    for p, q in zip(a_model.parameters(), b_model.parameters()):
        assert max_rel_err(q, p) <= rtol, f"{max_rel_err(q, p):.3g} > {rtol}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fused", [False, True], ids=["torch-for-loop", "torch-fused"])
def test_fused_state_loads_into_torch_adamw_float_lr(fused, backend):
    model = tiny_model()
    ours = FusedAdamW(model.parameters(), lr=1e-2, weight_decay=0.1, backend=backend)
    _train(model, ours, 0, 3)
    sd = _through_disk(ours.state_dict())
    torch_model = tiny_model(seed=9)
    torch_model.load_state_dict(model.state_dict())
    theirs = _torch_adamw(torch_model, fused, lr=0.5)
    theirs.load_state_dict(sd)
    assert theirs.param_groups[0]["lr"] == 1e-2
    for q in torch_model.parameters():
        assert theirs.state[q]["step"].dtype == torch.float32 and float(theirs.state[q]["step"]) == 3.0
    _train(model, ours, 3, 8)
    _train(torch_model, theirs, 3, 8)
    _assert_close(model, torch_model)


#: save points (edges of SCHED: 3, 8, 12); the Triton interpreter (~0.5 s per step) gets two
SAVE_POINTS = {"reference": [0, 2, 3, 5, 8, 12, 14], "cpu": [0, 2, 3, 5, 8, 12, 14], "triton": [3, 8]}


@pytest.mark.parametrize("backend,save_at", [(b, k) for b in BACKENDS for k in SAVE_POINTS.get(b, [8])],
                         ids=lambda v: v if isinstance(v, str) else f"save-at-{v}")
def test_fused_state_loads_into_torch_adamw_with_schedule(save_at, backend):
    """torch AdamW + torch_scheduler_for(...) continues a scheduled FusedAdamW: same lr at every step
    (mid-warmup, on the warmup/stable and stable/decay edges, mid-decay, past the end), same weights."""
    model = tiny_model()
    ours = FusedAdamW(model.parameters(), lr=SCHED, weight_decay=0.1, backend=backend)
    _train(model, ours, 0, save_at)
    sd = _through_disk(ours.state_dict())
    torch_model = tiny_model(seed=9)
    torch_model.load_state_dict(model.state_dict())
    theirs = _torch_adamw(torch_model, fused=True, lr=0.5)
    theirs.load_state_dict(sd)
    scheduler = torch_scheduler_for(theirs, sd)
    for step in range(save_at, save_at + 4):
        lr_torch = theirs.param_groups[0]["lr"]
        assert lr_torch == SCHED(step)
        tiny_backward(model, step)
        tiny_backward(torch_model, step)
        ours.step()
        theirs.step()
        scheduler.step()
        assert ours.get_last_lr()[0] == pytest.approx(lr_torch, rel=1e-6, abs=1e-12)
    _assert_close(model, torch_model)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fused", [False, True], ids=["torch-for-loop", "torch-fused"])
def test_torch_adamw_state_loads_into_fused_adamw_float_lr(fused, backend):
    torch_model = tiny_model()
    theirs = _torch_adamw(torch_model, fused, lr=1e-2)
    _train(torch_model, theirs, 0, 4)
    sd = _through_disk(theirs.state_dict())
    model = tiny_model(seed=9)
    model.load_state_dict(torch_model.state_dict())
    ours = FusedAdamW(model.parameters(), lr=0.5, weight_decay=0.0, backend=backend)
    ours.load_state_dict(sd)
    assert ours.clock.tolist() == [4, 0]  # derived from the per-parameter steps
    assert ours.param_groups[0]["lr"] == 1e-2 and ours.param_groups[0]["weight_decay"] == 0.1
    assert ours.param_groups[0]["schedule"] is None
    for q in model.parameters():
        assert ours.state[q]["step"].device == q.device and ours.state[q]["step"].shape == ()
    _train(torch_model, theirs, 4, 9)
    _train(model, ours, 4, 9)
    _assert_close(torch_model, model)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fused", [False, True], ids=["torch-for-loop", "torch-fused"])
def test_torch_adamw_with_scheduler_state_loads_into_scheduled_fused_adamw(fused, backend):
    """torch AdamW driven by a torch scheduler -> FusedAdamW(lr=same schedule): the clock derived from the
    steps equals the scheduler's position, and the runs continue together."""
    torch_model = tiny_model()
    theirs = _torch_adamw(torch_model, fused, lr=SCHED.peak)
    scheduler = S.LRScheduler(theirs, SCHED)
    _train(torch_model, theirs, 0, 5, scheduler)
    sd = _through_disk(theirs.state_dict())
    model = tiny_model(seed=9)
    model.load_state_dict(torch_model.state_dict())
    ours = FusedAdamW(model.parameters(), lr=SCHED, backend=backend)
    ours.load_state_dict(sd)
    assert ours.clock.tolist() == [clock_from_torch_scheduler(scheduler), 0] == [5, 0]
    assert ours.param_groups[0]["schedule"] == SCHED  # this optimizer's schedule keeps driving
    assert ours.get_last_lr() == [SCHED(5)]
    _train(torch_model, theirs, 5, 10, scheduler)
    _train(model, ours, 5, 10)
    _assert_close(torch_model, model)


def test_set_clock_positions_the_schedule():
    model = tiny_model()
    opt = FusedAdamW(model.parameters(), lr=SCHED, backend="reference")
    torch_opt = torch.optim.AdamW(tiny_model().parameters(), lr=SCHED.peak)
    scheduler = S.LRScheduler(torch_opt, SCHED)
    for _ in range(7):
        torch_opt.step()
        scheduler.step()
    opt.set_clock(steps=clock_from_torch_scheduler(scheduler))
    assert opt.get_last_lr() == [SCHED(7)] == [torch_opt.param_groups[0]["lr"]]
    _train(model, opt, 0, 1)
    assert opt.clock.tolist() == [8, 0] and opt.get_last_lr()[0] == pytest.approx(SCHED(7), rel=1e-6)
    with pytest.raises(ValueError, match=r"steps must be an int in \[0, "):
        opt.set_clock(steps=-1)


def test_torch_scheduler_for_refuses_token_schedules_and_mismatched_groups():
    sched = S.power(max_lr=1e-2, a=1.0, b=-0.5, total=10_000, warmup=1_000, unit="tokens")
    opt = FusedAdamW(tiny_model().parameters(), lr=sched, backend="reference")
    with pytest.raises(ValueError, match=r"counts tokens; a torch scheduler steps once per update"):
        torch_scheduler_for(torch.optim.AdamW(tiny_model().parameters()), opt)
    params = list(tiny_model().parameters())
    two_groups = torch.optim.AdamW([{"params": params[:2]}, {"params": params[2:]}])
    with pytest.raises(ValueError, match=r"source has 1 param groups; optimizer has 2"):
        torch_scheduler_for(two_groups, FusedAdamW(tiny_model().parameters(), lr=SCHED))


def test_torch_scheduler_for_keeps_lr_scale_and_float_groups():
    model = tiny_model()
    params = list(model.parameters())
    ours = FusedAdamW([{"params": params[:2], "lr_scale": 0.5}, {"params": params[2:], "lr": 3e-3}], lr=SCHED,
                      backend="reference")
    _train(model, ours, 0, 4)
    torch_model = tiny_model()
    theirs = torch.optim.AdamW([{"params": list(torch_model.parameters())[:2]},
                                {"params": list(torch_model.parameters())[2:]}])
    torch_scheduler_for(theirs, ours)
    assert [g["lr"] for g in theirs.param_groups] == [0.5 * SCHED(4), 3e-3]
    assert ours.get_last_lr()[0] == pytest.approx(0.5 * SCHED(3), rel=1e-6)


# ------------------------------------------------------------------------------------------------------
# the clock without the top-level entry (torch.distributed.checkpoint keeps only state and param_groups)
# ------------------------------------------------------------------------------------------------------
def test_clock_travels_in_the_param_groups_when_the_top_level_entry_is_dropped():
    sched = S.chain(S.Phase("linear", 300, 0.0, 1e-2), S.Phase("cosine", 1000, 1e-2, 1e-3), unit="tokens")
    model = tiny_model()
    params = list(model.parameters())
    opt = FusedLAMB([{"params": params[:2]}, {"params": params[2:], "lr": 3e-3}], lr=sched, backend="reference")
    for step in range(3):
        tiny_backward(model, step)
        opt.step(tokens=64 + step)
    sd = _through_disk(opt.state_dict())
    assert [g["clock"] for g in sd["param_groups"]] == [[3, 195], [3, 195]]
    dcp_like = {"state": sd["state"], "param_groups": sd["param_groups"]}
    fresh_params = list(tiny_model(seed=2).parameters())
    fresh = FusedLAMB([{"params": fresh_params[:2]}, {"params": fresh_params[2:]}], lr=1e-3, backend="reference")
    fresh.load_state_dict(dcp_like)
    assert fresh.clock.tolist() == [3, 195]
    assert fresh.param_groups[0]["schedule"] == sched and fresh.param_groups[1]["schedule"] is None
    assert all("clock" not in g for g in fresh.param_groups)  # the copy is not kept in the live groups
    bad = deepcopy(dcp_like)
    bad["param_groups"][1]["clock"] = [4, 195]
    with pytest.raises(ValueError, match=r"hold different clocks"):
        fresh.load_state_dict(bad)


def test_stale_group_clock_after_a_torch_optimizer_trained_on_is_replaced_by_the_steps():
    """ours -> torch AdamW (with its own scheduler, keeping our group keys) -> ours: the group clock copy
    is older than the steps; the steps win, with a warning."""
    model = tiny_model()
    ours = FusedAdamW(model.parameters(), lr=SCHED, backend="reference")
    _train(model, ours, 0, 3)
    torch_model = tiny_model()
    torch_model.load_state_dict(model.state_dict())
    theirs = torch.optim.AdamW(torch_model.parameters())
    theirs.load_state_dict(_through_disk(ours.state_dict()))
    for g in theirs.param_groups:
        g["initial_lr"] = SCHED.peak
    scheduler = S.LRScheduler(theirs, SCHED, last_epoch=2)  # not torch_scheduler_for: the copy stays
    _train(torch_model, theirs, 3, 7, scheduler)
    back = FusedAdamW(tiny_model().parameters(), lr=1e-3, backend="reference")
    with pytest.warns(RuntimeWarning, match=r"clock \(3 updates\) is behind the largest per-parameter step \(7\)"):
        back.load_state_dict(_through_disk(theirs.state_dict()))
    assert back.clock.tolist() == [7, 0] and back.param_groups[0]["schedule"] == SCHED


def test_torch_scheduler_for_drops_the_group_clock_copies():
    model = tiny_model()
    ours = FusedAdamW(model.parameters(), lr=SCHED, backend="reference")
    _train(model, ours, 0, 4)
    theirs = torch.optim.AdamW(tiny_model().parameters())
    theirs.load_state_dict(ours.state_dict())
    assert theirs.param_groups[0]["clock"] == [4, 0]
    torch_scheduler_for(theirs, theirs.state_dict())  # the group copy is a valid source too
    assert "clock" not in theirs.param_groups[0] and theirs.param_groups[0]["lr"] == SCHED(4)


def test_torch_state_into_a_token_schedule_warns_that_the_token_clock_is_unknown():
    torch_model = tiny_model()
    theirs = torch.optim.AdamW(torch_model.parameters())
    _train(torch_model, theirs, 0, 2)
    sched = S.chain(S.Phase("linear", 300, 0.0, 1e-2), unit="tokens")
    ours = FusedAdamW(tiny_model().parameters(), lr=sched, backend="reference")
    with pytest.warns(RuntimeWarning, match=r"token clock starts at 0; set it with opt.set_clock\(tokens=...\)"):
        ours.load_state_dict(theirs.state_dict())
    assert ours.clock.tolist() == [2, 0]
    ours.set_clock(tokens=500)
    assert ours.clock.tolist() == [2, 500]


def test_deepcopy_and_pickle_keep_the_clock_and_continue_identically():
    import pickle

    model = tiny_model()
    opt = FusedAdamW(model.parameters(), lr=SCHED, backend="reference")
    _train(model, opt, 0, 3)
    twin_model, twin = deepcopy((model, opt))
    assert twin.clock.tolist() == [3, 0] and twin.clock is not opt.clock
    _train(model, opt, 3, 6)
    _train(twin_model, twin, 3, 6)
    for p, q in zip(model.parameters(), twin_model.parameters()):
        assert torch.equal(p, q)
    again = pickle.loads(pickle.dumps(opt))
    assert again.clock.tolist() == [6, 0] and again._options == opt._options
