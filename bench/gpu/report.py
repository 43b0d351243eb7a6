"""The GPU check's report: every row as Markdown, the short table printed last, and the files.

Pure Python (no torch): it reads a :class:`~bench.gpu.record.Record`'s ``info``, ``checks`` and ``rows``.

Derived columns (:func:`finish_rows`): ``floor_frac``, a row's GB/s over the device copy's GB/s (1.0 =
as fast as a copy moving the same bytes), and ``ratio_vs_torch_fused``, a row's median over the median
of ``torch.optim.AdamW(fused=True)`` in the same op (< 1: faster than torch; the same convention as
``bench.run``'s CSV). The CSV (:data:`CSV_COLUMNS`) is appended to, a header written when it is new.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

__all__ = ["CSV_COLUMNS", "finish_rows", "format_table", "summary", "markdown", "append_csv", "write_outputs"]

CSV_COLUMNS = (
    "run_id", "timestamp", "op", "implementation", "backend", "what", "params", "tensors", "dtype", "device",
    "median_ms", "p20_ms", "p80_ms", "repeats", "bytes_per_param", "GB_s", "floor_frac", "ratio_vs_torch_fused",
    "note", "version", "torch_version", "triton_version",
)
PEER_PREFIX = "torch.optim.AdamW(fused="  # fused=True on a GPU; fused=False (the same call) in the dry run
NOT_OURS = ("torch", "copy")


def _peer(rows: list[dict], op: str) -> dict | None:
    return next((r for r in rows if r["op"] == op and r["backend"] == "torch"
                 and r["implementation"].startswith(PEER_PREFIX)), None)


def finish_rows(rows: list[dict], info: dict) -> list[dict]:
    """Copies of ``rows`` with ``floor_frac`` and ``ratio_vs_torch_fused`` ("" where not defined)."""
    copy = info.get("copy_gbps") or 0.0
    out = []
    for r in rows:
        peer = _peer(rows, r["op"])
        defined = peer is not None and r is not peer and peer["median_ms"] > 0
        ratio = round(r["median_ms"] / peer["median_ms"], 4) if defined else ""
        out.append(dict(r, floor_frac=round(r["GB_s"] / copy, 4) if copy else "", ratio_vs_torch_fused=ratio))
    return out


def format_table(headers: list[str], body: list[list[str]], indent: str = "") -> str:
    """A plain-text table: the first column left-aligned, the others right-aligned."""
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *body)]
    lines = []
    for row in [headers, *body]:
        cells = [str(x).ljust(w) if i == 0 else str(x).rjust(w) for i, (x, w) in enumerate(zip(row, widths))]
        lines.append(indent + "  ".join(cells).rstrip())
    return "\n".join(lines)


def _title(info: dict) -> str:
    return (f"gpu_check {info.get('date', '')} on {info.get('gpu', '?')} (torch {info.get('torch')}, triton "
            f"{info.get('triton')}, lrsched_fused {info.get('lrsched_fused')})")


def _verdicts(checks: list[dict]) -> list[str]:
    sections: dict[str, list[int]] = {}
    for c in checks:
        counts = sections.setdefault(c["section"], [0, 0, 0])
        counts[0 if c["ok"] is True else 1 if c["ok"] is False else 2] += 1
    body = [[name, str(p), str(f), str(s), "PASS" if not f and p else "FAIL" if f else "-"]
            for name, (p, f, s) in sections.items()]
    lines = [format_table(["verdicts", "pass", "fail", "skip", ""], body)] if body else ["verdicts: no checks ran"]
    lines += [f"  FAIL [{c['section']}] {c['name']}: {c['detail']}" for c in checks if c["ok"] is False]
    return lines


def _ms(x) -> str:
    return "" if x in (None, "") else f"{x:.3f}" if x < 100 else f"{x:.1f}"


def summary(info: dict, checks: list[dict], rows: list[dict]) -> str:
    """The short table printed last: verdicts per section (and each failure), then per op the ms per
    step of each backend of ours vs torch fused AdamW, and the fraction of the bandwidth floor."""
    n_pass = sum(c["ok"] is True for c in checks)
    n_fail = sum(c["ok"] is False for c in checks)
    n_skip = sum(c["ok"] is None for c in checks)
    lines = [f"{_title(info)}: {n_pass} checks passed, {n_fail} failed, {n_skip} skipped", ""] + _verdicts(checks)
    rows = finish_rows(rows, info)
    steps = [r for r in rows if r.get("what", "step") == "step"]
    ours = list(dict.fromkeys(r["backend"] for r in steps if r["backend"] not in NOT_OURS))
    ops = list(dict.fromkeys(r["op"] for r in steps if r["backend"] not in ("copy",)))
    if ops:
        headers = ["ms per step"] + [f"{b}" for b in ours] + ["torch fused"] + [f"{b}/torch" for b in ours] + [
            f"{b} % floor" for b in ours]
        body = []
        for op in ops:
            mine = {r["backend"]: r for r in steps if r["op"] == op and r["backend"] in ours}
            peer = _peer(rows, op)
            body.append([op] + [_ms(mine[b]["median_ms"]) if b in mine else "-" for b in ours]
                        + [_ms(peer["median_ms"]) if peer else "-"]
                        + [f"{mine[b]['ratio_vs_torch_fused']:.2f}x" if b in mine and mine[b]["ratio_vs_torch_fused"]
                           != "" else "-" for b in ours]
                        + [f"{100 * mine[b]['floor_frac']:.0f}%" if b in mine and mine[b]["floor_frac"] != "" else "-"
                           for b in ours])
        lines += ["", format_table(headers, body)]
        lines.append(f"(model: {info.get('model', '?')}; ours/torch < 1: ours faster; % floor: GB/s over a "
                     f"device copy's {info.get('copy_gbps', '?')} GB/s, bytes counted per row)")
    return "\n".join(lines) + "\n"


def markdown(info: dict, checks: list[dict], rows: list[dict]) -> str:
    """Every check that failed and every row, as Markdown."""
    n_ok = sum(c["ok"] is True for c in checks)
    n_run = sum(c["ok"] is not None for c in checks)
    out = [f"## {_title(info)}", "", f"Checks: {n_ok}/{n_run} passed ({len(checks) - n_run} skipped)", ""]
    out += [f"- FAIL [{c['section']}] {c['name']}: {c['detail']}" for c in checks if c["ok"] is False]
    out += ["", "| op | implementation | what | params | tensors | dtype | median ms | p20 | p80 | B/param | GB/s | "
            "% of copy | ours / torch fused |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in finish_rows(rows, info):
        frac = f"{100 * r['floor_frac']:.0f}%" if r["floor_frac"] != "" else ""
        ratio = f"{r['ratio_vs_torch_fused']:.2f}x" if r["ratio_vs_torch_fused"] != "" else ""
        out.append(f"| {r['op']} | {r['implementation']} | {r.get('what', 'step')} | {r['params'] / 1e6:.1f}M | "
                   f"{r['tensors']} | {r['dtype']} | {r['median_ms']:.3f} | {r['p20_ms']:.3f} | {r['p80_ms']:.3f} | "
                   f"{r['bytes_per_param']:g} | {r['GB_s']:.0f} | {frac} | {ratio} |")
    out += ["", "(ours / torch fused: < 1 means ours is faster; GB/s counts every read and write)", ""]
    return "\n".join(out)


def csv_rows(info: dict, rows: list[dict]) -> list[dict]:
    """``rows`` with the run's columns, in :data:`CSV_COLUMNS`."""
    run_id = info.get("run_id") or datetime.datetime.now().strftime("%Y%m%dT%H%M%S")
    meta = dict(run_id=run_id, timestamp=info.get("date", ""), device=info.get("gpu", ""),
                version=info.get("lrsched_fused", ""), torch_version=info.get("torch", ""),
                triton_version=info.get("triton", ""))
    out = []
    for r in finish_rows(rows, info):
        r = dict(r, **meta, GB_s=round(r["GB_s"], 3), **{k: round(r[k], 4) for k in ("median_ms", "p20_ms", "p80_ms")})
        out.append({k: r.get(k, "") for k in CSV_COLUMNS})
    return out


def append_csv(path: Path, rows: list[dict]) -> None:
    """Append ``rows`` (from :func:`csv_rows`) to ``path``; the header only when the file is new or empty."""
    from ..report import append_csv as append_rows

    append_rows(Path(path), rows, columns=CSV_COLUMNS)


def write_outputs(out_dir: Path, info: dict, checks: list[dict], rows: list[dict], text: str) -> list[Path]:
    """``gpu_check.md`` (``text``), ``gpu_check.json`` (everything) and ``gpu_check.csv`` (appended) in
    ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "gpu_check.md").write_text(text)
    everything = {"info": info, "checks": checks, "rows": finish_rows(rows, info)}
    (out_dir / "gpu_check.json").write_text(json.dumps(everything, indent=1, default=str))
    paths = [out_dir / "gpu_check.md", out_dir / "gpu_check.json"]
    if rows:
        append_csv(out_dir / "gpu_check.csv", csv_rows(info, rows))
        paths.append(out_dir / "gpu_check.csv")
    return paths
