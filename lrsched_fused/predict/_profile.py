"""How much the fit runs pin the annealing law's decay (lambda), and what that leaves of a prediction.

Two runs that decay the same way fit almost equally well at every lambda (``docs/schedule_science.md``), yet a
schedule that decays over most of the run (cosine, REX) is predicted very differently at each: the fitted
lambda is then a choice of the search box, not of the data. :meth:`AnnealingLaw.profile` fits the law at
each of several fixed decays, and :class:`DecayProfile` keeps those the data cannot reject and gives the range
of their predictions.

Which decays the data cannot reject: with ``n`` fitted points whose log residuals were independent and
Gaussian, the profile likelihood of lambda is ``-(n/2) log sigma(lambda)^2``, ``sigma`` the rms log residual of
the fit at lambda, and the likelihood-ratio test at ``level`` keeps every lambda with

.. math::  \\sigma(\\lambda) / \\sigma_{min} \\le \\exp(\\chi^2_1(level) / (2n)).

The points of a loss curve are correlated (fewer independent points than ``n``), and the other parameters'
uncertainty is left out, so the range is a lower bound on the prediction's uncertainty: a wide range says
"these runs cannot tell", a narrow one does not promise accuracy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

__all__ = ["DecayProfile", "PROFILE_DECAYS", "profile_decays", "profile_threshold"]

#: the decays :meth:`AnnealingLaw.profile` fits at by default: ``1 - 10**u``, ``u`` evenly spaced from -4 to
#: ``log10(0.5)`` (0.9999 down to 0.5), a superset of the box ``decay="fit"`` searches (0.9 to 0.9999)
PROFILE_DECAYS = tuple(float(1.0 - 10.0 ** u) for u in np.linspace(-4.0, math.log10(0.5), 15))


def profile_decays(*laws: Any) -> list[float]:
    """:data:`PROFILE_DECAYS` and the decays of ``laws`` (fitted laws to be read against the profile), sorted."""
    return sorted({*PROFILE_DECAYS, *(law.decay for law in laws)})


def profile_threshold(points: int, level: float = 0.95) -> float:
    """``exp(chi2_1(level) / (2 points))``: the largest ``sigma(lambda) / sigma_min`` the likelihood-ratio test
    at ``level`` keeps (``chi2_1(level)`` is the squared normal quantile at ``(1 + level) / 2``)."""
    if isinstance(points, bool) or not isinstance(points, int) or points < 1:
        raise ValueError(f"points must be an integer >= 1; got {points!r}")
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0.0 < level < 1.0:
        raise ValueError(f"level must be a number in (0, 1); got {level!r}")
    z = NormalDist().inv_cdf((1.0 + level) / 2.0)
    return math.exp(z * z / (2.0 * points))


@dataclass(frozen=True)
class DecayProfile:
    """The annealing law fitted to the same runs at each of several fixed decays (``laws``, by decay)."""

    laws: tuple  # AnnealingLaw, one per decay, in increasing decay

    def __post_init__(self) -> None:
        if not self.laws:
            raise ValueError("a DecayProfile needs at least one fitted law")
        if any(not law.points or not math.isfinite(law.residual) for law in self.laws):
            raise ValueError("every law of a DecayProfile must come from a fit (points and residual set)")
        object.__setattr__(self, "laws", tuple(sorted(self.laws, key=lambda law: law.decay)))

    @property
    def best(self) -> Any:
        """The law with the smallest rms log residual."""
        return min(self.laws, key=lambda law: law.residual)

    def plausible(self, level: float = 0.95) -> tuple:
        """The laws whose decay the likelihood-ratio test at ``level`` keeps (module docstring)."""
        limit = self.best.residual * profile_threshold(self.best.points, level)
        return tuple(law for law in self.laws if law.residual <= limit)

    def predict_range(self, schedule: Any, steps: Any, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """The lowest and highest prediction at ``steps`` over the :meth:`plausible` laws."""
        preds = np.stack([law.predict(schedule, steps) for law in self.plausible(level)])
        return preds.min(axis=0), preds.max(axis=0)

    def describe(self, level: float = 0.95) -> str:
        kept = self.plausible(level)
        decays = f"{kept[0].decay:.4g}" if len(kept) == 1 else f"{kept[0].decay:.4g} to {kept[-1].decay:.4g}"
        return (f"lambda {decays} kept at {100 * level:g}%: {len(kept)} of {len(self.laws)} fitted decays from "
                f"{self.laws[0].decay:.4g} to {self.laws[-1].decay:.4g}, rms log residual "
                f"{100 * self.best.residual:.3f}% at best and {100 * max(law.residual for law in kept):.3f}% at the edge")
