"""Steps run outside :meth:`FusedOptimizer.step`: the public entries gradient release uses.

:mod:`lrsched_fused.release` updates the parameters bucket by bucket inside backward, calling the
functional ops itself. These three methods give it exactly what ``step()`` would use at that point, so
an update made outside ``step()`` is bit for bit the update ``step()`` would make:

    group_tables()  -> the validated hyperparameter/schedule tables of every group
    init_state(ps)  -> the state of ``ps``, created or converted as step() does before their first update
    finish_step(..) -> one ``functional.advance``: clock += 1, counts += 1, groups' ``lr`` show the next lr
"""

from __future__ import annotations

from typing import Iterable

import torch

from lrsched_fused.functional import GroupTables, advance, local

from .tables import read_groups

__all__ = ["ExternalStepMixin"]


class ExternalStepMixin:
    """Mixed into :class:`~lrsched_fused.optim.base.FusedOptimizer`; uses its clock, tables and lr view."""

    def group_tables(self) -> GroupTables:
        """The :class:`~lrsched_fused.functional.GroupTables` step() would hand the kernels now: every param
        group read and validated as step() reads it (``ValueError`` names the group), schedules re-encoded and
        hyperparameter rows copied only when they changed, on the parameters' device. Creates the device
        clock there if there is none yet (:attr:`clock`). Reads no device value on the host."""
        groups = self.param_groups
        self._lr_view.check_edits(groups)
        configs = read_groups(groups, self.hyperparams)
        device = self._params_device()
        self._clock_on(device)
        return self._tables.commit(configs, groups, device)

    def init_state(self, params: Iterable[torch.Tensor]) -> list[dict]:
        """Create the state of ``params`` (parameters of this optimizer) as step() creates it before their
        first update (zero moments in their form, ``step`` 0, master weights when asked, the clock as
        ``state["clock"]``), or bring an existing state to the device, dtype and layout step() uses.
        Returns their state dicts, in order. Everything is checked and every new tensor made before any
        state changes (``ValueError`` names the parameter). The next step() builds its plan afresh."""
        from lrsched_fused.checkpoint import describe_param
        from lrsched_fused.functional import check_state, state_changes

        params = list(params)
        groups = self.param_groups
        where = {id(p): (gi, i) for gi, g in enumerate(groups) for i, p in enumerate(g["params"])}
        configs = read_groups(groups, self.hyperparams)
        clock = self._clock_on(self._params_device())
        fmt = self.state_format
        changes = []
        for p in params:
            if id(p) not in where:
                raise ValueError(f"init_state: a tensor of shape {tuple(p.shape)} is not a parameter of this optimizer")
            gi, i = where[id(p)]
            st = self.state.get(p, {})
            check_state(p, st, describe_param(groups[gi], gi, i, p))
            changes.append((p, *state_changes(p, st, keys=configs[gi].hyper.state_keys, fmt=fmt,
                                              device=local(p).device, clock=clock)))
        for p, put, drop in changes:
            st = self.state[p]
            st.update(put)
            for k in drop:
                del st[k]
        self._plan = None
        return [self.state[p] for p in params]

    def finish_step(self, tables: GroupTables, steps: torch.Tensor, *,
                    tokens: int | torch.Tensor | None = None) -> None:
        """End a step whose updates ran outside step() (``functional.adamw`` / ``lamb`` with ``tables`` from
        :meth:`group_tables` and :attr:`clock`): one ``functional.advance`` (``telemetry()["lr"]`` gets the lr
        each group used; ``steps``, the float32 update counts of the tensors updated this step, += 1; the
        clock += (1, ``tokens``)); then the scheduled groups' ``lr`` show the next step's lr, as after step().
        ``tokens`` as in step() (required when a group's schedule counts tokens)."""
        from .step_inputs import check_tokens, to_device

        groups = self.param_groups
        configs = read_groups(groups, self.hyperparams)
        tokens_v = check_tokens(tokens, any(c.schedule is not None and c.schedule.unit == "tokens" for c in configs))
        device = self._params_device()
        clock = self._clock_on(device)
        if self._lr_out is None or self._lr_out.device != device or self._lr_out.numel() != len(groups):
            self._lr_out = torch.zeros(len(groups), dtype=torch.float32, device=device)
        if isinstance(tokens_v, torch.Tensor):
            tokens_t = to_device(tokens_v.reshape(1), device, torch.int64)
        else:
            tokens_t = None if tokens_v is None else torch.full((1,), tokens_v, dtype=torch.int64, device=device)
        advance(tables, clock, steps, self._lr_out, tokens=tokens_t, backend=self._options["backend"])
        self._lr_view.advance(tokens_v, may_skip=False)
        self._lr_view.publish(groups, configs)
