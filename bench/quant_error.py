"""The error of the int8 moment code (``docs/compressed_state.md``) on real Adam moments.

    python -m bench.quant_error                  # a small transformer, 60 fp32 AdamW steps, a few seconds

A small transformer (``bench.release.TinyGPT``) trains with fp32 ``torch.optim.AdamW`` on random tokens;
its moments after the last step are encoded and decoded by the emulation
(``lrsched_fused.reference.quant``). Printed per block size, over every 2-d parameter's elements:

* **m**: ``|m_dec - m| / max|m| of its block``: the absmax code's error, at most half a step (1/254);
* **sqrt(v)**: the same in the square-root domain (at most 1/510 of the block's largest);
* **update**: ``|u_dec - u| / |u|`` for Adam's direction ``u = m / (sqrt(v) + eps)``, median and p99 over
  elements whose |u| is at least 1% of their tensor's largest (tiny updates have large relative errors
  and no weight in the step);
* **v at floor**: the fraction of nonzero ``v`` below half a step, stored as code 1 (``s_v / 255``);
* **naive zeros**: the fraction that a code linear in ``v`` with zero allowed (``rne(v * 255 / max v)``)
  would store as 0, where ``m / (0 + eps)`` blows up: the zero-point problem the square-root code avoids.
"""

from __future__ import annotations

import argparse

import torch

from lrsched_fused.reference import quant as Q

from .release import TinyGPT


def adam_moments(steps: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(seed)
    model = TinyGPT(vocab=512, seq=64, d=128, layers=2, heads=4)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    for i in range(steps):
        g = torch.Generator().manual_seed(seed * 1000 + i)
        idx = torch.randint(0, 512, (8, 65), generator=g)
        logits = model(idx[:, :-1])
        torch.nn.functional.cross_entropy(logits.reshape(-1, 512), idx[:, 1:].reshape(-1)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return [(opt.state[p]["exp_avg"].double(), opt.state[p]["exp_avg_sq"].double())
            for p in model.parameters() if p.dim() >= 2]


def _block_max(x: torch.Tensor, block: int) -> torch.Tensor:
    b, d, _ = Q.blocks(x.abs(), block)
    return b.amax(-1, keepdim=True).expand_as(b).reshape(b.shape[0], -1)[:, :d].reshape(x.shape)


def measure(block: int, moments: list[tuple[torch.Tensor, torch.Tensor]], eps: float = 1e-8) -> dict[str, float]:
    em, er, eu, floor, naive, nonzero = [], [], [], 0, 0, 0
    for m, v in moments:
        md = Q.decode_m(*Q.encode_m(m, block), block).double()
        vd = Q.decode_v(*Q.encode_v(v, block), block).double()
        em.append(((md - m).abs() / _block_max(m, block).clamp_min(1e-300)).reshape(-1))
        r, rd = v.sqrt(), vd.sqrt()
        smax = _block_max(r, block)
        er.append(((rd - r).abs() / smax.clamp_min(1e-300)).reshape(-1))
        u, ud = m / (r + eps), md / (rd + eps)
        big = u.abs() >= 0.01 * u.abs().max()
        eu.append(((ud - u).abs() / u.abs())[big])
        pos = v > 0
        nonzero += int(pos.sum())
        floor += int((pos & (r < smax / 510)).sum())
        vmax = _block_max(v, block)
        naive += int((pos & (torch.round(v * 255 / vmax) == 0)).sum())
    em, er, eu = torch.cat(em), torch.cat(er), torch.cat(eu)
    return {"block": block, "m max": float(em.max()), "sqrt(v) max": float(er.max()),
            "update median": float(eu.median()), "update p99": float(torch.quantile(eu.float(), 0.99)),
            "v at floor": floor / nonzero, "naive zeros": naive / nonzero}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.quant_error", description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--blocks", default="64,256,1024")
    args = ap.parse_args(argv)
    moments = adam_moments(args.steps)
    n = sum(m.numel() for m, _ in moments)
    print(f"int8 moment code on fp32 AdamW moments after {args.steps} steps ({n:,} elements of 2-d tensors)")
    print("| block | m: max err / block max | sqrt(v): max err / block max | update rel err median | p99 "
          "| v at code-1 floor | naive linear-v code: zeros |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for block in (int(b) for b in args.blocks.split(",")):
        r = measure(block, moments)
        print(f"| {block} | {r['m max']:.2e} | {r['sqrt(v) max']:.2e} | {r['update median']:.2e} | "
              f"{r['update p99']:.2e} | {100 * r['v at floor']:.3f}% | {100 * r['naive zeros']:.3f}% |")


if __name__ == "__main__":
    main()
