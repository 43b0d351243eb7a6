"""Timings on the device: ours (each compiled backend) against ``torch.optim.AdamW(fused=True)``.

Times are CUDA events around each call (wall clock in the CPU dry run): 3 warm-up calls, then
``iters`` timed ones; rows report median / p20 / p80. Bytes per step count every read and write
(:func:`bench.workloads.bytes_per_param`: fp32 AdamW 28 B/param, LAMB 40, bf16 params with fp32 master
weights and moments 30, torch's bf16 AdamW 14); the floor is a device-to-device copy (8 B/element), and
a row's fraction of it is its GB/s over the copy's.

Rows (``what``: ``step`` a whole optimizer step, ``kernel`` the backend calls alone, ``graph`` a CUDA-graph
replay of ``step()``), on a GPT-like model of ``--params`` parameters (hidden 2048): AdamW fp32 for each
backend (step, kernel, and for Triton graph replay and the kernel with other block sizes) and torch
fused; LAMB fp32; int8 moments (AdamW and LAMB) vs torch fused fp32; bf16 params with fp32 master weights vs torch fused with bf16 states; 2000 small
tensors (launch overhead) vs torch fused and foreach. Optional rows are dropped near the deadline.
"""

from __future__ import annotations

import gc
import math
import time

import torch

from ..workloads import bytes_per_param
from .record import Record

__all__ = ["timed", "transformer_shapes", "sec_timing", "COPY_BYTES_PER_ELEM"]

COPY_BYTES_PER_ELEM = 8  # dst.copy_(src): one fp32 read, one write
F32, BF16 = torch.float32, torch.bfloat16


def transformer_shapes(target_params: float, hidden: int = 2048, vocab: int = 50304) -> list[tuple[int, ...]]:
    """Shapes of a GPT-like model with about ``target_params`` parameters (at least one layer)."""
    shapes = [(vocab, hidden)]
    per_layer = [(3 * hidden, hidden), (3 * hidden,), (hidden, hidden), (hidden,), (4 * hidden, hidden), (4 * hidden,),
                 (hidden, 4 * hidden), (hidden,), (hidden,), (hidden,), (hidden,), (hidden,)]
    layer = sum(math.prod(s) for s in per_layer)
    for _ in range(max(1, round((target_params - vocab * hidden) / layer))):
        shapes += per_layer
    return shapes + [(hidden,), (hidden,)]


def timed(device: torch.device, fn, iters: int, warmup: int = 3) -> list[float]:
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


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def _kernel_call(opt, params, backend, sched, device):
    """One AdamW backend call (and the clock launch) on ``opt``'s parameters, gradients and moments, with
    tables built here (``bench.hparams``): the kernels' time without the optimizer's host work. Only
    public state is read (``opt.state``), so this works whatever the optimizer caches."""
    from lrsched_fused.backends import StepContext, TensorBatch
    from lrsched_fused.kernels import layout as L
    from lrsched_fused.schedules import encode_tables

    from ..hparams import hparams_row, hparams_table

    states = [opt.state[p] for p in params]
    k = len(params)
    batch = TensorBatch(params=[p.detach() for p in params], grads=[p.grad for p in params],
                        exp_avgs=[st["exp_avg"] for st in states], exp_avg_sqs=[st["exp_avg_sq"] for st in states],
                        max_exp_avg_sqs=None, master_params=None,
                        group_index=torch.zeros(k, dtype=torch.int64, device=device),
                        steps=torch.full((k,), 10.0, dtype=torch.float32, device=device))
    clock = torch.zeros(L.NUM_CLOCKS, dtype=torch.int64, device=device)
    ctx = StepContext(encode_tables([sched], device), hparams_table([hparams_row(weight_decay=0.1)], device), clock)
    lr_out = torch.zeros(1, dtype=torch.float32, device=device)

    def call() -> None:
        backend.adamw(batch, ctx, amsgrad=False)
        backend.advance(ctx, batch.steps, lr_out, None)

    return call


