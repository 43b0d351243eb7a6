"""Gradient release (``lrsched_fused.release``): the step inside backward gives the normal step's bits.

* identity with ``opt.step()`` (CPU, fp32, ``torch.equal``): AdamW and LAMB x float lr and schedule x
  accumulation 1 and 3, weights, moments, step counts, clock and the groups' ``lr``; the same kernels
  run on other subsets of tensors (buckets), which is exact because AdamW is elementwise and LAMB's
  norms are per tensor;
* one fused launch per bucket, buckets fixed from global sizes in reverse parameter order, the clock
  advancing once per step (never between buckets), parameters without a gradient neither updated nor
  counted, ``detach()`` restoring the normal step from the same state and clock;
* the refusals, each with its reason; a backward that raises does not wedge the next one;
* FSDP2 on 2 gloo processes (``tests/release_workers.py``, slow): the same bits as FSDP2 with ``step()``,
  LAMB's one norm all-reduce per bucket, accumulation with ``set_requires_gradient_sync(False)``;
* ``python -m bench.release --quick`` runs and shows less gradient memory.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch

import lrsched_fused.functional as F
from helpers import have_backend, have_triton, triton_interpreting
from lrsched_fused import FusedAdamW, FusedLAMB, param_groups, release, schedules as S

REPO = Path(__file__).resolve().parents[1]
STEPS = 4
COSINE = S.cosine(peak_lr=1e-2, total_steps=STEPS, warmup_steps=2, final_lr=1e-3)
pytestmark = pytest.mark.skipif(not have_backend("cpu"), reason="the C++ extension is not built")


class Net(torch.nn.Module):
    """Weights, biases and norm parameters, plus ``unused`` (never gets a gradient) and ``sometimes``
    (a gradient on even calls only)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.norm = torch.nn.Linear(8, 16), torch.nn.LayerNorm(16)
        self.fc2, self.head = torch.nn.Linear(16, 16), torch.nn.Linear(16, 3)
        self.unused, self.sometimes = torch.nn.Linear(4, 4), torch.nn.Linear(3, 3)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.head(torch.tanh(self.fc2(torch.tanh(self.norm(self.fc1(x))))))
        self.calls += 1
        return self.sometimes(y) if self.calls % 2 == 0 else y


def backward(model: torch.nn.Module, i: int) -> None:
    g = torch.Generator().manual_seed(i)
    dtype = next(model.parameters()).dtype
    x, y = torch.randn(4, 8, generator=g).to(dtype), torch.randn(4, 3, generator=g).to(dtype)
    ((model(x) - y) ** 2).mean().backward()


def make_opt(kind: str, model: torch.nn.Module, lr, **kw):
    if kind == "adamw":
        return FusedAdamW(model.parameters(), lr=lr, weight_decay=0.1, **kw)
    return FusedLAMB(param_groups(model, 0.1), lr=lr, **kw)  # two groups: decay and no-decay


def train(kind: str, lr, accum: int, *, use_release: bool, steps: int = STEPS, bucket_bytes: int = 256,
          dtype: torch.dtype = torch.float32, **kw):
    model = Net().to(dtype)
    opt = make_opt(kind, model, lr, **kw)
    handle = release.attach(model, opt, bucket_bytes=bucket_bytes, accumulation_steps=accum) if use_release else None
    lrs = []
    for s in range(steps):
        for a in range(accum):
            backward(model, s * accum + a)
        if handle is None:
            opt.step()
            opt.zero_grad(set_to_none=True)
        lrs.append([g["lr"] for g in opt.param_groups])
    return model, opt, handle, lrs


def assert_same_run(a, b) -> None:
    (m1, o1, _, lr1), (m2, o2, _, lr2) = a, b
    for (name, p), q in zip(m1.named_parameters(), m2.parameters()):
        assert torch.equal(p, q), name
        s1, s2 = o1.state.get(p, {}), o2.state.get(q, {})
        assert set(s1) == set(s2), name
        for key, value in s1.items():
            if key != "clock":
                assert torch.equal(value, s2[key]), (name, key)
    assert torch.equal(o1.clock, o2.clock) and lr1 == lr2


