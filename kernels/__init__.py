"""Triton kernels of lrsched-fused, installed as ``lrsched_fused.kernels``.

Kernel modules import only triton and torch; they know nothing about ``torch.optim``. ``layout`` (the
binary layout of the tables) imports nothing and is safe to import without Triton.

=====================  ==================================================================================
``layout``             table layouts shared with the Python and C++ evaluators
``schedule``           the schedule as a device function (``schedule_value``, ``group_lr``) and a kernel
                       that evaluates it at many clocks (``evaluate_schedule_kernel``)
``bias_correction``    ``1 - beta^t`` without cancellation
``dtypes``             dtype codes, loads/stores with round-to-nearest-even (bf16 by bits)
``multi_tensor``       pointer and (tensor, chunk) work tables; ``list_ptr`` / ``work_item`` helpers
``adamw``              one-launch multi-tensor AdamW
``lamb``               LAMB: stage 1, per-tensor reduction, stage 2
``norms``              sum of squares of the gradients (global-norm clipping)
``advance``            the single-program end of a step: lr telemetry, steps and clock
``_jit``               ``device_jit`` (``triton.jit`` with a fast path under the interpreter)
=====================  ==================================================================================
"""
