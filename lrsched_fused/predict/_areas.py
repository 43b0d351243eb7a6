"""The two areas of the annealing law (Tissue et al., arXiv 2408.11029), exact per step.

Indexing (the project's): update ``i = 1, 2, ...`` uses ``lr_i = schedule(i - 1)``; the loss "at step ``s``"
is the loss after ``s`` updates. Then

* ``S1(s) = sum_{i <= s} lr_i``, the forward area;
* ``S2(s) = sum_{i <= s} m_i``, the annealing area, ``m_i = decay * m_{i-1} + (lr_{i-1} - lr_i)``,
  ``m_0 = 0`` and ``lr_0 = lr_1`` (so a constant schedule has ``S2 = 0``).

Warmup: the lr sequence's leading non-decreasing run (updates ``1..w``, where ``lr_{w+1} < lr_w`` is the
first decrease; the whole run if the lr never decreases) is the warmup. There ``m_i = 0``: the rising lr
adds no negative annealing area, while ``S1`` counts every update. After it every change counts, a later
rise (a re-warm) included, which lowers ``S2`` as the law's own formula says. For warmup-stable-decay
schedules the "warmup" so defined also covers the stable phase, where ``lr_{i-1} - lr_i = 0`` anyway.

``m`` is a first-order linear recurrence; it is computed with a log-depth scan (``m_i = sum_{j <= i}
decay^(i-j) d_j`` built by doubling), in float64, every step (no subsampling).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from lrsched_fused.schedules import Schedule

__all__ = ["lr_sequence", "cumulative_areas", "areas", "warmup_updates", "check_decay"]


def check_decay(decay: Any) -> float:
    if isinstance(decay, bool) or not isinstance(decay, (int, float, np.floating)) or not 0.0 <= float(decay) < 1.0:
        raise ValueError(f"decay (the law's lambda) must be a number in [0, 1); got {decay!r}")
    return float(decay)


@functools.lru_cache(maxsize=64)
def _schedule_lrs(schedule: Schedule, n: int) -> np.ndarray:
    out = np.empty(n)
    start = 0
    for ph in schedule.phases:  # Schedule.__call__ phase by phase, without the per-step phase search
        lo, hi = start, min(start + ph.length, n)
        for t in range(lo, hi):
            out[t] = ph.value_at(t, start)
        start += ph.length
        if start >= n:
            break
    if start < n:
        out[start:] = schedule.final_value
    out.setflags(write=False)
    return out


def lr_sequence(schedule: Any, n: int) -> np.ndarray:
    """``[lr_1, ..., lr_n] = [schedule(0), ..., schedule(n - 1)]`` (float64, read-only).

    ``schedule`` is a :class:`~lrsched_fused.schedules.Schedule` or a 1-d array-like (list, numpy array,
    tensor) of per-update lrs, ``lrs[k]`` the lr of update ``k + 1``; it must hold at least ``n`` values.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be an integer >= 0; got {n!r}")
    n = int(n)
    if isinstance(schedule, Schedule):
        if schedule.unit != "steps":
            raise ValueError("schedule must count steps (unit='steps'); the law is written over updates")
        return _schedule_lrs(schedule, n)
    if hasattr(schedule, "detach"):  # a torch tensor (torch is not imported here)
        schedule = schedule.detach().cpu().double().numpy()
    try:
        lrs = np.array(schedule, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"schedule must be a Schedule or a 1-d sequence of lrs; got {type(schedule).__name__}") \
            from None
    if lrs.ndim != 1:
        raise ValueError(f"schedule (an lr array) must be 1-d; got shape {lrs.shape}")
    if lrs.size < n:
        raise ValueError(f"schedule (an lr array) holds {lrs.size} lrs; {n} are needed")
    lrs = lrs[:n]
    if not np.all(np.isfinite(lrs)) or np.any(lrs < 0):
        raise ValueError("schedule (an lr array) must hold finite lrs >= 0")
    lrs.setflags(write=False)
    return lrs


def warmup_updates(lrs: np.ndarray) -> int:
    """``w``: the updates of the lr sequence's leading non-decreasing run (``len(lrs)`` if it never decreases)."""
    drops = np.flatnonzero(np.diff(lrs) < 0)
    return int(drops[0]) + 1 if drops.size else int(len(lrs))


def _scan(d: np.ndarray, decay: float) -> np.ndarray:
    """``m_i = decay * m_{i-1} + d_i`` (``m_{-1} = 0``) for every ``i``, by doubling: after the pass with offset
    ``k``, ``m_i`` sums ``decay^(i-j) d_j`` over the ``2k`` latest ``j``."""
    m = d.copy()
    k, p = 1, decay
    while k < m.size and p > 0.0:
        m[k:] = m[k:] + p * m[:-k]
        k, p = 2 * k, p * p
    return m


def cumulative_areas(lrs: Any, decay: float = 0.999) -> tuple[np.ndarray, np.ndarray]:
    """``(S1, S2)`` at every step ``s = 0..n`` for the per-update lrs ``lrs = [lr_1..lr_n]`` (arrays of
    ``n + 1``; both are 0 at ``s = 0``)."""
    decay = check_decay(decay)
    lr = np.asarray(lrs, dtype=np.float64)
    d = np.zeros(lr.size)
    d[1:] = lr[:-1] - lr[1:]
    d[:warmup_updates(lr)] = 0.0
    m = _scan(d, decay)
    zero = np.zeros(1)
    return np.concatenate([zero, np.cumsum(lr)]), np.concatenate([zero, np.cumsum(m)])


def _steps(steps: Any) -> np.ndarray:
    if hasattr(steps, "detach"):
        steps = steps.detach().cpu().numpy()
    s = np.asarray(steps)
    if s.ndim > 1 or (s.size and not np.issubdtype(s.dtype, np.integer)):
        if s.size and np.issubdtype(s.dtype, np.floating) and np.all(s == np.round(s)):
            s = s.astype(np.int64)
        else:
            raise ValueError(f"steps must be integers (updates applied) >= 0; got {steps!r}")
    s = np.atleast_1d(s).astype(np.int64)
    if s.size and s.min() < 0:
        raise ValueError(f"steps must be >= 0; got {int(s.min())}")
    return s


def areas(schedule: Any, steps: Any, decay: float = 0.999) -> tuple[np.ndarray, np.ndarray]:
    """``(S1, S2)`` at each of ``steps`` (updates applied), for a schedule or an array of per-update lrs."""
    s = _steps(steps)
    n = int(s.max()) if s.size else 0
    s1, s2 = cumulative_areas(lr_sequence(schedule, n), decay)
    return s1[s], s2[s]
