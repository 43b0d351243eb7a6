"""``step()`` makes no host sync: no ``.item()``, ``.tolist()``, ``bool(t)``, ``float(t)``, ``int(t)``,
``t.numpy()``, ``t.cpu()``, ... on any tensor (on CUDA each of these waits for the device).

The guard patches those methods to raise while ``step()`` runs. Two layers are tested:

* the optimizer front end, with a fake backend that only records its calls (and advances the clock with
  device ops): from the very first step (the plan-building one included), for AdamW and LAMB, with
  schedules, float-lr groups rewritten every step (as a torch scheduler does), ``lr_scale``, amsgrad,
  mixed dtypes (two buckets), master weights, ``max_grad_norm``, ``skip_nonfinite``, GradScaler
  attributes and ``tokens`` (int and tensor);
* the compiled backends end to end (``cpu``; ``triton`` only on a GPU: the interpreter copies tensors to
  the host by design). The ``reference`` backend reads its tables on the host by design; a test shows the
  guard catches exactly that.
"""

from __future__ import annotations

import contextlib
import traceback

import pytest
import torch

from helpers import backends_on_cpu, triton_interpreting
from lrsched_fused import FusedAdamW, FusedLAMB, schedules as S
from lrsched_fused.kernels import layout as L
from lrsched_fused.optim import plan as _plan_module

WSD = S.wsd(peak_lr=1e-2, total_steps=10, warmup_steps=2, decay_steps=3)
TOKENS = S.chain(S.Phase("linear", 500, 0.0, 1e-2), S.Phase("cosine", 2000, 1e-2, 1e-3), unit="tokens")
SYNCING = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy", "cpu", "__array__")


class HostSync(AssertionError):
    pass


@contextlib.contextmanager
def no_host_sync():
    """Every tensor method that reads device data on the host raises :class:`HostSync` inside."""
    saved = {name: getattr(torch.Tensor, name) for name in SYNCING}
    saved_sync = torch.cuda.synchronize

    def forbid(name):
        def raiser(*args, **kwargs):
            raise HostSync(f"Tensor.{name}() called inside step():\n{''.join(traceback.format_stack(limit=8))}")
        return raiser

    try:
        for name in SYNCING:
            setattr(torch.Tensor, name, forbid(name))
        torch.cuda.synchronize = forbid("cuda.synchronize")
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.Tensor, name, fn)
        torch.cuda.synchronize = saved_sync


def test_the_guard_catches_a_host_read():
    t = torch.ones(2)
    for read in (lambda: t.sum().item(), lambda: t.tolist(), lambda: bool(t[0]), lambda: float(t[0]),
                 lambda: int(t[0]), lambda: [0, 1][t[0].long()], lambda: t.numpy(), lambda: t.cpu()):
        with no_host_sync(), pytest.raises(HostSync):
            read()
    assert t.sum().item() == 2.0  # restored


class RecordingBackend:
    """Satisfies the Backend contract without doing the math: records calls, advances with device ops."""

    name = "recording"

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def check(self, device, param_dtype, state_dtype) -> None:
        self.calls.append(("check", param_dtype, state_dtype))

    def gnorm_rows(self, batch) -> int:  # one row of gradient-norm partials per batch (filled by nobody here)
        return 1

    def adamw(self, batch, ctx, *, amsgrad) -> None:
        self.calls.append(("adamw", len(batch), batch.dtype, amsgrad))

    def lamb(self, batch, ctx, *, norms_out, clip_div, allreduce) -> None:
        self.calls.append(("lamb", len(batch), batch.dtype, clip_div is not None))
        norms_out.fill_(1.0)

    def grad_sumsq(self, batch, ctx) -> torch.Tensor:
        self.calls.append(("grad_sumsq", len(batch)))
        return torch.stack([g.float().square().sum() for g in batch.grads]).sum()

    def advance(self, ctx, steps, lr_out, tokens) -> None:
        self.calls.append(("advance", tokens is not None))
        lr_out.copy_(ctx.hparams[:, L.HP_LR_SCALE].float())
        go = torch.ones((), dtype=torch.int64) if ctx.found_inf is None else (ctx.found_inf.reshape(()) == 0).long()
        steps.add_(go.float())
        ctx.clock[L.CLOCK_STEPS] += go
        if tokens is not None:
            ctx.clock[L.CLOCK_TOKENS] += go * tokens.reshape(())

    def evaluate_schedule(self, tables, t):  # pragma: no cover - not used by step()
        raise NotImplementedError


