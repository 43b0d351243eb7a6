"""Compressed state on the demo: final validation loss of AdamW and LAMB with WSD for each state
configuration (``docs/compressed_state.md``), against fp32 state, plus torchao's ``AdamW8bit`` where it runs.

    python -m bench.convergence                    # the demo's model and budget: ~1 min per run on 2 cores
    python -m bench.convergence --quick            # the demo's --quick model: seconds per run
    python -m bench.convergence --optimizers adamw --configs fp32,int8
    python -m bench.convergence --lr-scale 0.1      # smaller steps: where bf16 weights without masters stall

Every run starts from the same weights (``torch.manual_seed(seed)``) and sees the same batches. fp32 rows
train an fp32 model; bf16 rows cast the model to bf16 (forward, backward and parameters in bf16), so their
baseline is "bf16 + fp32 masters" (mixed precision), and "bf16 no-master" shows the gap the compact
masters close. The validation loss is evaluated with the trained weights cast to fp32 (a loss computed in
bf16 keeps 8 significant bits). Printed: final validation loss and its difference from the baseline of its parameter dtype.
The differences are for a note, not a test: run-to-run noise of a seed is ~1% (``docs/schedule_science.md``).
"""

from __future__ import annotations

import argparse
import warnings

import torch

from lrsched_fused import FusedAdamW, FusedLAMB, param_groups
from lrsched_fused.demo.data import BatchStream, load_corpus
from lrsched_fused.demo.model import ModelConfig, TinyCausalLM
from lrsched_fused.demo.recipes import Hyper, Recipe
from lrsched_fused.demo.run import QUICK
from lrsched_fused.demo.train import evaluate, train

#: name -> (parameter dtype, storage options); the first of each dtype is that dtype's baseline
CONFIGS = {
    "fp32": (torch.float32, {}),
    "int8": (torch.float32, dict(state_dtype="int8")),
    "torchao-8bit": (torch.float32, None),  # torchao.optim.AdamW8bit (AdamW only)
    "bf16+fp32 master": (torch.bfloat16, dict(master_weights=True)),
    "bf16+compact8": (torch.bfloat16, dict(master_weights="compact")),
    "bf16+compact8+int8": (torch.bfloat16, dict(master_weights="compact", state_dtype="int8")),
    "bf16+compact16+int8": (torch.bfloat16, dict(master_weights="compact", master_bits=16, state_dtype="int8")),
    "bf16 no-master": (torch.bfloat16, {}),
    "bf16 no-master SR": (torch.bfloat16, dict(stochastic_rounding=True, state_dtype=torch.bfloat16)),
}


def _recipe(optimizer: str, config: str, hyper: Hyper, lr_scale: float = 1.0):
    dtype, options = CONFIGS[config]
    peak = lr_scale * (hyper.lamb_lr if optimizer == "lamb" else hyper.adamw_lr)
    decay = hyper.lamb_weight_decay if optimizer == "lamb" else hyper.adamw_weight_decay
    schedule = Hyper(**{**hyper.__dict__, "lamb_lr": peak}).wsd()

    def make(model: torch.nn.Module) -> Recipe:
        groups = param_groups(model, weight_decay=decay)
        if options is None:
            from torchao.optim import AdamW8bit

            opt = AdamW8bit(groups, lr=peak, betas=hyper.betas, eps=1e-8)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: schedule(t) / peak)
            return Recipe(config, opt, sched, lambda: opt.param_groups[0]["lr"], schedule, lambda: "torchao")
        cls = FusedLAMB if optimizer == "lamb" else FusedAdamW
        opt = cls(groups, lr=schedule, betas=hyper.betas, eps=1e-6 if optimizer == "lamb" else 1e-8, **options)
        return Recipe(config, opt, None, lambda: opt.telemetry()["lr"][0].clone(), schedule, lambda: "ours")

    return make, dtype


def run(optimizer: str, config: str, *, quick: bool, seed: int = 0, lr_scale: float = 1.0) -> float:
    model_cfg = QUICK["model"] if quick else ModelConfig()
    hyper = Hyper(steps=QUICK["steps"], warmup=QUICK["warmup"]) if quick else Hyper()
    batch = QUICK["batch_size"] if quick else 64
    corpus = load_corpus(None, max_bytes=QUICK["max_bytes"] if quick else 4_000_000, context=model_cfg.context)
    stream = BatchStream(corpus.train, batch, model_cfg.context, seed=seed)
    val_stream = BatchStream(corpus.val, batch, model_cfg.context, seed=seed + 1)
    val = [val_stream.batch(i, torch.device("cpu")) for i in range(QUICK["val_batches"] if quick else 8)]
    make, dtype = _recipe(optimizer, config, hyper, lr_scale)
    torch.manual_seed(seed)
    model = TinyCausalLM(model_cfg).to(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train(model, make, stream, hyper.steps, val_batches=val)
    return evaluate(model.float(), val)  # in float32 for every dtype (a bf16 loss has 8 bits)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.convergence", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--optimizers", default="adamw,lamb")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr-scale", type=float, default=1.0, help="multiply the demo's peak lr (default 1)")
    args = ap.parse_args(argv)
    if not args.lr_scale > 0:
        raise SystemExit(f"--lr-scale must be > 0; got {args.lr_scale}")
    configs = [c.strip() for c in args.configs.split(",")]
    for name in configs:
        if name not in CONFIGS:
            raise SystemExit(f"--configs: unknown {name!r}; choose from {', '.join(CONFIGS)}")
    print("| optimizer | state | final val loss | vs baseline of its dtype |")
    print("|---|---|---:|---:|")
    for optimizer in args.optimizers.split(","):
        base: dict[torch.dtype, float] = {}
        for name in configs:
            dtype, options = CONFIGS[name]
            if options is None and optimizer != "adamw":
                continue
            loss = run(optimizer, name, quick=args.quick, seed=args.seed, lr_scale=args.lr_scale)
            base.setdefault(dtype, loss)
            print(f"| {optimizer} | {name} | {loss:.4f} | {100 * (loss / base[dtype] - 1):+.2f}% |", flush=True)


if __name__ == "__main__":
    main()
