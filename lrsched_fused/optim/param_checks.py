"""The checks a tensor passes when it joins a fused optimizer (``add_param_group``, the constructor).

A parameter must be a real floating tensor (fp32, bf16, fp16, fp64), dense (contiguous, transposed or
``channels_last``: the kernels update its memory as one run), and on the one device of the optimizer's
other parameters. A tensor listed twice warns as torch 2.13 does (and is updated once per listing).
"""

from __future__ import annotations

import warnings

import torch

from lrsched_fused.functional import SUPPORTED_DTYPES, is_dense, local

__all__ = ["check_new_params"]


def check_new_params(tensors: list, gi: int, existing: list[torch.Tensor]) -> None:
    """Check ``tensors``, the parameters of the new ``param_groups[gi]``, against each other and the
    ``existing`` parameters. ``TypeError`` / ``ValueError`` name the tensor by its group, index and shape."""
    seen: set[int] = set()
    warned = False
    devices = {local(p).device for p in existing}
    for index, p in enumerate(tensors):
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"optimizer can only optimize Tensors; param_groups[{gi}]['params'][{index}] is a "
                            f"{type(p).__name__}")
        where = f"param_groups[{gi}]['params'][{index}] of shape {tuple(p.shape)}"
        if p.is_complex() or p.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"{where} has dtype {p.dtype}; parameters must be float32, bfloat16, float16 or "
                             "float64 (complex parameters: optimize torch.view_as_real(p) instead)")
        if not is_dense(p):
            raise ValueError(f"{where} overlaps itself or has gaps (strides {local(p).stride()}, e.g. an expanded "
                             "view); the fused kernels update dense memory (contiguous, transposed or "
                             "channels_last tensors): make it contiguous (p.data = p.data.contiguous())")
        if id(p) in seen and not warned:
            warned = True  # torch 2.13's warning, and what we do about it
            warnings.warn("optimizer contains a parameter group with duplicate parameters; in future, this will "
                          "cause an error; see github.com/pytorch/pytorch/issues/40967 for more information. "
                          f"({where} is listed again: as torch does, it is updated once per listing in each "
                          "step, one after the other, and its step count advances as many times)",
                          UserWarning, stacklevel=4)
        seen.add(id(p))
        devices.add(local(p).device)
        if len(devices) > 1:
            raise ValueError(f"{where} is on {local(p).device} but other parameters are on "
                             f"{sorted(str(d) for d in devices - {local(p).device})}; all parameters of one "
                             "optimizer must be on one device (create one optimizer per device)")
