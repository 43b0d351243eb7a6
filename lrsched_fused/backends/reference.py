"""The ``"reference"`` backend: the backend contract written as plain per-tensor torch code.

Readable and slow (one small op per line per tensor, and host reads of the tables). It runs anywhere
torch runs and is the fallback when no compiled backend is available. It is *not* what the tests
compare against: that is :mod:`lrsched_fused.reference`, written as independent float64 loops.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from lrsched_fused.kernels import layout as L
from lrsched_fused.schedules import Phase, ScheduleTables

from ._api import StepContext, TensorBatch
from .reference_storage import TensorState

__all__ = ["ReferenceBackend", "schedule_value_from_tables"]


def schedule_value_from_tables(ints: list[list[int]], floats: list[list[float]], first: int, rows: int,
                               t: int) -> float:
    """Evaluate one encoded schedule at clock ``t`` on the host (float64): the last row with start <= t."""
    k = first
    for r in range(first, first + rows):
        if ints[r][L.SCHED_START] <= t:
            k = r
    start, length, span, shape = ints[k]
    v0, v1, a, b, c = floats[k]
    phase = Phase(L.SHAPE_NAMES[shape], min(length, 2**62), v0, v1, a=a, b=b, c=c, span=min(max(span, length), 2**62))
    return phase.value_at(t, start)


class ReferenceBackend:
    """Plain torch, one tensor at a time."""

    name = "reference"

    def check(self, device: torch.device, param_dtype: torch.dtype, state_dtype: torch.dtype) -> None:
        return None

    # -- helpers ---------------------------------------------------------------------------------------
    @staticmethod
    def _host(ctx: StepContext):
        tabs = ctx.sched
        return (tabs.ints.tolist(), tabs.floats.tolist(), tabs.group_sched.tolist(), ctx.hparams.tolist(),
                ctx.clock.tolist())

    def _group_lrs(self, ctx: StepContext) -> list[float]:
        ints, floats, gs, hp, clock = self._host(ctx)
        return [hp[g][L.HP_LR_SCALE] * schedule_value_from_tables(ints, floats, row[L.GS_FIRST_ROW], row[L.GS_ROWS],
                                                                  clock[row[L.GS_CLOCK]])
                for g, row in enumerate(gs)]

    @staticmethod
    def _skipped(ctx: StepContext) -> bool:
        return ctx.found_inf is not None and float(ctx.found_inf.reshape(-1)[0]) != 0.0

    @staticmethod
    def _grad(g: torch.Tensor, ctx: StepContext, compute: torch.dtype, clip_div: torch.Tensor | None = None):
        g = g.to(compute)
        if ctx.grad_scale is not None:
            g = g / ctx.grad_scale.reshape(()).to(compute)
        if clip_div is not None:
            g = g / clip_div.reshape(()).to(compute)
        return g

    @staticmethod
    def _compute_dtype(batch: TensorBatch) -> torch.dtype:
        return torch.float64 if batch.dtype == torch.float64 else torch.float32

    @staticmethod
    def _gnorm(batch: TensorBatch, ctx: StepContext, compute: torch.dtype) -> None:
        """``batch.gnorm_out[0] = (sum g^2, sum |g|)`` of ``grad / grad_scale`` over the batch (float64)."""
        if batch.gnorm_out is None:
            return
        sq = ab = 0.0
        for g in batch.grads:
            g64 = ReferenceBackend._grad(g, ctx, compute).double()
            sq += float((g64 * g64).sum())
            ab += float(g64.abs().sum())
        batch.gnorm_out[0, L.GN_SUMSQ] = sq
        batch.gnorm_out[0, L.GN_SUMABS] = ab

    def gnorm_rows(self, batch: TensorBatch) -> int:
        return 1

    # -- AdamW -----------------------------------------------------------------------------------------
    def adamw(self, batch: TensorBatch, ctx: StepContext, *, amsgrad: bool) -> None:
        compute = self._compute_dtype(batch)
        self._gnorm(batch, ctx, compute)
        if self._skipped(ctx):
            return
        lrs = self._group_lrs(ctx)
        hp = ctx.hparams.tolist()
        groups = batch.group_index.tolist()
        steps = batch.steps.tolist()
        clock = int(ctx.clock[L.CLOCK_STEPS])
        for i in range(len(batch)):
            h = hp[groups[i]]
            lr, b1, b2, eps, wd = lrs[groups[i]], h[L.HP_BETA1], h[L.HP_BETA2], h[L.HP_EPS], h[L.HP_WEIGHT_DECAY]
            t = steps[i] + 1.0
            g = self._grad(batch.grads[i], ctx, compute)
            if h[L.HP_MAXIMIZE]:
                g = -g
            st = TensorState(batch, i, clock)
            p = st.read_param(compute)
            m = st.read_moment("m", compute)
            v = st.read_moment("v", compute)
            p = p * (1.0 - lr * wd)
            m = m + (g - m) * (1.0 - b1)
            v = v * b2 + (1.0 - b2) * g * g
            denom_v = v
            if amsgrad:
                vmax = torch.maximum(batch.max_exp_avg_sqs[i].to(compute), v)
                batch.max_exp_avg_sqs[i].copy_(vmax)
                denom_v = vmax
            bc1 = 1.0 - b1 ** t
            bc2 = 1.0 - b2 ** t
            denom = denom_v.sqrt() / math.sqrt(bc2) + eps
            p = p - (lr / bc1) * m / denom  # from the fresh moments (torch's meaning), then they are stored
            st.write_moment("m", m)
            st.write_moment("v", v)
            st.write_param(p)

    # -- LAMB ------------------------------------------------------------------------------------------
    def lamb(self, batch: TensorBatch, ctx: StepContext, *, norms_out: torch.Tensor,
             clip_div: torch.Tensor | None, allreduce: Callable[[torch.Tensor], None] | None) -> None:
        skipped = self._skipped(ctx)
        compute = self._compute_dtype(batch)
        self._gnorm(batch, ctx, compute)
        lrs = self._group_lrs(ctx)
        hp = ctx.hparams.tolist()
        groups = batch.group_index.tolist()
        steps = batch.steps.tolist()
        clock = int(ctx.clock[L.CLOCK_STEPS])
        n = len(batch)
        updates, bases, commits, states = [], [], [], []
        sums = torch.zeros(n, 2, dtype=torch.float32, device=batch.device)
        for i in range(n):
            h = hp[groups[i]]
            lr, b1, b2, eps, wd = lrs[groups[i]], h[L.HP_BETA1], h[L.HP_BETA2], h[L.HP_EPS], h[L.HP_WEIGHT_DECAY]
            t = steps[i] + 1.0
            g = self._grad(batch.grads[i], ctx, compute, clip_div)
            st = TensorState(batch, i, clock)
            p = st.read_param(compute)
            m = st.read_moment("m", compute)
            v = st.read_moment("v", compute)
            beta3 = (1.0 - b1) if h[L.HP_GRAD_AVERAGING] else 1.0
            m = b1 * m + beta3 * g
            v = b2 * v + (1.0 - b2) * g * g
            # r from the moments as stored (rounded, or encoded, to the state's form), so the update applied
            # is the one whose norm gives the ratio, as on every backend
            m, commit_m = st.stored_moment("m", m, compute)
            v, commit_v = st.stored_moment("v", v, compute)
            bc1, bc2 = (1.0 - b1 ** t, 1.0 - b2 ** t) if h[L.HP_BIAS_CORRECTION] else (1.0, 1.0)
            r = (m / bc1) / (v.sqrt() / math.sqrt(bc2) + eps)
            if h[L.HP_DECOUPLED]:
                w, u = p * (1.0 - lr * wd), r
            else:
                w, u = p, r + wd * p
            sums[i, 0] = (w.double() ** 2).sum().float() if w.numel() else 0.0
            sums[i, 1] = (u.double() ** 2).sum().float() if u.numel() else 0.0
            updates.append(u)
            bases.append(w)
            commits.append((commit_m, commit_v))
            states.append(st)
        if allreduce is not None:
            allreduce(sums)
        for i in range(n):
            h = hp[groups[i]]
            w_norm, u_norm = math.sqrt(float(sums[i, 0])), math.sqrt(float(sums[i, 1]))
            ratio = w_norm / u_norm if (w_norm > 0 and u_norm > 0) else 1.0
            if not h[L.HP_ADAPT]:
                ratio = 1.0
            ratio = min(max(ratio, h[L.HP_TRUST_MIN]), h[L.HP_TRUST_MAX])
            norms_out[i, L.NORM_PARAM] = w_norm
            norms_out[i, L.NORM_UPDATE] = u_norm
            norms_out[i, L.NORM_RATIO] = ratio
            if skipped:
                continue
            for commit in commits[i]:
                commit()
            states[i].write_param(bases[i] - lrs[groups[i]] * ratio * updates[i])

    # -- the rest --------------------------------------------------------------------------------------
    def grad_sumsq(self, batch: TensorBatch, ctx: StepContext) -> torch.Tensor:
        total = torch.zeros((), dtype=torch.float64, device=batch.device)
        for g in batch.grads:
            total += (self._grad(g, ctx, torch.float64) ** 2).sum()
        return total.float()

    def advance(self, ctx: StepContext, steps: torch.Tensor, lr_out: torch.Tensor,
                tokens: torch.Tensor | None) -> None:
        lr_out.copy_(torch.tensor(self._group_lrs(ctx), dtype=torch.float32))
        if self._skipped(ctx):
            return
        if ctx.history is not None and ctx.gnorm_partials is not None:
            totals = ctx.gnorm_partials.double().sum(dim=0)  # rows in order (float64)
            ctx.history[int(ctx.clock[L.CLOCK_STEPS]) % ctx.history.shape[0]] = totals.float()
        steps.add_(1.0)
        ctx.clock[L.CLOCK_STEPS] += 1
        if tokens is not None:
            ctx.clock[L.CLOCK_TOKENS] += tokens.reshape(()).to(torch.int64)

    def evaluate_schedule(self, tables: ScheduleTables, t: torch.Tensor) -> torch.Tensor:
        ints, floats, gs = tables.ints.tolist(), tables.floats.tolist(), tables.group_sched.tolist()
        first, rows = gs[0][L.GS_FIRST_ROW], gs[0][L.GS_ROWS]
        vals = [schedule_value_from_tables(ints, floats, first, rows, int(x)) for x in t.reshape(-1).tolist()]
        return torch.tensor(vals, dtype=torch.float32, device=t.device).reshape(t.shape)
