"""The loss-prediction law with learning-rate annealing (Tissue, Wang, Zeng et al., "Scaling Law with Learning
Rate Annealing", arXiv 2408.11029):

.. math::  L(s) = L_0 + A\\, S_1(s)^{-\\alpha} - C\\, S_2(s)

with the forward area ``S1`` and the annealing area ``S2`` of :mod:`._areas` (indexing and warmup there).
Fit it to a few runs, then predict the loss curve of any schedule before spending the compute; the chosen
schedule then runs unchanged in the fused optimizers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ._areas import _steps, areas, check_decay, cumulative_areas, lr_sequence
from ._fit import fit_decay, fit_fixed_decay
from ._profile import PROFILE_DECAYS, DecayProfile

__all__ = ["AnnealingLaw", "Run"]

#: ``(schedule, steps, losses)``: a Schedule or per-update lrs; the steps (updates applied, >= 1) at which
#: the losses were measured; the losses (> 0).
Run = tuple[Any, Any, Any]


def _run_data(i: int, run: Run) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    try:
        schedule, steps, losses = run
    except (TypeError, ValueError):
        raise ValueError(f"runs[{i}] must be a (schedule, steps, losses) triple") from None
    s = _steps(steps)
    if hasattr(losses, "detach"):
        losses = losses.detach().cpu().double().numpy()
    obs = np.atleast_1d(np.asarray(losses, dtype=np.float64))
    if obs.ndim != 1 or obs.shape != s.shape or s.size == 0:
        raise ValueError(f"runs[{i}]: steps and losses must be 1-d of the same non-zero length; got {s.shape} and "
                         f"{obs.shape}")
    if s.min() < 1:
        raise ValueError(f"runs[{i}]: steps must be >= 1 (S1 = 0 before the first update); got {int(s.min())}")
    if not np.all(np.isfinite(obs) & (obs > 0)):
        raise ValueError(f"runs[{i}]: losses must be finite and > 0")
    lrs = lr_sequence(schedule, int(s.max()))
    if np.cumsum(lrs)[s - 1].min() <= 0:
        raise ValueError(f"runs[{i}]: the forward area S1 is 0 at a fitted step (the lr is 0 up to it)")
    return np.asarray(lrs), s, obs


def _fit_data(runs: Sequence[Run], delta: Any, min_points: int, params: str) -> list:
    """The checked ``(lrs, steps, losses)`` of every run in a canonical order (so a fit cannot depend on the
    order of the runs), after checking ``runs``, the Huber ``delta`` and that there are ``min_points`` points
    (``params``: the law's parameter count, for the message)."""
    if isinstance(runs, (str, bytes)) or not isinstance(runs, Sequence) or not runs:
        raise ValueError("runs must be a non-empty list of (schedule, steps, losses) triples")
    if not (isinstance(delta, (int, float)) and math.isfinite(delta) and delta > 0):
        raise ValueError(f"delta must be a finite number > 0; got {delta!r}")
    data = sorted((_run_data(i, r) for i, r in enumerate(runs)),
                  key=lambda d: (d[1].size, d[1].tobytes(), d[2].tobytes(), d[0].tobytes()))
    if sum(d[1].size for d in data) < min_points:
        raise ValueError(f"runs must hold at least {min_points} points in all (the law has {params} parameters)")
    return data


@dataclass(frozen=True)
class AnnealingLaw:
    """``L(s) = L0 + A * S1(s)^-alpha - C * S2(s)`` with the annealing area's ``decay`` (lambda).

    ``residual``: the fit's root-mean-square log residual (about the relative error of a fitted point);
    ``max_residual`` the largest one; ``points`` the number of fitted points. A law built by hand may leave
    them at their defaults.
    """

    L0: float
    A: float
    alpha: float
    C: float
    decay: float = 0.999
    residual: float = math.nan
    max_residual: float = math.nan
    points: int = 0

    def __post_init__(self) -> None:
        for name in ("L0", "A", "alpha", "C"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number; got {value!r}")
            object.__setattr__(self, name, float(value))
        object.__setattr__(self, "decay", check_decay(self.decay))

    @classmethod
    def fit(cls, runs: Sequence[Run], *, decay: float | str = 0.999, delta: float = 1e-3) -> "AnnealingLaw":
        """Fit ``L0, A, alpha, C`` (and ``decay`` with ``decay="fit"``) to ``runs``: ``(schedule, steps,
        losses)`` triples (validation losses where the runs have them). Robust: Huber loss (``delta``) on
        ``log L``, bounds, several starts (:mod:`._fit`). The result does not depend on the order of the runs
        (they are put in a canonical order first)."""
        data = _fit_data(runs, delta, 5, "4 or 5")
        obs = np.concatenate([d[2] for d in data])

        def areas_for(lam: float) -> tuple[np.ndarray, np.ndarray]:
            s1, s2 = [], []
            for lrs, s, _ in data:
                c1, c2 = cumulative_areas(lrs, lam)
                s1.append(c1[s])
                s2.append(c2[s])
            return np.concatenate(s1), np.concatenate(s2)

        if isinstance(decay, str):
            if decay != "fit":
                raise ValueError(f"decay must be a number in [0, 1) or 'fit'; got {decay!r}")
            f = fit_decay(areas_for, obs, float(delta))
        else:
            lam = check_decay(decay)
            f = fit_fixed_decay(*areas_for(lam), obs, lam, float(delta))
        return cls(L0=f.L0, A=f.A, alpha=f.alpha, C=f.C, decay=f.decay, residual=f.rms, max_residual=f.max_abs,
                   points=int(obs.size))

    @classmethod
    def profile(cls, runs: Sequence[Run], *, decays: Sequence[float] = PROFILE_DECAYS,
                delta: float = 1e-3) -> DecayProfile:
        """The law fitted to ``runs`` at each fixed decay of ``decays`` (default: 15 from 0.5 to 0.9999). The
        :class:`DecayProfile` says which decays the runs cannot reject and what range of predictions those
        leave (:mod:`._profile`): where ``fit(runs, decay="fit")`` returns one lambda, this shows whether the
        runs chose it."""
        if isinstance(decays, (str, bytes)) or not isinstance(decays, Sequence) or not decays:
            raise ValueError("decays must be a non-empty sequence of numbers in [0, 1)")
        return DecayProfile(tuple(cls.fit(runs, decay=check_decay(d), delta=delta) for d in decays))

    def areas(self, schedule: Any, steps: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(S1, S2)`` at ``steps`` (updates applied) with this law's ``decay``."""
        return areas(schedule, steps, self.decay)

    def predict(self, schedule: Any, steps: Any) -> np.ndarray:
        """Predicted losses at ``steps`` (updates applied) for ``schedule`` (a Schedule or per-update lrs);
        ``inf`` where ``S1 = 0`` (before the first update, or while the lr is 0)."""
        s1, s2 = self.areas(schedule, steps)
        with np.errstate(divide="ignore"):
            forward = np.where(s1 > 0, self.A * np.power(np.where(s1 > 0, s1, 1.0), -self.alpha), np.inf)
        return self.L0 + forward - self.C * s2

    def describe(self) -> str:
        fit = "" if not self.points else (f"; fit: {self.points} points, rms log residual {self.residual:.2e}, "
                                          f"max {self.max_residual:.2e}")
        return (f"L(s) = {self.L0:.4g} + {self.A:.4g} * S1^-{self.alpha:.4g} - {self.C:.4g} * S2 "
                f"(lambda {self.decay:.6g}){fit}")
