"""The cached *plan* of an optimizer: its tensors sorted into buckets, each bucket's batch and backend.

A step checks a plan in two ways, both from host metadata only (no device value is read):

* :func:`reusable_grads`: is the cached plan still the optimizer (same parameters in the same groups,
  the same ones with gradients, the same storage of parameters and of every state tensor, the same state
  entries, the same amsgrad flags)? Then only this step's gradients are new. Storage, not identity: a
  loader that swaps storage under the same object (``state[p]["exp_avg"].data = t``) gets a new plan,
  never a write through the old pointer. This is the per-step host cost of a step, so every pass is a
  C-level ``map`` over the tensors (about 2000 tensors in well under a millisecond).
* otherwise :func:`check_new_plan` validates everything a new plan needs and changes nothing (a failed
  step leaves the optimizer as it was); :func:`build_plan` then creates the missing state and the batches.

One bucket per :class:`BucketKey` (parameter dtype, state dtype, master weights, amsgrad): one kernel
launch sequence per bucket, whatever its number of tensors.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from itertools import chain
from operator import attrgetter, is_
from typing import Any, Callable, Mapping, Sequence

import torch

from lrsched_fused.backends import Backend, select_backend
from lrsched_fused.checkpoint import describe_param
from lrsched_fused.functional import (SUPPORTED_DTYPES, GroupConfig, TensorBatch, check_state, flat, is_dense,
                                      is_dtensor, local, make_batch, same_layout, state_changes)
from lrsched_fused.functional.compressed import StateFormat, zeros_scales

from lrsched_fused.kernels import layout as L

from ._distributed import make_shard_allreduce

__all__ = ["BucketKey", "Bucket", "Plan", "PlanDraft", "grad_entries", "reusable_grads", "check_new_plan", "bucket_key",
           "build_plan", "grad_of"]

_GRAD = attrgetter("grad")
_DATA_PTR = torch.Tensor.data_ptr
_IS_CONTIGUOUS = torch.Tensor.is_contiguous


def _is_not_none(x: Any) -> bool:
    return x is not None


@dataclass(frozen=True)
class BucketKey:
    """What makes tensors share one kernel launch: dtypes, master weights, amsgrad maxima."""

    param_dtype: torch.dtype
    state_dtype: torch.dtype             # of exp_avg: a floating dtype, or int8 (block-quantized codes)
    master: int                          # layout.MASTER_*: none, fp32 copies, compact corrections
    amsgrad: bool


@dataclass
class Bucket:
    """The tensors of one :class:`BucketKey` and the backend that updates them."""

    key: BucketKey
    backend: Backend
    batch: TensorBatch
    params: list[torch.Tensor]            # the optimizer's parameters (DTensors stay DTensors here)
    rows: slice                           # rows of this bucket in the plan's steps / norms buffers
    allreduce: Callable[[torch.Tensor], None] | None = None
    has_dtensor: bool = False             # any parameter is a DTensor (found-inf flags agree across ranks)
    group_rows: list[int] = field(default_factory=list)  # host copy of batch.group_index (no device reads)
    #: a parameter listed k times in its group is updated k times per step: pass j >= 2 updates the first
    #: repeats[j - 2] tensors of the bucket (duplicates come first, most-listed first)
    repeats: list[int] = field(default_factory=list)


@dataclass
class Plan:
    """Everything a step reuses while the parameters, the presence of gradients and the state stay the same."""

    device: torch.device
    order: list[torch.Tensor]             # params with gradients in row order (buckets back to back)
    states: list[dict]                    # the state dict object of each param in `order`
    state_values: list                    # every value of every dict in `states`, in order
    state_ptrs: list[int]                 # the storage address of each of `state_values` (checked every step)
    steps: torch.Tensor                   # float32 [n]: per-param update counts (state["step"] are views)
    buckets: list[Bucket]
    all_params: list[torch.Tensor]        # every param of every group, in group order
    group_sizes: list[int]                # params per group (a param moved between groups changes them)
    has_grad: list[bool]                  # which of `all_params` had a gradient
    order_index: list[int]                # position in `all_params` of each param in `order`
    order_group: list[int]                # param group of each param in `order`
    amsgrad: list[bool]                   # each group's amsgrad flag (selects state tensors)
    param_ptrs: list[int]                 # data_ptr of each (local) param in `order`
    has_dtensor: bool = False
    gnorm: torch.Tensor | None = None     # float32 [rows, GN_COLS]: every bucket's gradient-norm partials
    compact: list = field(default_factory=list)  # params with compact master weights (corrections reset on edits)
    contiguous: bool = True               # every param is contiguous (else each gradient is checked for layout)
    extra: dict[str, Any] = field(default_factory=dict)   # per-plan buffers of the optimizer (tokens, norms)

    @property
    def primary(self) -> Backend:
        """The backend that runs the step's ``advance`` (one launch for the whole optimizer)."""
        return self.buckets[0].backend


