"""The end of an optimizer step, in one single-program launch.

For each param group ``g``: ``lr_out[g] = hparams[g, LR_SCALE] * schedule_g(clock)`` (the value every
update kernel of this step used: same device function, same clock). Then, unless ``found_inf`` is
nonzero: ``steps += 1`` (float32 per-tensor update counts), ``clock[STEPS] += 1`` and
``clock[TOKENS] += tokens``. One program does it all, after a barrier, so no program of any launch
ever races on the clock: the update kernels only read it, this kernel alone writes it, after them in
stream order.
"""

from __future__ import annotations

import triton
import triton.language as tl

from . import layout as L
from .schedule import group_lr

__all__ = ["advance_kernel"]

_STEPS = tl.constexpr(L.CLOCK_STEPS)
_TOKENS = tl.constexpr(L.CLOCK_TOKENS)


@triton.jit(do_not_specialize=["n_groups", "n_steps"])
def advance_kernel(sched_ints, sched_floats, group_sched, hparams, clock, found_inf_ptr, steps_ptr, lr_out_ptr,
                   tokens_ptr, n_groups, n_steps, HAS_FOUND: tl.constexpr, HAS_TOKENS: tl.constexpr,
                   PHASE_BLOCK: tl.constexpr, BLOCK: tl.constexpr):
    """Grid ``(1,)``. ``found_inf`` / ``tokens`` are dummies unless ``HAS_FOUND`` / ``HAS_TOKENS``."""
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
    tl.store(clock + _STEPS, steps_now + 1, mask=live)
    if HAS_TOKENS:
        tl.store(clock + _TOKENS, tokens_now + tl.load(tokens_ptr), mask=live)
