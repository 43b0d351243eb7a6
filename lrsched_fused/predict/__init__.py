"""Schedule science on top of the in-kernel schedules: predict a schedule's loss curve before spending the
compute (the annealing law of Tissue et al., arXiv 2408.11029), from a few runs' curves.

>>> from lrsched_fused import schedules as S
>>> from lrsched_fused.predict import AnnealingLaw
>>> law = AnnealingLaw(L0=2.0, A=0.5, alpha=0.5, C=0.3)
>>> float(law.predict(S.constant(1e-3), [1000])[0])  # S1 = 1.0, S2 = 0
2.5

``AnnealingLaw.fit(runs)`` fits it to ``(schedule, steps, losses)`` triples, ``AnnealingLaw.profile(runs)`` at
each of several decays (:class:`DecayProfile`: whether the runs pin lambda, and the range of predictions they
leave); :class:`MultiPowerLaw` (Luo et
al., arXiv 2503.12811) is the alternative law, with the same ``fit``/``predict``; curves are CSV files
(:mod:`._curves`). The schedule refinement of Defazio et al. lives in :func:`lrsched_fused.schedules.refine`,
decay branches in :meth:`lrsched_fused.schedules.Schedule.branch`. Layer: above ``schedules`` (it uses them
and numpy), below the optimizers (it never imports them).
"""

from ._areas import areas, cumulative_areas, lr_drops, lr_sequence
from ._curves import COLUMNS, Curve, read_curve, write_curve
from ._law import AnnealingLaw, Run
from ._multipower import MultiPowerLaw, decay_benefit
from ._profile import PROFILE_DECAYS, DecayProfile, profile_decays, profile_threshold
from ._report import CurveFit, fit_curves

__all__ = ["AnnealingLaw", "MultiPowerLaw", "decay_benefit", "DecayProfile", "PROFILE_DECAYS", "profile_decays",
           "profile_threshold", "Run", "areas", "cumulative_areas", "lr_sequence",
           "lr_drops", "Curve", "read_curve", "write_curve", "COLUMNS", "fit_curves", "CurveFit"]
