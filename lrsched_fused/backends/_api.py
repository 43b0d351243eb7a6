"""The contract between the optimizers and the backends that run their math.

An optimizer step is, per (device, dtype) bucket of tensors, one call of :meth:`Backend.adamw` or
:meth:`Backend.lamb`, then once per optimizer :meth:`Backend.advance`. Backends know nothing about
``torch.optim``: they see parallel tensor lists (:class:`TensorBatch`) and device tables
(:class:`StepContext`). Each backend keeps whatever it caches (pointer tables, chunk tables) in
``batch.cache``, which the optimizer clears whenever it rebuilds the batch.

Math every backend implements (``t = steps[i] + 1`` the 1-based update count of tensor ``i``;
``k = clock[group_sched[g, GS_CLOCK]]`` the 0-based schedule clock; ``lr = hp[g, HP_LR_SCALE] *
schedule_g(k)``; ``g`` the gradient divided by ``grad_scale`` (if given) and by ``clip_div`` (LAMB, if
given); all math in float32, float64 for float64 parameters):

AdamW (``torch.optim.AdamW``; Loshchilov & Hutter, arXiv 1711.05101)::

    g = -g if maximize
    p = p * (1 - lr * wd)
    m = m + (g - m) * (1 - b1)                      # torch's lerp
    v = v * b2 + (1 - b2) * g * g
    vmax = max(vmax, v)  (amsgrad; the denominator then uses vmax)
    p = p - (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

LAMB (You et al., arXiv 1904.00962 v5, Algorithm 2, with the options of ``FusedLAMB``)::

    m = b1 m + (1 - b1 if grad_averaging else 1) g ;  v = b2 v + (1 - b2) g^2
    bc1, bc2 = (1 - b1^t, 1 - b2^t) if bias_correction else (1, 1)
    r = (m / bc1) / (sqrt(v) / sqrt(bc2) + eps)
    decoupled: w = p (1 - lr wd), u = r          else: w = p, u = r + wd p
    ratio = ||w|| / ||u|| per tensor (whole tensor: summed over shards through ``allreduce``),
            1 if either norm is 0 or the group has adapt = 0, then clamped to [trust_min, trust_max]
    p = w - lr * ratio * u

Moments are stored in the state dtype (rounded to nearest even for bf16/fp16 states). LAMB forms ``r``
from the moments *as stored*: with 16-bit states, ``m`` and ``v`` are rounded to the state dtype first
and ``r`` is computed from the rounded values, so the update applied is exactly the one whose norm gave
the trust ratio (and a second stage may re-read the stored moments). Every backend does this (Triton, C++
CPU and CUDA, reference); for fp32/fp64 states the rounding is a no-op and every backend gives the same
update up to float rounding. AdamW keeps torch's meaning: its update uses the fresh moments.

When ``found_inf`` is given and nonzero, nothing is written (params, moments, steps, clock) except
telemetry. Low-precision parameters with fp32 master weights update the master copy and write the
param rounded to nearest even.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch

from lrsched_fused.kernels import layout as L
from lrsched_fused.kernels.layout import dtype_code
from lrsched_fused.schedules import ScheduleTables

__all__ = ["TensorBatch", "StepContext", "Backend", "BackendUnavailable", "dtype_code", "launches_on", "batch_device"]


def _on(device: torch.device):
    """Launch context: a kernel launches on the current CUDA device, which must be the tensors' device (a
    process may drive several GPUs; torch's current device need not be this batch's)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def launches_on(device_of: Callable[..., torch.device]):
    """Run the decorated backend method with the current CUDA device set to ``device_of(*args)``."""
    def decorate(method):
        @functools.wraps(method)
        def wrapper(self, *args, **kwargs):
            with _on(device_of(*args, **kwargs)):
                return method(self, *args, **kwargs)
        return wrapper
    return decorate


def batch_device(batch: "TensorBatch", *args, **kwargs) -> torch.device:
    """The device of a backend method's first argument, a batch."""
    return batch.params[0].device if len(batch) else torch.device("cpu")



class BackendUnavailable(RuntimeError):
    """The requested backend cannot run here (not built, no device, or the dtype is not supported)."""