def sec_timing(rec: Record, device: torch.device, backends: list[str], target_params: float, iters: int,
               deadline: float) -> None:
    from lrsched_fused import FusedAdamW, FusedLAMB
    from lrsched_fused import schedules as S

    from .correctness import backend_or_reason

    def left() -> float:
        return deadline - time.time()

    def ok(name: str, dtype=F32, sdt=None) -> bool:
        return backend_or_reason(name, device, dtype, sdt)[0] is not None

    def ok_backend(name: str):
        return backend_or_reason(name, device)[0]

    sched = S.wsd(peak_lr=1e-3, total_steps=10**6, warmup_steps=100, decay_fraction=0.2)
    cuda = device.type == "cuda"
    ours = [b for b in backends if ok(b)]
    for b in backends:
        if b not in ours:
            rec.log(f"  (backend {b!r} unavailable: no rows for it)")

    # the bandwidth floor: a device-to-device copy
    n_copy = int(min(target_params, 5e8)) if cuda else 10**6
    src = torch.empty(n_copy, dtype=F32, device=device).normal_()
    dst = torch.empty_like(src)
    row = rec.add_row("copy (floor)", "tensor.copy_", "copy", n_copy, 1, "float32",
                      timed(device, lambda: dst.copy_(src), iters), COPY_BYTES_PER_ELEM, what="floor")
    rec.info["copy_gbps"] = round(row["GB_s"], 1)
    src = dst = None

    shapes = transformer_shapes(target_params) if cuda else [(300, 7), (1000,), (64, 64), (5,)]
    n, nt = sum(math.prod(s) for s in shapes), len(shapes)
    rec.info["model"] = f"{nt} tensors, {n / 1e6:.1f}M params"
    rec.log(f"  model: {rec.info['model']}")
    b_adamw, b_lamb = bytes_per_param("adamw", F32, F32), bytes_per_param("lamb", F32, F32)

    def make(dtype):
        params = [torch.nn.Parameter(torch.empty(s, dtype=dtype, device=device).normal_(0, 0.02)) for s in shapes]
        for p in params:
            p.grad = torch.empty_like(p).normal_(0, 1e-3)
        return params

    # AdamW fp32: ours per backend (step, launches only, graph replay) vs torch fused
    params = make(F32)
    for name in ours:
        opt = FusedAdamW(params, lr=sched, weight_decay=0.1, backend=name)
        opt.step()
        floor_ms = b_adamw * n / rec.info["copy_gbps"] / 1e6
        rec.add_row("adamw fp32", f"ours {name}: FusedAdamW.step()", name, n, nt, "float32",
                    timed(device, opt.step, iters), b_adamw, f"floor {floor_ms:.3f} ms")
        kernel = _kernel_call(opt, params, ok_backend(name), sched, device)
        rec.add_row("adamw fp32", f"ours {name}: kernel launches only", name, n, nt, "float32",
                    timed(device, kernel, iters), b_adamw, what="kernel")
        if name == "triton" and left() > 60:  # block-size sweep of the Triton AdamW kernel
            from lrsched_fused.backends.triton import TritonBackend

            for chunk, block, warps in ((65536, 1024, 4), (65536, 4096, 8), (32768, 2048, 4), (131072, 4096, 8)):
                if not cuda:
                    chunk, block = 1024, 256
                kernel = _kernel_call(opt, params, TritonBackend(chunk=chunk, block=block, num_warps=warps), sched,
                                      device)
                rec.add_row("adamw fp32", f"ours triton launches: chunk {chunk} block {block} warps {warps}",
                            "triton", n, nt, "float32", timed(device, kernel, iters), b_adamw, what="kernel")
                if not cuda:
                    break
        del kernel
        if cuda and name == "triton":
            try:
                graph, side = torch.cuda.CUDAGraph(), torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    opt.step()
                torch.cuda.current_stream().wait_stream(side)
                with torch.cuda.graph(graph):
                    opt.step()
                rec.add_row("adamw fp32", f"ours {name}: CUDA graph replay of step()", name, n, nt, "float32",
                            timed(device, graph.replay, iters), b_adamw, what="graph")
                del graph
            except Exception as exc:  # noqa: BLE001
                rec.check("timing", f"{name} graph replay timing", False, f"{type(exc).__name__}: {exc}")
        del opt
        _free(device)
    ref = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.1, fused=cuda)
    rec.add_row("adamw fp32", f"torch.optim.AdamW(fused={cuda})", "torch", n, nt, "float32",
                timed(device, ref.step, iters), b_adamw)
    del ref

    del params
    _free(device)

    # LAMB fp32 (two sweeps: 40 B/param; an AdamW-like single sweep would be 28)
    if left() > 30:
        params = make(F32)
        for name in ours:
            opt = FusedLAMB(params, lr=sched, weight_decay=0.01, backend=name)
            opt.step()
            rec.add_row("lamb fp32", f"ours {name}: FusedLAMB.step()", name, n, nt, "float32",
                        timed(device, opt.step, iters), b_lamb, "AdamW-equivalent floor 28 B/param")
            del opt
            _free(device)
        del params
        _free(device)

    # int8 moments (16.06 B/param for AdamW) vs torch fused with fp32 state (28)
    if left() > 40:
        from .compressed import timing_rows

        timing_rows(rec, device, ours, make, n, nt, sched, iters, timed)
        _free(device)

    # bf16 params: ours with fp32 master + fp32 moments (30 B/param) vs torch fused with bf16 moments (14)
    if left() > 30:
        params = make(BF16)
        for name in [b for b in ours if ok(b, BF16, F32)]:
            opt = FusedAdamW(params, lr=sched, weight_decay=0.1, backend=name, master_weights=True)
            opt.step()
            rec.add_row("adamw bf16", f"ours {name}: fp32 master + fp32 states", name, n, nt, "bfloat16",
                        timed(device, opt.step, iters), bytes_per_param("adamw", BF16, F32, master=True))
            del opt
            _free(device)
        ref = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.1, fused=cuda)
        rec.add_row("adamw bf16", f"torch.optim.AdamW(fused={cuda}) (bf16 states, no master)", "torch", n, nt,
                    "bfloat16", timed(device, ref.step, iters), bytes_per_param("adamw", BF16, BF16))
        del ref, params
        _free(device)

    # many small tensors: launch overhead
    if left() > 20:
        gen = torch.Generator().manual_seed(0)
        n_small = 2000 if cuda else 20
        small = [(int(x),) for x in torch.randint(1000, 50000, (n_small,), generator=gen)]
        n_p = sum(s[0] for s in small)
        impls = [(f"ours {b}: FusedAdamW.step()", b) for b in ours] + [
            ("torch.optim.AdamW(fused=True)", "fused"), ("torch.optim.AdamW(foreach=True)", "foreach")]
        for label, which in impls:
            if which == "fused" and not cuda:
                continue
            params = [torch.nn.Parameter(torch.empty(s, device=device).normal_()) for s in small]
            for p in params:
                p.grad = torch.empty_like(p).normal_()
            if which in ("fused", "foreach"):
                opt = torch.optim.AdamW(params, **{which: True})
            else:
                opt = FusedAdamW(params, lr=sched, backend=which)
            rec.add_row(f"adamw {n_small} tensors", label, which if which in ours else "torch", n_p, n_small,
                        "float32", timed(device, opt.step, iters), b_adamw)
            del opt, params
        _free(device)
