"""Schedules in param groups are :class:`~lrsched_fused.schedules.Schedule` objects: immutable, hashable, with a
readable repr. A user changes a group's schedule by assigning it (the object, or its ``to_dict()`` data),
and the change takes effect at the next step; state dicts hold the plain ``to_dict()`` data.

The weights are checked against the float64 reference driven by the lr the user asked for: the old
schedule for the steps before the assignment, the new one after (both read at the same clock)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from helpers import backends_on_cpu, max_rel_err, tiny_backward, tiny_model
from lrsched_fused import FusedAdamW, FusedLAMB, reference as R, schedules as S
from lrsched_fused.schedules import Schedule

OLD = S.cosine(peak_lr=1e-2, total_steps=20, warmup_steps=2)
NEW = S.wsd(peak_lr=3e-2, total_steps=20, warmup_steps=6, decay_steps=5, final_lr=1e-3)
SWITCH = 4


def _grads(model, steps):
    out = []
    for k in range(steps):
        tiny_backward(model, k)
        out.append([p.grad.clone() for p in model.parameters()])
    return out


@pytest.mark.parametrize("backend", backends_on_cpu())
@pytest.mark.parametrize("kind", ["adamw", "lamb"])
@pytest.mark.parametrize("form", ["object", "dict"])
def test_an_assigned_schedule_takes_effect_at_the_next_step(backend, kind, form):
    model = tiny_model()
    start = [p.detach().clone() for p in model.parameters()]
    grads = _grads(tiny_model(), 9)
    cls = FusedAdamW if kind == "adamw" else FusedLAMB
    opt = cls(model.parameters(), lr=OLD, weight_decay=0.1, backend=backend)
    lrs = []
    for k, step_grads in enumerate(grads):
        if k == SWITCH:
            opt.param_groups[0]["schedule"] = NEW if form == "object" else NEW.to_dict()
        for p, g in zip(model.parameters(), step_grads):
            p.grad = g.clone()
        opt.step()
        lrs.append(float(opt.telemetry()["lr"][0]))
    assert isinstance(opt.param_groups[0]["schedule"], Schedule) and opt.param_groups[0]["schedule"] == NEW
    asked = lambda t: OLD(t) if t < SWITCH else NEW(t)  # noqa: E731  (the lr the user asked for at clock t)
    assert lrs == pytest.approx([asked(t) for t in range(9)], rel=1e-6)
    run = (R.run_adamw if kind == "adamw" else R.run_lamb)(
        [{"params": start, "lr": asked, "weight_decay": 0.1}], grads, eps=1e-8 if kind == "adamw" else 1e-6)
    for p, ref in zip(model.parameters(), run.params):
        assert max_rel_err(p, ref) <= 1e-5


def test_groups_hold_immutable_hashable_schedules_with_a_readable_repr():
    opt = FusedAdamW(tiny_model().parameters(), lr=OLD, backend="reference")
    sched = opt.param_groups[0]["schedule"]
    assert sched is OLD and isinstance(sched, Schedule)
    with pytest.raises(dataclasses.FrozenInstanceError):
        sched.unit = "tokens"
    assert hash(sched) == hash(S.cosine(peak_lr=1e-2, total_steps=20, warmup_steps=2))
    assert {sched: 1}[S.cosine(peak_lr=1e-2, total_steps=20, warmup_steps=2)] == 1
    assert repr(sched) == "cosine(peak_lr=0.01, total_steps=20, warmup_steps=2, final_lr=0.0, init_lr=0.0)"
    assert opt.param_groups[0]["lr"] == OLD(0) == 0.0  # the lr the first step will use (issue 14)


def test_state_dicts_hold_plain_schedule_data_and_load_back_as_objects():
    model = tiny_model()
    opt = FusedAdamW(model.parameters(), lr=OLD, backend="reference")
    tiny_backward(model, 0)
    opt.step()
    sd = opt.state_dict()
    assert sd["param_groups"][0]["schedule"] == OLD.to_dict()
    assert isinstance(opt.param_groups[0]["schedule"], Schedule)  # the live group is untouched
    fresh = FusedAdamW(tiny_model().parameters(), lr=1e-3, backend="reference")
    fresh.load_state_dict(sd)
    assert fresh.param_groups[0]["schedule"] == OLD and isinstance(fresh.param_groups[0]["schedule"], Schedule)


def test_assigning_bad_schedule_data_fails_the_next_step_and_changes_nothing():
    model = tiny_model()
    opt = FusedAdamW(model.parameters(), lr=OLD, backend="reference")
    tiny_backward(model, 0)
    opt.step()
    before = [p.detach().clone() for p in model.parameters()]
    bad = OLD.to_dict()
    bad["phases"][0]["length"] = -1
    opt.param_groups[0]["schedule"] = bad
    tiny_backward(model, 1)
    with pytest.raises(ValueError, match=r"param_groups\[0\]: .*Phase.length"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert opt.clock.tolist() == [1, 0]
