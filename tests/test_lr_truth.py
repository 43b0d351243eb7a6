"""The lr that param groups and the scheduler object show is the lr the kernel uses (issue 14).

* After construction and after every ``step()``, a scheduled group's ``lr`` equals what
  ``torch.optim.AdamW`` + the equivalent ``LambdaLR`` shows, bit for bit (both are ``lr_scale *
  schedule(t)`` in float64), and it is the lr the next step's kernel reads (``telemetry()["lr"]``, float32);
  also after ``set_clock``, a re-warm (``set_schedule``), a token clock and a resume. ``step()`` makes no
  host read for it (``tests/test_no_sync.py``).
* After a GradScaler-skipped step the host mirror runs one step ahead until something reads the device
  (``get_last_lr()``, ``state_dict()``, the scheduler's ``get_last_lr()``), which corrects it.
* ``opt.lr_scheduler()`` is a torch ``LRScheduler``: its ``step()`` changes nothing, its ``get_last_lr()``
  is ``LambdaLR``'s, its state round-trips with the optimizer's, and extra ``step()`` calls change nothing.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from helpers import backends_on_cpu, tiny_backward, tiny_model
from lrsched_fused import FusedAdamW, FusedLAMB, schedules as S
from lrsched_fused.optim import KernelLRScheduler

BACKENDS = [b for b in backends_on_cpu() if b != "triton"]
WSD = S.wsd(peak_lr=1e-2, total_steps=30, warmup_steps=5, decay_steps=10, final_lr=1e-4)


def _pair(kind, backend, lr_scale=1.0):
    model, twin = tiny_model(), tiny_model()
    cls = FusedAdamW if kind == "adamw" else FusedLAMB
    ours = cls([{"params": list(model.parameters()), "lr_scale": lr_scale}], lr=WSD, backend=backend)
    ref = torch.optim.AdamW(twin.parameters(), lr=WSD.peak * lr_scale)
    sched = torch.optim.lr_scheduler.LambdaLR(ref, lambda t: WSD(t) / WSD.peak)
    return model, ours, twin, ref, sched


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["adamw", "lamb"])
def test_group_lr_is_lambdalrs_after_construction_and_every_step(kind, backend):
    model, ours, twin, ref, sched = _pair(kind, backend, lr_scale=0.5)
    assert ours.param_groups[0]["lr"] == ref.param_groups[0]["lr"] == 0.0
    for k in range(35):
        tiny_backward(model, k)
        ours.step()
        ref.step()
        sched.step()
        want = ref.param_groups[0]["lr"]
        assert ours.param_groups[0]["lr"] == pytest.approx(want, rel=1e-12, abs=0), k
        assert type(ours.param_groups[0]["lr"]) is float
    # the next step's kernel uses it
    tiny_backward(model, 35)
    ours.step()
    assert float(ours.telemetry()["lr"][0]) == pytest.approx(0.5 * WSD(35), rel=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_group_lr_after_set_clock_rewarm_and_tokens(backend):
    model = tiny_model()
    tokens_sched = S.power(max_lr=1e-2, a=0.5, b=-0.5, total=10_000, warmup=100, unit="tokens")
    opt = FusedAdamW([{"params": list(model.parameters())[:2]},
                      {"params": list(model.parameters())[2:], "lr": tokens_sched}], lr=WSD, backend=backend)
    for k in range(3):
        tiny_backward(model, k)
        opt.step(tokens=37)
    assert [g["lr"] for g in opt.param_groups] == [WSD(3), tokens_sched(111)]
    opt.set_clock(steps=20)
    assert opt.param_groups[0]["lr"] == WSD(20)
    rewarm = S.rewarm(WSD, at_step=20, warmup_steps=4, peak_lr=5e-3, total_steps=40)
    opt.set_schedule(rewarm, group=0)
    assert opt.param_groups[0]["lr"] == rewarm(20)
    tiny_backward(model, 3)
    opt.step(tokens=torch.tensor(10))  # tokens as a tensor: the token mirror is corrected at the next read
    assert opt.param_groups[0]["lr"] == rewarm(21)
    assert opt.get_last_lr()[1] == pytest.approx(tokens_sched(111), rel=1e-6)  # the lr the last step used
    assert opt.param_groups[1]["lr"] == tokens_sched(121)  # corrected by that device read


@pytest.mark.parametrize("backend", BACKENDS)
def test_group_lr_after_resume(backend):
    model = tiny_model()
    opt = FusedLAMB(model.parameters(), lr=WSD, backend=backend)
    for k in range(7):
        tiny_backward(model, k)
        opt.step()
    sd = copy.deepcopy(opt.state_dict())
    assert sd["param_groups"][0]["lr"] == WSD(7)
    fresh = FusedLAMB(tiny_model(seed=3).parameters(), lr=1e-3, backend=backend)
    fresh.load_state_dict(sd)
    assert fresh.param_groups[0]["lr"] == WSD(7)


def test_a_skipped_step_puts_the_mirror_one_step_ahead_until_a_device_read():
    model = tiny_model()
    opt = FusedAdamW(model.parameters(), lr=WSD, backend="cpu" if "cpu" in BACKENDS else "reference")
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4)
    scaler.scale(torch.ones(()))
    for k in range(3):
        tiny_backward(model, k)
        if k == 1:
            next(model.parameters()).grad.view(-1)[0] = float("inf")
        scaler.step(opt)
        scaler.update()
    assert opt.clock.tolist() == [2, 0]
    assert opt.param_groups[0]["lr"] == WSD(3)  # optimistic: one ahead (documented)
    assert opt.lr_scheduler().get_last_lr() == [WSD(2)]  # a read corrects it
    assert opt.param_groups[0]["lr"] == WSD(2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_scheduler_object_follows_and_never_drives(backend):
    model, ours, twin, ref, lambda_lr = _pair("adamw", backend)
    sched = ours.lr_scheduler()
    assert isinstance(sched, torch.optim.lr_scheduler.LRScheduler) and isinstance(sched, KernelLRScheduler)
    assert sched.get_last_lr() == lambda_lr.get_last_lr()
    for k in range(12):
        tiny_backward(model, k)
        tiny_backward(twin, k)
        ours.step()
        ref.step()
        # between optimizer.step() and scheduler.step() (where the HF Trainer logs): the lr just used
        assert sched.get_last_lr() == pytest.approx(lambda_lr.get_last_lr(), rel=1e-12)
        for _ in range(1 + k % 3):  # accelerate steps it once per process: extra calls change nothing
            sched.step()
        lambda_lr.step()
        assert sched.get_last_lr() == pytest.approx(lambda_lr.get_last_lr(), rel=1e-12)
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-8)
    # a resume from (optimizer, scheduler) state dicts, loaded in either order, continues exactly
    osd, ssd = copy.deepcopy(ours.state_dict()), copy.deepcopy(sched.state_dict())
    for order in ("optimizer-first", "scheduler-first"):
        fresh = FusedAdamW(copy.deepcopy(model).parameters(), lr=1.0, backend=backend)
        fresh_sched = fresh.lr_scheduler()
        if order == "optimizer-first":
            fresh.load_state_dict(osd)
            fresh_sched.load_state_dict(ssd)
        else:
            fresh_sched.load_state_dict(ssd)
            fresh.load_state_dict(osd)
        assert fresh_sched.get_last_lr() == sched.get_last_lr() == [WSD(12)]
        assert fresh_sched.last_epoch == sched.last_epoch


def test_a_second_scheduler_writing_group_lr_gets_a_warning_that_says_what_to_pass():
    model = tiny_model()
    opt = FusedAdamW(model.parameters(), lr=WSD, backend="reference")
    other = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5)  # what the HF Trainer builds with (opt, None)
    tiny_backward(model, 0)
    opt.step()
    other.step()  # writes 0.5 * initial_lr over the lr the kernel's schedule gives
    tiny_backward(model, 1)
    with pytest.warns(RuntimeWarning, match=r"optimizers=\(opt, opt.lr_scheduler\(\)\)"):
        opt.step()
    assert opt.param_groups[0]["lr"] == WSD(2)  # the kernel's schedule wins, and shows
    other.step()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tiny_backward(model, 2)
        opt.step()  # one warning only


def test_the_scheduler_refuses_an_optimizer_that_is_not_ours():
    with pytest.raises(ValueError, match="FusedAdamW or FusedLAMB.*schedules.LRScheduler"):
        KernelLRScheduler(torch.optim.AdamW(tiny_model().parameters()))
