"""Draw schedules (lr against the clock) and list their values at the phase edges.

``python -m lrsched_fused plot "wsd(peak_lr=3e-4, total_steps=10000, warmup_steps=500, decay_fraction=0.2)"
-o wsd.png`` parses each schedule with :func:`lrsched_fused.schedules.parse`, evaluates it with the
float64 reference (``Schedule.__call__``), draws every schedule given into one figure (matplotlib, Agg
backend: no display needed) and prints a table of ``f(edge)`` for the edges of :attr:`Schedule.edges`.
:func:`gallery` draws one panel per schedule family (the README's image, ``docs/img/schedules.png``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from lrsched_fused import schedules as S
from lrsched_fused.schedules import Schedule

__all__ = ["edge_table", "sample_points", "plot_schedules", "gallery", "GALLERY"]

#: Points drawn per schedule (phase edges are always included exactly).
POINTS = 1500


def sample_points(schedule: Schedule, points: int = POINTS, until: int | None = None) -> list[int]:
    """Sorted integer clock values covering ``[0, until]`` (default ``total`` plus 5%), edges included."""
    end = until if until is not None else max(1, schedule.total + max(1, schedule.total // 20))
    n = max(2, min(points, end + 1))
    ts = {round(i * end / (n - 1)) for i in range(n)}
    for e in schedule.edges:
        if e <= end:
            ts.update((e, max(0, e - 1)))
    return sorted(ts)


def edge_table(schedule: Schedule) -> str:
    """``step  lr  phase`` rows: the value at each phase edge (the first clock value of the phase that
    starts there, or of the final value at ``total``) and the phase's description."""
    starts = {}
    for s, ph in zip(schedule.starts, schedule.phases):
        if ph.length:
            starts.setdefault(s, ph.describe())
    unit = "step" if schedule.unit == "steps" else "token"
    rows = [(unit, "lr", "from here")]
    for e in schedule.edges:
        what = starts.get(e, f"final value {schedule.final_value:.6g}" if e == schedule.total else "")
        rows.append((f"{e:,}", f"{schedule(e):.6g}", what))
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    return "\n".join(f"  {a.rjust(w0)}  {b.ljust(w1)}  {c}".rstrip() for a, b, c in rows)


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install 'lrsched-fused[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _draw(ax, schedules: Sequence[Schedule], labels: Sequence[str], until: int | None = None) -> None:
    end = until if until is not None else max(s.total + max(1, s.total // 20) for s in schedules)
    for sched, label in zip(schedules, labels):
        ts = sample_points(sched, until=end)
        ax.plot(ts, [sched(t) for t in ts], label=label, linewidth=1.6)
    units = {s.unit for s in schedules}
    ax.set_xlabel("tokens consumed" if units == {"tokens"} else "step (updates applied)")
    ax.set_ylabel("learning rate")
    ax.grid(alpha=0.3)
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))


def plot_schedules(schedules: Sequence[Schedule], path: str | Path, labels: Sequence[str] | None = None,
                   title: str | None = None, log_y: bool = False) -> Path:
    """One figure with every schedule in ``schedules``; written to ``path`` (format from its suffix)."""
    if not schedules:
        raise ValueError("schedules must hold at least one Schedule")
    plt = _pyplot()
    labels = list(labels) if labels is not None else [_short(repr(s)) for s in schedules]
    fig, ax = plt.subplots(figsize=(8, 4.2))
    _draw(ax, schedules, labels)
    if log_y:
        ax.set_yscale("log")
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _short(text: str, width: int = 90) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


