"""The ``"cpu"`` backend: the C++17 + OpenMP extension ``lrsched_fused._cpu`` (sources in ``csrc/``).

One call per bucket updates every tensor of it: the extension receives the bucket's pointer table
(``TensorBatch.pointer_table()``, int64 ``[layout.PTR_TABLE_ROWS, n]``: data pointers of params, grads,
moments, master weights or compact corrections, int8-moment block scales, and the numels, last dimensions,
global element offsets and salts; cached per batch, the grad row rewritten each step), the ``layout.DT_*``
codes of the dtypes, the ``layout.MASTER_*`` mode, the quantization block and the stochastic-rounding flag,
the address of ``batch.gnorm_out`` (the gradient-norm partials), and the addresses of the optimizer's device
tables (schedule, hyperparameters, clock, steps, ``found_inf``, ``grad_scale``), and evaluates the schedule
and the per-tensor coefficients itself, as the GPU kernels do. Nothing is read on the host here (no
``.item()``): even on CPU tensors the backend keeps the GPU discipline.

Numerics (see ``csrc/include/lrsched/*.h`` for the formulas):

* math in float32 (float64 for float64 parameters); per-tensor coefficients in double, rounded once;
* the gradient is multiplied by ``1 / grad_scale`` (and ``1 / clip_div``), equal to torch's division when
  the scale is a power of two, as GradScaler's is;
* LAMB forms its update from the moments as stored (rounded to the state dtype, or int8 codes decoded; see
  ``_api`` and docs/compressed_state.md, which the int8 moments, compact master weights and stochastic
  rounding follow bit for bit);
* the gradient-norm partials (sums of ``g^2`` and ``|g|`` of ``grad / grad_scale``) are accumulated in the
  update kernels' fixed chunks and reduced to one row (``gnorm_rows``) in float64;
* LAMB norms: fixed chunks of ``_cpu.CHUNK_ELEMS`` elements, 16 fixed lanes inside a chunk, float64
  across chunks, chunks added in order: the result is bit-identical for any thread count, and (the
  kernels are built with ``-ffp-contract=off``) for every instruction set the binary dispatches to
  (baseline x86-64, AVX2, AVX-512; ``_cpu.isa()`` names the one in use, ``LRSCHED_CPU_ISA`` caps it).

The thread count follows ``torch.get_num_threads()`` (torch and the extension share one OpenMP runtime:
torch is imported first, so the extension's ``libgomp.so.1`` resolves to the one torch loaded).
"""

from __future__ import annotations

from typing import Callable

import torch  # noqa: F401  (first: the extension must bind to the OpenMP runtime torch loaded)

from lrsched_fused.kernels import layout as L
from lrsched_fused.schedules import ScheduleTables

from ._api import BackendUnavailable, StepContext, TensorBatch

try:
    from lrsched_fused import _cpu as _ext
except ImportError as exc:  # not built (no C++ compiler at install time) or built for another Python
    raise BackendUnavailable(
        f"backend 'cpu' is not available: the C++ extension lrsched_fused._cpu is not built ({exc}); "
        "reinstall with a C++17 compiler (g++ or clang++) present: pip install -e ."
    ) from exc

__all__ = ["CpuBackend", "extension"]

#: The compiled module (for tests and diagnostics: ``extension.isa()``, ``extension.layout()``).
extension = _ext

_CACHE_KEY = "cpu"


def _code(dtype: torch.dtype, what: str) -> int:
    try:
        return L.dtype_code(dtype)
    except ValueError:
        raise BackendUnavailable(f"backend 'cpu' has no kernels for {what} dtype {dtype}") from None


