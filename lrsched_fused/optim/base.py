"""The ``torch.optim.Optimizer`` face shared by :class:`FusedAdamW` and :class:`FusedLAMB`.

A step is a straight line, each arrow one module's job::

    param_groups --tables.read_groups--> GroupConfig per group (validated; nothing changes yet)
                 --plan.reusable_grads / check_new_plan--> the cached Plan, or a checked PlanDraft
    ---- everything above may raise ValueError; nothing below does for bad input ----
    plan.build_plan (first step, or after a change: creates state) --> tables.TablesCache.commit
        --> functional.adamw / functional.lamb per bucket (backend kernels) --> functional.advance

After the step that builds the plan, a step makes no ``.item()`` call and no host read of a device value:
everything it decides on the host comes from host data (param groups, tensor metadata).

Learning rate of a param group (``lr_scale`` defaults to 1)::

    lr_t = lr_scale * (schedule(clock) if the group has a schedule else group["lr"])

``clock`` is the optimizer's device counter: updates applied so far (``unit="steps"``) or tokens
consumed so far (``unit="tokens"``, advanced by ``step(tokens=...)``); the first update uses clock 0.
A skipped step (non-finite gradients: a GradScaler's ``found_inf``, or ``skip_nonfinite=True``)
advances neither the clock nor the per-parameter ``step``. By default (``skip_nonfinite=False``, as
torch) non-finite gradients are applied like any others.
"""

from __future__ import annotations

from copy import deepcopy
from typing import Any, Callable, ClassVar, Iterable

import torch

from lrsched_fused import checkpoint as C
from lrsched_fused._validate import as_schedule, check_bool, check_count
from lrsched_fused.backends import BACKENDS
from lrsched_fused.functional import (GroupTables, StateFormat, advance, check_storage_options, local,
                                      normalize_group)
from lrsched_fused.kernels import layout as L
from lrsched_fused.schedules import Schedule

from . import _distributed
from .external import ExternalStepMixin
from .lr_scheduler import KernelLRScheduler
from .lr_view import LrView
from .param_checks import check_new_params
from .plan import Plan, build_plan, check_new_plan, grad_entries, reusable_grads
from .step_inputs import capturing, check_capture, check_tokens, nonfinite_flag, scalar_attr, tokens_tensor
from .tables import TablesCache, read_groups
from .telemetry import HISTORY_KEY, TelemetryMixin

__all__ = ["FusedOptimizer"]

_SET_ERROR = ("params must be an ordered collection (a list), not a set: the order of parameters must be the same "
              "between runs for state dicts to load")