# ---------------------------------------------------------------------------------------------------------
# identity with the normal step
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("accum", [1, 3])
@pytest.mark.parametrize("lr", [1e-2, COSINE], ids=["float-lr", "schedule"])
@pytest.mark.parametrize("kind", ["adamw", "lamb"])
def test_release_gives_the_bits_of_the_normal_step(kind, lr, accum):
    normal = train(kind, lr, accum, use_release=False)
    released = train(kind, lr, accum, use_release=True)
    assert len(released[2].buckets) >= 3  # the kernels ran on other subsets than step()'s one bucket
    assert_same_run(normal, released)
    assert released[1].clock.tolist() == [STEPS, 0]
    assert all(p.grad is None for p in released[0].parameters())


@pytest.mark.parametrize("storage", [
    dict(state_dtype="int8", quant_min_numel=1),
    dict(state_dtype="int8", quant_min_numel=1, master_weights="compact", stochastic_rounding=True),
    dict(state_dtype=torch.bfloat16, master_weights="compact", master_bits=16, stochastic_rounding=True),
], ids=["int8", "int8-compact8-sr", "bf16-compact16-sr"])
@pytest.mark.parametrize("kind", ["adamw", "lamb"])
def test_release_gives_the_bits_of_the_normal_step_with_compressed_state(kind, storage):
    """bf16 parameters: int8 codes and scales, compact corrections and stochastic rounding (salted by each
    parameter's position in the optimizer, as step() salts it) come out bit for bit as step()'s."""
    normal = train(kind, COSINE, 2, use_release=False, dtype=torch.bfloat16, **storage)
    released = train(kind, COSINE, 2, use_release=True, dtype=torch.bfloat16, **storage)
    assert_same_run(normal, released)
    keys = {k for st in released[1].state.values() for k in st}
    assert keys >= ({"exp_avg_scale"} if storage["state_dtype"] == "int8" else {"master_correction"})


@pytest.mark.skipif(not (have_triton() and triton_interpreting() and have_backend("triton")),
                    reason="triton (interpreted on CPU) not available")
@pytest.mark.parametrize("kind", ["adamw", "lamb"])
def test_release_on_the_triton_kernels(kind):
    normal = train(kind, COSINE, 1, use_release=False, steps=2, backend="triton")
    released = train(kind, COSINE, 1, use_release=True, steps=2, backend="triton")
    assert_same_run(normal, released)


def test_a_token_clock_schedule_takes_the_tokens_of_each_step():
    sched = S.chain(S.Phase("linear", 64, 0.0, 1e-2), S.Phase("cosine", 256, 1e-2, 1e-3), unit="tokens")
    runs = []
    for use_release in (False, True):
        model = Net()
        opt = FusedAdamW(model.parameters(), lr=sched)
        handle = release.attach(model, opt, bucket_bytes=256) if use_release else None
        for s in range(3):
            if handle is not None:
                handle.set_tokens(32)
            backward(model, s)
            if handle is None:
                opt.step(tokens=32)
                opt.zero_grad()
        runs.append((model, opt, None, [g["lr"] for g in opt.param_groups]))
    assert_same_run(*runs)
    assert runs[1][1].clock.tolist() == [3, 96]
    with pytest.raises(ValueError, match=r"handle.set_tokens\(n\)"):
        backward(runs[1][0], 9)


# ---------------------------------------------------------------------------------------------------------
# buckets, launches, clock
# ---------------------------------------------------------------------------------------------------------
def test_one_launch_per_bucket_and_one_clock_advance_per_step(monkeypatch):
    launches = []
    real = F.adamw

    def counting(batch, tables, clock, **kw):
        launches.append((len(batch), clock.clone()))
        return real(batch, tables, clock, **kw)

    monkeypatch.setattr(F, "adamw", counting)
    model = Net()
    opt = make_opt("adamw", model, COSINE)
    handle = release.attach(model, opt, bucket_bytes=300)
    # reverse parameter order, cut when a bucket's gradients reach 300 bytes (global sizes)
    expect, cur, size = [], [], 0
    for p in reversed(list(model.parameters())):
        cur.append(p)
        size += p.numel() * 4
        if size >= 300:
            expect.append(cur)
            cur, size = [], 0
    if cur:
        expect.append(cur)
    assert [[id(p) for p in b.params] for b in handle.buckets] == [[id(p) for p in b] for b in expect]
    # [sometimes.b, sometimes.w, unused.b, unused.w, head.b, head.w], [fc2.b, fc2.w], [norm.b, norm.w, fc1.b, fc1.w]
    assert [len(b.params) for b in handle.buckets] == [6, 2, 4]
    for step in range(3):
        launches.clear()
        backward(model, step)
        # the first bucket never completes (unused gets no gradient): it launches once, at the end of backward,
        # with the members that got one
        assert len(launches) == len(handle.buckets)
        with_grad = 12 - 2 - (2 if model.calls % 2 else 0)
        assert sum(n for n, _ in launches) == with_grad
        assert all(c.tolist() == [step, 0] for _, c in launches)  # one clock for every bucket of the step
        assert opt.clock.tolist() == [step + 1, 0]
    handle.detach()


