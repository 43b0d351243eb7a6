"""Machinery shared by :class:`FusedAdamW` and :class:`FusedLAMB` (a ``torch.optim.Optimizer`` subclass).

Per step: validate (nothing is touched if anything is wrong), reuse or rebuild the cached plan, refresh
the gradients and, if they changed, the group tables, run each bucket's update on its backend, then one
``advance`` launch that records the lr used and moves the device clock. No ``.item()``, no host read of a
device value, no per-tensor launch.

Learning rate of a param group (``lr_scale`` defaults to 1)::

    lr_t = lr_scale * (schedule(clock) if the group has a schedule else group["lr"])

``clock`` is the optimizer's device counter: updates applied so far (``unit="steps"``) or tokens
consumed so far (``unit="tokens"``, advanced by ``step(tokens=...)``); the first update uses clock 0.
A skipped step (non-finite gradients) advances neither the clock nor the per-parameter ``step``.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from copy import deepcopy
from typing import Any, Callable, Iterable

import torch

from lrsched_fused.backends import BACKENDS, StepContext, TensorBatch, select_backend
from lrsched_fused.kernels import layout as L
from lrsched_fused.schedules import Schedule, constant, encode_tables

from ._plan import LOW_PRECISION, SUPPORTED_DTYPES, Bucket, Plan, is_dtensor, local
from ._validate import as_schedule, check_bool, check_lr, check_lr_scale

__all__ = ["FusedOptimizer", "STATE_FORMAT_VERSION"]

#: Version of the ``"lrsched_fused"`` entry of the state dict.
STATE_FORMAT_VERSION = 1
_EXTRA_KEY = "lrsched_fused"
_UNIT_SCHEDULE = constant(1.0)


def _state_dtype_option(value: Any) -> Any:
    allowed = (None, "param", torch.float32, torch.bfloat16)
    if value not in allowed:
        raise ValueError(f"state_dtype must be None (fp32 for bf16/fp16 params, else the param dtype), 'param', "
                         f"torch.float32 or torch.bfloat16; got {value!r}")
    return value


class FusedOptimizer(torch.optim.Optimizer):
    """Base class; subclasses define the hyperparameters, their table row and the bucket update."""

    #: GradScaler hands ``grad_scale`` / ``found_inf`` to ``step`` instead of unscaling the grads.
    _step_supports_amp_scaling = True
    #: state keys of the moments (subclasses extend)
    _moment_keys: tuple[str, ...] = ("exp_avg", "exp_avg_sq")

    def __init__(self, params: Iterable, defaults: dict[str, Any], *, backend: str = "auto",
                 skip_nonfinite: bool = False, master_weights: bool = False, state_dtype: Any = None) -> None:
        if backend != "auto" and backend not in BACKENDS:
            raise ValueError(f"backend must be one of 'auto', {', '.join(repr(b) for b in BACKENDS)}; got {backend!r}")
        self._options = {
            "backend": backend,
            "skip_nonfinite": check_bool(skip_nonfinite, "skip_nonfinite"),
            "master_weights": check_bool(master_weights, "master_weights"),
            "state_dtype": _state_dtype_option(state_dtype),
        }
        self._init_runtime()
        defaults = dict(defaults)
        lr = check_lr(defaults.get("lr"), "lr")
        defaults["schedule"] = None
        if isinstance(lr, Schedule):
            defaults["schedule"], defaults["lr"] = lr.to_dict(), lr.peak
        defaults.setdefault("lr_scale", 1.0)
        self._check_group(defaults)
        super().__init__(params, defaults)

    def _init_runtime(self, clock: torch.Tensor | None = None) -> None:
        """Caches and device buffers (not part of the pickled state except the clock)."""
        self._plan: Plan | None = None
        self._clock: torch.Tensor | None = clock
        self._lr_out: torch.Tensor | None = None
        self._tables_key: tuple | None = None
        self._tables = None
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

    def _init_extra_state(self, p: torch.Tensor, state: dict, group: dict, state_dtype: torch.dtype) -> None:
        """Create subclass-specific state entries (e.g. ``max_exp_avg_sq``)."""

    def _update(self, plan: Plan, ctx: StepContext) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------------
    # param groups
    # ------------------------------------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict; got {type(param_group).__name__}")
        group = dict(param_group)
        explicit_lr = "lr" in group
        for name, default in self.defaults.items():
            if name != "params":
                group.setdefault(name, deepcopy(default))
        lr = check_lr(group["lr"], "lr")
        if isinstance(lr, Schedule):
            group["schedule"], group["lr"] = lr.to_dict(), lr.peak
        else:
            group["lr"] = lr
            if explicit_lr and "schedule" not in param_group:
                group["schedule"] = None
            if group.get("schedule") is not None:
                sched = as_schedule(group["schedule"])
                if sched is None:
                    raise ValueError("schedule must be None, a Schedule or its to_dict() data")
                group["schedule"] = sched.to_dict()
        group["lr_scale"] = check_lr_scale(group.get("lr_scale", 1.0))
        self._check_group(group)
        params = group["params"]
        if isinstance(params, torch.Tensor):
            params = [params]
        elif isinstance(params, set):
            raise TypeError("params must be an ordered collection (a list), not a set")
        params = list(params)
        tensors = [p[1] if isinstance(p, tuple) else p for p in params]
        for p in tensors:
            if isinstance(p, torch.Tensor) and (p.is_complex() or p.dtype not in SUPPORTED_DTYPES):
                raise ValueError(f"parameters must be float32, bfloat16, float16 or float64 tensors; got {p.dtype} "
                                 "(complex parameters: optimize torch.view_as_real(p) instead)")
        if len({id(p) for p in tensors}) != len(tensors):
            raise ValueError("params contains the same parameter twice; each parameter may appear once")
        group["params"] = params
        super().add_param_group(group)
        self._invalidate()

    def set_schedule(self, schedule: Schedule | None, group: int | None = None) -> None:
        """Drive ``param_groups[group]`` (all groups if ``None``) with ``schedule`` (``None``: follow
        ``group["lr"]`` again). Changes table data only: nothing recompiles, the clock keeps counting,
        so ``S.rewarm(old, at_step=current_step, ...)`` continues seamlessly."""
        if schedule is not None and not isinstance(schedule, Schedule):
            raise ValueError(f"schedule must be a Schedule or None; got {type(schedule).__name__}")
        groups = self.param_groups if group is None else [self.param_groups[group]]
        for g in groups:
            g["schedule"] = None if schedule is None else schedule.to_dict()
            if schedule is not None:
                g["lr"] = schedule.peak
        self._tables_key = None

    def _invalidate(self) -> None:
        self._plan = None
        self._tables_key = None
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
                schedule counts tokens). An int or a device tensor (no host sync either way).
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        plan = self._prepare()
        if plan is None:
            return loss
        device = plan.device
        found_inf = self._scalar_attr("found_inf", device)
        grad_scale = self._scalar_attr("grad_scale", device)
        tokens_t = self._tokens(tokens, device)
        ctx = StepContext(self._tables, self._hparams, self._clock, found_inf, grad_scale)
        if self._options["skip_nonfinite"]:
            ctx.found_inf = self._nonfinite(plan, found_inf)
        self._update(plan, ctx)
        plan.primary.advance(ctx, plan.steps, self._lr_out, tokens_t)
        return loss

    def _scalar_attr(self, name: str, device: torch.device) -> torch.Tensor | None:
        value = getattr(self, name, None)
        if value is None:
            return None
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            raise ValueError(f"optimizer.{name} must be None or a one-element tensor (as torch.amp.GradScaler "
                             f"sets it); got {value!r}")
        if value.device != device:
            value = value.to(device, non_blocking=True)
        return value.reshape(1).to(torch.float32)

    def _tokens(self, tokens: int | torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
        needs = self._tables_units_tokens
        if tokens is None:
            if needs:
                raise ValueError("step(tokens=...) is required: a param group's schedule counts tokens "
                                 "(unit='tokens'); pass the number of tokens this update consumed")
            return None
        if isinstance(tokens, torch.Tensor):
            if tokens.numel() != 1 or tokens.is_floating_point() or tokens.is_complex():
                raise ValueError("tokens must be an int >= 0 or a one-element integer tensor")
            return tokens.reshape(1).to(device=device, dtype=torch.int64, non_blocking=True)
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
            raise ValueError(f"tokens must be an int >= 0 or a one-element integer tensor; got {tokens!r}")
        buf = self._plan.extra.setdefault("tokens", torch.zeros(1, dtype=torch.int64, device=device))
        buf.fill_(tokens)
        return buf

    def _nonfinite(self, plan: Plan, found_inf: torch.Tensor | None) -> torch.Tensor:
        """found_inf for ``skip_nonfinite=True``: GradScaler's rule (any inf/NaN gradient) on the device."""
        flag = torch.zeros(1, dtype=torch.float32, device=plan.device)
        one = torch.ones(1, dtype=torch.float32, device=plan.device)
        for bucket in plan.buckets:
            torch._amp_foreach_non_finite_check_and_unscale_(bucket.batch.grads, flag, one)
            if bucket.allreduce is not None or any(is_dtensor(p) for p in bucket.params):
                self._allreduce_max(bucket, flag)
        if found_inf is not None:
            flag = torch.maximum(flag, found_inf)
        return flag

    def _allreduce_max(self, bucket: Bucket, flag: torch.Tensor) -> None:
        from ._distributed import allreduce_flag

        allreduce_flag(bucket.params, flag)

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

    def _prepare(self) -> Plan | None:
        entries = self._entries()
        if not entries:
            return None
        key = tuple((gi, id(p), local(p).data_ptr()) for gi, p in entries)
        plan = self._plan
        if plan is not None and plan.key == key and self._state_unchanged(plan):
            self._refresh_grads(plan)
        else:
            plan = self._build_plan(entries, key)
        self._refresh_tables(plan)
        return plan

    def _state_unchanged(self, plan: Plan) -> bool:
        state = self.state
        for p, st, view in zip(plan.order, plan.states, plan.step_views):
            got = state.get(p)
            if got is not st or got.get("step") is not view:
                return False
        return True

    @staticmethod
    def _grad_of(p: torch.Tensor) -> torch.Tensor:
        g = p.grad
        if g.is_sparse or g.layout != torch.strided:
            raise ValueError("sparse gradients are not supported (use torch.optim.SparseAdam)")
        if g.dtype != p.dtype:
            raise ValueError(f"gradient dtype {g.dtype} differs from its parameter's dtype {p.dtype}")
        g = local(g)
        if g.shape != local(p).shape:
            raise ValueError(f"gradient shape {tuple(g.shape)} differs from its parameter's {tuple(local(p).shape)}")
        return g if g.is_contiguous() else g.contiguous()

    def _refresh_grads(self, plan: Plan) -> None:
        for bucket in plan.buckets:
            bucket.batch.grads = [self._grad_of(p) for p in bucket.params]

    def _check_entries(self, entries: list[tuple[int, torch.Tensor]]) -> torch.device:
        devices = {local(p).device for _, p in entries}
        if len(devices) > 1:
            raise ValueError(f"all parameters must be on one device; got {sorted(str(d) for d in devices)} "
                             "(create one optimizer per device)")
        for gi, p in entries:
            if p.is_complex() or p.dtype not in SUPPORTED_DTYPES:
                raise ValueError(f"parameters must be float32, bfloat16, float16 or float64; got {p.dtype} in "
                                 f"param group {gi}")
            if not local(p).is_contiguous():
                raise ValueError(f"parameters must be contiguous; a parameter of shape {tuple(p.shape)} in param "
                                 f"group {gi} is not (call .contiguous() on it before creating the optimizer)")
            self._grad_of(p)
        return devices.pop()

    def _state_dtype_for(self, p: torch.Tensor) -> torch.dtype:
        option = self._options["state_dtype"]
        if option == "param":
            return p.dtype
        if option is None:
            return torch.float32 if p.dtype in LOW_PRECISION else p.dtype
        return option

    def _check_existing_state(self, p: torch.Tensor, st: dict, gi: int) -> None:
        if not st:
            return
        missing = [k for k in ("step",) + self._moment_keys if k not in st]
        if missing:
            raise ValueError(f"optimizer state of a parameter in param group {gi} lacks {missing}")
        shape = local(p).shape
        for k in self._moment_keys:
            if local(st[k]).shape != shape:
                raise ValueError(f"optimizer state {k!r} has shape {tuple(local(st[k]).shape)} but its parameter "
                                 f"in param group {gi} has shape {tuple(shape)}: the state does not fit the model")

    def _init_state(self, p: torch.Tensor, st: dict, group: dict, device: torch.device) -> None:
        sdt = self._state_dtype_for(p)
        if not st:
            st["step"] = torch.zeros((), dtype=torch.float32, device=device)
            for k in self._moment_keys:
                st[k] = torch.zeros_like(p, dtype=sdt, memory_format=torch.preserve_format)
        for k in self._moment_keys:
            if st[k].dtype != sdt or local(st[k]).device != device:
                st[k] = st[k].to(device=device, dtype=sdt)
        self._init_extra_state(p, st, group, sdt)
        wants_master = self._options["master_weights"] and p.dtype in LOW_PRECISION
        if wants_master and "master_param" not in st:
            st["master_param"] = p.detach().clone().to(torch.float32)
        if not wants_master:
            st.pop("master_param", None)

    def _build_plan(self, entries: list[tuple[int, torch.Tensor]], key: tuple) -> Plan:
        device = self._check_entries(entries)
        groups = self.param_groups
        # validate existing state of every param before creating or changing any
        for gi, p in entries:
            self._check_existing_state(p, self.state.get(p, {}), gi)
        for gi, p in entries:
            self._init_state(p, self.state[p], groups[gi], device)
        # bucket order: (param dtype, state dtype, master, subclass flags); stable within a bucket
        by_key: dict[tuple, list[tuple[int, torch.Tensor]]] = defaultdict(list)
        for gi, p in entries:
            st = self.state[p]
            bkey = (p.dtype, st["exp_avg"].dtype, "master_param" in st) + self._bucket_flags(groups[gi])
            by_key[bkey].append((gi, p))
        order: list[torch.Tensor] = []
        group_rows: list[int] = []
        spans = []
        for bkey, items in by_key.items():
            spans.append((bkey, len(order), len(order) + len(items)))
            for gi, p in items:
                order.append(p)
                group_rows.append(gi)
        states = [self.state[p] for p in order]
        steps = torch.stack([st["step"].detach().reshape(()).to(device=device, dtype=torch.float32)
                             for st in states]) if order else torch.zeros(0, device=device)
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
                grads=[self._grad_of(p) for p in params],
                exp_avgs=[local(st["exp_avg"]) for st in sts],
                exp_avg_sqs=[local(st["exp_avg_sq"]) for st in sts],
                max_exp_avg_sqs=[local(st["max_exp_avg_sq"]) for st in sts] if self._wants_max(bkey) else None,
                master_params=[local(st["master_param"]) for st in sts] if bkey[2] else None,
                group_index=group_index[lo:hi],
                steps=steps[lo:hi],
            )
            backend = select_backend(self._options["backend"], device)
            backend.check(device, batch.dtype, batch.state_dtype)
            buckets.append(Bucket(key=bkey, backend=backend, batch=batch, params=params, rows=slice(lo, hi),
                                  allreduce=self._make_allreduce(params)))
        primary = buckets[0].backend if buckets else select_backend(self._options["backend"], device)
        if self._clock is None or self._clock.device != device:
            clock = torch.zeros(L.NUM_CLOCKS, dtype=torch.int64, device=device)
            if self._clock is not None:
                clock.copy_(self._clock)
            self._clock = clock
        if self._lr_out is None or self._lr_out.device != device or self._lr_out.numel() != len(groups):
            self._lr_out = torch.zeros(len(groups), dtype=torch.float32, device=device)
        plan = Plan(device=device, key=key, order=order, states=states, step_views=views, steps=steps,
                    buckets=buckets, primary=primary)
        self._plan = plan
        self._tables_key = None
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
        return any(g.get("schedule") is not None and g["schedule"].get("unit") == "tokens" for g in self.param_groups)

    def _refresh_tables(self, plan: Plan) -> None:
        groups = self.param_groups
        sched_key = tuple(id(g.get("schedule")) for g in groups)
        if self._tables_key != sched_key or self._tables is None or self._tables.ints.device != plan.device:
            scheds = [Schedule.from_dict(g["schedule"]) if g.get("schedule") is not None else _UNIT_SCHEDULE
                      for g in groups]
            self._tables = encode_tables(scheds, plan.device)
            self._tables_key = sched_key
            self._lr_written = [g["lr"] for g in groups]
        rows = []
        for gi, g in enumerate(groups):
            if g.get("schedule") is not None:
                if g["lr"] != self._lr_written[gi] and not self._warned_lr:
                    self._warned_lr = True
                    warnings.warn("param_groups[i]['lr'] was changed while a schedule drives that group; the "
                                  "schedule wins. Use opt.set_schedule(None) to follow group['lr'] instead.",
                                  RuntimeWarning, stacklevel=4)
                lr_factor = g["lr_scale"]
            else:
                lr_factor = g["lr_scale"] * g["lr"]
            row = self._hp_row(g)
            row[L.HP_LR_SCALE] = lr_factor
            rows.append(row)
        if rows != self._hp_host or self._hparams is None or self._hparams.device != plan.device:
            for gi, row in enumerate(rows):
                if not all(math.isfinite(x) or (k == L.HP_TRUST_MAX and x == math.inf) for k, x in enumerate(row)):
                    raise ValueError(f"param_groups[{gi}] holds a non-finite hyperparameter: {row}")
            self._hp_host = rows
            self._hparams = torch.tensor(rows, dtype=torch.float64).to(plan.device, non_blocking=True)

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
        """The lr each group used in the last step (reads the device: call it for logging, not in a hot loop)."""
        if self._lr_out is None:
            return [self._effective_lr_host(g, 0) for g in self.param_groups]
        return [float(x) for x in self._lr_out.tolist()]

    def _effective_lr_host(self, g: dict, t: int) -> float:
        if g.get("schedule") is not None:
            return g["lr_scale"] * Schedule.from_dict(g["schedule"])(t)
        return g["lr_scale"] * g["lr"]

    @property
    def clock(self) -> torch.Tensor | None:
        """The device clock (int64 ``[2]``: updates applied, tokens consumed), ``None`` before the first step."""
        return self._clock

    # ------------------------------------------------------------------------------------------------
    # state dict
    # ------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        # steps are views into one buffer here; give independent tensors (DCP and torch expect that)
        sd["state"] = {k: {n: (v.clone() if n == "step" else v) for n, v in st.items()} for k, st in sd["state"].items()}
        sd[_EXTRA_KEY] = {
            "format": STATE_FORMAT_VERSION,
            "clock": self._clock.detach().clone() if self._clock is not None else None,
            "options": {k: (str(v) if isinstance(v, torch.dtype) else v) for k, v in self._options.items()},
        }
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict of this class or of ``torch.optim.AdamW`` (moments keep this optimizer's
        state dtype and move to the parameters' devices; a state that does not fit raises ValueError
        before anything changes). The checkpoint's schedules and clock win over the constructor's."""
        sd = dict(state_dict)
        extra = sd.pop(_EXTRA_KEY, None)
        if not isinstance(sd.get("param_groups"), list) or not isinstance(sd.get("state"), dict):
            raise ValueError("state_dict must have 'state' (dict) and 'param_groups' (list) entries")
        groups = self.param_groups
        saved_groups = sd["param_groups"]
        if len(groups) != len(saved_groups):
            raise ValueError(f"loaded state dict has {len(saved_groups)} param groups; this optimizer has {len(groups)}")
        ids: list[Any] = []
        params: list[torch.Tensor] = []
        for gi, (g, sg) in enumerate(zip(groups, saved_groups)):
            if len(g["params"]) != len(sg["params"]):
                raise ValueError(f"loaded param group {gi} has {len(sg['params'])} params; this optimizer's has "
                                 f"{len(g['params'])}")
            ids += list(sg["params"])
            params += list(g["params"])
            probe = dict(sg)
            probe["params"] = []
            probe.setdefault("lr_scale", 1.0)
            probe.setdefault("schedule", None)
            for name, default in self.defaults.items():
                probe.setdefault(name, default)
            if as_schedule(probe["schedule"]) is None and probe["schedule"] is not None:
                raise ValueError(f"loaded param group {gi} has an unreadable 'schedule' entry")
            self._check_group(probe)
        saved_state = sd["state"]
        for pid, p in zip(ids, params):
            st = saved_state.get(pid)
            if st:
                self._check_existing_state(p, st, 0)
        clock = None
        if extra is not None:
            if extra.get("format") != STATE_FORMAT_VERSION:
                raise ValueError(f"state dict format must be {STATE_FORMAT_VERSION}; got {extra.get('format')!r}")
            clock = extra.get("clock")
        super().load_state_dict(sd)
        # torch casts floating state to the param dtype; restore ours from the originals
        for pid, p in zip(ids, params):
            st_saved = saved_state.get(pid)
            if not st_saved:
                continue
            st = self.state[p]
            device = local(p).device
            sdt = self._state_dtype_for(p)
            for k, v in st_saved.items():
                if not isinstance(v, torch.Tensor):
                    continue
                if k == "step":
                    st[k] = v.detach().reshape(()).to(device=device, dtype=torch.float32).clone()
                elif k == "master_param":
                    st[k] = v.detach().to(device=device, dtype=torch.float32).clone()
                else:
                    st[k] = v.detach().to(device=device, dtype=sdt).clone() if not is_dtensor(v) else v.to(dtype=sdt)
        for g in self.param_groups:
            g.setdefault("lr_scale", 1.0)
            g.setdefault("schedule", None)
            self._check_group(g)
        device = local(params[0]).device if params else torch.device("cpu")
        if clock is not None:
            self._clock = torch.as_tensor(clock, dtype=torch.int64).to(device).clone()
        else:
            # a torch optimizer's state: the clock is the number of updates applied
            steps = [st["step"] for st in self.state.values() if "step" in st]
            self._clock = torch.zeros(L.NUM_CLOCKS, dtype=torch.int64, device=device)
            if steps:
                self._clock[L.CLOCK_STEPS] = torch.stack([torch.as_tensor(s, dtype=torch.float32).to(device).reshape(())
                                                          for s in steps]).max().to(torch.int64)
        self._invalidate()

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
                g.setdefault(name, default)
