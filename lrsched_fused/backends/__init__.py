"""Backend registry: which implementation runs an optimizer step for tensors on a given device.

=============  ==============================================  ========================================
name           what                                            where it runs
=============  ==============================================  ========================================
``triton``     multi-tensor Triton kernels (``kernels/``)      CUDA tensors; CPU tensors only under
                                                               ``TRITON_INTERPRET=1`` (tests)
``cpu``        C++17 + OpenMP extension (``csrc/``)            CPU tensors, when the extension is built
``cuda``       CUDA sources (``csrc/cuda/``)                   CUDA tensors, when built on a GPU machine
``reference``  plain torch, one tensor at a time               anywhere (slow)
=============  ==============================================  ========================================

``"auto"`` picks ``triton`` (else ``cuda``) for CUDA tensors and ``cpu`` for CPU tensors, and falls
back to ``reference`` with a warning when neither is available.
"""

from __future__ import annotations

import importlib
import os
import warnings
import torch

from lrsched_fused.schedules import Schedule, encode_tables, register_evaluator

from ._api import Backend, BackendUnavailable, StepContext, TensorBatch

__all__ = ["Backend", "BackendUnavailable", "StepContext", "TensorBatch", "get_backend", "select_backend",
           "available_backends", "BACKENDS"]

BACKENDS = ("triton", "cpu", "cuda", "reference")
_LOADERS: dict[str, tuple[str, str]] = {
    "reference": ("lrsched_fused.backends.reference", "ReferenceBackend"),
    "triton": ("lrsched_fused.backends.triton", "TritonBackend"),
    "cpu": ("lrsched_fused.backends.cpu", "CpuBackend"),
    "cuda": ("lrsched_fused.backends.cuda", "CudaBackend"),
}
_CACHE: dict[str, Backend | BackendUnavailable] = {}
_WARNED: set[str] = set()


def _load(name: str) -> Backend:
    if name not in _LOADERS:
        raise ValueError(f"backend must be one of 'auto', {', '.join(repr(b) for b in BACKENDS)}; got {name!r}")
    if name not in _CACHE:
        module, cls = _LOADERS[name]
        try:
            _CACHE[name] = getattr(importlib.import_module(module), cls)()
        except BackendUnavailable as exc:
            _CACHE[name] = exc
        except ImportError as exc:
            _CACHE[name] = BackendUnavailable(f"backend {name!r} is not available: {exc}")
    got = _CACHE[name]
    if isinstance(got, BackendUnavailable):
        raise BackendUnavailable(str(got))
    return got


def get_backend(name: str) -> Backend:
    """The backend called ``name``; raises :class:`BackendUnavailable` saying why it cannot run here."""
    return _load(name)


def available_backends() -> dict[str, str | None]:
    """``{name: None}`` for each usable backend, ``{name: reason}`` for the others."""
    out: dict[str, str | None] = {}
    for name in BACKENDS:
        try:
            _load(name)
            out[name] = None
        except BackendUnavailable as exc:
            out[name] = str(exc)
    if out["triton"] is None and not torch.cuda.is_available() and not _interpreting():
        out["triton"] = ("triton is installed but there is no CUDA device (CPU tensors need TRITON_INTERPRET=1 set "
                         "before import; tests only)")
    return out


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def select_backend(name: str, device: torch.device) -> Backend:
    """Resolve ``name`` (``"auto"`` or a backend name) for tensors on ``device``."""
    if name != "auto":
        backend = _load(name)
        if name == "triton" and device.type == "cpu" and not _interpreting():
            raise BackendUnavailable("backend 'triton' on CPU tensors needs TRITON_INTERPRET=1 set before "
                                     "lrsched_fused is imported (tests only); use backend='cpu' for CPU training")
        if name in ("cuda",) and device.type != "cuda":
            raise BackendUnavailable(f"backend {name!r} needs CUDA tensors; got tensors on {device}")
        if name == "cpu" and device.type != "cpu":
            raise BackendUnavailable(f"backend 'cpu' needs CPU tensors; got tensors on {device}")
        return backend
    order: tuple[str, ...] = ("triton", "cuda") if device.type == "cuda" else ("cpu",)
    reasons = []
    for candidate in order:
        try:
            return _load(candidate)
        except BackendUnavailable as exc:
            reasons.append(str(exc))
    key = f"{device.type}"
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(f"lrsched_fused: no compiled backend for {device.type} tensors ({'; '.join(reasons)}); "
                      "falling back to the slow 'reference' backend", RuntimeWarning, stacklevel=3)
    return _load("reference")


def _schedule_evaluator(name: str):
    """``schedules.evaluate(..., backend=name)``: the backend's kernel evaluator (float32 values)."""
    def evaluate(schedule: Schedule, steps: torch.Tensor) -> torch.Tensor:
        impl = _load(name)
        device = steps.device
        if name == "cuda" or (name == "triton" and torch.cuda.is_available() and device.type == "cpu"):
            device = torch.device("cuda") if torch.cuda.is_available() else device
        return impl.evaluate_schedule(encode_tables([schedule], device), steps.to(device))
    return evaluate


for _name in BACKENDS:
    if _name != "reference":  # "reference" in schedules.evaluate is the float64 Schedule.__call__ itself
        register_evaluator(_name, _schedule_evaluator(_name))
