"""What a benchmark case measures: parameter count, tensor layout, dtypes, and the bytes each step moves.

A *case* is one (params, tensors, dtype, threads) point. Every implementation timed in a case starts
from the same parameters and gradients (generated once from a fixed seed and cloned), so they all see
the same data.

Tensor layouts (flat 1-D tensors; an optimizer step does not depend on shapes):

* ``mixed`` (up to 200 tensors, e.g. 50): sizes drawn log-uniformly over three decades, like a model's
  mix of embeddings, matrices and small vectors, scaled to sum to ``params``;
* ``small`` (more than 200 tensors, e.g. 2000): sizes uniform in ``[0.5, 1.5] x params / tensors``.

Bytes per parameter (:func:`bytes_per_param`) count the minimum DRAM traffic of an algorithm with the
implementation's storage: every tensor read once per sweep that needs it, written once per sweep that
changes it (no write-allocate: in-place updates). ``p`` parameter bytes, ``s`` state (moment) bytes:

* AdamW, one sweep: read p, g, m, v; write p, m, v: ``3 p + 4 s`` (fp32: 28 B; bf16 params with fp32
  moments: 22 B; torch keeps bf16 moments for bf16 params: 14 B);
* LAMB, two sweeps (the trust ratio needs whole-tensor norms before the write): sweep 1 reads p, g, m, v
  and writes m, v; sweep 2 reads p, m, v and writes p: ``4 p + 6 s`` (fp32: 40 B; bf16/fp32: 32 B).
  A tensor whose update stays in cache between the sweeps costs less than counted, so with many small
  tensors the fraction of the floor can exceed 100%.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

__all__ = ["Case", "DTYPES", "parse_count", "tensor_sizes", "layout_name", "make_data", "bytes_per_param", "int8_bytes",
           "MIXED_MAX_TENSORS"]

#: ``--dtypes`` names: (parameter dtype, our moment dtype). bf16 runs with fp32 moments (our default).
DTYPES: dict[str, tuple[torch.dtype, torch.dtype]] = {
    "fp32": (torch.float32, torch.float32),
    "bf16": (torch.bfloat16, torch.float32),
}

#: Layouts with at most this many tensors are ``mixed``; more are ``small``.
MIXED_MAX_TENSORS = 200

_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}


def parse_count(text: str) -> int:
    """``"50M"`` -> 50_000_000, ``"1e6"`` -> 1_000_000, ``"200k"`` -> 200_000 (a positive integer)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmgKMG]?)\s*", text)
    if not m:
        raise ValueError(f"not a count: {text!r} (examples: 1M, 50M, 200k, 1e6)")
    value = float(m.group(1)) * _SUFFIX[m.group(2).lower()]
    if value < 1 or value != int(value):
        raise ValueError(f"a count must be a positive integer; got {text!r}")
    return int(value)


def human(n: int) -> str:
    """1_000_000 -> "1M", 200_000 -> "200K", 50 -> "50"."""
    for div, suffix in ((10**9, "G"), (10**6, "M"), (10**3, "K")):
        if n >= div and n % (div // 10) == 0:
            text = f"{n / div:.1f}".rstrip("0").rstrip(".")
            return text + suffix
    return str(n)


@dataclass(frozen=True)
class Case:
    """One benchmark point; the implementations of every selected op are interleaved within it."""

    params: int
    tensors: int
    dtype: str      # key of DTYPES
    threads: int

    @property
    def layout(self) -> str:
        return layout_name(self.tensors)

    @property
    def param_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype][0]

    @property
    def state_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype][1]

    def title(self) -> str:
        return (f"{human(self.params)} params in {self.tensors} {self.layout} tensors, {self.dtype}, "
                f"{self.threads} thread{'s' if self.threads > 1 else ''}")


def layout_name(tensors: int) -> str:
    return "mixed" if tensors <= MIXED_MAX_TENSORS else "small"


def tensor_sizes(params: int, tensors: int, seed: int = 0) -> list[int]:
    """``tensors`` sizes (each >= 1) summing exactly to ``params``, in the layout named by :func:`layout_name`."""
    if tensors < 1 or params < tensors:
        raise ValueError(f"need 1 <= tensors <= params; got tensors={tensors}, params={params}")
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(tensors, generator=g, dtype=torch.float64)
    weights = torch.exp(u * math.log(1000.0)) if layout_name(tensors) == "mixed" else 0.5 + u
    raw = weights / weights.sum() * (params - tensors)  # every tensor gets 1 + its share of the rest
    sizes = [1 + int(x) for x in raw.tolist()]
    sizes[int(torch.argmax(weights))] += params - sum(sizes)
    return sizes


def make_data(case: Case, seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Parameters (N(0, 0.02^2)) and gradients (N(0, 1e-3^2)) of the case, in the case's param dtype."""
    g = torch.Generator().manual_seed(seed)
    params, grads = [], []
    for n in tensor_sizes(case.params, case.tensors, seed):
        params.append((torch.randn(n, generator=g) * 0.02).to(case.param_dtype))
        grads.append((torch.randn(n, generator=g) * 1e-3).to(case.param_dtype))
    return params, grads


def bytes_per_param(op: str, param_dtype: torch.dtype, state_dtype: torch.dtype, master: bool = False) -> int:
    """Minimum bytes moved per parameter by one step (see the module docstring). ``master``: AdamW on
    low-precision params with fp32 master weights also reads and writes the master copy (+8 B: bf16
    params with fp32 moments and master, 30 B)."""
    p = torch.empty((), dtype=param_dtype).element_size()
    s = torch.empty((), dtype=state_dtype).element_size()
    if op not in ("adamw", "lamb"):
        raise ValueError(f"op must be 'adamw' or 'lamb'; got {op!r}")
    if master and op != "adamw":
        raise ValueError("bytes with master weights are counted for AdamW only")
    if op == "adamw":
        return 3 * p + 4 * s + (8 if master else 0)
    return 4 * p + 6 * s


def int8_bytes(op: str, param_dtype: torch.dtype) -> float:
    """Bytes per parameter moved by one step with int8 moments (block 256): the parameter traffic of
    :func:`bytes_per_param` with 1-byte moments, plus the fp32 block scales (AdamW: each moment's read and
    written; LAMB: once more in its second stage). fp32 parameters: 16.06 (AdamW), 22.09 (LAMB)."""
    scales = (2 if op == "adamw" else 3) * 2 * 4 / 256
    return bytes_per_param(op, param_dtype, torch.int8) + scales
