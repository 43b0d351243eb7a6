"""The optimizer's group tables on the device, kept in step with its param groups.

Every step reads each group (:func:`~lrsched_fused.functional.read_group`: validated, nothing changed),
then commits: the schedule tables are re-encoded only when a group's schedule changed (schedules are
immutable values, compared by identity, then by value), the float64 hyperparameter table is copied to
the device only when a row changed, into the same buffer when its shape allows (kernels and captured
graphs keep their pointer).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from lrsched_fused.functional import GroupConfig, GroupTables, read_group
from lrsched_fused.kernels import layout as L
from lrsched_fused.schedules import Schedule, encode_tables

__all__ = ["read_groups", "TablesCache"]


def read_groups(groups: Sequence[Mapping], hyper_cls: type) -> list[GroupConfig]:
    """Each group's :class:`GroupConfig`, validated; ``ValueError`` names the group."""
    configs = []
    for gi, g in enumerate(groups):
        try:
            configs.append(read_group(g, hyper_cls))
        except ValueError as exc:
            raise ValueError(f"param_groups[{gi}]: {exc}") from None
    return configs


def _same(a: Sequence[Schedule], b: Sequence[Schedule] | None) -> bool:
    return b is not None and len(a) == len(b) and all(x is y or x == y for x, y in zip(a, b))


class TablesCache:
    """The :class:`~lrsched_fused.functional.GroupTables` of an optimizer, on its device."""

    def __init__(self) -> None:
        self.tables: GroupTables | None = None
        self._schedules: tuple[Schedule, ...] | None = None
        self._rows: list[list[float]] | None = None

    def invalidate(self) -> None:
        """Forget what was encoded (the next commit re-encodes and re-copies everything)."""
        self._schedules = None
        self._rows = None

    def differs(self, configs: Sequence[GroupConfig], device: torch.device) -> bool:
        """Whether :meth:`commit` would re-encode, copy or allocate anything (nothing may change while a
        CUDA graph is being captured: a replay reads the buffers and values the capture saw)."""
        tables = self.tables
        return (tables is None or tables.sched.ints.device != device
                or not _same(tuple(c.kernel_schedule for c in configs), self._schedules)
                or [c.row() for c in configs] != self._rows)

    def commit(self, configs: Sequence[GroupConfig], groups: Sequence[dict], device: torch.device) -> GroupTables:
        """The tables for ``configs`` on ``device``, reusing what did not change."""
        schedules = tuple(c.kernel_schedule for c in configs)
        tables = self.tables
        if not _same(schedules, self._schedules) or tables is None or tables.sched.ints.device != device:
            sched = encode_tables(schedules, device)
            self._schedules = schedules
        else:
            sched = tables.sched
        rows = [c.row() for c in configs]
        hparams = None if tables is None else tables.hparams
        if rows != self._rows or hparams is None or hparams.device != device:
            host = torch.tensor(rows, dtype=torch.float64)
            if hparams is not None and hparams.shape == host.shape and hparams.device == device:
                hparams.copy_(host, non_blocking=True)
            else:
                hparams = host.to(device, non_blocking=True)
            self._rows = rows
        if tables is None or sched is not tables.sched or hparams is not tables.hparams:
            self.tables = GroupTables(sched, hparams)
        for gi, c in enumerate(configs):  # a tensor lr is read on the device, every step (no host sync)
            lr = c.lr_tensor
            if lr is not None:
                column = hparams[gi, L.HP_LR_SCALE]
                column.copy_(lr.reshape(()), non_blocking=lr.device.type == "cpu" and device.type == "cuda")
                if c.lr_scale != 1.0:
                    column.mul_(c.lr_scale)
        for g, c in zip(groups, configs):  # a schedule assigned as to_dict() data is kept as the Schedule object
            if c.schedule is not None and g.get("schedule") is not c.schedule:
                g["schedule"] = c.schedule
        return self.tables
