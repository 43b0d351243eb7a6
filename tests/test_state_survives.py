"""State that survives what a training stack does to it (issue 13, the confirmed defects).

1. The clock travels where every checkpoint path keeps it (a state entry, as torch keeps ``step``): DCP
   with ``flatten_optimizer_state_dict=True``, and any loader that round-trips only ``state`` +
   ``param_groups``, resume exactly, also after ``set_clock``.
2. Storage swapped under the same tensor object (``state[p]["exp_avg"].data = t``) is updated, not the
   freed storage: plan reuse checks storage, not identity.
3. A parameter moved to another group gets that group's hyperparameters even when the flat order of
   the parameters does not change.
4. A device change validates everything before it moves anything, and moves every state entry
   (``master_param`` included); on the CPU a fake device shows the order (the GPU version runs where
   a GPU exists).

Every comparison is with an uninterrupted run of ours or with ``torch.optim.AdamW`` doing the same thing.
"""

from __future__ import annotations

import copy

import pytest
import torch

from helpers import backends_on_cpu, max_rel_err, tiny_backward, tiny_model
from lrsched_fused import FusedAdamW, FusedLAMB, schedules as S

WSD = S.wsd(peak_lr=1e-3, total_steps=400, warmup_steps=20, decay_steps=100, final_lr=1e-5)
BACKENDS = [b for b in backends_on_cpu() if b != "triton"]  # the Triton interpreter is slow; the plan is shared


def _train(model, opt, steps, start=0):
    for k in range(start, start + steps):
        tiny_backward(model, k)
        opt.step()


def _make(kind, model, backend, lr=WSD):
    cls = FusedAdamW if kind == "adamw" else FusedLAMB
    return cls(model.parameters(), lr=lr, weight_decay=0.1, backend=backend)


# -------------------------------------------------------------------------------------------------------
# 1. the clock in every checkpoint path
# -------------------------------------------------------------------------------------------------------
def _uninterrupted(kind, backend, before, after, clock_to):
    model = tiny_model()
    opt = _make(kind, model, backend)
    _train(model, opt, before)
    opt.set_clock(steps=clock_to)
    _train(model, opt, after, start=before)
    return model, opt


def _resumed(kind, backend, before, after, clock_to, save, load):
    model = tiny_model()
    opt = _make(kind, model, backend)
    _train(model, opt, before)
    opt.set_clock(steps=clock_to)
    saved = save(model, opt)
    fresh_model = tiny_model(seed=1)
    fresh_model.load_state_dict(model.state_dict())
    fresh = _make(kind, fresh_model, backend, lr=1e-3)
    load(fresh_model, fresh, saved)
    lr_next = fresh.get_last_lr()
    _train(fresh_model, fresh, after, start=before)
    return fresh_model, fresh, lr_next


def _dcp_save(flatten):
    def save(model, opt):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        sd = get_optimizer_state_dict(model, opt, options=StateDictOptions(flatten_optimizer_state_dict=flatten))
        return copy.deepcopy(sd)  # as if written and read back
    return save


def _dcp_load(flatten):
    def load(model, opt, sd):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, opt, sd, options=StateDictOptions(flatten_optimizer_state_dict=flatten))
    return load


def _reduced_save(model, opt):
    sd = opt.state_dict()
    return copy.deepcopy({"state": sd["state"], "param_groups": sd["param_groups"]})


def _plain_load(model, opt, sd):
    opt.load_state_dict(sd)


PATHS = {
    "dcp-flattened": (_dcp_save(True), _dcp_load(True)),
    "dcp": (_dcp_save(False), _dcp_load(False)),
    "state+param_groups": (_reduced_save, _plain_load),
}


