"""Correctness on the device: each compiled backend against the reference, the optimizer against torch,
CUDA-graph capture across schedule phase edges, and the Triton tests under pytest.

For each backend (``triton``, ``cuda``; in the CPU dry run ``cpu`` stands in for ``cuda``), 20 steps of
a two-group bucket (schedules crossing phase edges; odd, empty and multi-chunk tensors) against the
``reference`` backend in the same dtypes (:data:`bucket.CONFIGS`: fp32 with amsgrad, bf16 with and
without fp32 master weights, fp16 with grad scaling, fp64, bf16 states; LAMB with clipping), LAMB's
sharded path (two halves around an all-reduce), fp32 against float64 copies, ``found_inf`` (a bitwise
no-op), determinism (two runs bit-identical), ``grad_sumsq`` and the schedule evaluator at clocks near
2**40. Configurations a backend has no kernels for are skipped (reported), an unavailable backend is a
failure on a GPU (``gpu_check.sh`` builds the CUDA extension) and a skip in the dry run.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from .bucket import CONFIGS, Bucket, bitwise_equal, rel_err, tolerance
from .record import Record

__all__ = ["backend_or_reason", "sec_backend", "sec_vs_torch", "sec_cuda_graph", "sec_pytest"]

N_STEPS = 20


def backend_or_reason(name: str, device: torch.device, dtype=torch.float32, state_dtype=None):
    """``(backend, None)`` when ``name`` runs ``dtype`` params (``state_dtype`` moments) on ``device``,
    else ``(None, why)``."""
    from lrsched_fused.backends import BackendUnavailable, get_backend

    try:
        backend = get_backend(name)
        backend.check(device, dtype, state_dtype or dtype)
        return backend, None
    except BackendUnavailable as exc:
        return None, str(exc)


def _require(rec: Record, sec: str, name: str, device: torch.device):
    backend, why = backend_or_reason(name, device)
    if backend is None:
        if device.type == "cuda":
            rec.check(sec, f"backend {name!r} is available", False, why)
        else:
            rec.skip(sec, f"backend {name!r}", why)
    return backend


def sec_backend(rec: Record, name: str, device: torch.device, quick: bool) -> None:
    """``name`` against the reference backend (see the module docstring)."""
    from lrsched_fused import schedules as S
    from lrsched_fused.backends import get_backend

    sec = f"correctness ({name})"
    bk = _require(rec, sec, name, device)
    if bk is None:
        return
    ref = get_backend("reference")
    big = 65536 * 2 + 3 if device.type == "cuda" else 700
    shapes = [(0,), (1,), (7,), (1023,), (big,), (37, 129), (5, 3, 2)]
    f32 = torch.float32
    for kind in ("adamw", "lamb"):
        for label, dtype, opts in (CONFIGS[:2] if quick else CONFIGS):
            low = dtype in (torch.bfloat16, torch.float16)
            sdt = opts.get("state_dtype") or (f32 if low else dtype)
            if backend_or_reason(name, device, dtype, sdt)[0] is None:
                rec.skip(sec, f"{name} {kind} {label}", f"no {name} kernels for {dtype} params, {sdt} states")
                continue
            kw = dict(opts, amsgrad=(kind == "adamw" and label == "fp32"),
                      grad_scale=256.0 if label == "fp16" else None)
            clip = torch.tensor([1.7], device=device) if kind == "lamb" and label != "fp64" else None
            got = Bucket(shapes, dtype, device, **kw).run(bk, kind, N_STEPS, clip)
            want = Bucket(shapes, dtype, device, **kw).run(ref, kind, N_STEPS, clip)
            tol = tolerance(dtype, opts.get("state_dtype"))
            err = max(rel_err(a, b) for a, b in zip(got.batch.params, want.batch.params))
            detail = f"max rel err {err:.2e} (tol {tol:g})"
            ok = err <= tol and got.ctx.clock.tolist() == want.ctx.clock.tolist()
            ok = ok and rel_err(got.lr_out, want.lr_out) <= 2e-6
            if kind == "lamb":
                nerr = rel_err(got.norms, want.norms)
                detail += f", telemetry {nerr:.1e}"
                exact = dtype in (f32, torch.float64) and "state_dtype" not in opts
                ok = ok and nerr <= (1e-4 if exact else 1e-2)
            rec.check(sec, f"{name} {kind} {label} vs reference backend ({N_STEPS} steps)", ok, detail)
        if kind == "lamb":  # the sharded path: stage 1, the caller's all-reduce (a no-op here), stage 2
            got = Bucket(shapes, f32, device).run(bk, "lamb", N_STEPS, sharded=True)
            want = Bucket(shapes, f32, device).run(ref, "lamb", N_STEPS)
            err = max(rel_err(a, b) for a, b in zip(got.batch.params, want.batch.params))
            nerr = rel_err(got.norms, want.norms)
            rec.check(sec, f"{name} lamb sharded halves vs reference backend", err <= 1e-5 and nerr <= 1e-4,
                      f"max rel err {err:.2e}, telemetry {nerr:.1e}")
        # fp32 against float64 copies (the reference backend computes in float64 for float64 tensors)
        got = Bucket(shapes, f32, device).run(bk, kind, N_STEPS)
        want = Bucket(shapes, torch.float64, device)
        for p, q in zip(want.batch.params, Bucket(shapes, f32, device).batch.params):
            p.copy_(q.double())
        want.run(ref, kind, N_STEPS)
        err = max(rel_err(a, b) for a, b in zip(got.batch.params, want.batch.params))
        rec.check(sec, f"{name} {kind} fp32 vs float64 reference", err <= 1e-5, f"max rel err {err:.2e}")
        # found_inf: nothing but telemetry changes
        if backend_or_reason(name, device, torch.bfloat16, f32)[0] is not None:
            s = Bucket(shapes, torch.bfloat16, device, master=True, amsgrad=(kind == "adamw")).run(bk, kind, 3)
            before = [t.clone() for t in s.state()]
            s.ctx.found_inf = torch.ones(1, device=device)
            s.batch.grads = [g.fill_(float("inf")) for g in s.grads(3)]
            s.step(bk, kind)
            rec.check(sec, f"{name} {kind} found_inf leaves params/state/steps/clock untouched",
                      bitwise_equal(before, s.state()))
        a = Bucket(shapes, f32, device).run(bk, kind, 5)
        b = Bucket(shapes, f32, device).run(bk, kind, 5)
        rec.check(sec, f"{name} {kind} two runs bit-identical", bitwise_equal(a.state(), b.state()))

    s = Bucket(shapes, f32, device, grad_scale=64.0)
    s.batch.grads = s.grads(0)
    got_sq = float(bk.grad_sumsq(s.batch, s.ctx))
    want_sq = sum(float((g.double() / 64.0).pow(2).sum()) for g in s.batch.grads)
    rec.check(sec, f"{name} grad_sumsq vs float64", abs(got_sq - want_sq) <= 1e-5 * want_sq,
              f"{got_sq:.6g} vs {want_sq:.6g}")

    worst = 0.0
    for sched in (S.cosine(1e-3, 2**41, 1000, final_lr=1e-5), S.power(0.02, 4.6, -0.51, 2**42, warmup=1000),
                  S.wsd(3e-4, 3 * 2**40, 2**30, decay_fraction=0.5, decay="1-sqrt"),
                  S.wsd(3e-4, 2**41, warmup_steps=2**20, decay_fraction=0.2, decay="1-sqrt"),
                  S.rex(1e-3, 2**41, 100, beta=0.9)):
        steps = sorted({0, 1, 999, 1000, 1001, 2**20 - 1, 2**20, 2**40 - 1, 2**40, 2**40 + 1, 2**40 + 12345,
                        2**41 - 1, 2**41, 2**41 + 5, 2**42} | set(sched.edges))
        a = S.evaluate(sched, steps, backend=name).cpu().double()
        b = S.evaluate(sched, steps, backend="reference")
        worst = max(worst, float((a - b).abs().max() / b.abs().max()))
    rec.check(sec, f"{name} schedule evaluator vs float64 incl. clocks near 2**40", worst <= 2e-6, f"{worst:.2e}")


def sec_vs_torch(rec: Record, name: str, device: torch.device) -> None:
    """``FusedAdamW(backend=name)`` against ``torch.optim.AdamW`` (fused on CUDA), 20 steps, fp32."""
    from lrsched_fused import FusedAdamW

    if backend_or_reason(name, device)[0] is None:
        rec.skip(f"vs torch ({name})", f"FusedAdamW({name})", "backend unavailable (see correctness)")
        return
    gen = torch.Generator().manual_seed(0)
    shapes = [(512, 384), (384,), (1000, 77), (77,), (3,)]
    base = [torch.randn(s, generator=gen).to(device) for s in shapes]
    ours = [torch.nn.Parameter(b.clone()) for b in base]
    theirs = [torch.nn.Parameter(b.clone()) for b in base]
    opt_a = FusedAdamW(ours, lr=1e-3, weight_decay=0.01, backend=name)
    fused = device.type == "cuda"
    opt_b = torch.optim.AdamW(theirs, lr=1e-3, weight_decay=0.01, fused=fused)
    for k in range(N_STEPS):
        g = torch.Generator().manual_seed(100 + k)
        for a, b in zip(ours, theirs):
            grad = torch.randn(a.shape, generator=g).to(device)
            a.grad, b.grad = grad.clone(), grad.clone()
        opt_a.step()
        opt_b.step()
    err = max(rel_err(a, b) for a, b in zip(ours, theirs))
    rec.check(f"vs torch ({name})", f"FusedAdamW({name}) vs torch.optim.AdamW(fused={fused}), {N_STEPS} steps",
              err <= 1e-5, f"{err:.2e}")


def compiled_variants() -> int | None:
    """How many compiled variants the Triton kernels hold (None if this triton's cache layout is unknown)."""
    try:
        from lrsched_fused.backends import triton as tb

        total = 0
        for module in tb.KERNEL_MODULES:
            for attr in dir(module):
                if attr.endswith("_kernel"):
                    caches = getattr(getattr(module, attr), "device_caches")
                    total += sum(len(entry[0]) for entry in caches.values())
        return total
    except Exception:  # noqa: BLE001
        return None


def sec_cuda_graph(rec: Record, device: torch.device, name: str = "triton") -> None:
    """One ``opt.step()`` captured in a CUDA graph and replayed N times equals N eager steps, bit for bit
    (params, clock, lr telemetry), across the warmup and decay edges of a WSD schedule; no recompiles."""
    sec = f"cuda graph ({name})"
    if device.type != "cuda":
        rec.log("  (no CUDA: graph capture skipped in the dry run)")
        return
    from lrsched_fused import FusedAdamW, FusedLAMB
    from lrsched_fused import schedules as S

    n_replay = 36
    for cls in (FusedAdamW, FusedLAMB):
        sched = S.wsd(peak_lr=1e-2, total_steps=40, warmup_steps=6, decay_steps=12, init_lr=1e-3)
        gen = torch.Generator().manual_seed(1)
        shapes = [(4096, 257), (257,), (65536 + 5,), (0,), (3, 3)]
        base = [torch.randn(s, generator=gen).to(device) for s in shapes]
        grads = [torch.randn(s, generator=gen).to(device) for s in shapes]
        runs = {}
        for mode in ("graph", "eager"):
            params = [torch.nn.Parameter(b.clone()) for b in base]
            for p, g in zip(params, grads):
                p.grad = g.clone()
            opt = cls(params, lr=sched, weight_decay=0.01, backend=name)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    opt.step()
            torch.cuda.current_stream().wait_stream(side)
            variants = compiled_variants()
            if mode == "graph":
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    opt.step()
                for _ in range(n_replay):
                    graph.replay()
            else:
                for _ in range(n_replay):
                    opt.step()
                after = compiled_variants()
                if variants is not None and after is not None:
                    rec.check(sec, f"{cls.__name__}: no recompilation over {n_replay} steps across phase edges",
                              after == variants, f"{variants} -> {after} compiled variants")
            torch.cuda.synchronize()
            runs[mode] = (params, opt)
        (pg, og), (pe, oe) = runs["graph"], runs["eager"]
        same = bitwise_equal([p.detach() for p in pg], [p.detach() for p in pe])
        clocks = (og.clock.tolist(), oe.clock.tolist())
        lr_same = torch.equal(og.telemetry()["lr"], oe.telemetry()["lr"])
        rec.check(sec, f"{cls.__name__}: {n_replay} replays == {n_replay} eager steps across WSD edges",
                  same and clocks[0] == clocks[1] and lr_same, f"clock {clocks[0]} vs {clocks[1]}, lr equal {lr_same}")


def sec_pytest(rec: Record, budget_s: float, repo: Path, target: str = "tests/test_triton_backend.py") -> None:
    if budget_s < 30:
        rec.log(f"  skipped: {budget_s:.0f}s left for it")
        return
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *target.split()]
    rec.log(f"  {' '.join(cmd)} (timeout {budget_s:.0f}s)")
    try:
        proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=budget_s)
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
        print("\n".join(tail), flush=True)
        rec.check("pytest", f"{target} on the GPU", proc.returncode == 0, tail[-1] if tail else f"rc={proc.returncode}")
    except subprocess.TimeoutExpired:
        rec.check("pytest", f"{target} on the GPU", False, f"timed out after {budget_s:.0f}s")
