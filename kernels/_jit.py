"""``device_jit``: ``triton.jit`` for device functions, with a fast path under the Triton interpreter.

On a GPU this is exactly ``triton.jit``. Under ``TRITON_INTERPRET=1`` every call of an interpreted
device function re-patches the whole ``triton.language`` namespace (about 2 ms per call, measured with
triton 3.8), although the enclosing kernel launch has already patched it for its duration; with a few
dozen helper calls per program that dominated the interpreter tests. There, the wrapper calls the
interpreter's AST-rewritten function directly: the same code the interpreter would run, minus the
redundant patching. If the interpreter's internals differ (``rewrite`` missing), the plain interpreted
function is used.
"""

from __future__ import annotations

import functools

import triton

__all__ = ["device_jit", "interpreting"]


class _InterpretedDeviceFunction:
    """Calls an interpreted device function without re-patching the language (see module docstring)."""

    def __init__(self, interpreted) -> None:
        self._interpreted = interpreted
        self._fn = None
        functools.update_wrapper(self, interpreted.fn)

    def __call__(self, *args, **kwargs):
        if self._fn is None:
            self._fn = self._interpreted.rewrite()
        return self._fn(*args, **kwargs)


def device_jit(fn):
    """Decorate a ``@triton.jit`` device function (not a kernel: kernels keep ``triton.jit``)."""
    jitted = triton.jit(fn)
    if type(jitted).__name__ == "InterpretedFunction" and hasattr(jitted, "rewrite"):
        return _InterpretedDeviceFunction(jitted)
    return jitted


def _probe():
    pass


_INTERPRETING = type(triton.jit(_probe)).__name__ == "InterpretedFunction"


def interpreting() -> bool:
    """Whether ``triton.jit`` makes interpreted functions here (``TRITON_INTERPRET=1`` was set when the kernels
    were first imported)."""
    return _INTERPRETING
