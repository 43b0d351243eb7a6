"""The schedule study (``lrsched-fused demo --study``): pick a schedule before spending the compute.

On the demo's model and data, with FusedLAMB evaluating every schedule in its kernel (the chosen schedule runs
unchanged):

1. **Loss prediction.** Train two *fit* schedules (constant after warmup, and the demo's WSD) at every seed, fit
   the annealing law (Tissue et al., arXiv 2408.11029; :mod:`lrsched_fused.predict`) to their seed-mean
   validation losses, predict the final validation loss of *held-out* schedules (cosine, WSD with 1-sqrt decay,
   REX), train them at every seed, and report the relative errors against the seed mean and the fit residual,
   with the decay ``lambda`` fixed (0.999) and fitted. The law describes the expected loss: at the demo's scale
   two seeds' final losses differ by ~1.3%, most of a 2% error budget, so one seed would measure its noise. The
   first seed's fit and errors alone are reported too. The multi-power law (Luo et al., arXiv 2503.12811;
   :class:`~lrsched_fused.predict.MultiPowerLaw`) is fitted to the same points and reported beside it, and
   each prediction's range over the decays the fit runs cannot reject (``AnnealingLaw.profile``).
   ``third_fit_run`` adds a third fit schedule, WSD with a longer linear decay: two decay lengths pin the
   decay, which the two default fit runs do not.
2. **Refinement.** Refine a schedule from the first fit run's per-step gradient norms (Defazio et al., arXiv
   2310.07831; :func:`lrsched_fused.schedules.refine`, Adam variant: l1 norms), train it and compare it with
   WSD and cosine over ``seeds`` seeds (mean and spread). The law's prediction for it is reported too.
3. **Branching.** The law's predicted final loss of WSD decay branches (:meth:`Schedule.branch`) of the
   constant run at a few budgets: the loss-versus-budget curve one stable run and a few short decays give.

Every run of seed ``s`` starts from the weights of ``torch.manual_seed(s)`` and sees the batches of seed ``s``;
all runs share one validation set. Outputs in ``out_dir``: ``study.md``, ``study.png``, ``study.json`` and the
curves ``curves/<schedule>_seed<s>.csv``.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from lrsched_fused import FusedLAMB, __version__, param_groups
from lrsched_fused import schedules as S
from lrsched_fused.predict import AnnealingLaw, DecayProfile, MultiPowerLaw, profile_decays, write_curve
from lrsched_fused.schedules import Schedule

from .data import BatchStream, load_corpus
from .model import TinyCausalLM
from .recipes import Hyper, Recipe, RecipeFactory, resolved_backend
from .report import curve_name
from .run import DemoConfig, _progress_bar
from .study_report import mean_validation, plot_study, prediction_table, refinement_table, save_study
from .train import RunResult, train

__all__ = ["StudyConfig", "StudyRun", "StudyResult", "run_study", "study_schedules", "long_decay_fraction"]


@dataclass(frozen=True)
class StudyConfig:
    """The study's settings on top of a demo configuration (model, data, budget, lrs, seed, out_dir).

    ``eval_every``: validation every this many steps (default ``steps // 25``, at least 1). ``fit_start``: the
    law is fitted to the validation losses at steps ``>= fit_start * steps`` (the early, fast-falling part of
    a short run is not what the law describes). ``smoothing``: ``tau`` of the refinement's median filter.
    ``third_fit_run``: also fit to a WSD run that decays linearly over a longer tail (:func:`study_schedules`),
    so that the fit sees two decay lengths: with one, the fit runs do not pin the annealing law's decay
    (``AnnealingLaw.profile``; ``docs/schedule_science.md``).
    """

    demo: DemoConfig = field(default_factory=DemoConfig)
    seeds: int = 2
    eval_every: int | None = None
    fit_start: float = 0.2
    decay: float = 0.999
    smoothing: float = 0.1
    third_fit_run: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.third_fit_run, bool):
            raise ValueError(f"third_fit_run must be a bool; got {self.third_fit_run!r}")
        if not isinstance(self.seeds, int) or self.seeds < 1:
            raise ValueError(f"seeds must be an integer >= 1; got {self.seeds!r}")
        if self.eval_every is not None and (not isinstance(self.eval_every, int) or self.eval_every < 1):
            raise ValueError(f"eval_every must be an integer >= 1; got {self.eval_every!r}")
        if not 0.0 <= self.fit_start < 1.0:
            raise ValueError(f"fit_start must be in [0, 1); got {self.fit_start!r}")
        if self.demo.distributed is not None or self.demo.compare is not None:
            raise ValueError("the study runs in one process: distributed and compare must be None")

    @property
    def every(self) -> int:
        return self.eval_every or max(1, self.demo.hyper.steps // 25)


def long_decay_fraction(decay_fraction: float) -> float:
    """The third fit run's decay fraction: 2.5 times the demo's (0.2 -> 0.5), at most 0.9, and at least 0.1 more
    than the demo's, so that the fit sees a second decay length."""
    return min(0.9, max(2.5 * decay_fraction, decay_fraction + 0.1))


def study_schedules(h: Hyper, third_fit_run: bool = False) -> tuple[list[tuple[str, Schedule]],
                                                                    list[tuple[str, Schedule]]]:
    """``(fit, held_out)``: labelled schedules with the demo's peak lr (FusedLAMB's), warmup and budget; with
    ``third_fit_run``, a third fit schedule: WSD decaying linearly over :func:`long_decay_fraction` of the run."""
    p, t, w = h.lamb_lr, h.steps, h.warmup
    d = h.decay_fraction
    fit = [("constant", S.wsd(peak_lr=p, total_steps=t, warmup_steps=w, decay_steps=0)),
           ("WSD linear", S.wsd(peak_lr=p, total_steps=t, warmup_steps=w, decay_fraction=d))]
    if third_fit_run:
        f = long_decay_fraction(d)
        if f - d < 0.05:
            raise ValueError(f"third_fit_run needs a decay_fraction <= 0.8 (a longer decay must fit after it); "
                             f"got {d}")
        fit.append((f"WSD linear {round(100 * f)}%",
                    S.wsd(peak_lr=p, total_steps=t, warmup_steps=w, decay_fraction=f)))
    held = [("cosine", S.cosine(peak_lr=p, total_steps=t, warmup_steps=w)),
            ("WSD 1-sqrt", S.wsd(peak_lr=p, total_steps=t, warmup_steps=w, decay_fraction=d, decay="1-sqrt")),
            ("REX", S.rex(peak_lr=p, total_steps=t, warmup_steps=w))]
    return fit, held


def _fused_lamb(label: str, schedule: Schedule, h: Hyper, made: list) -> RecipeFactory:
    """FusedLAMB with ``schedule`` evaluated in its kernel (the demo's LAMB settings), keeping a gradient-norm
    history of the whole run (``telemetry_history``); the optimizer is appended to ``made``."""

    def make(model: torch.nn.Module) -> Recipe:
        device = next(model.parameters()).device
        opt = FusedLAMB(param_groups(model, weight_decay=h.lamb_weight_decay), lr=schedule, betas=h.betas, eps=1e-6,
                        backend=h.backend, telemetry_history=max(h.steps, 1))
        made.append(opt)
        return Recipe(name=label, optimizer=opt, scheduler=None, lr_used=lambda: opt.telemetry()["lr"][0].clone(),
                      schedule=schedule, backend=lambda: f"lrsched_fused '{resolved_backend(h.backend, device)}'")

    return make


@dataclass
class StudyRun:
    """One training run of the study: its schedule, seed, result (losses, lrs, validation) and gradient norms."""

    label: str
    seed: int
    schedule: Schedule
    result: RunResult
    norms: np.ndarray  # [steps, 2]: l2, l1

    @property
    def final(self) -> float:
        return self.result.val[max(self.result.val)]


@dataclass
class StudyResult:
    runs: list[StudyRun]
    law: AnnealingLaw
    law_fitted_decay: AnnealingLaw
    law_multipower: MultiPowerLaw
    profile: DecayProfile
    predictions: list[dict]
    refined: Schedule
    comparison: list[dict]
    branches: list[dict]
    text: str
    paths: list[Path]


class _Trainer:
    """Trains labelled schedules at a seed on the shared data, records gradient norms, writes the curves."""

    def __init__(self, cfg: StudyConfig, echo: Callable[[str], None]) -> None:
        demo = cfg.demo
        self.cfg, self.demo, self.echo = cfg, demo, echo
        self.device = demo.resolved_device()
        self.corpus = load_corpus(demo.data, max_bytes=demo.max_bytes, context=demo.model.context)
        val_stream = BatchStream(self.corpus.val, demo.batch_size, demo.model.context, seed=demo.seed + 1)
        self.val = [val_stream.batch(i, self.device) for i in range(demo.val_batches)]
        self.out = Path(demo.out_dir)
        self.runs: list[StudyRun] = []

    def run(self, label: str, schedule: Schedule, seed: int) -> StudyRun:
        demo, steps = self.demo, self.demo.hyper.steps
        stream = BatchStream(self.corpus.train, demo.batch_size, demo.model.context, seed=seed)
        torch.manual_seed(seed)
        model = TinyCausalLM(demo.model).to(self.device)
        made: list[FusedLAMB] = []
        tick, close = _progress_bar(steps, f"{label} (seed {seed})", demo.progress)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r"lrsched_fused: no compiled backend", category=RuntimeWarning)
                result = train(model, _fused_lamb(label, schedule, demo.hyper, made), stream, steps,
                               val_batches=self.val, eval_at=sorted(set(range(0, steps + 1, self.cfg.every)) | {steps}),
                               device=self.device, progress=tick)
        finally:
            close()
        # the kernels recorded each step's global gradient norms on the device; one read at the end
        history = made[0].telemetry_history()
        assert history["step"].tolist() == list(range(steps)), "a step of the study was skipped"
        norms = torch.stack([history["grad_norm_l2"], history["grad_norm_l1"]], dim=1).numpy()
        run = StudyRun(label, seed, schedule, result, norms)
        write_curve(self.out / "curves" / f"{curve_name(label)}_seed{seed}.csv", result.losses, result.lrs, result.val)
        self.runs.append(run)
        return run