@pytest.fixture
def recording(monkeypatch):
    backend = RecordingBackend()
    monkeypatch.setattr(_plan_module, "select_backend", lambda name, device: backend)
    return backend


def _mixed_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    model[2].to(torch.bfloat16)
    return model


def _backward(model, step: int) -> None:
    gen = torch.Generator().manual_seed(step)
    model.zero_grad(set_to_none=True)
    h = model[1](model[0](torch.randn(3, 4, generator=gen)))
    model[2](h.to(torch.bfloat16)).float().square().mean().backward()


def test_front_end_adamw_makes_no_host_sync(recording):
    model = _mixed_model()
    decay = [model[0].weight, model[2].weight]
    rest = [model[0].bias, model[1].weight, model[1].bias, model[2].bias]
    opt = FusedAdamW([{"params": decay, "lr_scale": 0.5}, {"params": rest, "lr": 1e-3, "amsgrad": True}],
                     lr=TOKENS, master_weights=True, skip_nonfinite=True, backend="reference")
    for step in range(6):
        _backward(model, step)
        opt.param_groups[1]["lr"] = 1e-3 * (step + 1)  # a torch scheduler rewriting the float lr
        opt.found_inf = torch.zeros(1)  # as GradScaler sets them
        opt.grad_scale = torch.full((1,), 2.0**16)
        tokens = 100 + step if step % 2 else torch.tensor(100 + step)
        with no_host_sync():
            opt.step(tokens=tokens)
    kinds = [c[0] for c in recording.calls]
    assert kinds.count("advance") == 6
    # two dtypes x (amsgrad or not) = 4 buckets, one adamw call each per step
    assert kinds.count("adamw") == 6 * 4
    assert opt.clock.tolist() == [6, sum(100 + s for s in range(6))]
    assert opt.telemetry()["lr"].tolist() == [0.5, pytest.approx(6e-3)]


def test_front_end_lamb_with_clipping_makes_no_host_sync(recording):
    model = _mixed_model()
    opt = FusedLAMB(model.parameters(), lr=WSD, max_grad_norm=1.0, trust_clip=(0.01, 10.0), skip_nonfinite=True,
                    backend="reference")
    for step in range(5):
        _backward(model, step)
        with no_host_sync():
            opt.step()
    kinds = [c[0] for c in recording.calls]
    assert kinds.count("lamb") == 5 * 2 and kinds.count("grad_sumsq") == 5 * 2 and kinds.count("advance") == 5
    assert all(c[3] for c in recording.calls if c[0] == "lamb")  # clip_div passed
    assert opt.clock.tolist() == [5, 0]


def test_front_end_rebuilds_and_changed_schedules_make_no_host_sync(recording):
    """Plan rebuilds (a param losing its grad, a state tensor replaced) and schedule changes stay sync-free."""
    model = _mixed_model()
    opt = FusedAdamW(model.parameters(), lr=WSD, backend="reference")
    for step in range(6):
        _backward(model, step)
        if step == 2:
            model[0].bias.grad = None
        if step == 3:
            opt.set_schedule(S.rewarm(WSD, at_step=3, warmup_steps=2, peak_lr=5e-3, total_steps=12))
        if step == 4:
            w = model[0].weight
            opt.state[w]["exp_avg"] = torch.zeros_like(w)
        with no_host_sync():
            opt.step()
    assert opt.clock.tolist() == [6, 0]


