"""Robust fit of ``L = L0 + A * S1^-alpha - C * S2`` to observed losses (numpy only).

Objective: the mean Huber loss (``delta``, default 1e-3 as in the ``zkshan2002/ScalingLaw`` reproduction) of
``r = log(L_pred) - log(L_obs)``, so every point counts by its relative error and outliers count linearly.

Method (variable projection): for a fixed ``alpha`` the prediction is linear in ``(L0, A, C)``; those are
fitted by iteratively reweighted Gauss-Newton on the log residuals with the bounds ``L0, A, C >= 0``
(an exact active-set solve of the 3-parameter step). ``alpha`` (bounds ``ALPHA_BOUNDS``) is then found on
the profile objective: a log-spaced grid of starts, the best few local minima refined by golden-section
search, the best kept. ``decay`` (the law's lambda), when fitted, gets the same treatment one level up,
over ``log10(1 - decay)`` in ``LOG_DECAY_BOUNDS``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

__all__ = ["Fit", "fit_fixed_decay", "fit_decay", "huber", "ALPHA_BOUNDS", "LOG_DECAY_BOUNDS"]

ALPHA_BOUNDS = (0.01, 5.0)
#: ``log10(1 - decay)``: decay from 0.9 to 0.9999
LOG_DECAY_BOUNDS = (-4.0, -1.0)
_ALPHA_GRID = 24
_STARTS = 3
_SUBSETS = [tuple(c) for k in range(3, -1, -1) for c in itertools.combinations(range(3), k)]


def huber(r: np.ndarray, delta: float) -> np.ndarray:
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


@dataclass(frozen=True)
class Fit:
    L0: float
    A: float
    alpha: float
    C: float
    decay: float
    objective: float  # mean Huber loss of the log residuals
    rms: float        # root mean square of the log residuals (~ the relative error)
    max_abs: float    # largest |log residual|


def _objective(theta: np.ndarray, x: np.ndarray, y: np.ndarray, logl: np.ndarray, delta: float) -> float:
    pred = theta[0] + theta[1] * x - theta[2] * y
    if np.any(pred <= 0) or not np.all(np.isfinite(pred)):
        return math.inf
    return float(huber(np.log(pred) - logl, delta).mean())


def _solve(h: list[list[float]], g: list[float], free: tuple[int, ...], theta: list[float]) -> list[float] | None:
    """The step ``D`` minimizing ``0.5 D'HD + g'D`` with ``D_i = -theta_i`` (at the bound 0) outside ``free``;
    plain floats (Cramer's rule): a 3-parameter step is far cheaper without numpy's per-call overhead."""
    d = [-t for t in theta]
    fixed = [i for i in range(3) if i not in free]
    rhs = [-(g[i] + sum(h[i][j] * d[j] for j in fixed)) for i in free]
    m = [[h[i][j] for j in free] for i in free]
    if len(free) == 1:
        if m[0][0] <= 0:
            return None
        sol = [rhs[0] / m[0][0]]
    elif len(free) == 2:
        det = m[0][0] * m[1][1] - m[0][1] * m[1][0]
        if det <= 0:
            return None
        sol = [(rhs[0] * m[1][1] - m[0][1] * rhs[1]) / det, (m[0][0] * rhs[1] - rhs[0] * m[1][0]) / det]
    elif len(free) == 3:
        (a, b, c), (e, f, k), (p, q, r) = m
        det = a * (f * r - k * q) - b * (e * r - k * p) + c * (e * q - f * p)
        if det <= 0:
            return None
        x, y, z = rhs
        sol = [(x * (f * r - k * q) - b * (y * r - k * z) + c * (y * q - f * z)) / det,
               (a * (y * r - k * z) - x * (e * r - k * p) + c * (e * z - y * p)) / det,
               (a * (f * z - y * q) - b * (e * z - y * p) + x * (e * q - f * p)) / det]
    else:
        sol = []
    for i, v in zip(free, sol):
        d[i] = v
    return d


def _bounded_step(h: np.ndarray, g: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """argmin_D 0.5 D'HD + g'D subject to theta + D >= 0, over the 8 active sets (3 variables)."""
    hl, gl, tl = h.tolist(), g.tolist(), theta.tolist()
    best, best_val = None, math.inf
    for free in _SUBSETS:
        d = _solve(hl, gl, free, tl)
        if d is None or any(t + v < -1e-15 * (1 + abs(t)) for t, v in zip(tl, d)):
            continue
        val = 0.5 * sum(d[i] * hl[i][j] * d[j] for i in range(3) for j in range(3)) + sum(a * b for a, b in zip(gl, d))
        if val < best_val:
            best, best_val = d, val
        if len(free) == 3:  # the unconstrained step is feasible: it is the optimum
            break
    return np.zeros(3) if best is None else np.array(best)


def _inner(x: np.ndarray, y: np.ndarray, obs: np.ndarray, logl: np.ndarray, delta: float,
           iters: int = 30) -> tuple[np.ndarray, float]:
    """(L0, A, C) >= 0 for fixed basis ``x = S1^-alpha`` and ``y = S2``: IRLS Gauss-Newton on log residuals."""
    basis = np.stack([np.ones_like(x), x, -y], axis=1)
    wls = basis / obs[:, None]  # start: least squares of the relative error of L
    theta = np.maximum(_bounded_step(wls.T @ wls, -(wls.T @ np.ones_like(obs)), np.zeros(3)), 0.0)
    if not np.isfinite(_objective(theta, x, y, logl, delta)):
        theta = np.array([float(obs.min()) * 0.5, 0.0, 0.0])
    val = _objective(theta, x, y, logl, delta)
    for _ in range(iters):
        pred = basis @ theta
        r = np.log(pred) - logl
        jac = basis / pred[:, None]
        w = np.where(np.abs(r) <= delta, 1.0, delta / np.maximum(np.abs(r), 1e-300))
        jw = jac * w[:, None]
        h = jw.T @ jac + 1e-12 * np.eye(3) * max(float(np.trace(jw.T @ jac)), 1e-300)
        step = _bounded_step(h, jw.T @ r, theta)
        t = 1.0
        for _ in range(30):
            cand = np.maximum(theta + t * step, 0.0)
            new = _objective(cand, x, y, logl, delta)
            if new <= val:
                break
            t *= 0.5
        else:
            break
        done = val - new <= 1e-8 * max(val, 1e-300)
        theta, val = cand, new
        if done:
            break
    return theta, val


def _golden(f: Callable[[float], float], lo: float, hi: float, tol: float) -> tuple[float, float]:
    g = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(c), f(d)
    while b - a > tol:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(d)
    return (c, fc) if fc <= fd else (d, fd)


def _grid_search(f: Callable[[float], float], grid: np.ndarray, starts: int, tol: float) -> tuple[float, float]:
    """The best of: the grid, then golden-section searches in the brackets of its ``starts`` best local minima."""
    vals = np.array([f(float(u)) for u in grid])
    order = np.argsort(vals, kind="stable")
    minima = [i for i in order if (i == 0 or vals[i] <= vals[i - 1]) and (i == len(grid) - 1 or vals[i] <= vals[i + 1])]
    best_u, best_v = float(grid[order[0]]), float(vals[order[0]])
    for i in minima[:starts]:
        lo, hi = float(grid[max(i - 1, 0)]), float(grid[min(i + 1, len(grid) - 1)])
        u, v = _golden(f, lo, hi, tol)
        if v < best_v:
            best_u, best_v = u, v
    return best_u, best_v


def fit_fixed_decay(s1: np.ndarray, s2: np.ndarray, obs: np.ndarray, decay: float, delta: float,
                    tol: float = 1e-6, grid: int = _ALPHA_GRID, starts: int = _STARTS) -> Fit:
    """The law's parameters for areas computed with ``decay`` (``grid`` starts of ``log(alpha)``, the best
    ``starts`` refined to ``tol``)."""
    logl, logs1 = np.log(obs), np.log(s1)
    cache: dict[float, tuple[np.ndarray, float]] = {}

    def profile(log_alpha: float) -> float:
        if log_alpha not in cache:
            cache[log_alpha] = _inner(np.exp(-math.exp(log_alpha) * logs1), s2, obs, logl, delta)
        return cache[log_alpha][1]

    lo, hi = math.log(ALPHA_BOUNDS[0]), math.log(ALPHA_BOUNDS[1])
    u, _ = _grid_search(profile, np.linspace(lo, hi, grid), starts, tol)
    theta, val = cache[u]
    alpha = math.exp(u)
    r = np.log(theta[0] + theta[1] * np.exp(-alpha * logs1) - theta[2] * s2) - logl
    return Fit(L0=float(theta[0]), A=float(theta[1]), alpha=alpha, C=float(theta[2]), decay=decay, objective=val,
               rms=float(np.sqrt(np.mean(r * r))), max_abs=float(np.abs(r).max()))


def fit_decay(areas_for: Callable[[float], tuple[np.ndarray, np.ndarray]], obs: np.ndarray, delta: float) -> Fit:
    """The law's parameters and its decay: ``areas_for(decay) -> (S1, S2)`` at the observed points."""
    fits: dict[float, Fit] = {}

    def objective(u: float) -> float:  # a coarser alpha search while searching the decay, the full one at the end
        if u not in fits:
            decay = 1.0 - 10.0 ** u
            fits[u] = fit_fixed_decay(*areas_for(decay), obs, decay, delta, tol=1e-4, grid=16, starts=2)
        return fits[u].objective

    u, _ = _grid_search(objective, np.linspace(*LOG_DECAY_BOUNDS, 9), 2, 2e-3)
    decay = 1.0 - 10.0 ** u
    return fit_fixed_decay(*areas_for(decay), obs, decay, delta)
