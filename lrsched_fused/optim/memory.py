"""``optimizer.state_bytes()``: what an optimizer's parameters, gradients and state occupy, summed from the
``nbytes`` of the real tensors (local shards of DTensors; a tensor shared by several entries, like the
clock, counted once), not computed on paper (README, "Memory")."""

from __future__ import annotations

from typing import Any

import torch

from lrsched_fused.functional import local
from lrsched_fused.functional.compressed import MASTER_KEYS, QUANT_KEYS

__all__ = ["state_bytes", "KINDS"]

#: the categories, in the order they print
KINDS = ("params", "grads", "moments", "scales", "master", "other")


def _kind(key: str) -> str:
    if key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
        return "moments"
    if key in QUANT_KEYS.values():
        return "scales"
    if key in MASTER_KEYS:
        return "master"
    return "other"


def state_bytes(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Bytes per category (:data:`KINDS`), ``total``, ``numel`` (parameter elements, local) and
    ``per_param`` (``total / numel``), plus ``per_param_without_grads``."""
    out = dict.fromkeys(KINDS, 0)
    seen: set[tuple[int, int, int]] = set()  # (storage address, offset, bytes): each tensor counted once
    numel = 0

    def add(kind: str, t: Any) -> None:
        if isinstance(t, torch.Tensor):
            t = local(t)
            key = t.untyped_storage().data_ptr() if t.numel() else id(t)
            if (key, t.storage_offset(), t.nbytes) in seen:
                return
            seen.add((key, t.storage_offset(), t.nbytes))
            out[kind] += t.nbytes

    listed: set[int] = set()
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) in listed:  # a parameter listed twice is one tensor
                continue
            listed.add(id(p))
            numel += local(p).numel()
            add("params", p)
            add("grads", p.grad)
            for key, value in optimizer.state.get(p, {}).items():
                add(_kind(key), value)
    total = sum(out.values())
    out.update(total=total, numel=numel, per_param=total / max(numel, 1),
               per_param_without_grads=(total - out["grads"]) / max(numel, 1))
    return out
