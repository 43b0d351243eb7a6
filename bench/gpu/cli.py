"""The GPU check's command line: arguments, the plan, the order of the sections, the time budget.

Sections, each inside ``Record.section`` (one failure does not hide the others):

1. environment (GPU, versions, which backends load);
2. correctness of each backend of ``--backends`` (default triton and cuda) against the reference
   backend (:mod:`bench.gpu.correctness`);
3. ``FusedAdamW(backend=...)`` against ``torch.optim.AdamW(fused=True)``, per backend;
   compressed state (int8 moments, compact masters, stochastic rounding) of each backend against the
   reference backend (:mod:`bench.gpu.compressed`);
4. CUDA graphs (Triton): replays across WSD phase edges equal eager steps, bit for bit;
5. ``tests/test_triton_backend.py`` under pytest on the GPU, with the time left (``--pytest``);
6. timings (:mod:`bench.gpu.timings`).

Then the Markdown table of every row, and last the short table (:func:`bench.gpu.report.summary`). Timing
rows are appended to ``--csv`` (default ``bench/out/gpu_check.csv``); with ``$OUT`` set,
``gpu_check.{md,json,csv}`` are written there too. Exit status: 0 when every check that ran passed (or
when there is no CUDA device: nothing to check), 1 otherwise, 2 for bad arguments.

``--dry-run`` rehearses every code path on CPU tensors at tiny sizes: Triton under ``TRITON_INTERPRET=1``
and the C++ ``cpu`` backend standing in for ``cuda``. ``--plan`` prints what a run would do and exits.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import math
import os
import platform
import signal
import sys
import textwrap
import time
from pathlib import Path

from .record import Record

__all__ = ["parse_args", "plan_text", "main", "REPO", "DEFAULT_CSV"]

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CSV = REPO / "bench" / "out" / "gpu_check.csv"
BACKENDS = ("triton", "cuda", "cpu")
#: the pytest selection of the tests that need a GPU (``@pytest.mark.gpu``; skipped on machines without one)
GPU_ONLY_TESTS = "-m gpu tests/"
#: seconds kept for the timings when pytest would eat into them
TIMING_RESERVE_S = 75
#: device copy bandwidth the plan assumes (H200, measured: ~4.3 TB/s read + written)
PLAN_COPY_GBPS = 4300.0


def _count(text: str) -> int:
    from ..workloads import parse_count

    try:
        return parse_count(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _backends(text: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in items if x not in BACKENDS]
    if not items or bad:
        raise argparse.ArgumentTypeError(f"--backends takes a comma list of {', '.join(BACKENDS)}; got {text!r}")
    return list(dict.fromkeys(items))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true",
                    help="tiny sizes on CPU tensors (Triton interpreted, the cpu backend standing in for cuda)")
    ap.add_argument("--plan", action="store_true", help="print what a run would do and exit")
    ap.add_argument("--quick", action="store_true", help="fewer dtype configurations in the correctness checks")
    ap.add_argument("--params", type=_count, default=1_000_000_000,
                    help="model size for the timings (default 1e9; 500M, 5e8 also parse)")
    ap.add_argument("--iters", type=int, default=20, help="timed steps per measurement (default 20)")
    ap.add_argument("--backends", type=_backends, default=None,
                    help="backends of ours to check and time (default triton,cuda; dry run triton,cpu)")
    ap.add_argument("--budget", type=float, default=float(os.environ.get("GPU_CHECK_BUDGET_S", 210)),
                    help="seconds after which optional sections are skipped (default $GPU_CHECK_BUDGET_S or 210; "
                         "gpu_check.sh sets it from what the install left)")
    ap.add_argument("--pytest", choices=("auto", "yes", "no"), default="auto",
                    help="run tests/test_triton_backend.py on the GPU with the time left (auto: if >= 90 s left)")
    ap.add_argument("--csv", type=Path, default=None,
                    help=f"CSV the timing rows are appended to (default {DEFAULT_CSV.relative_to(REPO)}; the dry run "
                         "writes none unless given)")
    args = ap.parse_args(argv)
    if args.iters < 1:
        ap.error(f"--iters must be >= 1; got {args.iters}")
    if not args.budget > 0:
        ap.error(f"--budget must be > 0; got {args.budget}")
    if args.backends is None:
        args.backends = ["triton", "cpu"] if args.dry_run else ["triton", "cuda"]
    if args.csv is None and not args.dry_run:
        args.csv = DEFAULT_CSV
    return args


# ------------------------------------------------------------------------------------------------------
# the plan
# ------------------------------------------------------------------------------------------------------
def plan_text(args: argparse.Namespace) -> str:
    """What a run with ``args`` would do: sections, sizes, bytes per step and the floor they imply."""
    import torch

    from ..workloads import bytes_per_param, int8_bytes
    from .bucket import CONFIGS
    from .compressed import CONFIGS as COMPRESSED
    from .report import format_table
    from .timings import transformer_shapes

    dry = args.dry_run
    where = "CPU tensors (Triton under TRITON_INTERPRET=1)" if dry else "the first CUDA device"
    shapes = transformer_shapes(args.params) if not dry else [(300, 7), (1000,), (64, 64), (5,)]
    n = sum(math.prod(s) for s in shapes)
    n_copy = int(min(args.params, 5e8)) if not dry else 10**6
    iters = args.iters if not dry else 3
    f32, bf16 = torch.float32, torch.bfloat16
    configs = [c[0] for c in (CONFIGS[:2] if args.quick or dry else CONFIGS)]
    rows = [("adamw fp32 (ours, torch fused)", bytes_per_param("adamw", f32, f32)),
            ("lamb fp32 (ours)", bytes_per_param("lamb", f32, f32)),
            ("adamw int8 moments (ours)", f"{int8_bytes('adamw', f32):.2f}"),
            ("lamb int8 moments (ours)", f"{int8_bytes('lamb', f32):.2f}"),
            ("adamw bf16, ours: fp32 master + moments", bytes_per_param("adamw", bf16, f32, master=True)),
            ("adamw bf16, torch fused: bf16 moments", bytes_per_param("adamw", bf16, bf16))]
    table = format_table(["row", "B/param", "MB/step", f"floor ms at {PLAN_COPY_GBPS:.0f} GB/s"],
                         [[r, str(b), f"{float(b) * n / 1e6:.1f}", f"{float(b) * n / PLAN_COPY_GBPS / 1e6:.3f}"]
                          for r, b in rows],
                         indent="     ")
    backends = ", ".join(args.backends)
    pytest = ("skipped in the dry run" if dry and args.pytest != "yes" else
              "when >= 90 s are left before the timings" if args.pytest == "auto" else args.pytest)
    lines = [
        f"gpu_check plan: backends {backends} on {where}; budget {args.budget:.0f} s (optional rows dropped near it)",
        " 1. environment: GPU, versions, which backends load",
        *textwrap.wrap(f"2. correctness per backend ({backends}) vs the reference backend, 20 steps: adamw, lamb x "
                       f"{', '.join(configs)}; LAMB sharded halves; fp32 vs float64; found_inf; determinism; "
                       "grad_sumsq; schedule evaluator near 2**40", 110, initial_indent=" ", subsequent_indent="    "),
        f" 3. FusedAdamW(<backend>) vs torch.optim.AdamW(fused={not dry}), 20 steps",
        *textwrap.wrap("   compressed state per backend vs the reference backend, 4 steps: adamw, lamb x "
                       + ", ".join(list(COMPRESSED)[:2] if args.quick or dry else COMPRESSED), 110,
                       initial_indent=" ", subsequent_indent="    "),
        " 4. CUDA graphs (triton): 36 replays == 36 eager steps across WSD edges; no recompilation"
        + (" (skipped on CPU)" if dry else ""),
        f" 5. pytest {GPU_ONLY_TESTS}, then tests/test_triton_backend.py: {pytest}",
        f" 6. timings, {iters} steps each, on {n:,} params in {len(shapes)} tensors (device memory "
        f"~{16 * n / 2**30:.1f} GiB at 16 B/param):",
        table,
        f"    + AdamW on {2000 if not dry else 20} small tensors; a device copy of {n_copy:,} fp32 elements "
        "(the floor)",
        "outputs: the tables last; rows appended to " + (str(args.csv) if args.csv else "no CSV")
        + "; $OUT/gpu_check.{md,json,csv} when OUT is set",
    ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------------
# environment
# ------------------------------------------------------------------------------------------------------
def ensure_importable(rec: Record) -> None:
    """Import ``lrsched_fused`` from the install, or else from this source tree (``kernels/`` is the
    ``lrsched_fused.kernels`` package there, through ``package_dir``)."""
    try:
        import lrsched_fused.kernels.layout  # noqa: F401
        import lrsched_fused  # noqa: F401
        return
    except Exception:  # noqa: BLE001
        pass
    rec.log("lrsched_fused is not installed: importing it from the source tree")
    sys.path.insert(0, str(REPO))
    for name in [m for m in sys.modules if m == "lrsched_fused" or m.startswith("lrsched_fused.")]:
        del sys.modules[name]
    spec = importlib.util.spec_from_file_location("lrsched_fused.kernels", REPO / "kernels" / "__init__.py",
                                                  submodule_search_locations=[str(REPO / "kernels")])
    module = importlib.util.module_from_spec(spec)
    sys.modules["lrsched_fused.kernels"] = module
    spec.loader.exec_module(module)
    import lrsched_fused  # noqa: F401


def environment(rec: Record, device, backends: list[str]) -> None:
    import torch
    import triton

    from .correctness import backend_or_reason

    now = datetime.datetime.now().astimezone()
    rec.info.update(date=now.isoformat(timespec="seconds"), run_id=now.strftime("%Y%m%dT%H%M%S"),
                    python=platform.python_version(), torch=torch.__version__, triton=triton.__version__,
                    device=str(device), cuda=torch.version.cuda,
                    gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (dry run)")
    try:
        from lrsched_fused import _version

        rec.info["lrsched_fused"] = _version.__version__
    except Exception as exc:  # noqa: BLE001
        rec.info["lrsched_fused"] = f"import failed: {exc}"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        rec.info.update(sm=f"{props.major}{props.minor}", sms=props.multi_processor_count,
                        memory_gib=round(props.total_memory / 2**30, 1))
    for name in backends:
        rec.info[f"backend {name}"] = backend_or_reason(name, device)[1] or "ok"
    for k, v in rec.info.items():
        rec.log(f"  {k}: {v}")


# ------------------------------------------------------------------------------------------------------
# the run
# ------------------------------------------------------------------------------------------------------
def _out_of_time(signum, frame):
    raise TimeoutError("gpu_check: time budget exhausted")


def run_sections(rec: Record, device, args: argparse.Namespace, deadline: float) -> None:
    if hasattr(signal, "SIGALRM"):
        signal.signal(signal.SIGALRM, _out_of_time)
        signal.alarm(int(max(60, deadline - time.time() + 60)))
    with rec.section("environment"):
        ensure_importable(rec)
        environment(rec, device, args.backends)
    from . import compressed, correctness, timings

    for name in args.backends:
        with rec.section(f"correctness ({name})"):
            correctness.sec_backend(rec, name, device, args.quick or args.dry_run)
    for name in args.backends:
        with rec.section(f"vs torch ({name})"):
            correctness.sec_vs_torch(rec, name, device)
    for name in args.backends:
        with rec.section(f"compressed state ({name})"):
            compressed.sec_compressed(rec, name, device, args.quick or args.dry_run)
    if "triton" in args.backends:
        with rec.section("cuda graph (triton)"):
            correctness.sec_cuda_graph(rec, device, "triton")
    reserve = TIMING_RESERVE_S if not args.dry_run else 0
    if args.pytest == "yes" or (args.pytest == "auto" and not args.dry_run):
        with rec.section("pytest on the GPU"):
            # first the tests that only a GPU can run (marked gpu: device moves, CUDA graphs, GPU scalars
            # for a CPU optimizer, several GPUs), then the Triton backend's suite with the time left
            for target in (GPU_ONLY_TESTS, "tests/test_triton_backend.py"):
                budget = deadline - time.time() - reserve
                correctness.sec_pytest(rec, budget if args.pytest == "yes" or budget >= 90 else 0, REPO, target)
    if hasattr(signal, "SIGALRM"):  # the timings get at least their reserve, then a minute of grace
        signal.alarm(int(max(deadline - time.time(), reserve) + 60))
    with rec.section("timing"):
        timings.sec_timing(rec, device, args.backends, args.params if not args.dry_run else 1e4,
                           args.iters if not args.dry_run else 3, max(deadline, time.time() + reserve))


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def finish(rec: Record, args: argparse.Namespace) -> str:
    """Print the Markdown table, write the files, print the short table last; returns the short table."""
    from . import report

    full = report.markdown(rec.info, rec.checks, rec.rows)
    short = report.summary(rec.info, rec.checks, rec.rows)
    try:
        if args.csv and rec.rows:
            report.append_csv(args.csv, report.csv_rows(rec.info, rec.rows))
            rec.log(f"{len(rec.rows)} rows appended to {args.csv}")
        if os.environ.get("OUT"):
            paths = report.write_outputs(Path(os.environ["OUT"]), rec.info, rec.checks, rec.rows, full + "\n" + short)
            rec.log("wrote " + ", ".join(str(p) for p in paths))
    except Exception as exc:  # noqa: BLE001 - the tables still print
        rec.log(f"could not write the outputs: {type(exc).__name__}: {exc}")
    print("\n" + full, flush=True)
    print(short, flush=True)
    return short


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.plan:
        print(plan_text(args), end="")
        return 0
    if args.dry_run and not _interpreting():
        if any(m == "lrsched_fused.kernels" or m.startswith("lrsched_fused.kernels.") for m in sys.modules):
            print("gpu_check --dry-run needs TRITON_INTERPRET=1 before the kernels are imported (set it in the "
                  "environment)")
            return 2
        os.environ["TRITON_INTERPRET"] = "1"
    try:
        import torch
    except Exception as exc:  # noqa: BLE001
        print(f"gpu_check: torch cannot be imported ({exc}); nothing to check.")
        return 0
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device (torch.cuda.is_available() is False); nothing to check on this machine.")
        return 0
    device = torch.device("cpu" if args.dry_run else "cuda")
    rec = Record()
    try:
        run_sections(rec, device, args, rec.t0 + args.budget)
    except BaseException as exc:  # noqa: BLE001 - whatever happens, the tables below still print
        rec.check("gpu_check", "run interrupted", False, f"{type(exc).__name__}: {exc}")
    finally:
        if hasattr(signal, "SIGALRM"):
            signal.alarm(0)
        finish(rec, args)
    return 0 if rec.all_passed() else 1
