"""Benchmark runner: ours vs torch / DeepSpeed / pytorch-optimizer and the bandwidth floor, on CPU.

    python -m bench.run                       # the full grid (about 5 minutes on 2 quiet cores)
    python -m bench.run --quick               # a few seconds: small sizes, few repeats (the test uses it)
    python -m bench.run --ops adamw --sizes 50M --tensors 50 --threads 2 --impls ours,torch-fused,floor
    python -m bench.run --markdown            # also print Markdown tables and the issue-5 checks at the end

For each (params, tensors, dtype) it builds every selected implementation of every selected op on the
same data, then for each thread count times them interleaved (every round in a new random order) after
warm-up rounds, prints a table, and appends one CSV row per implementation to ``bench/out/results.csv``.
``bench/README.md`` explains the columns and how bytes are counted.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import importlib.metadata
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from .impls import NAMES, Impl, Inputs, Runner, impls_for
from .report import (append_csv, case_rows, legend, machine_info, markdown_case_table, mem_available_bytes,
                     print_case_table)
from .targets import check_targets, format_checks
from .timing import interleaved, summarize
from .workloads import DTYPES, Case, human, make_data, parse_count

DEFAULT_CSV = Path(__file__).resolve().parent / "out" / "results.csv"
OPS = ("adamw", "lamb")
#: implementations left out of --quick unless named in --impls (DeepSpeed JIT-builds for about a minute)
QUICK_SKIP = ("deepspeed", "torchao-8bit")  # torchao compiles its step with torch.compile (~20 s)
#: fraction of MemAvailable a case may plan to use
MEMORY_FRACTION = 0.8


def _csv_list(text: str, allowed: tuple[str, ...] | None = None, what: str = "value") -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"empty {what} list")
    if allowed is not None:
        bad = [x for x in items if x not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(bad)}; choose from {', '.join(allowed)}")
    return items


def _counts(text: str) -> list[int]:
    try:
        return [parse_count(x) for x in _csv_list(text, what="count")]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _threads(text: str) -> list[int]:
    out = _counts(text)
    if any(t > 256 for t in out):
        raise argparse.ArgumentTypeError(f"thread counts must be in [1, 256]; got {text}")
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ops", type=lambda s: _csv_list(s, OPS, "op"), default=list(OPS),
                    help="comma list of adamw, lamb (default both)")
    ap.add_argument("--sizes", type=_counts, default=None, help="parameter counts (default 1M,10M,50M)")
    ap.add_argument("--tensors", type=_counts, default=None,
                    help="tensor counts; <= 200 is a mixed layout, more a layout of small tensors (default 50,2000)")
    ap.add_argument("--dtypes", type=lambda s: _csv_list(s, tuple(DTYPES), "dtype"), default=None,
                    help="fp32 and/or bf16 (bf16 params, fp32 moments for ours) (default fp32,bf16)")
    ap.add_argument("--threads", type=_threads, default=None, help="thread counts (default 1,2)")
    ap.add_argument("--impls", type=lambda s: _csv_list(s, NAMES, "implementation"), default=None,
                    help=f"comma list of {', '.join(NAMES)} (default all that are installed)")
    ap.add_argument("--reference-max", type=parse_count, default=1_000_000,
                    help="run the (slow) reference backend only up to this many params (default 1M)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="timed rounds per case (default by size: 60 up to 2M params, 40 up to 20M, else 30)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed rounds first (default 3)")
    ap.add_argument("--budget", type=float, default=40.0,
                    help="seconds of timed rounds per case and thread count; implementations too slow for their "
                         "share run in fewer rounds, at least --min-samples (default 40; 0: no budget)")
    ap.add_argument("--min-samples", type=int, default=5, help="fewest timed calls of any implementation (default 5)")
    ap.add_argument("--quick", action="store_true",
                    help="small and fast (200K params in 20 and 300 tensors, fp32 and bf16, 1 thread, 3 repeats)")
    ap.add_argument("--csv", type=Path, default=DEFAULT_CSV, help=f"CSV file rows are appended to ({DEFAULT_CSV})")
    ap.add_argument("--markdown", action="store_true", help="print Markdown tables and the issue-5 checks at the end")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    ap.add_argument("--seed", type=int, default=0, help="data seed (default 0)")
    args = ap.parse_args(argv)
    explicit_impls = args.impls is not None
    quick = dict(sizes=[200_000], tensors=[20, 300], dtypes=["fp32", "bf16"], threads=[1], repeats=3, warmup=1)
    full = dict(sizes=[1_000_000, 10_000_000, 50_000_000], tensors=[50, 2000], dtypes=["fp32", "bf16"],
                threads=[1, 2], repeats=None, warmup=3)
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.impls is None:
        args.impls = [n for n in NAMES if not (args.quick and n in QUICK_SKIP)]
    args.explicit_impls = explicit_impls
    if args.repeats is not None and args.repeats < 1:
        ap.error(f"--repeats must be >= 1; got {args.repeats}")
    if args.warmup < 0:
        ap.error(f"--warmup must be >= 0; got {args.warmup}")
    if args.budget < 0 or args.min_samples < 1:
        ap.error(f"--budget must be >= 0 and --min-samples >= 1; got {args.budget}, {args.min_samples}")
    for n in args.sizes:
        for t in args.tensors:
            if t > n:
                ap.error(f"--tensors {t} is more than --sizes {n}: every tensor needs at least one element")
    return args


def repeats_for(params: int, override: int | None) -> int:
    if override is not None:
        return override
    return 60 if params <= 2_000_000 else 40 if params <= 20_000_000 else 30


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for dist in ("lrsched-fused", "deepspeed", "pytorch-optimizer"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    try:
        import lrsched_fused

        out["lrsched-fused"] = lrsched_fused.__version__
    except ImportError:
        pass
    return out


def _prefetch_note() -> str:
    """``, int8 prefetch on|off`` (the C++ int8 kernels' software prefetch), or nothing without the extension."""
    try:
        from lrsched_fused.backends.cpu import extension

        return f", int8 software prefetch {'on' if extension.prefetch() else 'off'}"
    except Exception:  # noqa: BLE001 - as _isa
        return ""


def _isa() -> str:
    try:
        from lrsched_fused.backends.cpu import extension

        return extension.isa()
    except Exception:  # noqa: BLE001 - the extension may not be built; then "ours" is reported missing
        return "n/a"


class _Progress:
    """A rich progress bar over all timed and warm-up rounds, or nothing (plain prints)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.console = None
        self._progress = None
        try:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
                TimeRemainingColumn
        except ImportError:
            return
        # a pipe or a file gets 120 columns (rich's default there is 80, which wraps the tables)
        self.console = Console() if sys.stdout.isatty() else Console(width=120)
        if enabled:
            # auto_refresh=False: rich's refresh thread redraws 10 times a second, and on a 2-core machine
            # each redraw took a core from the timed step (the int8 LAMB step's median moved by 3-5%); the
            # bar is redrawn between rounds instead, outside every timed call
            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), TimeRemainingColumn(), console=self.console,
                                      transient=True, auto_refresh=False)
            self._task = self._progress.add_task("rounds", total=total)

    def __enter__(self) -> "_Progress":
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()

    def describe(self, text: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description=text, refresh=True)

    def advance(self) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=1, refresh=True)

    def print(self, text: str = "") -> None:
        if self.console is not None:
            self.console.print(text, highlight=False, markup=False)
        else:
            print(text, flush=True)


def _selected(args: argparse.Namespace, params: int) -> tuple[list[Impl], list[str]]:
    """Implementations to build at this size, and notes about those left out."""
    notes = []
    impls = []
    for impl in impls_for(args.ops, args.impls):
        if impl.name == "reference" and params > args.reference_max:
            continue
        why = impl.missing()
        if why is not None:
            if args.explicit_impls:
                raise SystemExit(f"bench.run: --impls names {impl.name!r} ({impl.label}), which cannot run here: {why}")
            notes.append(f"{impl.op}/{impl.name} skipped: {why}")
            continue
        impls.append(impl)
    return impls, notes


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    now = _dt.datetime.now().astimezone()
    machine = machine_info()
    versions = _versions()
    meta = {"run_id": now.strftime("%Y%m%dT%H%M%S"), "timestamp": now.isoformat(timespec="seconds"),
            "version": versions["lrsched-fused"], "torch_version": versions["torch"], "isa": _isa(),
            "machine": machine["summary"]}
    threads_before = torch.get_num_threads()
    try:
        return _run(args, argv, started, meta, machine, versions)
    finally:
        torch.set_num_threads(threads_before)


def _run(args: argparse.Namespace, argv: list[str] | None, started: float, meta: dict, machine: dict,
         versions: dict) -> int:
    groups = [(n, t, d) for n in args.sizes for t in args.tensors for d in args.dtypes]
    total_rounds = sum((repeats_for(n, args.repeats) + args.warmup) * len(args.threads) for n, _, _ in groups)
    all_rows: list[dict] = []
    cases_done: list[tuple[Case, list[dict]]] = []
    problems: list[str] = []
    with _Progress(total_rounds, enabled=not args.no_progress) as progress:
        command = shlex.join(["python", "-m", "bench.run", *(sys.argv[1:] if argv is None else argv)])
        progress.print(f"bench.run {meta['timestamp']}  {command}")
        progress.print(f"machine: {machine['summary']}; load average {machine['load']}")
        progress.print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + f"; ours ISA {meta['isa']}"
                       + _prefetch_note())
        progress.print(f"CSV: {args.csv}")
        progress.print(legend(impls_for(args.ops, args.impls)))
        for params, tensors, dtype in groups:
            impls, notes = _selected(args, params)
            for note in dict.fromkeys(notes):
                progress.print(f"note: {note}")
            if not impls:
                problems.append(f"{human(params)}/{tensors}/{dtype}: no implementation selected")
                continue
            probe = Case(params, tensors, dtype, args.threads[0])
            need = sum(i.resident_bytes(probe) for i in impls) + 2 * params * 4
            have = mem_available_bytes()
            if need > MEMORY_FRACTION * have:
                msg = (f"{probe.title()}: skipped, needs ~{need / 2**30:.1f} GiB and {have / 2**30:.1f} GiB is "
                       "available (run fewer --ops / --impls at a time)")
                progress.print(msg)
                problems.append(msg)
                continue
            progress.describe(f"building {human(params)}/{tensors} {dtype}")
            torch.set_num_threads(max(args.threads))
            inputs = Inputs(*make_data(probe, seed=args.seed))
            runners: dict[str, Runner] = {}
            for impl in list(impls):
                try:
                    runners[impl.key] = impl.build(probe, inputs)
                except Exception as exc:  # noqa: BLE001 - a peer that fails to build is reported, the rest run
                    msg = f"{probe.title()}: {impl.key} failed to build: {type(exc).__name__}: {exc}"
                    progress.print(msg)
                    problems.append(msg)
                    impls.remove(impl)
            del inputs
            for threads in args.threads:
                case = Case(params, tensors, dtype, threads)
                torch.set_num_threads(threads)
                progress.describe(case.title())
                times = interleaved({i.key: runners[i.key].step for i in impls},
                                    repeats=repeats_for(params, args.repeats), warmup=args.warmup,
                                    on_round=progress.advance, seed=args.seed,
                                    budget_s=args.budget or None, min_samples=args.min_samples)
                stats = {key: summarize(ts) for key, ts in times.items()}
                rows = case_rows(case, impls, runners, stats, meta)
                append_csv(args.csv, rows)
                all_rows += rows
                cases_done.append((case, rows))
                print_case_table(case, rows, progress.console)
            del runners
            gc.collect()
    checks = check_targets(all_rows)
    emit = progress.print
    if any(c.met is not None for c in checks):
        emit("issue-5 targets:")
        emit(format_checks(checks).rstrip())
    elapsed = time.time() - started
    emit(f"{len(all_rows)} rows appended to {args.csv}; wall time {elapsed:.0f} s; load average after "
         f"{machine_info()['load']}")
    if args.markdown:
        print()
        print(legend(impls_for(args.ops, args.impls), markdown=True))
        for case, rows in cases_done:
            print(markdown_case_table(case, rows))
        if any(c.met is not None for c in checks):
            print(format_checks(checks, markdown=True))
    for p in problems:
        emit(f"problem: {p}")
    return 1 if problems or not all_rows else 0


if __name__ == "__main__":
    sys.exit(main())
