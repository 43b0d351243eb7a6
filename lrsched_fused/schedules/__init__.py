"""Learning-rate schedules as pure functions of a clock, evaluated identically on the host and in the kernels.

>>> from lrsched_fused import schedules as S
>>> sched = S.wsd(peak_lr=3e-4, total_steps=1000, warmup_steps=100, decay_fraction=0.2)
>>> sched(0), sched(100), sched(1000)
(0.0, 0.0003, 0.0)

See :mod:`lrsched_fused.schedules._phase` for the phase shapes and :mod:`._constructors` for the
indexing conventions.
"""

from ._adapter import LRScheduler
from ._branch import branch
from ._constructors import DECAY_SHAPES, constant, cosine, infinite, linear, power, rewarm, rex, wsd
from ._evaluate import evaluate, evaluators, register_evaluator
from ._parse import parse_schedule as _parse_schedule
from ._refine import refine
from ._spec import FORMAT_VERSION, SHAPES, Phase, Schedule, chain, tabulated
from ._tables import ScheduleTables, encode_tables

CONSTRUCTORS = {"constant": constant, "linear": linear, "cosine": cosine, "wsd": wsd, "rex": rex, "power": power,
                "infinite": infinite, "rewarm": rewarm, "tabulated": tabulated, "branch": branch, "chain": chain}


def parse(text: str) -> Schedule:
    """Build a schedule from text such as ``"cosine(peak_lr=1e-3, total_steps=1000, warmup_steps=100)"``."""
    return _parse_schedule(text, CONSTRUCTORS)


def from_dict(data) -> Schedule:
    """Rebuild a schedule from :meth:`Schedule.to_dict` data. A :class:`Schedule` is returned as it is
    (optimizers' param groups hold ``Schedule`` objects; their state dicts hold the ``to_dict()`` data)."""
    return data if isinstance(data, Schedule) else Schedule.from_dict(data)


__all__ = ["Phase", "Schedule", "SHAPES", "DECAY_SHAPES", "FORMAT_VERSION", "constant", "linear", "cosine", "wsd",
           "rex", "power", "infinite", "rewarm", "chain", "tabulated", "evaluate", "register_evaluator", "evaluators",
           "LRScheduler", "parse", "refine", "branch",
           "from_dict", "ScheduleTables", "encode_tables", "CONSTRUCTORS"]
