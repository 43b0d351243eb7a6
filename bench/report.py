"""Results of a case as rows (one per implementation), appended to a CSV file and shown as tables.

Row columns (``COLUMNS``; ``bench/README.md`` explains each): the case (op, params, tensors, layout,
dtype, threads), the timing (median and p20/p80 in ms over ``repeats`` interleaved steps), the bytes
counted per parameter and the bandwidth they imply, the fraction of the measured in-place-add floor, the
ratio of this row's median to each peer's median in the same case, and where/what ran (versions, ISA,
machine, a run id and a timestamp). Tables use rich when installed, plain text otherwise.
"""

from __future__ import annotations

import csv
import math
import os
import platform
import subprocess
from pathlib import Path
from typing import Iterable

from .impls import PEERS_FOR_RATIOS, Impl, Runner
from .timing import Stats
from .workloads import Case, human

__all__ = ["COLUMNS", "case_rows", "legend", "append_csv", "print_rows", "print_case_table", "markdown_case_table",
           "machine_info"]

COLUMNS: tuple[str, ...] = (
    "run_id", "timestamp", "op", "implementation", "label", "params", "tensors", "layout", "dtype", "state_dtype",
    "threads", "device", "median_ms", "p20_ms", "p80_ms", "repeats", "bytes_per_param", "GB_s", "floor_frac",
    *(f"ratio_vs_{col}" for col, _ in PEERS_FOR_RATIOS),
    "version", "torch_version", "isa", "machine",
)

_DTYPE_NAMES = {"torch.float32": "fp32", "torch.bfloat16": "bf16", "torch.float16": "fp16", "torch.float64": "fp64"}


def case_rows(case: Case, impls: list[Impl], runners: dict[str, Runner], stats: dict[str, Stats],
              meta: dict[str, str]) -> list[dict]:
    """One row per implementation of ``case``; ratios and floor fractions from the same interleaved case."""
    gbs = {i.key: runners[i.key].bytes_per_param * case.params / (stats[i.key].median_ms * 1e-3) / 1e9
           for i in impls}
    floors = {i.op: gbs[i.key] for i in impls if i.name == "floor"}
    rows = []
    for impl in impls:
        st, run = stats[impl.key], runners[impl.key]
        floor = floors.get(impl.op, next(iter(floors.values()), None))
        row = {
            "run_id": meta["run_id"], "timestamp": meta["timestamp"], "op": impl.op, "implementation": impl.name,
            "label": impl.label, "params": case.params, "tensors": case.tensors, "layout": case.layout,
            "dtype": case.dtype, "state_dtype": _DTYPE_NAMES.get(str(run.state_dtype), str(run.state_dtype)),
            "threads": case.threads, "device": "cpu", "median_ms": round(st.median_ms, 4),
            "p20_ms": round(st.p20_ms, 4), "p80_ms": round(st.p80_ms, 4), "repeats": st.repeats,
            "bytes_per_param": run.bytes_per_param, "GB_s": round(gbs[impl.key], 3),
            "floor_frac": "" if floor is None else round(gbs[impl.key] / floor, 4),
            "version": meta["version"], "torch_version": meta["torch_version"], "isa": meta["isa"],
            "machine": meta["machine"],
        }
        for col, key in PEERS_FOR_RATIOS:
            row[f"ratio_vs_{col}"] = round(st.median_ms / stats[key].median_ms, 4) if key in stats else ""
        rows.append(row)
    return rows


def print_rows(text: str, rows: list[dict], csv_path: str | None, columns: Iterable[str]) -> None:
    """Print ``text`` (a benchmark's table); with ``csv_path``, also append ``rows`` there and say so."""
    print(text)
    if csv_path:
        append_csv(Path(csv_path), rows, columns)
        print(f"{len(rows)} rows appended to {csv_path}")


