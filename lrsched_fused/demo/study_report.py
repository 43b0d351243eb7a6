"""The schedule study's outputs (:mod:`.study`): its tables, its figure and its JSON record."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lrsched_fused.predict import AnnealingLaw, DecayProfile, MultiPowerLaw
from lrsched_fused.schedules import Schedule

#: a :class:`~lrsched_fused.demo.study.StudyRun` (not imported: :mod:`.study` imports this module)
StudyRun = Any

__all__ = ["prediction_table", "refinement_table", "plot_study", "save_study", "mean_validation"]


def prediction_table(rows: Sequence[dict], law: AnnealingLaw, law_fit: AnnealingLaw, start: int, seeds: int = 1,
                     single: dict | None = None, mpl: MultiPowerLaw | None = None,
                     profile: DecayProfile | None = None) -> str:
    """Final validation loss, predicted (lambda fixed and fitted; with ``profile``, the range over the decays the
    fit runs cannot reject; with ``mpl``, the multi-power law too) against actual (the mean over ``seeds`` seeds,
    with half the range), per held-out schedule; ``single``: the largest errors of the same fit and predictions
    from the first seed alone."""
    over = f"the mean of {seeds} seeds" if seeds > 1 else "one seed"
    lines = [f"Loss prediction: the annealing law fitted to the fit runs' validation losses at steps >= {start} "
             f"({over}), then the final validation loss of schedules it did not see ({over}):", "",
             f"  lambda fixed:  {law.describe()}", f"  lambda fitted: {law_fit.describe()}"]
    if mpl is not None:
        lines.append(f"  multi-power (Luo et al., arXiv 2503.12811): {mpl.describe()}")
    ranged = " range over lambda |" if profile is not None else ""
    extra = " predicted (multi-power) | error |" if mpl is not None else ""
    lines += ["", f"| schedule | actual | +- (half range) | predicted (lambda {law.decay:g}) | error | "
              f"predicted (lambda fitted) | error |{ranged}{extra}", "|---|---:|---:|---:|---:|---:|---:|" +
              ("---:|" if profile is not None else "") + ("---:|---:|" if mpl is not None else "")]
    for r in rows:
        span = f" {r['range_lo']:.4f}-{r['range_hi']:.4f} |" if profile is not None else ""
        cells = f" {r['multipower']:.4f} | {100 * r['multipower_error']:+.2f}% |" if mpl is not None else ""
        lines.append(f"| {r['schedule']} | {r['actual']:.4f} | {r.get('half_range', 0.0):.4f} | {r['fixed']:.4f} | "
                     f"{100 * r['fixed_error']:+.2f}% | {r['fitted']:.4f} | {100 * r['fitted_error']:+.2f}% |{span}"
                     f"{cells}")
    held = [r for r in rows if r["schedule"] != "refined"]
    worst = {key: max(abs(r[f"{key}_error"]) for r in held)
             for key in ("fixed", "fitted", *(("multipower",) if mpl is not None else ()))}
    lines += ["", f"Largest final-loss error on the {len(held)} held-out schedules: {100 * worst['fixed']:.2f}% with lambda "
              f"{law.decay:g} (fit residual {100 * law.residual:.2f}%), {100 * worst['fitted']:.2f}% with lambda fitted "
              f"({law_fit.decay:.4g}; fit residual {100 * law_fit.residual:.2f}%); residual: rms of the log-loss "
              f"residuals over the {law.points} fitted points."]
    if mpl is not None:
        lines[-1] += (f" The multi-power law: {100 * worst['multipower']:.2f}% (fit residual "
                      f"{100 * mpl.residual:.2f}%).")
    if profile is not None:
        inside = sum(r["in_range"] for r in held)
        lines.append(f"Range over lambda: the lowest and highest prediction over the decays the fit runs cannot "
                     f"reject, a lower bound on the prediction's uncertainty; {profile.describe()}. The measured loss "
                     f"lies in it for {inside} of the {len(held)} held-out schedules.")
    if single is not None:
        lines.append(f"From seed {single['seed']} alone (fit and actual): {100 * single['fixed']:.2f}% with lambda "
                     f"{law.decay:g}, {100 * single['fitted']:.2f}% with lambda fitted ({single['decay_fitted']:.4g}).")
    return "\n".join(lines)


def refinement_table(rows: Sequence[dict], seeds: Sequence[int], refined: Schedule, smoothing: float) -> str:
    """Final validation loss per seed, mean and half range, of the refined schedule, WSD and cosine."""
    head = "| schedule | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | +- (half range) |"
    lines = [f"Refinement (Defazio et al.): a schedule refined from the constant run's l1 gradient norms (Adam "
             f"variant, median smoothing tau {smoothing:g}, {len(refined.phases) + 1} knots), against WSD and cosine "
             f"over {len(seeds)} seed(s):", "", head, "|---|" + "---:|" * (len(seeds) + 2)]
    for r in rows:
        cells = " | ".join(f"{x:.4f}" for x in r["finals"])
        lines.append(f"| {r['schedule']} | {cells} | {r['mean']:.4f} | {r['half_range']:.4f} |")
    best = min(rows, key=lambda r: r["mean"])
    lines += ["", f"Lowest mean final validation loss: {best['schedule']} ({best['mean']:.4f})."]
    return "\n".join(lines)


def _val(run: StudyRun) -> tuple[list[int], list[float]]:
    ks = sorted(run.result.val)
    return ks, [run.result.val[k] for k in ks]


def mean_validation(runs: Sequence[StudyRun]) -> tuple[list[int], list[float]]:
    """``(steps, losses)``: the validation losses of one schedule's runs (its seeds) averaged step by step, at
    the steps every run has: the expected curve the annealing law describes, with the seeds' noise reduced."""
    ks = sorted(set.intersection(*(set(r.result.val) for r in runs)))
    return ks, [float(np.mean([r.result.val[k] for r in runs])) for k in ks]


