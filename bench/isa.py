"""Ours at every instruction set the C++ extension has for this CPU (baseline x86-64, AVX2, AVX-512), in
one run: each ISA's whole ``step()`` of FusedAdamW / FusedLAMB, fp32 or int8 moments, interleaved, with
its ratio to the fastest ISA of the same row.

    python -m bench.isa                                  # 10M params in 50 tensors, fp32, 2 threads
    python -m bench.isa --params 1M --threads 1 --dtype bf16

Every ISA gives the same bits (tests/test_cpu_backend.py, tests/test_cpu_compressed.py); this is where
their speeds are compared. A build whose AVX2 kernels run far behind AVX-512 on a machine that has both is
a bug, not a property of AVX2: the 16 fixed reduction lanes were once a 64-byte vector type, which GCC
lowers through the stack on AVX2, and the AVX2 AdamW ran 3-5x slower than AVX-512 (bench/RESULTS.md,
2026-12-06). The ISA is switched with ``extension.set_isa`` between calls; ``LRSCHED_CPU_ISA`` caps it
for a whole process instead.
"""

from __future__ import annotations

import argparse

import torch

from .impls import Inputs, impls_for
from .run import _versions
from .timing import interleaved, summarize
from .workloads import DTYPES, Case, make_data, parse_count

KINDS = ("ours", "ours-int8")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.isa", description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", type=parse_count, default=10_000_000, help="parameter count (default 10M)")
    ap.add_argument("--tensors", type=parse_count, default=50, help="tensor count (default 50)")
    ap.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help="fp32 or bf16 parameters (default fp32)")
    ap.add_argument("--threads", type=parse_count, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--rounds", type=parse_count, default=10, help="timed interleaved rounds (default 10)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default 2)")
    ap.add_argument("--ops", default="adamw,lamb", help="comma list of adamw, lamb (default both)")
    ap.add_argument("--kinds", default=",".join(KINDS),
                    help="comma list of ours (fp32 / bf16 moments as the optimizer defaults) and ours-int8 "
                         "(default both)")
    args = ap.parse_args(argv)
    args.ops = [o for o in args.ops.split(",") if o]
    args.kinds = [k for k in args.kinds.split(",") if k]
    bad = [o for o in args.ops if o not in ("adamw", "lamb")] + [k for k in args.kinds if k not in KINDS]
    if bad:
        ap.error(f"unknown op or kind: {', '.join(bad)} (ops: adamw, lamb; kinds: {', '.join(KINDS)})")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        from lrsched_fused.backends.cpu import extension
    except ImportError as exc:
        print(f"bench.isa: the C++ extension is not available ({exc})")
        return 1
    isas = list(extension.available_isas())
    before_isa, before_threads = extension.isa(), torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        case = Case(args.params, args.tensors, args.dtype, args.threads)
        inputs = Inputs(*make_data(case))
        impls = impls_for(args.ops, args.kinds)
        runners = {(i.key, isa): i.build(case, inputs) for i in impls for isa in isas}
        del inputs

        def on(isa: str, step):
            def call() -> None:
                extension.set_isa(isa)
                step()
            return call

        steps = {f"{key}@{isa}": on(isa, r.step) for (key, isa), r in runners.items()}
        times = interleaved(steps, repeats=args.rounds, warmup=args.warmup)
    finally:
        extension.set_isa(before_isa)
        torch.set_num_threads(before_threads)
    v = _versions()
    print(f"bench.isa: {case.params / 1e6:g}M {args.dtype} params in {case.tensors} tensors, {args.threads} threads, "
          f"{args.rounds} interleaved rounds; ISAs {', '.join(isas)} (default {before_isa}); "
          f"torch {v['torch']}, lrsched_fused {v['lrsched-fused']}")
    print(f"{'op':6s} {'implementation':15s} {'isa':9s} {'median ms':>10s} {'p20-p80 ms':>14s} {'x fastest':>10s}")
    worst = 0.0
    for i in impls:
        stats = {isa: summarize(times[f"{i.key}@{isa}"]) for isa in isas}
        best = min(s.median_ms for s in stats.values())
        for isa, s in stats.items():
            ratio = s.median_ms / best
            if isa != "baseline":
                worst = max(worst, ratio)
            print(f"{i.op:6s} {i.name:15s} {isa:9s} {s.median_ms:10.3f} {s.p20_ms:6.3f}-{s.p80_ms:<7.3f} {ratio:9.2f}x")
    if len(isas) > 2:
        print(f"slowest vector ISA (AVX2 or AVX-512) against the fastest of its row: {worst:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
