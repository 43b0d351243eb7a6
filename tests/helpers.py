"""Shared test utilities: per-dtype tolerances, backend availability, tiny models."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

#: Relative tolerance ``max|x - ref| <= rtol * max|ref|`` after a multi-step run, per parameter dtype.
#: fp32/fp64: the issue's 1e-5 (fp64 computes the schedule in fp32 on the kernel paths). bf16/fp16:
#: one rounding of the parameter per step to 8 / 11 mantissa bits, so a few ulps after a run.
RTOL = {torch.float32: 1e-5, torch.float64: 1e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}


def max_rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    """``max|x - ref| / max|ref|`` in float64 (0 for empty tensors; ``max|ref|`` floored at 1e-30)."""
    if ref.numel() == 0:
        return 0.0
    x, ref = x.detach().double().cpu(), ref.detach().double().cpu()
    return float((x - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def have_triton() -> bool:
    return importlib.util.find_spec("triton") is not None and (torch.cuda.is_available() or triton_interpreting())


def have_backend(name: str) -> bool:
    from lrsched_fused.backends import available_backends

    return available_backends().get(name, "missing") is None


def backends_on_cpu() -> list[str]:
    """Backends that can run on CPU tensors in this process."""
    out = ["reference"]
    if have_backend("cpu"):
        out.append("cpu")
    if have_triton() and triton_interpreting() and have_backend("triton"):
        out.append("triton")
    return out


requires_triton = pytest.mark.skipif(not have_triton(), reason="triton not installed or no GPU / interpreter")


def tiny_model(seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """Linear(5, 4) -> LayerNorm(4) -> Linear(4, 2), seeded: weights, biases and 1-d norm parameters."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2)).to(dtype)


def tiny_backward(model: torch.nn.Module, step: int) -> None:
    """Fresh gradients of ``mean(model(x)^2)`` for a batch ``x`` that depends only on ``step``."""
    gen = torch.Generator().manual_seed(1000 + step)
    dtype = next(model.parameters()).dtype
    x = torch.randn(3, 5, generator=gen).to(dtype)
    model.zero_grad(set_to_none=True)
    model(x).float().square().mean().backward()
