"""FusedAdamW and FusedLAMB under PyTorch Lightning (issue 14 item 4).

* ``configure_optimizers`` returns the optimizer alone, or ``{"optimizer": opt, "lr_scheduler":
  {"scheduler": opt.lr_scheduler(), "interval": "step"}}``. ``LearningRateMonitor`` logs the true lr at every
  step: equal to what it logs for torch AdamW + the equivalent ``LambdaLR`` (``lambda t: schedule(t) / peak``,
  torch lr = peak). The weights after every step match that torch run (FusedAdamW, to fp32 rounding) or
  FusedLAMB in a plain loop on the same batches (no trainer; bit for bit).
* ``Trainer.fit(ckpt_path=...)`` from a ``ModelCheckpoint`` file resumes exactly: weights and logged lr equal
  to the uninterrupted run. The checkpoint is taken at the last batch of an epoch: Lightning replays a
  plain ``DataLoader`` from the start of the epoch when it resumes mid-epoch (it warns so), which changes the
  data, not the optimizer.

Weights are compared as one vector per model, ``max|w - w_ref| / max|w_ref|``; lrs as one vector over the
steps, ``max|lr - lr_ref| / max|lr_ref|``. Each comparison prints its figures (``pytest -s`` shows them).
"""

from __future__ import annotations

import pytest
import torch

from lrsched_fused import FusedAdamW, FusedLAMB, schedules as S

pl = pytest.importorskip("pytorch_lightning")
from pytorch_lightning.callbacks import Callback, LearningRateMonitor, ModelCheckpoint  # noqa: E402
from pytorch_lightning.loggers import Logger  # noqa: E402

# Lightning's advice for real runs (workers, logging intervals) and a deprecation inside it; not ours
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:pytorch_lightning",
                                        "ignore::UserWarning:lightning_fabric", "ignore:.*LeafSpec.*")

N, BATCH, ROWS = 12, 8, 32  # 12 steps, 4 batches an epoch
SAVE_AT = 8  # the last batch of the second epoch
SCHED = S.wsd(peak_lr=1e-2, total_steps=N, warmup_steps=3, decay_steps=4, final_lr=1e-4)
CASES = [("adamw", "dict"), ("adamw", "alone"), ("lamb", "dict")]


def data() -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(ROWS, 8, generator=g)
    return torch.utils.data.TensorDataset(x, x[:, :2].sum(1, keepdim=True).sin() + 0.5)


def loader() -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(data(), batch_size=BATCH, shuffle=False)


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


class LitNet(pl.LightningModule):
    def __init__(self, kind: str, form: str) -> None:
        super().__init__()
        self.net, self.kind, self.form = net(), kind, form

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        opt, sched = make_optimizer(self.kind, self.parameters())
        if self.form == "alone":
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class MemoryLogger(Logger):
    """Keeps what is logged (no files, no network)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int, dict]] = []

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics, step=None) -> None:
        self.rows.append((step, dict(metrics)))

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass


class Snapshot(Callback):
    def __init__(self) -> None:
        self.weights: dict[int, torch.Tensor] = {}

    def on_train_batch_end(self, trainer, module, *args) -> None:
        self.weights[trainer.global_step] = flat(module)


def fit(root, kind: str, form: str, *, save_every: int = 0, ckpt_path=None):
    """One ``Trainer.fit``; returns (weights after each step, lr logged by LearningRateMonitor at each step)."""
    logger, snap = MemoryLogger(), Snapshot()
    callbacks = [LearningRateMonitor(logging_interval="step"), snap]
    if save_every:
        callbacks.append(ModelCheckpoint(dirpath=root, filename="{step}", every_n_train_steps=save_every,
                                         save_top_k=-1))
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=N, logger=logger, callbacks=callbacks,
                         enable_checkpointing=bool(save_every), enable_progress_bar=False,
                         enable_model_summary=False, log_every_n_steps=1, default_root_dir=root)
    trainer.fit(LitNet(kind, form), loader(), ckpt_path=ckpt_path)
    lrs = {step: v for step, row in logger.rows for k, v in row.items() if k.startswith("lr-")}
    return snap.weights, lrs, trainer


def plain_loop(kind: str) -> dict[int, torch.Tensor]:
    """The same optimizer on the same batches, no trainer."""
    model = net()
    opt, _ = make_optimizer(kind, model.parameters())
    batches, weights = list(loader()), {}
    for step in range(1, N + 1):
        x, y = batches[(step - 1) % len(batches)]
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        weights[step] = flat(model)
    return weights


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Each case fitted once (with a checkpoint every SAVE_AT // 2 steps), on demand."""
    cache: dict = {}

    def get(kind: str, form: str):
        if (kind, form) not in cache:
            root = tmp_path_factory.mktemp(f"pl_{kind}_{form}")
            cache[kind, form] = (*fit(root, kind, form, save_every=SAVE_AT // 2), root)
        return cache[kind, form]

    return get


@pytest.mark.parametrize("kind,form", CASES)
def test_lr_monitor_and_weights_match_torch_adamw_with_lambdalr(runs, kind, form):
    w, lrs, trainer, _ = runs(kind, form)
    w_torch, lr_torch, _, _ = runs("torch", "dict")
    assert sorted(lr_torch) == list(range(N))  # before each step: the lr that step uses
    ref, against = (w_torch, "torch AdamW + LambdaLR") if kind == "adamw" else (plain_loop(kind), "a plain loop")
    assert sorted(w) == sorted(ref) == list(range(1, N + 1))
    w_diff = max(rel(w[k], ref[k]) for k in ref)
    lr_diff = rel_lr(lrs, lr_torch)
    print(f"\n[figures] Lightning, Fused{kind.upper() if kind == 'lamb' else 'AdamW'}, configure_optimizers -> "
          f"{'optimizer alone' if form == 'alone' else 'dict with opt.lr_scheduler()'}: weights max rel diff "
          f"{w_diff:.3e} (vs {against}), LearningRateMonitor lr max rel diff {lr_diff:.3e} (vs torch AdamW + "
          f"LambdaLR)")
    assert w_diff <= (1e-5 if kind == "adamw" else 0.0)
    assert lr_diff <= 1e-12
    assert trainer.optimizers[0].clock.tolist() == [N, 0]


@pytest.mark.parametrize("kind,form", [("lamb", "dict"), ("adamw", "alone")])
def test_fit_from_ckpt_path_resumes_exactly(runs, tmp_path, kind, form):
    w, lrs, _, root = runs(kind, form)
    ckpt = root / f"step={SAVE_AT}.ckpt"
    assert ckpt.is_file(), sorted(p.name for p in root.iterdir())
    w_res, lr_res, trainer = fit(tmp_path, kind, form, ckpt_path=ckpt)
    assert sorted(w_res) == list(range(SAVE_AT + 1, N + 1))  # only the steps after the checkpoint ran
    w_diff = max(rel(w_res[k], w[k]) for k in w_res)
    lr_diff = rel_lr(lr_res, {k: v for k, v in lrs.items() if k >= SAVE_AT})
    print(f"\n[figures] Lightning, Fused{'LAMB' if kind == 'lamb' else 'AdamW'} ({form}), fit(ckpt_path=step={SAVE_AT}"
          f".ckpt) vs uninterrupted: weights max rel diff {w_diff:.3e}, logged lr max rel diff {lr_diff:.3e}")
    assert w_diff == 0.0 and lr_diff == 0.0
    assert trainer.optimizers[0].clock.tolist() == [N, 0]
