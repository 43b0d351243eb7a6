"""Sum of squares of all gradients of a bucket (LAMB's global-norm clipping), deterministic.

``grad_sumsq_kernel`` (grid: work rows) writes each chunk's ``sum (grad / grad_scale)^2`` (float32
partial, accumulated in the compute type); ``sum_kernel`` (one program) adds the partials in row order
in float64. Two launches whatever the number of tensors, no atomics: the same inputs give the same
bits on every run.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._jit import device_jit

from .dtypes import load_as, precise_div, to_compute
from .multi_tensor import LIST_GRAD, chunk_extent, list_ptr, work_item

__all__ = ["grad_sumsq_kernel", "sum_kernel"]


@device_jit
def _sumsq_block(g_ptr, offs, mask, scale, acc, P_DT: tl.constexpr, F64: tl.constexpr,
                 HAS_SCALE: tl.constexpr, MASKED: tl.constexpr):
    g = load_as(g_ptr, offs, mask, P_DT, F64, MASKED)
    if HAS_SCALE:
        g = precise_div(g, scale, F64)
    return acc + g * g


@triton.jit(do_not_specialize=["n_tensors"])
def grad_sumsq_kernel(ptr_table, numels_ptr, work_ptr, grad_scale_ptr, partials_ptr, n_tensors,
                      P_DT: tl.constexpr, F64: tl.constexpr, HAS_SCALE: tl.constexpr, ALIGNED: tl.constexpr,
                      CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    """``partials[pid] = sum over chunk work[pid] of (grad / grad_scale)^2`` (float32)."""
    i, c = work_item(work_ptr)
    numel = tl.load(numels_ptr + i)
    scale = to_compute(tl.load(grad_scale_ptr), F64)  # a dummy one-element tensor unless HAS_SCALE
    start, n_local = chunk_extent(numel, c, numel, CHUNK)
    g_ptr = list_ptr(ptr_table, LIST_GRAD, n_tensors, i, P_DT, ALIGNED) + start
    acc = to_compute(tl.zeros([BLOCK], dtype=tl.float32), F64)
    n_full = n_local // BLOCK
    for j in range(0, n_full):
        offs = j * BLOCK + tl.arange(0, BLOCK)
        acc = _sumsq_block(g_ptr, offs, offs < n_local, scale, acc, P_DT, F64, HAS_SCALE, False)
    offs = n_full * BLOCK + tl.arange(0, BLOCK)
    acc = _sumsq_block(g_ptr, offs, offs < n_local, scale, acc, P_DT, F64, HAS_SCALE, True)
    tl.store(partials_ptr + tl.program_id(0), tl.sum(acc, axis=0).to(tl.float32))


@triton.jit(do_not_specialize=["n"])
def sum_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    """``out[0] = sum(x[:n])`` (float32 in, float64 accumulation, float32 out), one program."""
    acc = tl.zeros([BLOCK], dtype=tl.float64)
    for k in range(0, tl.cdiv(n, BLOCK)):
        offs = k * BLOCK + tl.arange(0, BLOCK)
        acc += tl.load(x_ptr + offs, mask=offs < n, other=0.0).to(tl.float64)
    tl.store(out_ptr, tl.sum(acc, axis=0).to(tl.float32))
