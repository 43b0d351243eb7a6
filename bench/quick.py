"""A developer's quick timing of one case: ours (whole step and the C++ call alone) against torch's fused
AdamW and the in-place-add floor, printed as one table, no CSV (``bench.run`` is the benchmark).

    python -m bench.quick --params 50M --tensors 50 --threads 2 --rounds 15
    python -m bench.quick --ops adamw --impls ours-kernel,torch-fused,floor

The same implementations, data and interleaved timing as ``bench.run`` (:mod:`bench.impls`,
:mod:`bench.timing`), for one (params, tensors, dtype, threads) point, with fewer rounds by default and
no warm-up budget. Besides ``bench.run``'s per-case lines it prints the ratio of the two C++ calls
(LAMB over AdamW, the kernels' cost without the optimizer's host work) and each of ours' fraction of
the floor. (It replaces ``csrc/tools/quick_bench.py``; its ``--only adamw,lamb,floor,torch,opt`` is
``--impls ours-kernel,floor,torch-fused,ours``.)
"""

from __future__ import annotations

import argparse
import datetime as _dt

import torch

from .impls import NAMES, Inputs, impls_for
from .report import append_csv, case_rows, print_case_table
from .run import OPS, _csv_list, _isa, _versions
from .timing import interleaved, summarize
from .workloads import DTYPES, Case, make_data, parse_count

DEFAULT_IMPLS = ("ours", "ours-kernel", "torch-fused", "floor")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.quick", description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", type=parse_count, default=50_000_000, help="parameter count (default 50M)")
    ap.add_argument("--tensors", type=parse_count, default=50, help="tensor count (default 50)")
    ap.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help="fp32 or bf16 (default fp32)")
    ap.add_argument("--threads", type=parse_count, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--rounds", type=parse_count, default=15, help="timed interleaved rounds (default 15)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default 2)")
    ap.add_argument("--ops", type=lambda s: _csv_list(s, OPS, "op"), default=list(OPS),
                    help="comma list of adamw, lamb (default both)")
    ap.add_argument("--impls", type=lambda s: _csv_list(s, NAMES, "implementation"), default=list(DEFAULT_IMPLS),
                    help=f"comma list of {', '.join(NAMES)} (default {','.join(DEFAULT_IMPLS)})")
    ap.add_argument("--csv", default=None, help="also append the rows to this CSV (bench.run's columns)")
    args = ap.parse_args(argv)
    if args.tensors > args.params:
        ap.error(f"--tensors {args.tensors} is more than --params {args.params}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    impls = [i for i in impls_for(args.ops, args.impls) if i.missing() is None]
    for i in impls_for(args.ops, args.impls):
        if i.missing() is not None:
            print(f"note: {i.key} skipped: {i.missing()}")
    if not impls:
        print("bench.quick: nothing to time")
        return 1
    before = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        case = Case(args.params, args.tensors, args.dtype, args.threads)
        inputs = Inputs(*make_data(case))
        runners = {i.key: i.build(case, inputs) for i in impls}
        del inputs
        times = interleaved({k: r.step for k, r in runners.items()}, repeats=args.rounds, warmup=args.warmup)
    finally:
        torch.set_num_threads(before)
    stats = {k: summarize(v) for k, v in times.items()}
    now = _dt.datetime.now().astimezone()
    versions = _versions()
    meta = {"run_id": now.strftime("%Y%m%dT%H%M%S"), "timestamp": now.isoformat(timespec="seconds"),
            "version": versions["lrsched-fused"], "torch_version": versions["torch"], "isa": _isa(), "machine": ""}
    rows = case_rows(case, impls, runners, stats, meta)
    print(f"{args.rounds} interleaved rounds; torch {versions['torch']}, lrsched_fused {versions['lrsched-fused']}, "
          f"isa {meta['isa']}")
    print_case_table(case, rows)
    by = {(r["op"], r["implementation"]): r for r in rows}
    ka, kl = by.get(("adamw", "ours-kernel")), by.get(("lamb", "ours-kernel"))
    if ka and kl:
        print(f"  C++ call LAMB / AdamW = {kl['median_ms'] / ka['median_ms']:.3f}")
    for r in rows:
        if r["implementation"].startswith("ours") and r["floor_frac"] != "":
            print(f"  {r['op']} {r['implementation']}: {100 * r['floor_frac']:.0f}% of the in-place-add floor")
    if args.csv:
        from pathlib import Path

        append_csv(Path(args.csv), rows)
        print(f"{len(rows)} rows appended to {args.csv}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
