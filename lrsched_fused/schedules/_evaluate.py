"""Evaluate a schedule at many clock values with any evaluator (the parity tests' entry point).

Schedules know nothing about backends (they sit below them). A backend that can evaluate schedules in its
kernels registers an evaluator here under its name (:func:`register_evaluator`; ``lrsched_fused.backends``
registers ``"triton"``, ``"cpu"`` and ``"cuda"`` when it is imported, which ``import lrsched_fused``
does). ``"reference"`` is the float64 :meth:`Schedule.__call__` itself.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from ._spec import Schedule

__all__ = ["evaluate", "register_evaluator", "evaluators"]

#: ``(schedule, int64 clock values) -> float32 values`` per backend name
Evaluator = Callable[[Schedule, torch.Tensor], torch.Tensor]
_EVALUATORS: dict[str, Evaluator] = {}


def register_evaluator(name: str, evaluator: Evaluator) -> None:
    """Make ``evaluate(..., backend=name)`` call ``evaluator(schedule, steps)`` (flat int64 ``steps``)."""
    if name == "reference" or not isinstance(name, str):
        raise ValueError(f"evaluator name must be a string other than 'reference'; got {name!r}")
    _EVALUATORS[name] = evaluator


def evaluators() -> list[str]:
    """The names ``evaluate`` accepts."""
    return ["reference", *_EVALUATORS]


def evaluate(schedule: Schedule, steps: torch.Tensor | Sequence[int], backend: str = "reference") -> torch.Tensor:
    """``schedule`` at each clock value in ``steps``.

    Args:
        schedule: the spec.
        steps: int64 tensor or list of clock values (>= 0).
        backend: ``"reference"`` (float64 Python, result float64), or a registered kernel evaluator:
            ``"triton"`` (the ``@triton.jit`` device function; on CPU tensors it needs ``TRITON_INTERPRET=1``),
            ``"cpu"`` (the C++ header through the extension) or ``"cuda"``; those return float32.
    """
    if not isinstance(schedule, Schedule):
        raise ValueError(f"schedule must be a Schedule; got {type(schedule).__name__}")
    steps_t = torch.as_tensor(steps, dtype=torch.int64)
    if steps_t.numel() and int(steps_t.min()) < 0:
        raise ValueError("steps must be >= 0")
    if backend == "reference":
        flat = [schedule(int(t)) for t in steps_t.reshape(-1).tolist()]
        return torch.tensor(flat, dtype=torch.float64).reshape(steps_t.shape)
    evaluator = _EVALUATORS.get(backend)
    if evaluator is None:
        raise ValueError(f"backend must be one of {', '.join(map(repr, evaluators()))}; got {backend!r}")
    return evaluator(schedule, steps_t.reshape(-1).contiguous()).reshape(steps_t.shape)
