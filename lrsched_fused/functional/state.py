"""The state bundle of one parameter: which entries it holds, in which dtype, and how it is created.

A parameter's state is a dict in ``torch.optim.AdamW``'s layout, so state dicts move both ways::

    {"step": float32 0-d tensor (updates applied to this parameter),
     "exp_avg", "exp_avg_sq": moments, shaped like the parameter, in the state dtype,
     ["max_exp_avg_sq"]: AdamW amsgrad, ["master_param"]: fp32 copy of a bf16/fp16 parameter}

The **state dtype** is fp32 for bf16/fp16 parameters and the parameter's dtype otherwise (option
``None``), the parameter's dtype (``"param"``: torch's layout), or ``torch.float32`` / ``torch.bfloat16``.
Entries are created with ``zeros_like(p)`` so that a DTensor parameter gets DTensor moments with its
placements (FSDP2, DCP). Nothing here reads a device value.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

from lrsched_fused.backends import TensorBatch

__all__ = ["SUPPORTED_DTYPES", "LOW_PRECISION", "STATE_DTYPE_OPTIONS", "check_state_dtype_option", "state_dtype_for",
           "wants_master", "init_state", "check_state", "is_dtensor", "local", "make_batch"]

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
LOW_PRECISION = (torch.bfloat16, torch.float16)
#: what ``state_dtype=`` accepts
STATE_DTYPE_OPTIONS = (None, "param", torch.float32, torch.bfloat16)
#: the moment-like entries any algorithm may hold (same shape as the parameter, state dtype)
MOMENT_KEYS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def is_dtensor(t: torch.Tensor) -> bool:
    return type(t).__name__ == "DTensor" and hasattr(t, "to_local")


def local(t: torch.Tensor) -> torch.Tensor:
    """The tensor a kernel updates: the local shard of a DTensor, else the tensor itself."""
    return t.to_local() if is_dtensor(t) else t


def check_state_dtype_option(value: Any) -> Any:
    if value not in STATE_DTYPE_OPTIONS:
        raise ValueError(f"state_dtype must be None (fp32 for bf16/fp16 params, else the param dtype), 'param', "
                         f"torch.float32 or torch.bfloat16; got {value!r}")
    return value


def state_dtype_for(param_dtype: torch.dtype, option: Any) -> torch.dtype:
    """The dtype of the moments of a parameter of ``param_dtype`` under the ``state_dtype`` option."""
    if option == "param":
        return param_dtype
    if option is None:
        return torch.float32 if param_dtype in LOW_PRECISION else param_dtype
    return option


def wants_master(param_dtype: torch.dtype, master_weights: bool) -> bool:
    """Whether a parameter keeps an fp32 ``master_param`` (only bf16/fp16 ones, when asked)."""
    return bool(master_weights) and param_dtype in LOW_PRECISION


def check_state(p: torch.Tensor, st: dict, where: str, required: Iterable[str] = ("exp_avg", "exp_avg_sq")) -> None:
    """``ValueError`` (naming ``where``) unless an existing state fits ``p``: ``step`` a one-element tensor,
    ``required`` present, moment-like entries and ``master_param`` floating-point tensors of ``p``'s
    (local) shape. An empty state passes (it is created on first use)."""
    if not st:
        return
    missing = [k for k in ("step", *required) if k not in st]
    if missing:
        raise ValueError(f"the optimizer state of {where} lacks {missing}")
    step = st["step"]
    if not isinstance(step, torch.Tensor) or step.numel() != 1:
        raise ValueError(f"state['step'] of {where} must be a one-element tensor; got {step!r}")
    shape = local(p).shape
    for k in MOMENT_KEYS + ("master_param",):
        if k not in st:
            continue
        t = st[k]
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise ValueError(f"state[{k!r}] of {where} must be a floating-point tensor; got "
                             f"{getattr(t, 'dtype', type(t).__name__)}")
        if local(t).shape != shape:
            raise ValueError(f"state[{k!r}] of {where} has shape {tuple(local(t).shape)} but the parameter has "
                             f"shape {tuple(shape)}: the state does not fit the model")


def init_state(p: torch.Tensor, st: dict, *, keys: Iterable[str], state_dtype: torch.dtype, master: bool,
               device: torch.device) -> None:
    """Create the missing entries of ``st`` (zeros, ``step`` 0) and bring existing moments to ``state_dtype``
    on ``device`` (contiguous). ``master``: keep (or create from ``p``) an fp32 ``master_param``, else drop it."""
    if not st:
        st["step"] = torch.zeros((), dtype=torch.float32, device=device)
    for k in keys:
        if k not in st:
            st[k] = torch.zeros_like(p, dtype=state_dtype, memory_format=torch.preserve_format)
    for k in MOMENT_KEYS:
        t = st.get(k)
        if t is not None and (t.dtype != state_dtype or local(t).device != device or not local(t).is_contiguous()):
            st[k] = t.to(dtype=state_dtype) if is_dtensor(t) else t.to(device=device, dtype=state_dtype).contiguous()
    if master:
        if "master_param" not in st:
            st["master_param"] = p.detach().clone().to(torch.float32)
    else:
        st.pop("master_param", None)


def make_batch(params: list[torch.Tensor], grads: list[torch.Tensor], states: list[dict], *, steps: torch.Tensor,
               group_index: torch.Tensor, amsgrad: bool, master: bool) -> TensorBatch:
    """The :class:`~lrsched_fused.backends.TensorBatch` of parameters and their state bundles (local shards
    of DTensors). ``steps`` (float32 ``[n]``) and ``group_index`` (int64 ``[n]``) are on the parameters'
    device; ``steps`` is read as each tensor's update count and advanced by ``advance``."""
    return TensorBatch(
        params=[local(p) for p in params],
        grads=[local(g) for g in grads],
        exp_avgs=[local(st["exp_avg"]) for st in states],
        exp_avg_sqs=[local(st["exp_avg_sq"]) for st in states],
        max_exp_avg_sqs=[local(st["max_exp_avg_sq"]) for st in states] if amsgrad else None,
        master_params=[local(st["master_param"]) for st in states] if master else None,
        group_index=group_index,
        steps=steps,
    )
