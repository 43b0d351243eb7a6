"""Interleaved wall-clock timing of several step functions, and the statistics reported.

Each *round* calls every function once, in a fresh random order (seeded, so a run is repeatable), so
that slow drift (other processes, frequency changes) hits every implementation alike and no
implementation always runs right after the same other one (whose data would be what is left in cache).
Warm-up rounds (not recorded) come first: they allocate optimizer state and touch every page, so no
recorded step pays first-touch page faults. The garbage collector is paused while timing. Times are
``time.perf_counter`` around the whole call (what a user pays per step).

Time budget: some peers are 10-100x slower than the fastest implementations (torch's bf16 for-loop
AdamW at 50M params takes seconds per step). With ``budget_s``, the first warm-up round's times plan the
case: every function gets an equal share of the budget, and one whose share does not cover ``repeats``
calls takes part only in every ``k``-th round (``k`` chosen so it still gets at least ``min_samples``
calls, spread evenly over the case) and skips the later warm-up rounds. Fast functions keep every round.
"""

from __future__ import annotations

import gc
import math
import random
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

__all__ = ["Stats", "interleaved", "summarize", "strides"]


@dataclass(frozen=True)
class Stats:
    """Median and 20th/80th percentiles (linear interpolation) of per-step times, in milliseconds."""

    median_ms: float
    p20_ms: float
    p80_ms: float
    repeats: int


def summarize(times_ms: list[float]) -> Stats:
    if not times_ms:
        raise ValueError("no timings to summarize")
    p20, p50, p80 = np.percentile(np.asarray(times_ms, dtype=np.float64), [20, 50, 80])
    return Stats(median_ms=float(p50), p20_ms=float(p20), p80_ms=float(p80), repeats=len(times_ms))


def strides(first_s: dict[str, float], repeats: int, budget_s: float | None, min_samples: int) -> dict[str, int]:
    """Round stride per function: 1 (every round) unless ``repeats`` calls exceed its budget share."""
    if budget_s is None or not first_s:
        return {name: 1 for name in first_s}
    share = budget_s / len(first_s)
    out = {}
    for name, t in first_s.items():
        samples = repeats if t <= 0 else max(min(min_samples, repeats), min(repeats, int(share / t)))
        out[name] = max(1, math.ceil(repeats / samples))
        while out[name] > 1 and len(range(0, repeats, out[name])) < min(min_samples, repeats):
            out[name] -= 1
    return out


def interleaved(steps: dict[str, Callable[[], object]], repeats: int, warmup: int,
                on_round: Callable[[], None] | None = None, seed: int = 0, budget_s: float | None = None,
                min_samples: int = 5) -> dict[str, list[float]]:
    """Time ``repeats`` rounds (after ``warmup`` rounds) of the functions in ``steps``; ms per call.

    ``on_round`` is called after every round (warm-up included). See the module docstring for
    ``budget_s`` / ``min_samples``.
    """
    if repeats < 1 or warmup < 0 or min_samples < 1:
        raise ValueError(f"need repeats >= 1, warmup >= 0, min_samples >= 1; got {repeats}, {warmup}, {min_samples}")
    names = list(steps)
    order = random.Random(seed)
    clock = time.perf_counter
    times: dict[str, list[float]] = {name: [] for name in names}
    first: dict[str, float] = {}

    def call(name: str) -> float:
        t0 = clock()
        steps[name]()
        return clock() - t0

    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        if warmup:
            for name in order.sample(names, len(names)):
                first[name] = call(name)
            if on_round is not None:
                on_round()
        stride = strides(first, repeats, budget_s, min_samples) if first else {n: 1 for n in names}
        for _ in range(warmup - 1):
            for name in order.sample(names, len(names)):
                if stride[name] == 1:
                    call(name)
            if on_round is not None:
                on_round()
        for r in range(repeats):
            for name in order.sample(names, len(names)):
                if r % stride[name] == 0:
                    times[name].append(call(name) * 1e3)
            if on_round is not None:
                on_round()
    finally:
        if gc_was_enabled:
            gc.enable()
    return times
