"""How the ``"reference"`` backend reads and writes one tensor's state in every form of
``docs/compressed_state.md``: floating moments, int8 / uint8 codes with block scales (one block at a time,
in a plain loop), fp32 or compact master weights, stochastic rounding to bf16. Written from the
specification independently of ``lrsched_fused/reference/quant.py`` (which the tests compare it to)."""

from __future__ import annotations

import torch

from lrsched_fused.kernels import layout as L

from ._api import TensorBatch

__all__ = ["TensorState"]

_F32 = torch.float32


def _rows(t: torch.Tensor, d: int) -> torch.Tensor:
    return t.reshape(-1, d) if d else t.reshape(0, 1)


class TensorState:
    """Tensor ``i`` of a batch: decode on read (to the compute dtype), encode on write."""

    def __init__(self, batch: TensorBatch, i: int, clock_steps: int) -> None:
        self.b, self.i, self.clock = batch, i, clock_steps
        p = batch.params[i]
        self.d = batch.last_dims[i] if batch.last_dims is not None else max(p.numel(), 1)
        self.salt = batch.salts[i] if batch.salts is not None else i
        self.offset = batch.elem_offsets[i] if batch.elem_offsets is not None else 0

    # -- moments -----------------------------------------------------------------------------------------
    def _dst(self, which: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, i = self.b, self.i
        codes = (b.exp_avgs if which == "m" else b.exp_avg_sqs)[i]
        scales = (b.exp_avg_scales if which == "m" else b.exp_avg_sq_scales)[i] if b.quantized else None
        return codes, scales

    def stored_moment(self, which: str, value: torch.Tensor, compute: torch.dtype):
        """``(the value as it would be stored, a function that stores it)``: LAMB forms its update from the
        stored moments but writes nothing on a skipped step."""
        codes, scales = self._dst(which)
        tmp_codes, tmp_scales = codes.clone(), None if scales is None else scales.clone()
        self.write_moment(which, value, (tmp_codes, tmp_scales))
        decoded = self.read_moment(which, compute, (tmp_codes, tmp_scales))

        def commit() -> None:
            codes.copy_(tmp_codes)
            if scales is not None:
                scales.copy_(tmp_scales)
        return decoded, commit

    def read_moment(self, which: str, compute: torch.dtype, src=None) -> torch.Tensor:
        b = self.b
        codes, scales = src if src is not None else self._dst(which)
        if not b.quantized:
            return codes.to(compute)
        levels = L.Q_M_LEVELS if which == "m" else L.Q_V_LEVELS
        out = torch.empty(codes.numel(), dtype=_F32)
        q, blk = _rows(codes.to(_F32), self.d), b.quant_block
        res = _rows(out, self.d)
        nb = -(-self.d // blk)
        for r in range(q.shape[0]):
            for k in range(nb):
                step = scales.reshape(-1)[r * nb + k].to(_F32) / torch.tensor(float(levels), dtype=_F32)
                x = q[r, k * blk:(k + 1) * blk] * step
                res[r, k * blk:(k + 1) * blk] = x * x if which == "v" else x
        return out.reshape(codes.shape).to(compute)

    def write_moment(self, which: str, value: torch.Tensor, dst_pair=None) -> None:
        b = self.b
        dst, scales = dst_pair if dst_pair is not None else self._dst(which)
        if not b.quantized:
            stream = L.SR_STREAM_EXP_AVG if which == "m" else L.SR_STREAM_EXP_AVG_SQ
            dst.copy_(self._round(value, dst.dtype, stream))
            return
        levels = L.Q_M_LEVELS if which == "m" else L.Q_V_LEVELS
        x = value.to(_F32)
        if which == "v":
            x = torch.sqrt(x.to(torch.float64)).to(_F32)  # correctly rounded, as the specification's sqrt_rn
        rows, blk = _rows(x, self.d), b.quant_block
        codes = _rows(torch.empty(x.numel(), dtype=_F32), self.d)
        nb = -(-self.d // blk)
        for r in range(rows.shape[0]):
            for k in range(nb):
                seg = rows[r, k * blk:(k + 1) * blk]
                s = seg.abs().max() if seg.numel() else torch.zeros((), dtype=_F32)
                scales.view(-1)[r * nb + k] = s
                if float(s) == 0.0:
                    codes[r, k * blk:(k + 1) * blk] = 0.0
                    continue
                q = torch.round(seg * (torch.tensor(float(levels), dtype=_F32) / s))  # half to even
                if which == "v":
                    q = torch.where(seg > 0, q.clamp(1, levels), torch.zeros_like(q))
                codes[r, k * blk:(k + 1) * blk] = q.clamp(-levels, levels)
        dst.copy_(codes.reshape(dst.shape).to(dst.dtype))

    # -- the parameter and its master weight -------------------------------------------------------------
    def read_param(self, compute: torch.dtype) -> torch.Tensor:
        b, i = self.b, self.i
        mode, p = b.master_mode, b.params[i]
        if mode == L.MASTER_FP32:
            return b.master_params[i].to(compute)
        if mode in (L.MASTER_CORR8, L.MASTER_CORR16):
            base = p.to(_F32).view(torch.int32).to(torch.int64)
            c = b.master_params[i].to(torch.int64) << self._shift(mode)
            bits = (base + c) & 0xFFFFFFFF
            return torch.where(bits >= 2**31, bits - 2**32, bits).to(torch.int32).view(_F32).to(compute)
        return p.to(compute)

    def write_param(self, value: torch.Tensor) -> None:
        b, i = self.b, self.i
        mode, p = b.master_mode, b.params[i]
        if mode == L.MASTER_FP32:
            b.master_params[i].copy_(value)
            p.copy_(value.to(p.dtype))
            return
        if mode in (L.MASTER_CORR8, L.MASTER_CORR16):
            master = value.to(_F32)
            new = master.to(p.dtype)
            d = master.view(torch.int32).to(torch.int64) - new.to(_F32).view(torch.int32).to(torch.int64)
            if mode == L.MASTER_CORR16:
                if p.dtype == torch.bfloat16:  # the one tie that would not fit: the neighbour up
                    up = (new.view(torch.int16).to(torch.int64) + 1) & 0xFFFF
                    up = torch.where(up >= 2**15, up - 2**16, up).to(torch.int16).view(torch.bfloat16)
                    new = torch.where(d == 2**15, up, new)
                    d = master.view(torch.int32).to(torch.int64) - new.to(_F32).view(torch.int32).to(torch.int64)
                c = d.clamp(-2**15, 2**15 - 1)
            else:
                c = torch.round(d.to(_F32) / float(1 << self._shift(mode))).clamp(-128, 127)
            c = torch.where(torch.isfinite(master), c, torch.zeros_like(c))
            b.master_params[i].copy_(c.to(b.master_params[i].dtype))
            p.copy_(new)
            return
        p.copy_(self._round(value, p.dtype, L.SR_STREAM_PARAM))

    def _shift(self, mode: int) -> int:
        if mode == L.MASTER_CORR16:
            return 0
        return L.MASTER_SHIFT8_BF16 if self.b.dtype == torch.bfloat16 else L.MASTER_SHIFT8_F16

    def _round(self, value: torch.Tensor, dtype: torch.dtype, stream: int) -> torch.Tensor:
        """``value`` in ``dtype``: nearest even, or stochastic for bf16 when asked."""
        if dtype != torch.bfloat16 or not self.b.stochastic_rounding:
            return value.to(dtype)
        x = value.to(_F32).reshape(-1)
        index = torch.arange(x.numel(), dtype=torch.int64) + self.offset
        m32 = 0xFFFFFFFF
        h = ((index * L.SR_K_INDEX) & m32) ^ ((self.clock & m32) * L.SR_K_CLOCK & m32) \
            ^ ((self.salt & m32) * L.SR_K_SALT & m32) ^ (stream * L.SR_K_STREAM & m32)
        h = h ^ (h >> 16)
        h = (h * L.SR_HASH_M1) & m32
        h = h ^ (h >> 15)
        h = (h * L.SR_HASH_M2) & m32
        h = h ^ (h >> 16)
        u = (x.view(torch.int32).to(torch.int64) & m32) + (h & 0xFFFF)
        hi = (u >> 16) & 0xFFFF
        hi = torch.where(torch.isnan(x), torch.full_like(hi, 0x7FC0), hi)
        return torch.where(hi >= 2**15, hi - 2**16, hi).to(torch.int16).view(torch.bfloat16).reshape(value.shape)
