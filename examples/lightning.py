"""FusedLAMB with an in-kernel WSD schedule under PyTorch Lightning.

``configure_optimizers`` returns the optimizer and ``opt.lr_scheduler()`` (``interval: "step"``): Lightning
steps, checkpoints and logs that scheduler, and the kernel keeps evaluating the schedule from the
optimizer's device clock. Two runs from the same initial weights on the same batches:

  (a) ``Trainer.fit`` for N steps, with ``LearningRateMonitor`` writing the lr of both param groups (decay /
      no-decay, from ``lrsched_fused.param_groups``) to a ``CSVLogger``, and a ``ModelCheckpoint`` every
      epoch's last batch;
  (b) a fresh model and Trainer: ``Trainer.fit(ckpt_path=<the checkpoint halfway>)``.

The lr logged at every step must be the schedule's (what torch AdamW + ``LambdaLR`` logs for it), and (b)
must end with the weights of (a), bit for bit. Runs on CPU in seconds:

    python examples/lightning.py [--epochs 6] [--out DIR]

(Return ``opt`` alone from ``configure_optimizers`` and the same holds: ``LearningRateMonitor`` reads
``param_groups[i]["lr"]``, which the optimizer keeps equal to the lr of its next step.)
"""

import argparse
import csv
import logging
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger

from lrsched_fused import FusedLAMB, param_groups, schedules as S

BATCHES_PER_EPOCH, BATCH, PEAK_LR = 8, 16, 2e-2


class LitRegressor(pl.LightningModule):
    def __init__(self, schedule: S.Schedule) -> None:
        super().__init__()
        torch.manual_seed(0)  # every run starts from the same weights
        self.net = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.LayerNorm(64), torch.nn.GELU(),
                                       torch.nn.Linear(64, 1))
        self.schedule = schedule

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        # biases and LayerNorm weights: no weight decay and no trust ratio (group 2)
        opt = FusedLAMB(param_groups(self, weight_decay=0.01), lr=self.schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": opt.lr_scheduler(), "interval": "step"}}


def make_loader() -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(BATCHES_PER_EPOCH * BATCH, 16, generator=g)
    y = x[:, :4].sum(1, keepdim=True).sin() + 0.5
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=BATCH)


def fit(out: Path, name: str, schedule, steps: int, ckpt_path: Path | None = None):
    """One fit; returns (the module, {step: [lr of each param group]} from the CSV log)."""
    logger = CSVLogger(out, name=name)
    callbacks = [LearningRateMonitor(logging_interval="step"),
                 ModelCheckpoint(dirpath=out / name / "ckpt", filename="{step}", every_n_train_steps=BATCHES_PER_EPOCH,
                                 save_top_k=-1)]
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=logger, callbacks=callbacks,
                         log_every_n_steps=1, enable_progress_bar=False, enable_model_summary=False)
    module = LitRegressor(schedule)
    trainer.fit(module, make_loader(), ckpt_path=ckpt_path)
    lrs: dict[int, list[float]] = {}
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        for row in csv.DictReader(f):
            found = [float(v) for k, v in sorted(row.items()) if k.startswith("lr-") and v]
            if found:
                lrs[int(row["step"])] = found
    return module, lrs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6, help=f"epochs of {BATCHES_PER_EPOCH} steps (default 6)")
    parser.add_argument("--out", type=Path, help="keep logs and checkpoints here (default: a temp dir)")
    opts = parser.parse_args()
    if opts.epochs < 2:
        parser.error(f"--epochs must be >= 2; got {opts.epochs}")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)  # keep the output short
    logging.getLogger("lightning_fabric").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="pytorch_lightning|lightning_fabric")
    steps = opts.epochs * BATCHES_PER_EPOCH
    resume_at = (opts.epochs // 2) * BATCHES_PER_EPOCH  # the last batch of an epoch (see docs/integrations.md)
    schedule = S.wsd(peak_lr=PEAK_LR, total_steps=steps, warmup_steps=max(1, steps // 10),
                     decay_fraction=0.2, final_lr=PEAK_LR / 100)
    out = opts.out or Path(tempfile.mkdtemp(prefix="lightning_"))
    try:
        a, lr_a = fit(out, "a", schedule, steps)
        b, lr_b = fit(out, "b", schedule, steps, ckpt_path=out / "a" / "ckpt" / f"step={resume_at}.ckpt")
    finally:
        if opts.out is None:
            shutil.rmtree(out, ignore_errors=True)

    # LearningRateMonitor logs before each step, at the number of steps taken so far: lr(t) = schedule(t)
    lr_diff = max(abs(v - schedule(t)) for t, vs in lr_a.items() for v in vs) / schedule.peak
    resumed_lrs_equal = all(lr_b[t] == lr_a[t] for t in lr_b) and sorted(lr_b) == list(range(resume_at, steps))
    wa = torch.cat([p.detach().reshape(-1) for p in a.parameters()])
    wb = torch.cat([p.detach().reshape(-1) for p in b.parameters()])
    w_diff = float((wb - wa).abs().max() / wa.abs().max())
    shown = list(range(0, steps, max(1, steps // 6)))
    print(f"steps={steps} resumed_at={resume_at} param groups={len(lr_a[0])} "
          f"clock={b.trainer.optimizers[0].clock.tolist()}")
    print(f"lr logged by LearningRateMonitor at steps {shown}: {[round(lr_a[t][0], 6) for t in shown]}")
    print(f"logged lr vs the schedule (torch AdamW + LambdaLR's lr): max rel diff {lr_diff:.3e}")
    print(f"(b) resumed vs (a) uninterrupted: weights max rel diff {w_diff:.3e}, logged lr "
          f"{'equal' if resumed_lrs_equal else 'DIFFERENT'} at the {len(lr_b)} resumed steps")
    ok = len(lr_a) == steps and lr_diff <= 1e-12 and resumed_lrs_equal and w_diff == 0.0
    print("OK" if ok else "FAILED: expected logged lr == schedule (<= 1e-12), and (b) == (a) exactly")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
