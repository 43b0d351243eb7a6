"""Bytes per parameter of each state configuration, measured: ``optimizer.state_bytes()`` sums the ``nbytes``
of the real tensors after one step (parameters, gradients, moments, int8 block scales, master weights or
compact corrections). The README's and ``docs/compressed_state.md``'s memory tables come from here.

    python -m bench.memory                        # 8 x (1024 x 1024) weights + 8 x 1024 biases, a few seconds
    python -m bench.memory --rows 4096 --layers 4 --csv bench/results/memory.csv

1-d parameters (biases, norms) keep floating moments (``quant_min_numel``, ``docs/compressed_state.md``), so
the int8 rows carry them at their small share. The optimizer is AdamW; LAMB keeps the same state.
"""

from __future__ import annotations

import argparse

import torch

from lrsched_fused import FusedAdamW

from .report import print_rows

#: (name, parameter dtype, FusedAdamW storage options)
CONFIGS = [
    ("fp32 params, fp32 moments (= torch AdamW)", torch.float32, {}),
    ("fp32 params, bf16 moments", torch.float32, dict(state_dtype=torch.bfloat16)),
    ("fp32 params, int8 moments", torch.float32, dict(state_dtype="int8")),
    ("bf16 params + fp32 masters, fp32 moments (mixed precision)", torch.bfloat16, dict(master_weights=True)),
    ("bf16 params + fp32 masters, bf16 moments", torch.bfloat16, dict(master_weights=True, state_dtype=torch.bfloat16)),
    ("bf16 params + fp32 masters, int8 moments", torch.bfloat16, dict(master_weights=True, state_dtype="int8")),
    ("bf16 params + compact16 masters, int8 moments", torch.bfloat16,
     dict(master_weights="compact", master_bits=16, state_dtype="int8")),
    ("bf16 params + compact8 masters, bf16 moments", torch.bfloat16,
     dict(master_weights="compact", state_dtype=torch.bfloat16)),
    ("bf16 params + compact8 masters, int8 moments", torch.bfloat16, dict(master_weights="compact", state_dtype="int8")),
    ("bf16 params, fp32 moments, no master", torch.bfloat16, {}),
    ("bf16 params, bf16 moments, no master", torch.bfloat16, dict(state_dtype=torch.bfloat16)),
    ("bf16 params, int8 moments, no master", torch.bfloat16, dict(state_dtype="int8")),
]
COLUMNS = ("configuration", "numel", "params", "grads", "moments", "scales", "master", "other", "without_grads")


def measure(rows: int, cols: int, layers: int, backend: str) -> list[dict]:
    """One row per configuration: bytes per parameter by category, after one step."""
    out = []
    for name, dtype, options in CONFIGS:
        gen = torch.Generator().manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(rows, cols, generator=gen).to(dtype)) for _ in range(layers)]
        params += [torch.nn.Parameter(torch.randn(rows, generator=gen).to(dtype)) for _ in range(layers)]
        opt = FusedAdamW(params, lr=1e-3, backend=backend, **options)
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen).to(dtype)
        opt.step()
        got = opt.state_bytes()
        n = got["numel"]
        out.append({"configuration": name, "numel": n, **{k: got[k] / n for k in COLUMNS[2:8]},
                    "without_grads": got["per_param_without_grads"]})
    return out


def markdown(rows: list[dict]) -> str:
    lines = ["| configuration | params | moments | scales | master | total w/o grads | grads |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['configuration']} | {r['params']:.2f} | {r['moments']:.2f} | {r['scales']:.3f} | "
                     f"{r['master']:.2f} | **{r['without_grads']:.2f}** | {r['grads']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--cols", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--csv", default=None, help="also append the rows to this CSV")
    args = ap.parse_args(argv)
    rows = measure(args.rows, args.cols, args.layers, args.backend)
    print(f"bytes per parameter, measured by optimizer.state_bytes() ({rows[0]['numel']:,} parameters)")
    print_rows(markdown(rows), rows, args.csv, COLUMNS)


if __name__ == "__main__":
    main()