@dataclass
class PlanDraft:
    """A plan checked but not built: what :func:`build_plan` needs, computed without changing anything."""

    device: torch.device
    entries: list[tuple[int, torch.Tensor]]               # (group index, param) of the params with gradients
    grads: dict[int, torch.Tensor]                       # id(param) -> the gradient the kernels read
    buckets: dict[BucketKey, list[tuple[int, torch.Tensor]]]
    backends: dict[BucketKey, Backend]
    listed: dict[int, int]                               # id(param) -> times its group lists it


def grad_entries(groups: Sequence[Mapping]) -> list[tuple[int, torch.Tensor]]:
    """``(group index, param)`` of every parameter that has a gradient, in group order."""
    return [(gi, p) for gi, group in enumerate(groups) for p in group["params"] if p.grad is not None]


def where(groups: Sequence[Mapping], gi: int, p: torch.Tensor) -> str:
    group = groups[gi]
    index = next((i for i, q in enumerate(group["params"]) if q is p), -1)
    return describe_param(group, gi, index, p)


def _placed_like(g: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """The local gradient of ``p``: a DTensor gradient placed unlike its parameter is redistributed first.
    Tensor parallelism gives ``Replicate`` parameters ``Partial`` gradients (each rank holds a summand);
    torch's AdamW sums them through DTensor's dispatch, and so must we (one collective per such tensor,
    issued in parameter order on every rank)."""
    if is_dtensor(g) and is_dtensor(p) and g.placements != p.placements:
        g = g.redistribute(p.device_mesh, p.placements)
    return local(g)


def grad_of(groups: Sequence[Mapping], gi: int, p: torch.Tensor) -> torch.Tensor:
    """The gradient the kernels read (a contiguous copy if ``p.grad`` is not contiguous), checked."""
    g = p.grad
    if g.is_sparse or g.layout != torch.strided:
        raise ValueError(f"the gradient of {where(groups, gi, p)} is sparse ({g.layout}); sparse gradients are not "
                         "supported (use torch.optim.SparseAdam)")
    if g.dtype != p.dtype:
        raise ValueError(f"the gradient of {where(groups, gi, p)} has dtype {g.dtype}; it must have the parameter's "
                         f"dtype {p.dtype}")
    g = _placed_like(g, p)
    if g.shape != local(p).shape:
        raise ValueError(f"the gradient of {where(groups, gi, p)} has shape {tuple(g.shape)}; it must have the "
                         f"parameter's shape {tuple(local(p).shape)}")
    if g.device != local(p).device:
        raise ValueError(f"the gradient of {where(groups, gi, p)} is on {g.device}; it must be on the parameter's "
                         f"device {local(p).device}")
    if same_layout(g, p):
        return flat(g)
    return flat(torch.empty_like(local(p)).copy_(g))  # a copy in the parameter's layout (one per step)


def _storage_ptrs(values: list, dtensors: bool) -> list[int] | None:
    """``data_ptr`` of every state value (local shards of DTensors; ``id`` of a non-tensor entry)."""
    if dtensors:
        values = [local(v) if isinstance(v, torch.Tensor) else v for v in values]
    try:
        return list(map(_DATA_PTR, values))  # one C-level pass when every entry is a plain tensor
    except TypeError:
        return [v.data_ptr() if isinstance(v, torch.Tensor) else id(v) for v in values]


def reusable_grads(plan: Plan, groups: Sequence[Mapping], state: Mapping, configs: Sequence[GroupConfig]
                   ) -> list[torch.Tensor] | None:
    """The kernels' gradients in the plan's row order if ``plan`` still describes the optimizer, else ``None``."""
    flat = [p for g in groups for p in g["params"]]
    if len(flat) != len(plan.all_params) or not all(map(is_, flat, plan.all_params)):
        return None
    if [len(g["params"]) for g in groups] != plan.group_sizes:
        return None
    grads_all = list(map(_GRAD, flat))
    if list(map(_is_not_none, grads_all)) != plan.has_grad:
        return None
    if [c.hyper.amsgrad for c in configs] != plan.amsgrad:
        return None
    grads = [grads_all[i] for i in plan.order_index]
    params = plan.order
    if plan.has_dtensor:
        grads = [_placed_like(g, p) for g, p in zip(grads, params)]
        params = [local(p) for p in params]
    if list(map(_DATA_PTR, params)) != plan.param_ptrs:
        return None
    if not all(map(is_, map(state.get, plan.order), plan.states)):
        return None
    # every entry of every state dict, by storage (one C-level pass): a replaced entry, or one whose storage
    # was swapped under the same object, or an added or removed one, rebuilds
    values = list(chain.from_iterable(map(dict.values, plan.states)))
    if len(values) != len(plan.state_values) or _storage_ptrs(values, plan.has_dtensor) != plan.state_ptrs:
        return None
    try:  # torch guarantees p.grad's dtype, shape and device; sparse grads raise here
        dense = plan.contiguous and all(map(_IS_CONTIGUOUS, grads))
    except RuntimeError:
        dense = False
    if not dense:  # a gradient to copy, or parameters laid out otherwise (transposed, channels_last)
        grads = [grad_of(groups, gi, p) for p, gi in zip(plan.order, plan.order_group)]
    return grads


def check_new_plan(entries: list[tuple[int, torch.Tensor]], groups: Sequence[Mapping], state: Mapping,
                   configs: Sequence[GroupConfig], options: Mapping[str, Any],
                   check_buckets: Callable[[list[list[torch.Tensor]]], None] | None = None) -> PlanDraft:
    """Everything a new plan needs, checked (``ValueError`` / ``BackendUnavailable``); changes nothing."""
    listed: dict[int, int] = {}
    for _, p in entries:
        listed[id(p)] = listed.get(id(p), 0) + 1
    if len(listed) < len(entries):  # a parameter listed twice in its group: one entry (see Bucket.repeats)
        seen: set[int] = set()
        entries = [e for e in entries if not (id(e[1]) in seen or seen.add(id(e[1])))]
    fmt = StateFormat.from_options(options)
    devices = {local(p).device for _, p in entries}
    if len(devices) > 1:
        raise ValueError(f"all parameters must be on one device; got {sorted(str(d) for d in devices)} "
                         "(create one optimizer per device)")
    device = devices.pop()
    grads: dict[int, torch.Tensor] = {}
    buckets: dict[BucketKey, list[tuple[int, torch.Tensor]]] = defaultdict(list)
    for gi, p in entries:
        here = where(groups, gi, p)
        if p.is_complex() or p.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"{here}: parameters must be float32, bfloat16, float16 or float64")
        if not is_dense(p):
            raise ValueError(f"{here} overlaps itself or has gaps (strides {local(p).stride()}, e.g. an expanded "
                             "view); the fused kernels update dense memory: make it contiguous "
                             "(p.data = p.data.contiguous())")
        grads[id(p)] = grad_of(groups, gi, p)
        check_state(p, state.get(p, {}), here)
        buckets[bucket_key(p, fmt, configs[gi].hyper.amsgrad, here)].append((gi, p))
    if len(listed) < sum(listed.values()):  # duplicates first, most-listed first (see Bucket.repeats)
        for key, items in buckets.items():
            items.sort(key=lambda e: -listed[id(e[1])])
            if any(is_dtensor(p) for _, p in items) and listed[id(items[0][1])] > 1:
                raise ValueError("a DTensor parameter is listed twice in its param group; list it once")
    if check_buckets is not None:
        check_buckets([[p for _, p in items] for items in buckets.values()])
    backends = {}
    for key in buckets:
        backend = select_backend(options["backend"], device)
        backend.check(device, key.param_dtype, key.state_dtype)
        backends[key] = backend
    return PlanDraft(device=device, entries=entries, grads=grads, buckets=dict(buckets), backends=backends,
                     listed=listed)



