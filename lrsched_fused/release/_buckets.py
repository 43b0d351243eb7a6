"""Gradient release's buckets: fixed sets of parameters updated together, one fused launch each."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from lrsched_fused import functional as F
from lrsched_fused.backends import Backend, select_backend
from lrsched_fused.optim._distributed import make_shard_allreduce
from lrsched_fused.optim.base import FusedOptimizer
from lrsched_fused.optim.plan import bucket_key, where

__all__ = ["Bucket", "make_buckets"]


@dataclass
class Bucket:
    """A fixed set of parameters, updated together: rows ``lo:hi`` of the handle's buffers."""

    params: list[torch.Tensor]
    group_rows: list[int]                 # param group of each parameter
    lo: int
    hi: int
    amsgrad: bool
    master: int                           # layout.MASTER_*: none, fp32 copies, compact corrections
    backend: Backend
    allreduce: Any = None                 # LAMB: sums the [n, 2] norm sums over the shards (FSDP2); None: whole
    ready: list[bool] = field(default_factory=list)
    count: int = 0                        # gradients ready this step
    batch: F.TensorBatch | None = None    # built at the first whole update (states exist then)


def make_buckets(optimizer: FusedOptimizer, entries: list[tuple[int, torch.Tensor]], *, bucket_bytes: int,
                 amsgrad: list[bool], lamb: bool) -> list[Bucket]:
    """Reverse parameter order; one open bucket per launch key (``optim.plan.bucket_key`` under the
    optimizer's storage options); cut at ``bucket_bytes`` (global, unsharded sizes), so that every rank of
    an FSDP2 job builds the same buckets."""
    opt, fmt = optimizer, optimizer.state_format
    open_: dict[tuple, list] = {}
    done: list[tuple[tuple, list]] = []
    for gi, p in reversed(entries):
        key = bucket_key(p, fmt, amsgrad[gi], where(opt.param_groups, gi, p))
        items, size = open_.setdefault(key, [[], 0])
        items.append((gi, p))
        open_[key][1] = size + p.numel() * p.element_size()
        if open_[key][1] >= bucket_bytes:
            done.append((key, open_.pop(key)[0]))
    done += [(key, items) for key, (items, _) in open_.items()]
    buckets, lo = [], 0
    device = F.local(entries[0][1]).device if entries else torch.device("cpu")
    backends: dict[tuple, Backend] = {}
    for key, items in done:
        if key not in backends:
            backend = select_backend(opt.options["backend"], device)
            backend.check(device, key.param_dtype, key.state_dtype)
            backends[key] = backend
        params = [p for _, p in items]
        sharded = any(F.is_dtensor(p) for p in params)
        buckets.append(Bucket(params=params, group_rows=[gi for gi, _ in items], lo=lo, hi=lo + len(items),
                              amsgrad=key.amsgrad, master=key.master, backend=backends[key],
                              allreduce=make_shard_allreduce(params) if lamb and sharded else None,
                              ready=[False] * len(items)))
        lo += len(items)
    return buckets
