"""int8 LAMB against int8 AdamW by tensor size: where LAMB's second pass costs (issue 15's LAMB / AdamW ratio).

    python -m bench.int8_sizes                                    # 20M fp32 params, 2 threads
    python -m bench.int8_sizes --sizes 8K,100K,400K --params 4M --repeats 5 --csv bench/out/int8_sizes.csv

For each tensor size, the same total of parameters is split into equal tensors of that many elements (rows of
1024 columns), and ``FusedAdamW`` and ``FusedLAMB`` with int8 moments (C++ backend) step their own copies,
timed in interleaved rounds. LAMB's stage 2 re-reads each tensor's parameters and codes after the tensor's
whole stage 1 (the trust ratio needs its norms first); that re-read hits a core's L2 only while the tensor's
share of a thread fits there, so the ratio LAMB / AdamW depends on the size. Columns: median and p20-p80 of
each step, the ratio of the medians. ``bench/RESULTS.md`` (2026-12-07, later) has a recorded run.
"""

from __future__ import annotations

import argparse

import torch

from lrsched_fused import FusedAdamW, FusedLAMB

from .report import machine_info, print_rows
from .timing import interleaved, summarize
from .workloads import human, parse_count

COLUMNS = ("tensor_elems", "tensors", "params", "threads", "adamw_ms", "adamw_p20_ms", "adamw_p80_ms", "lamb_ms",
           "lamb_p20_ms", "lamb_p80_ms", "lamb_over_adamw", "repeats", "cpu", "torch")
WIDTH = 1024
DEFAULT_SIZES = "8K,100K,400K,1.25M,2.86M"


def _params(tensors: int, rows: int, seed: int) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(tensors):
        p = torch.nn.Parameter(torch.randn(rows, WIDTH, generator=gen) * 0.1)
        p.grad = torch.randn(rows, WIDTH, generator=gen) * 1e-3
        out.append(p)
    return out


def measure(size: int, params: int, threads: int, repeats: int, warmup: int) -> dict:
    """One row: ``params`` split into tensors of ``size`` elements (rounded to whole rows of 1024)."""
    torch.set_num_threads(threads)
    rows = max(1, round(size / WIDTH))
    tensors = max(1, round(params / (rows * WIDTH)))
    adamw = FusedAdamW(_params(tensors, rows, 0), lr=1e-3, weight_decay=0.01, state_dtype="int8", backend="cpu")
    lamb = FusedLAMB(_params(tensors, rows, 0), lr=1e-3, weight_decay=0.01, state_dtype="int8", backend="cpu")
    times = interleaved({"adamw": adamw.step, "lamb": lamb.step}, repeats=repeats, warmup=warmup)
    a, b = summarize(times["adamw"]), summarize(times["lamb"])
    return {"tensor_elems": rows * WIDTH, "tensors": tensors, "params": tensors * rows * WIDTH, "threads": threads,
            "adamw_ms": a.median_ms, "adamw_p20_ms": a.p20_ms, "adamw_p80_ms": a.p80_ms, "lamb_ms": b.median_ms,
            "lamb_p20_ms": b.p20_ms, "lamb_p80_ms": b.p80_ms, "lamb_over_adamw": b.median_ms / a.median_ms,
            "repeats": repeats, "cpu": machine_info()["summary"], "torch": torch.__version__}


def table(rows: list[dict]) -> str:
    lines = [f"{'tensor':>10} {'tensors':>7} {'int8 AdamW ms':>15} {'int8 LAMB ms':>15} {'LAMB / AdamW':>12}"]
    for r in rows:
        lines.append(f"{r['tensor_elems']:>10,} {r['tensors']:7d} {r['adamw_ms']:6.2f} "
                     f"({r['adamw_p20_ms']:.2f}-{r['adamw_p80_ms']:.2f}) {r['lamb_ms']:6.2f} "
                     f"({r['lamb_p20_ms']:.2f}-{r['lamb_p80_ms']:.2f}) {r['lamb_over_adamw']:12.3f}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.int8_sizes", description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default=DEFAULT_SIZES, help=f"elements per tensor, comma-separated "
                                                            f"(default {DEFAULT_SIZES})")
    ap.add_argument("--params", type=parse_count, default=parse_count("20M"), help="total parameters per size")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--csv", default=None, help="also append the rows to this CSV")
    args = ap.parse_args(argv)
    try:
        args.sizes = [parse_count(x.strip()) for x in args.sizes.split(",") if x.strip()]
    except ValueError as e:
        ap.error(f"--sizes: {e}")
    if not args.sizes or min(args.sizes) < 1 or args.params < 1:
        ap.error("--sizes and --params must be >= 1")
    if args.threads < 1 or args.repeats < 1 or args.warmup < 0:
        ap.error("--threads and --repeats must be >= 1, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    rows = [measure(size, args.params, args.threads, args.repeats, args.warmup) for size in args.sizes]
    print(f"~{human(args.params)} fp32 params per size, int8 moments, {args.threads} threads, {args.repeats} "
          f"interleaved rounds after {args.warmup} warm-up")
    print_rows(table(rows), rows, args.csv, COLUMNS)


if __name__ == "__main__":
    main()
