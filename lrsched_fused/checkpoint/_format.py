"""The state-dict layout: format constants, the ``"lrsched_fused"`` entry and the completion of torch's
``Optimizer.state_dict()`` output (see :mod:`lrsched_fused.checkpoint`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from lrsched_fused.functional import local
from lrsched_fused.schedules import Schedule

__all__ = ["STATE_FORMAT_VERSION", "EXTRA_KEY", "GROUP_CLOCK_KEY", "STATE_CLOCK_KEY", "describe_param", "clock_to_plain", "pack_extra",
           "finish_state_dict"]

#: Version of the ``"lrsched_fused"`` entry of the state dict.
STATE_FORMAT_VERSION = 1
#: Key of that entry.
EXTRA_KEY = "lrsched_fused"
#: Key of the clock copy in each saved param group (see the module docstring).
GROUP_CLOCK_KEY = "clock"
#: Key of the clock in each parameter's state: where every checkpoint path keeps it (as torch keeps ``step``)
STATE_CLOCK_KEY = "clock"


def describe_param(group: Mapping, gi: int, index: int, p: torch.Tensor | None = None) -> str:
    """``param_groups[gi]['params'][index]`` plus its name (named parameters), shape and dtype."""
    where = f"param_groups[{gi}]['params'][{index}]"
    names = group.get("param_names") if isinstance(group, Mapping) else None
    if isinstance(names, (list, tuple)) and index < len(names):
        where += f" ({names[index]!r})"
    if isinstance(p, torch.Tensor):
        where += f" of shape {tuple(local(p).shape)} and dtype {str(p.dtype).replace('torch.', '')}"
    return where


def clock_to_plain(clock: torch.Tensor | None) -> list[int] | None:
    """The clock as ``[steps, tokens]`` Python ints (one host read), ``None`` before the first step."""
    return None if clock is None else [int(v) for v in clock.detach().to("cpu").tolist()]


def pack_extra(clock: torch.Tensor | None, options: Mapping[str, Any]) -> dict[str, Any]:
    """The ``"lrsched_fused"`` entry: format version, clock copy, options as plain data."""
    return {
        "format": STATE_FORMAT_VERSION,
        "clock": None if clock is None else clock.detach().clone(),
        "options": {k: (str(v) if isinstance(v, torch.dtype) else v) for k, v in options.items()},
    }


def finish_state_dict(sd: dict[str, Any], clock: torch.Tensor | None, options: Mapping[str, Any]) -> dict[str, Any]:
    """Complete torch's ``Optimizer.state_dict()`` output ``sd`` into this module's layout (in place):

    * every ``step`` and ``clock`` an independent tensor, a snapshot (the optimizer keeps the steps as
      views into one buffer and one clock shared by every state; DCP and torch expect independent
      tensors). Moments stay the live tensors, as torch returns them: for them a state dict is a view of
      the optimizer, not a snapshot (no copy doubles memory at checkpoint time); save it, or copy it,
      before stepping again;
    * each group's schedule as :meth:`Schedule.to_dict` data, so the dict is plain data;
    * the ``"lrsched_fused"`` entry (:func:`pack_extra`) and a copy of the clock in every group
      (``torch.distributed.checkpoint`` keeps only ``state`` and ``param_groups``).

    Reads the clock on the host (one sync: a checkpoint is not the hot loop).
    """
    snapshot = ("step", STATE_CLOCK_KEY)
    sd["state"] = {k: {n: (v.clone() if n in snapshot and isinstance(v, torch.Tensor) else v) for n, v in st.items()}
                   for k, st in sd["state"].items()}
    sd[EXTRA_KEY] = pack_extra(clock, options)
    plain = clock_to_plain(clock)
    for group in sd["param_groups"]:
        if isinstance(group.get("schedule"), Schedule):
            group["schedule"] = group["schedule"].to_dict()
        group[GROUP_CLOCK_KEY] = None if plain is None else list(plain)
    return sd
