"""The demo: a small causal transformer LM trained with FusedLAMB + WSD and with torch AdamW + cosine.

Modules, one job each: :mod:`.data` (corpus and deterministic batches), :mod:`.model` (the LM),
:mod:`.recipes` (the two optimizer set-ups as factories), :mod:`.train` (the loop, any factory),
:mod:`.report` (table, verdict, figure), :mod:`.run` (the two runs end to end; ``python -m lrsched_fused
demo``).
"""

from .run import QUICK, DemoConfig, DemoResult, quick_config, run_demo

__all__ = ["DemoConfig", "DemoResult", "run_demo", "quick_config", "QUICK"]
