"""FusedLAMB with a warmup-stable-decay schedule on an FSDP2-sharded model, with a sharded checkpoint.

    torchrun --nproc-per-node 2 examples/fsdp2_lamb.py                 # train, checkpoint halfway
    torchrun --nproc-per-node 2 examples/fsdp2_lamb.py --resume        # reload that checkpoint, finish
    python examples/fsdp2_lamb.py                                      # the same, in one process

CPU only (gloo). Without torchrun's environment the script forms a 1-process group itself (an in-memory
store, no port), so the code path is the same: FSDP2 over a mesh of one rank.

Each step uses one global batch of GLOBAL_BATCH rows; rank r of W trains on its contiguous slice of
GLOBAL_BATCH / W rows, and FSDP2 averages the gradients over ranks, so the update is that of the whole
batch. The printed losses are averaged over ranks; rank 0 prints.
"""

import argparse
import gc
import os
import tempfile

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from lrsched_fused import FusedLAMB, param_groups, schedules as S

GLOBAL_BATCH, IN, WIDTH, DEPTH = 32, 16, 64, 3
TEACHER = torch.randn(IN, 1, generator=torch.Generator().manual_seed(7)) / IN ** 0.5


class Block(torch.nn.Module):
    """Pre-norm residual MLP block (the feed-forward half of a transformer layer)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = torch.nn.LayerNorm(width)
        self.up = torch.nn.Linear(width, 4 * width)
        self.down = torch.nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(torch.nn.functional.gelu(self.up(self.norm(x))))


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Linear(IN, WIDTH)
        self.blocks = torch.nn.ModuleList(Block(WIDTH) for _ in range(DEPTH))
        self.norm = torch.nn.LayerNorm(WIDTH)
        self.head = torch.nn.Linear(WIDTH, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same batch for a given step on every rank and in every run (so a resumed run sees the same data)."""
    g = torch.Generator().manual_seed(10_000 + step)
    x = torch.randn(GLOBAL_BATCH, IN, generator=g)
    return x, torch.tanh(x @ TEACHER)  # a fixed smooth target the model can learn


def my_rows(t: torch.Tensor) -> torch.Tensor:
    rank, world = dist.get_rank(), dist.get_world_size()
    n = GLOBAL_BATCH // world
    return t[rank * n:(rank + 1) * n]


def mean_over_ranks(value: torch.Tensor) -> float:
    value = value.detach().clone()
    dist.all_reduce(value)  # SUM (gloo has no AVG)
    return float(value) / dist.get_world_size()


def build(steps: int) -> tuple[Net, FusedLAMB]:
    torch.manual_seed(0)  # the same initial weights on every rank
    model = Net()
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for block in model.blocks:  # one FSDP unit per block, then the root (embed, final norm, head)
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    # Parameters are now DTensor shards; FusedLAMB all-reduces its per-tensor norms (trust ratios and the
    # global gradient norm for max_grad_norm) so that they are whole-tensor values on every rank.
    # param_groups: no weight decay and no trust ratio for biases and LayerNorm weights.
    schedule = S.wsd(peak_lr=2e-2, total_steps=steps, warmup_steps=max(1, steps // 10), decay_fraction=0.3)
    opt = FusedLAMB(param_groups(model, weight_decay=0.01), lr=schedule, max_grad_norm=1.0)
    return model, opt


def trust_summary(opt: FusedLAMB) -> str:
    tel = opt.telemetry()  # device tensors from the last step (no sync until printed)
    adapted = {id(p) for g in opt.param_groups if g["adapt"] for p in g["params"]}
    rows = [i for i, p in enumerate(tel["params"]) if id(p) in adapted]
    ratios = tel["trust_ratio"][rows]
    return (f"trust ratio min/mean/max {ratios.min():.3f}/{ratios.mean():.3f}/{ratios.max():.3f} "
            f"over {len(rows)} tensors, grad norm {float(tel['grad_norm']):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="total updates (the schedule's length)")
    parser.add_argument("--save-at", type=int, default=None, help="checkpoint after this many updates "
                        "(default steps // 2; 0: never)")
    parser.add_argument("--ckpt", default=os.path.join(tempfile.gettempdir(), "fsdp2_lamb_ckpt"),
                        help="checkpoint directory (default: %(default)s)")
    parser.add_argument("--resume", action="store_true", help="load --ckpt and continue to --steps")
    parser.add_argument("--log-every", type=int, default=5)
    args = parser.parse_args()
    save_at = args.steps // 2 if args.save_at is None else args.save_at

    if "RANK" in os.environ:  # started by torchrun: it set RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT
        dist.init_process_group("gloo")
    else:  # plain `python`: a group of one process
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    train(args, save_at)
    # The FSDP2 model is garbage (reference cycles through its hooks) once train() returns: collect it now,
    # while the interpreter is fully alive. Left to interpreter shutdown, a gloo worker thread of torch 2.13
    # may release the last collective's tensors then and abort the process ("terminate called without an
    # active exception"; 4 runs in 16 of a minimal FSDP2 script, 0 in 48 with this collect).
    gc.collect()
    dist.destroy_process_group()


def train(args: argparse.Namespace, save_at: int) -> None:
    if GLOBAL_BATCH % dist.get_world_size():
        raise SystemExit(f"the world size must divide GLOBAL_BATCH={GLOBAL_BATCH}")
    main_rank = dist.get_rank() == 0

    model, opt = build(args.steps)
    start = 0
    if args.resume:
        # get_state_dict gives (sharded) state dicts of the right structure, dcp.load fills them in place
        # from every rank's shards, set_state_dict puts them back (moments, schedule and clock included).
        # On this fresh optimizer DCP first runs a state-creating step(); FusedLAMB recognises it and leaves
        # the weights and the clock alone. The checkpoint may come from another world size (resharding).
        model_sd, optim_sd = get_state_dict(model, opt)
        dcp.load({"model": model_sd, "optim": optim_sd}, checkpoint_id=args.ckpt)
        set_state_dict(model, opt, model_state_dict=model_sd, optim_state_dict=optim_sd)
        start = int(opt.clock[0])  # updates already applied
        if main_rank:
            print(f"resumed from {args.ckpt} at step {start}")
    elif main_rank:
        print(f"{dist.get_world_size()} process(es), {GLOBAL_BATCH // dist.get_world_size()} rows each")

    for step in range(start, args.steps):
        x, y = global_batch(step)
        loss = torch.nn.functional.mse_loss(model(my_rows(x)), my_rows(y))
        loss.backward()
        opt.step()  # lr = wsd(clock): no scheduler to step, nothing to set on the param groups
        opt.zero_grad()
        done = step + 1
        loss = mean_over_ranks(loss)  # collective: every rank calls it
        if main_rank and (done % args.log_every == 0 or done in (1, args.steps)):
            print(f"step {done:4d}  loss {loss:.5f}  lr {opt.get_last_lr()[0]:.5f}  {trust_summary(opt)}")
        if done == save_at and not args.resume:
            model_sd, optim_sd = get_state_dict(model, opt)
            dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=args.ckpt)  # each rank its shards
            if main_rank:
                print(f"saved a sharded checkpoint at step {done} to {args.ckpt}")

    with torch.no_grad():  # the final weights on one held-out batch: identical for resumed and straight runs
        x, y = global_batch(-1)
        final = mean_over_ranks(torch.nn.functional.mse_loss(model(my_rows(x)), my_rows(y)))
    if main_rank:
        print(f"final eval loss {final!r}")


if __name__ == "__main__":
    main()
