"""The implementations a case times: ours (whole ``step()``, backend call only, reference backend, int8
moments), the peers (torch AdamW fused / foreach / for-loop, DeepSpeedCPUAdam, pytorch-optimizer ``Lamb``,
torchao ``AdamW8bit``) and the in-place-add bandwidth floor.

Block-quantized moments (``ours-int8``, ``torchao-8bit``) need 2-d tensors: those two get each flat tensor
as ``(ceil(n / 1024), 1024)`` (the last row zero-padded: at most 1023 extra elements per tensor, under
0.3% of a 20M / 50-tensor case) and count bytes per parameter as stored: AdamW 16 B (fp32 parameter read
and written, fp32 gradient, int8 and uint8 moments read and written) plus the fp32 block scales (4 B per
256 elements, read and written, per moment), LAMB 22 B plus its scales (``docs/compressed_state.md``).

Every implementation gets its own copy (clone) of the case's parameters and gradients (a shared copy
would leave the data in cache for whichever of two implementations runs second). ``ours-kernel``
times the C++ backend call that ``FusedAdamW.step`` / ``FusedLAMB.step`` makes, on tensors and state
created by an optimizer of ours, so ``ours`` minus ``ours-kernel`` is the optimizer's host (Python)
cost per step.

Hyperparameters: lr 1e-3 (ours: a cosine schedule with peak 1e-3 evaluated in the kernel, which is
what a user of ours runs; the peers get a float lr and no scheduler), weight decay 0.01, betas
(0.9, 0.999), eps 1e-8 (AdamW) / 1e-6 (LAMB). LAMB: decay inside the update and the trust ratio (the
paper's default; pytorch-optimizer ``weight_decouple=False``), no gradient clipping.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
from dataclasses import dataclass
from typing import Callable

import torch

from .workloads import Case, bytes_per_param, int8_bytes

__all__ = ["Impl", "Runner", "IMPLS", "NAMES", "impls_for", "PEERS_FOR_RATIOS"]

LR = 1e-3
WEIGHT_DECAY = 0.01
BETAS = (0.9, 0.999)
EPS = {"adamw": 1e-8, "lamb": 1e-6}
#: ours' schedule: warm-up then cosine decay over a horizon no benchmark reaches (the lr stays > 0)
SCHEDULE_TOTAL, SCHEDULE_WARMUP = 10**6, 100


@dataclass
class Runner:
    """A ready-to-time implementation: ``step()`` is one optimizer step (or one add for the floor)."""

    step: Callable[[], object]
    bytes_per_param: float
    state_dtype: torch.dtype
    keep: object = None  # whatever must stay alive (optimizer, tensors)


@dataclass(frozen=True)
class Impl:
    """One implementation of one op. ``name`` is what ``--impls`` selects (shared across ops)."""

    name: str
    op: str
    label: str
    build: Callable[[Case, "Inputs"], Runner]
    requires: str | None = None      # importable module this implementation needs (optional peers)
    ours: bool = False
    #: bytes of memory per parameter it holds beyond its parameter/grad/state copy (temporaries)
    extra_bytes_per_param: float = 0.0

    @property
    def key(self) -> str:
        """Unique within a case: ``"adamw/ours"``."""
        return f"{self.op}/{self.name}"

    def missing(self) -> str | None:
        """Why it cannot run here (a module is not installed), or ``None``."""
        if self.requires and importlib.util.find_spec(self.requires) is None:
            return f"{self.requires} is not installed"
        if self.ours and self.name in ("ours", "ours-kernel", "ours-int8"):
            from lrsched_fused.backends import available_backends

            why = available_backends().get("cpu")
            if why is not None:
                return why
        return None

    def resident_bytes(self, case: Case) -> float:
        """Approximate memory it holds (for the case's memory check)."""
        if self.name == "floor":
            return 2 * 4 * _floor_elems(self.op, case)
        p = torch.empty((), dtype=case.param_dtype).element_size()
        s = torch.empty((), dtype=_peer_state_dtype(self.name, case)).element_size()
        return case.params * (2 * p + 2 * s + self.extra_bytes_per_param)


@dataclass
class Inputs:
    """The case's data, shared read-only by every implementation (each clones what it updates)."""

    params: list[torch.Tensor]
    grads: list[torch.Tensor]

    def clone_params(self) -> list[torch.nn.Parameter]:
        out = []
        for p, g in zip(self.params, self.grads):
            q = torch.nn.Parameter(p.clone())
            q.grad = g.clone()
            out.append(q)
        return out


def _peer_state_dtype(name: str, case: Case) -> torch.dtype:
    """The moment dtype an implementation keeps: torch and pytorch-optimizer use the param dtype."""
    if name in ("torch-fused", "torch-foreach", "torch-forloop", "pyopt"):
        return case.param_dtype
    return case.state_dtype  # ours (fp32 moments for bf16 params), DeepSpeed (fp32_optimizer_states)


def _runner(impl_name: str, op: str, case: Case, step: Callable[[], object], keep: object) -> Runner:
    sdt = _peer_state_dtype(impl_name, case)
    return Runner(step=step, bytes_per_param=bytes_per_param(op, case.param_dtype, sdt), state_dtype=sdt, keep=keep)


def _schedule():
    from lrsched_fused import schedules as S

    return S.cosine(peak_lr=LR, total_steps=SCHEDULE_TOTAL, warmup_steps=SCHEDULE_WARMUP)


# ---------------------------------------------------------------------------------------------------
# ours
# ---------------------------------------------------------------------------------------------------
def _ours_optimizer(op: str, params: list[torch.nn.Parameter], backend: str):
    from lrsched_fused import FusedAdamW, FusedLAMB

    cls = FusedAdamW if op == "adamw" else FusedLAMB
    return cls(params, lr=_schedule(), betas=BETAS, eps=EPS[op], weight_decay=WEIGHT_DECAY, backend=backend)


def _build_ours(op: str, backend: str) -> Callable[[Case, Inputs], Runner]:
    def build(case: Case, inputs: Inputs) -> Runner:
        params = inputs.clone_params()
        opt = _ours_optimizer(op, params, backend)
        return _runner("ours", op, case, opt.step, (opt, params))

    return build


def _hparams_row(op: str) -> torch.Tensor:
    """The one-group hyperparameter table of ours' settings for ``op`` (the backend call's ``ctx.hparams``)."""
    from .hparams import hparams_row, hparams_table

    return hparams_table([hparams_row(betas=BETAS, eps=EPS[op], weight_decay=WEIGHT_DECAY)])


def _build_ours_kernel(op: str, lamb_scratch: int | None = None) -> Callable[[Case, Inputs], Runner]:
    """The C++ backend call alone, on tensors and state created by an optimizer of ours (own copy).
    ``lamb_scratch``: ``CpuBackend``'s LAMB buffer size (``None``: its default; for diagnostics)."""

    def build(case: Case, inputs: Inputs) -> Runner:
        from lrsched_fused.backends import StepContext, TensorBatch
        from lrsched_fused.backends.cpu import CpuBackend
        from lrsched_fused.kernels import layout as L
        from lrsched_fused.schedules import encode_tables

        params = inputs.clone_params()
        opt = _ours_optimizer(op, params, "cpu")
        opt.step()  # creates the moments, laid out exactly as ours' (the optimizer itself is not timed)
        states = [opt.state[p] for p in params]
        n = len(params)
        batch = TensorBatch(params=[p.data for p in params], grads=[p.grad for p in params],
                            exp_avgs=[st["exp_avg"] for st in states], exp_avg_sqs=[st["exp_avg_sq"] for st in states],
                            max_exp_avg_sqs=None, master_params=None,
                            group_index=torch.zeros(n, dtype=torch.int64),
                            steps=torch.full((n,), 10.0, dtype=torch.float32))
        clock = torch.zeros(L.NUM_CLOCKS, dtype=torch.int64)
        clock[L.CLOCK_STEPS] = SCHEDULE_WARMUP * 5
        ctx = StepContext(encode_tables([_schedule()]), _hparams_row(op), clock)
        backend = CpuBackend(lamb_scratch=lamb_scratch)
        if op == "adamw":
            def step() -> None:
                backend.adamw(batch, ctx, amsgrad=False)
        else:
            norms = torch.zeros(n, L.NORM_COLS, dtype=torch.float32)

            def step() -> None:
                backend.lamb(batch, ctx, norms_out=norms, clip_div=None, allreduce=None)
        return _runner("ours-kernel", op, case, step, (batch, ctx, backend, opt))

    return build


def _as_rows(inputs: Inputs, width: int = 1024) -> list[torch.nn.Parameter]:
    """Each flat parameter as a ``(ceil(n / width), width)`` copy (zero-padded), its gradient alike."""
    out = []
    for p, g in zip(inputs.params, inputs.grads):
        rows = -(-p.numel() // width)
        q = torch.zeros(rows * width, dtype=p.dtype)
        q[:p.numel()] = p.reshape(-1)
        grad = torch.zeros(rows * width, dtype=g.dtype)
        grad[:g.numel()] = g.reshape(-1)
        q = torch.nn.Parameter(q.reshape(rows, width))
        q.grad = grad.reshape(rows, width)
        out.append(q)
    return out


def _build_ours_int8(op: str) -> Callable[[Case, Inputs], Runner]:
    def build(case: Case, inputs: Inputs) -> Runner:
        from lrsched_fused import FusedAdamW, FusedLAMB

        params = _as_rows(inputs)
        cls = FusedAdamW if op == "adamw" else FusedLAMB
        opt = cls(params, lr=_schedule(), betas=BETAS, eps=EPS[op], weight_decay=WEIGHT_DECAY, backend="cpu",
                  state_dtype="int8")
        return Runner(step=opt.step, bytes_per_param=int8_bytes(op, case.param_dtype), state_dtype=torch.int8, keep=(opt, params))

    return build


# ---------------------------------------------------------------------------------------------------
# peers
# ---------------------------------------------------------------------------------------------------
def _build_torchao(case: Case, inputs: Inputs) -> Runner:
    from torchao.optim import AdamW8bit  # blockwise 8-bit moments (dynamic map), block 256; torch.compile'd

    params = _as_rows(inputs)
    opt = AdamW8bit(params, lr=LR, betas=BETAS, eps=EPS["adamw"], weight_decay=WEIGHT_DECAY)
    return Runner(step=opt.step, bytes_per_param=int8_bytes("adamw", case.param_dtype), state_dtype=torch.int8, keep=(opt, params))



def _build_torch(mode: str) -> Callable[[Case, Inputs], Runner]:
    flags = {"fused": dict(fused=True), "foreach": dict(foreach=True, fused=False),
             "forloop": dict(foreach=False, fused=False)}[mode]

    def build(case: Case, inputs: Inputs) -> Runner:
        params = inputs.clone_params()
        opt = torch.optim.AdamW(params, lr=LR, betas=BETAS, eps=EPS["adamw"], weight_decay=WEIGHT_DECAY, **flags)
        return _runner(f"torch-{mode}", "adamw", case, opt.step, (opt, params))

    return build


def _build_deepspeed(case: Case, inputs: Inputs) -> Runner:
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    logging.getLogger("DeepSpeed").setLevel(logging.ERROR)
    from deepspeed.ops.adam import DeepSpeedCPUAdam  # JIT-builds its C++ op on first use (~1 min, cached)

    logging.getLogger("DeepSpeed").setLevel(logging.ERROR)
    params = inputs.clone_params()
    opt = DeepSpeedCPUAdam(params, lr=LR, betas=BETAS, eps=EPS["adamw"], weight_decay=WEIGHT_DECAY,
                           adamw_mode=True, fp32_optimizer_states=True)
    return _runner("deepspeed", "adamw", case, opt.step, (opt, params))


def _build_pyopt(case: Case, inputs: Inputs) -> Runner:
    from pytorch_optimizer import Lamb

    params = inputs.clone_params()
    opt = Lamb(params, lr=LR, betas=BETAS, eps=EPS["lamb"], weight_decay=WEIGHT_DECAY, weight_decouple=False)
    return _runner("pyopt", "lamb", case, opt.step, (opt, params))


# ---------------------------------------------------------------------------------------------------
# the floor
# ---------------------------------------------------------------------------------------------------
def _floor_elems(op: str, case: Case) -> int:
    """fp32 elements of ``a`` and ``b`` such that ``a.add_(b)`` (12 B/element) moves our step's bytes."""
    return max(1, math.ceil(bytes_per_param(op, case.param_dtype, case.state_dtype) * case.params / 12))


def _build_floor(op: str) -> Callable[[Case, Inputs], Runner]:
    def build(case: Case, inputs: Inputs) -> Runner:
        m = _floor_elems(op, case)
        a = torch.zeros(m)
        b = torch.full((m,), 1e-3)
        return Runner(step=lambda: a.add_(b), bytes_per_param=bytes_per_param(op, case.param_dtype, case.state_dtype),
                      state_dtype=case.state_dtype, keep=(a, b))

    return build


IMPLS: tuple[Impl, ...] = (
    Impl("ours", "adamw", "ours FusedAdamW.step (cpu)", _build_ours("adamw", "cpu"), ours=True),
    Impl("ours-kernel", "adamw", "ours C++ kernel call only", _build_ours_kernel("adamw"), ours=True),
    Impl("reference", "adamw", "ours FusedAdamW (reference backend)", _build_ours("adamw", "reference"), ours=True,
         extra_bytes_per_param=0.0),
    Impl("torch-fused", "adamw", "torch AdamW fused=True", _build_torch("fused")),
    Impl("torch-foreach", "adamw", "torch AdamW foreach=True", _build_torch("foreach"), extra_bytes_per_param=8.0),
    Impl("torch-forloop", "adamw", "torch AdamW for-loop", _build_torch("forloop"), extra_bytes_per_param=0.5),
    Impl("deepspeed", "adamw", "DeepSpeedCPUAdam", _build_deepspeed, requires="deepspeed"),
    Impl("ours-int8", "adamw", "ours FusedAdamW.step, int8 moments (cpu)", _build_ours_int8("adamw"), ours=True),
    Impl("torchao-8bit", "adamw", "torchao AdamW8bit (8-bit moments)", _build_torchao, requires="torchao"),
    Impl("floor", "adamw", "in-place add a.add_(b), same bytes", _build_floor("adamw")),
    Impl("ours", "lamb", "ours FusedLAMB.step (cpu)", _build_ours("lamb", "cpu"), ours=True),
    Impl("ours-kernel", "lamb", "ours C++ kernel call only", _build_ours_kernel("lamb"), ours=True),
    Impl("reference", "lamb", "ours FusedLAMB (reference backend)", _build_ours("lamb", "reference"), ours=True),
    Impl("ours-int8", "lamb", "ours FusedLAMB.step, int8 moments (cpu)", _build_ours_int8("lamb"), ours=True),
    Impl("pyopt", "lamb", "pytorch-optimizer Lamb (foreach)", _build_pyopt, requires="pytorch_optimizer",
         extra_bytes_per_param=8.0),
    Impl("floor", "lamb", "in-place add a.add_(b), same bytes", _build_floor("lamb")),
)

#: every ``--impls`` name, in table order
NAMES: tuple[str, ...] = tuple(dict.fromkeys(i.name for i in IMPLS))

#: ``ratio_vs_<column>`` columns: (column suffix, impl key). Ratios are this row's median over theirs.
PEERS_FOR_RATIOS: tuple[tuple[str, str], ...] = (
    ("torch_fused", "adamw/torch-fused"),
    ("torch_foreach", "adamw/torch-foreach"),
    ("torch_forloop", "adamw/torch-forloop"),
    ("deepspeed", "adamw/deepspeed"),
    ("pyopt_lamb", "lamb/pyopt"),
    ("ours_adamw", "adamw/ours"),
    ("ours_int8_adamw", "adamw/ours-int8"),
)


def impls_for(ops: list[str], names: list[str]) -> list[Impl]:
    """The implementations of ``ops`` whose name is in ``names``, in table order."""
    return [i for i in IMPLS if i.op in ops and i.name in names]
