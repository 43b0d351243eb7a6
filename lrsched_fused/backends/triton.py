"""The ``"triton"`` backend: multi-tensor Triton kernels (``lrsched_fused.kernels``) for CUDA tensors.

Launches per step, whatever the number of tensors: AdamW one per bucket; LAMB three per bucket
(stage 1, per-tensor reduction, stage 2) plus two for the global gradient norm when clipping; one
``advance`` per optimizer. The schedule is evaluated inside each kernel from the device clock; nothing
in a step reads a device value on the host, waits for the device, or allocates an amount that depends
on device data, so a whole step can be captured in a CUDA graph.

Per bucket, ``batch.cache`` keeps the pointer and work tables (:mod:`lrsched_fused.kernels.multi_tensor`),
built from the tensors' ``data_ptr`` values; they are rebuilt when a list of the batch is replaced (the
optimizer makes a new batch whenever params or state change), and when only the gradients moved
(``zero_grad(set_to_none=True)``) one row is rewritten. Dtype combinations, flags and block sizes are
compile-time constants; every value that changes from step to step (clock, steps, hyperparameters,
``found_inf``, ``grad_scale``) reaches the kernels through device tensors, and the integer arguments are
marked ``do_not_specialize``, so steps do not recompile.

On CPU tensors this backend runs only under the Triton interpreter (``TRITON_INTERPRET=1`` set before
``lrsched_fused`` is imported): that is how the tests run it on machines without a GPU. There the
defaults use one large block per chunk, since the interpreter pays per program, not per element.

Compressed state (``docs/compressed_state.md``): a batch with int8 moments (``batch.quantized``) runs
``adamw_int8_kernel`` / ``lamb_int8_stage{1,2}_kernel`` over a work table of runs of whole blocks; compact
masters (``batch.master_mode``), stochastic rounding and the gradient-norm partials (``batch.gnorm_out``,
``gnorm_rows`` rows: one per program of the update launch) are compile-time switches of every update
kernel, and ``advance`` writes the history ring. The launch count stays: AdamW one launch per bucket, LAMB
three, plus the one ``advance``.

Bytes per parameter moved by one step (read + written; with int8 moments the block scales add
``4 * 4 / quant_block`` per AdamW step and ``6 * 4 / quant_block`` per LAMB step, +0.06 / +0.09 at block 256;
gradient-norm partials and stochastic rounding add no traffic; fp16 as bf16):

=====================================  ==================  ==================  ==================
parameters / master                    fp32 moments        bf16 moments        int8 moments
                                       AdamW / LAMB        AdamW / LAMB        AdamW / LAMB
=====================================  ==================  ==================  ==================
fp32                                   28 / 40             20 / 28             16 / 22
bf16, no master                        22 / 32             14 / 20             10 / 14
bf16, fp32 master                      28 / 40             20 / 28             16 / 22
bf16, int8 correction (compact, 8)     24 / 35             16 / 23             12 / 17
bf16, int16 correction (compact, 16)   26 / 38             18 / 26             14 / 20
=====================================  ==================  ==================  ==================

(LAMB: stage 1 reads param, grad, moments and writes the moments; stage 2 reads param and moments again
and writes the param.)
"""

from __future__ import annotations

import os
from typing import Callable

import torch

from ._api import BackendUnavailable, StepContext, TensorBatch, batch_device, launches_on

try:
    import triton
except ImportError as exc:  # pragma: no cover - exercised only where triton is missing
    raise BackendUnavailable(f"backend 'triton' needs the triton package: {exc}") from exc

from lrsched_fused.kernels import adamw as _adamw
from lrsched_fused.kernels import adamw_int8 as _adamw_int8
from lrsched_fused.kernels import advance as _advance
from lrsched_fused.kernels import lamb as _lamb
from lrsched_fused.kernels import lamb_int8 as _lamb_int8
from lrsched_fused.kernels import layout as L
from lrsched_fused.kernels import multi_tensor as _mt
from lrsched_fused.kernels import norms as _norms
from lrsched_fused.kernels import schedule as _schedule
from lrsched_fused.kernels.dtypes import dtype_code
from lrsched_fused.schedules import ScheduleTables

__all__ = ["TritonBackend", "KERNEL_MODULES", "interpreting"]

