"""Issue 5's acceptance figures, checked against the rows of one run (fp32, CPU).

* AdamW, 50M params in 50 tensors, 2 threads: ours <= 1.05x torch fused (median of interleaved
  repeats) and >= 90% of the in-place-add floor;
* AdamW, 10M params in 2000 tensors: ours <= 1.05x torch fused;
* LAMB, 50M params in 50 tensors: ours <= 1.6x our AdamW, and pytorch-optimizer Lamb >= 5x our time.

Issue 15's, at 20M params in 50 tensors, 2 threads (fp32 parameters):

* AdamW with int8 moments <= 0.7x torch fused fp32 AdamW;
* LAMB with int8 moments <= 1.5x our AdamW with int8 moments.

The issue fixes 2 threads only for the first target; the others are checked at every thread count the
run has (each reported on its own line).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Check", "check_targets", "format_checks"]


@dataclass(frozen=True)
class Check:
    target: str
    figure: str
    met: bool | None  # None: not measured in this run


def _find(rows: list[dict], op: str, impl: str, params: int, tensors: int, threads: int) -> dict | None:
    for r in rows:
        if (r["op"], r["implementation"], r["params"], r["tensors"], r["dtype"], r["threads"]) == (
                op, impl, params, tensors, "fp32", threads):
            return r
    return None


def _ratio_check(name: str, row: dict | None, key: str, limit: float, extra: str = "") -> Check:
    """Met when ``row[key]`` (a ratio) is at most ``limit``; "not measured" without the row or the ratio."""
    if row is None or row[key] == "":
        return Check(name, "not measured", None)
    return Check(name, f"{row[key]:.3f}x ({row['median_ms']:.2f} ms{extra})", row[key] <= limit)


def check_targets(rows: list[dict]) -> list[Check]:
    threads = sorted({r["threads"] for r in rows}, reverse=True) or [2]
    out: list[Check] = []
    ours = _find(rows, "adamw", "ours", 50_000_000, 50, 2)
    out.append(_ratio_check("AdamW fp32 50M/50, 2 threads: ours <= 1.05x torch fused", ours, "ratio_vs_torch_fused",
                            1.05))
    name = "AdamW fp32 50M/50, 2 threads: ours >= 90% of the in-place-add floor"
    if ours is None or ours["floor_frac"] == "":
        out.append(Check(name, "not measured", None))
    else:
        f = ours["floor_frac"]
        out.append(Check(name, f"{100 * f:.1f}% ({ours['GB_s']:.1f} GB/s at {ours['bytes_per_param']} B/param)",
                         f >= 0.90))
    for t in threads:
        ours = _find(rows, "adamw", "ours", 10_000_000, 2000, t)
        out.append(_ratio_check(f"AdamW fp32 10M/2000, {t} thread{'s' if t > 1 else ''}: ours <= 1.05x torch fused",
                                ours, "ratio_vs_torch_fused", 1.05))
    for t in threads:
        lamb = _find(rows, "lamb", "ours", 50_000_000, 50, t)
        suffix = f"{t} thread{'s' if t > 1 else ''}"
        out.append(_ratio_check(f"LAMB fp32 50M/50, {suffix}: ours <= 1.6x our AdamW", lamb, "ratio_vs_ours_adamw",
                                1.6))
        name = f"LAMB fp32 50M/50, {suffix}: >= 5x faster than pytorch-optimizer Lamb"
        pyopt = _find(rows, "lamb", "pyopt", 50_000_000, 50, t)
        if lamb is None or pyopt is None:
            out.append(Check(name, "not measured", None))
        else:
            s = pyopt["median_ms"] / lamb["median_ms"]
            out.append(Check(name, f"{s:.2f}x ({pyopt['median_ms']:.1f} vs {lamb['median_ms']:.2f} ms)", s >= 5.0))
    out += _int8_checks(rows)
    return out


def _int8_checks(rows: list[dict]) -> list[Check]:
    adamw = _find(rows, "adamw", "ours-int8", 20_000_000, 50, 2)
    lamb = _find(rows, "lamb", "ours-int8", 20_000_000, 50, 2)
    floor = ""
    if adamw is not None and adamw["floor_frac"] != "":
        floor = f", {100 * adamw['floor_frac']:.0f}% of the floor at {adamw['bytes_per_param']:.2f} B/param"
    return [_ratio_check("AdamW int8 moments 20M/50, 2 threads: <= 0.7x torch fused fp32", adamw,
                         "ratio_vs_torch_fused", 0.7, floor),
            _ratio_check("LAMB int8 moments 20M/50, 2 threads: <= 1.5x our AdamW int8", lamb,
                         "ratio_vs_ours_int8_adamw", 1.5)]


def format_checks(checks: list[Check], markdown: bool = False) -> str:
    word = {True: "met", False: "NOT met", None: "not measured"}
    if markdown:
        lines = ["| target | figure | status |", "|---|---|---|"]
        lines += [f"| {c.target} | {c.figure} | {word[c.met]} |" for c in checks]
    else:
        lines = [f"  [{word[c.met]:>12}]  {c.target}: {c.figure}" for c in checks]
    return "\n".join(lines) + "\n"
