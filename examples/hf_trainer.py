"""FusedAdamW with an in-kernel WSD schedule under the Hugging Face ``Trainer``.

Three Trainer runs from the same initial weights, same data order:

  (a) torch.optim.AdamW + a LambdaLR giving the same WSD schedule: Trainer(optimizers=(opt, sched));
  (b) FusedAdamW(lr=S.wsd(...)): Trainer(optimizers=(opt, opt.lr_scheduler())), saving checkpoint-K halfway;
  (c) a fresh model, optimizer and Trainer: trainer.train(resume_from_checkpoint=".../checkpoint-K").

(b) must match (a) to fp32 rounding (weights) and exactly (the learning_rate the Trainer logs at every
step); (c) must match (b) exactly. Runs on CPU in seconds:

    python examples/hf_trainer.py [--steps 40] [--out DIR]

Pass optimizers=(opt, opt.lr_scheduler()), not (opt, None): with None the Trainer builds a second
scheduler on top of ours (the optimizer warns; see docs/integrations.md).
"""

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import torch
import transformers
from transformers import Trainer, TrainingArguments
from transformers.trainer_callback import PrinterCallback

from lrsched_fused import FusedAdamW, schedules as S

PEAK_LR, WEIGHT_DECAY, BATCH = 1e-2, 0.1, 8


class Regressor(torch.nn.Module):
    """Any nn.Module works with the Trainer if forward takes the batch's keys and returns a ``loss``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)  # every run starts from the same weights
        self.net = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.GELU(), torch.nn.Linear(64, 1))

    def forward(self, x, y):
        return {"loss": torch.nn.functional.mse_loss(self.net(x), y)}


def make_dataset(rows: int = 256) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(rows, 16, generator=g)
    y = x[:, :4].sum(1, keepdim=True).sin() + 0.5
    return [{"x": x[i], "y": y[i]} for i in range(rows)]


def train(out: Path, opt, sched, model, steps: int, save_at: int = 0, resume: Path | None = None):
    args = TrainingArguments(output_dir=str(out), max_steps=steps, per_device_train_batch_size=BATCH,
                             logging_steps=1, save_strategy="steps" if save_at else "no", save_steps=save_at or steps,
                             report_to="none", disable_tqdm=True, use_cpu=True, seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=make_dataset(), optimizers=(opt, sched))
    trainer.remove_callback(PrinterCallback)  # keep the output short
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    return {h["step"]: h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h}


def max_rel_diff(m1: torch.nn.Module, m2: torch.nn.Module) -> float:
    """max|w1 - w2| / max|w2| over all parameters as one vector (0.0 only when bit-identical)."""
    w1 = torch.cat([p.detach().reshape(-1) for p in m1.parameters()])
    w2 = torch.cat([p.detach().reshape(-1) for p in m2.parameters()])
    return float((w1 - w2).abs().max() / w2.abs().max())


def lr_diff(lrs: dict, ref: dict) -> float:
    """max over the logged steps of |lr - lr_ref|, over max |lr_ref|."""
    if sorted(lrs) != sorted(ref):
        return float("inf")
    return max(abs(lrs[k] - ref[k]) for k in ref) / max(abs(v) for v in ref.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per run (default 40)")
    parser.add_argument("--out", type=Path, help="keep the Trainer's output folders here (default: a temp dir)")
    opts = parser.parse_args()
    steps = opts.steps
    if steps < 4:
        parser.error(f"--steps must be >= 4; got {steps}")
    transformers.logging.set_verbosity_error()
    out = opts.out or Path(tempfile.mkdtemp(prefix="hf_trainer_"))
    warmup, decay, half = max(1, steps // 10), max(1, steps // 5), steps // 2
    schedule = S.wsd(peak_lr=PEAK_LR, total_steps=steps, warmup_steps=warmup, decay_steps=decay)
    try:
        # (a) torch AdamW + LambdaLR: the multiplier of PEAK_LR at update t (t = 0 for the first update)
        model_a = Regressor()
        opt_a = torch.optim.AdamW(model_a.parameters(), lr=PEAK_LR, weight_decay=WEIGHT_DECAY)
        sched_a = torch.optim.lr_scheduler.LambdaLR(opt_a, lambda t: schedule(t) / PEAK_LR)
        lr_a = train(out / "a", opt_a, sched_a, model_a, steps)

        # (b) the swap: the schedule is the optimizer's lr; opt.lr_scheduler() is what the Trainer steps,
        # saves and logs (its step() changes nothing the kernel uses)
        model_b = Regressor()
        opt_b = FusedAdamW(model_b.parameters(), lr=schedule, weight_decay=WEIGHT_DECAY)
        lr_b = train(out / "b", opt_b, opt_b.lr_scheduler(), model_b, steps, save_at=half)

        # (c) a new process would do exactly this: build everything as in (b), then resume from the checkpoint
        # (optimizer.pt carries the moments, the schedule and the clock)
        model_c = Regressor()
        opt_c = FusedAdamW(model_c.parameters(), lr=schedule, weight_decay=WEIGHT_DECAY)
        lr_c = train(out / "c", opt_c, opt_c.lr_scheduler(), model_c, steps, resume=out / "b" / f"checkpoint-{half}")
    finally:
        if opts.out is None:
            shutil.rmtree(out, ignore_errors=True)

    w_ba, w_cb = max_rel_diff(model_b, model_a), max_rel_diff(model_c, model_b)
    l_ba, l_cb = lr_diff(lr_b, lr_a), lr_diff(lr_c, lr_b)
    shown = sorted({1, *range(0, steps + 1, max(1, steps // 4))} - {0})
    print(f"steps={steps} warmup={warmup} decay={decay} resumed_at={half} clock={opt_c.clock.tolist()}")
    print(f"logged learning_rate at steps {shown}:")
    print(f"  (a) torch AdamW + LambdaLR:         {[round(lr_a[k], 6) for k in shown]}")
    print(f"  (b) FusedAdamW + opt.lr_scheduler(): {[round(lr_b[k], 6) for k in shown]}")
    print(f"(b) vs (a): weights max rel diff {w_ba:.3e}, logged lr max rel diff {l_ba:.3e}")
    print(f"(c) resumed vs (b) uninterrupted: weights max rel diff {w_cb:.3e}, logged lr max rel diff {l_cb:.3e}")
    ok = w_ba <= 1e-5 and l_ba <= 1e-12 and w_cb == 0.0 and l_cb == 0.0
    print("OK" if ok else "FAILED: expected weights (b vs a) <= 1e-5, logged lr (b vs a) <= 1e-12, (c vs b) == 0")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