#: The modules whose ``*_kernel`` objects this backend launches (looked up at call time, so tests can
#: wrap them to count launches).
KERNEL_MODULES = (_adamw, _adamw_int8, _lamb, _lamb_int8, _norms, _advance, _schedule)

_SUPPORTED = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
_LOW = (torch.bfloat16, torch.float16)
_CACHE_KEY = "triton"
_PLAIN_KEY = "triton_elements"  # an element-chunk table of a quantized batch (grad_sumsq)


_INTERPRETING = type(_adamw.adamw_kernel).__name__ == "InterpretedFunction"


def interpreting() -> bool:
    """Whether the kernels were defined under the Triton interpreter (``TRITON_INTERPRET=1`` was set when
    ``lrsched_fused.kernels`` was first imported)."""
    return _INTERPRETING


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


class TritonBackend:
    """Multi-tensor Triton kernels.

    Args:
        chunk: elements per program (a power of two; default 65536 on a GPU as apex, 8192 under the
            interpreter; env ``LRSCHED_TRITON_CHUNK``).
        block: elements per inner iteration (a power of two dividing ``chunk``; default 2048 on a GPU,
            ``chunk`` under the interpreter; env ``LRSCHED_TRITON_BLOCK``).
        num_warps: warps per program (default 4; env ``LRSCHED_TRITON_WARPS``).
    """

    name = "triton"

    def __init__(self, chunk: int | None = None, block: int | None = None, num_warps: int | None = None) -> None:
        interp = interpreting()
        chunk = chunk if chunk is not None else _env_int("LRSCHED_TRITON_CHUNK", 8192 if interp else 65536)
        block = block if block is not None else _env_int("LRSCHED_TRITON_BLOCK", chunk if interp else 2048)
        num_warps = num_warps if num_warps is not None else _env_int("LRSCHED_TRITON_WARPS", 4)
        for label, value in (("chunk", chunk), ("block", block), ("num_warps", num_warps)):
            if value < 1 or value & (value - 1):
                raise ValueError(f"{label} must be a power of two >= 1; got {value}")
        if block > chunk or block < 16:
            raise ValueError(f"block must be in [16, chunk={chunk}]; got {block}")
        self.chunk, self.block, self.num_warps = chunk, block, num_warps

    # -- availability ----------------------------------------------------------------------------------
    def check(self, device: torch.device, param_dtype: torch.dtype, state_dtype: torch.dtype) -> None:
        for label, dt in (("parameter", param_dtype), ("state", state_dtype)):
            if dt not in _SUPPORTED and not (label == "state" and dt == torch.int8):
                raise BackendUnavailable(f"backend 'triton' supports float32, bfloat16, float16 and float64 "
                                         f"{label}s (and int8 moments); got {dt}")
        if state_dtype == torch.int8 and param_dtype == torch.float64:
            raise BackendUnavailable("backend 'triton' has int8 moments for float32, bfloat16 and float16 "
                                     "parameters; got float64")
        device = torch.device(device)
        if interpreting():
            if device.type != "cpu":
                raise BackendUnavailable(f"backend 'triton' under TRITON_INTERPRET=1 runs on CPU tensors only; got "
                                         f"tensors on {device}")
        elif device.type != "cuda":
            raise BackendUnavailable(f"backend 'triton' needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tests); "
                                     f"got tensors on {device}")

    # -- tables ----------------------------------------------------------------------------------------
    @staticmethod
    def _quant_block(batch: TensorBatch) -> int:
        return batch.quant_block if batch.quantized else 0

    def _table(self, batch: TensorBatch, plain: bool = False) -> _mt.MultiTensorTable:
        """The bucket's tables: its update layout, or (``plain``) element chunks whatever the moments."""
        key = _PLAIN_KEY if plain and batch.quantized else _CACHE_KEY
        qb = 0 if key == _PLAIN_KEY else self._quant_block(batch)
        cached = batch.cache.get(key)
        if cached is not None and (cached.chunk != self.chunk or cached.quant_block != qb):  # another backend
            del batch.cache[key]
        return batch.cached_tables(key, lambda b: self._build_table(b, qb))

    def _build_table(self, batch: TensorBatch, quant_block: int) -> _mt.MultiTensorTable:
        batch.validate()
        mode = batch.master_mode
        if mode in (L.MASTER_CORR8, L.MASTER_CORR16) and batch.dtype not in _LOW:
            raise ValueError(f"compact master weights (int8 / int16 corrections) are for bfloat16 and float16 "
                             f"parameters; got {batch.dtype}")
        if batch.quantized and batch.dtype == torch.float64:
            raise ValueError("int8 moments are for float32, bfloat16 and float16 parameters; got float64")
        return _mt.build_table(batch.pointer_table(), self.chunk, batch.device, quant_block)

    def gnorm_rows(self, batch: TensorBatch) -> int:
        """Rows of ``batch.gnorm_out``: one per program of the update launch (AdamW's, LAMB's stage 1), from
        host metadata only."""
        if len(batch) == 0:
            return 0
        numels = [p.numel() for p in batch.params]
        dims = batch.last_dims if batch.last_dims is not None else [max(k, 1) for k in numels]
        return _mt.work_rows(numels, dims, self.chunk, self._quant_block(batch))

    @staticmethod
    def _gnorm(table: _mt.MultiTensorTable, batch: TensorBatch):
        """``(gnorm_out or a dummy, GNORM)``, after checking ``gnorm_out``'s shape."""
        out = batch.gnorm_out
        if out is None:
            return table.buffer("dummy", (1,), torch.float32), False
        if (tuple(out.shape) != (table.n_work, L.GN_COLS) or out.dtype != torch.float32 or not out.is_contiguous()
                or out.device != table.ptrs.device):
            raise ValueError(f"batch.gnorm_out must be a contiguous float32 tensor of shape ({table.n_work}, "
                             f"{L.GN_COLS}) on {table.ptrs.device} (gnorm_rows(batch) rows); got {out.dtype} "
                             f"{tuple(out.shape)} on {out.device}")
        return out, True

    @staticmethod
    def _sr(batch: TensorBatch) -> bool:
        """Stochastic rounding, compiled in only where it applies (bf16 moments, bf16 params without masters)."""
        return bool(batch.stochastic_rounding) and (
            (batch.dtype == torch.bfloat16 and batch.master_mode == L.MASTER_NONE)
            or batch.state_dtype == torch.bfloat16)

    def _tile(self, table: _mt.MultiTensorTable) -> dict:
        """The quantized kernels' tiling: ``TR`` blocks of ``QB`` per tile (``BLOCK`` elements, or one block
        if larger), warps grown with the tile so that a thread holds at most 16 elements of each array."""
        qb = table.quant_block
        tr = max(1, self.block // qb)
        return dict(FULL=table.full_blocks, QB=qb, RUN=table.run_blocks, TR=tr,
                    num_warps=max(self.num_warps, min(16, tr * qb // 512)))

    @staticmethod
    def _scalars(table: _mt.MultiTensorTable, ctx: StepContext, clip_div: torch.Tensor | None = None):
        """found_inf, grad_scale and clip_div as kernel arguments; an absent one is a dummy tensor that the
        kernel (compiled with the matching HAS_* flag off) does not use."""
        dummy = table.buffer("dummy", (1,), torch.float32)
        found = ctx.found_inf.reshape(-1) if ctx.found_inf is not None else dummy
        scale = ctx.grad_scale.reshape(-1) if ctx.grad_scale is not None else dummy
        clip = clip_div.reshape(-1) if clip_div is not None else dummy
        return found, scale, clip

    @staticmethod
    def _sched(ctx: StepContext):
        tabs = ctx.sched
        return (tabs.ints.contiguous(), tabs.floats.contiguous(), tabs.group_sched.contiguous(),
                ctx.hparams.contiguous(), ctx.clock)

    # -- AdamW -----------------------------------------------------------------------------------------
    @launches_on(batch_device)
    def adamw(self, batch: TensorBatch, ctx: StepContext, *, amsgrad: bool) -> None:
        if len(batch) == 0:
            return
        if amsgrad and batch.max_exp_avg_sqs is None:
            raise ValueError("amsgrad=True needs batch.max_exp_avg_sqs")
        if amsgrad and batch.quantized:
            raise ValueError("amsgrad has no compressed form: int8 moments cannot run with amsgrad=True")
        table = self._table(batch)
        found, scale, _ = self._scalars(table, ctx)
        gnorm, has_gnorm = self._gnorm(table, batch)
        ints, floats, gsched, hparams, clock = self._sched(ctx)
        args = (table.ptrs, table.numels, table.work, batch.group_index, batch.steps,
                ints, floats, gsched, hparams, clock, found, scale, gnorm, table.n)
        common = dict(P_DT=dtype_code(batch.dtype), MASTER=batch.master_mode, HAS_SCALE=ctx.grad_scale is not None,
                      HAS_FOUND=ctx.found_inf is not None, SR=self._sr(batch), GNORM=has_gnorm,
                      ALIGNED=table.aligned, PHASE_BLOCK=_schedule.phase_block(ctx.sched.max_rows))
        if batch.quantized:
            _adamw_int8.adamw_int8_kernel[(table.n_work,)](*args, **common, **self._tile(table))
        else:
            _adamw.adamw_kernel[(table.n_work,)](
                *args, S_DT=dtype_code(batch.state_dtype), F64=batch.dtype == torch.float64, AMSGRAD=bool(amsgrad),
                CHUNK=self.chunk, BLOCK=self.block, num_warps=self.num_warps, **common)

    # -- LAMB ------------------------------------------------------------------------------------------
    @launches_on(batch_device)
    def lamb(self, batch: TensorBatch, ctx: StepContext, *, norms_out: torch.Tensor,
             clip_div: torch.Tensor | None, allreduce: Callable[[torch.Tensor], None] | None) -> None:
        n = len(batch)
        if n == 0:
            return
        if tuple(norms_out.shape) != (n, L.NORM_COLS) or norms_out.dtype != torch.float32:
            raise ValueError(f"norms_out must be float32 of shape ({n}, {L.NORM_COLS}); got {norms_out.dtype} "
                             f"{tuple(norms_out.shape)}")
        table = self._table(batch)
        found, scale, clip = self._scalars(table, ctx, clip_div)
        gnorm, has_gnorm = self._gnorm(table, batch)
        ints, floats, gsched, hparams, clock = self._sched(ctx)
        partials = table.buffer("lamb_partials", (table.n_work, 2), torch.float32)
        sums = table.buffer("lamb_sums", (n, 2), torch.float32)
        norms = norms_out if norms_out.is_contiguous() else table.buffer("lamb_norms", (n, L.NORM_COLS), torch.float32)
        common = dict(P_DT=dtype_code(batch.dtype), MASTER=batch.master_mode, HAS_FOUND=ctx.found_inf is not None,
                      SR=self._sr(batch), ALIGNED=table.aligned, PHASE_BLOCK=_schedule.phase_block(ctx.sched.max_rows))
        if batch.quantized:
            stage1, stage2 = _lamb_int8.lamb_int8_stage1_kernel, _lamb_int8.lamb_int8_stage2_kernel
            common.update(self._tile(table))
        else:
            stage1, stage2 = _lamb.lamb_stage1_kernel, _lamb.lamb_stage2_kernel
            common.update(S_DT=dtype_code(batch.state_dtype), F64=batch.dtype == torch.float64, CHUNK=self.chunk,
                          BLOCK=self.block, num_warps=self.num_warps)
        stage1[(table.n_work,)](
            table.ptrs, table.numels, table.work, batch.group_index, batch.steps,
            ints, floats, gsched, hparams, clock, found, scale, clip, partials, gnorm, table.n,
            HAS_SCALE=ctx.grad_scale is not None, HAS_CLIP=clip_div is not None, GNORM=has_gnorm, **common)
        tb, cb = 32, 64
        _lamb.lamb_reduce_kernel[(triton.cdiv(n, tb),)](
            partials, table.first_work, table.chunks, sums, n, triton.cdiv(table.max_chunks, cb), TB=tb, CB=cb,
            num_warps=4)
        if allreduce is not None:
            allreduce(sums)
        stage2[(table.n_work,)](
            table.ptrs, table.numels, table.work, batch.group_index, batch.steps,
            ints, floats, gsched, hparams, clock, found, sums, norms, table.n, **common)
        if norms is not norms_out:
            norms_out.copy_(norms)

    # -- the rest --------------------------------------------------------------------------------------
    @launches_on(batch_device)
    def grad_sumsq(self, batch: TensorBatch, ctx: StepContext) -> torch.Tensor:
        out = torch.zeros((), dtype=torch.float32, device=batch.device if len(batch) else ctx.clock.device)
        if len(batch) == 0:
            return out
        table = self._table(batch, plain=True)
        _, scale, _ = self._scalars(table, ctx)
        partials = table.buffer("sumsq_partials", (table.n_work,), torch.float32)
        _norms.grad_sumsq_kernel[(table.n_work,)](
            table.ptrs, table.numels, table.work, scale, partials, table.n,
            P_DT=dtype_code(batch.dtype), F64=batch.dtype == torch.float64, HAS_SCALE=ctx.grad_scale is not None,
            ALIGNED=table.aligned, CHUNK=self.chunk, BLOCK=self.block, num_warps=self.num_warps)
        _norms.sum_kernel[(1,)](partials, out, table.n_work, BLOCK=1024, num_warps=4)
        return out

    @launches_on(lambda ctx, *args, **kwargs: ctx.clock.device)
    def advance(self, ctx: StepContext, steps: torch.Tensor, lr_out: torch.Tensor,
                tokens: torch.Tensor | None) -> None:
        n_groups = ctx.hparams.shape[0]
        if lr_out.numel() != n_groups or lr_out.dtype != torch.float32 or not lr_out.is_contiguous():
            raise ValueError(f"lr_out must be a contiguous float32 tensor with {n_groups} elements; got "
                             f"{lr_out.dtype} {tuple(lr_out.shape)}")
        if steps.dtype != torch.float32 or not steps.is_contiguous():
            raise ValueError(f"steps must be a contiguous float32 tensor; got {steps.dtype}")
        if tokens is not None and (tokens.numel() != 1 or tokens.dtype != torch.int64):
            raise ValueError(f"tokens must be a one-element int64 tensor; got {tokens.dtype} {tuple(tokens.shape)}")
        parts, history = self._history(ctx)
        ints, floats, gsched, hparams, clock = self._sched(ctx)
        found = ctx.found_inf.reshape(-1) if ctx.found_inf is not None else lr_out  # dummy unless HAS_FOUND
        _advance.advance_kernel[(1,)](
            ints, floats, gsched, hparams, clock, found,
            steps, lr_out, tokens if tokens is not None else clock, parts if history is not None else lr_out,
            history if history is not None else lr_out, n_groups, steps.numel(),
            parts.shape[0] if history is not None else 0, history.shape[0] if history is not None else 1,
            HAS_FOUND=ctx.found_inf is not None, HAS_TOKENS=tokens is not None, HAS_HISTORY=history is not None,
            PHASE_BLOCK=_schedule.phase_block(ctx.sched.max_rows), BLOCK=1024, num_warps=4)

    @staticmethod
    def _history(ctx: StepContext):
        """``(gnorm_partials, history)`` checked; ``history`` is ``None`` when there is none to write (absent or
        of capacity 0)."""
        history, parts = ctx.history, ctx.gnorm_partials
        if history is None or history.numel() == 0:
            return parts, None
        if history.dim() != 2 or history.shape[1] != L.GN_COLS or history.dtype != torch.float32 \
                or not history.is_contiguous():
            raise ValueError(f"ctx.history must be a contiguous float32 [capacity, {L.GN_COLS}] tensor; got "
                             f"{history.dtype} {tuple(history.shape)}")
        if parts is None or parts.dim() != 2 or parts.shape[1] != L.GN_COLS or parts.dtype != torch.float32 \
                or not parts.is_contiguous():
            raise ValueError(f"ctx.history needs ctx.gnorm_partials, a contiguous float32 [rows, {L.GN_COLS}] "
                             f"tensor (every bucket's gnorm_out rows); got "
                             f"{None if parts is None else (parts.dtype, tuple(parts.shape))}")
        return parts, history

    @launches_on(lambda tables, t: t.device)
    def evaluate_schedule(self, tables: ScheduleTables, t: torch.Tensor) -> torch.Tensor:
        t = t.reshape(-1).to(torch.int64).contiguous()
        out = torch.empty(t.numel(), dtype=torch.float32, device=t.device)
        if t.numel() == 0:
            return out
        self.check(t.device, torch.float32, torch.float32)
        block = 256
        _schedule.evaluate_schedule_kernel[(triton.cdiv(t.numel(), block),)](
            tables.ints.contiguous(), tables.floats.contiguous(), tables.group_sched.contiguous(), t, out, t.numel(),
            PHASE_BLOCK=_schedule.phase_block(tables.max_rows), BLOCK=block, num_warps=4)
        return out
