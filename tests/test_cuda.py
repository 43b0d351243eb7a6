"""What only a GPU can show (issue 13, items 6-8): every test here is marked ``gpu`` and skipped without one;
``bench/gpu_check.sh`` runs them first (``pytest -m gpu tests/``).

* CUDA-graph capture of a whole training step (forward, backward, ``step``) replays exactly like eager
  steps across WSD phase edges, with a token clock fed through a device tensor; what cannot be captured
  (the first step, a schedule change, a Python-int ``tokens``) is refused with a clear error, before
  anything changes.
* An optimizer whose parameters live on the CPU reads a GradScaler's ``found_inf`` / ``grad_scale`` that
  live on the GPU only after the copy landed (FSDP2 ``CPUOffloadPolicy``).
* A backend launches on its tensors' device, whatever torch's current device is (several GPUs).
"""

from __future__ import annotations

import copy

import pytest
import torch

from lrsched_fused import FusedAdamW, FusedLAMB, schedules as S

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

WSD = S.wsd(peak_lr=1e-2, total_steps=16, warmup_steps=4, decay_steps=6, final_lr=1e-4)
#: a schedule over tokens (so that step(tokens=...) is required)
TOKEN_SCHED = S.power(max_lr=1e-2, a=0.2, b=-0.5, total=10_000, unit="tokens")


def _model(device="cuda"):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4)).to(device)


def _cuda_backends():
    from lrsched_fused.backends import available_backends

    return [b for b in ("triton", "cuda") if available_backends().get(b) is None]


@pytest.mark.parametrize("backend", _cuda_backends())
@pytest.mark.parametrize("kind", ["adamw", "lamb"])
def test_a_captured_training_step_replays_like_eager_steps(backend, kind):
    cls = FusedAdamW if kind == "adamw" else FusedLAMB
    model = _model()
    twin = copy.deepcopy(model)
    opt = cls(model.parameters(), lr=WSD, weight_decay=0.1, backend=backend)
    ref = cls(twin.parameters(), lr=WSD, weight_decay=0.1, backend=backend)
    x = torch.randn(32, 8, device="cuda")
    y = torch.randn(32, 4, device="cuda")
    static_x, static_y = x.clone(), y.clone()

    def loss_of(m, a, b):
        return torch.nn.functional.mse_loss(m(a), b)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # warm-up: plan, state and tables exist before the capture
            opt.zero_grad(set_to_none=False)
            loss_of(model, static_x, static_y).backward()
            opt.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=False)
    with torch.cuda.graph(graph):
        loss_of(model, static_x, static_y).backward()
        opt.step()
    for _ in range(3):  # the twin makes the warm-up steps eagerly
        ref.zero_grad(set_to_none=False)
        loss_of(twin, x, y).backward()
        ref.step()
    lrs = []
    for k in range(14):  # 3 + 14 steps cross the warmup end, the decay start and the end of the schedule
        opt.zero_grad(set_to_none=False)
        graph.replay()
        lrs.append(float(opt.telemetry()["lr"][0]))
        ref.zero_grad(set_to_none=False)
        loss_of(twin, x, y).backward()
        ref.step()
    torch.cuda.synchronize()
    assert opt.clock.tolist() == ref.clock.tolist() == [17, 0]
    assert lrs == pytest.approx([WSD(t) for t in range(3, 17)], rel=1e-5)
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)


def test_a_capture_refuses_what_it_cannot_replay_and_changes_nothing():
    model = _model()
    opt = FusedAdamW(model.parameters(), lr=TOKEN_SCHED)
    x = torch.randn(4, 8, device="cuda")
    tokens = torch.tensor([16], device="cuda")
    graph = torch.cuda.CUDAGraph()
    # 1. the first step allocates: refused inside a capture
    model(x).square().mean().backward()  # the checks raise before the step launches anything
    with pytest.raises(ValueError, match="first step"):
        with torch.cuda.graph(graph):
            opt.step(tokens=tokens)
    assert opt.clock is None and not opt.state
    for _ in range(2):
        model(x).square().mean().backward()
        opt.step(tokens=tokens)
    clock = opt.clock.clone()
    # 2. a Python int for tokens would be frozen into the graph
    with pytest.raises(ValueError, match="Python int"):
        with torch.cuda.graph(torch.cuda.CUDAGraph()):
            opt.step(tokens=16)
    # 3. a schedule change is data the capture would not see again
    opt.set_schedule(S.power(max_lr=5e-3, a=0.2, b=-0.5, total=10_000, unit="tokens"))
    with pytest.raises(ValueError, match="during a CUDA graph capture"):
        with torch.cuda.graph(torch.cuda.CUDAGraph()):
            opt.step(tokens=tokens)
    assert torch.equal(opt.clock, clock)


@pytest.mark.parametrize("kind", ["adamw", "lamb"])
def test_a_cpu_optimizer_reads_gpu_scalars_after_they_landed(kind):
    """FSDP2 with CPUOffloadPolicy: parameters, gradients and the optimizer on the CPU, the GradScaler's
    found_inf and scale on the GPU. The step must see their values (a non-blocking device-to-host copy
    read at once could see stale memory)."""
    cls = FusedAdamW if kind == "adamw" else FusedLAMB
    model = _model("cpu")
    opt = cls(model.parameters(), lr=1e-2, backend="cpu")
    x = torch.randn(8, 8)
    for k in range(20):
        before = [p.detach().clone() for p in model.parameters()]
        torch.cuda._sleep(1_000_000)  # keep the GPU stream busy, so that an unsynchronized read would race
        opt.found_inf = torch.full((1,), float(k % 2), device="cuda")
        opt.grad_scale = torch.full((1,), 2.0, device="cuda")
        model.zero_grad()
        (model(x).square().mean() * 2.0).backward()
        opt.step()
        changed = any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
        assert changed == (k % 2 == 0), k
    assert opt.clock.tolist() == [10, 0]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
@pytest.mark.parametrize("backend", _cuda_backends())
def test_a_backend_launches_on_its_tensors_device(backend):
    model = _model("cuda:1")
    twin = copy.deepcopy(model).to("cuda:0")
    opt = FusedAdamW(model.parameters(), lr=WSD, backend=backend)
    ref = FusedAdamW(twin.parameters(), lr=WSD, backend=backend)
    x = torch.randn(4, 8)
    with torch.cuda.device(0):  # torch's current device is not the parameters'
        for _ in range(3):
            for m, o in ((model, opt), (twin, ref)):
                o.zero_grad()
                m(x.to(next(m.parameters()).device)).square().mean().backward()
                o.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p.cpu(), q.cpu(), rtol=1e-6, atol=0)
