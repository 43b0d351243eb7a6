"""Collectives for sharded (FSDP2 / DTensor) parameters: what LAMB needs between its two stages.

A trust ratio needs norms of whole tensors. Under FSDP2 each rank holds a ``Shard`` of every parameter,
so the per-tensor partial sums of squares are summed across the mesh dimensions that shard it, all
tensors of a bucket in one ``all_reduce`` of one buffer. Replicated (DDP) parameters need nothing.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist

from ._plan import is_dtensor

__all__ = ["make_shard_allreduce", "allreduce_flag", "shard_groups"]


def shard_groups(params: list[torch.Tensor]) -> list:
    """Process groups over which ``params`` (DTensors of one mesh and placement) are sharded."""
    dts = [p for p in params if is_dtensor(p)]
    if not dts:
        return []
    mesh, placements = dts[0].device_mesh, tuple(dts[0].placements)
    for p in dts[1:]:
        if p.device_mesh != mesh or tuple(p.placements) != placements:
            raise ValueError("all DTensor parameters of one optimizer bucket must share a device mesh and placements "
                             f"(got {placements} and {tuple(p.placements)}); use one optimizer per mesh")
    dims = [i for i, pl in enumerate(placements) if pl.is_shard()]
    if dims and len(dts) != len(params):
        raise ValueError("a bucket mixes sharded DTensor parameters with plain tensors; LAMB needs whole-tensor norms "
                         "for both, so keep them in separate optimizers (or shard every parameter)")
    return [mesh.get_group(d) for d in dims]


def make_shard_allreduce(params: list[torch.Tensor]) -> Callable[[torch.Tensor], None] | None:
    groups = shard_groups(params)
    if not groups:
        return None

    def allreduce(sums: torch.Tensor) -> None:
        for group in groups:
            dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=group)

    return allreduce


def allreduce_flag(params: list[torch.Tensor], flag: torch.Tensor) -> None:
    """Make a found-inf flag agree across the ranks that shard ``params`` (max)."""
    for group in shard_groups(params):
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
