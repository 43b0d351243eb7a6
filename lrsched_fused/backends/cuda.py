"""The ``"cuda"`` backend: the CUDA sources in ``csrc/cuda`` (extension ``lrsched_fused._cuda``).

Built only where nvcc and a GPU are present (see ``setup.py``). Same math and tables as the CPU backend
(the schedule, the per-element updates, the dtype combinations and the clock advance come from the
shared headers in ``csrc/include/lrsched``, compressed state included: int8 moments, compact master weights,
stochastic rounding, docs/compressed_state.md): the device copy of the bucket's pointer table
(``TensorBatch.pointer_table()``, ``layout.PTR_*`` rows) and one thread block per (tensor, chunk of
``_cuda.CHUNK_ELEMS`` elements, or of whole quantization blocks for int8 moments) from a block table, both
cached per bucket; AdamW is one launch; LAMB is stage 1 (norm partials), a per-tensor reduction in chunk
order (deterministic, no float atomics) and stage 2 (moments and update), with the ``allreduce`` callback
between the reduction and stage 2 for sharded parameters (phases ``layout.LAMB_*``). The update kernels also
write per-block gradient-norm partials, which one more block reduces in a fixed tree into
``batch.gnorm_out`` (``gnorm_rows`` is 1). Every call is asynchronous on the current stream: nothing is read
on the host.
"""

from __future__ import annotations

from typing import Callable

import torch

from lrsched_fused.kernels import layout as L
from lrsched_fused.schedules import ScheduleTables

from ._api import BackendUnavailable, StepContext, TensorBatch, batch_device, launches_on

if not torch.cuda.is_available():
    raise BackendUnavailable("backend 'cuda' needs a CUDA device (torch.cuda.is_available() is False)")
try:
    from lrsched_fused import _cuda as _ext
except ImportError as exc:
    raise BackendUnavailable(
        f"backend 'cuda' is not available: the extension lrsched_fused._cuda is not built ({exc}); reinstall "
        "on a machine with nvcc and a GPU (or LRSCHED_BUILD_CUDA=1): pip install -e ."
    ) from exc

__all__ = ["CudaBackend"]

_CACHE_KEY = "cuda"


def _code(dtype: torch.dtype, what: str) -> int:
    try:
        return L.dtype_code(dtype)
    except ValueError:
        raise BackendUnavailable(f"backend 'cuda' has no kernels for {what} dtype {dtype}") from None


_MASTER_NAMES = {L.MASTER_NONE: "", L.MASTER_FP32: " and fp32 master weights",
                 L.MASTER_CORR8: " and int8 compact master corrections",
                 L.MASTER_CORR16: " and int16 compact master corrections"}


def _unsupported(pdtype: torch.dtype, sdtype: torch.dtype, master: int) -> str:
    return (f"backend 'cuda' has no kernels for parameter dtype {pdtype} with state dtype {sdtype}"
            f"{_MASTER_NAMES.get(int(master), '')}")


