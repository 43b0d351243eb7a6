"""Quick timing of the CPU backend against torch's fused AdamW and the in-place-add floor.

Not the project's benchmark runner (that is ``bench/``): a developer's check of the issue-5 targets.
Implementations are interleaved in every round so that drift and noise from other processes hit all of
them alike; prints median, p20 and p80 (ms) and the ratios of medians.

    python csrc/tools/quick_bench.py --params 50e6 --tensors 50 --threads 2 --rounds 15
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

import lrsched_fused
from lrsched_fused import FusedAdamW
from lrsched_fused.backends import StepContext, TensorBatch
from lrsched_fused.backends.cpu import CpuBackend, extension
from lrsched_fused.kernels import layout as L
from lrsched_fused.schedules import cosine, encode_tables


def mixed_sizes(total: int, count: int, seed: int = 0) -> list[int]:
    """``count`` sizes spread log-uniformly over two decades, summing to ``total``."""
    g = torch.Generator().manual_seed(seed)
    w = torch.exp(torch.rand(count, generator=g, dtype=torch.float64) * math.log(100.0))
    sizes = [max(1, int(x)) for x in (w / w.sum() * total).tolist()]
    sizes[-1] += total - sum(sizes)
    return sizes


def params_for(sizes: list[int], seed: int) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    ps = []
    for n in sizes:
        p = torch.nn.Parameter(torch.randn(n, generator=g))
        p.grad = torch.randn(n, generator=g)
        ps.append(p)
    return ps


def raw_batch(ps: list[torch.nn.Parameter], lamb: bool) -> tuple[TensorBatch, StepContext]:
    n = len(ps)
    batch = TensorBatch([p.data for p in ps], [p.grad for p in ps], [torch.zeros_like(p) for p in ps],
                        [torch.zeros_like(p) for p in ps], None, None, torch.zeros(n, dtype=torch.int64),
                        torch.zeros(n, dtype=torch.float32))
    hp = torch.zeros(1, L.HP_COLS, dtype=torch.float64)
    hp[0, [L.HP_LR_SCALE, L.HP_BETA1, L.HP_BETA2, L.HP_EPS, L.HP_WEIGHT_DECAY]] = torch.tensor(
        [1.0, 0.9, 0.999, 1e-6 if lamb else 1e-8, 0.01], dtype=torch.float64)
    hp[0, [L.HP_BIAS_CORRECTION, L.HP_GRAD_AVERAGING, L.HP_ADAPT]] = 1.0
    hp[0, L.HP_TRUST_MAX] = math.inf
    ctx = StepContext(encode_tables([cosine(1e-3, 10**6, warmup_steps=100)]), hp, torch.tensor([500, 0]))
    return batch, ctx


def timed(fn, sink: list[float]) -> None:
    t0 = time.perf_counter()
    fn()
    sink.append((time.perf_counter() - t0) * 1e3)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", type=float, default=50e6)
    ap.add_argument("--tensors", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--only", default="adamw,lamb,floor,torch,opt", help="comma list of variants")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    only = set(args.only.split(","))
    total = int(args.params)
    sizes = mixed_sizes(total, args.tensors)
    backend = CpuBackend()
    variants: dict[str, callable] = {}
    bytes_per: dict[str, int] = {}
    if "torch" in only:
        tp = params_for(sizes, 1)
        topt = torch.optim.AdamW(tp, lr=1e-3, weight_decay=0.01, fused=True)
        variants["torch AdamW fused"] = topt.step
        bytes_per["torch AdamW fused"] = 28
    if "adamw" in only:
        ap_ = params_for(sizes, 2)
        batch, ctx = raw_batch(ap_, lamb=False)
        variants["ours AdamW (backend call)"] = lambda: backend.adamw(batch, ctx, amsgrad=False)
        bytes_per["ours AdamW (backend call)"] = 28
    if "opt" in only:
        op = params_for(sizes, 3)
        oopt = FusedAdamW(op, lr=1e-3, weight_decay=0.01, backend="cpu")
        variants["ours FusedAdamW.step"] = oopt.step
        bytes_per["ours FusedAdamW.step"] = 28
    if "lamb" in only:
        lp = params_for(sizes, 4)
        lbatch, lctx = raw_batch(lp, lamb=True)
        norms = torch.zeros(len(sizes), 3)
        variants["ours LAMB (backend call)"] = lambda: backend.lamb(lbatch, lctx, norms_out=norms, clip_div=None,
                                                                    allreduce=None)
        bytes_per["ours LAMB (backend call)"] = 40
    if "floor" in only:
        a = torch.randn(total)
        b = torch.randn(total)
        variants["in-place add a.add_(b)"] = lambda: a.add_(b)
        bytes_per["in-place add a.add_(b)"] = 12
    times = {k: [] for k in variants}
    for fn in variants.values():  # warm-up (allocates states)
        fn()
        fn()
    for _ in range(args.rounds):
        for name, fn in variants.items():
            timed(fn, times[name])
    print(f"{total / 1e6:.0f}M params in {len(sizes)} tensors, {args.threads} threads, isa={extension.isa()}, "
          f"{args.rounds} interleaved rounds, torch {torch.__version__}, lrsched_fused {lrsched_fused.__version__}")
    med = {}
    for name, ts in times.items():
        q = statistics.quantiles(ts, n=10)
        med[name] = statistics.median(ts)
        gbs = bytes_per[name] * total / (med[name] * 1e-3) / 1e9
        print(f"  {name:28s} median {med[name]:8.2f} ms   p20 {q[1]:8.2f}  p80 {q[7]:8.2f}   {gbs:6.1f} GB/s "
              f"({bytes_per[name]} B/param)")
    if "torch AdamW fused" in med:
        for name in med:
            if name.startswith("ours AdamW") or name.startswith("ours Fused"):
                print(f"  ratio {name} / torch fused = {med[name] / med['torch AdamW fused']:.3f}")
    if "ours LAMB (backend call)" in med and "ours AdamW (backend call)" in med:
        ratio = med["ours LAMB (backend call)"] / med["ours AdamW (backend call)"]
        print(f"  ratio ours LAMB / ours AdamW = {ratio:.3f}")
    if "in-place add a.add_(b)" in med:
        floor_gbs = 12 * total / (med["in-place add a.add_(b)"] * 1e-3) / 1e9
        for name in med:
            if name.startswith("ours"):
                gbs = bytes_per[name] * total / (med[name] * 1e-3) / 1e9
                print(f"  {name}: {100 * gbs / floor_gbs:.0f}% of the in-place-add floor")


if __name__ == "__main__":
    main()
