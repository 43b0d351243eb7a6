"""Compressed optimizer state on the device (``docs/compressed_state.md``): each compiled backend against
the ``reference`` backend through the optimizer, and int8 timings against torch's fused fp32 AdamW.

Correctness, per backend, AdamW and LAMB, 4 steps of a WSD schedule on tensors across and within
quantization blocks (an empty one and a 1-d one included), for int8 moments, compact 8- and 16-bit master
corrections, bf16 moments with stochastic rounding, and int8 with compact8:

* masters (the fp32 master, or the parameter plus its correction) within 1e-6 of the largest (1e-5 with
  int8: a moment within rounding of a code boundary may flip its code by one, moving that element's
  update by up to lr / 127); an 8-bit compact master holds 16 significant bits, so masters that differ by
  float32 rounding may round to neighbouring corrections: each element within one correction step
  (``2**-15`` of itself) more;
* a bf16 parameter within one unit in its last place;
* int8 codes within 1 of the reference's in at most 1% of elements (a GPU may fuse multiply-adds);
* the gradient-norm history within 1e-5 (float32 partial sums in another order).

Timings: int8 AdamW and LAMB steps against ``torch.optim.AdamW(fused=True)`` with fp32 state on the same
model; int8 moves 16.06 B/param (AdamW) against fp32's 28 (``bench.workloads.int8_bytes``).
"""

from __future__ import annotations

import torch

from .bucket import rel_err
from .record import Record

__all__ = ["CONFIGS", "sec_compressed", "timing_rows"]

#: label -> (parameter dtype, optimizer storage options)
CONFIGS = {
    "int8 moments": (torch.float32, dict(state_dtype="int8", quant_min_numel=1)),
    "compact8": (torch.bfloat16, dict(master_weights="compact")),
    "compact16": (torch.bfloat16, dict(master_weights="compact", master_bits=16)),
    "bf16 moments + stochastic rounding": (torch.bfloat16, dict(state_dtype=torch.bfloat16, stochastic_rounding=True)),
    "int8 moments + compact8": (torch.bfloat16, dict(state_dtype="int8", master_weights="compact",
                                                     quant_min_numel=1)),
}
N_STEPS = 4


def _master(opt, p) -> torch.Tensor:
    """The master value ``p`` stands for (``checkpoint.master_value``), on the CPU."""
    from lrsched_fused.checkpoint import master_value

    return master_value(p, opt.state[p]).cpu()


def _train(name: str, kind: str, dtype, options: dict, shapes, device) -> tuple:
    from lrsched_fused import FusedAdamW, FusedLAMB
    from lrsched_fused import schedules as S

    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen).mul_(0.1).to(device, dtype)) for s in shapes]
    sched = S.wsd(peak_lr=1e-2, total_steps=8, warmup_steps=2, decay_steps=3)
    cls = FusedAdamW if kind == "adamw" else FusedLAMB
    opt = cls(params, lr=sched, weight_decay=0.1, backend=name, telemetry_history=8, **options)
    for k in range(N_STEPS):
        g = torch.Generator().manual_seed(100 + k)
        for p in params:
            p.grad = torch.randn(p.shape, generator=g).to(device, dtype)
        opt.step()
    return params, opt


