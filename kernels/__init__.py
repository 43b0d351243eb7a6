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
