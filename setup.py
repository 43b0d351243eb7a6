"""Build script: the package, the Triton kernels (as ``lrsched_fused.kernels``) and the C++ extensions.

``lrsched_fused._cpu`` (CPU backend) is built with ninja from ``csrc/cpu`` and bound with plain pybind11
over raw pointers, so the build needs no torch (pip's isolated build environment has setuptools, wheel,
pybind11 and ninja only). The kernels are compiled once per instruction set (baseline x86-64, AVX2 =
x86-64-v3, AVX-512 = x86-64-v4) and the extension picks one at import with cpuid: portable binaries, no
``-march=native``. ``lrsched_fused._cuda`` (CUDA backend, ``csrc/cuda``) is built only where nvcc and a GPU
are present.

The extensions are optional: without a working C++17 compiler the install still succeeds (with a
warning), the ``cpu`` backend reports itself unavailable and the optimizers fall back to ``reference``.

Environment variables:
    LRSCHED_BUILD_EXT=0        skip the C++ extensions entirely
    LRSCHED_REQUIRE_EXT=1      make a failed C++ build fail the install (CI sets it)
    LRSCHED_BUILD_CUDA=auto|0|1  CUDA extension: auto (default) = nvcc found and a GPU visible
    CXX, NVCC / CUDA_HOME      compilers; LRSCHED_CUDA_ARCH (default: -arch=native with a GPU, else sm_90)
    MAX_JOBS                   parallel compile jobs (ninja's default otherwise)
"""

from __future__ import annotations

import os
import platform
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import warnings

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(ROOT, "csrc")
INCLUDE = os.path.join(CSRC, "include")

#: Flags of every C++ translation unit. Never -ffast-math (it breaks NaN/Inf semantics);
#: -fno-math-errno lets sqrt vectorize; -ffp-contract=off keeps results identical across instruction sets.
CXX_FLAGS = ["-std=c++17", "-O3", "-fno-math-errno", "-ffp-contract=off", "-fopenmp", "-fPIC", "-fvisibility=hidden",
             "-Wall", "-Wextra", "-Wno-unused-function"]
ISA_FLAGS = {
    "baseline": ["-march=x86-64", "-mtune=generic"],
    "avx2": ["-march=x86-64-v3", "-mtune=generic"],
    "avx512": ["-march=x86-64-v4", "-mtune=generic", "-mprefer-vector-width=512"],
}
ISA_MACROS = {"avx2": "-DLRS_HAVE_AVX2", "avx512": "-DLRS_HAVE_AVX512"}


def _env_flag(name: str, default: str) -> str:
    return os.environ.get(name, default).strip().lower()


def _which_cxx() -> str | None:
    for cand in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if cand and shutil.which(shlex.split(cand)[0]):
            return cand
    return None


def _compiles(cxx: str, flags: list[str], code: str = "int main() { return 0; }\n") -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.cpp")
        with open(src, "w") as fh:
            fh.write(code)
        cmd = shlex.split(cxx) + flags + [src, "-o", os.path.join(tmp, "probe")]
        return subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0


def _ninja() -> str | None:
    try:
        import ninja  # the PyPI package ships the binary

        path = os.path.join(ninja.BIN_DIR, "ninja")
        if os.path.exists(path):
            return path
    except ImportError:
        pass
    return shutil.which("ninja")


def _nvcc() -> str | None:
    if os.environ.get("NVCC"):
        return os.environ["NVCC"]
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
        return os.path.join(home, "bin", "nvcc")
    return shutil.which("nvcc")


def _cudart_dir(nvcc: str) -> str:
    """The folder holding libcudart.so (CUDA_HOME, /usr/local/cuda, or next to nvcc)."""
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda",
             os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))]
    for home in filter(None, homes):
        for sub in ("lib64", "lib", os.path.join("targets", "x86_64-linux", "lib")):
            if os.path.exists(os.path.join(home, sub, "libcudart.so")):
                return os.path.join(home, sub)
    raise RuntimeError("libcudart.so not found (set CUDA_HOME)")


def _gpu_visible() -> bool:
    try:
        import torch

        if torch.version.cuda is not None and torch.cuda.is_available():
            return True
    except Exception:
        pass
    return os.path.exists("/dev/nvidiactl") or shutil.which("nvidia-smi") is not None


