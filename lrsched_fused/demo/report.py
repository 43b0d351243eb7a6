"""The demo's outputs: the phase table, the verdict, the figure and a JSON record of both runs."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Sequence

from .train import RunResult

__all__ = ["Checkpoint", "checkpoints", "table", "verdict", "plot_runs", "save_json", "write_curves", "curve_name",
           "TIE_NATS"]

#: Final validation losses closer than this (nats) are reported as a tie.
TIE_NATS = 0.01

Checkpoint = tuple[str, int]


def checkpoints(warmup: int, stable_end: int, total: int) -> list[Checkpoint]:
    """The table's rows: start, end of warmup, end of stable, end of decay (WSD's phase edges)."""
    rows = [("start", 0), ("end of warmup", warmup), ("end of stable", stable_end), ("end of decay", total)]
    seen, out = set(), []
    for label, step in rows:
        if step not in seen:
            seen.add(step)
            out.append((label, step))
    return out


def table(runs: Sequence[RunResult], rows: Sequence[Checkpoint]) -> str:
    """A Markdown table: train (mean of the 10 steps before) and validation loss at each checkpoint,
    then the median optimizer-step time, the whole run's time and the backend, one column pair per run."""
    head = ["checkpoint", "step"]
    for r in runs:
        head += [f"{r.name}: train", "val"]
    lines = [head]
    for label, step in rows:
        line = [label, str(step)]
        for r in runs:
            line.append(f"{r.train_loss_at(step):.3f}" if r.losses else "-")
            line.append(f"{r.val[step]:.3f}" if step in r.val else "-")
        lines.append(line)
    lines.append(["optimizer step, median ms", ""] + [c for r in runs for c in (f"{r.median_opt_ms():.2f}", "")])
    lines.append(["whole run, s", ""] + [c for r in runs for c in (f"{r.seconds:.1f}", "")])
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]

    def fmt(row: list[str]) -> str:
        cells = (c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
        return "| " + " | ".join(cells) + " |"

    sep = "|" + "|".join("-" * (w + 2) if i < 2 else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|"
    return "\n".join([fmt(lines[0]), sep] + [fmt(r) for r in lines[1:]])


def verdict(a: RunResult, b: RunResult, final_step: int) -> str:
    """An honest sentence or two: which run ends with the lower validation loss, by how much, and how
    their optimizer steps compare in time."""
    va, vb = a.val.get(final_step), b.val.get(final_step)
    if va is None or vb is None:
        return "no final validation loss was recorded"
    diff = vb - va
    if abs(diff) < TIE_NATS:
        result = (f"Final validation loss: {a.name} {va:.3f}, {b.name} {vb:.3f}: within {TIE_NATS} nats, "
                  "a tie at this budget.")
    else:
        best, worst, vbest, vworst = (a, b, va, vb) if diff > 0 else (b, a, vb, va)
        result = (f"{best.name} is better: final validation loss {vbest:.3f} vs {vworst:.3f} for {worst.name} "
                  f"({vworst - vbest:.3f} nats, {100 * (vworst - vbest) / vworst:.1f}% lower).")
    ta, tb = a.median_opt_ms(), b.median_opt_ms()
    faster, slower, tf, ts = (a, b, ta, tb) if ta <= tb else (b, a, tb, ta)
    timing = (f"Optimizer step: {faster.name} {tf:.2f} ms vs {slower.name} {ts:.2f} ms per step "
              f"({ts / max(tf, 1e-9):.1f}x; {a.name} ran on {a.backend}, {b.name} on {b.backend}).")
    return result + "\n" + timing


def plot_runs(runs: Sequence[RunResult], edges: Sequence[int], path: str | Path, title: str = "") -> Path:
    """Two panels sharing the step axis: the lr each step used, and the training loss (raw, faint, and
    an exponential moving average) with the validation losses as markers; WSD's phase edges dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = ["tab:red", "tab:blue", "tab:green", "tab:purple"]
    fig, (ax_lr, ax_loss) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True, height_ratios=(1, 2))
    for r, c in zip(runs, colors):
        steps = range(len(r.lrs))
        ax_lr.plot(steps, r.lrs, color=c, label=r.name)
        ax_loss.plot(range(len(r.losses)), r.losses, color=c, alpha=0.2, linewidth=0.8)
        ax_loss.plot(range(len(r.losses)), _ema(r.losses, 0.9), color=c, label=f"{r.name}: train (EMA)")
        if r.val:
            ks = sorted(r.val)
            ax_loss.plot(ks, [r.val[k] for k in ks], "o", color=c, markersize=6, markeredgecolor="black",
                         markeredgewidth=0.6, label=f"{r.name}: validation (at the phase edges)")
    for ax in (ax_lr, ax_loss):
        for e in edges:
            ax.axvline(e, color="0.6", linestyle=":", linewidth=1)
        ax.grid(alpha=0.3)
    ax_lr.set_ylabel("learning rate")
    ax_lr.legend(fontsize=8)
    ax_loss.set_ylabel("loss (nats per byte)")
    ax_loss.set_xlabel("step (updates applied)")
    finite = [x for r in runs for x in r.losses[len(r.losses) // 10:]]
    if finite:
        lo, hi = min(finite), max(finite)
        ax_loss.set_ylim(lo - 0.05 * (hi - lo + 1e-9), hi + 0.3 * (hi - lo + 1e-9))
    ax_loss.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _ema(xs: Sequence[float], beta: float) -> list[float]:
    out, m = [], None
    for x in xs:
        m = x if m is None else beta * m + (1 - beta) * x
        out.append(m)
    return out


def save_json(runs: Sequence[RunResult], config: dict, path: str | Path) -> Path:
    """Both runs' per-step losses, lrs, step times and validation losses, with the configuration."""
    data = {"config": config,
            "runs": [{"name": r.name, "backend": r.backend, "seconds": r.seconds, "losses": r.losses, "lrs": r.lrs,
                      "opt_seconds": r.opt_seconds, "val": {str(k): v for k, v in sorted(r.val.items())}}
                     for r in runs]}
    path = Path(path)
    path.write_text(json.dumps(data, indent=1))
    return path


def curve_name(name: str) -> str:
    """A file name for a run's curve: ``"FusedLAMB + WSD"`` -> ``"fusedlamb_wsd"``."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "run"


def write_curves(runs: Sequence[RunResult], directory: str | Path) -> list[Path]:
    """Each run's curve as ``<directory>/<curve_name>.csv`` with the columns ``step,loss,lr,val_loss``
    (:mod:`lrsched_fused.predict`; ``lrsched-fused predict --fit`` reads them)."""
    from lrsched_fused.predict import write_curve

    return [write_curve(Path(directory) / f"{curve_name(r.name)}.csv", r.losses, r.lrs, r.val) for r in runs]
