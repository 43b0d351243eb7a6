r"""Collectives for sharded parameters (FSDP2, HSDP, tensor parallel): what makes LAMB's norms whole.

The kernels only ever see local tensors (``DTensor.to_local()``; ``_plan.local``): moments, decay and
the Adam direction are elementwise, so a rank updates its shard exactly as a single process would
update those elements. Three quantities are *not* elementwise and are reduced here:

=====================================  =======================  =========================================
quantity                               when                     collectives per step (FSDP2 / HSDP)
=====================================  =======================  =========================================
LAMB per-tensor sums                   every LAMB step          1: ``all_reduce(SUM)`` of one float32
``[sum w^2, sum u^2]``                                          ``[n_tensors, 2]`` buffer, between the
                                                                backend's two stages
global gradient sum of squares         LAMB ``max_grad_norm``   1: ``all_reduce(SUM)`` of one scalar
found-inf flag                         ``skip_nonfinite=True``  1: ``all_reduce(MAX)`` of one scalar
=====================================  =======================  =========================================

AdamW needs none of them: a FusedAdamW step issues no collective (``skip_nonfinite`` adds the flag).

**Whole-tensor norms** (You et al., arXiv 1904.00962 v5, Algorithm 2: the trust ratio of layer ``i`` is
``||x_i|| / ||r_i + lambda x_i||`` over the *whole* layer). With ``x`` split into shards ``x^(s)`` along a
mesh dimension of size ``S``, ``||x||^2 = sum_{s<S} ||x^(s)||^2``: each rank writes the sums of squares of
its shards into one ``[n, 2]`` buffer (the backend's stage 1), one all-reduce sums it over the ranks that
hold the other shards, and every rank then computes the same ratio (stage 2). Uneven and empty shards
need nothing special: an empty shard contributes 0.

**Which group.** For a ``DTensor`` on ``mesh`` with ``placements``, the mesh dimensions ``d`` with a
``Shard`` placement (``_StridedShard`` included) are the ones to sum over; ``Replicate`` dimensions hold
identical copies and must not be summed. Hence

* FSDP2 (``fully_shard`` on a 1-d mesh, ``(Shard(0),)``): one all-reduce over the FSDP group.
* HSDP (``fully_shard`` on a 2-d ``(replicate, shard)`` mesh, ``(Replicate(), Shard(0))``): one
  all-reduce over the *shard* group of the rank (size ``mesh.size(1)``); replicas never talk here (their
  gradients were already averaged by FSDP's all-reduce over the replicate dimension).
* FSDP + tensor parallel (``(Shard(0), Shard(k))`` on a ``(dp, tp)`` mesh): one all-reduce per sharded
  mesh dimension, in mesh order (2).
* Plain tensors and all-``Replicate`` DTensors (DDP, ``replicate``): nothing; a mesh dimension of size 1
  is skipped too (HSDP with one shard per replica issues no collective).

A bucket may mix placements and meshes (e.g. TP's replicated biases next to sharded weights, or
experts on their own mesh). Each reduction step ``(mesh, d)`` all-reduces only the rows of the tensors
sharded along it (the whole buffer in place when that is every row, else a gathered copy of those rows);
the other rows already hold whole values. Steps run in the order their ``(mesh, d)`` first appears in the
parameter list, which every rank of an SPMD program shares, so the collectives match across ranks.

**Clipping.** The global norm ``||g||`` over all parameters sums every tensor's (local) sum of squares.
The backends give one total per bucket, so each bucket's tensors must be sharded alike
(:attr:`ShardReduce.uniform`; :func:`check_global_norm_reducible` says so before any state exists);
:func:`reduce_bucket_sums` then reduces the per-bucket totals in one all-reduce (buckets of whole
tensors count once). Called with a one-element buffer, a bucket's :class:`ShardReduce` does the same for
that bucket alone.

**Found-inf flag.** With ``skip_nonfinite=True`` the ranks holding shards of one tensor see different
gradients, so the flag is reduced with ``MAX`` over the same groups (:func:`allreduce_flag`): every rank
skips the same steps and the clocks stay equal. Replicas (DDP, HSDP's replicate dimension) hold
averaged, hence identical, gradients and need nothing.

Counts are per bucket (one bucket per combination of parameter dtype, state dtype and master weights;
a model in one dtype has one) and per sharded mesh dimension (FSDP + TP: 2). A mesh dimension of size 1
and whole tensors cost nothing. ``tests/test_distributed.py`` counts every c10d collective of a step.

**Checkpoints** (``torch.distributed.checkpoint``). State tensors are created with ``zeros_like(p)``, so
moments of a ``DTensor`` parameter are ``DTensor``\ s with its placements and DCP saves and reshards them
like the parameters; ``step`` is a plain 0-d float32 tensor (as torch's AdamW). Two DCP behaviours
(torch 2.11-2.13) need care:

* ``get_optimizer_state_dict`` / ``set_optimizer_state_dict`` call ``_init_optim_state``, which, when the
  optimizer has no state yet, sets zero gradients and ``group["lr"] = 0`` and runs ``step()``. That step
  is not neutral here: a schedule ignores ``group["lr"]`` (weight decay and LAMB's ratio move the
  weights) and it advances the clock. :func:`init_optimizer_state` creates the state without a step;
  DCP then sees a state and skips its own. ``FusedOptimizer.step`` can recognise DCP's call with
  :func:`called_by_dcp_init` and do the same.
* ``get_optimizer_state_dict`` keeps only ``"state"`` and ``"param_groups"`` of ``state_dict()``; any
  other top-level entry (the clock and options under ``"lrsched_fused"``) is dropped, so the clock must
  travel inside the param groups.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.distributed as dist

from lrsched_fused.checkpoint import describe_param
from lrsched_fused.functional import StateFormat, check_state, init_state, is_dtensor, local, read_group

__all__ = ["ShardReduce", "make_shard_allreduce", "reduce_history", "allreduce_flag", "shard_dims", "init_optimizer_state",
           "called_by_dcp_init", "reduce_bucket_sums", "check_global_norm_reducible"]


def shard_dims(p: torch.Tensor) -> tuple[int, ...]:
    """Mesh dimensions (size > 1) along which ``p`` is sharded; ``()`` for plain or replicated tensors."""
    if not is_dtensor(p):
        return ()
    mesh = p.device_mesh
    return tuple(d for d, pl in enumerate(p.placements) if pl.is_shard() and mesh.size(d) > 1)


@dataclass
class _Step:
    """One all-reduce over ``group`` (mesh dimension ``dim`` of ``mesh``) of the rows sharded along it."""

    mesh: Any
    dim: int
    group: Any
    rows: torch.Tensor | None          # int64 row indices on the buffer's device; None: every row


class ShardReduce:
    """Sums per-tensor partial sums of squares over the shards of each tensor (see the module docstring).

    Called with a float32 ``[n, k]`` buffer (row ``i`` belongs to tensor ``i``), it sums every row across
    the ranks that hold the other shards of that tensor, in place. Called with a one-element buffer (the
    global gradient norm), it needs :attr:`uniform`. :attr:`collectives` is the number of all-reduces
    per call.

    Args:
        specs: per tensor, ``(mesh, sharded mesh dims)`` or ``None`` (whole on every rank).
        device: where the buffers live.
    """

    def __init__(self, specs: Sequence[tuple[Any, tuple[int, ...]] | None], device: torch.device) -> None:
        self.n = len(specs)
        keys: list[tuple[Any, int]] = []
        for spec in specs:
            for d in (spec[1] if spec is not None else ()):
                if not any(m == spec[0] and dd == d for m, dd in keys):
                    keys.append((spec[0], d))
        self.steps: list[_Step] = []
        for mesh, d in keys:
            members = [i for i, spec in enumerate(specs) if spec is not None and spec[0] == mesh and d in spec[1]]
            rows = None if len(members) == self.n else torch.tensor(members, dtype=torch.int64, device=device)
            self.steps.append(_Step(mesh, d, mesh.get_group(d), rows))
        #: every tensor is sharded alike, so a single total over them reduces like one row
        self.uniform = all(spec == specs[0] for spec in specs)

    @classmethod
    def for_params(cls, params: Sequence[torch.Tensor]) -> "ShardReduce":
        specs = [(p.device_mesh, dims) if (dims := shard_dims(p)) else None for p in params]
        return cls(specs, local(params[0]).device if params else torch.device("cpu"))

    @property
    def collectives(self) -> int:
        return len(self.steps)

    def __call__(self, sums: torch.Tensor) -> None:
        per_row = sums.dim() == 2 and sums.shape[0] == self.n
        if not per_row:
            if sums.numel() != 1:
                raise ValueError(f"expected a [{self.n}, k] buffer of per-tensor sums or one total; got shape "
                                 f"{tuple(sums.shape)}")
            if not self.uniform:
                raise ValueError(_MIXED_TOTAL)
        buf = sums if sums.is_contiguous() else sums.contiguous()
        for step in self.steps:
            if step.rows is None or not per_row:
                dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=step.group)
            else:
                part = buf.index_select(0, step.rows)
                dist.all_reduce(part, op=dist.ReduceOp.SUM, group=step.group)
                buf.index_copy_(0, step.rows, part)
        if buf is not sums:
            sums.copy_(buf)


_MIXED_TOTAL = ("a global gradient norm over parameters sharded in different ways (mixed placements or meshes in "
                "one bucket) cannot be reduced as one total; use one optimizer per placement or max_grad_norm=None")


def make_shard_allreduce(params: Sequence[torch.Tensor]) -> ShardReduce | None:
    """The ``allreduce`` callable of a bucket (``Backend.lamb``), or ``None`` when no parameter is sharded."""
    reduce = ShardReduce.for_params(params)
    return reduce if reduce.steps else None


def check_global_norm_reducible(buckets: Sequence[Sequence[torch.Tensor]]) -> None:
    """``ValueError`` (before any state changes) unless :func:`reduce_bucket_sums` can reduce one gradient
    total per bucket of ``buckets`` (lists of parameters): every bucket's tensors sharded alike."""
    for params in buckets:
        if params and not ShardReduce.for_params(params).uniform:
            raise ValueError(_MIXED_TOTAL)


