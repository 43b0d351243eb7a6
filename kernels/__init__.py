"""Triton kernels of lrsched-fused, installed as ``lrsched_fused.kernels``.

Kernel modules import only triton and torch; they know nothing about ``torch.optim``. ``layout`` (the
binary layout of the tables) imports nothing and is safe to import without Triton.
"""