class _Job:
    """One compile or link command."""

    def __init__(self, out: str, inputs: list[str], cmd: list[str]) -> None:
        self.out, self.inputs, self.cmd = out, inputs, cmd


def _run_jobs(jobs: list[_Job], build_dir: str) -> None:
    """Run the compile jobs with ninja (parallel, incremental), or one by one if ninja is missing."""
    ninja = _ninja()
    if ninja is None:
        for job in jobs:
            print(" ".join(shlex.quote(c) for c in job.cmd))
            subprocess.run(job.cmd, check=True)
        return
    lines = ["ninja_required_version = 1.3",
             "rule compile", "  command = $cmd", "  description = $desc", "  deps = gcc", "  depfile = $out.d", "",
             "rule link", "  command = $cmd", "  description = $desc", ""]
    esc = lambda p: p.replace("$", "$$").replace(" ", "$ ").replace(":", "$:")  # noqa: E731
    for job in jobs:
        cmd, rule = job.cmd, "link"
        if "-c" in cmd and "nvcc" not in os.path.basename(cmd[0]):  # record header dependencies
            cmd, rule = cmd + ["-MMD", "-MF", job.out + ".d"], "compile"
        lines.append(f"build {esc(job.out)}: {rule} {' '.join(esc(i) for i in job.inputs)}")
        lines.append(f"  cmd = {' '.join(shlex.quote(c).replace('$', '$$') for c in cmd)}")
        lines.append(f"  desc = {os.path.basename(job.out)}")
        lines.append("")
    os.makedirs(build_dir, exist_ok=True)
    with open(os.path.join(build_dir, "build.ninja"), "w") as fh:
        fh.write("\n".join(lines))
    cmd = [ninja, "-C", build_dir]
    if os.environ.get("MAX_JOBS"):
        cmd += ["-j", os.environ["MAX_JOBS"]]
    subprocess.run(cmd, check=True)


