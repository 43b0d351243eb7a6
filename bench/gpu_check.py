"""One prepared check of the Triton backend on a CUDA GPU: correctness, CUDA graphs, then timings.

Run it through ``bash bench/gpu_check.sh`` (installs the package first) or directly::

    python bench/gpu_check.py [--quick] [--params 1e9] [--budget 280]
    TRITON_INTERPRET=1 python bench/gpu_check.py --dry-run    # CPU rehearsal of every code path

Sections (each in its own try/except, so one failure does not hide the others; each prints progress):

1. environment (GPU, versions);
2. correctness on CUDA: the Triton backend against the ``reference`` backend (plain torch, same dtypes)
   and against a float64 reference for fp32 params: AdamW and LAMB, fp32 / bf16 (+fp32 master) / fp16 /
   fp64, odd and empty tensors, tensors spanning several 64K chunks, two param groups with schedules
   crossing phase edges, grad scaling, clipping; plus found_inf (bitwise no-op), determinism (two runs
   bit-identical), ``grad_sumsq``, and the schedule evaluator at clocks near 2**40;
3. ``FusedAdamW(backend="triton")`` against ``torch.optim.AdamW(fused=True)`` (fp32, 20 steps);
4. CUDA graphs: one ``opt.step()`` (AdamW and LAMB, WSD schedule) captured and replayed N times across
   the warmup and decay edges equals N eager steps, bit for bit (params, clock, lr telemetry);
5. optionally the pytest files ``tests/test_triton_*.py`` on the GPU (time-boxed);
6. timings (CUDA events, median / p20 / p80 of 20 steps): our AdamW (kernel launches only, full
   ``step()``, CUDA-graph replay) vs ``torch.optim.AdamW(fused=True)``, bf16 with master weights, LAMB,
   many small tensors (also vs torch foreach), a block-size sweep, and a device copy as the bandwidth
   floor. Bytes moved count every read and write (fp32 AdamW: 28 B/param).

Prints a table last and writes ``gpu_check.md`` / ``.csv`` / ``.json`` under ``$OUT`` when it is set.
Without CUDA it exits at once with status 0 (except ``--dry-run``, which runs tiny sizes on CPU tensors
under the Triton interpreter to rehearse the script).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import importlib.util
import io
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
T0 = time.time()
CHECKS: list[dict] = []   # {"section", "name", "ok", "detail"}
ROWS: list[dict] = []     # timing rows
INFO: dict = {}


def log(msg: str) -> None:
    print(f"[{time.time() - T0:6.1f}s] {msg}", flush=True)


def check(section: str, name: str, ok: bool, detail: str = "") -> bool:
    CHECKS.append({"section": section, "name": name, "ok": bool(ok), "detail": detail})
    log(f"  {'PASS' if ok else 'FAIL'}  {name}  {detail}")
    return bool(ok)


@contextlib.contextmanager
def section(name: str):
    log(f"== {name}")
    start = time.time()
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - a section's failure is reported, the next section runs
        tb = traceback.format_exc()
        print(tb, flush=True)
        check(name, f"{name}: section crashed", False, f"{type(exc).__name__}: {str(exc)[:300]}")
    finally:
        log(f"   ({name}: {time.time() - start:.1f}s)")


def ensure_importable() -> None:
    """Import ``lrsched_fused`` from the install, or else from this source tree (``kernels/`` is the
    ``lrsched_fused.kernels`` package there, through ``package_dir``)."""
    try:
        import lrsched_fused.kernels.layout  # noqa: F401
        return
    except Exception:  # noqa: BLE001
        pass
    log("lrsched_fused is not installed: importing it from the source tree")
    sys.path.insert(0, str(REPO))
    for name in [m for m in sys.modules if m == "lrsched_fused" or m.startswith("lrsched_fused.")]:
        del sys.modules[name]
    spec = importlib.util.spec_from_file_location("lrsched_fused.kernels", REPO / "kernels" / "__init__.py",
                                                  submodule_search_locations=[str(REPO / "kernels")])
    module = importlib.util.module_from_spec(spec)
    sys.modules["lrsched_fused.kernels"] = module
    spec.loader.exec_module(module)
    import lrsched_fused  # noqa: F401


# ------------------------------------------------------------------------------------------------------
# harness: one bucket driven through the Backend protocol
# ------------------------------------------------------------------------------------------------------
class Setup:
    """Tensors, tables and buffers for ``n_steps`` steps of one bucket on ``device``."""

    def __init__(self, torch, shapes, dtype, device, *, state_dtype=None, master=False, amsgrad=False,
                 groups=None, seed=0, grad_scale=None):
        from lrsched_fused import schedules as S
        from lrsched_fused.backends import StepContext, TensorBatch
        from lrsched_fused.kernels import layout as L

        self.torch, self.L = torch, L
        self.shapes, self.dtype, self.device, self.seed, self.grad_scale = shapes, dtype, device, seed, grad_scale
        low = dtype in (torch.bfloat16, torch.float16)
        sdt = state_dtype or (torch.float32 if low else dtype)
        gen = torch.Generator().manual_seed(seed)
        params = [torch.randn(s, generator=gen).to(device, dtype) for s in shapes]
        n = len(params)
        if groups is None:
            groups = [dict(sched=S.wsd(2e-2, 16, 3, decay_steps=5, init_lr=1e-3), wd=0.1, b1=0.9, b2=0.999, eps=1e-6),
                      dict(sched=S.cosine(1e-2, 12, 2, final_lr=1e-4), wd=0.0, b1=0.8, b2=0.99, eps=1e-8,
                           lr_scale=0.5, decoupled=1.0, trust=(0.01, 10.0))]
        self.groups = groups
        rows = []
        for g in groups:
            r = [0.0] * L.HP_COLS
            r[L.HP_LR_SCALE] = g.get("lr_scale", 1.0)
            r[L.HP_BETA1], r[L.HP_BETA2], r[L.HP_EPS] = g["b1"], g["b2"], g["eps"]
            r[L.HP_WEIGHT_DECAY], r[L.HP_MAXIMIZE] = g["wd"], g.get("maximize", 0.0)
            r[L.HP_BIAS_CORRECTION], r[L.HP_GRAD_AVERAGING], r[L.HP_ADAPT] = 1.0, 1.0, g.get("adapt", 1.0)
            r[L.HP_TRUST_MIN], r[L.HP_TRUST_MAX] = g.get("trust", (0.0, math.inf))
            r[L.HP_DECOUPLED] = g.get("decoupled", 0.0)
            rows.append(r)
        self.batch = TensorBatch(
            params=params, grads=[],
            exp_avgs=[torch.zeros_like(p, dtype=sdt) for p in params],
            exp_avg_sqs=[torch.zeros_like(p, dtype=sdt) for p in params],
            max_exp_avg_sqs=[torch.zeros_like(p, dtype=sdt) for p in params] if amsgrad else None,
            master_params=[p.float() for p in params] if (master and low) else None,
            group_index=torch.tensor([i % len(groups) for i in range(n)], dtype=torch.int64, device=device),
            steps=torch.zeros(n, dtype=torch.float32, device=device))
        self.ctx = StepContext(S.encode_tables([g["sched"] for g in groups], device),
                               torch.tensor(rows, dtype=torch.float64, device=device),
                               torch.zeros(L.NUM_CLOCKS, dtype=torch.int64, device=device),
                               grad_scale=None if grad_scale is None else torch.tensor([grad_scale], device=device))
        self.lr_out = torch.zeros(len(groups), dtype=torch.float32, device=device)
        self.norms = torch.zeros(n, L.NORM_COLS, dtype=torch.float32, device=device)
        self.amsgrad = amsgrad

    def grads(self, k):
        torch = self.torch
        gen = torch.Generator().manual_seed(self.seed * 7919 + k + 1)
        scale = self.grad_scale or 1.0
        return [(torch.randn(s, generator=gen) * scale).to(self.device, self.dtype) for s in self.shapes]

    def run(self, backend, kind, n_steps, clip=None):
        for k in range(n_steps):
            self.batch.grads = self.grads(k)
            self.step(backend, kind, clip)
        return self

    def step(self, backend, kind, clip=None):
        if kind == "adamw":
            backend.adamw(self.batch, self.ctx, amsgrad=self.amsgrad)
        else:
            backend.lamb(self.batch, self.ctx, norms_out=self.norms, clip_div=clip, allreduce=None)
        backend.advance(self.ctx, self.batch.steps, self.lr_out, None)

    def state(self):
        b = self.batch
        out = list(b.params) + list(b.exp_avgs) + list(b.exp_avg_sqs) + list(b.max_exp_avg_sqs or [])
        return out + list(b.master_params or []) + [b.steps, self.ctx.clock]


def rel_err(torch, x, ref) -> float:
    if ref.numel() == 0:
        return 0.0
    x, ref = x.detach().double().cpu(), ref.detach().double().cpu()
    return float((x - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def bitwise_equal(torch, xs, ys) -> bool:
    return all(torch.equal(x.reshape(-1).view(torch.uint8), y.reshape(-1).view(torch.uint8)) if x.numel() else
               x.shape == y.shape for x, y in zip(xs, ys))


RTOL = {"float32": 1e-5, "float64": 1e-5, "bfloat16": 2e-2, "float16": 4e-3}


# ------------------------------------------------------------------------------------------------------
# sections
# ------------------------------------------------------------------------------------------------------
def sec_environment(torch, device) -> None:
    import triton

    INFO.update(date=datetime.datetime.now().isoformat(timespec="seconds"), python=platform.python_version(),
                torch=torch.__version__, triton=triton.__version__, device=str(device),
                gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (interpreter)",
                cuda=torch.version.cuda)
    try:
        from lrsched_fused import _version

        INFO["lrsched_fused"] = _version.__version__
    except Exception as exc:  # noqa: BLE001
        INFO["lrsched_fused"] = f"import failed: {exc}"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        INFO.update(sm=f"{props.major}{props.minor}", sms=props.multi_processor_count,
                    memory_gib=round(props.total_memory / 2**30, 1))
    for k, v in INFO.items():
        log(f"  {k}: {v}")


def sec_correctness(torch, device, quick: bool) -> None:
    from lrsched_fused.backends import get_backend
    from lrsched_fused.backends.triton import TritonBackend

    tri, ref = TritonBackend(), get_backend("reference")
    big = 65536 * 2 + 3 if device.type == "cuda" else 700
    shapes = [(0,), (1,), (7,), (1023,), (big,), (37, 129), (5, 3, 2)]
    configs = [("fp32", torch.float32, {}), ("bf16+master", torch.bfloat16, {"master": True}),
               ("bf16", torch.bfloat16, {}), ("fp16", torch.float16, {}), ("fp64", torch.float64, {}),
               ("fp32+bf16 states", torch.float32, {"state_dtype": torch.bfloat16})]
    if quick:
        configs = configs[:2]
    n_steps = 20
    for kind in ("adamw", "lamb"):
        for label, dtype, opts in configs:
            kw = dict(opts, amsgrad=(kind == "adamw" and label == "fp32"),
                      grad_scale=256.0 if label == "fp16" else None)
            clip = torch.tensor([1.7], device=device) if kind == "lamb" and label != "fp64" else None
            got = Setup(torch, shapes, dtype, device, **kw).run(tri, kind, n_steps, clip)
            want = Setup(torch, shapes, dtype, device, **kw).run(ref, kind, n_steps, clip)
            tol = RTOL[str(dtype).replace("torch.", "")]
            if opts.get("state_dtype") is torch.bfloat16:
                tol = 2e-3  # one bf16 ulp of a moment moves a param by ~lr * 2^-8 (see tests/test_triton_backend.py)
            errs = [rel_err(torch, a, b) for a, b in zip(got.batch.params, want.batch.params)]
            detail = f"max rel err {max(errs):.2e} (tol {tol:g})"
            ok = max(errs) <= tol and got.ctx.clock.tolist() == want.ctx.clock.tolist()
            lr_err = rel_err(torch, got.lr_out, want.lr_out)
            ok = ok and lr_err <= 2e-6
            if kind == "lamb":
                nerr = rel_err(torch, got.norms, want.norms)
                detail += f", telemetry {nerr:.1e}"
                exact = dtype in (torch.float32, torch.float64) and "state_dtype" not in opts
                ok = ok and nerr <= (1e-4 if exact else 1e-2)
            check("correctness", f"{kind} {label} vs reference backend ({n_steps} steps)", ok, detail)
        # fp32 against float64 copies (the reference backend computes in float64 for float64 tensors)
        got = Setup(torch, shapes, torch.float32, device).run(tri, kind, n_steps)
        want = Setup(torch, shapes, torch.float64, device)
        for p, q in zip(want.batch.params, Setup(torch, shapes, torch.float32, device).batch.params):
            p.copy_(q.double())
        want.run(ref, kind, n_steps)
        errs = [rel_err(torch, a, b) for a, b in zip(got.batch.params, want.batch.params)]
        check("correctness", f"{kind} fp32 vs float64 reference", max(errs) <= 1e-5, f"max rel err {max(errs):.2e}")

        # found_inf: nothing but telemetry changes
        s = Setup(torch, shapes, torch.bfloat16, device, master=True, amsgrad=(kind == "adamw")).run(tri, kind, 3)
        before = [t.clone() for t in s.state()]
        s.ctx.found_inf = torch.ones(1, device=device)
        s.batch.grads = [g.fill_(float("inf")) for g in s.grads(3)]
        s.step(tri, kind)
        check("correctness", f"{kind} found_inf leaves params/state/steps/clock untouched",
              bitwise_equal(torch, before, s.state()))
        # determinism
        a = Setup(torch, shapes, torch.float32, device).run(tri, kind, 5)
        b = Setup(torch, shapes, torch.float32, device).run(tri, kind, 5)
        check("correctness", f"{kind} two runs bit-identical", bitwise_equal(torch, a.state(), b.state()))

    s = Setup(torch, shapes, torch.float32, device, grad_scale=64.0)
    s.batch.grads = s.grads(0)
    got = float(tri.grad_sumsq(s.batch, s.ctx))
    want = sum(float((g.double() / 64.0).pow(2).sum()) for g in s.batch.grads)
    check("correctness", "grad_sumsq vs float64", abs(got - want) <= 1e-5 * want, f"{got:.6g} vs {want:.6g}")

    from lrsched_fused import schedules as S

    worst = 0.0
    for sched in (S.cosine(1e-3, 2**41, 1000, final_lr=1e-5), S.power(0.02, 4.6, -0.51, 2**42, warmup=1000),
                  S.wsd(3e-4, 3 * 2**40, 2**30, decay_fraction=0.5, decay="1-sqrt"),
                  S.rex(1e-3, 2**41, 100, beta=0.9)):
        steps = sorted({0, 1, 999, 1000, 1001, 2**40 - 1, 2**40, 2**40 + 1, 2**40 + 12345, 2**41 - 1, 2**41, 2**42}
                       | set(sched.edges))
        a = S.evaluate(sched, steps, backend="triton").cpu().double()
        b = S.evaluate(sched, steps, backend="reference")
        worst = max(worst, float((a - b).abs().max() / b.abs().max()))
    check("correctness", "schedule evaluator vs float64 incl. clocks near 2**40", worst <= 2e-6, f"{worst:.2e}")


def sec_vs_torch(torch, device) -> None:
    from lrsched_fused import FusedAdamW

    gen = torch.Generator().manual_seed(0)
    shapes = [(512, 384), (384,), (1000, 77), (77,), (3,)]
    base = [torch.randn(s, generator=gen).to(device) for s in shapes]
    ours = [torch.nn.Parameter(b.clone()) for b in base]
    theirs = [torch.nn.Parameter(b.clone()) for b in base]
    opt_a = FusedAdamW(ours, lr=1e-3, weight_decay=0.01, backend="triton")
    fused = device.type == "cuda"
    opt_b = torch.optim.AdamW(theirs, lr=1e-3, weight_decay=0.01, fused=fused)
    for k in range(20):
        g = torch.Generator().manual_seed(100 + k)
        for a, b in zip(ours, theirs):
            grad = torch.randn(a.shape, generator=g).to(device)
            a.grad, b.grad = grad.clone(), grad.clone()
        opt_a.step()
        opt_b.step()
    err = max(rel_err(torch, a, b) for a, b in zip(ours, theirs))
    check("vs torch", f"FusedAdamW(triton) vs torch.optim.AdamW(fused={fused}), 20 steps", err <= 1e-5, f"{err:.2e}")


def compiled_variants() -> int | None:
    """How many compiled variants the backend's kernels hold (None if this triton's cache layout is unknown)."""
    try:
        from lrsched_fused.backends import triton as tb

        total = 0
        for module in tb.KERNEL_MODULES:
            for name in dir(module):
                if name.endswith("_kernel"):
                    caches = getattr(getattr(module, name), "device_caches")
                    total += sum(len(entry[0]) for entry in caches.values())
        return total
    except Exception:  # noqa: BLE001
        return None


def sec_cuda_graph(torch, device) -> None:
    if device.type != "cuda":
        log("  (no CUDA: graph capture skipped in the dry run)")
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
            opt = cls(params, lr=sched, weight_decay=0.01, backend="triton")
            warm = 3
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(warm):
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
                    check("cuda graph", f"{cls.__name__}: no recompilation over {n_replay} steps across phase edges",
                          after == variants, f"{variants} -> {after} compiled variants")
            torch.cuda.synchronize()
            runs[mode] = (params, opt)
        (pg, og), (pe, oe) = runs["graph"], runs["eager"]
        same = bitwise_equal(torch, [p.detach() for p in pg], [p.detach() for p in pe])
        clocks = (og.clock.tolist(), oe.clock.tolist())
        lr_same = torch.equal(og.telemetry()["lr"], oe.telemetry()["lr"])
        check("cuda graph", f"{cls.__name__}: {n_replay} replays == {n_replay} eager steps across WSD edges",
              same and clocks[0] == clocks[1] and lr_same, f"clock {clocks[0]} vs {clocks[1]}, lr equal {lr_same}")


def sec_pytest(budget_s: float) -> None:
    if budget_s < 30:
        log(f"  skipped: {budget_s:.0f}s left for it")
        return
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "tests/test_triton_backend.py"]
    log(f"  {' '.join(cmd)} (timeout {budget_s:.0f}s)")
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=budget_s)
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
        print("\n".join(tail), flush=True)
        check("pytest", "tests/test_triton_backend.py on the GPU", proc.returncode == 0,
              tail[-1] if tail else f"rc={proc.returncode}")
    except subprocess.TimeoutExpired:
        check("pytest", "tests/test_triton_backend.py on the GPU", False, f"timed out after {budget_s:.0f}s")


# ------------------------------------------------------------------------------------------------------
# timings
# ------------------------------------------------------------------------------------------------------
def transformer_shapes(target_params: float, hidden: int = 2048, vocab: int = 50304) -> list[tuple[int, ...]]:
    """Shapes of a GPT-like model with about ``target_params`` parameters."""
    shapes = [(vocab, hidden)]
    per_layer = [(3 * hidden, hidden), (3 * hidden,), (hidden, hidden), (hidden,), (4 * hidden, hidden), (4 * hidden,),
                 (hidden, 4 * hidden), (hidden,), (hidden,), (hidden,), (hidden,), (hidden,)]
    layer = sum(math.prod(s) for s in per_layer)
    for _ in range(max(1, round((target_params - vocab * hidden) / layer))):
        shapes += per_layer
    return shapes + [(hidden,), (hidden,)]


def timed(torch, device, fn, iters: int, warmup: int = 3) -> list[float]:
    """Milliseconds per call of ``fn`` (CUDA events on a GPU, wall clock on the CPU dry run)."""
    for _ in range(warmup):
        fn()
    out = []
    if device.type == "cuda":
        torch.cuda.synchronize()
        for _ in range(iters):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            out.append(a.elapsed_time(b))
    else:
        for _ in range(iters):
            t = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t) * 1e3)
    return out


def add_row(op, impl, n_params, n_tensors, dtype, times, bytes_moved, note=""):
    times = sorted(times)
    q = lambda f: times[min(len(times) - 1, int(f * len(times)))]  # noqa: E731
    med = statistics.median(times)
    ROWS.append(dict(op=op, impl=impl, params=n_params, tensors=n_tensors, dtype=dtype, median_ms=med, p20_ms=q(0.2),
                     p80_ms=q(0.8), bytes=bytes_moved, gbps=bytes_moved / med / 1e6 if med > 0 else float("nan"),
                     note=note))
    log(f"  {op:<22} {impl:<34} {med:9.3f} ms  {bytes_moved / med / 1e6 if med else 0:8.1f} GB/s {note}")


def sec_timing(torch, device, target_params: float, iters: int, deadline: float) -> None:
    from lrsched_fused import FusedAdamW, FusedLAMB
    from lrsched_fused import schedules as S
    from lrsched_fused.backends.triton import TritonBackend

    def left() -> float:
        return deadline - time.time()

    sched = S.wsd(peak_lr=1e-3, total_steps=10**6, warmup_steps=100, decay_fraction=0.2)

    # bandwidth floor: a device-to-device copy (bytes read + written)
    n_copy = int(min(target_params, 5e8)) if device.type == "cuda" else 10**6
    src = torch.empty(n_copy, dtype=torch.float32, device=device).normal_()
    dst = torch.empty_like(src)
    t = timed(torch, device, lambda: dst.copy_(src), iters)
    add_row("copy (floor)", "tensor.copy_", n_copy, 1, "float32", t, 8 * n_copy)
    copy_gbps = ROWS[-1]["gbps"]
    INFO["copy_gbps"] = round(copy_gbps, 1)
    src = dst = None  # free the buffers

    shapes = transformer_shapes(target_params) if device.type == "cuda" else [(300, 7), (1000,), (64, 64), (5,)]
    n_params = sum(math.prod(s) for s in shapes)
    log(f"  model: {len(shapes)} tensors, {n_params / 1e6:.1f}M params")

    def make(dtype, with_grads=True):
        params = [torch.nn.Parameter(torch.empty(s, dtype=dtype, device=device).normal_(0, 0.02)) for s in shapes]
        if with_grads:
            for p in params:
                p.grad = torch.empty_like(p).normal_(0, 1e-3)
        return params

    # AdamW fp32: ours (launches only, full step, graph replay) vs torch fused
    params = make(torch.float32)
    opt = FusedAdamW(params, lr=sched, weight_decay=0.1, backend="triton")
    opt.step()
    bucket = opt._plan.buckets[0] if getattr(opt, "_plan", None) else None
    add_row("adamw fp32", "ours: FusedAdamW.step()", n_params, len(shapes), "float32",
            timed(torch, device, opt.step, iters), 28 * n_params, f"floor {28 * n_params / copy_gbps / 1e6:.3f} ms")
    try:  # reaches into the optimizer's plan: skipped if its internals change
        from lrsched_fused.backends import StepContext

        backend, plan = bucket.backend, opt._plan
        ctx = StepContext(opt._tables, opt._hparams, opt._clock)

        def launches():
            backend.adamw(bucket.batch, ctx, amsgrad=False)
            backend.advance(ctx, plan.steps, opt._lr_out, None)

        add_row("adamw fp32", "ours: kernel launches only", n_params, len(shapes), "float32",
                timed(torch, device, launches, iters), 28 * n_params)
    except Exception as exc:  # noqa: BLE001
        log(f"  (kernel-launch-only timing skipped: {type(exc).__name__}: {exc})")
    if device.type == "cuda":
        try:
            graph = torch.cuda.CUDAGraph()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                opt.step()
            torch.cuda.current_stream().wait_stream(side)
            with torch.cuda.graph(graph):
                opt.step()
            add_row("adamw fp32", "ours: CUDA graph replay of step()", n_params, len(shapes), "float32",
                    timed(torch, device, graph.replay, iters), 28 * n_params)
            del graph
        except Exception as exc:  # noqa: BLE001
            check("timing", "graph replay timing", False, f"{type(exc).__name__}: {exc}")
    del opt
    ref = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.1, fused=device.type == "cuda")
    add_row("adamw fp32", f"torch.optim.AdamW(fused={device.type == 'cuda'})", n_params, len(shapes), "float32",
            timed(torch, device, ref.step, iters), 28 * n_params)
    del ref

    # block-size sweep of our AdamW kernel (env overrides are read when the backend is built)
    if left() > 60:
        for chunk, block, warps in ((65536, 1024, 4), (65536, 4096, 8), (32768, 2048, 4), (131072, 4096, 8)):
            if device.type != "cuda":
                chunk, block = 1024, 256
            cfg = TritonBackend(chunk=chunk, block=block, num_warps=warps)
            opt = FusedAdamW(params, lr=sched, weight_decay=0.1, backend="triton")
            opt.step()
            for b in opt._plan.buckets:
                b.backend = cfg
                b.batch.cache.clear()
            add_row("adamw fp32", f"ours: chunk {chunk} block {block} warps {warps}", n_params, len(shapes), "float32",
                    timed(torch, device, opt.step, iters), 28 * n_params)
            del opt
            if device.type != "cuda":
                break
    del params
    _free(torch, device)

    # LAMB fp32: 40 B/param (stage 1 reads p, g, m, v, writes m, v; stage 2 reads p, m, v, writes p)
    if left() > 30:
        params = make(torch.float32)
        opt = FusedLAMB(params, lr=sched, weight_decay=0.01, backend="triton")
        opt.step()
        add_row("lamb fp32", "ours: FusedLAMB.step()", n_params, len(shapes), "float32",
                timed(torch, device, opt.step, iters), 40 * n_params, "AdamW-equivalent floor 28 B/param")
        del opt, params
        _free(torch, device)

    # bf16 params: ours with fp32 master + fp32 states (30 B/param) vs torch fused with bf16 states (14 B/param)
    if left() > 30:
        params = make(torch.bfloat16)
        opt = FusedAdamW(params, lr=sched, weight_decay=0.1, backend="triton", master_weights=True)
        opt.step()
        add_row("adamw bf16", "ours: fp32 master + fp32 states", n_params, len(shapes), "bfloat16",
                timed(torch, device, opt.step, iters), 30 * n_params)
        del opt
        ref = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.1, fused=device.type == "cuda")
        add_row("adamw bf16", "torch fused (bf16 states, no master)", n_params, len(shapes), "bfloat16",
                timed(torch, device, ref.step, iters), 14 * n_params)
        del ref, params
        _free(torch, device)

    # many small tensors: launch overhead
    if left() > 20:
        gen = torch.Generator().manual_seed(0)
        n_small = 2000 if device.type == "cuda" else 20
        small = [(int(x),) for x in torch.randint(1000, 50000, (n_small,), generator=gen)]
        n_p = sum(s[0] for s in small)
        for impl in ("ours", "fused", "foreach"):
            params = [torch.nn.Parameter(torch.empty(s, device=device).normal_()) for s in small]
            for p in params:
                p.grad = torch.empty_like(p).normal_()
            if impl == "ours":
                opt = FusedAdamW(params, lr=sched, backend="triton")
                name = "ours: FusedAdamW.step()"
            elif impl == "fused" and device.type == "cuda":
                opt = torch.optim.AdamW(params, fused=True)
                name = "torch.optim.AdamW(fused=True)"
            elif impl == "foreach":
                opt = torch.optim.AdamW(params, foreach=True)
                name = "torch.optim.AdamW(foreach=True)"
            else:
                continue
            add_row(f"adamw {n_small} tensors", name, n_p, n_small, "float32", timed(torch, device, opt.step, iters),
                    28 * n_p)
            del opt, params
        _free(torch, device)


def _free(torch, device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------------
def render() -> str:
    out = io.StringIO()
    gpu = INFO.get("gpu", "?")
    out.write(f"## gpu_check {INFO.get('date', '')} on {gpu} "
              f"(torch {INFO.get('torch')}, triton {INFO.get('triton')})\n\n")
    n_ok = sum(c["ok"] for c in CHECKS)
    out.write(f"Checks: {n_ok}/{len(CHECKS)} passed\n\n")
    for c in CHECKS:
        if not c["ok"]:
            out.write(f"- FAIL [{c['section']}] {c['name']}: {c['detail']}\n")
    out.write("\n| op | implementation | params | tensors | dtype | median ms | p20 | p80 | GB moved | GB/s | "
              "% of copy | vs torch fused |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    copy = INFO.get("copy_gbps") or float("nan")
    peers = {r["op"]: r["median_ms"] for r in ROWS if r["impl"].startswith("torch.optim.AdamW(fused=True)")
             or r["impl"].startswith("torch fused")}
    for r in ROWS:
        peer = peers.get(r["op"])
        ratio = f"{peer / r['median_ms']:.2f}x" if peer and r["median_ms"] > 0 else ""
        out.write(f"| {r['op']} | {r['impl']} | {r['params'] / 1e6:.1f}M | {r['tensors']} | {r['dtype']} | "
                  f"{r['median_ms']:.3f} | {r['p20_ms']:.3f} | {r['p80_ms']:.3f} | {r['bytes'] / 1e9:.2f} | "
                  f"{r['gbps']:.0f} | {100 * r['gbps'] / copy:.0f}% | {ratio} |\n")
    out.write("\n(vs torch fused: torch's median / ours, > 1 means ours is faster; GB/s counts every read and write)\n")
    return out.getvalue()


def write_outputs(text: str) -> None:
    target = os.environ.get("OUT")
    if not target:
        return
    path = Path(target)
    path.mkdir(parents=True, exist_ok=True)
    (path / "gpu_check.md").write_text(text)
    (path / "gpu_check.json").write_text(json.dumps({"info": INFO, "checks": CHECKS, "rows": ROWS}, indent=1,
                                                    default=str))
    if ROWS:
        with open(path / "gpu_check.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(ROWS[0]) + ["device", "version"])
            w.writeheader()
            for r in ROWS:
                w.writerow(dict(r, device=INFO.get("gpu"), version=INFO.get("lrsched_fused")))
    log(f"wrote {path}/gpu_check.md, .json, .csv")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on CPU tensors under TRITON_INTERPRET=1")
    ap.add_argument("--quick", action="store_true", help="fewer dtype configurations")
    ap.add_argument("--params", type=float, default=1e9, help="model size for the timings (default 1e9)")
    ap.add_argument("--iters", type=int, default=20, help="timed steps per measurement")
    ap.add_argument("--budget", type=float, default=float(os.environ.get("GPU_CHECK_BUDGET_S", 210)),
                    help="seconds after which optional sections are skipped (default 210; gpu_check.sh spends "
                         "up to a minute installing before this starts)")
    ap.add_argument("--pytest", choices=("auto", "yes", "no"), default="auto",
                    help="run tests/test_triton_backend.py on the GPU with the time left (auto: if >= 90 s left)")
    args = ap.parse_args(argv)
    if args.dry_run and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        print("gpu_check --dry-run needs TRITON_INTERPRET=1 in the environment (set before Python starts)")
        return 2
    try:
        import torch
    except Exception as exc:  # noqa: BLE001
        print(f"gpu_check: torch cannot be imported ({exc}); nothing to check.")
        return 0
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device (torch.cuda.is_available() is False); nothing to check on this machine.")
        return 0
    device = torch.device("cuda" if not args.dry_run else "cpu")
    deadline = T0 + args.budget
    try:
        run_sections(torch, device, args, deadline)
    except BaseException as exc:  # noqa: BLE001 - whatever happens, the table below still prints
        check("gpu_check", "run interrupted", False, f"{type(exc).__name__}: {exc}")
    finally:
        signal.alarm(0)
        text = render()
        try:
            write_outputs(text)
        except Exception as exc:  # noqa: BLE001
            log(f"could not write $OUT: {exc}")
        print("\n" + text, flush=True)
    return 0 if CHECKS and all(c["ok"] for c in CHECKS) else 1


def _out_of_time(signum, frame):
    raise TimeoutError("gpu_check: time budget exhausted")


def run_sections(torch, device, args, deadline: float) -> None:
    if hasattr(signal, "SIGALRM"):
        signal.signal(signal.SIGALRM, _out_of_time)
        signal.alarm(int(max(60, deadline - time.time() + 60)))
    with section("environment"):
        ensure_importable()
        sec_environment(torch, device)
    with section("correctness"):
        sec_correctness(torch, device, args.quick or args.dry_run)
    with section("vs torch"):
        sec_vs_torch(torch, device)
    with section("cuda graph"):
        sec_cuda_graph(torch, device)
    timing_reserve = 75 if not args.dry_run else 0
    if args.pytest == "yes" or (args.pytest == "auto" and not args.dry_run):
        with section("pytest on the GPU"):
            budget = deadline - time.time() - timing_reserve
            sec_pytest(budget if args.pytest == "yes" or budget >= 90 else 0)
    if hasattr(signal, "SIGALRM"):  # the timings get at least their reserve, then a minute of grace
        signal.alarm(int(max(deadline - time.time(), timing_reserve) + 60))
    with section("timing"):
        params = args.params if not args.dry_run else 1e4
        sec_timing(torch, device, params, args.iters if not args.dry_run else 3,
                   max(deadline, time.time() + timing_reserve))


if __name__ == "__main__":
    sys.exit(main())
