"""Adam's bias correction ``1 - beta^t`` without cancellation, in float32 (no libdevice).

``1 - beta^t`` computed naively as ``1 - exp2(t * log2(beta))`` loses about ``1e-7 / (1 - beta^t)``
relative accuracy: 1e-4 at ``t = 1`` for ``beta = 0.999``, since ``beta`` itself has only 24 bits. So
the kernels take ``1 - beta`` from the float64 hyperparameter table (exact to float32 rounding) and use

    ln(beta)     = log1p(-(1 - beta))      series for 1 - beta < 0.1, else log2(beta) * ln 2
    x            = t * ln(beta)            (x <= 0)
    1 - beta^t   = -expm1(x)               series for x > -0.5, else 1 - exp2(x * log2 e)

which is accurate to a few float32 ulps for every ``beta`` in [0, 1) and every ``t`` (``beta = 0`` gives
the exact value 1). Every branch is evaluated and selected with
``tl.where``; the unselected ones may hold inf or NaN. Used once per program (scalar work).
"""

from __future__ import annotations

import triton.language as tl

from ._jit import device_jit

__all__ = ["one_minus_pow"]

_LN2 = tl.constexpr(0.6931471805599453)
_LOG2E = tl.constexpr(1.4426950408889634)
_TINY = tl.constexpr(1.1754943508222875e-38)


@device_jit
def _neg_log1m(u):
    """-log(1 - u) for 0 <= u < 0.1: u + u^2/2 + ... + u^9/9 (relative error < 1e-9)."""
    s = 1.0 / 9.0
    s = 1.0 / 8.0 + u * s
    s = 1.0 / 7.0 + u * s
    s = 1.0 / 6.0 + u * s
    s = 1.0 / 5.0 + u * s
    s = 1.0 / 4.0 + u * s
    s = 1.0 / 3.0 + u * s
    s = 0.5 + u * s
    s = 1.0 + u * s
    return u * s


@device_jit
def _neg_expm1(x):
    """1 - exp(x) for -0.5 < x <= 0: -(x + x^2/2! + ... + x^9/9!) (relative error < 1e-8)."""
    s = 1.0 / 362880.0
    s = 1.0 / 40320.0 + x * s
    s = 1.0 / 5040.0 + x * s
    s = 1.0 / 720.0 + x * s
    s = 1.0 / 120.0 + x * s
    s = 1.0 / 24.0 + x * s
    s = 1.0 / 6.0 + x * s
    s = 0.5 + x * s
    s = 1.0 + x * s
    return -(x * s)


@device_jit
def one_minus_pow(beta, t):
    """float32 ``1 - beta^t`` for a float64 scalar ``beta`` in [0, 1) and a float32 scalar ``t >= 1``."""
    u = (1.0 - beta).to(tl.float32)  # 1 - beta, exact in float64, then one rounding
    b32 = beta.to(tl.float32)
    small = _neg_log1m(tl.minimum(u, 0.1))
    # beta = 0: log2 of the smallest normal float32 instead of log2(0) = -inf; 1 - 2^(-126 t) is 1.0 all the same
    large = -tl.log2(tl.maximum(b32, _TINY)) * _LN2
    neg_ln = tl.where(u < 0.1, small, large)  # -ln(beta) >= 0
    x = -(t * neg_ln)
    near = _neg_expm1(tl.maximum(x, -0.5))
    far = 1.0 - tl.exp2(x * _LOG2E)
    return tl.where(x > -0.5, near, far)
