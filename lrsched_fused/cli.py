"""Command line: ``lrsched-fused <command>`` or ``python -m lrsched_fused <command>``.

Commands:
  demo     train a small causal LM with FusedLAMB + WSD and with torch AdamW + cosine; compare
           (--study: the schedule study: loss prediction, refinement, branching)
  predict  fit the annealing law to loss curves (CSV) and predict other schedules' losses
  plot     draw schedules given as text, print their values at the phase edges
  info     version, which optimizer backends can run here (and why not), torch/triton versions, threads
"""

from __future__ import annotations

import argparse
import platform
import sys
from dataclasses import replace
from typing import Sequence

__all__ = ["main", "build_parser"]

_EXAMPLE = 'wsd(peak_lr=3e-4, total_steps=10000, warmup_steps=500, decay_fraction=0.2)'


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lrsched-fused", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="{demo,predict,plot,info}")

    demo = sub.add_parser("demo", help="FusedLAMB + WSD vs torch AdamW + cosine on a small causal LM",
                          description="Train a ~1M-parameter byte-level causal transformer twice with the same "
                                      "budget, init and data order: FusedLAMB + WSD (schedule in the optimizer) and "
                                      "torch AdamW + a cosine LambdaLR. Prints a loss table per schedule phase and "
                                      "the optimizer-step times, writes demo.png, table.md and runs.json.")
    demo.add_argument("--quick", action="store_true",
                      help="small model, 80 steps, less data: well under a minute on 2 cores (CI)")
    demo.add_argument("--steps", type=int, default=None, help="updates per run (default 250; --quick 80)")
    demo.add_argument("--warmup", type=int, default=None, help="warmup updates (default: 10%% of --steps)")
    demo.add_argument("--batch-size", type=int, default=None, help="windows per step (default 64; --quick 32)")
    demo.add_argument("--data", metavar="FILE", default=None,
                      help="train on this file (raw bytes) instead of the Python standard library's sources")
    demo.add_argument("--out", metavar="DIR", default="demo_out", help="output directory (default: demo_out)")
    demo.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda[:N]")
    demo.add_argument("--backend", default="auto",
                      help="FusedLAMB backend: auto, cpu, triton, cuda, reference (default auto)")
    demo.add_argument("--adamw-impl", choices=("fused", "foreach", "for-loop"), default="fused",
                      help="torch AdamW implementation of the baseline (default fused, torch's fastest)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the initialisation and the data order")
    demo.add_argument("--threads", type=int, default=None,
                      help="torch CPU threads per process (default: torch's choice; with --distributed, "
                           "cores / processes on this machine, at least 1)")
    demo.add_argument("--lamb-lr", type=float, default=None, help="FusedLAMB peak lr (default 2e-2)")
    demo.add_argument("--adamw-lr", type=float, default=None, help="AdamW peak lr (default 2e-3)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    demo.add_argument("--distributed", choices=("ddp", "fsdp"), default=None,
                      help="data parallel across the processes of `torchrun --nproc-per-node N -m lrsched_fused "
                           "demo ...` (CPU, gloo): the same global batch, split between the processes")
    demo.add_argument("--compare", metavar="RUNS_JSON", default=None,
                      help="check the per-step losses against an earlier run of the same settings (its runs.json, "
                           "e.g. the single-process one): exit status 1 unless the first 20 steps agree to 1e-5 "
                           "relative; the whole-run differences (fp32 rounding drift) are printed too")

    demo.add_argument("--study", action="store_true",
                      help="the schedule study instead: fit the annealing law to two runs, predict and train held-out "
                           "schedules, refine a schedule from gradient norms and compare it over seeds "
                           "(docs/schedule_science.md); writes study.md, study.png, study.json, curves/")
    demo.add_argument("--seeds", type=int, default=2, help="with --study: seeds of every run (fit, held-out, refined; default 2)")
    demo.add_argument("--third-fit-run", action="store_true",
                      help="with --study: also fit to a WSD run with a longer linear decay (50%% of the run by "
                           "default), so that the fit sees two decay lengths and pins the annealing law's decay")

    pred = sub.add_parser("predict", help="fit the annealing law to loss curves and predict schedules' losses",
                          description="Fit L(s) = L0 + A*S1^-alpha - C*S2 (Tissue et al., arXiv 2408.11029) to loss "
                                      "curves (CSV files step,loss,lr[,val_loss], as `lrsched-fused demo` writes in "
                                      "its curves/ folder; each run's schedule is its lr column), then print the "
                                      "predicted final loss of each --schedule, e.g.\n  lrsched-fused predict --fit "
                                      "a.csv b.csv --schedule \"cosine(peak_lr=0.02, total_steps=250, "
                                      "warmup_steps=25)\"",
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    pred.add_argument("--fit", nargs="+", metavar="CSV", required=True, help="loss curves to fit the law to")
    pred.add_argument("--schedule", action="append", default=[], metavar="SCHEDULE",
                      help="a schedule to predict (constructor call; repeat for several)")
    pred.add_argument("--steps", type=int, default=None,
                      help="predict at this many updates (default: each schedule's total, else the fit runs' length)")
    pred.add_argument("--loss", choices=("auto", "val", "train"), default="auto",
                      help="which losses to fit: validation, training, or auto (validation where a curve has at least "
                           "4 of them, else training; default)")
    pred.add_argument("--from-step", type=int, default=None,
                      help="fit only losses at steps >= this (default: 20%% of each curve's steps)")
    pred.add_argument("--decay", default="0.999",
                      help="the annealing momentum lambda, or 'fit' to fit it too (default 0.999; --law annealing)")
    pred.add_argument("--law", choices=("annealing", "multi-power"), default="annealing",
                      help="the annealing law (Tissue et al.; default) or the multi-power law (Luo et al., arXiv "
                           "2503.12811; slower to fit, see docs/schedule_science.md)")
    pred.add_argument("--plot", metavar="PNG", default=None, help="draw the fitted and predicted curves here")

    plot = sub.add_parser("plot", help="plot schedules and print their values at the phase edges",
                          description="Plot one or more schedules, each written as a constructor call of "
                                      "lrsched_fused.schedules, e.g.\n  lrsched-fused plot "
                                      f"\"{_EXAMPLE}\" -o wsd.png",
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    plot.add_argument("schedules", nargs="*", metavar="SCHEDULE",
                      help="constructor call: constant, linear, cosine, wsd, rex, power, infinite, rewarm, tabulated")
    plot.add_argument("-o", "--output", default="schedule.png", help="image file (default: schedule.png)")
    plot.add_argument("--title", default=None, help="figure title")
    plot.add_argument("--log", action="store_true", help="logarithmic lr axis")
    plot.add_argument("--gallery", action="store_true",
                      help="draw every schedule family in one figure (the README's docs/img/schedules.png)")

    sub.add_parser("info", help="version, available backends (and why not), torch/triton, threads")
    return parser


def _cmd_plot(args: argparse.Namespace) -> int:
    from lrsched_fused import plot as P
    from lrsched_fused import schedules as S

    if args.gallery:
        if args.schedules:
            raise ValueError("give either --gallery or schedules, not both")
        print(f"wrote {P.gallery(args.output)}")
        return 0
    if not args.schedules:
        raise ValueError(f"give at least one schedule, e.g. \"{_EXAMPLE}\"")
    scheds = []
    for text in args.schedules:
        try:
            scheds.append(S.parse(text))
        except TypeError as exc:  # a constructor called with a wrong or missing argument
            raise ValueError(f"{text!r}: {exc}") from None
        except ValueError as exc:
            raise ValueError(f"{text!r}: {exc}") from None
    for sched in scheds:
        print(repr(sched))
        print(P.edge_table(sched))
    path = P.plot_schedules(scheds, args.output, title=args.title, log_y=args.log)
    print(f"wrote {path}")
    return 0


def _cpu_isa_note() -> str:
    """`` (ISA: avx512)`` from the C++ extension, or nothing if it does not say."""
    try:
        from lrsched_fused import _cpu  # type: ignore[attr-defined]

        return (f" (instruction set in use: {_cpu.isa()}; "
                f"int8 software prefetch {'on' if _cpu.prefetch() else 'off'})")
    except Exception:  # the note is optional; the backend's availability is reported either way
        return ""


def _cmd_info(args: argparse.Namespace) -> int:
    import torch

    import lrsched_fused
    from lrsched_fused.backends import available_backends

    print(f"lrsched-fused {lrsched_fused.__version__}  ({lrsched_fused.__file__.rsplit('/', 2)[0]})")
    print(f"python {platform.python_version()} on {platform.system()} {platform.machine()}")
    cuda = torch.version.cuda or "none"
    print(f"torch {torch.__version__} (CUDA build: {cuda}; CUDA device: "
          f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'})")
    try:
        import triton

        print(f"triton {triton.__version__}")
    except ImportError as exc:
        print(f"triton: not installed ({exc})")
    print(f"threads: torch {torch.get_num_threads()} intra-op, {torch.get_num_interop_threads()} inter-op")
    print("backends:")
    for name, reason in available_backends().items():
        note = ""
        if reason is None and name == "triton" and not torch.cuda.is_available():
            note = " (interpreter: TRITON_INTERPRET=1)"
        elif reason is None and name == "cpu":
            note = _cpu_isa_note()
        print(f"  {name:<10} {'available' + note if reason is None else 'unavailable: ' + reason}")
    from lrsched_fused.demo.recipes import resolved_backend

    for dev in ("cpu",) + (("cuda",) if torch.cuda.is_available() else ()):
        print(f"backend='auto' on {dev} tensors -> {resolved_backend('auto', torch.device(dev))!r}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from lrsched_fused.predict import _report as R

    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be >= 1; got {args.steps}")
    if args.from_step is not None and args.from_step < 1:
        raise ValueError(f"--from-step must be >= 1; got {args.from_step}")
    if args.decay == "fit":
        decay: float | str = "fit"
    else:
        try:
            decay = float(args.decay)
        except ValueError:
            raise ValueError(f"--decay must be a number in [0, 1) or 'fit'; got {args.decay!r}") from None
    scheds = [_parse(text) for text in args.schedule]
    fit = R.fit_curves(args.fit, which=args.loss, from_step=args.from_step, decay=decay, law=args.law)
    rows = R.prediction_rows(fit, scheds, args.steps)
    print(R.format_predictions(fit, rows))
    if args.plot:
        try:
            print(f"wrote {R.plot_predictions(args.plot, fit, scheds, rows)}")
        except ImportError:
            raise ValueError("--plot needs matplotlib (pip install 'lrsched-fused[plot]')") from None
    return 0


def _parse(text: str):
    from lrsched_fused import schedules as S

    try:
        return S.parse(text)
    except (TypeError, ValueError) as exc:  # TypeError: a constructor called with a wrong or missing argument
        raise ValueError(f"{text!r}: {exc}") from None


def _cmd_demo(args: argparse.Namespace) -> int:
    from lrsched_fused.demo import DemoConfig, quick_config, run_demo

    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1; got {args.threads}")
    cfg = quick_config() if args.quick else DemoConfig()
    hyper = cfg.hyper
    steps = hyper.steps if args.steps is None else args.steps
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"--steps must be >= 1; got {steps}")
    warmup = args.warmup if args.warmup is not None else (hyper.warmup if args.steps is None else steps // 10)
    changes = dict(steps=steps, warmup=warmup, backend=args.backend, adamw_impl=args.adamw_impl)
    if args.lamb_lr is not None:
        changes["lamb_lr"] = args.lamb_lr
    if args.adamw_lr is not None:
        changes["adamw_lr"] = args.adamw_lr
    cfg = replace(cfg, hyper=replace(hyper, **changes), data=args.data, out_dir=args.out, device=args.device,
                  seed=args.seed, progress=not args.no_progress,
                  batch_size=cfg.batch_size if args.batch_size is None else args.batch_size,
                  distributed=args.distributed, threads=args.threads, compare=args.compare)
    if args.third_fit_run and not args.study:
        raise ValueError("--third-fit-run belongs to the schedule study: add --study")
    if args.study:
        from lrsched_fused.demo.study import StudyConfig, run_study

        if args.distributed is not None or args.compare is not None:
            raise ValueError("--study runs in one process: it takes neither --distributed nor --compare")
        if args.seeds < 1:
            raise ValueError(f"--seeds must be >= 1; got {args.seeds}")
        run_study(StudyConfig(demo=cfg, seeds=args.seeds, third_fit_run=args.third_fit_run))
        return 0
    result = run_demo(cfg)
    return 0 if result.matches else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lrsched-fused`` console script and ``python -m lrsched_fused``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from lrsched_fused import __version__

        print(__version__)
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    handler = {"demo": _cmd_demo, "predict": _cmd_predict, "plot": _cmd_plot, "info": _cmd_info}[args.command]
    try:
        return handler(args)
    except ValueError as exc:
        print(f"lrsched-fused {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