def sec_compressed(rec: Record, name: str, device: torch.device, quick: bool) -> None:
    """``name`` against the reference backend for every configuration of :data:`CONFIGS` (module docstring)."""
    from .correctness import backend_or_reason

    sec = f"compressed state ({name})"
    cuda = device.type == "cuda"
    shapes = [(64 if cuda else 4, 1000), (3, 70), (5,), (0, 4), (2, 300)]
    items = list(CONFIGS.items())[:2] if quick else list(CONFIGS.items())
    for kind in ("adamw", "lamb"):
        for label, (dtype, options) in items:
            if backend_or_reason(name, device, dtype)[0] is None:
                rec.skip(sec, f"{name} {kind} {label}", f"backend {name!r} unavailable for {dtype}")
                continue
            try:
                got_p, got = _train(name, kind, dtype, options, shapes, device)
                want_p, want = _train("reference", kind, dtype, options, shapes, device)
            except Exception as exc:  # noqa: BLE001 - a refusal or a crash is a failed check, reported
                rec.check(sec, f"{name} {kind} {label} runs", False, f"{type(exc).__name__}: {exc}")
                continue
            master_tol = 1e-5 if options.get("state_dtype") == "int8" else 1e-6
            step = 2.0 ** -15 if options.get("master_weights") == "compact" and options.get("master_bits", 8) == 8 else 0
            merr, ulp_ok, flips, worst_code = 0.0, True, 0.0, 0
            for p, q in zip(got_p, want_p):
                if not q.numel():
                    continue
                a, b = _master(got, p).double().cpu(), _master(want, q).double().cpu()
                excess = ((a - b).abs() - step * b.abs()).clamp_min(0)  # beyond one correction step
                merr = max(merr, float(excess.max() / b.abs().max().clamp_min(1e-30)))
                if dtype == torch.bfloat16:
                    a, b = p.detach().float().cpu(), q.detach().float().cpu()
                    ulp_ok = ulp_ok and bool(((a - b).abs() <= b.abs() * 2.0 ** -7).all())
                for key in ("exp_avg", "exp_avg_sq"):
                    x, y = got.state[p][key], want.state[q][key]
                    if x.dtype in (torch.int8, torch.uint8):
                        diff = (x.int().cpu() - y.int().cpu()).abs()
                        worst_code = max(worst_code, int(diff.max()))
                        flips = max(flips, float((diff > 0).float().mean()))
            hist_a, hist_b = got.telemetry_history(), want.telemetry_history()
            herr = max(rel_err(hist_a[k], hist_b[k]) for k in ("grad_norm_l2", "grad_norm_l1"))
            same_steps = hist_a["step"].tolist() == hist_b["step"].tolist() == list(range(N_STEPS))
            ok = (merr <= master_tol and ulp_ok and worst_code <= 1 and flips <= 0.01 and herr <= 1e-5
                  and same_steps)
            rec.check(sec, f"{name} {kind} {label} vs reference backend ({N_STEPS} steps)", ok,
                      f"master {merr:.1e} (tol {master_tol:g}{' + 2**-15 each' if step else ''}), bf16 within 1 ulp {ulp_ok}, code flips "
                      f"{100 * flips:.2f}% (max {worst_code}), history {herr:.1e}")


def timing_rows(rec: Record, device: torch.device, ours: list[str], make, n: int, nt: int, sched, iters: int,
                timed) -> None:
    """int8 AdamW / LAMB steps of each backend next to torch fused fp32 AdamW on the same parameters."""
    from lrsched_fused import FusedAdamW, FusedLAMB

    from ..workloads import bytes_per_param, int8_bytes
    from .correctness import backend_or_reason

    f32 = torch.float32
    params = make(f32)
    for name in ours:
        if backend_or_reason(name, device, f32)[0] is None:
            continue
        for label, cls, op, kw in (("adamw int8", FusedAdamW, "adamw", dict(weight_decay=0.1)),
                                   ("lamb int8", FusedLAMB, "lamb", dict(weight_decay=0.01))):
            opt = cls(params, lr=sched, backend=name, state_dtype="int8", **kw)
            opt.step()
            rec.add_row(label, f"ours {name}: int8 moments, step()", name, n, nt, "float32",
                        timed(device, opt.step, iters), int8_bytes(op, f32), "block 256")
            del opt
    ref = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.1, fused=device.type == "cuda")
    rec.add_row("adamw int8", f"torch.optim.AdamW(fused={device.type == 'cuda'}), fp32 state", "torch", n, nt,
                "float32", timed(device, ref.step, iters), bytes_per_param("adamw", f32, f32))
    del ref, params
