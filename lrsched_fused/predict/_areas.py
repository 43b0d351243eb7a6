"""The two areas of the annealing law (Tissue et al., arXiv 2408.11029), exact per step.

Indexing (the project's): update ``i = 1, 2, ...`` uses ``lr_i = schedule(i - 1)``; the loss "at step ``s``"
is the loss after ``s`` updates. Then

* ``S1(s) = sum_{i <= s} lr_i``, the forward area;
* ``S2(s) = sum_{i <= s} m_i``, the annealing area, ``m_i = decay * m_{i-1} + d_i`` with ``d_i = lr_{i-1} -
  lr_i`` (warmup aside, below), ``m_0 = 0`` and ``lr_0 = lr_1`` (so a constant schedule has ``S2 = 0``).

Warmup: a rise of the lr above every earlier lr (a new running maximum) is warmup, and adds no annealing
area: ``d_i = lr_{i-1} - min(lr_i, max(lr_1..lr_{i-1}))``. So ``m`` stays 0 through a warmup (also one with
plateaus or dips: a dip counts, and climbing back to the earlier maximum cancels it), ``S1`` counts every
update, and every change below the running maximum counts, a re-warm after a decay included (it makes ``m``
negative and lowers ``S2``, as the law's formula says). The rule is causal: ``S2(s)`` depends on the lrs up
to ``s`` only.

``m`` is a first-order linear recurrence; it is computed with a log-depth scan (``m_i = sum_{j <= i}
decay^(i-j) d_j`` built by doubling), in float64, every step (no subsampling).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from lrsched_fused.schedules import Schedule

__all__ = ["lr_sequence", "cumulative_areas", "areas", "lr_drops", "check_decay"]


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


def lr_drops(lrs: Any) -> np.ndarray:
    """``d_i``, the lr drop that update ``i`` adds to the annealing momentum: ``lr_{i-1} - lr_i``, except that
    a rise above every earlier lr (warmup) counts only up to that maximum; ``d_1 = 0``."""
    lr = np.asarray(lrs, dtype=np.float64)
    d = np.zeros(lr.size)
    if lr.size > 1:
        d[1:] = lr[:-1] - np.minimum(lr[1:], np.maximum.accumulate(lr)[:-1])
    return d


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
    m = _scan(lr_drops(lr), decay)
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
