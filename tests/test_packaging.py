"""What a user installs: a wheel built from the source tree holds every module of the package.

CI installs with ``pip install -e .``, which maps the whole ``lrsched_fused/`` directory, so a package that
setup.py forgets to list still imports there and is missing only from wheels (and ``pip install .``): a
hand-written package list once left ``checkpoint``, ``functional``, ``predict`` and ``release`` out, and
``import lrsched_fused`` failed from the wheel. Here a wheel is built (without the C++ extension, from a
copy of the tree) and compared with the sources.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = "lrsched_fused"

pytest.importorskip("setuptools", reason="building a wheel needs setuptools (the test extra installs it)")


def source_modules(root: Path = ROOT) -> set[str]:
    """The wheel paths every source module must have: ``lrsched_fused/**.py`` as they are, ``kernels/*.py``
    under ``lrsched_fused/kernels/``."""
    out = {p.relative_to(root).as_posix() for p in (root / PKG).rglob("*.py") if "__pycache__" not in p.parts}
    out |= {f"{PKG}/kernels/{p.relative_to(root / 'kernels').as_posix()}" for p in (root / "kernels").rglob("*.py")
            if "__pycache__" not in p.parts}
    return out


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "venv", "build", "dist", "*.egg-info",
                                                             "__pycache__", ".pytest_cache", ".hypothesis", "*.so",
                                                             "demo_out", "out"))
    env = {**__import__("os").environ, "LRSCHED_BUILD_EXT": "0"}
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "--no-index",
                           "-q", "-w", str(work / "dist"), str(src)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (path,) = (work / "dist").glob("lrsched_fused-*.whl")
    return zipfile.ZipFile(path)


def test_source_modules_sees_every_package():
    """The oracle itself: it finds modules of the packages that were once missing, and the kernels."""
    mods = source_modules()
    for name in ("checkpoint", "functional", "predict", "release", "schedules", "optim"):
        assert f"{PKG}/{name}/__init__.py" in mods
    assert f"{PKG}/kernels/adamw.py" in mods


@pytest.mark.slow
def test_wheel_holds_every_module(wheel):
    names = set(wheel.namelist())
    missing = sorted(source_modules() - names)
    assert not missing, f"modules missing from the wheel: {missing}"


@pytest.mark.slow
def test_wheel_declares_the_cli_and_holds_no_tests(wheel):
    names = wheel.namelist()
    (entry,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert "lrsched-fused = lrsched_fused.cli:main" in wheel.read(entry).decode()
    assert not [n for n in names if n.startswith(("tests/", "bench/", "kernels/"))]


@pytest.mark.slow
def test_installed_wheel_imports_every_module(wheel, tmp_path):
    """Installed from the wheel alone (no C++ extension: the optimizers fall back to the reference backend),
    in a directory away from the sources, every module imports (a backend module may refuse with
    BackendUnavailable, as cuda does without a GPU) and FusedAdamW takes a step."""
    target = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target",
                           str(target), wheel.filename], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    script = (
        "import importlib, pkgutil, torch, lrsched_fused\n"
        "names = [m.name for m in pkgutil.walk_packages(lrsched_fused.__path__, 'lrsched_fused.')\n"
        "         if not m.name.endswith('__main__')]\n"
        "from lrsched_fused.backends._api import BackendUnavailable\n"
        "for n in names:\n"
        "    try: importlib.import_module(n)\n"
        "    except BackendUnavailable: assert n.startswith('lrsched_fused.backends.'), n  # e.g. cuda here\n"
        "p = torch.nn.Parameter(torch.ones(3)); p.grad = torch.ones(3)\n"
        "opt = lrsched_fused.FusedAdamW([p], lr=0.1); opt.step()\n"
        "assert p.detach().lt(1).all()\n"
        "print(lrsched_fused.__file__, len(names))\n")
    env = {**__import__("os").environ, "PYTHONPATH": str(target), "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    where, count = proc.stdout.split()
    assert Path(where).is_relative_to(target) and int(count) >= len(source_modules()) - 2  # less __init__, __main__


def test_top_level_kernels_steps_aside_for_an_installed_package(tmp_path):
    """From the repository root (on ``sys.path`` first), ``import kernels`` gives an installed distribution of
    that name, not this repository's ``kernels/`` directory (which is ``lrsched_fused.kernels``)."""
    fake = tmp_path / "site" / "kernels"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("MARK = 'installed'\n")
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path / "site")}
    script = ("import sys, kernels, lrsched_fused.kernels.layout as layout\n"
              "assert sys.path[0] in ('', '.'), sys.path[0]\n"
              "print(kernels.MARK, kernels.__file__, layout.__name__)\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    mark, where, layout = proc.stdout.split()
    assert mark == "installed" and Path(where).is_relative_to(tmp_path) and layout == f"{PKG}.kernels.layout"


def test_top_level_kernels_without_an_installed_package_is_this_directory(tmp_path):
    """With no such distribution (an empty PYTHONPATH, the site directories cut), nothing changes."""
    script = ("import sys; sys.path[:] = [p for p in sys.path if 'site-packages' not in p]\n"
              "import kernels; print(kernels.__file__)\n")
    proc = subprocess.run([sys.executable, "-S", "-c", script], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert Path(proc.stdout.strip()) == ROOT / "kernels" / "__init__.py"


@pytest.mark.slow
def test_transformers_trainer_imports_from_the_repository_root():
    """transformers 5 imports Hugging Face's ``kernels``: from the root it once found this repository's."""
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    proc = subprocess.run([sys.executable, "-c", "from transformers import Trainer; print('ok')"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout + proc.stderr
