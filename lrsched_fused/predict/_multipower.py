"""The multi-power law (Luo, Wen, Hu et al., "A Multi-Power Law for Loss Curve Prediction Across Learning Rate
Schedules", arXiv 2503.12811):

.. math::  L(t) = L_0 + A\\, S_1(t)^{-\\alpha} - B \\sum_{k \\le t} d_k\\, G\\big(\\eta_k^{-\\gamma} S_k(t)\\big),
           \\qquad G(x) = 1 - (C x + 1)^{-\\beta}, \\qquad S_k(t) = \\sum_{k \\le i \\le t} \\eta_i

Where the annealing law (:mod:`._law`) lets every lr drop's benefit fade with a fixed step memory ``lambda``,
here a drop ``d_k = eta_{k-1} - eta_k`` pays off as a power of the lr area trained after it, saturating at
``B * d_k``. Indexing, ``S1`` and the drops are the annealing law's (:mod:`._areas`): update ``k`` uses
``eta_k = schedule(k - 1)``; ``S1`` counts every update, warmup included (the paper's ``S1 + S_W``); a climb
to a new running maximum is warmup and drops nothing (``d_k = 0``), so the paper's ``eta_0`` is the peak.
A drop to ``eta_k = 0`` pays off fully once any lr follows it, and not at all before.

Fit (:meth:`MultiPowerLaw.fit`): the annealing law's objective (Huber on ``log L``); for fixed
``(alpha, beta, gamma, C)`` the prediction is linear in ``(L0, A, B) >= 0``, solved by the same bounded IRLS
(:func:`._fit._inner`); the four nonlinear parameters by Nelder-Mead within ``BOUNDS`` from a fixed grid of
starts, the best one restarted once.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ._areas import _steps, lr_drops, lr_sequence
from ._fit import _inner
from ._law import Run, _fit_data

__all__ = ["MultiPowerLaw", "decay_benefit", "BOUNDS"]

#: the nonlinear parameters' search box: alpha, beta, gamma, log10(C)
BOUNDS = {"alpha": (0.01, 5.0), "beta": (0.01, 5.0), "gamma": (0.0, 1.5), "log10_C": (-4.0, 4.0)}
_STARTS = [dict(zip(BOUNDS, v)) for v in itertools.product((0.3, 1.0), (0.3, 1.0), (0.2, 0.6), (-1.0, 1.0))]
_CHUNK = 1 << 22  # elements of one (steps x drops) block


class _Benefit:
    """The geometry of :func:`decay_benefit` for one lr sequence and its ``steps``, computed once: for every
    live (step ``t``, drop ``k``) pair, the lr area ``S_k(t)`` after the drop; calling it with ``(C, beta,
    gamma)`` then costs one pass over those pairs (the fit calls it thousands of times)."""

    def __init__(self, lrs: np.ndarray, steps: np.ndarray) -> None:
        drops = lr_drops(lrs)
        k = np.flatnonzero(drops)  # update k + 1 drops the lr by drops[k]
        area = np.concatenate([np.zeros(1), np.cumsum(lrs)])  # area[s]: sum of the first s lrs
        after = area[steps][:, None] - area[k][None, :]  # S_{k+1}(t): the lrs of updates k+1..t
        self.row, col = np.nonzero((k[None, :] < steps[:, None]) & (after > 0))
        self.after = after[self.row, col]
        self.lr, self.drop = lrs[k][col], drops[k][col]
        self.size = steps.size

    def __call__(self, C: float, beta: float, gamma: float) -> np.ndarray:
        with np.errstate(divide="ignore", over="ignore"):
            x = C * self.after * np.power(self.lr, -gamma)  # inf after a drop to lr 0: G = 1
            g = -np.expm1(-beta * np.log1p(x))  # G(x) = 1 - (x + 1)^-beta, accurate for small x
        return np.bincount(self.row, weights=g * self.drop, minlength=self.size)


def decay_benefit(lrs: Any, steps: Any, *, C: float, beta: float, gamma: float) -> np.ndarray:
    """``sum_{k <= t} d_k * G(eta_k^-gamma * S_k(t))`` at each ``t`` in ``steps`` (the law's loss drop per
    unit ``B``), for per-update ``lrs`` (``lrs[k-1] = eta_k``; at least ``max(steps)`` of them)."""
    t = _steps(steps)
    lr = np.asarray(lrs, dtype=np.float64)
    out = np.zeros(t.size)
    drops = int(np.count_nonzero(lr_drops(lr))) if t.size else 0
    if drops == 0:
        return out
    rows = max(1, _CHUNK // drops)  # bounds the memory of one block of (steps x drops) pairs
    for lo in range(0, t.size, rows):
        out[lo:lo + rows] = _Benefit(lr, t[lo:lo + rows])(C, beta, gamma)
    return out


def _nelder_mead(f: Callable[[np.ndarray], float], x0: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                 iters: int = 400, tol: float = 1e-10) -> tuple[np.ndarray, float]:
    """Minimize ``f`` over the box ``[lo, hi]`` (points are clipped into it): the textbook simplex method."""
    n = x0.size
    clip = lambda x: np.minimum(np.maximum(x, lo), hi)  # noqa: E731
    simplex = [clip(x0)] + [clip(x0 + np.eye(n)[i] * 0.1 * (hi[i] - lo[i])) for i in range(n)]
    vals = [f(x) for x in simplex]
    for _ in range(iters):
        order = np.argsort(vals, kind="stable")
        simplex, vals = [simplex[i] for i in order], [vals[i] for i in order]
        if vals[-1] - vals[0] <= tol * (abs(vals[0]) + 1e-300):
            break
        centre = np.mean(simplex[:-1], axis=0)
        xr = clip(centre + (centre - simplex[-1]))
        fr = f(xr)
        if fr < vals[0]:
            xe = clip(centre + 2.0 * (centre - simplex[-1]))
            fe = f(xe)
            simplex[-1], vals[-1] = (xe, fe) if fe < fr else (xr, fr)
        elif fr < vals[-2]:
            simplex[-1], vals[-1] = xr, fr
        else:
            xc = clip(centre + 0.5 * (simplex[-1] - centre))
            fc = f(xc)
            if fc < vals[-1]:
                simplex[-1], vals[-1] = xc, fc
            else:
                simplex = [simplex[0]] + [simplex[0] + 0.5 * (x - simplex[0]) for x in simplex[1:]]
                vals = [vals[0]] + [f(x) for x in simplex[1:]]
    best = int(np.argmin(vals))
    return simplex[best], vals[best]


def _check_finite(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number; got {value!r}")
    return float(value)


@dataclass(frozen=True)
class MultiPowerLaw:
    """``L(t) = L0 + A * S1^-alpha - B * sum_k d_k * (1 - (C * eta_k^-gamma * S_k(t) + 1)^-beta)``.

    ``residual``, ``max_residual`` and ``points`` describe the fit as in :class:`AnnealingLaw`. ``on_bounds``
    names the nonlinear parameters the fit left on a bound of :data:`BOUNDS` (comma-separated; ``""``: none):
    the data did not pin them, and an equally good fit may predict held-out schedules differently
    (docs/schedule_science.md, "The multi-power law").
    """

    L0: float
    A: float
    alpha: float
    B: float
    C: float
    beta: float
    gamma: float
    residual: float = math.nan
    max_residual: float = math.nan
    points: int = 0
    on_bounds: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.on_bounds, str):
            raise ValueError(f"on_bounds must be a string of parameter names; got {self.on_bounds!r}")
        for name in ("L0", "A", "alpha", "B", "C", "beta", "gamma"):
            object.__setattr__(self, name, _check_finite(name, getattr(self, name)))
        for name in ("C", "beta"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0; got {getattr(self, name)!r}")
        if self.gamma < 0:
            raise ValueError(f"gamma must be >= 0; got {self.gamma!r}")

    @classmethod
    def fit(cls, runs: Sequence[Run], *, delta: float = 1e-3, starts: int | None = None) -> "MultiPowerLaw":
        """Fit the seven parameters to ``runs`` (``(schedule, steps, losses)`` triples, as
        :meth:`AnnealingLaw.fit`): Huber (``delta``) on ``log L``; ``starts`` limits the Nelder-Mead starts
        (default: all 16 of the grid). Independent of the order of the runs."""
        if starts is not None and (isinstance(starts, bool) or not isinstance(starts, int)
                                   or not 1 <= starts <= len(_STARTS)):
            raise ValueError(f"starts must be an integer in [1, {len(_STARTS)}] or None; got {starts!r}")
        data = _fit_data(runs, delta, 8, "7")
        obs = np.concatenate([d[2] for d in data])
        logl = np.log(obs)
        logs1 = np.log(np.concatenate([np.cumsum(lrs)[s - 1] for lrs, s, _ in data]))
        lo = np.array([b[0] for b in BOUNDS.values()])
        hi = np.array([b[1] for b in BOUNDS.values()])
        benefits = [_Benefit(lrs, s) for lrs, s, _ in data]
        cache: dict[bytes, tuple[np.ndarray, float]] = {}

        def solve(u: np.ndarray) -> tuple[np.ndarray, float]:
            key = u.tobytes()
            if key not in cache:
                alpha, beta, gamma, c = u[0], u[1], u[2], 10.0 ** u[3]
                ld = np.concatenate([b(c, beta, gamma) for b in benefits])
                cache[key] = _inner(np.exp(-alpha * logs1), ld, obs, logl, float(delta))
            return cache[key]

        best_u, best_v = None, math.inf
        for start in _STARTS[:starts]:
            u, v = _nelder_mead(lambda x: solve(x)[1], np.array(list(start.values())), lo, hi)
            if v < best_v:
                best_u, best_v = u, v
        best_u, best_v = _nelder_mead(lambda x: solve(x)[1], best_u, lo, hi)  # a fresh simplex at the best
        theta, _ = solve(best_u)
        alpha, beta, gamma, c = (float(x) for x in (best_u[0], best_u[1], best_u[2], 10.0 ** best_u[3]))
        law = cls(L0=float(theta[0]), A=float(theta[1]), alpha=alpha, B=float(theta[2]), C=c, beta=beta,
                  gamma=gamma)
        pred = np.concatenate([law.predict(lrs, s) for lrs, s, _ in data])
        r = np.log(pred) - logl
        edge = np.isclose(best_u, lo, rtol=0, atol=1e-6 * (hi - lo)) | np.isclose(best_u, hi, rtol=0,
                                                                                  atol=1e-6 * (hi - lo))
        on_bounds = ",".join(name.replace("log10_", "") for name, e in zip(BOUNDS, edge) if e)
        return cls(**{**law.__dict__, "residual": float(np.sqrt(np.mean(r * r))),
                      "max_residual": float(np.abs(r).max()), "points": int(obs.size), "on_bounds": on_bounds})

    def predict(self, schedule: Any, steps: Any) -> np.ndarray:
        """Predicted losses at ``steps`` (updates applied) for ``schedule`` (a Schedule or per-update lrs);
        ``inf`` where ``S1 = 0``."""
        s = _steps(steps)
        lrs = lr_sequence(schedule, int(s.max()) if s.size else 0)
        s1 = np.concatenate([np.zeros(1), np.cumsum(lrs)])[s]
        with np.errstate(divide="ignore"):
            forward = np.where(s1 > 0, self.A * np.power(np.where(s1 > 0, s1, 1.0), -self.alpha), np.inf)
        return self.L0 + forward - self.B * decay_benefit(lrs, s, C=self.C, beta=self.beta, gamma=self.gamma)

    def describe(self) -> str:
        fit = "" if not self.points else (f"; fit: {self.points} points, rms log residual {self.residual:.2e}, "
                                          f"max {self.max_residual:.2e}")
        if self.on_bounds:
            fit += f"; on a bound of the search (not pinned by the data): {self.on_bounds}"
        return (f"L(t) = {self.L0:.4g} + {self.A:.4g} * S1^-{self.alpha:.4g} - {self.B:.4g} * sum_k d_k * "
                f"(1 - ({self.C:.4g} * eta_k^-{self.gamma:.4g} * S_k(t) + 1)^-{self.beta:.4g}){fit}")
