"""FusedAdamW under the Hugging Face ``Trainer`` (issue 14 item 3).

* ``Trainer(..., optimizers=(opt, opt.lr_scheduler()))`` against torch AdamW + the equivalent ``LambdaLR``
  (``lambda t: schedule(t) / peak``, torch lr = peak) through the same Trainer, same data order: the weights
  after every optimizer step (to fp32 rounding) and the ``learning_rate`` the Trainer logs at every step.
* ``trainer.train(resume_from_checkpoint=...)`` from the Trainer's own ``checkpoint-K`` folder continues
  exactly: weights and logged lr equal to the uninterrupted run, bit for bit.
* ``optimizers=(opt, None)``: the Trainer builds its own scheduler on top of ours. The weights still follow
  our schedule and one ``RuntimeWarning`` says to pass ``optimizers=(opt, opt.lr_scheduler())``.

Weights are compared as one vector per model, ``max|w - w_ref| / max|w_ref|`` (a per-tensor ratio blows up
on a bias that trains towards 0), logged lrs as one vector over the steps, ``max|lr - lr_ref| / max|lr_ref|``
(the schedule starts at 0). Each comparison prints its figures (``pytest -s`` shows them).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from lrsched_fused import FusedAdamW, schedules as S

N, SAVE_AT = 12, 6  # optimizer steps; the checkpoint the resume starts from
SCHED = S.wsd(peak_lr=1e-2, total_steps=N, warmup_steps=3, decay_steps=4, final_lr=1e-4)


def import_trainer():
    """``transformers.Trainer`` and ``TrainingArguments``, or a skip.

    (transformers 5 imports Hugging Face's ``kernels``; under ``python -m pytest`` from the root, this
    repository's ``kernels/`` is found first and steps aside for it: tests/test_packaging.py.)
    """
    pytest.importorskip("accelerate")  # the Trainer needs it
    transformers = pytest.importorskip("transformers")
    from transformers import Trainer, TrainerCallback, TrainingArguments
    from transformers.trainer_callback import PrinterCallback
    transformers.logging.set_verbosity_error()

    class QuietTrainer(Trainer):  # no log lines printed on stdout (disable_tqdm=True prints them)
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.remove_callback(PrinterCallback)

    return QuietTrainer, TrainerCallback, TrainingArguments


class Net(torch.nn.Module):
    """A tiny regression model in the Trainer's calling convention (keyword inputs, a ``loss`` output)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))

    def forward(self, x, y):
        return {"loss": torch.nn.functional.mse_loss(self.net(x), y)}


def dataset() -> list[dict]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 8, generator=g)
    y = x[:, :2].sum(1, keepdim=True).sin() + 0.5
    return [{"x": x[i], "y": y[i]} for i in range(len(x))]


def flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


def rel(w: torch.Tensor, ref: torch.Tensor) -> float:
    return float((w.double() - ref.double()).abs().max() / ref.double().abs().max())


def rel_lr(lrs: dict[int, float], ref: dict[int, float]) -> float:
    assert sorted(lrs) == sorted(ref), (lrs, ref)
    return max(abs(lrs[k] - ref[k]) for k in ref) / max(abs(v) for v in ref.values())


def train(out: Path, kind: str, *, with_sched: bool = True, save_steps: int = 0, resume: Path | None = None):
    """One Trainer run; returns (weights after each step, logged lr at each step, trainer)."""
    Trainer, TrainerCallback, TrainingArguments = import_trainer()
    model = Net()
    if kind == "torch":
        opt = torch.optim.AdamW(model.parameters(), lr=SCHED.peak, weight_decay=0.1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: SCHED(t) / SCHED.peak)
    else:
        opt = FusedAdamW(model.parameters(), lr=SCHED, weight_decay=0.1)
        sched = opt.lr_scheduler() if with_sched else None
    weights: dict[int, torch.Tensor] = {}

    class Snapshot(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            weights[state.global_step] = flat(model)

    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=8, max_steps=N, logging_steps=1,
                             save_strategy="steps" if save_steps else "no", save_steps=save_steps or N,
                             report_to="none", disable_tqdm=True, use_cpu=True, seed=0, dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=dataset(), optimizers=(opt, sched),
                      callbacks=[Snapshot()])
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    lrs = {h["step"]: h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h}
    return weights, lrs, trainer


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """torch AdamW + LambdaLR, and FusedAdamW + opt.lr_scheduler() saving checkpoint-SAVE_AT, each once."""
    tmp = tmp_path_factory.mktemp("hf")
    return {"torch": train(tmp / "torch", "torch"), "ours": train(tmp / "ours", "ours", save_steps=SAVE_AT),
            "dir": tmp / "ours"}


