"""Converters between a compressed-state state dict (``docs/compressed_state.md``) and the fp32 layout of
``torch.optim.AdamW``: the one exception to "our state dict loads into torch.optim.AdamW" needs them.

``to_torch(sd)`` decodes int8 / uint8 moments (with their block scales) into float32 ``exp_avg`` /
``exp_avg_sq`` and drops what torch keeps none of (scales, master corrections); ``from_torch(sd, ...)``
encodes float moments of tensors that the options quantize, as the optimizer would store them. Both work
on plain state dicts (no optimizer needed) and copy: the input is left as it is.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

import torch

from lrsched_fused.functional.compressed import MASTER_KEYS, QUANT_KEYS, StateFormat
from lrsched_fused.kernels import layout as L
from lrsched_fused.reference import quant as Q

__all__ = ["to_torch", "from_torch", "master_value"]


def _block_for(d: int, nb: int) -> int:
    block = 1
    while -(-d // block) > nb:
        block *= 2
    return block


def to_torch(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``state_dict`` in ``torch.optim.AdamW``'s fp32 layout: int8 moments decoded (float32), block
    scales and compact master corrections dropped (an fp32 ``master_param`` is kept: torch ignores it)."""
    out = copy.copy(dict(state_dict))
    state = {}
    for pid, st in state_dict.get("state", {}).items():
        st = dict(st)
        for key, scale_key in QUANT_KEYS.items():
            codes, scales = st.get(key), st.pop(scale_key, None)
            if codes is None or scales is None or codes.dtype not in (torch.int8, torch.uint8):
                continue
            d = codes.shape[-1] if codes.dim() else 1
            block = _block_for(d, scales.shape[-1] if scales.dim() else 1)
            decode = Q.decode_m if key == "exp_avg" else Q.decode_v
            st[key] = decode(codes.cpu(), scales.cpu(), block).to(codes.device)
        st.pop("master_correction", None)
        state[pid] = st
    out["state"] = state
    return out


def from_torch(state_dict: Mapping[str, Any], *, state_dtype: Any = "int8", quant_block: int = L.QUANT_BLOCK,
               quant_min_numel: int = 4096) -> dict[str, Any]:
    """A copy of a ``torch.optim.AdamW`` (fp32 moments) state dict with the moments of the tensors these
    options quantize (at least 2-d, ``quant_min_numel`` elements) encoded into int8 codes and block scales,
    as ``FusedAdamW(state_dtype="int8", ...)`` stores them. ``load_state_dict`` also accepts the fp32 dict
    directly (the optimizer encodes at its next step); this gives the compact dict to save."""
    fmt = StateFormat(state_dtype=state_dtype, quant_block=quant_block, quant_min_numel=quant_min_numel)
    out = copy.copy(dict(state_dict))
    state = {}
    for pid, st in state_dict.get("state", {}).items():
        st = dict(st)
        m = st.get("exp_avg")
        if isinstance(m, torch.Tensor) and m.is_floating_point() and fmt.quantized(m):
            for key, scale_key in QUANT_KEYS.items():
                encode = Q.encode_m if key == "exp_avg" else Q.encode_v
                codes, scales = encode(st[key].detach().float().cpu(), quant_block)
                st[key], st[scale_key] = codes.to(st[key].device), scales.to(st[key].device)
        for key in MASTER_KEYS[1:]:
            st.pop(key, None)
        state[pid] = st
    out["state"] = state
    return out


def master_value(param: torch.Tensor, state: Mapping[str, Any]) -> torch.Tensor:
    """The float32 weight ``param`` stands for, given its optimizer state: the fp32 ``master_param``; with a
    compact master, the parameter plus its ``master_correction`` (``M = from_bits(bits(float32(p)) + c * 2**k)``,
    ``docs/compressed_state.md``); otherwise the parameter itself. A new tensor on the state's device; e.g.
    to export full-precision weights from a bf16 model trained with compact masters."""
    if "master_param" in state:
        return state["master_param"].detach().float().clone()
    if "master_correction" not in state:
        return param.detach().float().clone()
    correction = state["master_correction"]
    bits = 16 if correction.dtype == torch.int16 else 8
    return Q.compact_decode(param.detach(), correction, bits)