def test_bucket_size_sets_the_launch_count(monkeypatch):
    calls = []
    real = F.lamb
    monkeypatch.setattr(F, "lamb", lambda batch, *a, **kw: (calls.append(len(batch)), real(batch, *a, **kw))[1])
    # first call: 12 tensors, 8 with a gradient (not unused's 2, not sometimes' 2)
    for bucket_bytes, launches in ((1, 8), (10**9, 1)):
        model = Net()
        handle = release.attach(model, make_opt("lamb", model, 1e-2), bucket_bytes=bucket_bytes)
        calls.clear()
        backward(model, 0)
        assert len(calls) == launches and sum(calls) == 8
        handle.detach()


def test_parameters_without_a_gradient_are_not_updated_nor_counted():
    model, opt, handle, _ = train("adamw", 1e-2, 1, use_release=True, steps=3)
    start = Net()
    assert torch.equal(model.unused.weight, start.unused.weight) and model.unused.weight not in opt.state
    # `sometimes` had a gradient in steps 2 only (calls 2): one update
    assert opt.state[model.sometimes.weight]["step"].item() == 1.0
    assert opt.state[model.fc1.weight]["step"].item() == 3.0


def test_detach_restores_the_normal_step_from_the_same_state_and_clock():
    normal = train("lamb", COSINE, 1, use_release=False, steps=STEPS)
    model = Net()
    opt = make_opt("lamb", model, COSINE)
    handle = release.attach(model, opt, bucket_bytes=256)
    for s in range(2):
        backward(model, s)
    handle.detach()
    assert not handle.attached
    for s in range(2, STEPS):
        backward(model, s)
        assert all(p.grad is not None for p in (model.fc1.weight, model.head.bias))  # hooks are gone
        opt.step()
        opt.zero_grad()
    assert_same_run(normal, (model, opt, None, normal[3]))
    handle.detach()  # idempotent
    again = release.attach(model, opt)  # and attachable again
    again.detach()


def test_release_after_normal_steps_continues_them():
    normal = train("adamw", COSINE, 1, use_release=False, steps=STEPS)
    model = Net()
    opt = make_opt("adamw", model, COSINE)
    for s in range(2):
        backward(model, s)
        opt.step()
        opt.zero_grad()
    handle = release.attach(model, opt, bucket_bytes=256)
    for s in range(2, STEPS):
        backward(model, s)
    assert_same_run(normal, (model, opt, None, normal[3]))
    assert len(handle.telemetry()["params"]) == len(list(model.parameters()))


def test_a_backward_that_raises_does_not_wedge_the_next_step():
    model = Net()
    opt = make_opt("adamw", model, 1e-2)
    handle = release.attach(model, opt, bucket_bytes=256)
    g = torch.Generator().manual_seed(0)
    out = model(torch.randn(4, 8, generator=g))
    out.register_hook(lambda grad: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        out.sum().backward()
    model.calls -= 1
    backward(model, 0)  # the next forward sees the abandoned pass and starts afresh
    assert opt.clock.tolist() == [1, 0]
    ref = train("adamw", 1e-2, 1, use_release=True, steps=1)
    assert torch.equal(ref[0].fc1.weight, model.fc1.weight)
    handle.detach()


def test_a_detached_handle_leaves_nothing_behind():
    import gc
    import weakref

    model = Net()
    opt = make_opt("adamw", model, 1e-2)
    handle = release.attach(model, opt)
    backward(model, 0)
    handle.detach()
    assert all(not getattr(p, "_post_accumulate_grad_hooks", None) for p in model.parameters())
    ref = weakref.ref(opt)
    del model, opt, handle
    gc.collect()
    assert ref() is None


# ---------------------------------------------------------------------------------------------------------
# refusals
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make, error, message", [
    (lambda m: FusedLAMB(m.parameters(), max_grad_norm=1.0), ValueError,
     r"max_grad_norm=1.0\) clips by the global norm of all gradients: gradient release updates each bucket"),
    (lambda m: FusedAdamW(m.parameters(), skip_nonfinite=True), ValueError,
     "skip_nonfinite=True skips a step when any gradient is inf or NaN"),
    (lambda m: torch.optim.AdamW(m.parameters()), TypeError, "must be a FusedAdamW or FusedLAMB"),
    (lambda m: FusedAdamW([m.fc1.weight, m.fc1.weight]), ValueError, "listed twice"),
])
def test_refusals_say_why(make, error, message):
    model = Net()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's duplicate-parameter warning
        opt = make(model)
    with pytest.raises(error, match=message):
        release.attach(model, opt)


