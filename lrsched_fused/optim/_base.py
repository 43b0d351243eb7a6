"""Machinery shared by :class:`FusedAdamW` and :class:`FusedLAMB` (a ``torch.optim.Optimizer`` subclass).

Per step, in two phases:

1. *check* (nothing changes): the parameters with gradients, their gradients, the existing state, the
   backends for each bucket, every param group's hyperparameters and schedule, ``tokens``, and the
   GradScaler's ``found_inf`` / ``grad_scale``. Any problem raises ``ValueError`` (or
   ``BackendUnavailable``) here, so a failed ``step()`` leaves parameters, state and clock untouched.
2. *run*: reuse or rebuild the cached plan (creating state on first use), refresh the group tables if
   they changed, run each bucket's update on its backend, then one ``advance`` launch that records the
   lr used and moves the device clock.

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

import math
import warnings
from collections import defaultdict
from copy import deepcopy
from itertools import chain
from operator import attrgetter, is_
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch

from lrsched_fused.backends import BACKENDS, Backend, StepContext, TensorBatch, select_backend
from lrsched_fused.kernels import layout as L
from lrsched_fused.schedules import Schedule, ScheduleTables, constant, encode_tables

from ._plan import LOW_PRECISION, SUPPORTED_DTYPES, Bucket, Plan, is_dtensor, local
from ._state import (EXTRA_KEY, GROUP_CLOCK_KEY, STATE_FORMAT_VERSION, clock_to_plain, describe_param, pack_extra,
                     prepare_load)
from ._validate import as_schedule, check_bool, check_count, check_lr, check_lr_scale

_GRAD = attrgetter("grad")
_DATA_PTR = torch.Tensor.data_ptr
_IS_CONTIGUOUS = torch.Tensor.is_contiguous


def _IS_NOT_NONE(x: Any) -> bool:
    return x is not None

__all__ = ["FusedOptimizer", "STATE_FORMAT_VERSION"]

_UNIT_SCHEDULE = constant(1.0)
_TOKENS_MAX = 2**63 - 1


def _state_dtype_option(value: Any) -> Any:
    allowed = (None, "param", torch.float32, torch.bfloat16)
    if value not in allowed:
        raise ValueError(f"state_dtype must be None (fp32 for bf16/fp16 params, else the param dtype), 'param', "
                         f"torch.float32 or torch.bfloat16; got {value!r}")
    return value


@dataclass
class _NewPlan:
    """A plan checked but not yet built: what ``_build_plan`` needs, computed without changing anything."""

    device: torch.device
    grads: dict[int, torch.Tensor]                      # id(param) -> gradient the kernels read
    state_dtypes: dict[int, torch.dtype]                # id(param) -> dtype of its moments
    buckets: dict[tuple, list[tuple[int, torch.Tensor]]]
    backends: dict[tuple, Backend] = field(default_factory=dict)


class FusedOptimizer(torch.optim.Optimizer):
    """Base class; subclasses define the hyperparameters, their table row and the bucket update."""

    #: GradScaler hands ``grad_scale`` / ``found_inf`` to ``step`` instead of unscaling the grads.
    _step_supports_amp_scaling = True
    #: state keys of the moments every parameter has
    _moment_keys: tuple[str, ...] = ("exp_avg", "exp_avg_sq")
    #: moment-like state keys some groups have (AdamW: ``max_exp_avg_sq``); same shape and dtype as the moments
    _extra_moment_keys: tuple[str, ...] = ()
    #: options that are hyperparameters, restored from a checkpoint: name -> check(value, name)
    _checkpoint_options: dict[str, Callable[[Any, str], Any]] = {}

    def __init__(self, params: Iterable, defaults: dict[str, Any], *, backend: str = "auto",
                 skip_nonfinite: bool = False, master_weights: bool = False, state_dtype: Any = None) -> None:
        if backend != "auto" and backend not in BACKENDS:
            raise ValueError(f"backend must be one of 'auto', {', '.join(repr(b) for b in BACKENDS)}; got {backend!r}")
        if isinstance(params, (set, frozenset)):
            raise TypeError("params must be an ordered collection (a list), not a set: the order of parameters "
                            "must be the same between runs for state dicts to load")
        self._options = {
            "backend": backend,
            "skip_nonfinite": check_bool(skip_nonfinite, "skip_nonfinite"),
            "master_weights": check_bool(master_weights, "master_weights"),
            "state_dtype": _state_dtype_option(state_dtype),
        }
        self._init_runtime()
        defaults = dict(defaults)
        defaults["schedule"] = None
        defaults.setdefault("lr_scale", 1.0)
        self._normalise_group(defaults, explicit_lr=True)
        super().__init__(params, defaults)

    def _init_runtime(self, clock: torch.Tensor | None = None) -> None:
        """Caches and device buffers (not part of the pickled state except the clock)."""
        self._plan: Plan | None = None
        self._clock: torch.Tensor | None = clock
        self._lr_out: torch.Tensor | None = None
        self._tables_src: list | None = None      # the schedule objects the tables were encoded from
        self._tables: ScheduleTables | None = None
        self._hp_host: list[list[float]] | None = None
        self._hparams: torch.Tensor | None = None
        self._lr_written: list[float] = []
        self._warned_lr = False
        self._extra_telemetry: dict[str, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_options"] = self._options
        state["_clock"] = self._clock
        return state

    # ------------------------------------------------------------------------------------------------
    # hooks for subclasses
    # ------------------------------------------------------------------------------------------------
    def _check_group(self, group: dict) -> None:
        """Validate (and normalise in place) a group's hyperparameters; raise ValueError naming them."""
        raise NotImplementedError

    def _hp_row(self, group: dict) -> list[float]:
        """The group's row of the hyperparameter table (``layout.HP_*`` columns), lr column excluded."""
        raise NotImplementedError

    def _bucket_flags(self, group: dict) -> tuple:
        """Group options that change which state tensors exist (part of the bucket key)."""
        return ()

    def _wants_max(self, bucket_key: tuple) -> bool:
        """Whether a bucket carries running maxima of the second moment (AdamW amsgrad)."""
        return False

    def _extra_keys_for(self, group: dict) -> tuple[str, ...]:
        """Moment-like state keys (of ``_extra_moment_keys``) a parameter of ``group`` needs."""
        return ()

    def _update(self, plan: Plan, ctx: StepContext) -> None:
        raise NotImplementedError

    def _check_buckets(self, buckets: list[list[torch.Tensor]]) -> None:
        """Subclass check of a new plan's buckets (lists of parameters), before any state exists."""

    # ------------------------------------------------------------------------------------------------
    # param groups
    # ------------------------------------------------------------------------------------------------
    def _normalise_group(self, group: dict, *, explicit_lr: bool) -> None:
        """Validate a group's lr / schedule / lr_scale and hyperparameters, normalising in place.

        ``lr`` may be a float or a schedule (stored as ``group["schedule"]`` data, with ``group["lr"]`` its
        peak: a readable float). A group given an explicit float lr and no ``schedule`` follows its lr.
        """
        lr = check_lr(group.get("lr"), "lr")
        if isinstance(lr, Schedule):
            group["schedule"], group["lr"] = lr.to_dict(), lr.peak
        else:
            group["lr"] = lr
            if explicit_lr:
                group.setdefault("schedule", None)
            if group.get("schedule") is not None:
                sched = as_schedule(group["schedule"])
                if sched is None:
                    raise ValueError("schedule must be None, a Schedule or its to_dict() data; got "
                                     f"{type(group['schedule']).__name__}")
                group["schedule"] = sched.to_dict()
        group["lr_scale"] = check_lr_scale(group.get("lr_scale", 1.0))
        self._check_group(group)

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
            raise TypeError("params must be an ordered collection (a list), not a set: the order of parameters "
                            "must be the same between runs for state dicts to load")
        else:
            params = list(params)
        gi = len(getattr(self, "param_groups", []))
        tensors = [p[1] if isinstance(p, tuple) else p for p in params]
        self._check_new_params(tensors, gi)
        explicit_lr = "lr" in param_group
        for name, default in self.defaults.items():
            if name != "params":
                group.setdefault(name, deepcopy(default))
        if explicit_lr and "schedule" not in param_group:
            group["schedule"] = None
        try:
            self._normalise_group(group, explicit_lr=explicit_lr)
        except ValueError as exc:
            raise ValueError(f"param_groups[{gi}]: {exc}") from None
        group["params"] = params
        super().add_param_group(group)
        self._invalidate()

    def _check_new_params(self, tensors: list, gi: int) -> None:
        seen: set[int] = set()
        devices = {local(p).device for g in getattr(self, "param_groups", []) for p in g["params"]}
        for index, p in enumerate(tensors):
            if not isinstance(p, torch.Tensor):
                raise TypeError(f"optimizer can only optimize Tensors; param_groups[{gi}]['params'][{index}] is a "
                                f"{type(p).__name__}")
            where = f"param_groups[{gi}]['params'][{index}] of shape {tuple(p.shape)}"
            if p.is_complex() or p.dtype not in SUPPORTED_DTYPES:
                raise ValueError(f"{where} has dtype {p.dtype}; parameters must be float32, bfloat16, float16 or "
                                 "float64 (complex parameters: optimize torch.view_as_real(p) instead)")
            if not local(p).is_contiguous():
                raise ValueError(f"{where} is not contiguous (strides {local(p).stride()}); the fused kernels update "
                                 "flat memory: make it contiguous before creating the optimizer (e.g. "
                                 "p.data = p.data.contiguous(); channels_last parameters are not supported)")
            if id(p) in seen:
                raise ValueError(f"{where} appears twice in the group; each parameter may appear once")
            seen.add(id(p))
            devices.add(local(p).device)
            if len(devices) > 1:
                raise ValueError(f"{where} is on {local(p).device} but other parameters are on "
                                 f"{sorted(str(d) for d in devices - {local(p).device})}; all parameters of one "
                                 "optimizer must be on one device (create one optimizer per device)")

    def set_schedule(self, schedule: Schedule | None, group: int | None = None) -> None:
        """Drive ``param_groups[group]`` (all groups if ``None``) with ``schedule`` (``None``: follow
        ``group["lr"]`` again). Changes table data only: nothing recompiles, the clock keeps counting,
        so ``S.rewarm(old, at_step=current_step, ...)`` continues seamlessly."""
        if schedule is not None:
            schedule = as_schedule(schedule)
            if schedule is None:
                raise ValueError("schedule must be a Schedule, its to_dict() data, or None")
        if group is not None and not (isinstance(group, int) and 0 <= group < len(self.param_groups)):
            raise ValueError(f"group must be None or an index in [0, {len(self.param_groups)}); got {group!r}")
        groups = self.param_groups if group is None else [self.param_groups[group]]
        for g in groups:
            g["schedule"] = None if schedule is None else schedule.to_dict()
            if schedule is not None:
                g["lr"] = schedule.peak
        self._tables_src = None

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

    def _params_device(self) -> torch.device:
        for g in self.param_groups:
            for p in g["params"]:
                return local(p).device
        return torch.device("cpu")

    def _invalidate(self) -> None:
        self._plan = None
        self._tables_src = None
        self._hp_host = None

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
        if not self.state and self._called_by_dcp_init():
            # torch.distributed.checkpoint materialises state by stepping with zero grads and lr 0; a
            # schedule ignores that lr, so create the state without an update instead
            from ._distributed import init_optimizer_state

            init_optimizer_state(self)
            return loss
        # ---- 1. check (nothing changes) ----
        plan = self._plan
        grads = self._reusable_grads(plan) if plan is not None else None
        if grads is None:  # first step, or params / grads / state / amsgrad changed: a new plan
            plan = None
            entries = self._entries()
            if not entries:
                return loss
            new_plan = self._check_new_plan(entries)
            device = new_plan.device
        else:
            device = plan.device
        rows = self._group_rows()
        tables = self._tables_for(device)
        tokens_v = self._check_tokens(tokens)
        found_inf = self._scalar_attr("found_inf", device)
        grad_scale = self._scalar_attr("grad_scale", device)
        # ---- 2. run ----
        if plan is None:
            plan = self._build_plan(entries, new_plan)
        else:
            for bucket in plan.buckets:
                bucket.batch.grads = grads[bucket.rows]
        self._commit_tables(plan, rows, tables)
        tokens_t = self._tokens_tensor(plan, tokens_v)
        ctx = StepContext(self._tables, self._hparams, self._clock, found_inf, grad_scale)
        if self._options["skip_nonfinite"]:
            ctx.found_inf = self._nonfinite(plan, found_inf)
        self._update(plan, ctx)
        plan.primary.advance(ctx, plan.steps, self._lr_out, tokens_t)
        return loss

    @staticmethod
    def _called_by_dcp_init() -> bool:
        from ._distributed import called_by_dcp_init

        return called_by_dcp_init()

    def _scalar_attr(self, name: str, device: torch.device) -> torch.Tensor | None:
        value = getattr(self, name, None)
        if value is None:
            return None
        if not isinstance(value, torch.Tensor) or value.numel() != 1 or not value.is_floating_point():
            raise ValueError(f"optimizer.{name} must be None or a one-element floating-point tensor (as "
                             f"torch.amp.GradScaler sets it); got {value!r}")
        if value.device != device:
            value = value.to(device, non_blocking=True)
        return value.reshape(1).to(torch.float32)

    def _check_tokens(self, tokens: int | torch.Tensor | None) -> int | torch.Tensor | None:
        if tokens is None:
            if self._tables_units_tokens:
                raise ValueError("step(tokens=...) is required: a param group's schedule counts tokens "
                                 "(unit='tokens'); pass the number of tokens this update consumed (an int >= 0)")
            return None
        if isinstance(tokens, torch.Tensor):
            if tokens.numel() != 1 or tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
                raise ValueError("tokens must be an int in [0, 2**63) or a one-element integer tensor; got a "
                                 f"{tokens.dtype} tensor of shape {tuple(tokens.shape)}")
            return tokens
        return check_count(tokens, "tokens", maximum=_TOKENS_MAX)

    def _tokens_tensor(self, plan: Plan, tokens: int | torch.Tensor | None) -> torch.Tensor | None:
        if tokens is None:
            return None
        if isinstance(tokens, torch.Tensor):
            return tokens.reshape(1).to(device=plan.device, dtype=torch.int64, non_blocking=True)
        buf = plan.extra.get("tokens")
        if buf is None:
            buf = plan.extra["tokens"] = torch.zeros(1, dtype=torch.int64, device=plan.device)
        buf.fill_(tokens)
        return buf

    def _nonfinite(self, plan: Plan, found_inf: torch.Tensor | None) -> torch.Tensor:
        """found_inf for ``skip_nonfinite=True``: GradScaler's rule (any inf/NaN gradient), decided on the
        device without writing the gradients: the largest ``|g|`` of each bucket is inf or NaN."""
        flag = torch.zeros(1, dtype=torch.float32, device=plan.device)
        for bucket in plan.buckets:
            grads = [g for g in bucket.batch.grads if g.numel()]
            if grads:
                largest = torch.stack(torch._foreach_norm(grads, math.inf)).amax().reshape(1)
                flag = torch.maximum(flag, (~torch.isfinite(largest)).to(torch.float32))
            if bucket.allreduce is not None or bucket.has_dtensor:
                self._allreduce_max(bucket, flag)
        if found_inf is not None:
            flag = torch.maximum(flag, found_inf)
        return flag

    def _allreduce_max(self, bucket: Bucket, flag: torch.Tensor) -> None:
        from ._distributed import allreduce_flag

        allreduce_flag(bucket.allreduce if bucket.allreduce is not None else bucket.params, flag)

    # ------------------------------------------------------------------------------------------------
    # plan
    # ------------------------------------------------------------------------------------------------
    def _entries(self) -> list[tuple[int, torch.Tensor]]:
        out = []
        for gi, group in enumerate(self.param_groups):
            for p in group["params"]:
                if p.grad is not None:
                    out.append((gi, p))
        return out

    def _reusable_grads(self, plan: Plan) -> list[torch.Tensor] | None:
        """The kernels' gradients in the plan's row order if ``plan`` still describes the optimizer (same
        parameters in the same groups, same ones with gradients, same storage, same state entries, same
        amsgrad flags), else ``None``. This is the per-step host cost of a step, so every pass is a
        C-level ``map`` over the tensors (about 2000 tensors in well under a millisecond)."""
        groups = self.param_groups
        flat = [p for g in groups for p in g["params"]]
        if len(flat) != len(plan.all_params) or not all(map(is_, flat, plan.all_params)):
            return None
        grads_all = list(map(_GRAD, flat))
        if list(map(_IS_NOT_NONE, grads_all)) != plan.has_grad:
            return None
        if [self._bucket_flags(g) for g in groups] != plan.flags:
            return None
        grads = [grads_all[i] for i in plan.order_index]
        params = plan.order
        if plan.has_dtensor:
            grads = [local(g) for g in grads]
            params = [local(p) for p in params]
        if list(map(_DATA_PTR, params)) != plan.param_ptrs:
            return None
        state = self.state
        if not all(map(is_, map(state.get, plan.order), plan.states)):
            return None
        # every entry of every state dict, in one C-level pass: a replaced, added or removed entry rebuilds
        values = list(chain.from_iterable(map(dict.values, plan.states)))
        if len(values) != len(plan.state_values) or not all(map(is_, values, plan.state_values)):
            return None
        try:  # torch guarantees p.grad's dtype, shape and device; sparse grads raise here
            dense = all(map(_IS_CONTIGUOUS, grads))
        except RuntimeError:
            dense = False
        if not dense:
            gis = plan.order_group
            grads = [self._grad_of(p, gi) for p, gi in zip(plan.order, gis)]
        return grads

    def _where(self, gi: int, p: torch.Tensor) -> str:
        group = self.param_groups[gi]
        index = next((i for i, q in enumerate(group["params"]) if q is p), -1)
        return describe_param(group, gi, index, p)

    def _grad_of(self, p: torch.Tensor, gi: int) -> torch.Tensor:
        """The gradient the kernels read (a contiguous copy if ``p.grad`` is not contiguous)."""
        g = p.grad
        if g.is_sparse or g.layout != torch.strided:
            raise ValueError(f"the gradient of {self._where(gi, p)} is sparse ({g.layout}); sparse gradients are "
                             "not supported (use torch.optim.SparseAdam)")
        if g.dtype != p.dtype:
            raise ValueError(f"the gradient of {self._where(gi, p)} has dtype {g.dtype}; it must have the "
                             f"parameter's dtype {p.dtype}")
        g = local(g)
        if g.shape != local(p).shape:
            raise ValueError(f"the gradient of {self._where(gi, p)} has shape {tuple(g.shape)}; it must have the "
                             f"parameter's shape {tuple(local(p).shape)}")
        if g.device != local(p).device:
            raise ValueError(f"the gradient of {self._where(gi, p)} is on {g.device}; it must be on the parameter's "
                             f"device {local(p).device}")
        return g if g.is_contiguous() else g.contiguous()

    def _state_dtype_for(self, p: torch.Tensor) -> torch.dtype:
        option = self._options["state_dtype"]
        if option == "param":
            return p.dtype
        if option is None:
            return torch.float32 if p.dtype in LOW_PRECISION else p.dtype
        return option

    def _wants_master(self, p: torch.Tensor) -> bool:
        return self._options["master_weights"] and p.dtype in LOW_PRECISION

    def _check_existing_state(self, p: torch.Tensor, st: dict, gi: int) -> None:
        if not st:
            return
        where = self._where(gi, p)
        missing = [k for k in ("step",) + self._moment_keys if k not in st]
        if missing:
            raise ValueError(f"the optimizer state of {where} lacks {missing}")
        step = st["step"]
        if not isinstance(step, torch.Tensor) or step.numel() != 1:
            raise ValueError(f"state['step'] of {where} must be a one-element tensor; got {step!r}")
        shape = local(p).shape
        for k in self._moment_keys + self._extra_moment_keys + ("master_param",):
            if k not in st:
                continue
            t = st[k]
            if not isinstance(t, torch.Tensor) or not t.is_floating_point():
                raise ValueError(f"state[{k!r}] of {where} must be a floating-point tensor; got "
                                 f"{getattr(t, 'dtype', type(t).__name__)}")
            if local(t).shape != shape:
                raise ValueError(f"state[{k!r}] of {where} has shape {tuple(local(t).shape)} but the parameter has "
                                 f"shape {tuple(shape)}: the state does not fit the model")

    def _check_new_plan(self, entries: list[tuple[int, torch.Tensor]]) -> _NewPlan:
        """Everything a new plan needs, checked; changes nothing."""
        devices = {local(p).device for _, p in entries}
        if len(devices) > 1:
            raise ValueError(f"all parameters must be on one device; got {sorted(str(d) for d in devices)} "
                             "(create one optimizer per device)")
        device = devices.pop()
        groups = self.param_groups
        grads, sdts = {}, {}
        buckets: dict[tuple, list[tuple[int, torch.Tensor]]] = defaultdict(list)
        for gi, p in entries:
            if p.is_complex() or p.dtype not in SUPPORTED_DTYPES:
                raise ValueError(f"{self._where(gi, p)}: parameters must be float32, bfloat16, float16 or float64")
            if not local(p).is_contiguous():
                raise ValueError(f"{self._where(gi, p)} is not contiguous (strides {local(p).stride()}); the fused "
                                 "kernels update flat memory: make parameters contiguous "
                                 "(p.data = p.data.contiguous())")
            grads[id(p)] = self._grad_of(p, gi)
            self._check_existing_state(p, self.state.get(p, {}), gi)
            sdt = sdts[id(p)] = self._state_dtype_for(p)
            buckets[(p.dtype, sdt, self._wants_master(p)) + self._bucket_flags(groups[gi])].append((gi, p))
        self._check_buckets([[p for _, p in items] for items in buckets.values()])
        plan = _NewPlan(device=device, grads=grads, state_dtypes=sdts, buckets=buckets)
        for bkey in buckets:
            backend = select_backend(self._options["backend"], device)
            backend.check(device, bkey[0], bkey[1])
            plan.backends[bkey] = backend
        return plan

    def _init_state(self, p: torch.Tensor, st: dict, group: dict, sdt: torch.dtype, device: torch.device) -> None:
        """Create missing state (zeros, ``step`` 0) and bring existing state to ``sdt`` on ``device``."""
        if not st:
            st["step"] = torch.zeros((), dtype=torch.float32, device=device)
        for k in self._moment_keys + self._extra_keys_for(group):
            if k not in st:
                st[k] = torch.zeros_like(p, dtype=sdt, memory_format=torch.preserve_format)
        for k in self._moment_keys + self._extra_moment_keys:
            t = st.get(k)
            if t is not None and (t.dtype != sdt or local(t).device != device or not local(t).is_contiguous()):
                st[k] = t.to(device=device, dtype=sdt).contiguous() if not is_dtensor(t) else t.to(dtype=sdt)
        if self._wants_master(p):
            if "master_param" not in st:
                st["master_param"] = p.detach().clone().to(torch.float32)
        else:
            st.pop("master_param", None)

    def _build_plan(self, entries: list[tuple[int, torch.Tensor]], new: _NewPlan) -> Plan:
        device = new.device
        groups = self.param_groups
        for gi, p in entries:
            self._init_state(p, self.state[p], groups[gi], new.state_dtypes[id(p)], device)
        order: list[torch.Tensor] = []
        group_rows: list[int] = []
        spans = []
        for bkey, items in new.buckets.items():
            spans.append((bkey, len(order), len(order) + len(items)))
            for gi, p in items:
                order.append(p)
                group_rows.append(gi)
        states = [self.state[p] for p in order]
        steps = torch.stack([st["step"].detach().reshape(()).to(device=device, dtype=torch.float32)
                             for st in states])
        views = [steps[i] for i in range(len(order))]
        for st, view in zip(states, views):
            st["step"] = view
        group_index = torch.tensor(group_rows, dtype=torch.int64, device=device)
        buckets = []
        for bkey, lo, hi in spans:
            params = order[lo:hi]
            sts = states[lo:hi]
            batch = TensorBatch(
                params=[local(p) for p in params],
                grads=[new.grads[id(p)] for p in params],
                exp_avgs=[local(st["exp_avg"]) for st in sts],
                exp_avg_sqs=[local(st["exp_avg_sq"]) for st in sts],
                max_exp_avg_sqs=[local(st["max_exp_avg_sq"]) for st in sts] if self._wants_max(bkey) else None,
                master_params=[local(st["master_param"]) for st in sts] if bkey[2] else None,
                group_index=group_index[lo:hi],
                steps=steps[lo:hi],
            )
            buckets.append(Bucket(key=bkey, backend=new.backends[bkey], batch=batch, params=params, rows=slice(lo, hi),
                                  allreduce=self._make_allreduce(params),
                                  has_dtensor=any(is_dtensor(p) for p in params), group_rows=group_rows[lo:hi]))
        primary = buckets[0].backend
        if self._clock is None or self._clock.device != device:
            clock = torch.zeros(L.NUM_CLOCKS, dtype=torch.int64, device=device)
            if self._clock is not None:
                clock.copy_(self._clock)
            self._clock = clock
        if self._lr_out is None or self._lr_out.device != device or self._lr_out.numel() != len(groups):
            self._lr_out = torch.zeros(len(groups), dtype=torch.float32, device=device)
        state_values = list(chain.from_iterable(map(dict.values, states)))
        all_params = [p for g in groups for p in g["params"]]
        position = {id(p): i for i, p in enumerate(all_params)}
        plan = Plan(device=device, order=order, states=states, step_views=views, steps=steps,
                    state_values=state_values, buckets=buckets, primary=primary, all_params=all_params,
                    has_grad=[p.grad is not None for p in all_params], order_index=[position[id(p)] for p in order],
                    order_group=group_rows, flags=[self._bucket_flags(g) for g in groups],
                    param_ptrs=[local(p).data_ptr() for p in order],
                    has_dtensor=any(is_dtensor(p) for p in order))
        self._plan = plan
        self._hp_host = None
        self._on_plan_built(plan)
        return plan

    def _make_allreduce(self, params: list[torch.Tensor]):
        if not any(is_dtensor(p) for p in params):
            return None
        from ._distributed import make_shard_allreduce

        return make_shard_allreduce(params)

    def _on_plan_built(self, plan: Plan) -> None:
        """Subclass hook (e.g. LAMB allocates its telemetry buffer)."""

    # ------------------------------------------------------------------------------------------------
    # group tables
    # ------------------------------------------------------------------------------------------------
    @property
    def _tables_units_tokens(self) -> bool:
        return any(isinstance(g.get("schedule"), dict) and g["schedule"].get("unit") == "tokens"
                   for g in self.param_groups)

    def _group_rows(self) -> list[list[float]]:
        """Each group's hyperparameter row, from a validated copy of the group (the groups may have been
        edited since the last step, e.g. by a torch scheduler); raises ValueError naming the group."""
        rows = []
        for gi, g in enumerate(self.param_groups):
            probe = dict(g)
            try:
                if probe.get("schedule") is None:
                    lr = check_lr(probe.get("lr"), "lr")
                    if isinstance(lr, Schedule):
                        raise ValueError("lr must be a float; to drive the group with a schedule use "
                                         "opt.set_schedule(schedule, group)")
                    lr_factor = check_lr_scale(probe.get("lr_scale", 1.0)) * lr
                else:
                    lr_factor = check_lr_scale(probe.get("lr_scale", 1.0))
                self._check_group(probe)
                row = self._hp_row(probe)
            except KeyError as exc:
                raise ValueError(f"param_groups[{gi}] lacks the entry {exc}") from None
            except ValueError as exc:
                raise ValueError(f"param_groups[{gi}]: {exc}") from None
            row[L.HP_LR_SCALE] = lr_factor
            for k, x in enumerate(row):
                if not (math.isfinite(x) or (k == L.HP_TRUST_MAX and x == math.inf)):
                    raise ValueError(f"param_groups[{gi}] holds a non-finite hyperparameter (column {k}): {row}")
            rows.append(row)
        return rows

    def _tables_for(self, device: torch.device) -> tuple | None:
        """New schedule tables if the groups' schedules (or the device) changed since they were encoded,
        else ``None``. Schedules are compared by identity: replace ``group["schedule"]`` (or call
        :meth:`set_schedule`) to change one, do not edit its dict in place."""
        src = [g.get("schedule") for g in self.param_groups]
        cached = self._tables_src
        if (cached is not None and len(cached) == len(src) and all(a is b for a, b in zip(cached, src))
                and self._tables is not None and self._tables.ints.device == device):
            return None
        scheds = []
        for gi, data in enumerate(src):
            if data is None:
                scheds.append(_UNIT_SCHEDULE)
                continue
            try:
                sched = as_schedule(data)
            except ValueError as exc:
                raise ValueError(f"param_groups[{gi}]['schedule']: {exc}") from None
            if sched is None:
                raise ValueError(f"param_groups[{gi}]['schedule'] must be None or Schedule.to_dict() data; got "
                                 f"{type(data).__name__}")
            scheds.append(sched)
        return encode_tables(scheds, device), src

    def _commit_tables(self, plan: Plan, rows: list[list[float]], tables: tuple | None) -> None:
        groups = self.param_groups
        if tables is not None:
            self._tables, self._tables_src = tables
            self._lr_written = [g["lr"] for g in groups]
        for gi, g in enumerate(groups):
            if (g.get("schedule") is not None and not self._warned_lr and gi < len(self._lr_written)
                    and not (type(g["lr"]) is float and g["lr"] == self._lr_written[gi])):
                self._warned_lr = True
                warnings.warn("param_groups[i]['lr'] was changed while a schedule drives that group; the "
                              "schedule wins. Use opt.set_schedule(None) to follow group['lr'] instead.",
                              RuntimeWarning, stacklevel=4)
        if rows != self._hp_host or self._hparams is None or self._hparams.device != plan.device:
            host = torch.tensor(rows, dtype=torch.float64)
            if self._hparams is not None and self._hparams.shape == host.shape and self._hparams.device == plan.device:
                self._hparams.copy_(host, non_blocking=True)  # same buffer: kernels / graphs keep their pointer
            else:
                self._hparams = host.to(plan.device, non_blocking=True)
            self._hp_host = rows

    # ------------------------------------------------------------------------------------------------
    # telemetry
    # ------------------------------------------------------------------------------------------------
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
        out.update(self._extra_telemetry)
        return out

    def get_last_lr(self) -> list[float]:
        """The lr each group used in the last step; before any step (or right after loading a state
        dict), the lr the next step will use. Reads the device: call it for logging, not in a hot loop."""
        if self._lr_out is None:
            clock = self._clock.tolist() if self._clock is not None else [0] * L.NUM_CLOCKS
            return [self._effective_lr_host(g, clock) for g in self.param_groups]
        return [float(x) for x in self._lr_out.tolist()]

    def _effective_lr_host(self, g: dict, clock: list[int]) -> float:
        if g.get("schedule") is not None:
            sched = Schedule.from_dict(g["schedule"])
            return g["lr_scale"] * sched(clock[L.CLOCK_TOKENS if sched.unit == "tokens" else L.CLOCK_STEPS])
        return g["lr_scale"] * g["lr"]

    @property
    def clock(self) -> torch.Tensor | None:
        """The device clock (int64 ``[2]``: updates applied, tokens consumed), ``None`` before the first step."""
        return self._clock

    # ------------------------------------------------------------------------------------------------
    # state dict
    # ------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """torch's state dict plus ``"lrsched_fused"``: format version, device clock, options, and a copy of
        the clock in each param group (see :mod:`lrsched_fused.optim._state`). Plain data: loads with
        ``torch.load(weights_only=True)``; the schedules are the groups' ``"schedule"`` dicts;
        ``torch.optim.AdamW`` can load it. Reads the clock on the host (one sync)."""
        sd = super().state_dict()
        # steps are views into one buffer here; give independent tensors (DCP and torch expect that)
        sd["state"] = {k: {n: (v.clone() if n == "step" else v) for n, v in st.items()}
                       for k, st in sd["state"].items()}
        sd[EXTRA_KEY] = pack_extra(self._clock, self._options)
        clock = clock_to_plain(self._clock)  # one host read: a checkpoint is not the hot loop
        for group in sd["param_groups"]:  # DCP keeps only "state" and "param_groups": a copy travels there
            group[GROUP_CLOCK_KEY] = None if clock is None else list(clock)
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
        loaded = prepare_load(self, state_dict)
        # ---- adopt (nothing above changed the optimizer) ----
        self.__setstate__({"state": loaded.state, "param_groups": loaded.groups})
        self._clock = loaded.clock
        self._options.update(loaded.options)
        self._lr_out = None
        self._extra_telemetry = {}
        self._invalidate()
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        options = state.pop("_options", None)
        clock = state.pop("_clock", None)
        super().__setstate__(state)
        if not hasattr(self, "_options"):  # unpickled or deep-copied
            self._options = options or {"backend": "auto", "skip_nonfinite": False, "master_weights": False,
                                        "state_dtype": None}
            self._init_runtime(clock)
        else:
            self._invalidate()
        for g in self.param_groups:
            g.setdefault("lr_scale", 1.0)
            g.setdefault("schedule", None)
            for name, default in self.defaults.items():
                if name != "params":
                    g.setdefault(name, deepcopy(default))