def plot_study(path: str | Path, runs: Sequence[StudyRun], law: AnnealingLaw, fit: Sequence[tuple[str, Schedule]],
               held: Sequence[tuple[str, Schedule]], start: int, steps: int) -> Path:
    """Three panels: the schedules; ``law``'s fitted and predicted validation curves (lines) against the measured
    ones (markers); the refined schedule's runs against WSD and cosine, every seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seed0 = min(r.seed for r in runs)
    first = {r.label: r for r in runs if r.seed == seed0}
    colors = {**dict(zip([label for label, _ in fit], ["tab:gray", "tab:red", "tab:brown", "tab:pink"])),
              **dict(zip([label for label, _ in held], ["tab:blue", "tab:green", "tab:purple", "tab:olive"])),
              "refined": "tab:orange"}
    fig, (ax_lr, ax_pred, ax_ref) = plt.subplots(3, 1, figsize=(8, 10), sharex=True, height_ratios=(1, 2, 1.5))
    for label, run in first.items():
        ax_lr.plot(range(len(run.result.lrs)), run.result.lrs, color=colors.get(label), label=label)
    ax_lr.set_ylabel("learning rate")
    ax_lr.legend(fontsize=7, ncol=3)
    ts = np.arange(max(start, 1), steps + 1)
    for label, _ in list(fit) + list(held) + [("refined", None)]:
        run = first.get(label)
        if run is None:
            continue
        ks, vs = mean_validation([r for r in runs if r.label == label])
        kind = "fit" if label in dict(fit) else "predicted"
        ax_pred.plot(ks, vs, "o", color=colors[label], markersize=3.5, alpha=0.8)
        ax_pred.plot(ts, law.predict(run.schedule, ts), "-" if kind == "fit" else "--", color=colors[label],
                     label=f"{label} ({kind})")
    ax_pred.axvline(start, color="0.6", linestyle=":", linewidth=1)
    ax_pred.set_ylabel("validation loss")
    ax_pred.set_title(f"annealing law (lambda {law.decay:.4g}): fitted / predicted (lines) vs measured, mean of the "
                      "seeds (dots)", fontsize=9)
    vals = [v for r in runs for k, v in r.result.val.items() if k >= start]
    if vals:
        lo, hi = min(vals), max(vals)
        ax_pred.set_ylim(lo - 0.1 * (hi - lo + 1e-9), hi + 0.3 * (hi - lo + 1e-9))
    ax_pred.legend(fontsize=7, ncol=2)
    for r in runs:
        if r.label in ("refined", fit[1][0], held[0][0]):
            ks, vs = _val(r)
            ax_ref.plot(ks, vs, color=colors[r.label], alpha=0.9 if r.seed == seed0 else 0.5,
                        linestyle="-" if r.seed == seed0 else "--", label=f"{r.label}, seed {r.seed}")
    ax_ref.set_ylim(*ax_pred.get_ylim())
    ax_ref.set_ylabel("validation loss")
    ax_ref.set_xlabel("step (updates applied)")
    ax_ref.legend(fontsize=7, ncol=3)
    for ax in (ax_lr, ax_pred, ax_ref):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _law(law: AnnealingLaw | MultiPowerLaw | None) -> dict | None:
    return None if law is None else dict(law.__dict__)


def save_study(path: str | Path, config: dict, runs: Sequence[StudyRun], law: AnnealingLaw, law_fit: AnnealingLaw,
               predictions: list, comparison: list, branches: list, refined: Schedule,
               single_seed: dict | None = None, mpl: MultiPowerLaw | None = None,
               profile: DecayProfile | None = None) -> Path:
    kept = {x.decay for x in profile.plausible()} if profile is not None else set()
    data = {"config": config, "law": _law(law), "law_fitted_decay": _law(law_fit), "law_multipower": _law(mpl),
            "decay_profile": None if profile is None else [{**_law(x), "kept": x.decay in kept} for x in profile.laws],
            "predictions": predictions,
            "single_seed": single_seed,
            "refinement": comparison, "branches": branches, "refined_schedule": refined.to_dict(),
            "runs": [{"schedule": r.label, "seed": r.seed, "spec": r.schedule.to_dict(), "seconds": r.result.seconds,
                      "losses": r.result.losses, "lrs": r.result.lrs,
                      "val": {str(k): v for k, v in sorted(r.result.val.items())},
                      "grad_norm_l2": r.norms[:, 0].tolist(), "grad_norm_l1": r.norms[:, 1].tolist()} for r in runs]}
    path = Path(path)
    path.write_text(json.dumps(data, indent=1))
    return path
