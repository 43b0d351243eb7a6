"""Test configuration: Triton interpreter on CPU-only machines, hypothesis profiles, shared fixtures.

``TRITON_INTERPRET=1`` must be set before any ``@triton.jit`` function is defined, i.e. before
``lrsched_fused.kernels`` is imported, so it is set here (and in ``.ci/run``) when no GPU is present.
Hypothesis profiles: ``ci`` (default, small) and ``dev`` (``HYPOTHESIS_PROFILE=dev``, larger).
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile("ci", max_examples=20, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("dev", max_examples=200, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
