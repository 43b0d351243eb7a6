"""One-shot check of the CUDA backend on a GPU machine (the CPU machines can only compile it).

Prepared for the short GPU slots: build first (``LRSCHED_BUILD_CUDA=1 LRSCHED_REQUIRE_EXT=1 pip install
--no-build-isolation -e .``), then ``python csrc/cuda/gpu_check.py``. It compares ``backend="cuda"``
with the reference backend run on float64 copies (AdamW and LAMB, fused and sharded LAMB paths, several
dtypes, 20 steps), checks that two runs give identical bits, that the schedule evaluator agrees, and
times AdamW against ``torch.optim.AdamW(fused=True)``. Prints one line per check and exits non-zero on a
failure.
"""

from __future__ import annotations

import math
import sys
import time

import torch

from lrsched_fused import schedules as S
from lrsched_fused.backends import StepContext, TensorBatch, get_backend
from lrsched_fused.kernels import layout as L

FAILED: list[str] = []


def report(name: str, ok: bool, detail: str = "") -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {name} {detail}")
    if not ok:
        FAILED.append(name)


def hparams(kind: str, dev) -> torch.Tensor:
    row = [0.0] * L.HP_COLS
    row[L.HP_LR_SCALE], row[L.HP_BETA1], row[L.HP_BETA2] = 1.0, 0.9, 0.999
    row[L.HP_EPS], row[L.HP_WEIGHT_DECAY] = (1e-6 if kind == "lamb" else 1e-8), 0.05
    row[L.HP_BIAS_CORRECTION] = row[L.HP_GRAD_AVERAGING] = row[L.HP_ADAPT] = 1.0
    row[L.HP_TRUST_MAX] = math.inf
    return torch.tensor([row], dtype=torch.float64, device=dev)


def compare(kind: str, pdtype, sdtype, sharded: bool = False, steps: int = 20) -> None:
    dev = torch.device("cuda")
    cuda, ref = get_backend("cuda"), get_backend("reference")
    sizes = [1, 17, 70000, 0, 4099]
    g = torch.Generator(device="cpu").manual_seed(0)
    p0 = [torch.randn(k, generator=g, dtype=torch.float64) for k in sizes]
    ours = [p.to(dev, pdtype) for p in p0]
    theirs = [p.to(dev, pdtype).double() for p in p0]
    m = [torch.zeros(k, device=dev, dtype=sdtype) for k in sizes]
    v = [torch.zeros(k, device=dev, dtype=sdtype) for k in sizes]
    mo = [torch.zeros(k, device=dev, dtype=torch.float64) for k in sizes]
    vo = [torch.zeros(k, device=dev, dtype=torch.float64) for k in sizes]
    n = len(sizes)
    gi = torch.zeros(n, dtype=torch.int64, device=dev)
    st, sto = torch.zeros(n, device=dev), torch.zeros(n, device=dev)
    tabs = S.encode_tables([S.cosine(1e-2, 15, warmup_steps=3)], dev)
    hp = hparams(kind, dev)
    clock, clocko = torch.zeros(2, dtype=torch.int64, device=dev), torch.zeros(2, dtype=torch.int64, device=dev)
    lr, lro = torch.zeros(1, device=dev), torch.zeros(1, device=dev)
    norms, normso = torch.zeros(n, 3, device=dev), torch.zeros(n, 3, device=dev)
    for _ in range(steps):
        grads = [torch.randn(k, generator=g, dtype=torch.float64).to(dev, pdtype) for k in sizes]
        b = TensorBatch(ours, grads, m, v, None, None, gi, st)
        bo = TensorBatch(theirs, [x.double() for x in grads], mo, vo, None, None, gi, sto)
        if kind == "adamw":
            cuda.adamw(b, StepContext(tabs, hp, clock), amsgrad=False)
            ref.adamw(bo, StepContext(tabs, hp, clocko), amsgrad=False)
        else:
            cuda.lamb(b, StepContext(tabs, hp, clock), norms_out=norms, clip_div=None,
                      allreduce=(lambda s: None) if sharded else None)
            ref.lamb(bo, StepContext(tabs, hp, clocko), norms_out=normso, clip_div=None, allreduce=None)
        cuda.advance(StepContext(tabs, hp, clock), st, lr, None)
        ref.advance(StepContext(tabs, hp, clocko), sto, lro, None)
        if pdtype != torch.float64:
            for t in theirs:
                t.copy_(t.to(pdtype).double())
    torch.cuda.synchronize()
    err = max(float((a.double() - b).abs().max() / b.abs().max().clamp_min(1e-30))
              for a, b in zip(ours, theirs) if b.numel())
    tol = {torch.float32: 1e-5, torch.float64: 1e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}[pdtype]
    tol = max(tol, {torch.float32: 1e-5, torch.float64: 1e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}[sdtype])
    report(f"{kind}{' sharded' if sharded else ''} p={pdtype} s={sdtype} vs float64 reference", err <= tol,
           f"max rel err {err:.2e} (tol {tol:.0e}); clock {clock.tolist()} == {clocko.tolist()}")
    if kind == "lamb":
        nerr = float((norms.double() - normso.double()).abs().max() / normso.abs().max())
        report(f"lamb telemetry p={pdtype}", nerr <= max(tol, 1e-5), f"{nerr:.2e}")


