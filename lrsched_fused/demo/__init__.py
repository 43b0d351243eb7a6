"""The demo: a small causal transformer LM trained with FusedLAMB + WSD and with torch AdamW + cosine.

Modules, one job each: :mod:`.data` (corpus and deterministic batches), :mod:`.model` (the LM),
:mod:`.recipes` (the two optimizer set-ups as factories), :mod:`.train` (the loop, any factory),
:mod:`.report` (table, verdict, figure, loss-curve CSVs), :mod:`.run` (the two runs end to end; ``python -m
lrsched_fused demo``), :mod:`.study` and :mod:`.study_report` (the schedule study, ``demo --study``).
"""

from .run import QUICK, DemoConfig, DemoResult, quick_config, run_demo
from .study import StudyConfig, StudyResult, run_study

__all__ = ["DemoConfig", "DemoResult", "run_demo", "quick_config", "QUICK", "StudyConfig", "StudyResult", "run_study"]
