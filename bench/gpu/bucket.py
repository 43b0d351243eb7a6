"""One bucket of tensors driven through the Backend protocol, the way an optimizer step drives it.

:class:`Bucket` holds the tensors, the schedule and hyperparameter tables (two param groups by default,
with schedules that cross phase edges within 20 steps) and the telemetry buffers of ``n_steps`` steps
on one device; ``run(backend, kind, n)`` applies ``n`` steps of ``kind`` (``adamw`` / ``lamb``) with
that backend. Two buckets built with the same arguments hold the same data, so one backend's run can
be compared with another's (the ``reference`` backend's, usually).
"""

from __future__ import annotations

import torch

from ..hparams import hparams_row, hparams_table

__all__ = ["Bucket", "CONFIGS", "RTOL", "default_groups", "rel_err", "bitwise_equal", "tolerance"]

#: relative tolerance of a parameter after 20 steps, by parameter dtype
RTOL = {torch.float32: 1e-5, torch.float64: 1e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}

#: (label, parameter dtype, Bucket options) of the correctness checks; ``--quick`` keeps the first two
CONFIGS = (
    ("fp32", torch.float32, {}),
    ("bf16+master", torch.bfloat16, {"master": True}),
    ("bf16", torch.bfloat16, {}),
    ("fp16", torch.float16, {}),
    ("fp64", torch.float64, {}),
    ("fp32+bf16 states", torch.float32, {"state_dtype": torch.bfloat16}),
    ("bf16+bf16 states", torch.bfloat16, {"state_dtype": torch.bfloat16}),
)


def tolerance(dtype: torch.dtype, state_dtype: torch.dtype | None) -> float:
    """Parameter tolerance vs the reference backend. bf16 states: one bf16 ulp of a moment moves a
    param by ~lr * 2^-8, and a backend may form the update from the stored moments (Triton's LAMB) or
    the fresh ones (the reference): at least 2e-3 (see tests/test_triton_backend.py)."""
    tol = RTOL[dtype]
    return max(tol, 2e-3) if state_dtype is torch.bfloat16 else tol


def default_groups() -> list[tuple[object, dict]]:
    """(schedule, ``hparams_row`` options) of two param groups: WSD with decay in the update, and a
    scaled cosine with decoupled decay and a clamped trust ratio; both cross phase edges in 20 steps."""
    from lrsched_fused import schedules as S

    return [(S.wsd(2e-2, 16, 3, decay_steps=5, init_lr=1e-3),
             dict(weight_decay=0.1, betas=(0.9, 0.999), eps=1e-6)),
            (S.cosine(1e-2, 12, 2, final_lr=1e-4),
             dict(weight_decay=0.0, betas=(0.8, 0.99), eps=1e-8, lr_scale=0.5, decoupled=True,
                  trust_clamp=(0.01, 10.0)))]


class Bucket:
    """Tensors, tables and buffers of one bucket on ``device`` (see the module docstring)."""

    def __init__(self, shapes, dtype, device, *, state_dtype=None, master=False, amsgrad=False, groups=None,
                 seed=0, grad_scale=None):
        from lrsched_fused import schedules as S
        from lrsched_fused.backends import StepContext, TensorBatch
        from lrsched_fused.kernels import layout as L

        self.shapes, self.dtype, self.device, self.seed, self.grad_scale = shapes, dtype, device, seed, grad_scale
        low = dtype in (torch.bfloat16, torch.float16)
        sdt = state_dtype or (torch.float32 if low else dtype)
        gen = torch.Generator().manual_seed(seed)
        params = [torch.randn(s, generator=gen).to(device, dtype) for s in shapes]
        n = len(params)
        self.groups = groups if groups is not None else default_groups()
        self.batch = TensorBatch(
            params=params, grads=[],
            exp_avgs=[torch.zeros_like(p, dtype=sdt) for p in params],
            exp_avg_sqs=[torch.zeros_like(p, dtype=sdt) for p in params],
            max_exp_avg_sqs=[torch.zeros_like(p, dtype=sdt) for p in params] if amsgrad else None,
            master_params=[p.float() for p in params] if (master and low) else None,
            group_index=torch.tensor([i % len(self.groups) for i in range(n)], dtype=torch.int64, device=device),
            steps=torch.zeros(n, dtype=torch.float32, device=device))
        self.ctx = StepContext(S.encode_tables([sched for sched, _ in self.groups], device),
                               hparams_table([hparams_row(**hp) for _, hp in self.groups], device),
                               torch.zeros(L.NUM_CLOCKS, dtype=torch.int64, device=device),
                               grad_scale=None if grad_scale is None else torch.tensor([grad_scale], device=device))
        self.lr_out = torch.zeros(len(self.groups), dtype=torch.float32, device=device)
        self.norms = torch.zeros(n, L.NORM_COLS, dtype=torch.float32, device=device)
        self.amsgrad = amsgrad

    def grads(self, k: int) -> list[torch.Tensor]:
        """The gradients of step ``k`` (the same for every bucket built with the same seed)."""
        gen = torch.Generator().manual_seed(self.seed * 7919 + k + 1)
        scale = self.grad_scale or 1.0
        return [(torch.randn(s, generator=gen) * scale).to(self.device, self.dtype) for s in self.shapes]

    def run(self, backend, kind: str, n_steps: int, clip=None, sharded: bool = False) -> "Bucket":
        for k in range(n_steps):
            self.batch.grads = self.grads(k)
            self.step(backend, kind, clip, sharded)
        return self

    def step(self, backend, kind: str, clip=None, sharded: bool = False) -> None:
        """One step. ``sharded``: LAMB's two halves around a (one-process, no-op) all-reduce."""
        if kind == "adamw":
            backend.adamw(self.batch, self.ctx, amsgrad=self.amsgrad)
        else:
            backend.lamb(self.batch, self.ctx, norms_out=self.norms, clip_div=clip,
                         allreduce=(lambda sums: None) if sharded else None)
        backend.advance(self.ctx, self.batch.steps, self.lr_out, None)

    def state(self) -> list[torch.Tensor]:
        b = self.batch
        out = list(b.params) + list(b.exp_avgs) + list(b.exp_avg_sqs) + list(b.max_exp_avg_sqs or [])
        return out + list(b.master_params or []) + [b.steps, self.ctx.clock]


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    """max |x - ref| / max |ref| (0 for empty tensors)."""
    if ref.numel() == 0:
        return 0.0
    x, ref = x.detach().double().cpu(), ref.detach().double().cpu()
    return float((x - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def bitwise_equal(xs, ys) -> bool:
    return all(torch.equal(x.reshape(-1).view(torch.uint8), y.reshape(-1).view(torch.uint8)) if x.numel() else
               x.shape == y.shape for x, y in zip(xs, ys))

