"""Schedules against peers where the conventions match (issue 3; ``algorithms.md`` C.1, E.8-9).

* transformers ``get_wsd_schedule`` (linear / cosine / 1-sqrt decay; ``min_lr_ratio = r`` maps to
  ``init_lr = final_lr = r * peak_lr``, because its warmup starts at ``r`` too);
* torch ``CosineAnnealingLR(T_max=total, eta_min=final)`` equals ``S.cosine`` without warmup up to
  ``total`` (torch's keeps oscillating after it; ours holds ``final_lr``);
* torch ``LambdaLR``: the first ``optimizer.step()`` uses ``lambda(0)``, as ``S.LRScheduler`` and the
  fused optimizers' device clock do.

transformers is optional here (``pip install transformers``; it does not pull torch).
"""

from __future__ import annotations

import pytest
import torch

from lrsched_fused import FusedAdamW, schedules as S


def lrs_seen_by_optimizer(make_scheduler, steps: int, base_lr: float = 1.0) -> list[float]:
    """The lr each of ``steps`` optimizer steps runs with, under a torch scheduler."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=base_lr)
    sched = make_scheduler(opt)
    seen = []
    for _ in range(steps):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return seen


def assert_close(got: list[float], want: list[float], rel: float) -> None:
    scale = max(abs(w) for w in want)
    worst = max(abs(g - w) for g, w in zip(got, want)) / scale
    assert worst <= rel, f"max rel err {worst:.3g}"


WSD_CASES = [
    dict(total=60, warmup=6, decay=15, ratio=0.0),
    dict(total=60, warmup=0, decay=60, ratio=0.0),
    dict(total=60, warmup=6, decay=15, ratio=0.1),
    dict(total=997, warmup=50, decay=200, ratio=0.05),
]


@pytest.mark.parametrize("decay", ["linear", "cosine", "1-sqrt"])
@pytest.mark.parametrize("case", WSD_CASES, ids=["short", "decay-only", "min_lr_ratio", "long"])
def test_wsd_matches_transformers_get_wsd_schedule(decay, case):
    transformers = pytest.importorskip("transformers")
    peak = 3e-3
    ours = S.wsd(peak, case["total"], case["warmup"], decay_steps=case["decay"], decay=decay,
                 final_lr=case["ratio"] * peak, init_lr=case["ratio"] * peak)
    n = case["total"] + 5
    theirs = lrs_seen_by_optimizer(
        lambda opt: transformers.get_wsd_schedule(opt, num_warmup_steps=case["warmup"], num_decay_steps=case["decay"],
                                                  num_training_steps=case["total"], decay_type=decay,
                                                  min_lr_ratio=case["ratio"]), n, base_lr=peak)
    assert_close([ours(t) for t in range(n)], theirs, rel=1e-12)


@pytest.mark.parametrize("total, final", [(50, 0.0), (50, 1e-4), (1000, 3e-5)], ids=["to-0", "to-eta_min", "long"])
def test_cosine_matches_torch_cosine_annealing_lr(total, final):
    peak = 2e-3
    ours = S.cosine(peak, total, final_lr=final)
    theirs = lrs_seen_by_optimizer(
        lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total, eta_min=final), total + 1,
        base_lr=peak)
    # torch's chainable form accumulates rounding step by step; agreement to ~1e-12 of the peak
    assert_close([ours(t) for t in range(total + 1)], theirs, rel=1e-10)


def test_lambda_lr_first_step_index_matches_ours():
    sched = S.wsd(1e-3, 40, 8, decay_steps=10, init_lr=1e-4)
    via_lambda = lrs_seen_by_optimizer(lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda s: sched(s)), 45)
    via_adapter = lrs_seen_by_optimizer(lambda opt: S.LRScheduler(opt, sched), 45)
    assert via_lambda == via_adapter == [sched(t) for t in range(45)]
    assert via_lambda[0] == 1e-4  # step 0 is used, not skipped


def test_fused_optimizer_clock_uses_the_same_first_step_index():
    """The device clock starts at 0: the first update of FusedAdamW uses ``schedule(0)`` as LambdaLR does."""
    sched = S.linear(1e-2, 10, warmup_steps=4, init_lr=1e-3)
    p = torch.nn.Parameter(torch.ones(3))
    opt = FusedAdamW([p], lr=sched, backend="reference")
    used = []
    for _ in range(12):
        p.grad = torch.ones(3)
        opt.step()
        used.append(opt.get_last_lr()[0])
    assert used == pytest.approx([sched(t) for t in range(12)], rel=1e-6)
    assert used[0] == pytest.approx(1e-3, rel=1e-6)