def _points(run: StudyRun, start: int) -> tuple[Schedule, np.ndarray, np.ndarray]:
    steps = np.array(sorted(k for k in run.result.val if k >= max(start, 1)))
    return run.schedule, steps, np.array([run.result.val[k] for k in steps])


def _mean_points(runs: list[StudyRun], start: int) -> tuple[Schedule, np.ndarray, np.ndarray]:
    """The fit's points of one schedule: its seed-mean validation losses (``mean_validation``) from ``start``."""
    ks, vs = mean_validation(runs)
    keep = [i for i, k in enumerate(ks) if k >= max(start, 1)]
    return runs[0].schedule, np.array([ks[i] for i in keep]), np.array([vs[i] for i in keep])


def _prediction(runs: list[StudyRun], law: AnnealingLaw, law_fit: AnnealingLaw, steps: int,
                mpl: MultiPowerLaw | None = None, profile: DecayProfile | None = None) -> dict:
    """Predicted (lambda fixed and fitted; the multi-power law where given; the range over the decays the fit
    runs cannot reject, with ``profile``) against the seed-mean final validation loss of one schedule's runs."""
    finals = [r.final for r in runs]
    actual, half = _spread(finals)
    row = {"schedule": runs[0].label, "actual": actual, "finals": finals, "half_range": half}
    for key, lw in (("fixed", law), ("fitted", law_fit), ("multipower", mpl)):
        if lw is None:
            continue
        pred = float(lw.predict(runs[0].schedule, [steps])[0])
        row[key] = pred
        row[f"{key}_error"] = pred / actual - 1.0
    if profile is not None:
        lo, hi = profile.predict_range(runs[0].schedule, [steps])
        row["range_lo"], row["range_hi"] = float(lo[0]), float(hi[0])
        row["in_range"] = bool(row["range_lo"] <= actual <= row["range_hi"])
    return row