def test_grad_scaler_and_step_while_attached_are_refused():
    model = Net()
    opt = make_opt("adamw", model, 1e-2)
    opt.grad_scale = torch.ones(1)
    with pytest.raises(ValueError, match="optimizer.grad_scale is set: a torch.amp.GradScaler drives"):
        release.attach(model, opt)
    del opt.grad_scale
    handle = release.attach(model, opt)
    with pytest.raises(ValueError, match="already attached"):
        release.attach(model, opt)
    backward(model, 0)
    with pytest.raises(RuntimeError, match=r"optimizer.step\(\) was called while gradient release is attached"):
        opt.step()
    for bad in ({"bucket_bytes": 0}, {"accumulation_steps": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            release.attach(Net(), make_opt("adamw", Net(), 1e-2), **bad)
    handle.detach()
    opt.step()


def test_ddp_is_refused(tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/rdv", rank=0, world_size=1)
    try:
        net = Net()
        model = DDP(net)
        with pytest.raises(ValueError, match="DistributedDataParallel: DDP's all-reduce of a gradient runs after"):
            release.attach(model, make_opt("adamw", net, 1e-2))
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------------------
# FSDP2, 2 processes (tests/release_workers.py)
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fsdp(tmp_path_factory):
    import dist_workers
    import release_workers as RW

    return dist_workers.spawn(RW.release_fsdp_worker, str(tmp_path_factory.mktemp("release")), list(RW.CASES))


def _ok(result: dict) -> dict:
    assert "error" not in result, result["error"]
    return result


@pytest.mark.slow
@pytest.mark.parametrize("name", ["adamw", "adamw-schedule-accum2", "lamb", "lamb-schedule-accum3"])
def test_fsdp2_release_gives_the_bits_of_the_fsdp2_step(fsdp, name):
    import dist_workers

    for rank, per_rank in enumerate(fsdp):
        step, rel = _ok(per_rank[(name, "step")]), _ok(per_rank[(name, "release")])
        for key, p in step["params"].items():
            assert torch.equal(p, rel["params"][key]), (rank, key)
        assert step["clock"].tolist() == rel["clock"].tolist() == [dist_workers.STEPS, 0]
        assert rel["grads_left"] == [0] * dist_workers.STEPS  # every sharded gradient was freed in backward
        assert rel["buckets"] == [4, 3, 1]
        # gradient hooks fire on the sync micro-batch only (8 parameters): release counted backward passes
        accum = len(rel["hooks_per_micro"]) // dist_workers.STEPS
        assert rel["hooks_per_micro"] == ([0] * (accum - 1) + [8]) * dist_workers.STEPS
        if name.startswith("lamb"):  # one all-reduce of the [n, 2] norm sums per bucket, whole-tensor norms
            assert all(sorted(n for n, _, _ in log) == [2, 6, 8] for log in rel["allreduces"])
        else:
            assert all(log == [] for log in rel["allreduces"])
    assert fsdp[1][(name, "release")]["local_numel"]["head.weight"] == 0  # empty shards took part


# ---------------------------------------------------------------------------------------------------------
# the benchmark
# ---------------------------------------------------------------------------------------------------------
def test_bench_release_quick_runs_and_frees_gradients():
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from bench.release import main

    lines: list[str] = []
    result = main(["--quick", "--no-profiler"], echo=lines.append)
    assert result["weight_diff"] == 0.0 and result["buckets"] > 1
    rows = result["rows"]
    assert rows["step"]["grad_peak_live"] == result["grad_bytes"]
    assert rows["release"]["grad_peak_live"] < result["grad_bytes"] / 2
    assert any(line.startswith("release / step:") for line in lines)