def _addr(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


class _BatchTables:
    """What the backend caches per batch (in ``batch.cache``, through ``batch.cached_tables``): the host
    pointer table itself (the extension reads it in place), the batch descriptor and the LAMB buffers."""

    def __init__(self, batch: TensorBatch) -> None:
        if batch.device.type != "cpu":
            raise BackendUnavailable(f"backend 'cpu' needs CPU tensors; got tensors on {batch.device}")
        self.pdtype = _code(batch.dtype, "parameter")
        self.sdtype = _code(batch.state_dtype, "state")
        self.has_max = batch.max_exp_avg_sqs is not None
        self.master_mode = batch.master_mode
        if not _ext.supported(self.pdtype, self.sdtype, self.master_mode):
            raise BackendUnavailable(_unsupported(batch.dtype, batch.state_dtype, self.master_mode))
        batch.validate()
        if batch.quantized and not 1 <= batch.quant_block <= _ext.MAX_QUANT_BLOCK:
            raise ValueError(f"quant_block must be at most {_ext.MAX_QUANT_BLOCK} for backend 'cpu'; "
                             f"got {batch.quant_block}")
        self.n = len(batch)
        self.table = batch.pointer_table()  # int64 [PTR_TABLE_ROWS, n], contiguous, on the host
        self.addr = self.table.data_ptr()
        self._grad_row = self.table.numpy()[L.PTR_GRAD]  # a view: refresh_grads writes the table in place
        self.numels = self.table[L.PTR_NUMEL].tolist()
        self.total = int(sum(self.numels))
        self.max_numel = max(self.numels, default=0)
        # (table, n, pdtype, sdtype, has_max, master_mode, quant_block, stochastic_rounding): bindings.cpp
        self.desc = (self.addr, self.n, self.pdtype, self.sdtype, int(self.has_max), self.master_mode,
                     int(batch.quant_block), int(bool(batch.stochastic_rounding)))
        self.gnorm = _gnorm_addr(batch.gnorm_out)
        self.scratch: torch.Tensor | None = None
        self.sums: torch.Tensor | None = None

    def refresh_grads(self, grads: list[torch.Tensor]) -> None:
        self._grad_row[:] = [g.data_ptr() for g in grads]


_MASTER_NAMES = {L.MASTER_NONE: "", L.MASTER_FP32: " and fp32 master weights",
                 L.MASTER_CORR8: " and int8 compact master corrections",
                 L.MASTER_CORR16: " and int16 compact master corrections"}


def _unsupported(pdtype: torch.dtype, sdtype: torch.dtype, master: int) -> str:
    return (f"backend 'cpu' has no kernels for parameter dtype {pdtype} with state dtype {sdtype}"
            f"{_MASTER_NAMES.get(int(master), '')}; supported: float32 params with float32, bfloat16 or int8 "
            "states, float64 with float64, bfloat16 with float32, bfloat16 or int8, float16 with float32, float16 "
            "or int8 (fp32 or compact int8/int16 master weights for bfloat16/float16 params)")


def _gnorm_addr(gnorm_out: torch.Tensor | None) -> int:
    if gnorm_out is None:
        return 0
    if (gnorm_out.device.type != "cpu" or gnorm_out.dtype != torch.float32 or not gnorm_out.is_contiguous()
            or gnorm_out.numel() != L.GN_COLS):
        raise ValueError(f"batch.gnorm_out must be a contiguous float32 CPU tensor of shape (1, {L.GN_COLS}) for "
                         f"backend 'cpu' (gnorm_rows is 1); got {gnorm_out.dtype} {tuple(gnorm_out.shape)} on "
                         f"{gnorm_out.device}")
    return gnorm_out.data_ptr()


def _rows_addr(t: torch.Tensor | None, name: str) -> tuple[int, int]:
    """(address, rows) of a float32 [rows, GN_COLS] CPU tensor, or (0, 0)."""
    if t is None:
        return 0, 0
    if (t.device.type != "cpu" or t.dtype != torch.float32 or not t.is_contiguous() or t.dim() != 2
            or t.shape[1] != L.GN_COLS):
        raise ValueError(f"{name} must be a contiguous float32 CPU tensor of shape (rows, {L.GN_COLS}); got "
                         f"{t.dtype} {tuple(t.shape)} on {t.device}")
    return t.data_ptr(), t.shape[0]


def _scalar_addr(t: torch.Tensor | None, name: str) -> int:
    if t is None:
        return 0
    if t.device.type != "cpu" or t.dtype != torch.float32:
        raise ValueError(f"{name} must be a float32 CPU tensor for backend 'cpu'; got {t.dtype} on {t.device}")
    return t.data_ptr()


def _tables_addrs(tables: ScheduleTables) -> tuple[int, int, int, int]:
    for name, t, dtype in (("ints", tables.ints, torch.int64), ("floats", tables.floats, torch.float64),
                           ("group_sched", tables.group_sched, torch.int64)):
        if t.device.type != "cpu" or t.dtype != dtype or not t.is_contiguous():
            raise ValueError(f"ScheduleTables.{name} must be a contiguous {dtype} CPU tensor for backend 'cpu'")
    return tables.ints.data_ptr(), tables.floats.data_ptr(), tables.group_sched.data_ptr(), tables.group_sched.shape[0]


def _ctx_addrs(ctx: StepContext, batch: TensorBatch | None) -> tuple[int, ...]:
    ints, floats, gs, groups = _tables_addrs(ctx.sched)
    hp, clock = ctx.hparams, ctx.clock
    if hp.dtype != torch.float64 or not hp.is_contiguous() or hp.device.type != "cpu" or hp.shape[0] < groups:
        raise ValueError("StepContext.hparams must be a contiguous float64 CPU tensor with a row per schedule")
    if clock.dtype != torch.int64 or not clock.is_contiguous() or clock.device.type != "cpu":
        raise ValueError("StepContext.clock must be a contiguous int64 CPU tensor")
    return (ints, floats, gs, hp.data_ptr(), groups, clock.data_ptr(),
            batch.group_index.data_ptr() if batch is not None else 0,
            batch.steps.data_ptr() if batch is not None else 0,
            _scalar_addr(ctx.found_inf, "found_inf"), _scalar_addr(ctx.grad_scale, "grad_scale"))


class CpuBackend:
    """C++/OpenMP kernels for CPU tensors (see the module docstring).

    Args:
        threads: OpenMP threads per call; ``None`` (default) follows ``torch.get_num_threads()``.
        lamb_scratch: elements of LAMB's update buffer, where the first pass keeps the update for the
            second (tensors of up to ``_cpu.LAMB_HOT_ELEMS`` elements per thread, ``LAMB_HOT_ELEMS_Q8`` for
            fp32 params with int8 moments, whose stage 2 otherwise decodes the stored codes); ``None``: enough for
            every tensor up to that cap (about twice the largest tensor; e.g. 62 MB at 50M params in 50
            tensors); ``0``: no buffer (the second pass recomputes the moments and the update from the
            gradient: 44 instead of 40 B/param and twice the square roots). Bit-identical either way.
    """

    name = "cpu"

    def __init__(self, threads: int | None = None, lamb_scratch: int | None = None) -> None:
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be None or an int >= 1; got {threads!r}")
        if lamb_scratch is not None and (isinstance(lamb_scratch, bool) or not isinstance(lamb_scratch, int)
                                         or lamb_scratch < 0):
            raise ValueError(f"lamb_scratch must be None or an int >= 0; got {lamb_scratch!r}")
        self._threads = threads
        self._lamb_scratch = lamb_scratch

    # -- helpers ---------------------------------------------------------------------------------------
    def _nthreads(self) -> int:
        return self._threads if self._threads is not None else torch.get_num_threads()

    @staticmethod
    def _tables(batch: TensorBatch) -> _BatchTables:
        return batch.cached_tables(_CACHE_KEY, _BatchTables)

    # -- protocol --------------------------------------------------------------------------------------
    def check(self, device: torch.device, param_dtype: torch.dtype, state_dtype: torch.dtype) -> None:
        if torch.device(device).type != "cpu":
            raise BackendUnavailable(f"backend 'cpu' needs CPU tensors; got device {device}")
        pd, sd = _code(param_dtype, "parameter"), _code(state_dtype, "state")
        if not _ext.supported(pd, sd, L.MASTER_NONE):
            raise BackendUnavailable(_unsupported(param_dtype, state_dtype, L.MASTER_NONE))

    def gnorm_rows(self, batch: TensorBatch) -> int:
        """The C++ driver reduces its per-chunk partials itself: one row."""
        return 1

    @staticmethod
    def _empty(batch: TensorBatch) -> bool:
        if len(batch):
            return False
        if batch.gnorm_out is not None:
            batch.gnorm_out.zero_()
        return True

    def adamw(self, batch: TensorBatch, ctx: StepContext, *, amsgrad: bool) -> None:
        if self._empty(batch):
            return
        tabs = self._tables(batch)
        if amsgrad and not tabs.has_max:
            raise ValueError("amsgrad=True needs TensorBatch.max_exp_avg_sqs")
        _ext.adamw(tabs.desc, _ctx_addrs(ctx, batch), bool(amsgrad), tabs.gnorm, self._nthreads())

    def lamb(self, batch: TensorBatch, ctx: StepContext, *, norms_out: torch.Tensor,
             clip_div: torch.Tensor | None, allreduce: Callable[[torch.Tensor], None] | None) -> None:
        if self._empty(batch):
            return
        tabs = self._tables(batch)
        if (norms_out.dtype != torch.float32 or not norms_out.is_contiguous() or norms_out.device.type != "cpu"
                or tuple(norms_out.shape) != (tabs.n, L.NORM_COLS)):
            raise ValueError(f"norms_out must be a contiguous float32 CPU tensor of shape ({tabs.n}, {L.NORM_COLS})")
        addrs = _ctx_addrs(ctx, batch)
        clip = _scalar_addr(clip_div, "clip_div")
        threads = self._nthreads()
        if allreduce is None:
            scratch = self._scratch(tabs, batch, threads)
            _ext.lamb(tabs.desc, addrs, clip, norms_out.data_ptr(), _addr(scratch),
                      0 if scratch is None else scratch.numel(), tabs.gnorm, threads)
            return
        if tabs.sums is None:
            tabs.sums = torch.zeros(tabs.n, 2, dtype=torch.float32)
        _ext.lamb_stage1(tabs.desc, addrs, clip, tabs.sums.data_ptr(), tabs.gnorm, threads)
        allreduce(tabs.sums)
        _ext.lamb_stage2(tabs.desc, addrs, clip, tabs.sums.data_ptr(), norms_out.data_ptr(), threads)

    def _scratch(self, tabs: _BatchTables, batch: TensorBatch, threads: int) -> torch.Tensor | None:
        if self._lamb_scratch is None:
            # The C++ side updates a tensor larger than a quarter of a thread's share with all threads
            # (alternating two halves of the buffer), the others one per thread (a slice each): size the
            # buffer so both kinds keep their update hot, each tensor capped at LAMB_HOT_ELEMS per thread.
            f32_int8 = batch.exp_avg_scales is not None and batch.dtype == torch.float32
            hot = _ext.LAMB_HOT_ELEMS_Q8 if f32_int8 else _ext.LAMB_HOT_ELEMS
            large = tabs.total // (4 * threads)
            numels = tabs.numels
            coop = max((x for x in numels if x > large), default=0) if threads > 1 else 0
            rest = max((x for x in numels if x <= large or threads == 1), default=0)
            size = max(2 * min(coop, threads * hot), threads * min(rest, hot))
        else:
            size = min(self._lamb_scratch, 2 * threads * max(tabs.max_numel, 1))
        if size <= 0:
            return None
        dtype = torch.float64 if batch.dtype == torch.float64 else torch.float32
        if tabs.scratch is None or tabs.scratch.numel() != size or tabs.scratch.dtype != dtype:
            tabs.scratch = torch.empty(size, dtype=dtype)
        return tabs.scratch

    def grad_sumsq(self, batch: TensorBatch, ctx: StepContext) -> torch.Tensor:
        out = torch.zeros((), dtype=torch.float32)
        if len(batch) == 0:
            return out
        tabs = self._tables(batch)
        _ext.grad_sumsq(tabs.addr, tabs.n, tabs.pdtype, _scalar_addr(ctx.grad_scale, "grad_scale"), out.data_ptr(),
                        self._nthreads())
        return out

    def advance(self, ctx: StepContext, steps: torch.Tensor, lr_out: torch.Tensor,
                tokens: torch.Tensor | None) -> None:
        groups = ctx.sched.group_sched.shape[0]
        if steps.dtype != torch.float32 or not steps.is_contiguous() or steps.device.type != "cpu":
            raise ValueError("steps must be a contiguous float32 CPU tensor")
        if lr_out.dtype != torch.float32 or not lr_out.is_contiguous() or lr_out.numel() < groups:
            raise ValueError(f"lr_out must be a contiguous float32 CPU tensor of at least {groups} elements")
        tok = 0
        if tokens is not None:
            if tokens.dtype != torch.int64 or tokens.device.type != "cpu" or tokens.numel() != 1:
                raise ValueError("tokens must be a one-element int64 CPU tensor")
            tokens = tokens.contiguous()
            tok = tokens.data_ptr()
        partials, rows = _rows_addr(ctx.gnorm_partials, "StepContext.gnorm_partials")
        history, capacity = _rows_addr(ctx.history, "StepContext.history")
        _ext.advance(_ctx_addrs(ctx, None), steps.data_ptr(), steps.numel(), lr_out.data_ptr(), tok, partials, rows,
                     history, capacity)

    def evaluate_schedule(self, tables: ScheduleTables, t: torch.Tensor) -> torch.Tensor:
        ints, floats, _, _ = _tables_addrs(tables)
        if t.device.type != "cpu":
            raise ValueError(f"backend 'cpu' evaluates clocks held in CPU tensors; got {t.device}")
        t = t.to(torch.int64).contiguous()
        first, rows = (int(x) for x in tables.group_sched[0, :2].tolist())
        out = torch.empty(t.shape, dtype=torch.float32)
        _ext.evaluate_schedule(ints, floats, first, rows, t.data_ptr(), t.numel(), out.data_ptr())
        return out