def _first_seed_alone(fit_runs: dict, held_runs: dict, start: int, decay: float, steps: int) -> dict:
    """The same fit and predictions from the first seed's runs alone: what one seed's noise does to the errors."""
    first = [_points(runs[0], start) for runs in fit_runs.values()]
    law, law_fit = AnnealingLaw.fit(first, decay=decay), AnnealingLaw.fit(first, decay="fit")
    rows = [_prediction(runs[:1], law, law_fit, steps) for runs in held_runs.values()]
    return {"seed": next(iter(fit_runs.values()))[0].seed, "fixed": max(abs(r["fixed_error"]) for r in rows),
            "fitted": max(abs(r["fitted_error"]) for r in rows), "decay_fitted": law_fit.decay, "predictions": rows}


def _spread(xs: list[float]) -> tuple[float, float]:
    """Mean and half the range (max - min) / 2."""
    return float(np.mean(xs)), (max(xs) - min(xs)) / 2


def run_study(cfg: StudyConfig, echo: Callable[[str], None] = print) -> StudyResult:
    """Run the study (module docstring), print its tables and write its outputs into ``cfg.demo.out_dir``.
    ``cfg.demo.threads`` sets torch's threads for the study (restored afterwards)."""
    previous = torch.get_num_threads()
    if cfg.demo.threads is not None:
        torch.set_num_threads(cfg.demo.threads)
    try:
        return _run_study(cfg, echo)
    finally:
        torch.set_num_threads(previous)


