"""The state bundle of one parameter: which entries it holds, in which dtype, and how it is created.

A parameter's state is a dict in ``torch.optim.AdamW``'s layout, so state dicts move both ways::

    {"step": float32 0-d tensor (updates applied to this parameter),
     "clock": the optimizer's int64 [2] device clock (updates applied, tokens consumed), one tensor
              shared by every parameter's state (so that every checkpoint path carries it),
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
from lrsched_fused.kernels import layout as L

from .compressed import QUANT_KEYS, StateFormat, elem_offset, last_dim, master_entries, moment_entries

__all__ = ["SUPPORTED_DTYPES", "LOW_PRECISION", "STATE_DTYPE_OPTIONS", "check_state_dtype_option", "state_dtype_for",
           "wants_master", "init_state", "state_changes", "is_dense", "same_layout", "flat", "check_state", "is_dtensor", "local", "make_batch"]

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


def is_dense(t: torch.Tensor) -> bool:
    """Whether a kernel can update ``t`` as flat memory: its elements fill one block without gaps or overlap
    (contiguous, or a permutation of contiguous: a transposed view, ``channels_last``)."""
    t = local(t)
    if t.is_contiguous():
        return True
    expected = 1  # each dimension's stride, smallest first, is the product of the sizes of those before it
    for stride, size in sorted((st, sz) for sz, st in zip(t.shape, t.stride()) if sz != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def same_layout(t: torch.Tensor, p: torch.Tensor) -> bool:
    """Whether ``t`` lays its elements out in memory as ``p`` does (element ``i`` of both flat blocks is the
    same index): what an elementwise kernel over flat memory needs of a parameter's gradient and state."""
    t, p = local(t), local(p)
    return (t.is_contiguous() and p.is_contiguous()) or (t.shape == p.shape and t.stride() == p.stride())


def flat(t: torch.Tensor) -> torch.Tensor:
    """A dense tensor as a contiguous 1-d view of its memory block (itself if contiguous). Every tensor of a
    batch is handed to the kernels this way; with :func:`same_layout` tensors the elements correspond."""
    return t if t.is_contiguous() else t.as_strided((t.numel(),), (1,), t.storage_offset())