def bucket_key(p: torch.Tensor, fmt: StateFormat, amsgrad: bool, here: str) -> BucketKey:
    """The launch ``p`` belongs to under the storage options ``fmt``; ``ValueError`` (naming ``here``) where
    int8 moments cannot hold its state (amsgrad, a non-contiguous parameter, a DTensor sharded along its
    last dimension)."""
    if fmt.quantized(p):
        if amsgrad:
            raise ValueError(f"{here}: amsgrad has no int8 form (state_dtype='int8'); use a floating "
                             "state_dtype for amsgrad groups")
        if not local(p).is_contiguous():
            raise ValueError(f"{here}: int8 moments need a contiguous parameter (blocks run along its last "
                             "dimension)")
        zeros_scales(p, fmt.quant_block)  # raises for a DTensor sharded along its last dimension
    return BucketKey(p.dtype, fmt.moment_dtype(p), fmt.master_mode(p), amsgrad)

def build_plan(draft: PlanDraft, groups: Sequence[Mapping], state: Mapping, configs: Sequence[GroupConfig],
               clock: torch.Tensor, fmt: StateFormat, *, telemetry: bool = True) -> Plan:
    """Create the missing state of the draft's parameters (each holding ``clock``, the optimizer's clock on
    the draft's device), bring existing state to the device, and lay the buckets out (the run phase).
    ``telemetry``: the kernels write gradient-norm partials (``Plan.gnorm``); without it they write none."""
    device = draft.device
    # every new or moved state tensor first (a failure leaves all state as it was), then assign them all
    changes = [(p, *state_changes(p, state.get(p, {}), keys=configs[gi].hyper.state_keys, device=device,
                                  clock=clock, fmt=fmt))
               for key, items in draft.buckets.items() for gi, p in items]
    for p, put, drop in changes:
        st = state[p]
        st.update(put)
        for k in drop:
            del st[k]
    order: list[torch.Tensor] = []
    group_rows: list[int] = []
    spans = []
    for key, items in draft.buckets.items():
        spans.append((key, len(order), len(order) + len(items)))
        for gi, p in items:
            order.append(p)
            group_rows.append(gi)
    states = [state[p] for p in order]
    steps = torch.stack([st["step"].detach().reshape(()).to(device=device, dtype=torch.float32) for st in states])
    for i, st in enumerate(states):  # every state["step"] becomes a view into the one steps buffer
        st["step"] = steps[i]
    group_index = torch.tensor(group_rows, dtype=torch.int64, device=device)
    salt_of = {id(p): i for i, p in enumerate(q for g in groups for q in g["params"])}
    buckets = []
    for key, lo, hi in spans:
        params = order[lo:hi]
        batch = make_batch(params, [draft.grads[id(p)] for p in params], states[lo:hi], steps=steps[lo:hi],
                           group_index=group_index[lo:hi], amsgrad=key.amsgrad, master=key.master, fmt=fmt,
                           salts=[salt_of[id(p)] for p in params])
        has_dtensor = any(is_dtensor(p) for p in params)
        counts = [draft.listed[id(p)] for p in params]
        repeats = [sum(c >= j for c in counts) for j in range(2, max(counts, default=1) + 1)]
        buckets.append(Bucket(key=key, backend=draft.backends[key], batch=batch, params=params, rows=slice(lo, hi),
                              allreduce=make_shard_allreduce(params) if has_dtensor else None,
                              has_dtensor=has_dtensor, group_rows=group_rows[lo:hi], repeats=repeats))
    gnorm = _gnorm_buffers(buckets, device) if telemetry else None
    all_params = [p for g in groups for p in g["params"]]
    position = {id(p): i for i, p in enumerate(all_params)}
    has_dtensor = any(is_dtensor(p) for p in order)
    values = list(chain.from_iterable(map(dict.values, states)))
    return Plan(device=device, order=order, states=states, state_values=values,
                state_ptrs=_storage_ptrs(values, has_dtensor), steps=steps, buckets=buckets,
                all_params=all_params, group_sizes=[len(g["params"]) for g in groups],
                has_grad=[p.grad is not None for p in all_params],
                order_index=[position[id(p)] for p in order], order_group=group_rows,
                amsgrad=[c.hyper.amsgrad for c in configs], param_ptrs=[local(p).data_ptr() for p in order],
                has_dtensor=has_dtensor, gnorm=gnorm,
                compact=[p for b in buckets if b.key.master in (L.MASTER_CORR8, L.MASTER_CORR16) for p in b.params],
                contiguous=all(local(p).is_contiguous() for p in order))


def _gnorm_buffers(buckets: list[Bucket], device: torch.device) -> torch.Tensor | None:
    """One float32 ``[rows, GN_COLS]`` buffer for the gradient-norm partials of every bucket (each bucket's
    backend says how many rows it writes; a backend without ``gnorm_rows`` writes none)."""
    rows = [getattr(b.backend, "gnorm_rows", lambda batch: 0)(b.batch) if len(b.batch) else 0 for b in buckets]
    if not sum(rows):
        return None
    buf = torch.zeros(sum(rows), L.GN_COLS, dtype=torch.float32, device=device)
    lo = 0
    for bucket, n in zip(buckets, rows):
        if n:
            bucket.batch.gnorm_out = buf[lo:lo + n]
        lo += n
    return buf