class FusedOptimizer(TelemetryMixin, ExternalStepMixin, torch.optim.Optimizer):
    """Base class: subclasses name their hyperparameters (``hyperparams``) and run the buckets (``_run``)."""

    #: GradScaler hands ``grad_scale`` / ``found_inf`` to ``step`` instead of unscaling the grads.
    _step_supports_amp_scaling = True
    #: the per-group hyperparameters (``functional.AdamWHyper`` / ``functional.LambHyper``)
    hyperparams: ClassVar[type]

    def __init__(self, params: Iterable, defaults: dict[str, Any], *, backend: str = "auto",
                 skip_nonfinite: bool = False, master_weights: bool | str = False, state_dtype: Any = None,
                 **storage: Any) -> None:
        if backend != "auto" and backend not in BACKENDS:
            raise ValueError(f"backend must be one of 'auto', {', '.join(repr(b) for b in BACKENDS)}; got {backend!r}")
        if isinstance(params, (set, frozenset)):
            raise TypeError(_SET_ERROR)
        self._options = {"backend": backend, "skip_nonfinite": check_bool(skip_nonfinite, "skip_nonfinite"),
                         **check_storage_options(master_weights=master_weights, state_dtype=state_dtype, **storage)}
        self._init_runtime()
        defaults = dict(defaults, schedule=None)
        defaults.setdefault("lr_scale", 1.0)
        normalize_group(defaults, self.hyperparams, explicit_lr=True)
        super().__init__(params, defaults)
        self._publish_lrs()

    def _init_runtime(self, clock: torch.Tensor | None = None) -> None:
        """Caches and device buffers (not part of the pickled state except the clock)."""
        self._plan: Plan | None = None
        self._clock: torch.Tensor | None = clock
        self._lr_out: torch.Tensor | None = None
        self._tables = TablesCache()
        self._telemetry: dict[str, Any] = {}
        self._lr_view = LrView(clock)
        self._history: torch.Tensor | None = None
        self._history_from = 0
        self._compact_seen: dict[int, tuple[int, int]] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_options"] = self._options
        state["_clock"] = self._clock
        return state

    @property
    def state_format(self) -> StateFormat:
        """How this optimizer stores state (``docs/compressed_state.md``), from its options."""
        return StateFormat.from_options(self._options)

    @property
    def options(self) -> dict[str, Any]:
        """The constructor's options (``backend``, ``skip_nonfinite``, ``master_weights``, ``state_dtype``,
        and the algorithm's own, e.g. LAMB's ``max_grad_norm``); a copy."""
        return dict(self._options)

    # ------------------------------------------------------------------------------------------------
    # subclass hooks
    # ------------------------------------------------------------------------------------------------
    def _run(self, plan: Plan, tables: GroupTables, found_inf: torch.Tensor | None,
             grad_scale: torch.Tensor | None) -> None:
        """Update every bucket of ``plan`` (``functional.adamw`` / ``functional.lamb``); never the clock."""
        raise NotImplementedError

    def _check_buckets(self, buckets: list[list[torch.Tensor]]) -> None:
        """Check a new plan's buckets (lists of parameters) before any state exists."""

    @staticmethod
    def _passes(bucket, found_inf: torch.Tensor | None):
        """``(batch, rows)`` to update, in order: the whole bucket, then, for a parameter listed ``k`` times in
        its group (torch warns and keeps it), ``k - 1`` more updates of it, as torch's for-loop AdamW makes
        them: its step count advances before each (one tiny launch; none without duplicates)."""
        yield bucket.batch, bucket.rows
        for k in bucket.repeats:
            bucket.batch.steps[:k].add_(1.0 if found_inf is None else 1.0 - found_inf)
            yield bucket.batch.slice(0, k), slice(bucket.rows.start, bucket.rows.start + k)

    # ------------------------------------------------------------------------------------------------
    # param groups, schedule, clock
    # ------------------------------------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (as torch). Its parameters are checked here: real floating dtypes (fp32, bf16, fp16,
        fp64), contiguous, each listed once, all on one device with the optimizer's other parameters."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict; got {type(param_group).__name__}")
        group = dict(param_group)
        params = group.get("params")
        if isinstance(params, torch.Tensor):
            params = [params]
        elif isinstance(params, set):
            raise TypeError(_SET_ERROR)
        else:
            params = list(params)
        gi = len(getattr(self, "param_groups", []))
        check_new_params([p[1] if isinstance(p, tuple) else p for p in params], gi,
                         [p for g in getattr(self, "param_groups", []) for p in g["params"]])
        explicit_lr = "lr" in param_group
        for name, default in self.defaults.items():
            if name != "params":
                group.setdefault(name, deepcopy(default))
        if explicit_lr and "schedule" not in param_group:
            group["schedule"] = None
        try:
            normalize_group(group, self.hyperparams, explicit_lr=explicit_lr)
        except ValueError as exc:
            raise ValueError(f"param_groups[{gi}]: {exc}") from None
        group["params"] = params
        super().add_param_group(group)
        self._plan = None
        if hasattr(self, "defaults"):  # torch's __init__ adds the first groups before anything else is set
            self._publish_lrs()

    def set_schedule(self, schedule: Schedule | None, group: int | None = None) -> None:
        """Drive ``param_groups[group]`` (all groups if ``None``) with ``schedule`` (``None``: follow
        ``group["lr"]`` again). The same as assigning ``group["schedule"] = schedule``: it changes table data
        only, nothing recompiles, the clock keeps counting, so ``S.rewarm(old, at_step=current_step, ...)``
        continues seamlessly. Takes effect at the next step."""
        if schedule is not None:
            schedule = as_schedule(schedule)
            if schedule is None:
                raise ValueError("schedule must be a Schedule, its to_dict() data, or None")
        if group is not None and not (isinstance(group, int) and 0 <= group < len(self.param_groups)):
            raise ValueError(f"group must be None or an index in [0, {len(self.param_groups)}); got {group!r}")
        for g in self.param_groups if group is None else [self.param_groups[group]]:
            g["schedule"] = schedule
            if schedule is not None:
                g["lr"] = schedule.peak
        self._publish_lrs()

    def set_clock(self, steps: int | None = None, tokens: int | None = None) -> None:
        """Set the device clock: ``steps`` updates applied, ``tokens`` tokens consumed (``None`` keeps a
        value). E.g. ``opt.set_clock(steps=clock_from_torch_scheduler(torch_scheduler))`` after loading a
        torch optimizer's state. Per-parameter ``step`` counts (bias correction) are not changed."""
        values = {L.CLOCK_STEPS: None if steps is None else check_count(steps, "steps"),
                  L.CLOCK_TOKENS: None if tokens is None else check_count(tokens, "tokens")}
        if self._clock is None:
            self._clock = torch.zeros(L.NUM_CLOCKS, dtype=torch.int64, device=self._params_device())
        for index, value in values.items():
            if value is not None:
                self._clock[index] = value
                self._lr_view.clock[index] = value
        if not self._lr_view.exact:
            self._lr_view.reset(self._clock)
        self._publish_lrs()

    # ------------------------------------------------------------------------------------------------
    # the lr the groups show (lr_view.py) and the scheduler that follows it
    # ------------------------------------------------------------------------------------------------
    def _publish_lrs(self, configs=None) -> None:
        """Write the lr the next step will use into every scheduled group's ``lr`` (host mirror of the clock)."""
        if configs is None:
            configs = read_groups(self.param_groups, self.hyperparams)
        self._lr_view.publish(self.param_groups, configs)

    def _sync_lrs(self) -> None:
        """Correct the host mirror of the clock from the device if a step may have been skipped or tokens came
        as a tensor (one host read, only then); then the groups' ``lr``."""
        if not self._lr_view.exact and self._clock is not None:
            self._lr_view.reset(self._clock)
            self._publish_lrs()

    def lr_scheduler(self) -> "KernelLRScheduler":
        """A ``torch.optim.lr_scheduler.LRScheduler`` that follows this optimizer's in-kernel schedule, for
        trainers that need a scheduler object (HF ``Trainer(optimizers=(opt, opt.lr_scheduler()))``,
        Lightning's ``configure_optimizers``, accelerate's ``prepare``). Its ``step()`` changes nothing the
        kernel uses; ``get_last_lr()`` is what ``LambdaLR`` would return. See :class:`KernelLRScheduler`."""
        return KernelLRScheduler(self)

    def _params_device(self) -> torch.device:
        for g in self.param_groups:
            for p in g["params"]:
                return local(p).device
        return torch.device("cpu")

    @property
    def clock(self) -> torch.Tensor | None:
        """The device clock (int64 ``[2]``: updates applied, tokens consumed), ``None`` before the first step."""
        return self._clock

    # ------------------------------------------------------------------------------------------------
    # the step
    # ------------------------------------------------------------------------------------------------
    @torch.compiler.disable
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None, *, tokens: int | torch.Tensor | None = None):
        """One update of every parameter that has a gradient.

        Args:
            closure: re-evaluates the model and returns the loss (as torch optimizers).
            tokens: tokens consumed by this update; advances the token clock (required when a group's
                schedule counts tokens). An int in ``[0, 2**63)`` or a one-element integer tensor (no host
                sync either way; a tensor's value is therefore not range-checked).

        Everything is checked before anything changes: a step that raises leaves parameters, state and
        clock as they were. ``p.grad`` is never modified (a GradScaler's scale is divided out inside the
        kernel, so ``p.grad`` stays scaled after ``scaler.step(opt)``).
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if not self.state and _distributed.called_by_dcp_init():
            # torch.distributed.checkpoint materialises state by stepping with zero grads and lr 0; a
            # schedule ignores that lr, so create the state without an update instead
            _distributed.init_optimizer_state(self)
            return loss
        # ---- 1. check (nothing changes) ----
        groups = self.param_groups
        self._lr_view.check_edits(groups)
        configs = read_groups(groups, self.hyperparams)
        plan = self._plan
        grads = reusable_grads(plan, groups, self.state, configs) if plan is not None else None
        if grads is None:  # first step, or params / grads / state / amsgrad changed: a new plan
            plan, entries = None, grad_entries(groups)
            if not entries:
                return loss
            draft = check_new_plan(entries, groups, self.state, configs, self._options, self._check_buckets)
            device = draft.device
        else:
            device = plan.device
        uses_tokens = any(c.schedule is not None and c.schedule.unit == "tokens" for c in configs)
        tokens_v = check_tokens(tokens, uses_tokens)
        if capturing(device):
            check_capture(plan is None, self._tables.differs(configs, device), tokens_v)
        found_inf = scalar_attr(self, "found_inf", device)
        grad_scale = scalar_attr(self, "grad_scale", device)
        # ---- 2. run ----
        if plan is None:
            plan = self._adopt_plan(build_plan(draft, groups, self.state, configs, self._clock_on(device),
                                                self.state_format,
                                                telemetry=bool(self._options.get("telemetry_history", 0))))
        else:
            for bucket in plan.buckets:
                bucket.batch.grads = grads[bucket.rows]
        tables = self._tables.commit(configs, groups, device)
        tokens_t = tokens_tensor(plan, tokens_v)
        if self._options["skip_nonfinite"]:
            found_inf = nonfinite_flag(plan, plan.buckets, found_inf)
        self._reset_stale_corrections(plan)
        self._run(plan, tables, found_inf, grad_scale)
        advance(tables, self._clock, plan.steps, self._lr_out, tokens=tokens_t, found_inf=found_inf,
                gnorm_partials=plan.gnorm, history=self._history if plan.gnorm is not None else None,
                backend=plan.primary)
        self._compact_seen = {id(p): (local(p).data_ptr(), p._version) for p in plan.compact}
        self._lr_view.advance(tokens_v, may_skip=found_inf is not None)
        self._lr_view.publish(groups, configs)
        return loss

    def _clock_on(self, device: torch.device) -> torch.Tensor:
        """The clock, created or moved to ``device`` (a new plan then points every state entry at it)."""
        if self._clock is None or self._clock.device != device:
            clock = torch.zeros(L.NUM_CLOCKS, dtype=torch.int64, device=device)
            if self._clock is not None:
                clock.copy_(self._clock)
            self._clock = clock
        return self._clock

    def _reset_stale_corrections(self, plan: Plan) -> None:
        """A compact master weight is ``p`` plus a correction: if ``p`` changed outside the optimizer since
        its last update (its version counter moved, or it got new storage), the correction no longer
        belongs to it and is reset to 0 (``docs/compressed_state.md``). Host metadata only."""
        for p in plan.compact:
            seen = self._compact_seen.get(id(p))
            if seen is not None and seen != (local(p).data_ptr(), p._version):
                self.state[p]["master_correction"].zero_()

    def _adopt_plan(self, plan: Plan) -> Plan:
        """Make ``plan`` current; the lr telemetry follows it to its device."""
        device = plan.device
        self._history_on(device)
        n = len(self.param_groups)
        if self._lr_out is None or self._lr_out.device != device or self._lr_out.numel() != n:
            self._lr_out = torch.zeros(n, dtype=torch.float32, device=device)
        self._plan = plan
        return plan

    # ------------------------------------------------------------------------------------------------
    # state dict (lrsched_fused.checkpoint)
    # ------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """torch's state dict plus ``"lrsched_fused"``: format version, device clock, options, and a copy of
        the clock in each param group (see :mod:`lrsched_fused.checkpoint`). Plain data: loads with
        ``torch.load(weights_only=True)``; the schedules are the groups' ``"schedule"`` dicts;
        ``torch.optim.AdamW`` can load it. Reads the clock on the host (one sync)."""
        self._sync_lrs()
        sd = C.finish_state_dict(super().state_dict(), self._clock, self._options)
        rows = self._history_rows()
        if rows is not None:
            sd[C.EXTRA_KEY][HISTORY_KEY] = rows
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict of this class, or of ``torch.optim.AdamW`` (fused or not).

        Moments go to the parameters' devices in this optimizer's state dtype (fp32 for bf16/fp16
        parameters by default: no round trip through the parameter dtype), ``step`` becomes a 0-d float32
        tensor on the parameter's device. The checkpoint's hyperparameters, schedules and clock win over
        the constructor's (a torch state dict has no schedules: a group with a schedule keeps it, and the
        step clock becomes the largest ``step``). A state that does not fit raises ``ValueError`` before
        anything changes.
        """
        if not isinstance(state_dict, dict):
            raise ValueError(f"state_dict must be a dict; got {type(state_dict).__name__}")
        state_dict = state_dict.copy()
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        loaded = C.prepare_load(self, state_dict)
        history = self._check_history(state_dict)
        # ---- adopt (nothing above changed the optimizer) ----
        self.__setstate__({"state": loaded.state, "param_groups": loaded.groups})
        self._clock = loaded.clock
        self._options.update(loaded.options)
        self._lr_out = None
        self._telemetry = {}
        self._lr_view.reset(loaded.clock_values)
        self._publish_lrs()
        self._compact_seen = {}  # the loaded corrections belong to the parameters as they are now
        self._adopt_history(history, int(loaded.clock_values[L.CLOCK_STEPS]) if loaded.clock_values else 0)
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        options = state.pop("_options", None)
        clock = state.pop("_clock", None)
        super().__setstate__(state)
        if not hasattr(self, "_options"):  # unpickled or deep-copied
            self._options = options or {"backend": "auto", "skip_nonfinite": False, **check_storage_options()}
            self._init_runtime(clock)
        else:
            self._plan = None
            self._tables.invalidate()
        for g in self.param_groups:
            g.setdefault("lr_scale", 1.0)
            g["schedule"] = as_schedule(g.get("schedule"))
            for name, default in self.defaults.items():
                if name != "params":
                    g.setdefault(name, deepcopy(default))
