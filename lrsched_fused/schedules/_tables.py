"""Packing several schedules (one per param group) into the tensors the kernels read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from lrsched_fused.kernels import layout as L

from ._spec import Schedule

__all__ = ["ScheduleTables", "encode_tables"]


@dataclass(frozen=True)
class ScheduleTables:
    """Concatenated schedule tables (see :mod:`lrsched_fused.kernels.layout`).

    Attributes:
        ints: int64 ``[rows, SCHED_INT_COLS]`` (start, length, span, shape) of every schedule's phases.
        floats: float64 ``[rows, SCHED_FLOAT_COLS]`` (v0, v1, a, b, c).
        group_sched: int64 ``[schedules, GROUP_SCHED_COLS]`` (first row, row count, clock index).
        max_rows: the largest row count of one schedule (kernels size their phase search from it).
    """

    ints: torch.Tensor
    floats: torch.Tensor
    group_sched: torch.Tensor
    max_rows: int

    def to(self, device: torch.device | str) -> "ScheduleTables":
        return ScheduleTables(self.ints.to(device), self.floats.to(device), self.group_sched.to(device),
                              self.max_rows)


def encode_tables(schedules: Sequence[Schedule], device: torch.device | str = "cpu") -> ScheduleTables:
    """Encode ``schedules`` into one set of tables; schedule ``i`` is row ``i`` of ``group_sched``."""
    ints: list[list[int]] = []
    floats: list[list[float]] = []
    group: list[list[int]] = []
    for sched in schedules:
        if not isinstance(sched, Schedule):
            raise ValueError(f"expected a Schedule; got {type(sched).__name__}")
        rows_i, rows_f = sched.encode()
        clock = L.CLOCK_TOKENS if sched.unit == "tokens" else L.CLOCK_STEPS
        group.append([len(ints), len(rows_i), clock])
        ints += rows_i
        floats += rows_f
    if not group:
        ints, floats = [[0, L.INFINITE_LENGTH, 1, L.SHAPE_CONSTANT]], [[0.0] * L.SCHED_FLOAT_COLS]
    max_rows = max((g[1] for g in group), default=1)
    return ScheduleTables(
        ints=torch.tensor(ints, dtype=torch.int64).reshape(-1, L.SCHED_INT_COLS).to(device),
        floats=torch.tensor(floats, dtype=torch.float64).reshape(-1, L.SCHED_FLOAT_COLS).to(device),
        group_sched=torch.tensor(group, dtype=torch.int64).reshape(-1, L.GROUP_SCHED_COLS).to(device),
        max_rows=max_rows,
    )
