"""Multi-tensor apply: one launch covers every tensor of a bucket through two small device tables.

* the **pointer table**, int64 ``[PTR_TABLE_ROWS, n]`` (``lrsched_fused.kernels.layout``, the same table
  every backend reads): the ``data_ptr`` of tensor ``i`` of each list (params, grads, first and second
  moments, amsgrad maxima, master weights or their corrections, block scales; 0 for an absent list, never
  dereferenced) and, in rows ``PTR_NUMEL`` .. ``PTR_SALT``, its element count, last-dimension length,
  global element offset and salt;
* a **work table**, int32 ``[W, 2]``: one ``(tensor, chunk)`` row per program. Tensor ``i`` owns
  ``max(1, ceil(numel_i / CHUNK))`` consecutive rows (an empty tensor still gets one, so per-tensor
  outputs such as LAMB's norms are written for it too).

**Quantized batches** (int8 moments, ``docs/compressed_state.md``): a program must see whole blocks (it
takes each block's max), so there a work row is ``(tensor, run)``: run ``j`` of a tensor is its blocks
``[j RUN, (j + 1) RUN)`` in flat order (block ``k`` = ``row * nb + b`` covers elements
``[row D + b QB, row D + min((b + 1) QB, D))``, ``nb = ceil(D / QB)``), ``RUN = max(1, CHUNK // QB)``.
Consecutive blocks are adjacent in memory, so a run is one contiguous range of at most ``RUN * QB``
elements. :func:`run_extent` and :func:`block_tile` give a program its run and ``[TR, QB]`` tiles of it
(one block per tile row, the row's tail masked); when every tensor's ``D`` is a multiple of ``QB``
(``FULL``) block ``k`` simply starts at ``k QB`` and the mask is per row only.

:func:`build_table` copies the host pointer table (built by the caller from the tensors' ``data_ptr``
values) to the device and derives the work table; the caller keeps the result. The gradients change
every step (``zero_grad(set_to_none=True)`` frees them): :meth:`MultiTensorTable.refresh_grads` compares
their ``data_ptr`` values and, only if they moved, rewrites that one row with a non-blocking copy.
Building reads only host metadata (pointers, sizes): no device value is read, nothing waits for the device.

Chunking follows apex's ``multi_tensor_apply`` (65536-element chunks on a GPU), without its argument
size limit: the tables live in device memory, so the number of launches per step does not depend on
the number of tensors. In a kernel, ``list_ptr`` turns a table entry into a typed pointer; when every
address is 16-byte aligned (``ALIGNED``, checked here) it tells the compiler so, which lets it emit
128-bit loads and stores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
import triton
import triton.language as tl

from ._jit import device_jit

from . import layout as L
from .dtypes import DT_BF16, DT_F16, DT_F32, DT_I8, DT_I16, DT_U8

__all__ = ["LIST_PARAM", "LIST_GRAD", "LIST_EXP_AVG", "LIST_EXP_AVG_SQ", "LIST_MAX_EXP_AVG_SQ", "LIST_MASTER",
           "LIST_EXP_AVG_SCALE", "LIST_EXP_AVG_SQ_SCALE", "NUM_LISTS", "MultiTensorTable", "build_table",
           "work_rows", "list_ptr", "table_int", "master_ptr", "work_item", "chunk_extent", "run_extent",
           "block_tile"]

# the pointer-table rows as kernel constants (numbers from layout.PTR_*)
LIST_PARAM = tl.constexpr(L.PTR_PARAM)
LIST_GRAD = tl.constexpr(L.PTR_GRAD)
LIST_EXP_AVG = tl.constexpr(L.PTR_EXP_AVG)
LIST_EXP_AVG_SQ = tl.constexpr(L.PTR_EXP_AVG_SQ)
LIST_MAX_EXP_AVG_SQ = tl.constexpr(L.PTR_MAX_EXP_AVG_SQ)
LIST_MASTER = tl.constexpr(L.PTR_MASTER)
LIST_EXP_AVG_SCALE = tl.constexpr(L.PTR_EXP_AVG_SCALE)
LIST_EXP_AVG_SQ_SCALE = tl.constexpr(L.PTR_EXP_AVG_SQ_SCALE)
ROW_LAST_DIM = tl.constexpr(L.PTR_LAST_DIM)
ROW_ELEM_OFFSET = tl.constexpr(L.PTR_ELEM_OFFSET)
ROW_SALT = tl.constexpr(L.PTR_SALT)
_MASTER_FP32 = tl.constexpr(L.MASTER_FP32)
_MASTER_CORR8 = tl.constexpr(L.MASTER_CORR8)
#: rows that hold addresses (the rest of the table: element counts)
NUM_LISTS = L.PTR_NUMEL

_ALIGN = 16


def _aligned(ptrs: Sequence[int]) -> bool:
    return all(p % _ALIGN == 0 for p in ptrs)


@dataclass
class MultiTensorTable:
    """Device tables of one bucket (see the module docstring) and scratch buffers sized by them."""

    n: int
    chunk: int
    n_work: int
    max_chunks: int
    ptrs: torch.Tensor           # int64 [PTR_TABLE_ROWS, n]
    work: torch.Tensor           # int32 [n_work, 2] = (tensor, chunk)
    first_work: torch.Tensor     # int32 [n]: first work row of each tensor
    chunks: torch.Tensor         # int32 [n]: work rows of each tensor
    grad_ptrs: list[int]
    aligned_static: bool
    aligned_grads: bool
    quant_block: int = 0         # > 0: quantized layout, work rows are (tensor, run of RUN blocks)
    run_blocks: int = 0          # RUN: blocks per program (quantized layout)
    full_blocks: bool = True     # every last dimension is a multiple of quant_block (quantized layout)
    dims_aligned: bool = True    # every block starts 16 elements-aligned (FULL, or every D % 16 == 0)
    scratch: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def aligned(self) -> bool:
        return self.aligned_static and self.aligned_grads and self.dims_aligned

    @property
    def numels(self) -> torch.Tensor:
        """int64 ``[n]``: the element counts (row ``PTR_NUMEL`` of the pointer table)."""
        return self.ptrs[L.PTR_NUMEL]

    def refresh_grads(self, grads: Sequence[torch.Tensor]) -> None:
        """Point the grad row at ``grads`` (a non-blocking host-to-device copy, only if they moved). The
        caller guarantees shapes and dtypes (the optimizer checks every gradient before each step)."""
        if len(grads) != self.n:
            raise ValueError(f"grads has {len(grads)} tensors; the table has {self.n}")
        ptrs = [g.data_ptr() for g in grads]
        if ptrs == self.grad_ptrs:
            return
        host = torch.tensor(ptrs, dtype=torch.int64)
        if self.ptrs.is_cuda:  # pinned: a stream-ordered copy with no host sync (and one a CUDA graph can capture);
            host = host.pin_memory()  # kept alive until the next refresh, after the copy has run
            self.scratch["grad_ptrs_host"] = host
        self.ptrs[L.PTR_GRAD].copy_(host, non_blocking=True)
        self.grad_ptrs = ptrs
        self.aligned_grads = _aligned(ptrs)

    def buffer(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A scratch tensor kept with the table (allocated once; its contents are not preserved)."""
        buf = self.scratch.get(name)
        if buf is None or tuple(buf.shape) != shape or buf.dtype != dtype:
            buf = torch.empty(shape, dtype=dtype, device=self.ptrs.device)
            self.scratch[name] = buf
        return buf


