"""Exact resume: save at any step, load into a fresh model and optimizer (constructed with another lr: the
checkpoint's schedule wins), continue, and get bit for bit the uninterrupted run.

The checkpoint goes through ``torch.save`` / ``torch.load(weights_only=True, map_location="cpu")``. Save
points are drawn by hypothesis over the whole run (mid-warmup, the warmup/stable and stable/decay edges,
mid-decay, after the end), one or two per run (a resumed run is saved and resumed again). Cases cover
AdamW (amsgrad, param groups with ``lr_scale`` and a float-lr group), LAMB (clipping, clamped ratios,
groups without adaptation), bf16 parameters with fp32 states and master weights, and a token clock.
"""

from __future__ import annotations

import functools
import io

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import backends_on_cpu
from lrsched_fused import FusedAdamW, FusedLAMB, schedules as S

BACKENDS = backends_on_cpu()
N_STEPS = 14
WSD = S.wsd(peak_lr=1e-2, total_steps=12, warmup_steps=3, decay_steps=4, final_lr=1e-3)  # edges: 3, 8, 12
TOKEN_SCHED = S.chain(S.Phase("linear", 700, 0.0, 1e-2), S.Phase("constant", 1500, 1e-2, 1e-2),
                      S.Phase("cosine", 1600, 1e-2, 1e-3), unit="tokens")


def tokens_at(step: int) -> int:
    """Tokens consumed by update ``step`` (varies, so the token clock is not a multiple of the steps)."""
    return 150 + 37 * (step % 5)


def _model(seed: int, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.LayerNorm(5), torch.nn.Linear(5, 3)).to(dtype)


def _split(model: torch.nn.Module) -> tuple[list, list]:
    decay = [p for n, p in model.named_parameters() if n.endswith("weight") and p.ndim == 2]
    rest = [p for n, p in model.named_parameters() if not (n.endswith("weight") and p.ndim == 2)]
    return decay, rest


def _adamw(model, backend, lr):
    return FusedAdamW(model.parameters(), lr=lr, weight_decay=0.1, backend=backend)


def _adamw_groups(model, backend, lr):
    decay, rest = _split(model)
    return FusedAdamW([{"params": decay, "lr_scale": 0.5}, {"params": rest, "weight_decay": 0.0, "lr": 2e-3}],
                      lr=lr, amsgrad=True, backend=backend)


def _lamb(model, backend, lr):
    decay, rest = _split(model)
    return FusedLAMB([{"params": decay}, {"params": rest, "adapt": False, "weight_decay": 0.0}], lr=lr,
                     max_grad_norm=0.05, trust_clip=(0.01, 10.0), backend=backend)


def _adamw_bf16_master(model, backend, lr):
    return FusedAdamW(model.parameters(), lr=lr, weight_decay=0.1, master_weights=True, backend=backend)


def _lamb_tokens(model, backend, lr):
    return FusedLAMB(model.parameters(), lr=lr, backend=backend)


#: name -> (optimizer factory, schedule of the run, param dtype, uses tokens)
CASES = {
    "adamw": (_adamw, WSD, torch.float32, False),
    "adamw-amsgrad-groups": (_adamw_groups, WSD, torch.float32, False),
    "lamb-clip-groups": (_lamb, WSD, torch.float32, False),
    "adamw-bf16-master": (_adamw_bf16_master, WSD, torch.bfloat16, False),
    "lamb-token-clock": (_lamb_tokens, TOKEN_SCHED, torch.float32, True),
}


def _backward(model: torch.nn.Module, step: int) -> None:
    gen = torch.Generator().manual_seed(2000 + step)
    dtype = next(model.parameters()).dtype
    x = torch.randn(4, 6, generator=gen).to(dtype)
    target = torch.randn(4, 3, generator=gen)
    model.zero_grad(set_to_none=True)
    torch.nn.functional.mse_loss(model(x).float(), target).backward()


def _train(model, opt, start: int, stop: int, tokens: bool, lrs: list | None = None) -> None:
    for step in range(start, stop):
        _backward(model, step)
        opt.step(tokens=tokens_at(step) if tokens else None)
        if lrs is not None:
            lrs.append(opt.get_last_lr())


def _through_disk(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True, map_location="cpu")


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)


def _final(model, opt) -> dict:
    params = list(model.parameters())
    return {
        "params": [p.detach().clone() for p in params],
        "state": [{k: v.detach().clone() for k, v in opt.state[p].items()} for p in params],
        "clock": opt.clock.clone(),
    }


@functools.lru_cache(maxsize=None)
def uninterrupted(case: str, backend: str) -> tuple[dict, tuple]:
    make, sched, dtype, tokens = CASES[case]
    model = _model(0, dtype)
    opt = make(model, backend, sched)
    lrs: list = []
    _train(model, opt, 0, N_STEPS, tokens, lrs)
    return _final(model, opt), tuple(tuple(x) for x in lrs)


