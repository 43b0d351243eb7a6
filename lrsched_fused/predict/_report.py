"""What ``lrsched-fused predict`` prints and draws: fit the law to curve files, a table of predicted final losses,
a figure of the fitted and predicted curves."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ._curves import Curve, read_curve
from ._law import AnnealingLaw
from ._multipower import MultiPowerLaw
from ._profile import DecayProfile, profile_decays

__all__ = ["CurveFit", "fit_curves", "default_steps", "prediction_rows", "format_predictions", "plot_predictions"]

#: default first fitted step, as a fraction of a curve's steps
FIT_START = 0.2
#: the laws ``fit_curves`` knows, by their command-line names
LAWS = ("annealing", "multi-power")


@dataclass(frozen=True)
class CurveFit:
    """The law fitted to curve files, with what went into the fit."""

    law: AnnealingLaw | MultiPowerLaw
    curves: list[Curve]
    points: list[tuple[np.ndarray, np.ndarray, str]]  # (steps, losses, kind) per curve
    profile: DecayProfile | None = None  # the annealing law at each decay (AnnealingLaw.profile)


def fit_curves(paths: Sequence[str | Path], *, which: str = "auto", from_step: int | None = None,
               decay: float | str = 0.999, law: str = "annealing") -> CurveFit:
    """Read the curve files and fit the law to their losses at steps ``>= from_step`` (default 20% of each
    curve's steps); each run's schedule is its lr column, used as it is. ``law``: ``"annealing"``
    (:class:`AnnealingLaw`, with ``decay``; also its :class:`DecayProfile`) or ``"multi-power"``
    (:class:`MultiPowerLaw`; ``decay`` unused)."""
    if law not in LAWS:
        raise ValueError(f"law must be one of {', '.join(LAWS)}; got {law!r}")
    if not paths:
        raise ValueError("give at least one curve file to fit")
    curves = [read_curve(p) for p in paths]
    points = [c.points(which, from_step if from_step is not None else max(1, int(FIT_START * c.steps)))
              for c in curves]
    runs = [(c.lrs, s, v) for c, (s, v, _) in zip(curves, points)]
    if law == "annealing":
        fitted = AnnealingLaw.fit(runs, decay=decay)
        return CurveFit(law=fitted, curves=curves, points=points,
                        profile=AnnealingLaw.profile(runs, decays=profile_decays(fitted)))
    return CurveFit(law=MultiPowerLaw.fit(runs), curves=curves, points=points)


def default_steps(schedule: Any, curves: Sequence[Curve]) -> int:
    """A schedule's total, or (a schedule without an end, e.g. ``constant``) the longest fit curve's length."""
    total = getattr(schedule, "total", 0)
    return int(total) if total else max(c.steps for c in curves)


def prediction_rows(fit: CurveFit, schedules: Sequence[Any], steps: int | None) -> list[dict]:
    """One row per fit curve and per schedule; ``range``: the lowest and highest prediction over the decays the
    fit runs cannot reject (``fit.profile``), or None."""
    def spread(lrs_or_schedule: Any, n: int) -> tuple[float, float] | None:
        if fit.profile is None:
            return None
        lo, hi = fit.profile.predict_range(lrs_or_schedule, [n])
        return float(lo[0]), float(hi[0])

    rows = []
    for c, (s, v, kind) in zip(fit.curves, fit.points):
        end = int(s[-1])
        rows.append({"name": Path(c.source).name, "kind": f"fit ({kind})", "steps": end,
                     "predicted": float(fit.law.predict(c.lrs, [end])[0]), "actual": float(v[-1]),
                     "range": spread(c.lrs, end)})
    for sched in schedules:
        n = steps if steps is not None else default_steps(sched, fit.curves)
        rows.append({"name": repr(sched), "kind": "predicted", "steps": n,
                     "predicted": float(fit.law.predict(sched, [n])[0]), "actual": None, "range": spread(sched, n)})
    return rows


def format_predictions(fit: CurveFit, rows: Sequence[dict]) -> str:
    law = fit.law
    ranged = fit.profile is not None
    lines = [law.describe()]
    if ranged:
        rejected = all(k.decay != law.decay for k in fit.profile.plausible())
        lines.append(f"decays the fit runs cannot reject: {fit.profile.describe()}; the range column is the lowest "
                     "and highest prediction over them (a lower bound on the prediction's uncertainty)" +
                     (f"; the law's own lambda {law.decay:.6g} is rejected" if rejected else ""))
    head = "| run or schedule | role | steps | predicted final loss |" + (" range over lambda |" if ranged else "")
    lines += ["", head + " measured | error |", "|---|---|---:|---:|" + ("---:|" if ranged else "") + "---:|---:|"]
    for r in rows:
        actual = "" if r["actual"] is None else f"{r['actual']:.4f}"
        err = "" if r["actual"] is None else f"{100 * (r['predicted'] / r['actual'] - 1):+.2f}%"
        span = f" {r['range'][0]:.4f}-{r['range'][1]:.4f} |" if ranged else ""
        lines.append(f"| {r['name']} | {r['kind']} | {r['steps']} | {r['predicted']:.4f} |{span} {actual} | {err} |")
    return "\n".join(lines)


def plot_predictions(path: str | Path, fit: CurveFit, schedules: Sequence[Any], rows: Sequence[dict]) -> Path:
    """The fit curves' losses (dots) with the law's fitted curves, and each schedule's predicted curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    k = 0
    for c, (s, v, kind), row in zip(fit.curves, fit.points, rows):
        color = colors[k % len(colors)]
        k += 1
        ax.plot(s, v, "o", markersize=3, color=color, alpha=0.7)
        ts = np.arange(int(s[0]), c.steps + 1)
        ax.plot(ts, fit.law.predict(c.lrs, ts), color=color, label=f"{row['name']} (fit, {kind} losses)")
    lo = min(int(s[0]) for s, _, _ in fit.points)
    for sched, row in zip(schedules, rows[len(fit.curves):]):
        color = colors[k % len(colors)]
        k += 1
        ts = np.arange(lo, row["steps"] + 1)
        label = row["name"] if len(row["name"]) <= 60 else row["name"][:57] + "..."
        ax.plot(ts, fit.law.predict(sched, ts), "--", color=color, label=f"{label} (predicted)")
    ax.set_xlabel("step (updates applied)")
    ax.set_ylabel("loss")
    ax.set_title(fit.law.describe().split(";")[0], fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
