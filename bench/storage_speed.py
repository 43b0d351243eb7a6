"""Step time of each state configuration of ``bench.memory`` (parameter dtype, master weights, moment dtype),
AdamW and LAMB on the C++ backend, timed interleaved against torch's fused AdamW at the same parameter dtype.

    python -m bench.storage_speed                              # 20M params as 50 tensors, 2 threads
    python -m bench.storage_speed --ops lamb --params 2M --repeats 5 --csv bench/out/storage_speed.csv

Each configuration steps its own copy of the same parameters and gradients, as 2-d tensors of 1024 columns
(int8 blocks run along rows). Columns: the median and the 20th-80th percentile of the step time, the bytes
per parameter the state holds without gradients (``optimizer.state_bytes()``), the bytes an AdamW step moves
(every state byte read and written once, the gradient read; LAMB reads its parameters, and int8 codes, a
second time), and the ratio to torch's fused AdamW with the same parameter dtype (its moments in that
dtype). ``bench/RESULTS.md`` (2026-12-07) has a recorded run.
"""

from __future__ import annotations

import argparse

import torch

from lrsched_fused import FusedAdamW, FusedLAMB

from .memory import CONFIGS
from .report import machine_info, print_rows
from .timing import interleaved, summarize
from .workloads import parse_count

COLUMNS = ("op", "configuration", "params", "tensors", "threads", "median_ms", "p20_ms", "p80_ms", "repeats",
           "state_bytes_per_param", "adamw_moved_bytes_per_param", "ratio_vs_torch_fused", "cpu", "torch")
WIDTH = 1024


def _data(params: int, tensors: int, seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    rows = max(1, -(-params // (tensors * WIDTH)))
    gen = torch.Generator().manual_seed(seed)
    ps = [torch.randn(rows, WIDTH, generator=gen) * 0.1 for _ in range(tensors)]
    gs = [torch.randn(rows, WIDTH, generator=gen) * 1e-3 for _ in range(tensors)]
    return ps, gs


def _copies(ps: list[torch.Tensor], gs: list[torch.Tensor], dtype: torch.dtype) -> list[torch.nn.Parameter]:
    out = []
    for p, g in zip(ps, gs):
        q = torch.nn.Parameter(p.to(dtype))
        q.grad = g.to(dtype)
        out.append(q)
    return out


def build(op: str, ps: list[torch.Tensor], gs: list[torch.Tensor]) -> dict[str, tuple]:
    """name -> (step, optimizer, parameter dtype): every configuration, and torch fused AdamW per dtype."""
    steps = {}
    cls = FusedAdamW if op == "adamw" else FusedLAMB
    for name, dtype, options in CONFIGS:
        params = _copies(ps, gs, dtype)
        opt = cls(params, lr=1e-3, weight_decay=0.01, backend="cpu", **options)
        steps[name] = (opt.step, opt, dtype)
    for dtype in (torch.float32, torch.bfloat16):
        params = _copies(ps, gs, dtype)
        opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01, fused=True)
        steps[f"torch fused AdamW, {str(dtype)[6:]} params and moments"] = (opt.step, opt, dtype)
    return steps


def measure(op: str, params: int, tensors: int, threads: int, repeats: int, warmup: int) -> list[dict]:
    torch.set_num_threads(threads)
    ps, gs = _data(params, tensors)
    built = build(op, ps, gs)
    times = interleaved({name: step for name, (step, _, _) in built.items()}, repeats=repeats, warmup=warmup)
    peer = {dtype: summarize(times[name]).median_ms for name, (_, opt, dtype) in built.items()
            if isinstance(opt, torch.optim.AdamW)}
    info = machine_info()
    rows = []
    for name, (_, opt, dtype) in built.items():
        ours = not isinstance(opt, torch.optim.AdamW)
        stats = summarize(times[name])
        if ours:
            held = opt.state_bytes()
            state = held["per_param_without_grads"]
            moved = 2 * state + held["grads"] / held["numel"]
        else:
            size = torch.empty((), dtype=dtype).element_size()
            state, moved = 3 * size, 7 * size  # parameter and two moments of its dtype; + the gradient read
        rows.append({"op": op, "configuration": name, "params": sum(p.numel() for p in ps), "tensors": tensors,
                     "threads": threads, "median_ms": stats.median_ms, "p20_ms": stats.p20_ms,
                     "p80_ms": stats.p80_ms, "repeats": stats.repeats, "state_bytes_per_param": state,
                     "adamw_moved_bytes_per_param": moved, "ratio_vs_torch_fused": stats.median_ms / peer[dtype],
                     "cpu": info["summary"], "torch": torch.__version__})
    return rows


def table(rows: list[dict]) -> str:
    lines = [f"{'op':5} {'configuration':62} {'median ms':>9} {'p20-p80 ms':>13} {'state B/p':>9} "
             f"{'moved B/p':>9} {'x torch':>8}"]
    for r in rows:
        lines.append(f"{r['op']:5} {r['configuration']:62} {r['median_ms']:9.2f} "
                     f"{r['p20_ms']:6.2f}-{r['p80_ms']:<6.2f} {r['state_bytes_per_param']:9.2f} "
                     f"{r['adamw_moved_bytes_per_param']:9.2f} {r['ratio_vs_torch_fused']:7.2f}x")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.storage_speed", description=__doc__.split("\n\n")[0])
    ap.add_argument("--ops", default="adamw,lamb", help="adamw and/or lamb (default both)")
    ap.add_argument("--params", type=parse_count, default=parse_count("20M"))
    ap.add_argument("--tensors", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--csv", default=None, help="also append the rows to this CSV")
    args = ap.parse_args(argv)
    args.ops = [x.strip() for x in args.ops.split(",") if x.strip()]
    bad = [x for x in args.ops if x not in ("adamw", "lamb")]
    if bad or not args.ops:
        ap.error(f"--ops: choose from adamw, lamb; got {args.ops}")
    if args.tensors < 1 or args.threads < 1 or args.repeats < 1 or args.warmup < 0:
        ap.error("--tensors, --threads and --repeats must be >= 1, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    rows = []
    for op in args.ops:
        rows += measure(op, args.params, args.tensors, args.threads, args.repeats, args.warmup)
    print(f"{rows[0]['params']:,} params as {args.tensors} tensors of {WIDTH} columns, {args.threads} threads, "
          f"{args.repeats} interleaved rounds after {args.warmup} warm-up")
    print_rows(table(rows), rows, args.csv, COLUMNS)


if __name__ == "__main__":
    main()
