"""How a parameter's state is stored: floating moments or int8 codes with block scales, and fp32 or compact
master weights (``docs/compressed_state.md``). One frozen :class:`StateFormat` per optimizer decides it per
parameter; this module creates those entries (DTensor-aware: scales shard like their parameter) and
converts between the forms (a checkpoint saved in one form loads into an optimizer using another).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lrsched_fused.kernels import layout as L
from lrsched_fused.reference import quant as Q

__all__ = ["StateFormat", "check_storage_options", "MASTER_OPTIONS", "QUANT_KEYS", "MASTER_KEYS", "zeros_scales", "moment_entries",
           "master_entries", "elem_offset", "last_dim"]

#: what ``master_weights=`` accepts
MASTER_OPTIONS = (False, True, "compact")
#: the entries of int8 moments: (codes, scales) of the first and second moment
QUANT_KEYS = {"exp_avg": "exp_avg_scale", "exp_avg_sq": "exp_avg_sq_scale"}
#: every master-weight entry
MASTER_KEYS = ("master_param", "master_correction")
LOW_PRECISION = (torch.bfloat16, torch.float16)


def _is_dtensor(t: torch.Tensor) -> bool:
    return type(t).__name__ == "DTensor" and hasattr(t, "to_local")


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if _is_dtensor(t) else t


def last_dim(p: torch.Tensor) -> int:
    """The length of the dimension quantization blocks run along (1 for a 0-d tensor)."""
    return p.shape[-1] if p.dim() else 1


def elem_offset(p: torch.Tensor) -> int:
    """The global row-major index of a DTensor shard's first element (0 for a plain tensor)."""
    if not _is_dtensor(p):
        return 0
    try:
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

        _, offset = compute_local_shape_and_global_offset(p.shape, p.device_mesh, p.placements)
    except Exception:  # noqa: BLE001 - a torch without the helper: seeds then repeat across shards
        return 0
    strides = torch.empty(p.shape, device="meta").stride()
    return int(sum(o * s for o, s in zip(offset, strides)))


@dataclass(frozen=True)
class StateFormat:
    """An optimizer's storage options (see ``docs/compressed_state.md``)."""

    state_dtype: Any = None
    quant_block: int = L.QUANT_BLOCK
    quant_min_numel: int = 4096
    master_weights: Any = False
    master_bits: int = 8
    stochastic_rounding: bool = False

    @classmethod
    def from_options(cls, options: dict) -> "StateFormat":
        return cls(options.get("state_dtype"), options.get("quant_block", L.QUANT_BLOCK),
                   options.get("quant_min_numel", 4096), options.get("master_weights", False),
                   options.get("master_bits", 8), options.get("stochastic_rounding", False))

    def quantized(self, p: torch.Tensor) -> bool:
        """int8 moments for ``p``: asked for, at least 2-d and ``quant_min_numel`` elements, not fp64."""
        return (self.state_dtype in ("int8", torch.int8) and p.dim() >= 2 and p.numel() >= self.quant_min_numel
                and p.dtype != torch.float64)

    def moment_dtype(self, p: torch.Tensor) -> torch.dtype:
        """The dtype of ``p``'s ``exp_avg`` (int8 codes when quantized)."""
        if self.quantized(p):
            return torch.int8
        option = self.state_dtype
        if option == "param":
            return p.dtype
        if option in (None, "int8", torch.int8):
            return torch.float32 if p.dtype in LOW_PRECISION else p.dtype
        return option

    def master_mode(self, p: torch.Tensor) -> int:
        """``layout.MASTER_*`` for ``p`` (master weights only for bf16 / fp16 parameters)."""
        if p.dtype not in LOW_PRECISION or self.master_weights is False:
            return L.MASTER_NONE
        if self.master_weights == "compact":
            return L.MASTER_CORR16 if self.master_bits == 16 else L.MASTER_CORR8
        return L.MASTER_FP32