class BuildExt(build_ext):
    """Builds the extensions with our own ninja file (per-file flags for the per-ISA kernels)."""

    def run(self) -> None:
        if _env_flag("LRSCHED_BUILD_EXT", "1") in ("0", "false", "no", "off"):
            print("lrsched_fused: LRSCHED_BUILD_EXT=0, skipping the C++ extensions")
            return
        super().run()

    def build_extension(self, ext: Extension) -> None:
        try:
            if ext.name.endswith("_cpu"):
                self._build_cpu(ext)
            else:
                self._build_cuda(ext)
        except Exception as exc:  # optional extension: keep the install working without it
            if _env_flag("LRSCHED_REQUIRE_EXT", "0") in ("1", "true", "yes", "on"):
                raise
            msg = (f"lrsched_fused: could not build the optional extension {ext.name} ({exc}); the "
                   f"{'cpu' if ext.name.endswith('_cpu') else 'cuda'} backend will be unavailable "
                   "(set LRSCHED_REQUIRE_EXT=1 to make this an error)")
            warnings.warn(msg)
            print("WARNING: " + msg, file=sys.stderr)

    # -- CPU -----------------------------------------------------------------------------------------------
    def _build_cpu(self, ext: Extension) -> None:
        cxx = _which_cxx()
        if cxx is None:
            raise RuntimeError("no C++ compiler found (set CXX)")
        cxx_cmd = shlex.split(cxx)
        if not _compiles(cxx, ["-std=c++17", "-fopenmp"],
                         "#include <omp.h>\nint main() { return omp_get_max_threads() > 0 ? 0 : 1; }\n"):
            raise RuntimeError(f"{cxx} cannot compile C++17 with OpenMP (-fopenmp)")
        import pybind11

        out = os.path.abspath(self.get_ext_fullpath(ext.name))
        build_dir = os.path.abspath(os.path.join(self.build_temp, "lrsched_cpu"))
        os.makedirs(build_dir, exist_ok=True)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        x86 = platform.machine().lower() in ("x86_64", "amd64")
        isas = ["baseline"]
        if x86:
            isas += [isa for isa in ("avx2", "avx512") if _compiles(cxx, ISA_FLAGS[isa] + ["-c", "-x", "c++"])]
        macros = [ISA_MACROS[isa] for isa in isas if isa in ISA_MACROS]
        base = CXX_FLAGS + [f"-I{INCLUDE}"] + macros
        baseline_flags = ISA_FLAGS["baseline"] if x86 else []
        py_inc = [f"-I{sysconfig.get_paths()['include']}", f"-I{pybind11.get_include()}"]
        src = os.path.join(CSRC, "cpu")
        jobs: list[_Job] = []
        objs = []
        for isa in isas:
            obj = os.path.join(build_dir, f"kernels_{isa}.o")
            flags = ISA_FLAGS[isa] if x86 else []
            jobs.append(_Job(obj, [os.path.join(src, f"kernels_{isa}.cpp")],
                             cxx_cmd + base + flags + ["-c", os.path.join(src, f"kernels_{isa}.cpp"), "-o", obj]))
            objs.append(obj)
        for name, extra in (("ops", []), ("bindings", py_inc)):
            obj = os.path.join(build_dir, f"{name}.o")
            cpp = os.path.join(src, f"{name}.cpp")
            jobs.append(_Job(obj, [cpp], cxx_cmd + base + baseline_flags + extra + ["-c", cpp, "-o", obj]))
            objs.append(obj)
        jobs.append(_Job(out, objs, cxx_cmd + ["-shared", "-fopenmp"] + objs + ["-o", out]))
        _run_jobs(jobs, build_dir)

    # -- CUDA ----------------------------------------------------------------------------------------------
    def _build_cuda(self, ext: Extension) -> None:
        nvcc = _nvcc()
        cxx = _which_cxx()
        if nvcc is None or cxx is None:
            raise RuntimeError("nvcc or a C++ compiler is missing")
        import pybind11

        out = os.path.abspath(self.get_ext_fullpath(ext.name))
        build_dir = os.path.abspath(os.path.join(self.build_temp, "lrsched_cuda"))
        os.makedirs(build_dir, exist_ok=True)
        libdir = _cudart_dir(nvcc)
        arch = os.environ.get("LRSCHED_CUDA_ARCH")
        arch_flags = shlex.split(arch) if arch else (["-arch=native"] if _gpu_visible() else ["-arch=sm_90"])
        src = os.path.join(CSRC, "cuda")
        nvcc_flags = ["-std=c++17", "-O3", "--fmad=false", "-Xcompiler", "-fPIC", f"-I{INCLUDE}"] + arch_flags
        jobs, objs = [], []
        for cu in sorted(f for f in os.listdir(src) if f.endswith(".cu")):
            obj = os.path.join(build_dir, cu[:-3] + ".o")
            cu_path = os.path.join(src, cu)
            jobs.append(_Job(obj, [cu_path], [nvcc] + nvcc_flags + ["-c", cu_path, "-o", obj]))
            objs.append(obj)
        bind = os.path.join(build_dir, "bindings.o")
        py_inc = [f"-I{sysconfig.get_paths()['include']}", f"-I{pybind11.get_include()}"]
        bind_src = os.path.join(src, "bindings.cpp")
        jobs.append(_Job(bind, [bind_src], shlex.split(cxx) + ["-std=c++17", "-O2", "-fPIC", "-fvisibility=hidden",
                                                               f"-I{INCLUDE}"] + py_inc + ["-c", bind_src, "-o", bind]))
        objs.append(bind)
        jobs.append(_Job(out, objs, shlex.split(cxx) + ["-shared"] + objs +
                         [f"-L{libdir}", "-lcudart", f"-Wl,-rpath,{libdir}", "-o", out]))
        _run_jobs(jobs, build_dir)


def _extensions() -> list[Extension]:
    exts = [Extension("lrsched_fused._cpu", sources=[])]
    want_cuda = _env_flag("LRSCHED_BUILD_CUDA", "auto")
    if want_cuda in ("1", "true", "yes", "on") or (want_cuda == "auto" and _nvcc() and _gpu_visible()):
        exts.append(Extension("lrsched_fused._cuda", sources=[]))
    return exts


setup(
    # every package under lrsched_fused/ (a hand-written list once left four of them out of the wheel), and
    # the top-level kernels/ installed as lrsched_fused.kernels
    packages=find_packages(include=["lrsched_fused", "lrsched_fused.*"]) + ["lrsched_fused.kernels"],
    package_dir={"lrsched_fused": "lrsched_fused", "lrsched_fused.kernels": "kernels"},
    ext_modules=_extensions(),
    cmdclass={"build_ext": BuildExt},
)