def reduce_bucket_sums(sums: torch.Tensor, reducers: Sequence[ShardReduce | None]) -> None:
    """Sum ``sums[b]`` (one partial total per bucket, e.g. its gradient sum of squares for clipping) across
    the shards of bucket ``b``, in place, with as few all-reduces as :class:`ShardReduce` allows. A bucket
    without a reducer holds whole values (counted once). ``ValueError`` for a bucket sharded unevenly."""
    specs: list = []
    for r in reducers:
        if r is None or not r.steps:
            specs.append(None)
        elif not r.uniform:
            raise ValueError(_MIXED_TOTAL)
        else:
            specs.append((r.steps[0].mesh, tuple(s.dim for s in r.steps)))
    if sums.numel() != len(reducers) or not sums.is_contiguous():
        raise ValueError(f"sums must be a contiguous tensor of one total per bucket ({len(reducers)}); got shape "
                         f"{tuple(sums.shape)}")
    ShardReduce(specs, sums.device)(sums.view(len(reducers), 1))


def allreduce_flag(params: Sequence[torch.Tensor] | ShardReduce, flag: torch.Tensor) -> None:
    """Make a found-inf flag agree (``MAX``) across every group that shards one of ``params`` (a bucket's
    parameters, or its :class:`ShardReduce`, which saves looking the groups up again)."""
    if isinstance(params, ShardReduce):
        groups = [step.group for step in params.steps]
    else:
        keys: list[tuple[Any, int]] = []
        for p in params:
            for d in shard_dims(p):
                if not any(m == p.device_mesh and dd == d for m, dd in keys):
                    keys.append((p.device_mesh, d))
        groups = [mesh.get_group(d) for mesh, d in keys]
    for group in groups:
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)