def _run_study(cfg: StudyConfig, echo: Callable[[str], None]) -> StudyResult:
    t_start = time.perf_counter()
    demo, h = cfg.demo, cfg.demo.hyper
    trainer = _Trainer(cfg, echo)
    trainer.out.mkdir(parents=True, exist_ok=True)
    fit_scheds, held_scheds = study_schedules(h, cfg.third_fit_run)
    seeds = [demo.seed + i for i in range(cfg.seeds)]
    start = max(1, int(math.ceil(cfg.fit_start * h.steps)))
    echo(f"lrsched-fused {__version__} schedule study: {h.steps} steps x {demo.batch_size} windows x "
         f"{demo.model.context} bytes per run, FusedLAMB (peak lr {h.lamb_lr:g}, warmup {h.warmup}) on "
         f"{trainer.device}; validation every {cfg.every} steps; seeds {seeds}")

    # 1. fit the law to the fit runs' seed-mean curves, predict the held-out schedules, train them at every seed
    fit_runs = {label: [trainer.run(label, sched, s) for s in seeds] for label, sched in fit_scheds}
    points = [_mean_points(runs, start) for runs in fit_runs.values()]
    law = AnnealingLaw.fit(points, decay=cfg.decay)
    law_fit = AnnealingLaw.fit(points, decay="fit")
    mpl = MultiPowerLaw.fit(points)
    profile = AnnealingLaw.profile(points, decays=profile_decays(law, law_fit))
    held_runs = {label: [trainer.run(label, sched, s) for s in seeds] for label, sched in held_scheds}

    # 2. refine from the first fit run's l1 gradient norms (first seed); compare with WSD and cosine over the seeds
    refined = S.refine(fit_runs[fit_scheds[0][0]][0].norms[:, 1], peak_lr=h.lamb_lr, variant="adam",
                       smoothing=cfg.smoothing, warmup_steps=h.warmup)
    refined_runs = [trainer.run("refined", refined, s) for s in seeds]
    by = {(r.label, r.seed): r for r in trainer.runs}

    predictions = [_prediction(runs, law, law_fit, h.steps, mpl, profile)
                   for runs in [*held_runs.values(), refined_runs]]
    single = _first_seed_alone(fit_runs, held_runs, start, cfg.decay, h.steps) if len(seeds) > 1 else None
    comparison = []
    for label in ("refined", fit_scheds[1][0], held_scheds[0][0]):
        finals = [by[(label, s)].final for s in seeds]
        mean, half = _spread(finals)
        comparison.append({"schedule": label, "finals": finals, "mean": mean, "half_range": half})
    branches = []
    for frac in (0.5, 0.75, 1.0):
        budget = max(2, int(round(frac * h.steps)))
        decay = max(1, int(round(h.decay_fraction * budget)))
        sched = fit_scheds[0][1].branch(budget - decay, decay, "1-sqrt")
        branches.append({"budget": budget, "at_step": budget - decay, "decay_steps": decay,
                         "predicted": float(law_fit.predict(sched, [budget])[0])})

    text = "\n\n".join([prediction_table(predictions, law, law_fit, start, len(seeds), single, mpl, profile),
                        refinement_table(comparison, seeds, refined, cfg.smoothing), _branch_table(branches)])
    echo("")
    echo(text)
    config = {"version": __version__, "device": str(trainer.device), "threads": torch.get_num_threads(),
              "study": {k: v for k, v in asdict(cfg).items() if k != "demo"}, "fit_from_step": start,
              "demo": {k: v for k, v in asdict(demo).items() if k not in ("model", "hyper")},
              "model": asdict(demo.model), "hyper": asdict(h)}
    paths = [save_study(trainer.out / "study.json", config, trainer.runs, law, law_fit, predictions, comparison,
                        branches, refined, single, mpl, profile)]
    (trainer.out / "study.md").write_text(text + "\n")
    paths.insert(0, trainer.out / "study.md")
    try:
        paths.append(plot_study(trainer.out / "study.png", trainer.runs, law_fit, fit_scheds, held_scheds, start,
                                h.steps))
    except ImportError:
        echo("matplotlib is not installed: no figure (pip install 'lrsched-fused[demo]')")
    echo("")
    echo(f"wrote {', '.join(str(p) for p in paths)} and {len(trainer.runs)} curves in {trainer.out / 'curves'}  "
         f"({time.perf_counter() - t_start:.0f} s in all)")
    return StudyResult(runs=trainer.runs, law=law, law_fitted_decay=law_fit, law_multipower=mpl,
                       profile=profile, predictions=predictions, refined=refined,
                       comparison=comparison, branches=branches, text=text, paths=paths)


def _branch_table(rows: list[dict]) -> str:
    lines = ["Loss versus budget from one stable run (the law with lambda fitted, predicting 1-sqrt decay branches of "
             "the constant run, 20% decay):", "", "| budget (steps) | branch at step | decay steps | predicted final loss |",
             "|---:|---:|---:|---:|"]
    lines += [f"| {r['budget']} | {r['at_step']} | {r['decay_steps']} | {r['predicted']:.3f} |" for r in rows]
    return "\n".join(lines)
