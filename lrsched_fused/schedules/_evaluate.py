"""Evaluate a schedule at many clock values with any evaluator (the parity tests' entry point)."""

from __future__ import annotations

from typing import Sequence

import torch

from ._spec import Schedule
from ._tables import encode_tables

__all__ = ["evaluate"]


def evaluate(schedule: Schedule, steps: torch.Tensor | Sequence[int], backend: str = "reference") -> torch.Tensor:
    """``schedule`` at each clock value in ``steps``.

    Args:
        schedule: the spec.
        steps: int64 tensor or list of clock values (>= 0).
        backend: ``"reference"`` (float64 Python, result float64), ``"triton"`` (the ``@triton.jit``
            device function; on CPU tensors it needs ``TRITON_INTERPRET=1``), ``"cpu"`` (the C++ header
            through the extension) or ``"cuda"``; the kernel evaluators return float32.
    """
    if not isinstance(schedule, Schedule):
        raise ValueError(f"schedule must be a Schedule; got {type(schedule).__name__}")
    steps_t = torch.as_tensor(steps, dtype=torch.int64)
    if steps_t.numel() and int(steps_t.min()) < 0:
        raise ValueError("steps must be >= 0")
    if backend == "reference":
        flat = [schedule(int(t)) for t in steps_t.reshape(-1).tolist()]
        return torch.tensor(flat, dtype=torch.float64).reshape(steps_t.shape)
    from lrsched_fused.backends import get_backend

    impl = get_backend(backend)
    device = steps_t.device
    if backend == "cuda" or (backend == "triton" and torch.cuda.is_available() and device.type == "cpu"):
        device = torch.device("cuda") if torch.cuda.is_available() else device
    tables = encode_tables([schedule], device)
    out = impl.evaluate_schedule(tables, steps_t.to(device).reshape(-1).contiguous())
    return out.reshape(steps_t.shape)
