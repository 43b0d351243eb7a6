"""What one run of the GPU check records, and the progress lines it prints while it runs.

A *check* is a verdict: ``ok`` True (pass), False (fail) or None (skipped, with the reason: e.g. a
dtype a backend has no kernels for in the CPU dry run). A *row* is one timing: an implementation of one
op at one size, with the bytes per parameter its step moves. Every section runs inside
:meth:`Record.section`: an exception there becomes a failed check and the next section still runs.
"""

from __future__ import annotations

import contextlib
import time
import traceback
from dataclasses import dataclass, field

__all__ = ["Record"]


@dataclass
class Record:
    t0: float = field(default_factory=time.time)
    info: dict = field(default_factory=dict)     # environment: versions, GPU, copy bandwidth
    checks: list[dict] = field(default_factory=list)   # section, name, ok (True / False / None), detail
    rows: list[dict] = field(default_factory=list)     # timing rows (see add_row)
    echo: bool = True

    def log(self, msg: str) -> None:
        if self.echo:
            print(f"[{time.time() - self.t0:6.1f}s] {msg}", flush=True)

    def check(self, section: str, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append({"section": section, "name": name, "ok": bool(ok), "detail": detail})
        self.log(f"  {'PASS' if ok else 'FAIL'}  {name}  {detail}")
        return bool(ok)

    def skip(self, section: str, name: str, why: str) -> None:
        self.checks.append({"section": section, "name": name, "ok": None, "detail": why})
        self.log(f"  skip  {name}  ({why})")

    @contextlib.contextmanager
    def section(self, name: str):
        self.log(f"== {name}")
        start = time.time()
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - a section's failure is reported, the next section runs
            if self.echo:
                print(traceback.format_exc(), flush=True)
            self.check(name, f"{name}: section crashed", False, f"{type(exc).__name__}: {str(exc)[:300]}")
        finally:
            self.log(f"   ({name}: {time.time() - start:.1f}s)")

    def add_row(self, op: str, impl: str, backend: str, params: int, tensors: int, dtype: str,
                times_ms: list[float], bytes_per_param: float, note: str = "", what: str = "step") -> dict:
        """One timing row: median / p20 / p80 of ``times_ms`` (ms per step), and GB/s at
        ``bytes_per_param x params`` bytes per step. ``backend``: ``triton`` / ``cuda`` (ours), ``torch``
        (peers) or ``copy`` (the floor). ``what``: ``step`` (a whole ``opt.step()``), ``kernel`` (the
        backend calls alone), ``graph`` (a CUDA-graph replay of a step) or ``floor``."""
        from ..timing import summarize

        st = summarize(times_ms)
        moved = bytes_per_param * params
        row = dict(op=op, implementation=impl, backend=backend, what=what, params=params, tensors=tensors, dtype=dtype,
                   median_ms=st.median_ms, p20_ms=st.p20_ms, p80_ms=st.p80_ms, repeats=st.repeats,
                   bytes_per_param=bytes_per_param, GB_s=moved / st.median_ms / 1e6 if st.median_ms > 0 else 0.0,
                   note=note)
        self.rows.append(row)
        self.log(f"  {op:<22} {impl:<40} {st.median_ms:9.3f} ms  {row['GB_s']:8.1f} GB/s {note}")
        return row

    def failed(self) -> list[dict]:
        return [c for c in self.checks if c["ok"] is False]

    def passed(self) -> list[dict]:
        return [c for c in self.checks if c["ok"] is True]

    def all_passed(self) -> bool:
        """At least one check passed and none failed (skipped checks count neither way)."""
        return bool(self.passed()) and not self.failed()