def append_csv(path: Path, rows: Iterable[dict], columns: Iterable[str] = COLUMNS) -> None:
    """Append ``rows`` to ``path`` (header written when the file is new or empty)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns))
        if new:
            writer.writeheader()
        writer.writerows(rows)


# ---------------------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------------------
_HEADERS = ("op", "implementation", "median ms", "p20-p80 ms", "B/param", "GB/s", "% floor", "x ours")


def _cells(rows: list[dict]) -> list[tuple[str, ...]]:
    ours = {r["op"]: r["median_ms"] for r in rows if r["implementation"] == "ours"}
    out = []
    for r in rows:
        base = ours.get(r["op"])
        rel = f"{r['median_ms'] / base:.2f}x" if base else ""
        frac = f"{100 * r['floor_frac']:.0f}%" if r["floor_frac"] != "" else ""
        out.append((r["op"], r["implementation"], _ms(r["median_ms"]), f"{_ms(r['p20_ms'])}-{_ms(r['p80_ms'])}",
                    str(r["bytes_per_param"]), f"{r['GB_s']:.1f}", frac, rel))
    return out


def legend(impls: list[Impl], markdown: bool = False) -> str:
    """What each implementation name in the tables means."""
    seen: dict[str, list[str]] = {}
    for impl in impls:
        seen.setdefault(impl.name, []).append(impl.label)
    items = [f"{name}: {' / '.join(dict.fromkeys(labels))}" for name, labels in seen.items()]
    if markdown:
        return "\n".join(f"- `{x.split(':', 1)[0]}`:{x.split(':', 1)[1]}" for x in items) + "\n"
    return "implementations: " + "; ".join(items)


def _ms(x: float) -> str:
    return f"{x:.3g}" if x < 10 else f"{x:.1f}"


def _extra_lines(rows: list[dict]) -> list[str]:
    """The ratios that issue 5 asks about, when the case has them."""
    by = {(r["op"], r["implementation"]): r for r in rows}
    lines = []
    ours_a, ours_l = by.get(("adamw", "ours")), by.get(("lamb", "ours"))
    if ours_a and ours_a["ratio_vs_torch_fused"] != "":
        lines.append(f"ours AdamW / torch fused = {ours_a['ratio_vs_torch_fused']:.3f}")
    kern = by.get(("adamw", "ours-kernel"))
    if ours_a and kern:
        lines.append(f"AdamW host cost per step ~ {ours_a['median_ms'] - kern['median_ms']:.3f} ms "
                     f"(step {ours_a['median_ms']:.3f} - kernel {kern['median_ms']:.3f})")
    if ours_l and ours_l["ratio_vs_ours_adamw"] != "":
        lines.append(f"ours LAMB / ours AdamW = {ours_l['ratio_vs_ours_adamw']:.3f}")
    pyopt = by.get(("lamb", "pyopt"))
    if ours_l and pyopt:
        lines.append(f"pytorch-optimizer Lamb / ours LAMB = {pyopt['median_ms'] / ours_l['median_ms']:.2f}")
    return lines


def print_case_table(case: Case, rows: list[dict], console=None) -> None:
    """Print the case's table (rich when available)."""
    cells = _cells(rows)
    extra = _extra_lines(rows)
    if console is not None:
        from rich.table import Table

        table = Table(title=case.title(), title_justify="left", header_style="bold")
        for i, h in enumerate(_HEADERS):
            table.add_column(h, justify="left" if i < 2 else "right")
        for c, r in zip(cells, rows):
            table.add_row(*c, style="bold" if r["implementation"] == "ours" else None)
        console.print(table)
        for line in extra:
            console.print(f"  {line}")
        return
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(_HEADERS)]
    print(case.title())
    print("  ".join(h.ljust(w) for h, w in zip(_HEADERS, widths)))
    for c in cells:
        print("  ".join(x.ljust(w) if i < 2 else x.rjust(w) for i, (x, w) in enumerate(zip(c, widths))))
    for line in extra:
        print(f"  {line}")


def markdown_case_table(case: Case, rows: list[dict]) -> str:
    """The case's table as GitHub Markdown (a heading line, the table, the issue-5 ratios)."""
    lines = [f"#### {case.title()}", "", "| " + " | ".join(_HEADERS) + " |",
             "|" + "|".join("---" if i < 2 else "---:" for i in range(len(_HEADERS))) + "|"]
    for c, r in zip(_cells(rows), rows):
        cell = list(c)
        if r["implementation"] == "ours":
            cell[1] = f"**{cell[1]}**"
        lines.append("| " + " | ".join(cell) + " |")
    extra = _extra_lines(rows)
    if extra:
        lines += [""] + [f"- {x}" for x in extra]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------
# machine
# ---------------------------------------------------------------------------------------------------
def machine_info() -> dict[str, str]:
    """CPU model, cores, ISA flags, memory and load average, for the run header and the CSV."""
    model = platform.processor() or platform.machine()
    flags = ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        model = fields.get("Model name", model).strip()
        flags = fields.get("Flags", "")
    except (OSError, subprocess.SubprocessError):
        pass
    isa = [f for f in ("avx512f", "avx512_bf16", "avx2", "fma") if f in flags.split()]
    mem = ""
    try:
        meminfo = Path("/proc/meminfo").read_text()
        total_kb = int(next(line.split()[1] for line in meminfo.splitlines() if line.startswith("MemTotal")))
        mem = f"{total_kb / 2**20:.0f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    cores = os.cpu_count() or 0
    load = " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else ""
    summary = f"{model}, {cores} cores, {'/'.join(isa) or 'no AVX'}, {mem}".strip(", ")
    return {"model": model, "cores": str(cores), "isa_flags": " ".join(isa), "memory": mem, "load": load,
            "summary": summary}


def mem_available_bytes() -> float:
    """``MemAvailable`` from /proc/meminfo (infinity when unknown)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable"):
                return int(line.split()[1]) * 1024.0
    except (OSError, ValueError):
        pass
    return math.inf


def fmt_params(n: int) -> str:
    return human(n)
