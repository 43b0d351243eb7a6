"""Loading a state dict: everything is validated and built first (:func:`prepare_load`), without touching
the optimizer, which then adopts the result (see :mod:`lrsched_fused.checkpoint`)."""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Mapping
from copy import deepcopy
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from lrsched_fused._validate import MAX_CLOCK, check_count
from lrsched_fused.functional import is_dtensor, local, normalize_group
from lrsched_fused.functional.compressed import QUANT_KEYS
from lrsched_fused.functional.state import MOMENT_KEYS
from lrsched_fused.kernels import layout as L
from lrsched_fused.schedules import Schedule

from ._format import EXTRA_KEY, GROUP_CLOCK_KEY, STATE_CLOCK_KEY, STATE_FORMAT_VERSION, describe_param

__all__ = ["LoadedState", "prepare_load", "clock_values"]


@dataclass
class LoadedState:
    """What :func:`prepare_load` hands the optimizer to adopt (nothing of it is shared with the input)."""

    groups: list[dict]
    state: defaultdict
    clock: torch.Tensor
    options: dict[str, Any] = field(default_factory=dict)
    clock_values: list[int] = field(default_factory=list)   # the clock's values, known on the host


def _number(value: Any, what: str) -> Any:
    """A one-element tensor hyperparameter of a torch state dict (torch allows tensor lr / betas) as a
    float; everything else unchanged (validated later)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_complex():
            raise ValueError(f"{what} must be a number or a one-element real tensor; got a tensor of shape "
                             f"{tuple(value.shape)}")
        return float(value.detach().reshape(()).to("cpu"))
    return value


def _loaded_group(opt, gi: int, current: dict, saved: Any, ours: bool) -> dict:
    """The param group ``gi`` after loading ``saved`` (validated, normalised, params from ``current``)."""
    where = f"loaded param_groups[{gi}]"
    if not isinstance(saved, Mapping) or not isinstance(saved.get("params"), (list, tuple)):
        raise ValueError(f"{where} must be a dict with a 'params' list")
    new = {k: deepcopy(v) for k, v in saved.items() if k not in ("params", GROUP_CLOCK_KEY)}
    if "lr" in new:
        new["lr"] = _number(new["lr"], f"{where}['lr']")
    if isinstance(new.get("betas"), (list, tuple)):
        new["betas"] = tuple(_number(b, f"{where}['betas']") for b in new["betas"])
    if ours:
        new.setdefault("schedule", None)
    elif current.get("schedule") is not None:
        # a torch state dict has no schedules: this optimizer's schedule keeps driving the group
        new["schedule"], new["lr"] = current["schedule"], current["lr"]
    else:
        new["schedule"] = None
    if not ours and "lr_scale" not in new:
        new["lr_scale"] = current.get("lr_scale", 1.0)
    for name, default in opt.defaults.items():
        if name != "params":
            new.setdefault(name, deepcopy(default))
    try:
        normalize_group(new, opt.hyperparams, explicit_lr=True)
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{where}: {exc}") from None
    new["params"] = current["params"]
    if "param_names" in current and "param_names" not in new:
        new["param_names"] = current["param_names"]
    return new


def _state_tensor(value: Any, where: str, key: str, shape: torch.Size, device: torch.device,
                  dtype: torch.dtype | None, codes: tuple = ()) -> torch.Tensor:
    """A moment-like state entry checked against its parameter and moved to ``device`` / ``dtype``
    (always a new, contiguous tensor: the checkpoint's tensors are never aliased). Integer ``codes`` dtypes
    (compressed state) are kept as they are: the optimizer converts forms when it builds its plan."""
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"state[{key!r}] of {where} must be a tensor; got {type(value).__name__}")
    if value.dtype in codes:
        dtype = value.dtype
    elif not value.is_floating_point():
        raise ValueError(f"state[{key!r}] of {where} must be a floating-point tensor"
                         f"{' or integer codes' if codes else ''}; got {value.dtype}")
    if tuple(local(value).shape) != tuple(shape):
        raise ValueError(f"state[{key!r}] of {where} has shape {tuple(local(value).shape)} but the parameter has "
                         f"shape {tuple(shape)}: the state does not fit the model")
    if is_dtensor(value):
        return value.to(dtype=dtype, copy=True)  # a DTensor too: never alias the checkpoint's tensors
    return value.detach().to(device=device, dtype=dtype, copy=True).contiguous()


def _step_value(value: Any, where: str) -> torch.Tensor:
    """``state["step"]`` of a checkpoint as a 0-d float32 tensor where it is (torch may hold it on the CPU,
    as a 1-element tensor, or, in old checkpoints, as a Python number)."""
    if isinstance(value, bool) or not isinstance(value, (torch.Tensor, int, float)):
        raise ValueError(f"state['step'] of {where} must be a tensor or a number; got {type(value).__name__}")
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_complex():
            raise ValueError(f"state['step'] of {where} must hold one real number; got a tensor of shape "
                             f"{tuple(value.shape)}")
        value = value.detach()
    return torch.as_tensor(value).reshape(()).to(torch.float32)


def _check_steps(steps: list[torch.Tensor], wheres: list[str]) -> int:
    """Each step must be a whole number in ``[0, 2**62]``; returns the largest (0 if none). One host read
    per device the checkpoint's steps are on."""
    if not steps:
        return 0
    by_device: dict[torch.device, list[int]] = {}
    for i, s in enumerate(steps):
        by_device.setdefault(s.device, []).append(i)
    values = [0.0] * len(steps)
    for device, indices in by_device.items():
        for i, v in zip(indices, torch.stack([steps[i] for i in indices]).double().cpu().tolist()):
            values[i] = v
    for i, v in enumerate(values):
        if not (math.isfinite(v) and 0 <= v <= MAX_CLOCK and v == round(v)):
            raise ValueError(f"state['step'] of {wheres[i]} must be a whole number of updates >= 0; got {v!r}")
    return int(max(values))


def clock_values(clock: Any, what: str) -> list[int]:
    t = torch.as_tensor(clock)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool or tuple(t.shape) != (L.NUM_CLOCKS,):
        raise ValueError(f"{what} must be an int64 tensor (or list of ints) of shape [{L.NUM_CLOCKS}] (updates "
                         f"applied, tokens consumed); got {t.dtype} of shape {tuple(t.shape)}")
    values = t.detach().to("cpu").tolist()
    for name, v in zip(("steps", "tokens"), values):
        check_count(v, f"{what} ({name})")
    return values


#: float32 holds every whole number up to 2**24 exactly (a clock that went through a torch optimizer's load)
_FLOAT32_EXACT = 2**24


def _state_clock(value: Any, where: str) -> tuple[list[int], bool]:
    """``state["clock"]`` of a checkpoint: ``[updates applied, tokens consumed]`` and whether it was stored as
    floating point. Ours is int64; ``torch.optim.AdamW`` casts unknown state tensors to the parameter's
    dtype when it loads our state dict, so a clock that went through it comes back as floats."""
    if not isinstance(value, torch.Tensor) or value.numel() != L.NUM_CLOCKS or value.is_complex() \
            or value.dtype == torch.bool:
        raise ValueError(f"state[{STATE_CLOCK_KEY!r}] of {where} must be an int64 tensor of {L.NUM_CLOCKS} elements "
                         f"(updates applied, tokens consumed); got {value!r}")
    floating = value.is_floating_point()
    raw = value.detach().reshape(-1).to("cpu", torch.float64 if floating else torch.int64).tolist()
    if floating:
        if not all(math.isfinite(v) and v == round(v) for v in raw):
            raise ValueError(f"state[{STATE_CLOCK_KEY!r}] of {where} must hold whole numbers; got {raw}")
        raw = [int(v) for v in raw]
    for name, v in zip(("steps", "tokens"), raw):
        check_count(v, f"state[{STATE_CLOCK_KEY!r}] of {where} ({name})")
    return raw, floating


def _clock_from_states(clocks: list[tuple[list[int], bool, str]], max_step: int) -> list[int] | None:
    """The clock the loaded state entries agree on (``None`` if no entry has one)."""
    if not clocks:
        return None
    values, floating, where = clocks[0]
    for other, _, other_where in clocks[1:]:
        if other != values:
            raise ValueError(f"the loaded state entries disagree on the clock: {values} ({where}) and {other} "
                             f"({other_where}); every entry is a copy of the optimizer's one clock")
    if any(f for _, f, _ in clocks):
        if max(values) > _FLOAT32_EXACT:
            warnings.warn(f"the loaded clock {values} went through a float32 copy (a torch optimizer's load_state_dict "
                          f"casts state tensors to the parameter's dtype), which is exact only up to 2**24: set the "
                          "clock with opt.set_clock(...) if it must be exact", RuntimeWarning, stacklevel=5)
        if max_step > values[L.CLOCK_STEPS]:  # a torch optimizer trained on after loading ours: its steps moved
            warnings.warn(f"the state's clock ({values[L.CLOCK_STEPS]} updates) is behind the largest per-parameter "
                          f"step ({max_step}): the state was trained on by another optimizer after it was written; "
                          f"using {max_step}", RuntimeWarning, stacklevel=5)
            values = [max_step, values[L.CLOCK_TOKENS]]
    return values


def _loaded_clock(extra: Mapping | None, saved_groups: Sequence, new_groups: Sequence[dict], max_step: int,
                  device: torch.device, state_clocks: list[tuple[list[int], bool, str]]) -> list[int]:
    """The clock to adopt: the state entries' (where every checkpoint path keeps it), else the top-level
    entry, else the groups' copies, else derived from the steps. Every source given is validated."""
    from_states = _clock_from_states(state_clocks, max_step)
    top = None
    if extra is not None and "clock" in extra:
        clock = extra["clock"]
        top = [0] * L.NUM_CLOCKS if clock is None else clock_values(clock, "the checkpoint's clock")
    copies = None
    if saved_groups and all(isinstance(g, Mapping) and GROUP_CLOCK_KEY in g for g in saved_groups):
        copies = [None if g[GROUP_CLOCK_KEY] is None else
                  clock_values(g[GROUP_CLOCK_KEY], f"loaded param_groups[{gi}]['{GROUP_CLOCK_KEY}']")
                  for gi, g in enumerate(saved_groups)]
        if any(c != copies[0] for c in copies):
            raise ValueError(f"the loaded param groups hold different clocks {copies}; they are copies of one clock")
    if from_states is not None:
        values = from_states
    elif top is not None:
        values = top
    elif copies is not None:
        values = [0] * L.NUM_CLOCKS if copies[0] is None else copies[0]
        if max_step > values[L.CLOCK_STEPS]:
            warnings.warn(f"the param groups' clock ({values[L.CLOCK_STEPS]} updates) is behind the largest per-"
                          f"parameter step ({max_step}): the state was trained on by another optimizer after it "
                          f"was written; using {max_step}", RuntimeWarning, stacklevel=4)
            values = [max_step, values[L.CLOCK_TOKENS]]
    else:
        values = [max_step, 0]
        if max_step > _FLOAT32_EXACT:
            warnings.warn(f"the loaded state dict has no clock (a torch optimizer's): the step clock is the largest "
                          f"per-parameter step, {max_step}, a float32 count that is exact only up to 2**24; our clock "
                          "is int64: set it with opt.set_clock(steps=...) if you know the exact count",
                          RuntimeWarning, stacklevel=4)
        if any(isinstance(g.get("schedule"), Schedule) and g["schedule"].unit == "tokens" for g in new_groups):
            warnings.warn("the loaded state dict has no clock (a torch optimizer's): the step clock is the largest "
                          "per-parameter step, the token clock starts at 0; set it with opt.set_clock(tokens=...)",
                          RuntimeWarning, stacklevel=4)
    return values


def prepare_load(opt, state_dict: Mapping[str, Any]) -> LoadedState:
    """Validate ``state_dict`` against ``opt`` (a FusedOptimizer) and build what loading it produces.

    Nothing of ``opt`` changes here. Raises ``ValueError`` naming what does not fit.
    """
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"state_dict must be a dict; got {type(state_dict).__name__}")
    saved_state, saved_groups = state_dict.get("state"), state_dict.get("param_groups")
    if not isinstance(saved_state, Mapping) or not isinstance(saved_groups, (list, tuple)):
        raise ValueError("state_dict must have 'state' (dict) and 'param_groups' (list) entries, as "
                         "optimizer.state_dict() returns")
    extra = state_dict.get(EXTRA_KEY)
    ours = extra is not None
    if ours:
        if not isinstance(extra, Mapping):
            raise ValueError(f"state_dict[{EXTRA_KEY!r}] must be a dict")
        if extra.get("format") != STATE_FORMAT_VERSION:
            raise ValueError(f"state_dict[{EXTRA_KEY!r}]['format'] must be {STATE_FORMAT_VERSION} (this version of "
                             f"lrsched_fused); got {extra.get('format')!r}")
    # our groups always carry "schedule" (also through DCP, which drops the top-level entry)
    ours_groups = ours or (bool(saved_groups) and all(isinstance(g, Mapping) and "schedule" in g for g in saved_groups))
    groups = opt.param_groups
    if len(groups) != len(saved_groups):
        raise ValueError(f"the loaded state dict has {len(saved_groups)} param groups; this optimizer has "
                         f"{len(groups)}")
    new_groups = [_loaded_group(opt, gi, g, sg, ours_groups) for gi, (g, sg) in enumerate(zip(groups, saved_groups))]
    where_of: dict[Any, tuple[int, int, torch.Tensor]] = {}
    for gi, (g, sg) in enumerate(zip(groups, saved_groups)):
        if len(g["params"]) != len(sg["params"]):
            raise ValueError(f"loaded param_groups[{gi}] has {len(sg['params'])} params; this optimizer's has "
                             f"{len(g['params'])}")
        for index, (pid, p) in enumerate(zip(sg["params"], g["params"])):
            if pid in where_of:
                if where_of[pid][2] is p and where_of[pid][0] == gi:  # listed twice in its group (torch allows it)
                    continue
                raise ValueError(f"loaded param_groups[{gi}] lists param id {pid!r} a second time")
            where_of[pid] = (gi, index, p)
    unknown = [k for k in saved_state if k not in where_of]
    if unknown:
        raise ValueError(f"the loaded state has entries for param ids {unknown[:5]!r} that no loaded param group lists")

    device = local(groups[0]["params"][0]).device if groups and groups[0]["params"] else torch.device("cpu")
    state: defaultdict = defaultdict(dict)
    steps, step_wheres = [], []
    clocks: list[tuple[list[int], bool, str]] = []
    for pid, st in saved_state.items():
        gi, index, p = where_of[pid]
        where = describe_param(new_groups[gi], gi, index, p)
        if not isinstance(st, Mapping):
            raise ValueError(f"the loaded state of {where} must be a dict; got {type(st).__name__}")
        if not st:
            continue
        missing = [k for k in ("step", "exp_avg", "exp_avg_sq") if k not in st]
        if missing:
            raise ValueError(f"the loaded state of {where} lacks {missing}")
        fmt = opt.state_format
        pdev, shape = local(p).device, local(p).shape
        sdt = torch.float32 if fmt.quantized(p) else fmt.moment_dtype(p)  # codes come later (the plan encodes)
        new: dict[str, Any] = {}
        for k, v in st.items():
            if k == "step":
                step = _step_value(v, where)
                new[k] = step.to(device=pdev, copy=True)
                steps.append(step)
                step_wheres.append(where)
            elif k == STATE_CLOCK_KEY:
                clocks.append((*_state_clock(v, where), where))
            elif k in MOMENT_KEYS:
                new[k] = _state_tensor(v, where, k, shape, pdev, sdt, codes=(torch.int8, torch.uint8))
            elif k in QUANT_KEYS.values():  # block scales: shaped by the quantization block, checked at the plan
                if not isinstance(v, torch.Tensor) or v.dtype != torch.float32:
                    raise ValueError(f"state[{k!r}] of {where} must be a float32 tensor of block scales")
                new[k] = v.to(dtype=torch.float32, copy=True) if is_dtensor(v) else v.detach().to(pdev, copy=True)
            elif k == "master_param":
                new[k] = _state_tensor(v, where, k, shape, pdev, torch.float32)
            elif k == "master_correction":
                new[k] = _state_tensor(v, where, k, shape, pdev, None, codes=(torch.int8, torch.int16))
            elif isinstance(v, torch.Tensor):
                new[k] = v.detach().to(device=pdev, copy=True)
            else:
                new[k] = deepcopy(v)
        state[p] = new
    max_step = _check_steps(steps, step_wheres)
    clock_values = _loaded_clock(extra if ours else None, saved_groups, new_groups, max_step, device, clocks)
    clock = torch.tensor(clock_values, dtype=torch.int64).to(device)
    for st in state.values():  # every state entry holds the one clock the optimizer adopts
        st[STATE_CLOCK_KEY] = clock
    options = _loaded_options(opt, extra.get("options") or {}) if ours else {}
    return LoadedState(groups=new_groups, state=state, clock=clock, options=options, clock_values=clock_values)


def _loaded_options(opt, options: Mapping[str, Any]) -> dict[str, Any]:
    """Options that are hyperparameters (``opt.hyperparams.checkpoint_options``, e.g. LAMB's ``max_grad_norm``):
    the checkpoint's value wins, as for the param groups' hyperparameters. Runtime choices (backend,
    skip_nonfinite, master_weights, state_dtype) stay with the loading optimizer."""
    if not isinstance(options, Mapping):
        raise ValueError(f"state_dict[{EXTRA_KEY!r}]['options'] must be a dict")
    out = {}
    for name, check in opt.hyperparams.checkpoint_options.items():
        if name in options:
            out[name] = check(options[name], f"the checkpoint's option {name}")
    return out