def _blocks(numel: int, last_dim: int, quant_block: int) -> int:
    """Quantization blocks of a tensor: ``rows * ceil(D / QB)``."""
    if numel <= 0 or last_dim <= 0:
        return 0
    return numel // last_dim * triton.cdiv(last_dim, quant_block)


def _rows_per_tensor(numels: Sequence[int], last_dims: Sequence[int], chunk: int, quant_block: int) -> list[int]:
    if not quant_block:
        return [max(1, triton.cdiv(numel, chunk)) for numel in numels]
    run = max(1, chunk // quant_block)
    return [max(1, triton.cdiv(_blocks(numel, d, quant_block), run)) for numel, d in zip(numels, last_dims)]


def work_rows(numels: Sequence[int], last_dims: Sequence[int], chunk: int, quant_block: int = 0) -> int:
    """Rows of the work table (programs of an update launch) :func:`build_table` makes for these sizes."""
    return sum(_rows_per_tensor(numels, last_dims, chunk, quant_block))


def build_table(pointer_table: torch.Tensor, chunk: int, device: torch.device,
                quant_block: int = 0) -> MultiTensorTable:
    """Device tables from a host int64 ``[PTR_TABLE_ROWS, n]`` pointer table (``layout.PTR_*`` rows); with
    ``quant_block`` the quantized layout (work rows over runs of whole blocks)."""
    if pointer_table.dim() != 2 or pointer_table.shape[0] != L.PTR_TABLE_ROWS or pointer_table.dtype != torch.int64:
        raise ValueError(f"pointer_table must be int64 [{L.PTR_TABLE_ROWS}, n]; got {pointer_table.dtype} "
                         f"{tuple(pointer_table.shape)}")
    rows = pointer_table.tolist()
    n = pointer_table.shape[1]
    numels, dims = rows[L.PTR_NUMEL], rows[L.PTR_LAST_DIM]
    work: list[int] = []
    first: list[int] = []
    counts: list[int] = []
    for i, k in enumerate(_rows_per_tensor(numels, dims, chunk, quant_block)):
        first.append(len(work) // 2)
        counts.append(k)
        for c in range(k):
            work += (i, c)
    if len(work) // 2 >= 2**31:
        raise ValueError("too many chunks for one launch; use a larger chunk size")
    host = [pointer_table.contiguous(), torch.tensor(work, dtype=torch.int32).reshape(-1, 2),
            torch.tensor(first, dtype=torch.int32), torch.tensor(counts, dtype=torch.int32)]
    if device.type != "cpu":
        host = [t.to(device, non_blocking=True) for t in host]
    else:
        host[0] = host[0].clone()  # the grad row is rewritten in place: never alias the caller's table
    static = [p for r in range(L.PTR_NUMEL) if r != L.PTR_GRAD for p in rows[r]]
    grad_ptrs = rows[L.PTR_GRAD]
    live = [d for numel, d in zip(numels, dims) if numel > 0]
    full = all(d % quant_block == 0 for d in live) if quant_block else True
    return MultiTensorTable(
        n=n, chunk=chunk, n_work=len(work) // 2, max_chunks=max(counts, default=1),
        ptrs=host[0], work=host[1], first_work=host[2], chunks=host[3], grad_ptrs=grad_ptrs,
        aligned_static=_aligned(static), aligned_grads=_aligned(grad_ptrs), quant_block=quant_block,
        run_blocks=max(1, chunk // quant_block) if quant_block else 0, full_blocks=full,
        dims_aligned=full or all(d % 16 == 0 for d in live),
    )


@device_jit
def list_ptr(ptr_table, ROW: tl.constexpr, n_tensors, i, DT: tl.constexpr, ALIGNED: tl.constexpr):
    """Typed pointer to the first element of tensor ``i`` of list ``ROW``."""
    addr = tl.load(ptr_table + ROW * n_tensors + i)
    # The cast is spelled out here rather than calling dtypes.typed_ptr: an alignment hint must sit on the
    # op that makes the pointer (a hint on the int64, or on a call's result, is lost before the compiler's
    # alignment analysis, and the loads stay scalar).
    if DT == DT_F32:
        ptr = addr.to(tl.pointer_type(tl.float32))
    elif DT == DT_BF16:
        ptr = addr.to(tl.pointer_type(tl.uint16))
    elif DT == DT_F16:
        ptr = addr.to(tl.pointer_type(tl.float16))
    elif DT == DT_I8:
        ptr = addr.to(tl.pointer_type(tl.int8))
    elif DT == DT_U8:
        ptr = addr.to(tl.pointer_type(tl.uint8))
    elif DT == DT_I16:
        ptr = addr.to(tl.pointer_type(tl.int16))
    else:
        ptr = addr.to(tl.pointer_type(tl.float64))
    if ALIGNED:
        ptr = tl.multiple_of(ptr, 16)
    return ptr


@device_jit
def master_ptr(ptr_table, n_tensors, i, MASTER: tl.constexpr, ALIGNED: tl.constexpr):
    """Typed pointer to tensor ``i``'s master weights (``MASTER_FP32``) or corrections (``MASTER_CORR*``)."""
    if MASTER == _MASTER_FP32:
        return list_ptr(ptr_table, LIST_MASTER, n_tensors, i, DT_F32, ALIGNED)
    elif MASTER == _MASTER_CORR8:
        return list_ptr(ptr_table, LIST_MASTER, n_tensors, i, DT_I8, ALIGNED)
    else:  # MASTER_CORR16, or none (a dummy, never dereferenced)
        return list_ptr(ptr_table, LIST_MASTER, n_tensors, i, DT_I16, ALIGNED)


@device_jit
def table_int(ptr_table, ROW: tl.constexpr, n_tensors, i):
    """Tensor ``i``'s entry of an integer row (``PTR_NUMEL`` .. ``PTR_SALT``)."""
    return tl.load(ptr_table + ROW * n_tensors + i)


@device_jit
def work_item(work_ptr):
    """This program's ``(tensor, chunk)``."""
    pid = tl.program_id(0).to(tl.int64)  # 2 * pid overflows int32 from 2**30 programs on
    return tl.load(work_ptr + 2 * pid), tl.load(work_ptr + 2 * pid + 1)


@device_jit
def chunk_extent(numel, chunk, limit, CHUNK: tl.constexpr):
    """``(start, n_local)``: the chunk's first element (int64) and how many of its elements lie below
    ``min(numel, limit)`` (int32, 0 when ``limit`` is 0: a skipped step touches nothing)."""
    start = chunk.to(tl.int64) * CHUNK
    end = tl.minimum(numel, limit)
    n_local = tl.minimum(tl.maximum(end - start, 0), CHUNK).to(tl.int32)
    return start, n_local


@device_jit
def run_extent(numel, last_dim, run, live, RUN: tl.constexpr, QB: tl.constexpr, FULL: tl.constexpr,
               ALIGNED: tl.constexpr):
    """Run ``run`` of a tensor (quantized layout): ``(first, n_here, start, nb)``: its first block (int64),
    how many blocks it holds (int32; 0 unless ``live``), the element offset where its memory begins (int64)
    and the blocks per row."""
    d = tl.maximum(last_dim, 1)
    nb = (d + QB - 1) // QB
    n_blocks = tl.where(last_dim > 0, numel // d, 0) * nb
    first = run.to(tl.int64) * RUN
    n_here = tl.where(live, tl.minimum(tl.maximum(n_blocks - first, 0), RUN), 0).to(tl.int32)
    if FULL:
        start = first * QB
    else:
        start = (first // nb) * d + (first % nb) * QB
        if ALIGNED:  # every D % 16 == 0
            start = tl.multiple_of(start, 16)
    return first, n_here, start, nb


@device_jit
def block_tile(first, t, n_here, start, last_dim, nb, TR: tl.constexpr, QB: tl.constexpr, FULL: tl.constexpr,
               ALIGNED: tl.constexpr):
    """Tile ``t`` of a run: ``(offs, mask, r, ok)``: element offsets from the run's ``start`` (int32
    ``[TR, QB]``), the mask of real elements, each row's block index within the run (``[TR]``, also its
    scales' offset from the run's first scale) and which rows are real blocks."""
    r = t * TR + tl.arange(0, TR)
    ok = r < n_here
    col = tl.arange(0, QB)
    if FULL:
        offs = r[:, None] * QB + col[None, :]
        mask = tl.broadcast_to(ok[:, None], (TR, QB))
    else:
        k = first + r
        b = k % nb
        base = (k // nb) * last_dim + b * QB - start
        length = tl.minimum(last_dim - b * QB, QB).to(tl.int32)
        base = base.to(tl.int32)
        if ALIGNED:  # every D % 16 == 0: blocks start, and end, on 16-element boundaries
            base = tl.multiple_of(base, 16)
            length = tl.multiple_of(length, 16)
        offs = base[:, None] + col[None, :]
        mask = ok[:, None] & (col[None, :] < length[:, None])
    return offs, mask, r, ok
