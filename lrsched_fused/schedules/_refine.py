"""Schedule refinement from observed gradient norms (Defazio, Cutkosky, Mehta, Mishchenko, "When, Why and How
Much? Adaptive Learning Rate Scheduling by Refinement", arXiv 2310.07831; ``algorithms.md`` C.6).

Given the per-step gradient norms ``G[0..T-1]`` of an earlier run, the refined schedule is (the authors'
``find_closed_form_schedule``)

.. math::  w_t = G_t^{-p},\\qquad s_t = w_t \\sum_{u > t} w_u,\\qquad \\eta_t = \\eta_{peak}\\, s_t / \\max_u s_u

with ``p = 2`` for SGD (``G`` the l2 norms) and ``p = 1`` for the paper's Adam variant (``G`` the l1
norms: ``w_t = 1 / ||g_t||_1``). ``s_{T-1} = 0``; constant norms give linear decay to 0 at step ``T - 1``.
The norms are taken as given: the caller picks which norm goes with which variant.

Smoothing (the authors' README): ``width = 2*(int(tau*T)//2)+1``, the norms reflect-padded by ``2*width`` on
the right, median-filtered with ``width`` in ``nearest`` mode (scipy's ``median_filter``), the pad cut.

Warmup: with ``warmup_steps = W`` the norms of the first ``W`` steps are dropped, the refined decay is built
from ``G[W:]`` and placed on ``[W, T)``, and a linear warmup from ``init_lr`` to the refined value at ``W`` is
prepended: the schedule has the same length ``T`` as the run that produced the norms.

Knots (:func:`knots`): the dense schedule is returned as a ``tabulated`` schedule through at most
``max_knots`` knots (the kernels evaluate it as linear phases; a 65536-step run must not become 65536
phases). Half the knots are spread evenly over the schedule's total variation ``TV`` (so the error is
bounded for any input), the rest go greedily where the piecewise-linear fit is worst (where the schedule
bends). Guarantee, at every integer step, for any input: ``max |tabulated - dense| <= 2 TV / (K1 - f)``
with ``K1 = max_knots // 2`` and ``f`` the forced knots (0, ``W``, ``T - 1``); on smooth schedules the
error is far below it (``docs/schedule_science.md`` has measured values). A knot within ``1e-9 * max|v|`` of
the line through its neighbours is dropped (the bound allows for that).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from ._phase import _check_count, _check_finite
from ._spec import Schedule, tabulated

__all__ = ["refine", "refined_lrs", "median_smooth", "knots", "VARIANTS", "knot_error_bound"]

#: variant -> the power ``p`` in ``w = G^-p``
VARIANTS = {"sgd": 2.0, "adam": 1.0}


def _norms(grad_norms: Any) -> np.ndarray:
    """A float64 copy of a 1-d sequence, numpy array or torch tensor (torch is not imported here)."""
    if hasattr(grad_norms, "detach"):
        grad_norms = grad_norms.detach().cpu().double().numpy()
    try:
        g = np.array(grad_norms, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError("grad_norms must be a 1-d sequence of numbers (list, numpy array or tensor)") from None
    if g.ndim != 1 or g.size < 2:
        raise ValueError(f"grad_norms must be 1-d with at least 2 steps; got shape {g.shape}")
    bad = np.flatnonzero(~(np.isfinite(g) & (g > 0)))
    if bad.size:
        raise ValueError(f"grad_norms must be finite and > 0; grad_norms[{bad[0]}] = {g[bad[0]]!r}")
    return g


def median_smooth(values: Any, tau: float) -> np.ndarray:
    """The reference's smoothing: ``median_filter(np.pad(G, (0, 2w), 'reflect'), size=w, mode='nearest')[:-2w]``
    with ``w = 2*(int(tau*T)//2)+1`` (``tau = 0`` or ``w = 1``: unchanged). Plain numpy, in chunks."""
    g = np.asarray(values, dtype=np.float64)
    tau = _check_finite("smoothing", tau)
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"smoothing must be in [0, 1]; got {tau!r}")
    width = 2 * (int(tau * g.size) // 2) + 1
    if width == 1:
        return g.copy()
    pad = 2 * width
    x = np.pad(g, (0, pad), mode="reflect")
    half = width // 2
    xe = np.pad(x, (half, half), mode="edge")  # scipy's mode='nearest'
    out = np.empty(g.size)
    rows = max(1, (1 << 22) // width)  # ~32 MB of windows at a time
    windows = np.lib.stride_tricks.sliding_window_view(xe, width)
    for lo in range(0, g.size, rows):
        out[lo:lo + rows] = np.median(windows[lo:min(lo + rows, g.size)], axis=1)
    return out


def refined_lrs(grad_norms: Any, *, peak_lr: float, variant: str = "sgd", smoothing: float = 0.0,
                warmup_steps: int = 0, init_lr: float = 0.0) -> np.ndarray:
    """The dense refined schedule, one lr per step ``t = 0..T-1`` (``T = len(grad_norms)``), float64."""
    g = _norms(grad_norms)
    peak = _check_finite("peak_lr", peak_lr)
    init = _check_finite("init_lr", init_lr)
    if peak <= 0 or init < 0:
        raise ValueError(f"peak_lr must be > 0 and init_lr >= 0; got {peak_lr!r}, {init_lr!r}")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}; got {variant!r}")
    warm = _check_count("warmup_steps", warmup_steps)
    if warm > g.size - 2:
        raise ValueError(f"warmup_steps must be in [0, len(grad_norms) - 2 = {g.size - 2}]; got {warm}")
    tail = median_smooth(g[warm:], smoothing)
    w = tail ** -VARIANTS[variant]
    after = np.concatenate([np.cumsum(w[::-1])[::-1][1:], [0.0]])  # sum_{u > t} w_u, summed from the end
    shape = w * after
    shape = shape / shape.max()
    out = np.empty(g.size)
    out[warm:] = peak * shape
    if warm:
        out[:warm] = init + (out[warm] - init) * np.arange(warm) / warm
    return out


def knot_error_bound(values: Any, max_knots: int, forced: int) -> float:
    """The guaranteed bound of :func:`knots` for ``forced`` forced knots: ``2 TV / (max_knots // 2 - forced)``,
    plus the ``1e-9 * max|v|`` per dropped knot that counts as "on the line" (at most ``max_knots`` of them)."""
    v = np.asarray(values, dtype=np.float64)
    tv = float(np.abs(np.diff(v)).sum())
    return 2.0 * tv / (max_knots // 2 - forced) + max_knots * 1e-9 * float(np.abs(v).max())


def _variation_knots(cv: np.ndarray, h: float, forced: list[int], cap: int) -> list[int] | None:
    """Greedy segmentation: from each knot ``a``, the next is the last ``b`` with ``cv[b] - cv[a] <= h`` (at
    least ``a + 1``), never past the next forced knot. ``None`` once more than ``cap`` knots are needed."""
    out = [forced[0]]
    for nxt in forced[1:]:
        a = out[-1]
        while a < nxt:
            b = int(np.searchsorted(cv, cv[a] + h, side="right")) - 1
            a = min(max(b, a + 1), nxt)
            out.append(a)
            if len(out) > cap:
                return None
    return out


def knots(values: Any, max_knots: int = 64, *, keep: tuple[int, ...] = ()) -> tuple[list[int], list[float], float]:
    """At most ``max_knots`` knots ``(steps, values)`` of a piecewise-linear fit to ``values[t]``,
    ``t = 0..n-1`` (always through the first and last point and the ``keep`` steps), and the fit's largest
    error at the integer steps. See the module docstring for the placement and its error bound."""
    v = np.asarray(values, dtype=np.float64)
    n = v.size
    forced = sorted({0, n - 1, *(int(k) for k in keep if 0 < int(k) < n - 1)})
    k1 = max_knots // 2
    if not isinstance(max_knots, int) or k1 < len(forced) + 1:
        raise ValueError(f"max_knots must be an integer >= {2 * len(forced) + 2}; got {max_knots!r}")
    t = np.arange(n)
    cv = np.concatenate([[0.0], np.cumsum(np.abs(np.diff(v)))])
    # 1. spread over the variation: the smallest threshold h (bisection) that needs <= k1 knots
    lo, hi = 0.0, float(cv[-1])
    best = _variation_knots(cv, hi, forced, k1) or forced
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        got = _variation_knots(cv, mid, forced, k1)
        if got is None:
            lo = mid
        else:
            hi, best = mid, got
        if hi - lo <= 1e-12 * max(hi, 1e-300):
            break
    ks = sorted(set(best))
    # 2. drop knots that lie on the line through their neighbours (no change to the fit)
    # a fit within 1e-9 of the largest value counts as exact (far below the kernels' float32 rounding; the
    # dense schedule's cumulative sums carry ~n * 1e-16 of rounding)
    exact = 1e-9 * max(float(np.abs(v).max()), 1e-300)
    pruned = [ks[0]]
    for i in range(1, len(ks) - 1):
        a, b, c = pruned[-1], ks[i], ks[i + 1]
        on_line = v[a] + (v[c] - v[a]) * (b - a) / (c - a)
        if abs(on_line - v[b]) > exact or b in forced:
            pruned.append(b)
    ks = pruned + [ks[-1]] if len(ks) > 1 else pruned
    # 3. greedy: a knot where the fit is worst, until the budget is used or the fit is exact
    err = np.abs(np.interp(t, ks, v[ks]) - v)
    while len(ks) < max_knots:
        i = int(err.argmax())
        if err[i] <= exact:
            break
        ks = sorted(ks + [i])
        err = np.abs(np.interp(t, ks, v[ks]) - v)
    return ks, [float(v[k]) for k in ks], float(err.max())


def refine(grad_norms: Any, *, peak_lr: float, variant: str = "sgd", smoothing: float = 0.0, warmup_steps: int = 0,
           init_lr: float = 0.0, max_knots: int = 64) -> Schedule:
    """A ``tabulated`` schedule refined from the per-step gradient norms of an earlier run (Defazio et al.,
    arXiv 2310.07831). See the module docstring.

    Args:
        grad_norms: one norm per step of the earlier run (a sequence, numpy array or tensor): the l2 norms
            for ``variant="sgd"`` (``w = G^-2``), the l1 norms for ``variant="adam"`` (``w = 1/G``).
        peak_lr: the refined schedule's largest value (after the warmup).
        smoothing: ``tau`` of the median filter (its width is about ``tau * T``); 0 for none.
        warmup_steps, init_lr: a linear warmup from ``init_lr`` over the first ``warmup_steps`` steps.
        max_knots: knots of the tabulated result (see :func:`knots`).

    The schedule has ``len(grad_norms)`` steps and ends at 0: ``f(T - 1) = 0``, held afterwards.
    """
    if isinstance(max_knots, bool) or not isinstance(max_knots, numbers.Integral):
        raise ValueError(f"max_knots must be an integer >= 8; got {max_knots!r}")
    dense = refined_lrs(grad_norms, peak_lr=peak_lr, variant=variant, smoothing=smoothing,
                        warmup_steps=warmup_steps, init_lr=init_lr)
    steps, values, _ = knots(dense, int(max_knots), keep=(int(warmup_steps),))
    if not all(math.isfinite(x) for x in values):  # pragma: no cover - guarded by _norms
        raise ValueError("refined schedule is not finite")
    return tabulated(steps, values)
