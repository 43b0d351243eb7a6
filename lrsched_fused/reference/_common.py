"""Pieces shared by the float64 references: param groups, learning rates, clocks, storage rounding.

Nothing here imports the backends or the kernels: the references are an independent statement of the
math the backends implement, and the tests compare every backend to them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence, Union

import torch

from lrsched_fused.schedules import Schedule

__all__ = ["LearningRate", "lr_at", "normalize_groups", "as_float64", "round_to_storage", "ClockTracker"]

#: A learning rate: a float, a :class:`~lrsched_fused.schedules.Schedule` (evaluated with its float64
#: ``__call__``) or any callable ``clock -> float``.
LearningRate = Union[float, Schedule, Callable[[int], float]]


def lr_at(lr: LearningRate, clock: int, lr_scale: float = 1.0) -> float:
    """The learning rate an update uses: ``lr_scale * lr(clock)`` (``lr_scale * lr`` for a float).

    ``clock`` counts the updates already applied (or tokens consumed, for a schedule over tokens), so
    the first update reads ``lr(0)``: the convention of optax and torch's ``LambdaLR``.
    """
    if isinstance(lr, (int, float)) and not isinstance(lr, bool):
        return float(lr_scale) * float(lr)
    if callable(lr):
        return float(lr_scale) * float(lr(int(clock)))
    raise ValueError(f"lr must be a float, a Schedule or a callable clock -> float; got {lr!r}")


def normalize_groups(params_or_groups: Iterable[Any], defaults: Mapping[str, Any]) -> list[dict]:
    """torch-style param groups: a list of tensors is one group; each dict group gets the defaults for
    the keys it does not set. Returns new dicts whose ``params`` are lists."""
    items = list(params_or_groups)
    if not items:
        raise ValueError("params must contain at least one tensor or param group")
    if isinstance(items[0], Mapping):
        groups = [dict(g) for g in items]
    else:
        groups = [{"params": items}]
    out = []
    for g in groups:
        full = dict(defaults)
        full.update(g)
        params = full["params"]
        full["params"] = [params] if isinstance(params, torch.Tensor) else list(params)
        out.append(full)
    return out


def as_float64(t: torch.Tensor) -> torch.Tensor:
    """A detached float64 copy on the CPU (the references compute there)."""
    return t.detach().to(device="cpu", dtype=torch.float64).clone()


def round_to_storage(x: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """``x`` rounded (to nearest even) to ``dtype`` and widened back to float64; ``x`` itself if ``dtype`` is
    ``None``. Models an optimizer that keeps a bf16/fp16 parameter without fp32 master weights (the
    update is computed in high precision and the stored parameter is rounded after every step), and
    LAMB's 16-bit moment states (``run_lamb(state_storage=...)``: the moments are rounded after every
    update, before the update direction is formed from them)."""
    if dtype is None or dtype == torch.float64:
        return x
    return x.to(dtype).to(torch.float64)


@dataclass
class ClockTracker:
    """The optimizer's clocks: updates applied so far and tokens consumed so far.

    Both start at 0 and advance after each update; a schedule reads the one named by its ``unit``.
    """

    steps: int = 0
    tokens: int = 0
    history: list[tuple[int, int]] = field(default_factory=list)

    def read(self, lr: LearningRate) -> int:
        if isinstance(lr, Schedule) and lr.unit == "tokens":
            return self.tokens
        return self.steps

    def advance(self, tokens: int | None) -> None:
        self.history.append((self.steps, self.tokens))
        self.steps += 1
        if tokens is not None:
            if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
                raise ValueError(f"tokens must be an int >= 0; got {tokens!r}")
            self.tokens += tokens


def check_grads(step: int, grads: Sequence[torch.Tensor | None], n: int) -> None:
    if len(grads) != n:
        raise ValueError(f"grads[{step}] must hold one gradient (or None) per parameter ({n}); got {len(grads)}")


def l2_norm(x: torch.Tensor) -> float:
    """Euclidean norm of all elements, in float64 (0.0 for an empty tensor)."""
    return math.sqrt(float((x.to(torch.float64) ** 2).sum())) if x.numel() else 0.0
