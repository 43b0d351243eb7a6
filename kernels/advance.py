"""The end of an optimizer step, in one single-program launch.

For each param group ``g``: ``lr_out[g] = hparams[g, LR_SCALE] * schedule_g(clock)`` (the value every
update kernel of this step used: same device function, same clock). Then, unless ``found_inf`` is
nonzero: ``steps += 1`` (float32 per-tensor update counts), ``clock[STEPS] += 1`` and
``clock[TOKENS] += tokens``. One program does it all, after a barrier, so no program of any launch
ever races on the clock: the update kernels only read it, this kernel alone writes it, after them in
stream order.

With ``HAS_HISTORY``, and unless the step is skipped, it also writes the step's gradient norms:
``history[clock[STEPS] % capacity] = (sum of every gnorm partial row)`` (``GN_SUMSQ``, ``GN_SUMABS``), the
rows added in float64 in a fixed order (``BLOCK`` lanes over the rows in order, then the lanes), stored as
float32. The partials are the update kernels' per-program rows of this step, so no extra pass over memory.
"""

from __future__ import annotations

import triton
import triton.language as tl

from . import layout as L
from .schedule import group_lr

__all__ = ["advance_kernel"]

_STEPS = tl.constexpr(L.CLOCK_STEPS)
_TOKENS = tl.constexpr(L.CLOCK_TOKENS)
_GN_COLS = tl.constexpr(L.GN_COLS)
_GN_SUMSQ = tl.constexpr(L.GN_SUMSQ)
_GN_SUMABS = tl.constexpr(L.GN_SUMABS)


@triton.jit(do_not_specialize=["n_groups", "n_steps", "n_rows", "capacity"])
def advance_kernel(sched_ints, sched_floats, group_sched, hparams, clock, found_inf_ptr, steps_ptr, lr_out_ptr,
                   tokens_ptr, gnorm_ptr, history_ptr, n_groups, n_steps, n_rows, capacity,
                   HAS_FOUND: tl.constexpr, HAS_TOKENS: tl.constexpr, HAS_HISTORY: tl.constexpr,
                   PHASE_BLOCK: tl.constexpr, BLOCK: tl.constexpr):
    """Grid ``(1,)``. ``found_inf`` / ``tokens`` / ``gnorm`` and ``history`` are dummies unless
    ``HAS_FOUND`` / ``HAS_TOKENS`` / ``HAS_HISTORY``."""
    for g in range(0, n_groups):
        tl.store(lr_out_ptr + g, group_lr(sched_ints, sched_floats, group_sched, hparams, clock, g, PHASE_BLOCK))
    if HAS_FOUND:
        live = tl.load(found_inf_ptr) == 0.0
    else:
        live = tl.full([], 1, tl.int1)  # found_inf_ptr is a dummy
    steps_now = tl.load(clock + _STEPS)
    tokens_now = tl.load(clock + _TOKENS)
    tl.debug_barrier()  # every thread has read the clock before anyone writes it
    n_live = tl.where(live, n_steps, 0)
    for k in range(0, tl.cdiv(n_live, BLOCK)):
        offs = k * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n_live
        s = tl.load(steps_ptr + offs, mask=mask, other=0.0)
        tl.store(steps_ptr + offs, s + 1.0, mask=mask)
    if HAS_HISTORY:
        acc_sq = tl.zeros([BLOCK], dtype=tl.float64)
        acc_abs = tl.zeros([BLOCK], dtype=tl.float64)
        for k in range(0, tl.cdiv(n_rows, BLOCK)):
            rows = (k * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
            mask = rows < n_rows
            acc_sq += tl.load(gnorm_ptr + rows * _GN_COLS + _GN_SUMSQ, mask=mask, other=0.0).to(tl.float64)
            acc_abs += tl.load(gnorm_ptr + rows * _GN_COLS + _GN_SUMABS, mask=mask, other=0.0).to(tl.float64)
        slot = history_ptr + (steps_now % capacity) * _GN_COLS
        tl.store(slot + _GN_SUMSQ, tl.sum(acc_sq, axis=0).to(tl.float32), mask=live)
        tl.store(slot + _GN_SUMABS, tl.sum(acc_abs, axis=0).to(tl.float32), mask=live)
    tl.store(clock + _STEPS, steps_now + 1, mask=live)
    if HAS_TOKENS:
        tl.store(clock + _TOKENS, tokens_now + tl.load(tokens_ptr), mask=live)
