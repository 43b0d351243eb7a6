"""Code that runs in the 2 gloo processes ``tests/test_release.py`` spawns: gradient release under FSDP2.

Each case trains ``dist_workers.Net`` (uneven shards: 17 rows on 2 ranks; the head's shards are empty on
rank 1) under ``fully_shard`` twice, from the same start on the same data: once with ``opt.step()``, once
with :func:`lrsched_fused.release.attach`. With ``accum > 1`` every step is ``accum`` micro-batches and
all but the last run under ``set_requires_gradient_sync(False)`` (no reduce-scatter: the gradient hooks
do not fire on them, so release must count backward passes, not hook calls). Per run it records the
full parameters, the clock, and the ``dist.all_reduce`` calls of each training step (FSDP2 itself
issues none on a 1-d mesh: what is logged are LAMB's per-bucket norm all-reduces, issued inside backward).
Kept importable without pytest (spawned processes import it); spawning reuses ``dist_workers.spawn``.
"""

from __future__ import annotations

import contextlib
import traceback

import torch
import torch.distributed as dist

from dist_workers import BATCH, STEPS, full_params, make_net

from lrsched_fused import FusedAdamW, FusedLAMB, release, schedules as S

#: gradient bytes per bucket: Net's 8 tensors (global sizes) fall into 3 buckets, each with sharded tensors
BUCKET_BYTES = 200

CASES = {
    "adamw": (lambda m: FusedAdamW(m.parameters(), lr=2e-2, weight_decay=0.1), 1),
    "adamw-schedule-accum2": (lambda m: FusedAdamW(m.parameters(), lr=S.wsd(peak_lr=3e-2, total_steps=STEPS,
                                                                          warmup_steps=2, decay_steps=4)), 2),
    "lamb": (lambda m: FusedLAMB(m.parameters(), lr=2e-2, weight_decay=0.1), 1),
    "lamb-schedule-accum3": (lambda m: FusedLAMB(m.parameters(), lr=S.cosine(peak_lr=3e-2, total_steps=STEPS,
                                                                            warmup_steps=3), weight_decay=0.1), 3),
}


@contextlib.contextmanager
def log_allreduces(log: list):
    """Append ``(numel, op, group size)`` of every ``dist.all_reduce`` issued inside the block to ``log``."""
    orig = dist.all_reduce

    def all_reduce(tensor, op=dist.ReduceOp.SUM, group=None, async_op=False):
        log.append((tensor.numel(), str(op).rsplit(".", 1)[-1], dist.get_world_size(group)))
        return orig(tensor, op=op, group=group, async_op=async_op)

    dist.all_reduce = all_reduce
    try:
        yield log
    finally:
        dist.all_reduce = orig


def micro_batches(accum: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(4321)
    return [(torch.randn(BATCH, 8, generator=g), torch.randn(BATCH, 1, generator=g)) for _ in range(STEPS * accum)]


def train(rank: int, world: int, mesh, name: str, use_release: bool) -> dict:
    from torch.distributed.fsdp import fully_shard

    make, accum = CASES[name]
    model = make_net()
    fully_shard(model.fc1, mesh=mesh)
    fully_shard(model.fc2, mesh=mesh)
    fully_shard(model, mesh=mesh)
    opt = make(model)
    data = micro_batches(accum)
    fired = [0]  # gradient hooks that ran (registered before release's own)
    for p in model.parameters():
        p.register_post_accumulate_grad_hook(lambda _p: fired.__setitem__(0, fired[0] + 1))
    handle = release.attach(model, opt, bucket_bytes=BUCKET_BYTES, accumulation_steps=accum) if use_release else None
    allreduces, grads_left, hooks_per_micro = [], [], []
    for step in range(STEPS):
        log: list = []
        with log_allreduces(log):
            for micro in range(accum):
                x, y = data[step * accum + micro]
                model.set_requires_gradient_sync(micro == accum - 1)
                before = fired[0]
                ((model(x[rank::world]) - y[rank::world]) ** 2).mean().backward()
                hooks_per_micro.append(fired[0] - before)
            if handle is None:
                opt.step()
                opt.zero_grad(set_to_none=True)
        allreduces.append(log)
        grads_left.append(sum(p.grad is not None for p in model.parameters()))
    out = {"params": full_params(model), "clock": opt.clock.clone(), "allreduces": allreduces,
           "grads_left": grads_left, "hooks_per_micro": hooks_per_micro,
           "local_numel": {n: p.to_local().numel() for n, p in model.named_parameters()}}
    if handle is not None:
        out["buckets"] = [len(b.params) for b in handle.buckets]
        handle.detach()
    return out


def release_fsdp_worker(rank: int, world: int, workdir: str, names: list[str]) -> dict:
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (world,))
    out = {}
    for name in names:
        for use_release in (False, True):
            key = (name, "release" if use_release else "step")
            try:
                out[key] = train(rank, world, mesh, name, use_release)
            except Exception:  # noqa: BLE001 - reported by the test of this case
                out[key] = {"error": traceback.format_exc()}
            dist.barrier()
    return out
