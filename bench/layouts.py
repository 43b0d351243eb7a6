"""What a parameter's memory layout costs: AdamW steps on contiguous and on transposed parameters (issue 13:
dense non-contiguous parameters are accepted and updated in place, as laid out).

    python -m bench.layouts                       # 20M params in 50 (1024, 400) tensors, 2 threads
    python -m bench.layouts --rows 256 --tensors 8 --repeats 5

Rows, timed in interleaved rounds (``bench.timing.interleaved``), ms per ``step()`` and the ratio to ours
on contiguous parameters:

* ours and ``torch.optim.AdamW(fused=True)`` on contiguous ``(400, 1024)`` parameters;
* both on transposed views (``(1024, 400)`` storage seen as ``(400, 1024)``) with gradients of the same
  layout (what autograd produces for such a parameter);
* ours on transposed parameters whose gradients are contiguous: the one case where ours copies (each
  gradient into its parameter's layout, every step).
"""

from __future__ import annotations

import argparse

import torch

from lrsched_fused import FusedAdamW
from lrsched_fused import schedules as S

from .timing import interleaved, summarize


def _params(rows: int, cols: int, tensors: int, transposed: bool, grads_contiguous: bool = False) -> list:
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(tensors):
        data = torch.randn(cols, rows, generator=gen).t() if transposed else torch.randn(rows, cols, generator=gen)
        p = torch.nn.Parameter(data)
        grad = torch.randn(cols, rows, generator=gen).t() if transposed else torch.randn(rows, cols, generator=gen)
        p.grad = grad.contiguous() if grads_contiguous else grad
        out.append(p)
    return out


def measure(rows: int, cols: int, tensors: int, repeats: int) -> list[tuple[str, float, float, float]]:
    """``(case, median ms, p20, p80)`` per case (module docstring)."""
    sched = S.cosine(1e-3, 10**6, 0)
    cases = {
        "ours, contiguous": (False, False, "ours"),
        "ours, transposed": (True, False, "ours"),
        "torch fused, contiguous": (False, False, "torch"),
        "torch fused, transposed": (True, False, "torch"),
        "ours, transposed params with contiguous grads (a copy per step)": (True, True, "ours"),
    }
    steps, keep = {}, []
    for name, (transposed, grads_contiguous, impl) in cases.items():
        params = _params(rows, cols, tensors, transposed, grads_contiguous)
        if impl == "ours":
            opt = FusedAdamW(params, lr=sched, weight_decay=0.01, backend="cpu")
        else:
            opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01, fused=True)
        steps[name] = opt.step
        keep.append((opt, params))
    times = interleaved(steps, repeats=repeats, warmup=3)
    out = []
    for name in cases:
        st = summarize(times[name])
        out.append((name, st.median_ms, st.p20_ms, st.p80_ms))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.layouts", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=400)
    ap.add_argument("--cols", type=int, default=1024)
    ap.add_argument("--tensors", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=25)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    for name in ("rows", "cols", "tensors", "repeats", "threads"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name} must be >= 1; got {getattr(args, name)}")
    torch.set_num_threads(args.threads)
    rows = measure(args.rows, args.cols, args.tensors, args.repeats)
    base = rows[0][1]
    n = args.rows * args.cols * args.tensors
    print(f"AdamW, {n / 1e6:.1f}M fp32 params in {args.tensors} ({args.rows}, {args.cols}) tensors, "
          f"{args.threads} thread(s), {args.repeats} interleaved rounds")
    print("| case | median ms | p20-p80 ms | vs ours contiguous |")
    print("|---|---:|---:|---:|")
    for name, med, p20, p80 in rows:
        print(f"| {name} | {med:.2f} | {p20:.2f}-{p80:.2f} | {med / base:.2f}x |")


if __name__ == "__main__":
    main()
