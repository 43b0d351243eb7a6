"""FusedAdamW and FusedLAMB under accelerate (issue 14 item 5).

* ``accelerator.prepare(model, opt, opt.lr_scheduler(), loader)`` with gradient accumulation (``A`` micro-batches
  per optimizer step; on the others accelerate skips the optimizer's and the scheduler's ``step()``): the
  weights after every optimizer step and ``scheduler.get_last_lr()`` equal those of a plain loop over the same
  effective batches: FusedAdamW against torch AdamW + the equivalent ``LambdaLR`` (``lambda t: schedule(t) /
  peak``, torch lr = peak) to fp32 rounding, FusedLAMB against FusedLAMB in the plain loop bit for bit; the
  lr against ``LambdaLR``'s in both.
* ``accelerator.save_state`` / ``load_state`` (+ ``skip_first_batches``) resumes exactly.

Weights are compared as one vector per model, ``max|w - w_ref| / max|w_ref|``; lrs as one vector over the
steps, ``max|lr - lr_ref| / max|lr_ref|``. Each comparison prints its figures (``pytest -s`` shows them).
"""

from __future__ import annotations

import pytest
import torch

from lrsched_fused import FusedAdamW, FusedLAMB, schedules as S

pytest.importorskip("accelerate")
from accelerate import Accelerator  # noqa: E402
from accelerate.state import AcceleratorState, GradientState  # noqa: E402

N, A, MICRO = 8, 2, 4  # optimizer steps, micro-batches per step, rows per micro-batch
SAVE_AT = 4
SCHED = S.wsd(peak_lr=1e-2, total_steps=N, warmup_steps=2, decay_steps=3, final_lr=1e-4)


def data() -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N * A * MICRO, 8, generator=g)
    return torch.utils.data.TensorDataset(x, x[:, :2].sum(1, keepdim=True).sin() + 0.5)


def net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))


def flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


def rel(w: torch.Tensor, ref: torch.Tensor) -> float:
    return float((w.double() - ref.double()).abs().max() / ref.double().abs().max())


def rel_lr(lrs: dict[int, float], ref: dict[int, float]) -> float:
    assert sorted(lrs) == sorted(ref), (lrs, ref)
    return max(abs(lrs[k] - ref[k]) for k in ref) / max(abs(v) for v in ref.values())


def make_optimizer(kind: str, params):
    if kind == "torch":
        opt = torch.optim.AdamW(params, lr=SCHED.peak, weight_decay=0.1)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda t: SCHED(t) / SCHED.peak)
    opt = (FusedLAMB if kind == "lamb" else FusedAdamW)(params, lr=SCHED, weight_decay=0.1)
    return opt, opt.lr_scheduler()


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """accelerate keeps process-wide singletons (AcceleratorState, GradientState); each run starts clean and
    leaves them clean for the HF Trainer's own Accelerator."""
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def plain_loop(kind: str):
    """No accelerate: A micro-batches of loss / A, then one step; lr from the scheduler after each step."""
    model = net()
    opt, sched = make_optimizer(kind, model.parameters())
    micro = list(torch.utils.data.DataLoader(data(), batch_size=MICRO))
    weights, lrs = {}, {0: sched.get_last_lr()[0]}
    for step in range(1, N + 1):
        for x, y in micro[(step - 1) * A:step * A]:
            (torch.nn.functional.mse_loss(model(x), y) / A).backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        weights[step], lrs[step] = flat(model), sched.get_last_lr()[0]
    return weights, lrs


def accelerated(kind: str, *, save_dir=None, load_dir=None):
    """The accelerate loop; saves its state after SAVE_AT steps (save_dir) or starts from it (load_dir)."""
    accelerator = Accelerator(gradient_accumulation_steps=A, cpu=True)
    model = net()
    opt, sched = make_optimizer(kind, model.parameters())
    loader = torch.utils.data.DataLoader(data(), batch_size=MICRO)
    model, opt, sched, loader = accelerator.prepare(model, opt, sched, loader)
    step, weights, lrs = 0, {}, {0: sched.get_last_lr()[0]}
    if load_dir is not None:
        accelerator.load_state(str(load_dir))
        step, lrs = SAVE_AT, {}
        loader = accelerator.skip_first_batches(loader, SAVE_AT * A)
    for x, y in loader:
        with accelerator.accumulate(model):
            accelerator.backward(torch.nn.functional.mse_loss(model(x), y))
            opt.step()  # a no-op on the micro-batches that only accumulate
            sched.step()  # likewise (accelerate checks sync_gradients)
            opt.zero_grad()
        if accelerator.sync_gradients:
            step += 1
            weights[step], lrs[step] = flat(model), sched.get_last_lr()[0]
            if save_dir is not None and step == SAVE_AT:
                accelerator.save_state(str(save_dir))
    return weights, lrs, opt


@pytest.mark.parametrize("kind", ["adamw", "lamb"])
def test_gradient_accumulation_matches_the_plain_loop(kind):
    w, lrs, opt = accelerated(kind)
    w_ref, _ = plain_loop("torch" if kind == "adamw" else kind)
    _, lr_torch = plain_loop("torch")
    assert sorted(w) == sorted(w_ref) == list(range(1, N + 1))
    w_diff = max(rel(w[k], w_ref[k]) for k in w_ref)
    lr_diff = rel_lr(lrs, lr_torch)
    against = "torch AdamW + LambdaLR" if kind == "adamw" else "FusedLAMB"
    print(f"\n[figures] accelerate, Fused{'LAMB' if kind == 'lamb' else 'AdamW'}, gradient accumulation {A}: "
          f"weights max rel diff {w_diff:.3e} (vs {against} in a plain loop), get_last_lr() max rel diff "
          f"{lr_diff:.3e} (vs LambdaLR)")
    assert w_diff <= (1e-5 if kind == "adamw" else 0.0)
    assert lr_diff <= 1e-12
    assert opt.optimizer.clock.tolist() == [N, 0]  # one clock tick per optimizer step, not per micro-batch


@pytest.mark.parametrize("kind", ["adamw", "lamb"])
def test_save_state_load_state_resumes_exactly(kind, tmp_path):
    w, lrs, _ = accelerated(kind, save_dir=tmp_path / "state")
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    w_res, lr_res, opt = accelerated(kind, load_dir=tmp_path / "state")
    assert sorted(w_res) == list(range(SAVE_AT + 1, N + 1))
    w_diff = max(rel(w_res[k], w[k]) for k in w_res)
    lr_diff = rel_lr(lr_res, {k: v for k, v in lrs.items() if k > SAVE_AT})
    print(f"\n[figures] accelerate, Fused{'LAMB' if kind == 'lamb' else 'AdamW'}, load_state after {SAVE_AT} steps "
          f"vs uninterrupted: weights max rel diff {w_diff:.3e}, get_last_lr() max rel diff {lr_diff:.3e}")
    assert w_diff == 0.0 and lr_diff == 0.0
    assert opt.optimizer.clock.tolist() == [N, 0]
