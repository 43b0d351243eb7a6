"""The import rules of the house (docs/architecture.md), enforced on the source: every ``import`` statement of
every module of ``lrsched_fused/`` and ``kernels/`` (installed as ``lrsched_fused.kernels``), function-local
ones included, read with ``ast`` (nothing is imported to check).

* no import circles between the package's modules;
* kernels import nothing of the package outside ``lrsched_fused.kernels`` (no optim, no face);
* the float64 reference never reaches the kernels (``kernels.layout``, the binary interface, aside), the
  backends or the compiled extensions, not even through another module;
* schedules never reach optim, functional, checkpoint or backends;
* each layer imports only layers below it: face/cli/demo > optim > checkpoint > functional > backends >
  kernels, reference > schedules > kernels.layout.

The checker is tested on a small synthetic tree first, so that a rule that can no longer fail is noticed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = "lrsched_fused"


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Module name -> source file, for the package and its kernels (``kernels/`` is ``lrsched_fused.kernels``)."""
    out: dict[str, Path] = {}
    for base, prefix in ((root / PKG, PKG), (root / "kernels", f"{PKG}.kernels")):
        for path in sorted(base.rglob("*.py")):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([prefix, *parts])] = path
    return out


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules ``name`` imports (anywhere in its body), resolved: ``from a import b`` is ``a.b``
    when that is a module (or a compiled extension: ``_cpu``, ``_cuda``), else ``a``."""
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = []
            for a in node.names:
                sub = f"{mod}.{a.name}"
                targets.append(sub if sub in known or a.name in ("_cpu", "_cuda") else mod)
        else:
            continue
        out.update(t for t in targets if t == PKG or t.startswith(PKG + "."))
    out.discard(name)
    return out


def graph(root: Path = ROOT) -> dict[str, set[str]]:
    files = module_files(root)
    known = set(files)
    return {name: imports_of(name, path, known) for name, path in files.items()}


def closure(g: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in g.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in g:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def _in(mod: str, *prefixes: str) -> bool:
    return any(mod == p or mod.startswith(p + ".") for p in prefixes)


#: layers, top to bottom; a module may import its own layer's modules and any layer below
LAYERS = [
    ("face", [PKG, f"{PKG}.__main__", f"{PKG}.cli", f"{PKG}.demo", f"{PKG}.plot"]),
    ("release", [f"{PKG}.release"]),
    ("optim", [f"{PKG}.optim"]),
    ("checkpoint", [f"{PKG}.checkpoint"]),
    ("functional", [f"{PKG}.functional"]),
    ("backends", [f"{PKG}.backends", f"{PKG}._cpu", f"{PKG}._cuda"]),
    ("kernels", [f"{PKG}.kernels"]),
    ("reference", [f"{PKG}.reference"]),
    ("predict", [f"{PKG}.predict"]),
    ("validate", [f"{PKG}._validate"]),
    ("schedules", [f"{PKG}.schedules"]),
    ("layout", [f"{PKG}.kernels.layout", f"{PKG}._version"]),
]


def layer_of(mod: str) -> int:
    best, best_len = None, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (mod == p or mod.startswith(p + ".")) and len(p) > best_len and not (p == PKG and mod != PKG):
                best, best_len = i, len(p)
    if best is None:
        raise AssertionError(f"module {mod} belongs to no layer of tests/test_imports.py: add it")
    return best


def violations(g: dict[str, set[str]]) -> list[str]:
    out = [f"import circle: {' -> '.join(c)}" for c in cycles(g)]
    for mod, targets in sorted(g.items()):
        if _in(mod, f"{PKG}.kernels"):
            bad = sorted(t for t in targets if not _in(t, f"{PKG}.kernels"))
            out += [f"{mod} (a kernel module) imports {t}" for t in bad]
        for t in sorted(targets):
            if layer_of(t) < layer_of(mod):
                out.append(f"{mod} ({LAYERS[layer_of(mod)][0]}) imports {t} ({LAYERS[layer_of(t)][0]}), a layer above")
    for mod in g:
        reach = closure(g, mod)
        if _in(mod, f"{PKG}.reference"):
            bad = sorted(t for t in reach if (_in(t, f"{PKG}.kernels") and t != f"{PKG}.kernels.layout")
                         or _in(t, f"{PKG}.backends", f"{PKG}._cpu", f"{PKG}._cuda"))
            out += [f"{mod} (the reference) reaches {t}" for t in bad]
        if _in(mod, f"{PKG}.schedules"):
            bad = sorted(t for t in reach if _in(t, f"{PKG}.optim", f"{PKG}.backends", f"{PKG}.functional",
                                                  f"{PKG}.checkpoint"))
            out += [f"{mod} (schedules) reaches {t}" for t in bad]
    return out


# ---------------------------------------------------------------------------------------------------------
def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_checker_catches_each_kind_of_violation(tmp_path):
    _write(tmp_path, {
        f"{PKG}/__init__.py": "",
        f"{PKG}/optim/__init__.py": "from .base import X\n",
        f"{PKG}/optim/base.py": "def f():\n    from lrsched_fused.optim import other\n",  # function-local
        f"{PKG}/optim/other.py": "from . import base\n",                                  # circle with base
        f"{PKG}/schedules/__init__.py": "def g():\n    import lrsched_fused.backends\n",   # schedules -> backends
        f"{PKG}/backends/__init__.py": "from lrsched_fused.functional import F\n",         # layer above
        f"{PKG}/functional/__init__.py": "",
        f"{PKG}/reference/__init__.py": "from lrsched_fused import schedules\n",
        f"{PKG}/reference/x.py": "from lrsched_fused.schedules import helper\n",
        f"{PKG}/schedules/helper.py": "from lrsched_fused.kernels import adamw\n",       # reference reaches kernels
        "kernels/__init__.py": "",
        "kernels/adamw.py": "from lrsched_fused.optim import base\n",                     # kernel -> optim
        "kernels/layout.py": "",
    })
    found = "\n".join(violations(graph(tmp_path)))
    assert "import circle: lrsched_fused.optim.base -> lrsched_fused.optim.other" in found
    assert "lrsched_fused.kernels.adamw (a kernel module) imports lrsched_fused.optim.base" in found
    assert "lrsched_fused.schedules (schedules) reaches lrsched_fused.backends" in found
    assert "lrsched_fused.backends (backends) imports lrsched_fused.functional (functional), a layer above" in found
    assert "lrsched_fused.reference.x (the reference) reaches lrsched_fused.kernels.adamw" in found


def test_the_checker_resolves_relative_and_extension_imports(tmp_path):
    _write(tmp_path, {
        f"{PKG}/__init__.py": "",
        f"{PKG}/backends/__init__.py": "",
        f"{PKG}/backends/cpu.py": "from lrsched_fused import _cpu as ext\nfrom ..kernels import layout\n",
        "kernels/__init__.py": "", "kernels/layout.py": "",
    })
    g = graph(tmp_path)
    assert g[f"{PKG}.backends.cpu"] == {f"{PKG}._cpu", f"{PKG}.kernels.layout"}


def test_the_package_follows_the_import_rules():
    g = graph()
    assert len(g) > 40 and f"{PKG}.optim.base" in g and f"{PKG}.kernels.adamw" in g
    problems = violations(g)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("module", [f"{PKG}.schedules", f"{PKG}.reference"])
def test_pure_layers_reach_only_what_they_may(module):
    reach = closure(graph(), module)
    assert reach <= {f"{PKG}.kernels.layout"} | {m for m in graph() if _in(m, f"{PKG}.schedules", f"{PKG}.reference")}