# ----------------------------------------------------------------------------------------------------
# torch.distributed.checkpoint
# ----------------------------------------------------------------------------------------------------
def init_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Create the state of every parameter that requires grad (zero moments, ``step`` 0) without an update.

    DCP's ``get_optimizer_state_dict`` / ``set_optimizer_state_dict`` materialize an empty optimizer state
    by running ``step()`` with zero gradients and ``lr = 0``. For a :class:`FusedOptimizer` that step is not
    neutral (a schedule ignores ``group["lr"]``, so weight decay and LAMB's ratio move the weights, and the
    clock advances). Calling this first gives DCP a state, so it skips that step. Idempotent; the state of
    parameters that already have one is left alone. Parameters must be contiguous (as for ``step``).
    """
    hyper_cls, options = getattr(optimizer, "hyperparams", None), getattr(optimizer, "options", None)
    if hyper_cls is None or not isinstance(options, dict):
        raise ValueError(f"optimizer must be a FusedAdamW or FusedLAMB; got {type(optimizer).__name__}")
    todo = []
    for gi, group in enumerate(optimizer.param_groups):
        keys = read_group(group, hyper_cls).hyper.state_keys
        for index, p in enumerate(group["params"]):
            if not p.requires_grad:
                continue
            if not local(p).is_contiguous():
                raise ValueError(f"parameters must be contiguous; a parameter of shape {tuple(p.shape)} in param "
                                 f"group {gi} is not")
            check_state(p, optimizer.state.get(p, {}), describe_param(group, gi, index, p))
            todo.append((keys, p))
    if todo and optimizer.clock is None:
        optimizer.set_clock()  # a zero clock on the parameters' device, held by every state entry
    for keys, p in todo:
        st = optimizer.state[p]
        if not st:
            init_state(p, st, keys=keys, device=local(p).device, clock=optimizer.clock,
                       fmt=StateFormat.from_options(options))


def called_by_dcp_init(max_depth: int = 12) -> bool:
    """Whether the caller's ``step()`` was invoked by ``torch.distributed.checkpoint``'s ``_init_optim_state``
    (which expects a step with zero grads and ``lr = 0`` to only create state)."""
    frame = sys._getframe(1)
    for _ in range(max_depth):
        if frame is None:
            return False
        if (frame.f_code.co_name == "_init_optim_state"
                and frame.f_globals.get("__name__", "").startswith("torch.distributed.checkpoint")):
            return True
        frame = frame.f_back
    return False


def reduce_history(hist: torch.Tensor, params: Sequence[torch.Tensor]) -> None:
    """Sum a gradient-norm history (float32 ``[steps, 2]`` of per-rank partial sums) across the shards, in
    place, when every parameter is sharded alike (FSDP2: each rank holds a part of every tensor); with
    mixed placements (replicated and sharded tensors in one optimizer) the per-rank sums cannot be separated
    and are left as they are, with a warning."""
    reduce = ShardReduce.for_params(params)
    if not reduce.steps:
        return
    if not reduce.uniform:
        import warnings

        warnings.warn("telemetry_history(): parameters are sharded in different ways; the gradient norms are this "
                      "rank's partial sums", RuntimeWarning, stacklevel=3)
        return
    for step in reduce.steps:
        dist.all_reduce(hist, op=dist.ReduceOp.SUM, group=step.group)
