"""Code that runs in the processes ``tests/test_distributed.py`` spawns (gloo on CPU), and the single-process
runs it is compared with. Kept importable (no pytest) so ``torch.multiprocessing`` spawn can load it.

A *scenario* is one optimizer configuration trained for ``STEPS`` steps on :class:`Net` with a fixed data
stream. Each rank trains on its half of every batch (rows ``rank::world``); FSDP2 and DDP average the
gradients, so the sharded run sees the single-process full-batch gradient up to summation order.
"""

from __future__ import annotations

import contextlib
import gc
import os
import time
import traceback
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lrsched_fused import schedules as S
from lrsched_fused.optim import FusedAdamW, FusedLAMB, param_groups

STEPS = 10
BATCH = 8
WORLD = 2
#: element of Net.fc1.weight's gradient made inf by the ``skip_nonfinite`` scenario at step INF_STEP:
#: global row 16 is the last row of rank 1's shard (rows 9..16 of 17) under FSDP2 on 2 ranks
INF_STEP, INF_ROW = 5, 16


class Net(torch.nn.Module):
    """Shapes chosen for sharding on 2 ranks: fc1 (17 rows: 9/8, uneven), norm (17: uneven 1-d),
    fc2 (3 rows: 2/1), head (1 row: rank 1's shards of weight and bias are empty)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(8, 17)
        self.norm = torch.nn.LayerNorm(17)
        self.fc2 = torch.nn.Linear(17, 3)
        self.head = torch.nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.fc2(torch.tanh(self.norm(self.fc1(x))))))


def make_net(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    net = Net()
    with torch.no_grad():  # LayerNorm starts at (1, 0); give it something to learn and decay
        net.norm.weight.add_(0.1 * torch.randn(17))
        net.norm.bias.add_(0.1 * torch.randn(17))
    return net


def batches(steps: int = STEPS) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1234)
    return [(torch.randn(BATCH, 8, generator=g), torch.randn(BATCH, 1, generator=g)) for _ in range(steps)]


# ------------------------------------------------------------------------------------------------------
# scenarios
# ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scenario:
    name: str
    make: Callable[[torch.nn.Module, str], torch.optim.Optimizer]
    #: all-reduces per step() under FSDP2 on one mesh dimension (the documented contract)
    fsdp_allreduces: int
    inject_inf: bool = False
    tokens: int | None = None   # tokens passed to step() (token-clock schedules)
    dtype: torch.dtype = torch.float32  # of the model, its inputs and targets


def _lamb(**kw):
    return lambda model, backend: FusedLAMB(model.parameters(), backend=backend, **kw)


def _lamb_groups(**kw):
    return lambda model, backend: FusedLAMB(param_groups(model, 0.1), backend=backend, **kw)


def _adamw(**kw):
    return lambda model, backend: FusedAdamW(model.parameters(), backend=backend, **kw)


SCENARIOS = {s.name: s for s in [
    Scenario("lamb", _lamb(lr=2e-2, weight_decay=0.1), fsdp_allreduces=1),
    Scenario("lamb-clip", _lamb(lr=2e-2, weight_decay=0.1, max_grad_norm=0.05), fsdp_allreduces=2),
    Scenario("lamb-schedule-groups-clip",
             _lamb_groups(lr=S.cosine(peak_lr=3e-2, total_steps=STEPS, warmup_steps=3), trust_clip=(0.05, 5.0),
                          max_grad_norm=0.05), fsdp_allreduces=2),
    Scenario("lamb-decoupled-skip-nonfinite",
             _lamb(lr=2e-2, weight_decay=0.1, decoupled_decay=True, skip_nonfinite=True), fsdp_allreduces=2,
             inject_inf=True),
    Scenario("adamw", _adamw(lr=2e-2, weight_decay=0.1), fsdp_allreduces=0),
    Scenario("adamw-schedule-amsgrad",
             _adamw(lr=S.wsd(peak_lr=3e-2, total_steps=STEPS, warmup_steps=2, decay_steps=4), amsgrad=True),
             fsdp_allreduces=0),
    Scenario("adamw-skip-nonfinite", _adamw(lr=2e-2, skip_nonfinite=True), fsdp_allreduces=1, inject_inf=True),
]}

#: scenarios of the checkpoint test: a schedule (the clock matters) and global clipping
CHECKPOINT_SCENARIOS = {s.name: s for s in [
    Scenario("lamb-schedule-clip",
             _lamb_groups(lr=S.cosine(peak_lr=3e-2, total_steps=STEPS, warmup_steps=3), max_grad_norm=0.05),
             fsdp_allreduces=2),
    Scenario("adamw-schedule", _adamw(lr=S.wsd(peak_lr=3e-2, total_steps=STEPS, warmup_steps=2, decay_steps=4)),
             fsdp_allreduces=0),
    Scenario("lamb-token-schedule",
             _lamb(lr=S.power(max_lr=3e-2, a=0.5, b=-0.5, total=STEPS * 64, warmup=64, unit="tokens")),
             fsdp_allreduces=1, tokens=64),
    # compressed state (docs/compressed_state.md): int8 blocks run along rows, which FSDP2 shards (Shard(0))
    Scenario("adamw-int8", _adamw(lr=S.wsd(peak_lr=3e-2, total_steps=STEPS, warmup_steps=2, decay_steps=4),
                                  state_dtype="int8", quant_min_numel=1), fsdp_allreduces=0),
    Scenario("lamb-int8-clip", _lamb_groups(lr=S.cosine(peak_lr=3e-2, total_steps=STEPS, warmup_steps=3),
                                            max_grad_norm=0.05, state_dtype="int8", quant_min_numel=1),
             fsdp_allreduces=2),
    Scenario("adamw-bf16-compact-sr",
             _adamw(lr=S.wsd(peak_lr=3e-2, total_steps=STEPS, warmup_steps=2, decay_steps=4),
                    state_dtype=torch.bfloat16, master_weights="compact", stochastic_rounding=True),
             fsdp_allreduces=0, dtype=torch.bfloat16),
]}


# ------------------------------------------------------------------------------------------------------
# training loop, shared by the single-process reference and the ranks
# ------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def count_collectives(log: list):
    """Record every c10d collective issued inside the block (``CommDebugMode``, which sees all of them) and,
    for ``dist.all_reduce``, its element count, op and group size (appended to ``log``)."""
    from torch.distributed.tensor.debug import CommDebugMode

    orig = dist.all_reduce

    def all_reduce(tensor, op=dist.ReduceOp.SUM, group=None, async_op=False):
        log.append((tensor.numel(), str(op).rsplit(".", 1)[-1], dist.get_world_size(group)))
        return orig(tensor, op=op, group=group, async_op=async_op)

    dist.all_reduce = all_reduce
    try:
        with CommDebugMode() as mode:
            yield mode
    finally:
        dist.all_reduce = orig


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def _inject_inf(model: torch.nn.Module, rank: int | None, mode: str) -> None:
    """Make one gradient element inf: the full-tensor element (INF_ROW, 0) of fc1.weight, on the rank that
    holds it (FSDP2: rank 1 only; DDP / single process: every rank, as after an averaging all-reduce)."""
    g = getattr(model, "module", model).fc1.weight.grad
    if mode == "fsdp":
        if rank == 1:
            _local(g)[-1, 0] = float("inf")
    else:
        g[INF_ROW, 0] = float("inf")


def train(model: torch.nn.Module, opt: torch.optim.Optimizer, scenario: Scenario, steps: range, *,
          rank: int | None = None, world: int = 1, mode: str = "single", counts: list | None = None) -> list[float]:
    """Run ``steps`` (indices into :func:`batches`); return the local losses. With ``counts``, append per step
    ``(CommDebugMode total, [(numel, op, group size) of each all_reduce])`` of ``opt.step()`` alone."""
    data = batches()
    losses = []
    for i in steps:
        x, y = (t.to(scenario.dtype) for t in data[i])
        if rank is not None:
            x, y = x[rank::world], y[rank::world]
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        if scenario.inject_inf and i == INF_STEP:
            _inject_inf(model, rank, mode)
        kwargs = {"tokens": scenario.tokens} if scenario.tokens is not None else {}
        if counts is None:
            opt.step(**kwargs)
        else:
            log: list = []
            with count_collectives(log) as cm:
                opt.step(**kwargs)
            counts.append((cm.get_total_counts(), log))
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    return losses


def telemetry_snapshot(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    tel = opt.telemetry()
    return {k: v.detach().clone() for k, v in tel.items() if isinstance(v, torch.Tensor)}


def full_params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in model.named_parameters():
        name = name.replace("module.", "", 1) if name.startswith("module.") else name
        out[name] = (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
    return out


def full_state(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, dict[str, torch.Tensor]]:
    names = {id(p): n.replace("module.", "", 1) for n, p in model.named_parameters()}
    out = {}
    for p, st in opt.state.items():
        out[names[id(p)]] = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone()
                             for k, v in st.items() if isinstance(v, torch.Tensor)}
    return out


def single_process_run(scenario: Scenario, backend: str) -> dict[str, Any]:
    """The unsharded reference: one process, the full batch, the same optimizer and backend."""
    model = make_net().to(scenario.dtype)
    opt = scenario.make(model, backend)
    losses = train(model, opt, scenario, range(STEPS))
    return {"params": full_params(model), "losses": losses, "telemetry": telemetry_snapshot(opt),
            "clock": opt.clock.clone(), "state": full_state(model, opt)}


# ------------------------------------------------------------------------------------------------------
# process management
# ------------------------------------------------------------------------------------------------------
def _entry(rank: int, world: int, workdir: str, fn: Callable, args: tuple) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{workdir}/rendezvous", rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))
    try:
        result = fn(rank, world, workdir, *args)
        torch.save(result, os.path.join(workdir, f"result-{rank}.pt"))
    finally:
        # free FSDP2 models (reference cycles) while the interpreter is alive: see
        # lrsched_fused.demo.distributed.shutdown for the gloo abort at exit this avoids
        gc.collect()
        dist.destroy_process_group()


def spawn(fn: Callable, workdir: str, *args, world: int = WORLD, timeout: float = 240.0) -> list[Any]:
    """Run ``fn(rank, world, workdir, *args)`` in ``world`` spawned processes joined by gloo; return each rank's
    result. A worker's exception is re-raised here; a hang is killed after ``timeout`` seconds."""
    ctx = mp.start_processes(_entry, args=(world, workdir, fn, args), nprocs=world, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.terminate()
            raise TimeoutError(f"distributed workers {fn.__name__} did not finish within {timeout} s")
    return [torch.load(os.path.join(workdir, f"result-{r}.pt"), weights_only=False) for r in range(world)]


def run_scenarios(cases: list[tuple[str, str]], body: Callable) -> dict:
    """Call ``body(scenario, backend)`` for each ``(backend, scenario name)``; record its result or its error
    (so one broken case fails only its own test). Ranks meet at a barrier before the next case."""
    out = {}
    for backend, name in cases:
        start = time.perf_counter()
        try:
            out[(backend, name)] = body(SCENARIOS.get(name) or CHECKPOINT_SCENARIOS[name], backend)
        except Exception:  # noqa: BLE001 - reported by the test of this case
            out[(backend, name)] = {"error": traceback.format_exc()}
        out[(backend, name)]["seconds"] = time.perf_counter() - start
        dist.barrier()
    return out


# ------------------------------------------------------------------------------------------------------
# workers
# ------------------------------------------------------------------------------------------------------
def fsdp_worker(rank: int, world: int, workdir: str, cases: list[tuple[str, str]]) -> dict:
    """FSDP2: ``fully_shard`` on fc1, fc2 and the root (which holds norm and head)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (world,))

    def body(scenario: Scenario, backend: str) -> dict:
        model = make_net()
        fully_shard(model.fc1, mesh=mesh)
        fully_shard(model.fc2, mesh=mesh)
        fully_shard(model, mesh=mesh)
        opt = scenario.make(model, backend)
        counts: list = []
        losses = train(model, opt, scenario, range(STEPS), rank=rank, world=world, mode="fsdp", counts=counts)
        shapes = {n: tuple(_local(p).shape) for n, p in model.named_parameters()}
        placements = {n: str(p.placements) for n, p in model.named_parameters()}
        return {"params": full_params(model), "losses": losses, "counts": counts, "telemetry": telemetry_snapshot(opt),
                "clock": opt.clock.clone(), "local_shapes": shapes, "placements": placements}

    return run_scenarios(cases, body)


def ddp_worker(rank: int, world: int, workdir: str, cases: list[tuple[str, str]]) -> dict:
    from torch.nn.parallel import DistributedDataParallel as DDP

    def body(scenario: Scenario, backend: str) -> dict:
        net = make_net()
        model = DDP(net)
        opt = scenario.make(net, backend)
        counts: list = []
        losses = train(model, opt, scenario, range(STEPS), rank=rank, world=world, mode="ddp", counts=counts)
        return {"params": full_params(net), "losses": losses, "counts": counts, "telemetry": telemetry_snapshot(opt),
                "clock": opt.clock.clone()}

    return run_scenarios(cases, body)


def hsdp_worker(rank: int, world: int, workdir: str, cases: list[tuple[str, str]]) -> dict:
    """HSDP: ``fully_shard`` on a 2-d (replicate, shard) mesh, as (1, 2) (one replica of two shards) and as
    (2, 1) (two replicas of one shard: no norm all-reduce)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    meshes = {shape: init_device_mesh("cpu", shape, mesh_dim_names=("replicate", "shard"))
              for shape in ((1, world), (world, 1))}
    out = {}
    for shape, mesh in meshes.items():
        def body(scenario: Scenario, backend: str, mesh=mesh) -> dict:
            model = make_net()
            fully_shard(model.fc1, mesh=mesh)
            fully_shard(model, mesh=mesh)
            opt = scenario.make(model, backend)
            counts: list = []
            # both mesh shapes put each rank's data on rows rank::world: FSDP averages over all ranks
            losses = train(model, opt, scenario, range(STEPS), rank=rank, world=world,
                           mode="fsdp" if shape[1] > 1 else "ddp", counts=counts)
            return {"params": full_params(model), "losses": losses, "counts": counts,
                    "telemetry": telemetry_snapshot(opt), "placements": str(model.fc1.weight.placements)}

        for key, value in run_scenarios(cases, body).items():
            out[key + (shape,)] = value
    return out


# -- explicit DTensors: placements that FSDP2 does not produce ---------------------------------------------
MIXED_SHAPES = {"a": (17, 5), "b": (6,), "c": (7, 3), "d": (1, 4), "plain": (5, 2)}


#: configurations of :func:`mixed_worker`: (tensor names, fp64 tensor names, max_grad_norm)
MIXED_CONFIGS = {
    # one bucket: Shard(0), Replicate, (Replicate, Shard(1)) on another mesh, an empty shard, a plain tensor
    "one-bucket": (("a", "b", "c", "d", "plain"), (), None),
    # the same with a global norm: refused (one total per bucket cannot be reduced for mixed shardings)
    "one-bucket-clip": (("a", "b", "c", "d", "plain"), (), 0.05),
    # two buckets, each sharded alike: fp32 Shard(0) (a, d) and fp64 whole tensors (b replicated, plain)
    "two-buckets-clip": (("a", "b", "d", "plain"), ("b", "plain"), 0.05),
}


def mixed_tensors(config: str, seed: int = 7) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Full-size params and ``STEPS`` gradients of ``config``, identical in every process."""
    names, fp64, _ = MIXED_CONFIGS[config]
    g = torch.Generator().manual_seed(seed)
    params = {n: torch.randn(*s, generator=g) for n, s in MIXED_SHAPES.items()}
    grads = [{n: 0.1 * torch.randn(*s, generator=g) for n, s in MIXED_SHAPES.items()} for _ in range(STEPS)]

    def cast(d):
        return {n: t.double() if n in fp64 else t for n, t in d.items() if n in names}

    return cast(params), [cast(gr) for gr in grads]


def mixed_single(backend: str, config: str) -> dict:
    params, grads = mixed_tensors(config)
    ps = {n: torch.nn.Parameter(t.clone()) for n, t in params.items()}
    opt = FusedLAMB(list(ps.values()), backend=backend, max_grad_norm=MIXED_CONFIGS[config][2])
    for i in range(STEPS):
        for n, p in ps.items():
            p.grad = grads[i][n].clone()
        opt.step()
    return {"params": {n: p.detach().clone() for n, p in ps.items()}, "telemetry": telemetry_snapshot(opt)}


def mixed_worker(rank: int, world: int, workdir: str, backends: list[str]) -> dict:
    """LAMB on explicit DTensors (:data:`MIXED_CONFIGS`): ``a`` Shard(0) on a 1-d mesh; ``b`` Replicate on
    it; ``c`` (Replicate, Shard(1)) on a 2-d (1, world) mesh; ``d`` Shard(0), empty on rank 1; ``plain`` a
    plain tensor. "one-bucket" expects 2 all-reduces per step (the 1-d mesh's dim 0 over rows a, d; the 2-d
    mesh's dim 1 over row c)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    mesh1 = init_device_mesh("cpu", (world,))
    mesh2 = init_device_mesh("cpu", (1, world))
    layout = {"a": (mesh1, [Shard(0)]), "b": (mesh1, [Replicate()]), "c": (mesh2, [Replicate(), Shard(1)]),
              "d": (mesh1, [Shard(0)])}

    def place(n: str, t: torch.Tensor) -> torch.Tensor:
        return distribute_tensor(t.clone(), *layout[n]) if n in layout else t.clone()

    out = {}
    for backend in backends:
        for config, (_, _, clip) in MIXED_CONFIGS.items():
            opt = None
            try:
                params, grads = mixed_tensors(config)
                ps = {n: torch.nn.Parameter(place(n, t)) for n, t in params.items()}
                opt = FusedLAMB(list(ps.values()), backend=backend, max_grad_norm=clip)
                counts: list = []
                for i in range(STEPS):
                    for n, p in ps.items():
                        p.grad = place(n, grads[i][n])
                    log: list = []
                    with count_collectives(log) as cm:
                        opt.step()
                    counts.append((cm.get_total_counts(), log))
                res = {"params": {n: (p.full_tensor() if n in layout else p).detach().clone() for n, p in ps.items()},
                       "telemetry": telemetry_snapshot(opt), "counts": counts,
                       "local_shapes": {n: tuple(_local(p).shape) for n, p in ps.items()}}
            except Exception as exc:  # noqa: BLE001 - the test checks which error
                res = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(),
                       "state_entries": None if opt is None else len(opt.state)}
            out[(backend, config)] = res
            dist.barrier()
    return out


# -- tensor parallel: Partial gradients of Replicate parameters ------------------------------------------
PARTIAL_SHAPES = {"w": (4, 3), "b": (5,)}


def partial_tensors(seed: int = 11) -> tuple[dict[str, torch.Tensor], list[list[dict[str, torch.Tensor]]]]:
    """Params and, per step, one gradient contribution per rank (``WORLD`` of them), identical in every process."""
    g = torch.Generator().manual_seed(seed)
    params = {n: torch.randn(*s, generator=g) for n, s in PARTIAL_SHAPES.items()}
    grads = [[{n: 0.1 * torch.randn(*s, generator=g) for n, s in PARTIAL_SHAPES.items()} for _ in range(WORLD)]
             for _ in range(STEPS)]
    return params, grads


def partial_single(kind: str, backend: str) -> dict:
    """The reference: plain tensors whose gradient is the sum of the ranks' contributions."""
    params, grads = partial_tensors()
    ps = {n: torch.nn.Parameter(t.clone()) for n, t in params.items()}
    opt = (FusedLAMB if kind == "lamb" else FusedAdamW)(list(ps.values()), lr=1e-2, backend=backend)
    for step in grads:
        for n, p in ps.items():
            p.grad = sum(contrib[n] for contrib in step)
        opt.step()
    return {n: p.detach().clone() for n, p in ps.items()}


def partial_worker(rank: int, world: int, workdir: str, cases: list[tuple[str, str]]) -> dict:
    """Replicate DTensor parameters whose gradients are ``Partial`` (tensor parallelism: e.g. the bias of a
    row-parallel linear layer): the optimizer must use the reduced gradient, as torch's AdamW does through
    DTensor's dispatch, not this rank's partial sum."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Partial, Replicate, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))

    def body(kind: str, backend: str) -> dict:
        params, grads = partial_tensors()
        ps = {n: torch.nn.Parameter(distribute_tensor(t.clone(), mesh, [Replicate()])) for n, t in params.items()}
        opt = (FusedLAMB if kind == "lamb" else FusedAdamW)(list(ps.values()), lr=1e-2, backend=backend)
        for step in grads:
            for n, p in ps.items():
                p.grad = DTensor.from_local(step[rank][n].clone(), mesh, [Partial()], run_check=False)
            opt.step()
        return {"params": {n: p.to_local().detach().clone() for n, p in ps.items()}}

    out = {}
    for backend, kind in cases:
        try:
            out[(backend, kind)] = body(kind, backend)
        except Exception as exc:  # noqa: BLE001 - the test reports it
            out[(backend, kind)] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        dist.barrier()
    return out


# -- torch.distributed.checkpoint ----------------------------------------------------------------------
def _fsdp_net(mesh, seed: int, dtype: torch.dtype = torch.float32) -> Net:
    from torch.distributed.fsdp import fully_shard

    model = make_net(seed).to(dtype)
    fully_shard(model.fc1, mesh=mesh)
    fully_shard(model.fc2, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def checkpoint_worker(rank: int, world: int, workdir: str, cases: list[tuple[str, str]], k: int) -> dict:
    """Uninterrupted FSDP2 run against: ``k`` steps, sharded ``dcp.save``, then a fresh model (another init)
    and a fresh optimizer, DCP's ``get_state_dict`` / ``dcp.load`` / ``set_state_dict``, and the remaining
    steps. Also saves a checkpoint for the single-process (resharding) load in the test."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (world,))

    def body(scenario: Scenario, backend: str) -> dict:
        kw = dict(rank=rank, world=world, mode="fsdp")
        model = _fsdp_net(mesh, 0, scenario.dtype)
        opt = scenario.make(model, backend)
        train(model, opt, scenario, range(STEPS), **kw)
        straight = {"params": full_params(model), "state": full_state(model, opt), "clock": opt.clock.clone()}
        # int8 blocks follow the parameter's rows: each scale is sharded like its parameter, local rows alike
        scales = [(tuple(_local(p).shape), tuple(_local(st[k]).shape), st[k].placements == p.placements)
                  for p, st in opt.state.items() for k in ("exp_avg_scale", "exp_avg_sq_scale") if k in st]

        model = _fsdp_net(mesh, 0, scenario.dtype)
        opt = scenario.make(model, backend)
        train(model, opt, scenario, range(k), **kw)
        ckpt = os.path.join(workdir, f"ckpt-{backend}-{scenario.name}")
        model_sd, optim_sd = get_state_dict(model, opt)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=ckpt)
        saved_clock = opt.clock.clone()
        saved = {"params": full_params(model), "state": full_state(model, opt)}
        del model, opt, model_sd, optim_sd

        model = _fsdp_net(mesh, 99, scenario.dtype)
        opt = scenario.make(model, backend)
        model_sd, optim_sd = get_state_dict(model, opt)
        clock_after_dcp_init = opt.clock.clone() if opt.clock is not None else None
        dcp.load({"model": model_sd, "optim": optim_sd}, checkpoint_id=ckpt)
        set_state_dict(model, opt, model_state_dict=model_sd, optim_state_dict=optim_sd)
        loaded_clock = opt.clock.clone()
        # the optimizer's state must not alias the checkpoint's tensors (a later in-place load would write it)
        ckpt_ptrs = {_local(t).data_ptr() for st in optim_sd["state"].values() for t in st.values()
                     if isinstance(t, torch.Tensor) and _local(t).numel()}
        aliased = sorted(f"{i}.{key}" for i, st in enumerate(opt.state.values()) for key, t in st.items()
                         if isinstance(t, torch.Tensor) and _local(t).numel() and _local(t).data_ptr() in ckpt_ptrs)
        train(model, opt, scenario, range(k, STEPS), **kw)
        resumed = {"params": full_params(model), "state": full_state(model, opt), "clock": opt.clock.clone()}
        return {"straight": straight, "resumed": resumed, "saved_clock": saved_clock, "loaded_clock": loaded_clock,
                "scales": scales, "saved": saved,
                "clock_after_dcp_init": clock_after_dcp_init, "checkpoint": ckpt, "aliased": aliased}

    return run_scenarios(cases, body)


WORKERS = {"fsdp": fsdp_worker, "ddp": ddp_worker, "hsdp": hsdp_worker, "mixed": mixed_worker,
           "checkpoint": checkpoint_worker, "partial": partial_worker}


def all_worker(rank: int, world: int, workdir: str, plan: dict[str, tuple]) -> dict:
    """Run several of the workers above in one spawn (process start and gloo setup cost more than the
    runs): ``plan`` maps a :data:`WORKERS` name to its extra arguments."""
    out: dict = {"seconds": {}}
    for part, args in plan.items():
        start = time.perf_counter()
        out[part] = WORKERS[part](rank, world, workdir, *args)
        out["seconds"][part] = time.perf_counter() - start
    return out
