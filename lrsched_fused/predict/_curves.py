"""Loss curves as CSV files: ``step,loss,lr[,val_loss]``, one row per step ``0..n``.

* ``step``: updates applied before the row's losses were measured;
* ``loss``: the training loss of step ``step``'s batch, measured before that step's update (empty if none);
* ``lr``: the lr of the update taken at that step, i.e. ``schedule(step)`` (the project's indexing); the last
  row (``step = n``, after the run) has none;
* ``val_loss``: the validation loss after ``step`` updates, where the run measured one (else empty).

The per-update lrs of steps ``0..n-1`` are the run's exact schedule: :func:`read_curve` gives them to the law
as they are (equivalently ``schedules.tabulated(range(n), lrs)``), so no ``--fit-schedule`` is needed.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

__all__ = ["Curve", "write_curve", "read_curve", "COLUMNS", "MIN_VAL_POINTS"]

COLUMNS = ("step", "loss", "lr", "val_loss")
#: ``which="auto"`` uses the validation losses when a curve has at least this many (after ``start``)
MIN_VAL_POINTS = 4


@dataclass(frozen=True)
class Curve:
    """One run's curve: ``lrs[k]`` the lr of update ``k + 1``; losses as ``(steps, values)`` arrays."""

    lrs: np.ndarray
    train_steps: np.ndarray
    train_losses: np.ndarray
    val_steps: np.ndarray
    val_losses: np.ndarray
    source: str = ""

    @property
    def steps(self) -> int:
        """Updates in the run (``len(lrs)``)."""
        return int(self.lrs.size)

    def points(self, which: str = "auto", start: int = 1) -> tuple[np.ndarray, np.ndarray, str]:
        """``(steps, losses, kind)`` at steps >= ``start`` (at least 1): ``which`` is ``"val"``, ``"train"``
        or ``"auto"`` (validation where the curve has :data:`MIN_VAL_POINTS` of them, else training)."""
        if which not in ("auto", "val", "train"):
            raise ValueError(f"which must be 'auto', 'val' or 'train'; got {which!r}")
        start = max(1, int(start))
        keep_v = self.val_steps >= start
        if which == "val" or (which == "auto" and keep_v.sum() >= MIN_VAL_POINTS):
            kind, s, v = "val", self.val_steps[keep_v], self.val_losses[keep_v]
        else:
            keep_t = self.train_steps >= start
            kind, s, v = "train", self.train_steps[keep_t], self.train_losses[keep_t]
        if s.size == 0:
            raise ValueError(f"{self.source or 'curve'}: no {kind} losses at steps >= {start}")
        return s, v, kind


def _cell(x: float | None) -> str:
    return "" if x is None else repr(float(x))


def write_curve(path: str | Path, losses: Sequence[float], lrs: Sequence[float],
                val: Mapping[int, float] | None = None) -> Path:
    """Write ``losses[k]`` (training loss at step ``k``), ``lrs[k]`` (lr of the update at step ``k``) and
    ``val`` (``{step: validation loss}``) as a curve CSV (rows ``0..max(len(lrs), max val step)``)."""
    val = dict(val or {})
    n = max(len(lrs), len(losses), max(val, default=0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(COLUMNS)
        for k in range(n + 1):
            w.writerow([k, _cell(losses[k] if k < len(losses) else None), _cell(lrs[k] if k < len(lrs) else None),
                        _cell(val.get(k))])
    return path


def _float(text: str, where: str) -> float | None:
    text = text.strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{where}: not a number: {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{where}: not finite: {text!r}")
    return value


def read_curve(path: str | Path) -> Curve:
    """Read a curve CSV (columns ``step,loss,lr``, optionally ``val_loss``; see the module docstring).
    The ``lr`` column must hold the lr of every step from 0 up to its last lr, with no gaps."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"curve file {str(path)!r} does not exist")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    names = set(rows[0]) if rows else set()
    missing = [c for c in COLUMNS[:3] if c not in names]
    if missing:
        raise ValueError(f"{path}: the header must have the columns step,loss,lr (val_loss optional); "
                         f"missing {', '.join(missing)}")
    lrs, train, val = {}, {}, {}
    for i, row in enumerate(rows, start=2):
        where = f"{path}, line {i}"
        step = _float(row["step"] or "", where)
        if step is None or step < 0 or step != int(step):
            raise ValueError(f"{where}: step must be an integer >= 0; got {row['step']!r}")
        k = int(step)
        for col, into in (("lr", lrs), ("loss", train), ("val_loss", val)):
            value = _float(row.get(col) or "", f"{where}, {col}")
            if value is not None:
                into[k] = value
    n = max(lrs) + 1 if lrs else 0
    if n == 0 or sorted(lrs) != list(range(n)):
        raise ValueError(f"{path}: the lr column must hold the lr of every step 0..n-1 without gaps")
    if any(v < 0 for v in lrs.values()):
        raise ValueError(f"{path}: lrs must be >= 0")

    def arrays(d: dict[int, float]) -> tuple[np.ndarray, np.ndarray]:
        ks = sorted(d)
        return np.array(ks, dtype=np.int64), np.array([d[k] for k in ks], dtype=np.float64)

    ts, tv = arrays(train)
    vs, vv = arrays(val)
    for kind, v in (("loss", tv), ("val_loss", vv)):
        if np.any(v <= 0):
            raise ValueError(f"{path}: {kind} values must be > 0")
    return Curve(lrs=np.array([lrs[k] for k in range(n)]), train_steps=ts, train_losses=tv, val_steps=vs,
                 val_losses=vv, source=str(path))