def resumed(case: str, backend: str, save_points: list[int]) -> tuple[dict, tuple]:
    """Train with a save / fresh load at each of ``save_points``; the fresh objects are built with other
    seeds and another lr (a float, or a different schedule) to show the checkpoint wins."""
    make, sched, dtype, tokens = CASES[case]
    model = _model(0, dtype)
    opt = make(model, backend, sched)
    lrs: list = []
    start = 0
    for i, k in enumerate(save_points):
        _train(model, opt, start, k, tokens, lrs)
        ckpt = _through_disk({"model": model.state_dict(), "optim": opt.state_dict()})
        model = _model(100 + i, dtype)
        model.load_state_dict(ckpt["model"])
        other_lr = 0.123 if i % 2 == 0 else S.cosine(peak_lr=0.5, total_steps=50)
        opt = make(model, backend, other_lr)
        opt.load_state_dict(ckpt["optim"])
        start = k
    _train(model, opt, start, N_STEPS, tokens, lrs)
    return _final(model, opt), tuple(tuple(x) for x in lrs)


def assert_bitwise_equal(got: dict, want: dict, what: str) -> None:
    for i, (x, y) in enumerate(zip(got["params"], want["params"])):
        diff = float((x.double() - y.double()).abs().max())
        assert torch.equal(_bits(x), _bits(y)), f"{what}: param {i} differs (max |diff| {diff:.3g})"
    for i, (x, y) in enumerate(zip(got["state"], want["state"])):
        assert x.keys() == y.keys(), f"{what}: state keys of param {i}"
        for k in x:
            assert x[k].dtype == y[k].dtype and torch.equal(_bits(x[k]), _bits(y[k])), f"{what}: state[{k!r}] of {i}"
    assert torch.equal(got["clock"], want["clock"]), f"{what}: clock {got['clock'].tolist()} != " \
                                                     f"{want['clock'].tolist()}"


def _check(case: str, backend: str, save_points: list[int]) -> None:
    want, want_lrs = uninterrupted(case, backend)
    got, got_lrs = resumed(case, backend, save_points)
    what = f"{case} on {backend}, saved at {save_points}"
    assert got_lrs == want_lrs, f"{what}: lr sequence differs"
    assert_bitwise_equal(got, want, what)


SAVE_POINTS = st.lists(st.integers(0, N_STEPS), min_size=1, max_size=2, unique=True).map(sorted)


@pytest.mark.parametrize("case", sorted(CASES))
@settings(max_examples=6)
@given(save_points=SAVE_POINTS)
def test_resume_is_bit_identical_reference(case, save_points):
    _check(case, "reference", save_points)


NAMED_POINTS = {"mid-warmup": 2, "warmup-edge": 3, "decay-edge": 8, "mid-decay": 10, "after-end": 13}


@pytest.mark.parametrize("case", ["adamw", "lamb-clip-groups"])
@pytest.mark.parametrize("where", sorted(NAMED_POINTS))
def test_resume_is_bit_identical_at_named_points(case, where):
    _check(case, "reference", [NAMED_POINTS[where]])


FAST = [b for b in BACKENDS if b != "reference"]
#: the Triton interpreter takes ~0.5 s per step here: two cases, one save point (on the decay edge)
FAST_CASES = {"cpu": sorted(CASES), "triton": ["adamw", "lamb-clip-groups"]}


@pytest.mark.parametrize("backend,case", [(b, c) for b in FAST for c in FAST_CASES.get(b, ["adamw"])])
def test_resume_is_bit_identical_compiled_backends(backend, case):
    _check(case, backend, [8])
    if backend == "cpu":
        _check(case, backend, [3, 10])


def test_resume_uses_the_checkpoints_hyperparameters_not_the_constructors():
    """Beyond the lr: betas, weight decay and LAMB's clipping come from the checkpoint (as torch does for
    param-group hyperparameters)."""
    model = _model(0)
    opt = FusedLAMB(model.parameters(), lr=WSD, betas=(0.8, 0.99), weight_decay=0.2, max_grad_norm=0.05,
                    backend="reference")
    _train(model, opt, 0, 4, False)
    fresh = FusedLAMB(_model(1).parameters(), lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0, max_grad_norm=None,
                      backend="reference")
    fresh.load_state_dict(_through_disk(opt.state_dict()))
    g = fresh.param_groups[0]
    assert (g["betas"], g["weight_decay"], fresh._options["max_grad_norm"]) == ((0.8, 0.99), 0.2, 0.05)
    assert S.from_dict(g["schedule"]) == WSD and fresh.clock.tolist() == [4, 0]