_T = 1000
#: The gallery's panels: (title, [(label, schedule text)]); every constructor appears at least once.
GALLERY: list[tuple[str, list[tuple[str, str]]]] = [
    ("linear, cosine, constant", [
        ("linear(warmup 100)", f"linear(peak_lr=1.0, total_steps={_T}, warmup_steps=100)"),
        ("cosine(warmup 100, final 0.1)", f"cosine(peak_lr=1.0, total_steps={_T}, warmup_steps=100, final_lr=0.1)"),
        ("constant(0.5)", "constant(0.5)"),
    ]),
    ("wsd: decay shapes (last 30%)", [
        (f"decay={d!r}", f"wsd(peak_lr=1.0, total_steps={_T}, warmup_steps=100, decay_fraction=0.3, decay={d!r}"
                         f", final_lr={0.02 if d == 'exp' else 0.0})")
        for d in ("linear", "cosine", "1-sqrt", "square", "exp")
    ]),
    ("rex (Chen et al.)", [
        ("beta=0.5 (paper)", f"rex(peak_lr=1.0, total_steps={_T}, warmup_steps=50, beta=0.5)"),
        ("beta=0.9 (code variant)", f"rex(peak_lr=1.0, total_steps={_T}, warmup_steps=50, beta=0.9)"),
        ("linear, for comparison", f"linear(peak_lr=1.0, total_steps={_T}, warmup_steps=50)"),
    ]),
    ("power (Shen et al.), clock in steps", [
        ("a=4.6, b=-0.51, cap 0.02", f"power(max_lr=0.02, a=4.6, b=-0.51, total={100 * _T}, warmup=2000, "
                                     "unit='steps')"),
        ("+ exp decay, last 10%", f"power(max_lr=0.02, a=4.6, b=-0.51, total={100 * _T}, warmup=2000, "
                                  "decay_fraction=0.1, decay='exp', final_lr=0.001, unit='steps')"),
    ]),
    ("infinite (Ibrahim et al.)", [
        (f"cooldown={c!r}", f"infinite(peak_lr=1.0, total_steps={_T}, warmup_steps=50, cooldown_steps=200, "
                            f"constant_lr=0.4, anneal_steps=150, final_lr=0.02, cooldown={c!r})")
        for c in ("cosine", "linear", "inv-sqrt")
    ]),
    ("rewarm (Gupta et al.) and tabulated", [
        ("cosine, re-warmed at 600", f"rewarm(cosine(peak_lr=1.0, total_steps=800, warmup_steps=50), at_step=600, "
                                     f"warmup_steps=50, peak_lr=0.7, total_steps={_T})"),
        ("tabulated knots", "tabulated([0, 100, 300, 600, 1000], [0.0, 1.0, 0.8, 0.5, 0.05])"),
    ]),
    ("branch (MiniCPM) and chain", [
        ("stable run", f"wsd(peak_lr=1.0, total_steps={_T}, warmup_steps=50, decay_steps=0)"),
        ("1-sqrt branch at 400", f"branch(wsd(peak_lr=1.0, total_steps={_T}, warmup_steps=50, decay_steps=0), "
                                 "at_step=400, decay_steps=100, shape='1-sqrt')"),
        ("linear branch at 700", f"branch(wsd(peak_lr=1.0, total_steps={_T}, warmup_steps=50, decay_steps=0), "
                                 "at_step=700, decay_steps=150, shape='linear')"),
        ("chain(cosine, linear)", "chain(cosine(peak_lr=0.6, total_steps=500, final_lr=0.3), "
                                  "linear(peak_lr=0.3, total_steps=500))"),
    ]),
]


def gallery(path: str | Path) -> Path:
    """One panel per schedule family (:data:`GALLERY`), written to ``path``."""
    plt = _pyplot()
    cols = 3
    rows = (len(GALLERY) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(13, 3.4 * rows))
    for ax, (title, entries) in zip(axes.flat, GALLERY):
        scheds = [S.parse(text) for _, text in entries]
        _draw(ax, scheds, [label for label, _ in entries])
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(GALLERY):]:
        ax.set_visible(False)
    fig.suptitle("lrsched_fused.schedules: the value each update uses (first update: step 0)", fontsize=11)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
