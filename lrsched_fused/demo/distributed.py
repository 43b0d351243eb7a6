"""The demo across processes: data parallel with DDP or FSDP2 over gloo on CPU, started by ``torchrun``.

``torchrun --nproc-per-node 2 -m lrsched_fused demo --distributed fsdp`` (or ``ddp``) trains the same model
on the same data as the single-process demo, split across the processes:

* **same initialisation**: every rank builds the model from the same seed (no broadcast is needed; DDP's
  construction-time broadcast then copies identical values);
* **same global batch and data order**: step ``k`` uses the same ``batch_size`` windows as the single
  process; rank ``r`` of ``W`` takes rows ``[r * B/W, (r + 1) * B/W)`` of it (``BatchStream`` with
  ``shard=r, num_shards=W``), so ``batch_size`` must be divisible by ``W``; validation batches are split
  the same way;
* **same gradient**: the loss on each rank is the mean over its ``B/W`` windows; DDP (all-reduce) and FSDP2
  (reduce-scatter) average the gradients over the ``W`` ranks, which gives the gradient of the mean over
  all ``B`` windows, i.e. the single-process gradient up to floating-point summation order;
* **logged loss**: the all-reduced mean of the ranks' losses (equal shard sizes, so it is the loss of the
  global batch); validation losses likewise, and every rank runs the validation forward passes (FSDP2
  all-gathers parameters inside them).

Wrapping follows the usual recipes. FSDP2 (``torch.distributed.fsdp.fully_shard``): each transformer block,
then the root (embeddings and final norm), on a 1-d CPU mesh of all ranks; the optimizer is then created on
the root's ``parameters()``, which are ``DTensor`` shards (``Shard(0)``), so FusedLAMB reduces its per-tensor
norms across ranks (one all-reduce per step) and torch AdamW runs on DTensors. DDP
(``DistributedDataParallel``): the optimizer is created on ``ddp.module.parameters()``. In both, the loss
goes through the wrapper's ``__call__`` (FSDP2's root gathers parameters in its pre-forward hook; DDP
averages gradients only for a forward through ``ddp(x)``).

Threads: each process runs ``torch.set_num_threads(T)`` with ``T = max(1, cores // LOCAL_WORLD_SIZE)``
(:func:`default_threads`; ``cores`` is the CPU affinity of the process), so ``W`` processes on one machine
do not oversubscribe it: 1 thread per process for 2 processes on 2 cores. ``--threads`` overrides it.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["MODES", "DistEnv", "torchrun_env", "usable_cores", "default_threads", "init", "shutdown", "wrap",
           "unwrap", "mean_over_ranks", "local_numel", "describe"]

#: ``--distributed`` values.
MODES = ("ddp", "fsdp")

#: environment variables ``torchrun`` sets in every worker.
_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job."""

    mode: str
    rank: int
    world_size: int
    local_world_size: int

    @property
    def is_main(self) -> bool:
        """Rank 0 prints, writes the outputs and draws the figure; the other ranks only train."""
        return self.rank == 0


def torchrun_env() -> dict[str, str]:
    """The ``torchrun`` variables of this process; ``ValueError`` naming the missing ones when it was not
    started by ``torchrun`` (or ``python -m torch.distributed.run``)."""
    missing = [v for v in _TORCHRUN_VARS if v not in os.environ]
    if missing:
        raise ValueError("--distributed needs the environment torchrun sets up (missing: " + ", ".join(missing)
                         + "); start it as `torchrun --nproc-per-node 2 -m lrsched_fused demo --distributed fsdp`")
    return {v: os.environ[v] for v in _TORCHRUN_VARS}


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_threads(local_world_size: int) -> int:
    """Threads per process when ``local_world_size`` processes share this machine's cores (at least 1)."""
    return max(1, usable_cores() // max(1, local_world_size))


def init(mode: str) -> tuple[DistEnv, bool]:
    """Join the job: ``(DistEnv, created)``. Initialises the gloo process group from the ``torchrun``
    environment (``env://``) unless one exists already (then ``created`` is False and it is left alone)."""
    if mode not in MODES:
        raise ValueError(f"distributed must be one of {', '.join(MODES)}; got {mode!r}")
    if not dist.is_available():
        raise ValueError("--distributed needs torch.distributed, which this torch build lacks")
    created = False
    if dist.is_initialized():
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", dist.get_world_size()))
    else:
        env = torchrun_env()
        local_world = int(env["LOCAL_WORLD_SIZE"])
        dist.init_process_group("gloo")
        created = True
    if dist.get_backend() != "gloo":
        raise ValueError(f"the distributed demo runs on CPU with gloo; the process group uses {dist.get_backend()!r}")
    return DistEnv(mode=mode, rank=dist.get_rank(), world_size=dist.get_world_size(),
                   local_world_size=local_world), created


def shutdown() -> None:
    """``gc.collect()``, then ``dist.destroy_process_group()`` if a group is up.

    The collect comes first on purpose: an FSDP2-wrapped model is kept alive by reference cycles (its
    hooks), and with it the gloo process group. Left to interpreter shutdown, a gloo worker thread of
    torch 2.13 may release the last collective's tensors while the interpreter exits and abort the process
    ("terminate called without an active exception": 1 run in 10 of the quick FSDP2 demo, 4 in 16 of a
    minimal FSDP2 script); collected while the interpreter is alive, it never did (0 in 48).
    """
    gc.collect()
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, env: DistEnv) -> torch.nn.Module:
    """``model`` (a :class:`~lrsched_fused.demo.model.TinyCausalLM`) ready for data-parallel training.

    ``fsdp``: ``fully_shard`` on every block, then on the root, in place (the returned module is ``model``,
    its parameters now ``DTensor`` shards). ``ddp``: ``DistributedDataParallel(model)``.
    """
    if env.mode == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (env.world_size,))
        for block in model.blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model)


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The module whose parameters the optimizer updates: ``ddp.module`` for DDP, the (sharded) root for
    FSDP2 and a plain module."""
    from torch.nn.parallel import DistributedDataParallel

    return module.module if isinstance(module, DistributedDataParallel) else module


def mean_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """The mean of ``t`` over all ranks (a new tensor; ``all_reduce(SUM) / world_size``, as gloo has no AVG)."""
    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


def local_numel(module: torch.nn.Module) -> int:
    """Parameter elements stored on this rank (a ``DTensor`` counts its local shard)."""
    return sum((p.to_local() if hasattr(p, "to_local") else p).numel() for p in module.parameters())


def describe(env: DistEnv, threads: int) -> str:
    how = ("FSDP2: fully_shard per block, then the root; parameters and optimizer state sharded"
           if env.mode == "fsdp" else "DDP: replicated parameters, gradients all-reduced")
    return (f"distributed: {env.mode} over {env.world_size} processes (gloo on CPU, {threads} thread(s) each); "
            f"{how}")
