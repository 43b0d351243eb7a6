"""Replace ``torch.optim.AdamW`` + ``LambdaLR`` with ``FusedAdamW`` and an in-kernel schedule.

Three runs from the same initial weights on the same batches:

  (a) torch.optim.AdamW driven by a LambdaLR (linear warmup, then cosine decay to 0);
  (b) FusedAdamW(lr=S.cosine(...)): the same schedule, evaluated inside the optimizer step;
  (c) like (b), but stopped halfway, saved with torch.save, loaded into a fresh model and optimizer
      with torch.load(weights_only=True), and continued to the end.

(b) must match (a) to float32 rounding, and (c) must match (b) exactly. Runs on CPU in seconds:

    python examples/swap_in_for_adamw.py [--steps 60]
"""

import argparse
import io
import math
import sys

import torch

from lrsched_fused import FusedAdamW, schedules as S

PEAK_LR, WEIGHT_DECAY, BETAS = 1e-2, 0.1, (0.9, 0.95)


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)  # every run starts from the same weights
    return torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.GELU(), torch.nn.LayerNorm(64),
                               torch.nn.Linear(64, 1))


def make_batches(steps: int) -> list:
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(32, 16, generator=g) for _ in range(steps)]
    return [(x, x[:, :4].sum(1, keepdim=True).sin()) for x in xs]  # a smooth target to regress


def train(model, opt, batches, start: int, stop: int, sched=None) -> None:
    for x, y in batches[start:stop]:
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        if sched is not None:
            sched.step()  # (a) only: FusedAdamW reads the lr from its own clock
        opt.zero_grad()


def max_rel_diff(m1: torch.nn.Module, m2: torch.nn.Module) -> float:
    """max over tensors of max|p - q| / max|q| (0.0 only when every parameter is bit-identical)."""
    with torch.no_grad():
        return max(float((p - q).abs().max() / q.abs().max()) for p, q in zip(m1.parameters(), m2.parameters()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="updates per run (default 60)")
    steps = parser.parse_args().steps
    if steps < 2:
        parser.error(f"--steps must be >= 2; got {steps}")
    warmup, half = max(1, steps // 10), steps // 2
    batches = make_batches(steps)

    # (a) torch: the multiplier applied to PEAK_LR at update t (t = 0 for the first update)
    def warmup_cosine(t: int) -> float:
        if t < warmup:
            return t / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (t - warmup) / (steps - warmup))))

    model_a = make_model()
    opt_a = torch.optim.AdamW(model_a.parameters(), lr=PEAK_LR, betas=BETAS, weight_decay=WEIGHT_DECAY)
    train(model_a, opt_a, batches, 0, steps, torch.optim.lr_scheduler.LambdaLR(opt_a, warmup_cosine))

    # (b) the swap: same arguments, the schedule object replaces lr + LambdaLR (no scheduler.step()).
    # model.parameters() decays every tensor, like (a); use lrsched_fused.param_groups(model, 0.1) to
    # leave biases and norm weights undecayed.
    schedule = S.cosine(peak_lr=PEAK_LR, total_steps=steps, warmup_steps=warmup)

    def fused(model):
        return FusedAdamW(model.parameters(), lr=schedule, betas=BETAS, weight_decay=WEIGHT_DECAY)

    model_b = make_model()
    opt_b = fused(model_b)
    train(model_b, opt_b, batches, 0, steps)

    # (c) stop at `half`, checkpoint, and resume in a fresh model + optimizer. The optimizer state dict
    # is plain data (moments, per-tensor step, the schedule and the clock), so weights_only=True loads it.
    model_c = make_model()
    opt_c = fused(model_c)
    train(model_c, opt_c, batches, 0, half)
    buffer = io.BytesIO()  # a file path works the same way
    torch.save({"model": model_c.state_dict(), "optim": opt_c.state_dict()}, buffer)
    del model_c, opt_c

    buffer.seek(0)
    ckpt = torch.load(buffer, weights_only=True)
    model_c = make_model()
    opt_c = fused(model_c)  # the checkpoint's schedule and clock win over the constructor's
    model_c.load_state_dict(ckpt["model"])
    opt_c.load_state_dict(ckpt["optim"])
    train(model_c, opt_c, batches, half, steps)

    b_vs_a, c_vs_b = max_rel_diff(model_b, model_a), max_rel_diff(model_c, model_b)
    print(f"steps={steps} warmup={warmup} resumed_at={half} clock={opt_c.clock.tolist()}")
    print(f"lr at each quarter: {[round(schedule(t), 6) for t in range(0, steps + 1, max(1, steps // 4))]}")
    print(f"(b) FusedAdamW vs (a) torch AdamW + LambdaLR: max rel diff {b_vs_a:.3e}")
    print(f"(c) resumed vs (b) uninterrupted:             max rel diff {c_vs_b:.3e}")
    ok = b_vs_a <= 1e-5 and c_vs_b == 0.0
    print("OK" if ok else "FAILED: expected (b vs a) <= 1e-5 and (c vs b) == 0")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