def test_weights_match_torch_adamw_with_lambdalr_at_every_step(runs):
    w_ours, _, trainer = runs["ours"]
    w_torch, _, _ = runs["torch"]
    assert sorted(w_ours) == sorted(w_torch) == list(range(1, N + 1))
    diffs = {k: rel(w_ours[k], w_torch[k]) for k in w_torch}
    print(f"\n[figures] HF Trainer, FusedAdamW vs torch AdamW + LambdaLR: weights max rel diff "
          f"{max(diffs.values()):.3e} over {N} steps")
    assert max(diffs.values()) <= 1e-5, diffs
    assert trainer.optimizer.optimizer.clock.tolist() == [N, 0]  # the Trainer wraps it (AcceleratedOptimizer)


def test_logged_learning_rate_matches_torch_at_every_step(runs):
    _, lr_ours, _ = runs["ours"]
    _, lr_torch, _ = runs["torch"]
    assert sorted(lr_torch) == list(range(1, N + 1))
    print(f"\n[figures] HF Trainer, logged learning_rate vs torch AdamW + LambdaLR: max rel diff "
          f"{rel_lr(lr_ours, lr_torch):.3e}")
    assert rel_lr(lr_ours, lr_torch) <= 1e-12, (lr_ours, lr_torch)


def test_resume_from_checkpoint_continues_exactly(runs, tmp_path):
    w_ours, lr_ours, _ = runs["ours"]
    ckpt = runs["dir"] / f"checkpoint-{SAVE_AT}"
    assert {p.name for p in ckpt.iterdir()} >= {"optimizer.pt", "scheduler.pt", "trainer_state.json"}
    # a fresh model and optimizer (built with the same schedule, as a user's script does), then the checkpoint
    w_res, lr_res, trainer = train(tmp_path / "resumed", "ours", resume=ckpt)
    assert sorted(w_res) == list(range(SAVE_AT + 1, N + 1))  # it ran only the steps after the checkpoint
    w_diff = max(rel(w_res[k], w_ours[k]) for k in w_res)
    lr_diff = rel_lr(lr_res, lr_ours)  # log_history: the checkpoint's entries, then the resumed run's
    print(f"\n[figures] HF Trainer, resume from checkpoint-{SAVE_AT} vs uninterrupted: weights max rel diff "
          f"{w_diff:.3e}, logged lr max rel diff {lr_diff:.3e}")
    assert w_diff == 0.0 and lr_diff == 0.0
    assert trainer.optimizer.optimizer.clock.tolist() == [N, 0]


def test_the_trainers_own_scheduler_does_not_schedule_twice(runs, tmp_path):
    """optimizers=(opt, None): the Trainer's linear LambdaLR writes group['lr'] over ours every step. The kernel
    keeps following our schedule (weights equal to the run with opt.lr_scheduler()), and one RuntimeWarning
    says what to pass instead. What the Trainer *logs* in this set-up is its own scheduler's get_last_lr()."""
    w_ours, _, _ = runs["ours"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        w_none, lr_none, trainer = train(tmp_path / "none", "ours", with_sched=False)
    ours_warnings = [w for w in caught if "optimizers=(opt, opt.lr_scheduler())" in str(w.message)]
    assert len(ours_warnings) == 1, [str(w.message) for w in caught]
    assert issubclass(ours_warnings[0].category, RuntimeWarning)
    assert type(trainer.lr_scheduler).__name__ == "LambdaLR"  # the Trainer did build its own
    w_diff = max(rel(w_none[k], w_ours[k]) for k in w_ours)
    print(f"\n[figures] HF Trainer with optimizers=(opt, None) vs (opt, opt.lr_scheduler()): weights max rel diff "
          f"{w_diff:.3e}; warning: {str(ours_warnings[0].message)[:80]}...; logged learning_rate (the "
          f"Trainer's own scheduler): {sorted(set(lr_none.values()))[:4]}")
    assert w_diff == 0.0
