"""One prepared check of lrsched-fused on a CUDA GPU: correctness of the Triton and CUDA backends,
CUDA graphs, pytest, then timings against ``torch.optim.AdamW(fused=True)``; a short table last.

Run it through ``bash bench/gpu_check.sh`` (installs the package, building the CUDA extension, first) or::

    python -m bench.gpu_check [--quick] [--params 1e9] [--budget 280] [--backends triton,cuda]
    python -m bench.gpu_check --plan        # what a run would do (sizes, bytes, floor); no GPU needed
    python -m bench.gpu_check --dry-run     # CPU rehearsal of every code path at tiny sizes

Without CUDA (and without ``--dry-run`` / ``--plan``) it exits at once with status 0. The sections,
outputs and exit status are described in :mod:`bench.gpu.cli`; the modules in :mod:`bench.gpu`.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file (python bench/gpu_check.py): import the package from the repository
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

from bench.gpu.cli import main, parse_args, plan_text  # noqa: E402

__all__ = ["main", "parse_args", "plan_text"]

if __name__ == "__main__":
    sys.exit(main())