def schedule_parity() -> None:
    sched = S.wsd(3e-4, 2**41, warmup_steps=2**20, decay_fraction=0.2, decay="1-sqrt")
    steps = [0, 1, 2**20 - 1, 2**20, 2**40, 2**40 + 1, int(0.8 * 2**41), 2**41 - 1, 2**41, 2**41 + 5]
    ref = S.evaluate(sched, steps, backend="reference")
    got = S.evaluate(sched, steps, backend="cuda").cpu().double()
    err = float((got - ref).abs().max() / ref.abs().max())
    report("schedule evaluator (cuda) vs reference", err <= 2e-6, f"{err:.2e}")


def timing(params: int = 100_000_000, tensors: int = 100, rounds: int = 20) -> None:
    dev = torch.device("cuda")
    sizes = [params // tensors] * tensors
    ps = [torch.nn.Parameter(torch.randn(k, device=dev)) for k in sizes]
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    for p, q in zip(ps, qs):
        p.grad = torch.randn_like(p)
        q.grad = p.grad.clone()
    from lrsched_fused import FusedAdamW

    ours = FusedAdamW(ps, lr=S.cosine(1e-3, 10**6, warmup_steps=100), backend="cuda")
    theirs = torch.optim.AdamW(qs, lr=1e-3, fused=True)
    times = {"ours cuda": [], "torch fused": []}
    for _ in range(3):
        ours.step()
        theirs.step()
    for _ in range(rounds):
        for name, opt in (("ours cuda", ours), ("torch fused", theirs)):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            opt.step()
            torch.cuda.synchronize()
            times[name].append((time.perf_counter() - t0) * 1e3)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    for k, ms in med.items():
        print(f"     {k:12s} AdamW {params / 1e6:.0f}M params / {tensors} tensors: {ms:.3f} ms "
              f"({28 * params / ms / 1e6:.0f} GB/s at 28 B/param)")
    print(f"     ratio ours / torch fused = {med['ours cuda'] / med['torch fused']:.3f}")


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 2
    get_backend("cuda")  # raises with the reason if the extension is missing
    for kind in ("adamw", "lamb"):
        for pd, sd in ((torch.float32, torch.float32), (torch.float64, torch.float64), (torch.bfloat16, torch.float32),
                       (torch.float16, torch.float32), (torch.bfloat16, torch.bfloat16)):
            compare(kind, pd, sd)
    compare("lamb", torch.float32, torch.float32, sharded=True)
    schedule_parity()
    timing()
    print(f"{len(FAILED)} failed" if FAILED else "all checks passed")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
