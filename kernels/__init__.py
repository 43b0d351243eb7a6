"""Triton kernels of lrsched-fused, installed as ``lrsched_fused.kernels``.

Kernel modules import only triton and torch; they know nothing about ``torch.optim``. ``layout`` (the
binary layout of the tables) imports nothing and is safe to import without Triton.

=====================  ==================================================================================
``layout``             table layouts shared with the Python and C++ evaluators
``schedule``           the schedule as a device function (``schedule_value``, ``group_lr``) and a kernel
                       that evaluates it at many clocks (``evaluate_schedule_kernel``)
``bias_correction``    ``1 - beta^t`` without cancellation
``dtypes``             dtype codes, loads/stores with round-to-nearest-even (bf16 by bits), integer codes
``multi_tensor``       pointer and work tables ((tensor, chunk); int8 moments: (tensor, run of whole
                       blocks)); ``list_ptr`` / ``work_item`` / ``block_tile`` helpers
``quant``              compressed state: int8 / uint8 block codec, stochastic rounding, compact masters
``params``             parameter and moment loads / stores in every master mode, with stochastic rounding
``adamw``              one-launch multi-tensor AdamW
``adamw_int8``         the same with int8 moments
``lamb``               LAMB: stage 1, per-tensor reduction, stage 2
``lamb_int8``          LAMB's stages 1 and 2 with int8 moments
``norms``              sum of squares of the gradients (global-norm clipping)
``advance``            the single-program end of a step: lr telemetry, gradient-norm history, steps,
                       clock
``_jit``               ``device_jit`` (``triton.jit`` with a fast path under the interpreter)
=====================  ==================================================================================
"""

if __name__ == "kernels":  # pragma: no cover (exercised in a subprocess by tests/test_packaging.py)
    # Imported as a top-level package, not as lrsched_fused.kernels: the repository root is on sys.path
    # (``python -m pytest`` or ``python -c`` run from a clone). This directory would then shadow an installed
    # distribution of the same name, such as Hugging Face's ``kernels``, which transformers imports, and break
    # it. Step aside for that package where one is installed; nothing of this project imports ``kernels``.
    import importlib.machinery as _machinery
    import importlib.util as _util
    import os as _os
    import sys as _sys

    _here = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
    _spec = _machinery.PathFinder.find_spec(
        __name__, [p for p in _sys.path if _os.path.abspath(p or _os.curdir) != _here])
    if _spec is not None and _spec.loader is not None:
        _module = _util.module_from_spec(_spec)
        _sys.modules[__name__] = _module  # what ``import kernels`` returns once this module has run
        _spec.loader.exec_module(_module)