def test_front_end_tensor_lr_and_storage_checks_make_no_host_sync(recording):
    """A tensor lr (filled by a torch scheduler), a clock state entry per parameter, and state storage
    swapped under the same object (a new plan) stay sync-free (issue 13)."""
    model = _mixed_model()
    opt = FusedAdamW(model.parameters(), lr=torch.tensor(1e-3), backend="reference")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1 + t))
    for step in range(5):
        _backward(model, step)
        if step == 3:
            w = model[0].weight
            opt.state[w]["exp_avg"].data = torch.zeros_like(w)
        with no_host_sync():
            opt.step()
        sched.step()
    assert opt.clock.tolist() == [5, 0]
    assert all(st["clock"] is opt.clock for st in opt.state.values())


FAST = [b for b in backends_on_cpu() if b != "reference"]


@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("kind", ["adamw", "lamb"])
def test_compiled_backend_step_makes_no_host_sync(kind, backend):
    if backend not in FAST:
        pytest.skip(f"backend {backend!r} is not available here")
    if backend == "triton" and triton_interpreting():
        pytest.skip("the Triton interpreter copies tensors to the host by design; this runs on a GPU")
    device = "cuda" if backend == "triton" else "cpu"
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2)).to(device)
    if kind == "adamw":
        opt = FusedAdamW(model.parameters(), lr=WSD, amsgrad=True, skip_nonfinite=True, backend=backend)
    else:
        opt = FusedLAMB(model.parameters(), lr=WSD, max_grad_norm=0.5, skip_nonfinite=True, backend=backend)
    for step in range(6):
        model.zero_grad(set_to_none=True)
        model(torch.randn(4, 8, device=device)).square().mean().backward()
        if step == 0:
            opt.step()  # builds the plan (allowed to look at the host; it does not need to)
            continue
        with no_host_sync():
            opt.step()
    assert opt.clock.tolist() == [6, 0]
    assert opt.get_last_lr()[0] == pytest.approx(WSD(5), rel=1e-6)
    # the gradient-norm history ring (on by default) was written by those sync-free steps, one row each
    hist = opt.telemetry_history()
    assert hist["step"].tolist() == list(range(6))
    assert (hist["grad_norm_l2"] > 0).all() and (hist["grad_norm_l1"] >= hist["grad_norm_l2"]).all()


@pytest.mark.parametrize("kind", ["adamw", "lamb"])
def test_history_ring_adds_no_launch_and_no_host_sync(recording, kind):
    """The ring costs no launch: with ``telemetry_history`` on, every step makes exactly the backend calls it
    makes with it off (the partials ride in the update kernels, the ring write in ``advance``), and no host
    read; the ring and the partials buffer reach ``advance`` only when it is on."""
    seen = []
    advance = recording.advance

    def recording_advance(ctx, steps, lr_out, tokens):
        seen.append((ctx.gnorm_partials is not None, ctx.history is not None))
        advance(ctx, steps, lr_out, tokens)

    recording.advance = recording_advance
    calls = {}
    for capacity in (0, 16):
        recording.calls.clear()
        model = _mixed_model()
        if kind == "adamw":
            opt = FusedAdamW(model.parameters(), lr=WSD, telemetry_history=capacity, backend="reference")
        else:
            opt = FusedLAMB(model.parameters(), lr=WSD, max_grad_norm=1.0, telemetry_history=capacity,
                            backend="reference")
        for step in range(4):
            _backward(model, step)
            with no_host_sync():
                opt.step()
        calls[capacity] = list(recording.calls)
    assert calls[16] == calls[0] and len(calls[0]) > 0
    assert seen == [(False, False)] * 4 + [(True, True)] * 4


def test_reference_backend_does_read_the_host_and_the_guard_sees_it():
    """The reference backend evaluates the schedule on the host (by design): the guard must trip."""
    model = _mixed_model()
    opt = FusedAdamW(model.parameters(), lr=WSD, backend="reference")
    _backward(model, 0)
    opt.step()
    _backward(model, 1)
    with no_host_sync(), pytest.raises(HostSync):
        opt.step()