@dataclass
class TensorBatch:
    """The tensors of one bucket, as parallel lists (all contiguous, same device).

    Attributes:
        params: updated in place (for FSDP2, the local shards). fp32, bf16, fp16 or fp64.
        grads: same shapes and dtype as ``params``; refreshed by the optimizer before each call.
        exp_avgs, exp_avg_sqs: moments in a floating state dtype, or (compressed state,
            docs/compressed_state.md) int8 and uint8 codes with ``exp_avg_scales`` / ``exp_avg_sq_scales``.
        max_exp_avg_sqs: AdamW amsgrad running maxima, or ``None``.
        master_params: fp32 master copies of low-precision params, their int8 / int16 corrections
            (``master_weights="compact"``), or ``None``. :attr:`master_mode` tells which.
        group_index: int64 ``[n]`` on the device: row of the group tables for each tensor.
        steps: float32 ``[n]`` on the device: each tensor's update count before this step (a view into
            the optimizer's steps buffer; :meth:`Backend.advance` increments it).
        exp_avg_scales, exp_avg_sq_scales: float32 block scales of int8 / uint8 moments (one per block of
            ``quant_block`` elements along the last dimension, within a row), or ``None``.
        last_dims: each tensor's last-dimension length (``None``: its numel: one row).
        elem_offsets: each tensor's global index of its first element (a DTensor shard's offset; ``None``: 0).
        salts: each parameter's position in its optimizer (``None``: its index here).
        quant_block: elements per quantization block.
        stochastic_rounding: bf16 moments and bf16 params without master weights are stored with
            stochastic rounding, seeded from the clock, the salt and the global element index.
        gnorm_out: float32 ``[rows, GN_COLS]`` (``rows`` from ``Backend.gnorm_rows``) or ``None``: the
            backend writes partial sums of ``g^2`` and ``|g|`` (of ``grad / grad_scale``) into it, every
            row every call, in a fixed order (the gradient-norm history, ``opt.telemetry_history()``).
        cache: the backend's private cache; cleared by the optimizer when the batch is rebuilt.
    """

    params: list[torch.Tensor]
    grads: list[torch.Tensor]
    exp_avgs: list[torch.Tensor]
    exp_avg_sqs: list[torch.Tensor]
    max_exp_avg_sqs: list[torch.Tensor] | None
    master_params: list[torch.Tensor] | None
    group_index: torch.Tensor
    steps: torch.Tensor
    exp_avg_scales: list[torch.Tensor] | None = None
    exp_avg_sq_scales: list[torch.Tensor] | None = None
    last_dims: list[int] | None = None
    elem_offsets: list[int] | None = None
    salts: list[int] | None = None
    quant_block: int = L.QUANT_BLOCK
    stochastic_rounding: bool = False
    gnorm_out: torch.Tensor | None = None
    cache: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.params)

    @property
    def quantized(self) -> bool:
        """Moments are int8 / uint8 codes with block scales."""
        return self.exp_avg_scales is not None

    @property
    def master_mode(self) -> int:
        """``layout.MASTER_*``: what ``master_params`` holds."""
        if self.master_params is None or not self.master_params:
            return L.MASTER_NONE if self.master_params is None else L.MASTER_FP32
        return {torch.float32: L.MASTER_FP32, torch.int8: L.MASTER_CORR8,
                torch.int16: L.MASTER_CORR16}[self.master_params[0].dtype]

    def slice(self, lo: int, hi: int) -> "TensorBatch":
        """Tensors ``lo:hi`` as a batch of their own, sharing storage: its ``steps`` and ``group_index``
        are views, so updating the slice and then advancing the whole batch's ``steps`` is the same as
        updating the whole batch (a subset update, e.g. for gradients that become ready early)."""
        def part(lst):
            return None if lst is None else lst[lo:hi]

        salts = self.salts if self.salts is not None else list(range(len(self)))
        return TensorBatch(self.params[lo:hi], self.grads[lo:hi], self.exp_avgs[lo:hi], self.exp_avg_sqs[lo:hi],
                           part(self.max_exp_avg_sqs), part(self.master_params), self.group_index[lo:hi],
                           self.steps[lo:hi], exp_avg_scales=part(self.exp_avg_scales),
                           exp_avg_sq_scales=part(self.exp_avg_sq_scales), last_dims=part(self.last_dims),
                           elem_offsets=part(self.elem_offsets), salts=salts[lo:hi], quant_block=self.quant_block,
                           stochastic_rounding=self.stochastic_rounding)

    def pointer_lists(self) -> list[list[torch.Tensor] | None]:
        """The tensor lists in pointer-table row order (the address rows ``layout.PTR_PARAM`` ..
        ``PTR_EXP_AVG_SQ_SCALE``)."""
        lists: list[list[torch.Tensor] | None] = [None] * L.PTR_NUMEL
        lists[L.PTR_PARAM] = self.params
        lists[L.PTR_GRAD] = self.grads
        lists[L.PTR_EXP_AVG] = self.exp_avgs
        lists[L.PTR_EXP_AVG_SQ] = self.exp_avg_sqs
        lists[L.PTR_MAX_EXP_AVG_SQ] = self.max_exp_avg_sqs
        lists[L.PTR_MASTER] = self.master_params
        lists[L.PTR_EXP_AVG_SCALE] = self.exp_avg_scales
        lists[L.PTR_EXP_AVG_SQ_SCALE] = self.exp_avg_sq_scales
        return lists

    def pointer_table(self) -> torch.Tensor:
        """The host int64 ``[PTR_TABLE_ROWS, n]`` table every backend reads (see ``kernels/layout.py``):
        each list's ``data_ptr`` values (0 for an absent list), the element counts, last-dimension lengths,
        global element offsets and salts. Built from host metadata only; a backend copies it to its device
        and caches it (``cached_tables``)."""
        n = len(self)
        rows = [[0] * n if lst is None else [t.data_ptr() for t in lst] for lst in self.pointer_lists()]
        numels = [p.numel() for p in self.params]
        rows.append(numels)
        rows.append(list(self.last_dims) if self.last_dims is not None else [max(k, 1) for k in numels])
        rows.append(list(self.elem_offsets) if self.elem_offsets is not None else [0] * n)
        rows.append(list(self.salts) if self.salts is not None else list(range(n)))
        for row, lst in enumerate(rows):
            if len(lst) != n:
                raise ValueError(f"TensorBatch lists must have the same length; pointer row {row} has {len(lst)} "
                                 f"entries, params has {n}")
        return torch.tensor(rows, dtype=torch.int64).reshape(L.PTR_TABLE_ROWS, n)

    def scale_numels(self) -> list[int]:
        """Block scales per tensor: ``rows * ceil(last_dim / quant_block)``."""
        dims = self.last_dims if self.last_dims is not None else [max(p.numel(), 1) for p in self.params]
        return [(p.numel() // d if d else 0) * -(-d // self.quant_block) for p, d in zip(self.params, dims)]

    def validate(self) -> None:
        """``ValueError`` unless every list has one contiguous tensor per parameter, on the parameters'
        device, with the parameter's element count and the dtype its role requires (grads: the params';
        moments: one state dtype; master weights: float32). Backends call it when they build tables."""
        n = len(self.params)
        if n == 0:
            return
        pdt, sdt, dev = self.params[0].dtype, self.exp_avgs[0].dtype, self.params[0].device
        numels = [p.numel() for p in self.params]
        vdt = torch.uint8 if self.quantized else sdt
        checks = [("params", self.params, pdt, numels), ("grads", self.grads, pdt, numels),
                  ("exp_avgs", self.exp_avgs, sdt, numels), ("exp_avg_sqs", self.exp_avg_sqs, vdt, numels)]
        if self.max_exp_avg_sqs is not None:
            checks.append(("max_exp_avg_sqs", self.max_exp_avg_sqs, sdt, numels))
        if self.master_params is not None and self.master_params:
            checks.append(("master_params", self.master_params, self.master_params[0].dtype, numels))
            if self.master_params[0].dtype not in (torch.float32, torch.int8, torch.int16):
                raise ValueError("batch.master_params must be float32 masters or int8 / int16 corrections")
        if self.quantized:
            if sdt != torch.int8 or self.exp_avg_sq_scales is None:
                raise ValueError("compressed moments are int8 exp_avgs and uint8 exp_avg_sqs, each with its scales")
            if self.max_exp_avg_sqs is not None:
                raise ValueError("amsgrad has no compressed form: use floating state for it")
            scales = self.scale_numels()
            checks += [("exp_avg_scales", self.exp_avg_scales, torch.float32, scales),
                       ("exp_avg_sq_scales", self.exp_avg_sq_scales, torch.float32, scales)]
        for label, lst, dt, counts in checks:
            if len(lst) != n:
                raise ValueError(f"batch.{label} has {len(lst)} tensors; batch.params has {n}")
            for k, (t, count) in enumerate(zip(lst, counts)):
                if t.dtype != dt or t.device != dev or t.numel() != count or not t.is_contiguous():
                    raise ValueError(f"batch.{label}[{k}] must be a contiguous {dt} tensor on {dev} with "
                                     f"{count} elements; got {t.dtype} on {t.device}, {t.numel()} elements, "
                                     f"contiguous={t.is_contiguous()}")
        if self.quantized and (self.quant_block < 1 or self.quant_block & (self.quant_block - 1)):
            raise ValueError(f"quant_block must be a power of two; got {self.quant_block}")
        for name, t in (("group_index", self.group_index), ("steps", self.steps)):
            if t.numel() != n or t.device != dev or not t.is_contiguous():
                raise ValueError(f"batch.{name} must be a contiguous tensor of {n} elements on {dev}")
        if self.group_index.dtype != torch.int64 or self.steps.dtype != torch.float32:
            raise ValueError("batch.group_index must be int64 and batch.steps float32")

    def _static_lists(self) -> tuple:
        return (self.params, self.exp_avgs, self.exp_avg_sqs, self.max_exp_avg_sqs, self.master_params,
                self.group_index, self.steps, self.exp_avg_scales, self.exp_avg_sq_scales, self.gnorm_out)

    def cached_tables(self, key: str, build: Callable[[TensorBatch], Any]) -> Any:
        """``cache[key]``: built by ``build(self)`` on first use, and again whenever a list other than
        ``grads`` was replaced since (a new list object: the batch's tensors changed); otherwise its
        ``refresh_grads(grads)`` is called with this step's gradients, the one thing that changes between
        steps of a batch."""
        static = self._static_lists()
        if any(a is not b for a, b in zip(static, self.cache.get("_lists", ()))) or "_lists" not in self.cache:
            self.cache.clear()
            self.cache["_lists"] = static
        tables = self.cache.get(key)
        if tables is None:
            tables = self.cache[key] = build(self)
        else:
            tables.refresh_grads(self.grads)
        return tables

    @property
    def device(self) -> torch.device:
        return self.params[0].device

    @property
    def dtype(self) -> torch.dtype:
        return self.params[0].dtype

    @property
    def state_dtype(self) -> torch.dtype:
        return self.exp_avgs[0].dtype


@dataclass
class StepContext:
    """Device tables shared by every bucket of one optimizer step.

    Attributes:
        sched: the schedule tables of all param groups.
        hparams: float64 ``[groups, HP_COLS]`` (column meanings in ``lrsched_fused.kernels.layout``).
        clock: int64 ``[NUM_CLOCKS]`` (updates applied, tokens consumed); read-only until ``advance``.
        found_inf: float32 scalar tensor or ``None``: nonzero means skip the whole step.
        grad_scale: float32 scalar tensor or ``None``: gradients are divided by it (GradScaler).
        gnorm_partials: float32 ``[rows, GN_COLS]``: every bucket's ``gnorm_out`` rows (``advance`` sums
            them), or ``None``.
        history: float32 ``[capacity, GN_COLS]`` ring or ``None``: ``advance`` writes the summed partials
            into row ``clock[STEPS] % capacity`` unless the step is skipped.
    """

    sched: ScheduleTables
    hparams: torch.Tensor
    clock: torch.Tensor
    found_inf: torch.Tensor | None = None
    grad_scale: torch.Tensor | None = None
    gnorm_partials: torch.Tensor | None = None
    history: torch.Tensor | None = None


class Backend(Protocol):
    """What every backend provides. All methods are asynchronous on the device (no host sync)."""

    name: str

    def check(self, device: torch.device, param_dtype: torch.dtype, state_dtype: torch.dtype) -> None:
        """Raise :class:`BackendUnavailable` (naming device and dtypes) if this combination cannot run."""

    def adamw(self, batch: TensorBatch, ctx: StepContext, *, amsgrad: bool) -> None:
        """One AdamW update of every tensor in ``batch`` (moments, params; not ``steps``)."""

    def lamb(self, batch: TensorBatch, ctx: StepContext, *, norms_out: torch.Tensor,
             clip_div: torch.Tensor | None,
             allreduce: Callable[[torch.Tensor], None] | None) -> None:
        """One LAMB update. ``norms_out`` float32 ``[n, NORM_COLS]`` receives ``||w||``, ``||u||`` and the
        applied ratio per tensor. ``clip_div`` (float32 scalar, >= 1) divides the gradients (global-norm
        clipping). ``allreduce``, when given, is called once with a float32 ``[n, 2]`` tensor of
        per-tensor partial sums (``sum w^2``, ``sum u^2``) and must sum it in place across shards."""

    def grad_sumsq(self, batch: TensorBatch, ctx: StepContext) -> torch.Tensor:
        """float32 scalar tensor: sum of squares of the (unscaled) gradients of the batch."""

    def gnorm_rows(self, batch: TensorBatch) -> int:
        """Rows of ``batch.gnorm_out`` this backend writes (its per-chunk or per-program partial sums; 1 when
        it reduces them itself). Optional: a backend without it is given no ``gnorm_out``."""

    def advance(self, ctx: StepContext, steps: torch.Tensor, lr_out: torch.Tensor,
                tokens: torch.Tensor | None) -> None:
        """Finish the step: write each group's lr used this step into ``lr_out`` (float32 ``[groups]``);
        then, unless ``found_inf``: ``history[clock[STEPS] % capacity] = (sum of the gnorm_partials rows,
        in row order, in float64)`` (when ``ctx.history`` is given), ``steps += 1``, ``clock[STEPS] += 1``,
        ``clock[TOKENS] += tokens``."""

    def evaluate_schedule(self, tables: ScheduleTables, t: torch.Tensor) -> torch.Tensor:
        """float32 values of schedule 0 of ``tables`` at clock values ``t`` (int64)."""