def check_storage_options(*, state_dtype: Any = None, master_weights: Any = False, quant_block: int = L.QUANT_BLOCK,
                          quant_min_numel: int = 4096, master_bits: int = 8, stochastic_rounding: bool = False,
                          telemetry_history: int = 65536) -> dict[str, Any]:
    """The storage options, validated (``ValueError`` naming the option and its allowed values)."""
    if state_dtype not in (None, "param", torch.float32, torch.bfloat16, "int8", torch.int8):
        raise ValueError(f"state_dtype must be None (fp32 for bf16/fp16 params, else the param dtype), 'param', "
                         f"torch.float32, torch.bfloat16 or 'int8' (block-quantized moments); got {state_dtype!r}")
    if master_weights not in MASTER_OPTIONS or (master_weights is not False and master_weights is not True
                                               and master_weights != "compact"):
        raise ValueError(f"master_weights must be True, False or 'compact' (a 16-bit parameter plus a correction); "
                         f"got {master_weights!r}")
    for name, value, lo, hi in (("quant_block", quant_block, 32, 4096), ("quant_min_numel", quant_min_numel, 0, 2**62),
                                ("telemetry_history", telemetry_history, 0, 2**31)):
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ValueError(f"{name} must be an int in [{lo}, {hi}]; got {value!r}")
    if quant_block & (quant_block - 1):
        raise ValueError(f"quant_block must be a power of two in [32, 4096]; got {quant_block}")
    if master_bits not in (8, 16) or isinstance(master_bits, bool):
        raise ValueError(f"master_bits must be 8 or 16 (bits of the compact master correction); got {master_bits!r}")
    if not isinstance(stochastic_rounding, bool):
        raise ValueError(f"stochastic_rounding must be True or False; got {stochastic_rounding!r}")
    return {"state_dtype": "int8" if state_dtype is torch.int8 else state_dtype, "master_weights": master_weights,
            "quant_block": quant_block, "quant_min_numel": quant_min_numel, "master_bits": master_bits,
            "stochastic_rounding": stochastic_rounding, "telemetry_history": telemetry_history}