def like_param(t: torch.Tensor, p: torch.Tensor, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``t`` (shaped like ``p``) as ``dtype`` on ``device`` in ``p``'s memory layout, copied only if needed."""
    t = t.to(device=device, dtype=dtype)
    if same_layout(t, p):
        return t
    out = torch.empty_like(local(p), dtype=dtype, device=device)
    return out.copy_(t)


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
    clock = st.get("clock")
    if clock is not None and (not isinstance(clock, torch.Tensor) or clock.numel() != 2):
        raise ValueError(f"state['clock'] of {where} must be the optimizer's clock (a 2-element tensor); got {clock!r}")
    shape = local(p).shape
    for k in MOMENT_KEYS + ("master_param", "master_correction"):
        if k not in st:
            continue
        t = st[k]
        codes = (torch.int8, torch.uint8) if k in QUANT_KEYS else (torch.int8, torch.int16) \
            if k == "master_correction" else ()
        if not isinstance(t, torch.Tensor) or not (t.is_floating_point() or t.dtype in codes):
            raise ValueError(f"state[{k!r}] of {where} must be a floating-point tensor"
                             f"{' or integer codes' if codes else ''}; got {getattr(t, 'dtype', type(t).__name__)}")
        if local(t).shape != shape:
            raise ValueError(f"state[{k!r}] of {where} has shape {tuple(local(t).shape)} but the parameter has "
                             f"shape {tuple(shape)}: the state does not fit the model")


def state_changes(p: torch.Tensor, st: dict, *, keys: Iterable[str], state_dtype: torch.dtype | None = None,
                  master: bool = False, device: torch.device, clock: torch.Tensor | None = None,
                  fmt: StateFormat | None = None) -> tuple[dict, list[str]]:
    """What :func:`init_state` would do to ``st``, computed without touching it: ``(entries to set, keys to
    drop)``. Every new tensor (created, converted or moved) is made here, so a failure (a device that
    cannot be reached, out of memory) raises before any state of any parameter changes. ``fmt`` (a
    :class:`StateFormat`) decides the form of the moments and master weights; without it, floating moments
    of ``state_dtype`` and, with ``master``, an fp32 master copy."""
    put: dict[str, Any] = {}
    if not st:
        put["step"] = torch.zeros((), dtype=torch.float32, device=device)
    elif isinstance(st.get("step"), torch.Tensor) and st["step"].device != device:
        put["step"] = st["step"].to(device)
    if clock is not None and st.get("clock") is not clock:
        put["clock"] = clock
    drop: list[str] = []
    if fmt is not None:
        put.update(moment_entries(p, st, fmt, device))
    if fmt is not None and fmt.quantized(p):
        keys = [k for k in keys if k not in QUANT_KEYS]
    else:
        if fmt is not None:
            state_dtype = fmt.moment_dtype(p)
            drop += [k for k in QUANT_KEYS.values() if k in st]
        view = {**st, **put}
        for k in keys:
            if k not in view:
                put[k] = torch.zeros_like(p, dtype=state_dtype, memory_format=torch.preserve_format)
        for k in MOMENT_KEYS:
            t = view.get(k)
            if t is not None and k not in put and (t.dtype != state_dtype or local(t).device != device
                                                   or not same_layout(t, p)):
                put[k] = t.to(dtype=state_dtype) if is_dtensor(t) else like_param(t, p, dtype=state_dtype, device=device)
    mode = fmt.master_mode(p) if fmt is not None else (L.MASTER_FP32 if wants_master(p.dtype, master) else L.MASTER_NONE)
    extra, gone = master_entries(p, st, mode, device)
    put.update(extra)
    drop += gone
    m = put.get("master_param", st.get("master_param") if mode == L.MASTER_FP32 else None)
    if m is not None and not is_dtensor(m) and not same_layout(m, p):
        put["master_param"] = like_param(m, p, dtype=torch.float32, device=device)
    return put, drop


def init_state(p: torch.Tensor, st: dict, *, keys: Iterable[str], state_dtype: torch.dtype | None = None,
               master: bool = False, device: torch.device, clock: torch.Tensor | None = None,
               fmt: StateFormat | None = None) -> None:
    """Create the missing entries of ``st`` (zeros, ``step`` 0), bring existing moments to their form (a
    :class:`StateFormat`, or floating ``state_dtype``) on ``device`` in ``p``'s layout, ``step`` to ``device``,
    and the master weight to its form (``master``: an fp32 copy). ``clock``: the optimizer's clock, held as
    ``st["clock"]``. (:func:`state_changes` then applied.)"""
    put, drop = state_changes(p, st, keys=keys, state_dtype=state_dtype, master=master, device=device, clock=clock,
                              fmt=fmt)
    st.update(put)
    for k in drop:
        del st[k]


def make_batch(params: list[torch.Tensor], grads: list[torch.Tensor], states: list[dict], *, steps: torch.Tensor,
               group_index: torch.Tensor, amsgrad: bool, master: bool | int,
               fmt: StateFormat | None = None, salts: list[int] | None = None) -> TensorBatch:
    """The :class:`~lrsched_fused.backends.TensorBatch` of parameters and their state bundles (local shards
    of DTensors; each tensor as the flat view of its memory, :func:`flat`: gradients and state must have
    their parameter's layout, :func:`same_layout`). ``steps`` (float32 ``[n]``) and ``group_index`` (int64
    ``[n]``) are on the parameters' device; ``steps`` is read as each tensor's update count and advanced by
    ``advance``. ``master``: ``layout.MASTER_*`` (or a bool: fp32 masters); ``fmt``: the quantization block,
    stochastic rounding (the bucket's tensors share one form); ``salts``: the parameters' positions in
    their optimizer."""
    def lay(ts):
        return [flat(local(t)) for t in ts]

    mode = (L.MASTER_FP32 if master else L.MASTER_NONE) if isinstance(master, bool) else master
    quantized = bool(states) and states[0].get("exp_avg") is not None and states[0]["exp_avg"].dtype == torch.int8
    master_key = "master_param" if mode == L.MASTER_FP32 else "master_correction"
    return TensorBatch(
        params=lay(params),
        grads=lay(grads),
        exp_avgs=lay(st["exp_avg"] for st in states),
        exp_avg_sqs=lay(st["exp_avg_sq"] for st in states),
        max_exp_avg_sqs=lay(st["max_exp_avg_sq"] for st in states) if amsgrad else None,
        master_params=lay(st[master_key] for st in states) if mode != L.MASTER_NONE else None,
        group_index=group_index,
        steps=steps,
        exp_avg_scales=lay(st["exp_avg_scale"] for st in states) if quantized else None,
        exp_avg_sq_scales=lay(st["exp_avg_sq_scale"] for st in states) if quantized else None,
        last_dims=[last_dim(p) for p in params],
        elem_offsets=[elem_offset(p) for p in params] if fmt is not None and fmt.stochastic_rounding else None,
        salts=salts,
        quant_block=fmt.quant_block if fmt is not None else L.QUANT_BLOCK,
        stochastic_rounding=bool(fmt is not None and fmt.stochastic_rounding),
    )
