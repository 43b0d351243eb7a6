"""``param_groups``: split a model's parameters into decay / no-decay (and per-scale) groups."""

from __future__ import annotations

from typing import Callable, Mapping

import torch

__all__ = ["param_groups", "default_no_decay"]

Predicate = Callable[[str, torch.nn.Parameter], bool]


def default_no_decay(name: str, param: torch.nn.Parameter) -> bool:
    """Biases and normalization weights (every parameter with fewer than 2 dimensions, and names ending in
    ``bias``): the usual exclusion from weight decay (BERT, GPT-2, timm, transformers) and from LAMB's
    layer adaptation (TF reference ``exclude_from_layer_adaptation`` defaults to the decay list)."""
    return param.ndim < 2 or name.endswith(".bias") or name == "bias"


def param_groups(model: torch.nn.Module, weight_decay: float = 0.01, *, no_decay: Predicate = default_no_decay,
                 no_adapt: Predicate | None = None,
                 lr_scale: Mapping[str, float] | Callable[[str, torch.nn.Parameter], float] | None = None,
                 ) -> list[dict]:
    """Param groups for :class:`FusedAdamW` / :class:`FusedLAMB` (or any torch optimizer).

    Args:
        model: the module whose ``named_parameters()`` (with ``requires_grad``) are grouped.
        weight_decay: decay of the parameters ``no_decay`` does not select.
        no_decay: ``(name, param) -> bool``: no weight decay. Default: biases and 1-d (norm) weights.
        no_adapt: ``(name, param) -> bool``: no LAMB trust ratio (``adapt=False``). Default: same as
            ``no_decay`` (apex / timm behaviour for weight_decay=0 tensors).
        lr_scale: ``{name_prefix: scale}`` (longest prefix wins) or ``(name, param) -> scale``: multiplies
            the group's lr (e.g. 0.1 for a pretrained backbone). Default 1.

    Returns:
        A list of dicts with ``params``, ``weight_decay``, ``adapt`` and ``lr_scale`` (and torch's ``param_names``), one per distinct combination, in first-seen order. Empty groups are omitted.
    """
    no_adapt = no_decay if no_adapt is None else no_adapt

    def scale_of(name: str, p: torch.nn.Parameter) -> float:
        if lr_scale is None:
            return 1.0
        if callable(lr_scale):
            return float(lr_scale(name, p))
        best, best_len = 1.0, -1
        for prefix, s in lr_scale.items():
            if (name == prefix or name.startswith(prefix.rstrip(".") + ".")) and len(prefix) > best_len:
                best, best_len = float(s), len(prefix)
        return best

    groups: dict[tuple, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = 0.0 if no_decay(name, p) else float(weight_decay)
        adapt = not no_adapt(name, p)
        scale = scale_of(name, p)
        key = (decay, adapt, scale)
        group = groups.setdefault(key, {"params": [], "param_names": [], "weight_decay": decay, "adapt": adapt,
                                        "lr_scale": scale})
        group["params"].append(p)
        group["param_names"].append(name)
    return list(groups.values())