def zeros_scales(p: torch.Tensor, block: int) -> torch.Tensor:
    """float32 zero block scales ``(*rows, ceil(D / block))`` for ``p``; a DTensor's shard like ``p``'s
    (blocks run within rows, so ``Shard`` of any dimension but the last keeps them whole)."""
    loc = _local(p)
    nb = -(-last_dim(p) // block)
    shape = (*loc.shape[:-1], nb) if loc.dim() else (nb,)
    scales = torch.zeros(shape, dtype=torch.float32, device=loc.device)
    if not _is_dtensor(p):
        return scales
    from torch.distributed.tensor import DTensor

    for placement in p.placements:
        if placement.is_shard() and placement.dim in (p.dim() - 1, -1):
            raise ValueError("int8 moments need whole rows: a DTensor sharded along its last dimension cannot keep "
                             "its quantization blocks within a shard (shard another dimension, as FSDP2 does)")
    global_shape = (*p.shape[:-1], nb)
    return DTensor.from_local(scales, p.device_mesh, p.placements, run_check=False, shape=torch.Size(global_shape),
                              stride=torch.empty(global_shape, device="meta").stride())


def _rewrap(p: torch.Tensor, loc: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if not _is_dtensor(like):
        return loc
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(loc, like.device_mesh, like.placements, run_check=False, shape=like.shape,
                              stride=like.stride())


def moment_entries(p: torch.Tensor, st: dict, fmt: StateFormat, device: torch.device) -> dict[str, Any]:
    """The moment entries ``p`` needs under ``fmt`` that ``st`` lacks or holds in another form: created
    (zeros) or converted (a floating moment encoded into codes and scales, codes decoded into a floating
    moment, a floating moment cast). Nothing of ``st`` changes here."""
    put: dict[str, Any] = {}
    block = fmt.quant_block
    if fmt.quantized(p):
        for key, scale_key in QUANT_KEYS.items():
            code_dtype = torch.int8 if key == "exp_avg" else torch.uint8
            t, s = st.get(key), st.get(scale_key)
            if t is None:
                put[key] = torch.zeros_like(p, dtype=code_dtype, memory_format=torch.contiguous_format)
                put[scale_key] = zeros_scales(p, block)
            elif t.dtype != code_dtype or s is None or _local(s).shape[-1] != -(-last_dim(p) // block):
                value = _decoded(t, s, key, p, block) if t.dtype in (torch.int8, torch.uint8) else _local(t).float()
                codes, scales = (Q.encode_m if key == "exp_avg" else Q.encode_v)(value.cpu(), block)
                put[key] = _rewrap(p, codes.to(device), p) if _is_dtensor(p) else codes.to(device)
                put[scale_key] = _rewrap(p, scales.to(device), zeros_scales(p, block)) if _is_dtensor(p) \
                    else scales.to(device)
            elif _local(t).device != device:
                put[key], put[scale_key] = t.to(device), s.to(device)
        return put
    dtype = fmt.moment_dtype(p)
    for key in ("exp_avg", "exp_avg_sq"):
        t = st.get(key)
        if t is not None and t.dtype in (torch.int8, torch.uint8):  # codes into a floating moment
            value = _decoded(t, st.get(QUANT_KEYS[key]), key, p, block).to(device=device, dtype=dtype)
            put[key] = _rewrap(p, value, p)
    return put


def _decoded(codes: torch.Tensor, scales: torch.Tensor | None, key: str, p: torch.Tensor, block: int) -> torch.Tensor:
    if scales is None:
        raise ValueError(f"state[{key!r}] holds int8 codes without their {QUANT_KEYS[key]!r}")
    loc, sc = _local(codes).cpu(), _local(scales).cpu()
    nb = sc.shape[-1] if sc.dim() else 1  # the block the codes were made with (a checkpoint does not record it)
    value = (Q.decode_m if key == "exp_avg" else Q.decode_v)(loc, sc, _block_of(last_dim(p), nb, block))
    return value.to(_local(codes).device)


def _block_of(d: int, nb: int, default: int) -> int:
    """The power-of-two block that gives ``nb`` blocks over ``d`` columns (checkpoints record no block)."""
    block = 1
    while -(-d // block) > nb:
        block *= 2
    return block if -(-d // block) == nb else default


def master_entries(p: torch.Tensor, st: dict, mode: int, device: torch.device) -> tuple[dict[str, Any], list[str]]:
    """``(entries to set, keys to drop)`` for ``p``'s master weight under ``layout.MASTER_*`` ``mode``:
    an fp32 copy (created from ``p``, or decoded from a correction), a correction (zeros for a fresh state:
    ``p`` is exactly the master; or encoded from an fp32 copy against the current ``p``), or nothing."""
    put: dict[str, Any] = {}
    master, corr = st.get("master_param"), st.get("master_correction")
    if mode == L.MASTER_NONE:
        return put, [k for k in MASTER_KEYS if k in st]
    if mode == L.MASTER_FP32:
        if master is None:
            put["master_param"] = (Q.compact_decode(_local(p).detach(), _local(corr), corr.element_size() * 8)
                                   if corr is not None else p.detach().clone().to(torch.float32))
        elif not _is_dtensor(master) and (master.device != device or master.dtype != torch.float32):
            put["master_param"] = master.to(device=device, dtype=torch.float32)
        return put, ["master_correction"] if corr is not None else []
    bits = 16 if mode == L.MASTER_CORR16 else 8
    want = torch.int16 if bits == 16 else torch.int8
    if corr is None or corr.dtype != want:
        if master is not None:
            value = _local(master).to(torch.float32)
            k = Q.compact_shift(p.dtype, bits)
            d = value.view(torch.int32).to(torch.int64) - _local(p).detach().to(torch.float32).view(torch.int32).to(torch.int64)
            lo, hi = (-2**15, 2**15 - 1) if bits == 16 else (-128, 127)
            c = torch.round(d.double() / (1 << k)).clamp(lo, hi).to(want)
        elif corr is not None:  # 8 <-> 16 bits: through the decoded master
            value = Q.compact_decode(_local(p).detach(), _local(corr), corr.element_size() * 8)
            return master_entries(p, {"master_param": value}, mode, device)
        else:
            c = torch.zeros_like(_local(p), dtype=want)
        put["master_correction"] = _rewrap(p, c.to(device), p)
    elif _local(corr).device != device:
        put["master_correction"] = corr.to(device)
    return put, ["master_param"] if master is not None else []
