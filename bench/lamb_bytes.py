"""Where LAMB's time goes on large tensors: our C++ LAMB call with different scratch settings against
our AdamW call and in-place adds moving 28, 40 and 44 B/param (a diagnostic, not the benchmark).

    python -m bench.lamb_bytes --params 50M --tensors 50 --threads 2

``CpuBackend(lamb_scratch=...)`` sets the buffer in which stage 1 keeps a tensor's update for stage 2:
``None`` (default: threads x min(LAMB_HOT_ELEMS, largest tensor) elements), ``0`` (no buffer: stage 2
recomputes the moments and the update from the gradient, 44 B/param from DRAM: stage 1 reads p, g, m, v;
stage 2 reads p, g, m, v and writes p, m, v) or a small buffer (only tensors that fit stay "hot").
The effective bytes per parameter of each variant is its time multiplied by the in-place-add bandwidth
(measured at 40 B/param in the same interleaved rounds), over the parameter count.
"""

from __future__ import annotations

import argparse

import torch

from .impls import Inputs, _build_floor, _build_ours_kernel
from .timing import interleaved, summarize
from .workloads import Case, bytes_per_param, make_data, parse_count


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.lamb_bytes", description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", type=parse_count, default=50_000_000)
    ap.add_argument("--tensors", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--small-scratch", type=parse_count, default=262_144,
                    help="per-thread elements of the 'small' scratch variant (default 256K)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    case = Case(args.params, args.tensors, "fp32", args.threads)
    inputs = Inputs(*make_data(case))
    variants = {
        "AdamW call": _build_ours_kernel("adamw")(case, inputs),
        "LAMB call, default scratch": _build_ours_kernel("lamb")(case, inputs),
        "LAMB call, no scratch": _build_ours_kernel("lamb", lamb_scratch=0)(case, inputs),
        f"LAMB call, scratch {args.small_scratch}/thread": _build_ours_kernel(
            "lamb", lamb_scratch=args.small_scratch * args.threads)(case, inputs),
    }
    floors = {}
    for nbytes in (28, 40, 44):
        run = _build_floor("adamw")(Case(args.params * nbytes // 28, args.tensors, "fp32", args.threads), inputs)
        floors[f"add, {nbytes} B/param"] = run
    del inputs
    steps = {k: r.step for k, r in {**variants, **floors}.items()}
    times = interleaved(steps, repeats=args.repeats, warmup=3)
    med = {k: summarize(v).median_ms for k, v in times.items()}
    bw = 40 * args.params / (med["add, 40 B/param"] * 1e-3)  # bytes/s of the in-place add
    print(f"{case.title()}: medians over {args.repeats} interleaved rounds; add bandwidth {bw / 1e9:.1f} GB/s")
    for k, m in med.items():
        eff = m * 1e-3 * bw / args.params
        print(f"  {k:36s} {m:8.2f} ms  = {eff:5.1f} B/param at add bandwidth   {m / med['AdamW call']:.3f}x AdamW")
    print(f"  byte model: AdamW {bytes_per_param('adamw', torch.float32, torch.float32)} B, two-sweep LAMB "
          f"{bytes_per_param('lamb', torch.float32, torch.float32)} B (1.43x), recompute-from-g LAMB 44 B (1.57x)")


if __name__ == "__main__":
    main()
