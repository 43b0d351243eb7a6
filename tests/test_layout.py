"""kernels/layout.py and csrc/include/lrsched/layout.h declare the same binary layout.

Checked twice: against the header's text (runs everywhere, no build needed) and against the constants
compiled into the CPU extension (``lrsched_fused._cpu.layout()``, when it is built), so neither a stale
header nor a stale binary can disagree with the Python side.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from lrsched_fused.kernels import layout as L

HEADER = Path(__file__).resolve().parents[1] / "csrc" / "include" / "lrsched" / "layout.h"


def python_constants() -> dict[str, int]:
    return {k: v for k, v in vars(L).items() if k.isupper() and isinstance(v, int) and not isinstance(v, bool)}


def header_constants() -> dict[str, int]:
    out = {}
    for name, expr in re.findall(r"constexpr\s+int64_t\s+(\w+)\s*=\s*([^;]+);", HEADER.read_text()):
        expr = expr.strip()
        shift = re.fullmatch(r"int64_t\(1\)\s*<<\s*(\d+)", expr)
        out[name] = 1 << int(shift.group(1)) if shift else int(expr, 0)
    return out


def test_header_declares_every_python_constant_with_the_same_value():
    py, h = python_constants(), header_constants()
    assert py, "no constants found in kernels/layout.py"
    missing = sorted(set(py) - set(h))
    assert not missing, f"layout.h lacks {missing}"
    different = {k: (py[k], h[k]) for k in py if py[k] != h[k]}
    assert not different, f"layout.h disagrees with layout.py (python, header): {different}"


def test_header_has_no_constant_unknown_to_python():
    extra = sorted(set(header_constants()) - set(python_constants()))
    assert not extra, f"layout.h declares constants that kernels/layout.py lacks: {extra}"


@pytest.mark.cpu_ext
@pytest.mark.skipif(importlib.util.find_spec("lrsched_fused._cpu") is None, reason="CPU extension not built")
def test_compiled_extension_uses_the_same_layout():
    import torch  # noqa: F401  (torch first: one OpenMP runtime)
    from lrsched_fused import _cpu  # noqa: E402

    compiled, py = _cpu.layout(), python_constants()
    assert set(compiled) == set(py)
    assert {k: compiled[k] for k in py} == py
    assert _cpu.DTYPE_CODES == L.DTYPE_CODES


@pytest.mark.cpu_ext
@pytest.mark.skipif(importlib.util.find_spec("lrsched_fused._cpu") is None, reason="CPU extension not built")
def test_compiled_extension_supports_the_documented_dtype_combinations():
    """``_cpu.supported`` (csrc/include/lrsched/dtypes.h, shared with the CUDA sources) takes layout codes and a
    ``MASTER_*`` mode (``False`` / ``True`` are ``MASTER_NONE`` / ``MASTER_FP32``); int8 moments
    (docs/compressed_state.md) report the code of ``exp_avg``, int8."""
    import torch  # noqa: F401  (torch first: one OpenMP runtime)
    from lrsched_fused import _cpu  # noqa: E402

    none, fp32, corr = L.MASTER_NONE, L.MASTER_FP32, (L.MASTER_CORR8, L.MASTER_CORR16)
    want = {("float32", "float32", none), ("float32", "bfloat16", none), ("float64", "float64", none),
            ("float32", "int8", none)}
    want |= {(p, s, m) for p, s in [("bfloat16", "float32"), ("bfloat16", "bfloat16"), ("float16", "float32"),
                                    ("float16", "float16"), ("bfloat16", "int8"), ("float16", "int8")]
             for m in (none, fp32, *corr)}
    modes = (none, fp32, *corr)
    got = {(p, s, m) for p in L.DTYPE_CODES for s in L.DTYPE_CODES for m in modes
           if _cpu.supported(L.DTYPE_CODES[p], L.DTYPE_CODES[s], m)}
    assert got == want
    for p in L.DTYPE_CODES.values():
        for s in L.DTYPE_CODES.values():
            assert _cpu.supported(p, s, False) == _cpu.supported(p, s, none)
            assert _cpu.supported(p, s, True) == _cpu.supported(p, s, fp32)
