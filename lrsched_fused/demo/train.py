"""The demo's training loop: one function, any optimizer set-up (a :data:`RecipeFactory`).

``train`` knows nothing about which optimizer it drives; the distributed demo (:mod:`.distributed`) wraps
the model (DDP / FSDP2) before calling it and passes a ``BatchStream`` shard, a ``reduce`` hook that
averages losses over the ranks and a ``loss_fn`` that goes through the wrapper.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch

from .data import BatchStream
from .recipes import RecipeFactory

__all__ = ["RunResult", "train", "evaluate"]

Progress = Callable[[int, float | None], None]


@dataclass
class RunResult:
    """Everything one run produced (all host floats).

    Attributes:
        name, backend: the recipe's label and the implementation that ran its optimizer steps.
        losses: training loss of every step (before that step's update), ``[steps]``.
        lrs: the lr every step used, ``[steps]``.
        opt_seconds: wall time of every ``optimizer.step()`` (+ ``scheduler.step()``), ``[steps]``.
        val: ``{step: validation loss}`` after ``step`` updates, at the requested steps.
        seconds: wall time of the whole run.
    """

    name: str
    backend: str
    losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    opt_seconds: list[float] = field(default_factory=list)
    val: dict[int, float] = field(default_factory=dict)
    seconds: float = 0.0

    def train_loss_at(self, step: int, window: int = 10) -> float:
        """Mean training loss over the ``window`` steps before ``step`` updates were applied."""
        lo = max(0, step - window)
        chunk = self.losses[lo:max(step, lo + 1)]
        return sum(chunk) / len(chunk)

    def median_opt_ms(self, skip: int = 3) -> float:
        """Median optimizer-step time in ms, skipping the first ``skip`` steps (state creation, caches)."""
        xs = sorted(self.opt_seconds[skip:] or self.opt_seconds)
        return 1e3 * xs[len(xs) // 2]


LossFn = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def _default_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return model.loss(x, y)


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
             reduce: Callable[[torch.Tensor], torch.Tensor] | None = None, loss_fn: LossFn | None = None) -> float:
    """Mean of ``loss_fn(model, x, y)`` (default ``model.loss(x, y)``) over ``batches``; ``reduce`` averages
    it across ranks when given (every rank must call this: the reduction, and FSDP2's forward, are
    collectives)."""
    loss_fn = loss_fn or _default_loss
    was_training = model.training
    model.eval()
    total, count = None, 0
    for x, y in batches:
        loss = loss_fn(model, x, y).detach()
        total = loss if total is None else total + loss
        count += 1
    model.train(was_training)
    mean = total / count
    if reduce is not None:
        mean = reduce(mean)
    return float(mean)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train(model: torch.nn.Module, make_recipe: RecipeFactory, stream: BatchStream, steps: int, *,
          val_batches: list[tuple[torch.Tensor, torch.Tensor]], eval_at: Iterable[int] = (),
          device: torch.device | str = "cpu", progress: Progress | None = None,
          reduce: Callable[[torch.Tensor], torch.Tensor] | None = None, loss_fn: LossFn | None = None) -> RunResult:
    """Train ``model`` in place for ``steps`` updates with the optimizer set-up ``make_recipe(model)``.

    Step ``k`` (0-based) uses ``stream.batch(k)``; the validation loss is measured after ``k`` updates
    for each ``k`` in ``eval_at`` (0 and ``steps`` allowed). ``progress(k, loss_or_None)`` is called
    after every step (the loss every 10 steps, to avoid a host sync per step on a GPU). ``reduce``
    averages a loss tensor across ranks (distributed training: the logged training and validation losses
    are then the means over ranks); ``loss_fn(model, x, y)`` (training and validation) defaults to
    ``model.loss(x, y)``; for a wrapped model pass one that calls the wrapper, e.g.
    :func:`~lrsched_fused.demo.model.next_token_loss`.
    """
    device = torch.device(device)
    recipe = make_recipe(model)
    opt, sched = recipe.optimizer, recipe.scheduler
    loss_fn = loss_fn or _default_loss
    eval_at = sorted(set(int(k) for k in eval_at if 0 <= int(k) <= steps))
    losses: list[torch.Tensor] = []
    lrs: list[float | torch.Tensor] = []
    opt_seconds: list[float] = []
    result = RunResult(name=recipe.name, backend="")
    start = time.perf_counter()
    model.train()
    for k in range(steps + 1):
        if k in eval_at:
            result.val[k] = evaluate(model, val_batches, reduce, loss_fn)
        if k == steps:
            break
        x, y = stream.batch(k, device)
        loss = loss_fn(model, x, y)
        loss.backward()
        _sync(device)
        t0 = time.perf_counter()
        opt.step()
        lrs.append(recipe.lr_used())
        if sched is not None:
            sched.step()
        _sync(device)
        opt_seconds.append(time.perf_counter() - t0)
        opt.zero_grad(set_to_none=True)
        detached = loss.detach()
        if reduce is not None:
            detached = reduce(detached)
        losses.append(detached)
        if k == 0:
            result.backend = recipe.backend()
        if progress is not None:
            progress(k, float(detached) if (k % 10 == 0 or k == steps - 1) else None)
    result.seconds = time.perf_counter() - start
    result.losses = [float(x) for x in torch.stack(losses).cpu()] if losses else []
    result.lrs = [float(x) for x in lrs]
    result.opt_seconds = opt_seconds
    return result
