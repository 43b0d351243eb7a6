"""Build script: the package, the Triton kernels (as ``lrsched_fused.kernels``) and the C++ extension."""

from setuptools import setup

setup(
    packages=["lrsched_fused", "lrsched_fused.kernels"] + [
        "lrsched_fused." + p for p in ("schedules", "reference", "optim", "backends", "demo")],
    package_dir={"lrsched_fused": "lrsched_fused", "lrsched_fused.kernels": "kernels"},
)