@pytest.mark.parametrize("clock_to", [301, 3], ids=["ahead", "behind-the-steps"])
@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("kind", ["adamw", "lamb"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_every_checkpoint_path_keeps_the_clock_after_set_clock(path, kind, backend, clock_to):
    """6 steps, ``set_clock(steps=clock_to)`` (a resumed schedule, or a clock set back below the
    per-parameter steps), checkpoint, 4 more steps."""
    save, load = PATHS[path]
    ref_model, ref = _uninterrupted(kind, backend, 6, 4, clock_to)
    model, opt, lr_next = _resumed(kind, backend, 6, 4, clock_to, save, load)
    assert lr_next == pytest.approx([WSD(clock_to)], rel=1e-12)
    assert opt.clock.tolist() == ref.clock.tolist() == [clock_to + 4, 0]
    for p, q in zip(model.parameters(), ref_model.parameters()):
        assert torch.equal(p, q)


def test_the_clock_is_a_state_entry_and_state_dicts_hold_independent_copies():
    model = tiny_model()
    opt = _make("adamw", model, "reference")
    _train(model, opt, 3)
    states = list(opt.state.values())
    assert all(st["clock"] is opt.clock for st in states)  # one device clock, shared by every state entry
    sd = opt.state_dict()
    clocks = [st["clock"] for st in sd["state"].values()]
    assert all(c.dtype == torch.int64 and c.tolist() == [3, 0] for c in clocks)
    assert len({c.data_ptr() for c in clocks} | {opt.clock.data_ptr()}) == len(clocks) + 1
    steps = [st["step"] for st in sd["state"].values()]
    assert len({s.data_ptr() for s in steps}) == len(steps)  # independent of the live steps buffer
    _train(model, opt, 1, start=3)
    assert [c.tolist() for c in clocks] == [[3, 0]] * len(clocks) and float(steps[0]) == 3.0


def test_state_entries_that_disagree_on_the_clock_are_refused():
    model = tiny_model()
    opt = _make("adamw", model, "reference")
    _train(model, opt, 3)
    sd = opt.state_dict()
    first = next(iter(sd["state"].values()))
    first["clock"] = torch.tensor([7, 0])
    fresh = _make("adamw", tiny_model(), "reference")
    with pytest.raises(ValueError, match="clock"):
        fresh.load_state_dict(sd)
    assert fresh.clock is None and not fresh.state


def test_torch_adamw_keeps_the_clock_entry_and_it_comes_back():
    """torch.optim.AdamW keeps unknown state entries (casting tensors to the parameter's dtype): the
    clock comes back from a float32 copy exactly while it is below 2**24."""
    model = tiny_model()
    opt = _make("adamw", model, "reference")
    _train(model, opt, 3)
    opt.set_clock(steps=250)
    plain = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    plain.load_state_dict(opt.state_dict())
    back = _make("adamw", model, "reference", lr=1e-3)
    back.load_state_dict(plain.state_dict())
    assert back.clock.tolist() == [250, 0] and back.clock.dtype == torch.int64


# -------------------------------------------------------------------------------------------------------
# 2. storage swapped under the same tensor object
# -------------------------------------------------------------------------------------------------------
def _pair(backend):
    torch.manual_seed(0)
    model = tiny_model()
    twin = copy.deepcopy(model)
    ours = FusedAdamW(model.parameters(), lr=1e-2, weight_decay=0.1, backend=backend)
    ref = torch.optim.AdamW(twin.parameters(), lr=1e-2, weight_decay=0.1)
    return model, ours, twin, ref


@pytest.mark.parametrize("key", ["exp_avg", "exp_avg_sq", "step"])
@pytest.mark.parametrize("form", ["assign", "data"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_replaced_state_storage_is_what_the_next_step_updates(key, form, backend):
    model, ours, twin, ref = _pair(backend)
    for k in range(3):
        for m, o in ((model, ours), (twin, ref)):
            tiny_backward(m, k)
            o.step()
    for m, o in ((model, ours), (twin, ref)):
        p = next(m.parameters())
        old = o.state[p][key]
        new = (old * 0.5 if key != "step" else torch.full_like(old, 10.0)).clone()
        if form == "assign":
            o.state[p][key] = new
        else:
            o.state[p][key].data = new  # same object, new storage (as some loaders do)
    for k in range(3, 6):
        for m, o in ((model, ours), (twin, ref)):
            tiny_backward(m, k)
            o.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        assert max_rel_err(p, q) <= 1e-5
        for name in ("exp_avg", "exp_avg_sq"):
            assert max_rel_err(ours.state[p][name], ref.state[q][name]) <= 1e-5
        assert float(ours.state[p]["step"]) == float(ref.state[q]["step"])


# -------------------------------------------------------------------------------------------------------
# 3. a parameter moved to another group
# -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_parameter_moved_between_groups_gets_its_new_groups_hyperparameters(backend):
    torch.manual_seed(0)
    model = tiny_model()
    twin = copy.deepcopy(model)

    def groups(m):
        ps = list(m.parameters())
        return [{"params": ps[:3], "lr": 1e-2, "weight_decay": 0.0}, {"params": ps[3:], "lr": 3e-2, "weight_decay": 0.5}]

    ours = FusedAdamW(groups(model), backend=backend)
    ref = torch.optim.AdamW(groups(twin))
    for k in range(3):
        for m, o in ((model, ours), (twin, ref)):
            tiny_backward(m, k)
            o.step()
    for o in (ours, ref):  # the last param of group 0 becomes the first of group 1: the flat order is the same
        g0, g1 = o.param_groups
        g1["params"].insert(0, g0["params"].pop())
    for k in range(3, 6):
        for m, o in ((model, ours), (twin, ref)):
            tiny_backward(m, k)
            o.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        assert max_rel_err(p, q) <= 1e-5


# -------------------------------------------------------------------------------------------------------
# 4. a device change: check everything, then move everything
# -------------------------------------------------------------------------------------------------------
def _state_devices(opt):
    return {(k, t.device.type) for st in opt.state.values() for k, t in st.items() if isinstance(t, torch.Tensor)}


def test_init_state_moves_every_entry_master_weights_included():
    """The unit of a device change, on a fake second device (meta): moments, step and master weights go
    to the parameter's device (before, master_param stayed behind)."""
    from lrsched_fused import functional as F

    p = torch.zeros(3, 2, dtype=torch.bfloat16, device="meta")
    st = {"step": torch.tensor(4.0), "exp_avg": torch.ones(3, 2), "exp_avg_sq": torch.ones(3, 2),
          "master_param": torch.ones(3, 2)}
    clock = torch.zeros(2, dtype=torch.int64, device="meta")
    F.init_state(p, st, keys=("exp_avg", "exp_avg_sq"), state_dtype=torch.float32, master=True,
                 device=torch.device("meta"), clock=clock)
    assert {k: t.device.type for k, t in st.items()} == dict.fromkeys(st, "meta")
    assert st["clock"] is clock and st["master_param"].dtype == torch.float32


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_state_that_cannot_be_moved_leaves_every_state_as_it_was(backend):
    """The order of checks: every new or moved state tensor is made before any is assigned. Parameter 0's
    moments must be converted (float64 -> float32), parameter 1's cannot leave the meta device: the step
    raises and parameter 0's moments are untouched (before, they were converted, then the step failed)."""
    model = tiny_model()
    opt = FusedAdamW(model.parameters(), lr=1e-3, backend=backend)
    tiny_backward(model, 0)
    opt.step()
    p0, p1 = list(model.parameters())[:2]
    opt.state[p0]["exp_avg"] = opt.state[p0]["exp_avg"].double()
    opt.state[p1]["exp_avg_sq"] = torch.zeros(p1.shape, device="meta")
    before = {k: v for k, v in opt.state[p0].items()}
    tiny_backward(model, 1)
    with pytest.raises((NotImplementedError, RuntimeError, ValueError)):
        opt.step()
    assert all(opt.state[p0][k] is v for k, v in before.items()) and opt.state[p0]["exp_avg"].dtype == torch.float64
    assert opt.clock.tolist() == [1, 0]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", ["adamw", "lamb"])
def test_moving_the_model_to_the_gpu_moves_the_whole_state(kind):
    model = tiny_model(dtype=torch.bfloat16)
    cls = FusedAdamW if kind == "adamw" else FusedLAMB
    opt = cls(model.parameters(), lr=WSD, master_weights=True)

    def train(steps, start):
        for k in range(start, start + steps):
            device = next(model.parameters()).device
            x = torch.randn(3, 5, generator=torch.Generator().manual_seed(k)).to(device, torch.bfloat16)
            model.zero_grad(set_to_none=True)
            model(x).float().square().mean().backward()
            opt.step()

    train(2, 0)
    model.cuda()
    train(2, 2)
    assert {d for _, d in _state_devices(opt)} == {"cuda"} and opt.clock.device.type == "cuda"
