"""What a fused optimizer reports about its steps: the last step's device tensors (``telemetry()``), the
gradient-norm history ring (``telemetry_history()``), the memory it holds (``state_bytes()``) and the lr
each group used (``get_last_lr()``). A mixin of :class:`~lrsched_fused.optim.base.FusedOptimizer`.

The history ring: float32 ``[capacity, GN_COLS]`` on the parameters' device; the step that advances the
clock from ``t`` writes its gradients' ``sum g^2`` and ``sum |g|`` to row ``t % capacity`` (inside
``functional.advance``: no extra pass over memory, no host read; a skipped step writes nothing). A state
dict carries the rows (``state_dict()["lrsched_fused"]["telemetry_history"]``, this rank's partial sums) so
that a resume through the optimizer's own state dict keeps the whole run's history. A load without them
(a torch state dict, or DCP, which keeps only ``state`` and ``param_groups``) starts the history afresh:
``telemetry_history()`` then reports the steps from the loaded clock on, never rows it does not have.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from lrsched_fused.checkpoint import EXTRA_KEY
from lrsched_fused.kernels import layout as L

from . import _distributed
from .memory import state_bytes
from .tables import read_groups

__all__ = ["TelemetryMixin", "HISTORY_KEY"]

#: key of the history rows in a state dict's ``"lrsched_fused"`` entry
HISTORY_KEY = "telemetry_history"


class TelemetryMixin:
    """``telemetry``, ``telemetry_history``, ``state_bytes``, ``get_last_lr`` (see the module docstring)."""

    _history: torch.Tensor | None   # the ring (after a load: the loaded rows, on the CPU until a step places it)
    _history_from: int

    def telemetry(self) -> dict[str, Any]:
        """Device tensors describing the last step, read without a host sync:

        * ``lr``: float32 ``[groups]``, the lr each group used;
        * ``clock``: int64 ``[2]``, (updates applied, tokens consumed) so far;
        * ``params``: the parameters in the row order of the per-tensor tensors below;
        * ``param_norm``, ``update_norm``, ``trust_ratio``: float32 ``[n]`` (LAMB only);
        * ``grad_norm``: float32 scalar, the global gradient norm (LAMB with ``max_grad_norm``).
        """
        out: dict[str, Any] = {"lr": self._lr_out, "clock": self._clock,
                               "params": list(self._plan.order) if self._plan else []}
        out.update(self._telemetry)
        return out

    def state_bytes(self) -> dict[str, Any]:
        """Bytes of the parameters, gradients, moments, block scales, master weights and other state, summed
        from the real tensors' ``nbytes`` (local shards), with ``per_param`` (see ``optim/memory.py``)."""
        return state_bytes(self)

    def telemetry_history(self) -> dict[str, torch.Tensor]:
        """The per-step global gradient norms the kernels recorded (``telemetry_history=`` steps, in a device
        ring; no extra pass over memory, no host read during training; ``docs/compressed_state.md``):
        float64 CPU tensors ``step`` (the step clock of each update), ``grad_norm_l2`` and ``grad_norm_l1``
        (of ``grad / grad_scale``, before clipping) for the last ``min(clock, capacity)`` applied steps, in
        order (from the loaded clock on after a load that carried no history). One host read (an export,
        e.g. for ``schedules.refine``). With parameters sharded alike (FSDP2), the ranks' partial sums are
        all-reduced here first; otherwise each rank reports its own."""
        empty = torch.zeros(0, dtype=torch.float64)
        hist = self._history
        if hist is None or self._clock is None:
            return {"step": empty.long(), "grad_norm_l2": empty, "grad_norm_l1": empty}
        hist = hist.clone()
        if self._plan is not None and self._plan.has_dtensor:
            _distributed.reduce_history(hist, self._plan.order)
        cap = hist.shape[0]
        now = int(self._clock[L.CLOCK_STEPS])
        steps = torch.arange(max(0, now - cap, self._history_from), now, dtype=torch.int64)
        rows = hist.double().cpu()[steps % cap]
        return {"step": steps, "grad_norm_l2": rows[:, L.GN_SUMSQ].sqrt(), "grad_norm_l1": rows[:, L.GN_SUMABS]}

    def get_last_lr(self) -> list[float]:
        """The lr each group used in the last step; before any step (or right after loading a state
        dict), the lr the next step will use. Reads the device: call it for logging, not in a hot loop."""
        self._sync_lrs()
        if self._lr_out is None:
            clock = self._clock.tolist() if self._clock is not None else [0] * L.NUM_CLOCKS
            return [c.lr_at(clock) for c in read_groups(self.param_groups, self.hyperparams)]
        return [float(x) for x in self._lr_out.tolist()]

    # -- the ring: allocation, state dicts ------------------------------------------------------------------
    def _history_on(self, device: torch.device) -> None:
        """Create the ring on ``device`` when a capacity is set, or move it (with its rows) there."""
        capacity = self._options.get("telemetry_history", 0)
        if not capacity or (self._history is not None and self._history.device == device):
            return
        ring = torch.zeros(capacity, L.GN_COLS, dtype=torch.float32, device=device)
        if self._history is not None:
            ring.copy_(self._history)
        self._history = ring

    def _history_rows(self) -> torch.Tensor | None:
        """This rank's ring as a CPU tensor for a state dict (``None``: no ring)."""
        return None if self._history is None else self._history.detach().to("cpu", copy=True)

    def _check_history(self, state_dict: Mapping[str, Any]) -> torch.Tensor | None:
        """The history rows of ``state_dict`` that fit this optimizer's ring (``None``: none carried, or
        another capacity: the history then starts afresh). ``ValueError`` for rows that are not a float32
        ``[n, GN_COLS]`` tensor. Touches nothing."""
        extra = state_dict.get(EXTRA_KEY)
        rows = extra.get(HISTORY_KEY) if isinstance(extra, Mapping) else None
        if rows is None:
            return None
        if not isinstance(rows, torch.Tensor) or rows.dim() != 2 or rows.shape[1] != L.GN_COLS:
            raise ValueError(f"state_dict[{EXTRA_KEY!r}][{HISTORY_KEY!r}] must be a float32 tensor of shape "
                             f"[capacity, {L.GN_COLS}]; got {getattr(rows, 'shape', type(rows).__name__)}")
        if rows.shape[0] != self._options.get("telemetry_history", 0):
            return None
        return rows.detach().to("cpu", torch.float32, copy=True)

    def _adopt_history(self, rows: torch.Tensor | None, clock_steps: int) -> None:
        """After a load: the loaded rows (reported from step 0), or a fresh ring reported from the clock."""
        self._history = rows
        self._history_from = 0 if rows is not None else clock_steps
