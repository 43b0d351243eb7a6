"""Loss agreement of two demo runs (their ``runs.json``): how the distributed demo is checked against the
single-process one.

For each recipe (matched by name) and each step ``k``, the relative difference of the logged training
losses is ``|a_k - b_k| / |b_k|`` with ``b`` the reference; likewise for the validation losses. The two
runs must be the same experiment: same seed, model, hyperparameters, global batch, data and validation set
(:data:`SAME_EXPERIMENT`); only how the work was split (processes, threads, wrapper) may differ.

**What "match" means.** Two fp32 runs of the same experiment whose gradients are summed in a different
order (two ranks' halves averaged by an all-reduce or reduce-scatter, or simply another thread count in the
matmuls) start ~1e-7 apart, and training amplifies that difference like any chaotic system: in the default
demo (250 steps) the per-step losses first differ by more than 1e-5 between steps 42 and 79, and at most by
~1e-2 (LAMB at lr 2e-2) / ~1e-4 (AdamW), for FSDP2 and DDP on 2 processes and equally for one process run
at 1 thread against 2 threads (docs/demo.md has the figures). So the runs *match* when the losses of the
first :data:`MATCH_STEPS` steps (and the validation losses measured within them) agree to
:data:`LOSS_RTOL`: enough to catch a wrong gradient average, a rank logging its own loss, a different
batch or an optimizer seeing a shard as a whole tensor (all of which differ by > 1e-5 within a few steps),
and before rounding drift can reach the tolerance. The whole-run maxima are reported next to it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

__all__ = ["LOSS_RTOL", "MATCH_STEPS", "SAME_EXPERIMENT", "Agreement", "load_runs", "compare", "format_agreement", "within"]

#: The distributed demo's per-step losses match the single-process run to this relative difference.
LOSS_RTOL = 1e-5

#: ... over the first this many steps (fp32 rounding drift, amplified by training, stays far below the
#: tolerance there: at most 2.1e-7 in the default demo, whose drift first passes 1e-5 at step 42).
MATCH_STEPS = 20

#: ``runs.json`` config entries that define the experiment.
SAME_EXPERIMENT = ("seed", "batch_size", "val_batches", "max_bytes", "data", "model", "hyper")


@dataclass(frozen=True)
class Agreement:
    """How closely one recipe's losses in one run follow the reference run."""

    name: str
    steps: int
    #: over the whole run: the largest relative difference of the training losses, and where
    train_max_rel: float
    worst_step: int
    val_max_rel: float
    val_points: int
    #: over the first ``match_steps`` steps (training losses, and validation losses at steps < match_steps)
    match_steps: int = MATCH_STEPS
    early_max_rel: float = 0.0
    #: the first step whose training losses differ by more than the tolerance it was compared with
    #: (``None``: none does)
    first_over: int | None = None

    @property
    def max_rel(self) -> float:
        """The largest relative difference anywhere in the run."""
        return max(self.train_max_rel, self.val_max_rel)


def load_runs(path: str | Path) -> dict:
    """A demo ``runs.json``; ``ValueError`` if ``path`` is not one."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"--compare must be a runs.json written by the demo; {str(p)!r} is not a file")
    try:
        data = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"--compare: cannot read {str(p)!r} as JSON ({exc})") from None
    if not (isinstance(data, dict) and isinstance(data.get("config"), dict) and isinstance(data.get("runs"), list)):
        raise ValueError(f"--compare: {str(p)!r} is not a demo runs.json (no 'config' and 'runs')")
    return data


def _rel(a: float, b: float) -> float:
    if a == b:
        return 0.0
    if not (math.isfinite(a) and math.isfinite(b)):
        return math.inf
    return abs(a - b) / abs(b) if b != 0 else math.inf


def compare(got: dict, ref: dict, match_steps: int = MATCH_STEPS, rtol: float = LOSS_RTOL) -> list[Agreement]:
    """One :class:`Agreement` per recipe of ``ref`` (both dicts as :func:`load_runs` returns them);
    ``ValueError`` when they are not the same experiment. ``rtol`` only sets ``Agreement.first_over``."""
    differ = [k for k in SAME_EXPERIMENT if got["config"].get(k) != ref["config"].get(k)]
    if differ:
        raise ValueError("--compare: the runs are different experiments; they differ in "
                         + ", ".join(f"{k} ({got['config'].get(k)!r} vs {ref['config'].get(k)!r})" for k in differ))
    by_name = {r["name"]: r for r in got["runs"]}
    out = []
    for r in ref["runs"]:
        g = by_name.get(r["name"])
        if g is None or len(g["losses"]) != len(r["losses"]) or set(g["val"]) != set(r["val"]):
            raise ValueError(f"--compare: run {r['name']!r} is missing or has other steps in one of the files")
        train = [_rel(a, b) for a, b in zip(g["losses"], r["losses"])]
        val = [_rel(g["val"][k], r["val"][k]) for k in r["val"]]
        early_val = [_rel(g["val"][k], r["val"][k]) for k in r["val"] if int(k) < match_steps]
        worst = max(range(len(train)), key=train.__getitem__) if train else 0
        out.append(Agreement(name=r["name"], steps=len(train), train_max_rel=max(train, default=0.0),
                             worst_step=worst, val_max_rel=max(val, default=0.0), val_points=len(val),
                             match_steps=match_steps, early_max_rel=max(train[:match_steps] + early_val, default=0.0),
                             first_over=next((k for k, e in enumerate(train) if not e <= rtol), None)))
    return out


def within(items: Sequence[Agreement], rtol: float = LOSS_RTOL) -> bool:
    """Every recipe's losses over its first ``match_steps`` steps agree to ``rtol``."""
    return all(a.early_max_rel <= rtol for a in items)


def format_agreement(items: Sequence[Agreement], reference: str, rtol: float = LOSS_RTOL) -> str:
    """A few lines: per recipe, the largest relative difference of the training and validation losses."""
    lines = [f"loss agreement with {reference} (max over steps of |loss - reference| / reference):"]
    for a in items:
        n = min(a.match_steps, a.steps)
        drift = ("never" if a.first_over is None else f"from step {a.first_over}")
        lines.append(f"  {a.name}: steps 0-{n - 1}: {a.early_max_rel:.1e}; whole run: train {a.train_max_rel:.1e} "
                     f"(step {a.worst_step}), val {a.val_max_rel:.1e} at {a.val_points} points; over {rtol:.0e} "
                     f"{drift}")
    verdict = "match" if within(items, rtol) else "MISMATCH"
    lines.append(f"  {verdict}: tolerance {rtol:.0e} relative over the first {items[0].match_steps if items else 0} "
                 f"steps (later, fp32 rounding differences grow with training; see docs/demo.md)")
    return "\n".join(lines)
