"""Parse a schedule written as a Python call, e.g. ``"wsd(peak_lr=3e-4, total_steps=1000, decay_fraction=0.2)"``.

Only calls to the constructors in :mod:`lrsched_fused.schedules` with literal arguments (numbers,
strings, lists, nested constructor calls) are accepted; nothing is ``eval``-ed.
"""

from __future__ import annotations

import ast
from typing import Any, Callable, Mapping

from ._spec import Schedule

__all__ = ["parse_schedule"]


def parse_schedule(text: str, constructors: Mapping[str, Callable[..., Schedule]]) -> Schedule:
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"schedule must be a call such as \"wsd(peak_lr=3e-4, total_steps=1000, "
                         f"decay_fraction=0.2)\"; could not parse {text!r}: {exc.msg}") from None
    value = _build(tree.body, constructors)
    if not isinstance(value, Schedule):
        raise ValueError(f"schedule text must be a constructor call; got {text!r}")
    return value


def _build(node: ast.AST, constructors: Mapping[str, Callable[..., Schedule]]) -> Any:
    if isinstance(node, ast.Call):
        name = node.func.id if isinstance(node.func, ast.Name) else (
            node.func.attr if isinstance(node.func, ast.Attribute) else None)
        if name not in constructors:
            raise ValueError(f"unknown schedule constructor {name!r}; use one of {', '.join(sorted(constructors))}")
        args = [_build(a, constructors) for a in node.args]
        kwargs = {kw.arg: _build(kw.value, constructors) for kw in node.keywords if kw.arg}
        try:
            return constructors[name](*args, **kwargs)
        except TypeError as exc:  # wrong keyword or argument count: a user error in the text
            raise ValueError(f"{name}(...): {exc}") from None
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_build(e, constructors) for e in node.elts]
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise ValueError(f"schedule arguments must be literals; got {ast.unparse(node)!r}") from None