def _chunk_counts(batch: TensorBatch, numels: list[int], last_dims: list[int]) -> list[int]:
    """Thread blocks per tensor: chunks of CHUNK_ELEMS elements, or of CHUNK_ELEMS / quant_block whole
    quantization blocks (rows * ceil(last_dim / quant_block) blocks per tensor) for int8 moments."""
    chunk = _ext.CHUNK_ELEMS
    if not batch.quantized:
        return [(k + chunk - 1) // chunk for k in numels]
    per = chunk // batch.quant_block
    out = []
    for k, d in zip(numels, last_dims):
        blocks = (k // max(d, 1)) * -(-max(d, 1) // batch.quant_block) if k else 0
        out.append((blocks + per - 1) // per)
    return out


def _stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream


class _DeviceTables:
    """Pointer and block tables of one bucket on its device, and the LAMB workspaces."""

    def __init__(self, batch: TensorBatch) -> None:
        device = batch.device
        n = len(batch)
        self.device = device
        self.pdtype = _code(batch.dtype, "parameter")
        self.sdtype = _code(batch.state_dtype, "state")
        has_max, master_mode = batch.max_exp_avg_sqs is not None, batch.master_mode
        if not _ext.supported(self.pdtype, self.sdtype, master_mode):
            raise BackendUnavailable(_unsupported(batch.dtype, batch.state_dtype, master_mode))
        batch.validate()
        if batch.quantized and not 1 <= batch.quant_block <= _ext.MAX_QUANT_BLOCK:
            raise ValueError(f"quant_block must be at most {_ext.MAX_QUANT_BLOCK} for backend 'cuda'; "
                             f"got {batch.quant_block}")
        host = batch.pointer_table()  # int64 [PTR_TABLE_ROWS, n] on the host
        numels = host[L.PTR_NUMEL].tolist()
        counts = _chunk_counts(batch, numels, host[L.PTR_LAST_DIM].tolist())
        tensor_of = [i for i, c in enumerate(counts) for _ in range(c)]
        chunk_of = [j for c in counts for j in range(c)]
        first = [0]
        for c in counts:
            first.append(first[-1] + c)
        self.nblocks = len(tensor_of)
        self.table = host.to(device)
        self.blocks = torch.tensor([tensor_of, chunk_of], dtype=torch.int32).reshape(2, -1).to(device)
        self.first_block = torch.tensor(first, dtype=torch.int64).to(device)
        self.grad_ptrs = host[L.PTR_GRAD].tolist()
        self._pinned: torch.Tensor | None = None
        # (table, n, pdtype, sdtype, has_max, master_mode, blocks, nblocks, first_block, quant_block, sr)
        self.tt = (self.table.data_ptr(), n, self.pdtype, self.sdtype, int(has_max), master_mode,
                   self.blocks.data_ptr(), self.nblocks, self.first_block.data_ptr(), int(batch.quant_block),
                   int(bool(batch.stochastic_rounding)))
        self.partials = torch.zeros(max(1, 2 * self.nblocks), dtype=torch.float64, device=device)
        self.gn_partials = torch.zeros(max(1, L.GN_COLS * self.nblocks), dtype=torch.float64, device=device)
        self.ratio = torch.zeros(max(1, n), dtype=torch.float64, device=device)
        self.sums = torch.zeros(n, 2, dtype=torch.float32, device=device)
        self.gnorm = _gnorm_addr(batch.gnorm_out, device)

    def refresh_grads(self, grads: list[torch.Tensor]) -> None:
        ptrs = [g.data_ptr() for g in grads]
        if ptrs != self.grad_ptrs:  # stream-ordered copy from pinned memory: no host sync
            pinned = torch.tensor(ptrs, dtype=torch.int64).pin_memory()
            self.table[L.PTR_GRAD].copy_(pinned, non_blocking=True)
            self._pinned, self.grad_ptrs = pinned, ptrs


def _opt(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def _gnorm_addr(gnorm_out: torch.Tensor | None, device: torch.device) -> int:
    if gnorm_out is None:
        return 0
    if (gnorm_out.device != device or gnorm_out.dtype != torch.float32 or not gnorm_out.is_contiguous()
            or gnorm_out.numel() != L.GN_COLS):
        raise ValueError(f"batch.gnorm_out must be a contiguous float32 tensor of shape (1, {L.GN_COLS}) on {device} "
                         f"for backend 'cuda' (gnorm_rows is 1)")
    return gnorm_out.data_ptr()


def _rows_addr(t: torch.Tensor | None, name: str) -> tuple[int, int]:
    if t is None:
        return 0, 0
    if t.dtype != torch.float32 or not t.is_contiguous() or t.dim() != 2 or t.shape[1] != L.GN_COLS:
        raise ValueError(f"{name} must be a contiguous float32 tensor of shape (rows, {L.GN_COLS})")
    return t.data_ptr(), t.shape[0]


def _ctx(ctx: StepContext, batch: TensorBatch | None) -> tuple[int, ...]:
    tabs = ctx.sched
    return (tabs.ints.data_ptr(), tabs.floats.data_ptr(), tabs.group_sched.data_ptr(), ctx.hparams.data_ptr(),
            tabs.group_sched.shape[0], ctx.clock.data_ptr(),
            batch.group_index.data_ptr() if batch is not None else 0,
            batch.steps.data_ptr() if batch is not None else 0, _opt(ctx.found_inf), _opt(ctx.grad_scale))


class CudaBackend:
    """CUDA kernels from ``csrc/cuda`` (see the module docstring)."""

    name = "cuda"

    @staticmethod
    def _tables(batch: TensorBatch) -> _DeviceTables:
        return batch.cached_tables(_CACHE_KEY, _DeviceTables)

    def check(self, device: torch.device, param_dtype: torch.dtype, state_dtype: torch.dtype) -> None:
        if torch.device(device).type != "cuda":
            raise BackendUnavailable(f"backend 'cuda' needs CUDA tensors; got device {device}")
        if not _ext.supported(_code(param_dtype, "parameter"), _code(state_dtype, "state"), L.MASTER_NONE):
            raise BackendUnavailable(_unsupported(param_dtype, state_dtype, L.MASTER_NONE))

    def gnorm_rows(self, batch: TensorBatch) -> int:
        """Per-block partials are reduced on the device (one more block, a fixed tree): one row."""
        return 1

    @staticmethod
    def _empty(batch: TensorBatch) -> bool:
        if len(batch):
            return False
        if batch.gnorm_out is not None:
            batch.gnorm_out.zero_()
        return True

    @launches_on(batch_device)
    def adamw(self, batch: TensorBatch, ctx: StepContext, *, amsgrad: bool) -> None:
        if self._empty(batch):
            return
        tabs = self._tables(batch)
        if amsgrad and batch.max_exp_avg_sqs is None:
            raise ValueError("amsgrad=True needs TensorBatch.max_exp_avg_sqs")
        _ext.adamw(tabs.tt, _ctx(ctx, batch), bool(amsgrad), tabs.gn_partials.data_ptr(), tabs.gnorm,
                   _stream(tabs.device))

    @launches_on(batch_device)
    def lamb(self, batch: TensorBatch, ctx: StepContext, *, norms_out: torch.Tensor,
             clip_div: torch.Tensor | None, allreduce: Callable[[torch.Tensor], None] | None) -> None:
        if self._empty(batch):
            return
        tabs = self._tables(batch)
        if not norms_out.is_contiguous() or norms_out.dtype != torch.float32:
            raise ValueError("norms_out must be a contiguous float32 tensor")
        c, stream = _ctx(ctx, batch), _stream(tabs.device)
        args = (tabs.tt, c, _opt(clip_div), norms_out.data_ptr(), tabs.partials.data_ptr(), tabs.ratio.data_ptr(),
                tabs.sums.data_ptr())
        gn = (tabs.gn_partials.data_ptr(), tabs.gnorm)
        if allreduce is None:
            _ext.lamb(*args, L.LAMB_FUSED, *gn, stream)
            return
        _ext.lamb(*args, L.LAMB_STAGE1, *gn, stream)
        allreduce(tabs.sums)
        _ext.lamb(*args, L.LAMB_STAGE2, 0, 0, _stream(tabs.device))

    @launches_on(batch_device)
    def grad_sumsq(self, batch: TensorBatch, ctx: StepContext) -> torch.Tensor:
        out = torch.zeros((), dtype=torch.float32, device=batch.device)
        if len(batch) == 0:
            return out
        tabs = self._tables(batch)
        _ext.grad_sumsq(tabs.tt, _opt(ctx.grad_scale), tabs.partials.data_ptr(), out.data_ptr(), _stream(tabs.device))
        return out

    @launches_on(lambda ctx, *args, **kwargs: ctx.clock.device)
    def advance(self, ctx: StepContext, steps: torch.Tensor, lr_out: torch.Tensor,
                tokens: torch.Tensor | None) -> None:
        partials, rows = _rows_addr(ctx.gnorm_partials, "StepContext.gnorm_partials")
        history, capacity = _rows_addr(ctx.history, "StepContext.history")
        _ext.advance(_ctx(ctx, None), steps.data_ptr(), steps.numel(), lr_out.data_ptr(),
                     _opt(None if tokens is None else tokens.contiguous()), partials, rows, history, capacity,
                     _stream(steps.device))

    @launches_on(lambda tables, t: tables.ints.device)
    def evaluate_schedule(self, tables: ScheduleTables, t: torch.Tensor) -> torch.Tensor:
        t = t.to(device=tables.ints.device, dtype=torch.int64).contiguous()
        first, rows = (int(x) for x in tables.group_sched[0, :2].tolist())
        out = torch.empty(t.shape, dtype=torch.float32, device=t.device)
        _ext.evaluate_schedule(tables.ints.data_ptr(), tables.floats.data_ptr(), first, rows, t.data_ptr(), t.numel(),
                               out.data_ptr(), _stream(t.device))
        return out
