"""``param_groups``: biases and normalization weights without decay and without LAMB adaptation by
default; custom predicates; ``lr_scale`` by name prefix (longest wins) or by function; and the groups'
effect on the optimizers' numerics (a no-decay tensor is not decayed, a no-adapt tensor gets ratio 1).
"""

from __future__ import annotations

import pytest
import torch

from helpers import backends_on_cpu
from lrsched_fused import FusedAdamW, FusedLAMB, param_groups


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(10, 4)
        self.backbone = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Conv1d(1, 2, 3))
        self.backbone2 = torch.nn.Linear(8, 8)  # shares the "backbone" prefix as a string, not as a module
        self.head = torch.nn.Linear(8, 3)
        self.temperature = torch.nn.Parameter(torch.tensor(1.0))  # 0-d
        self.scale = torch.nn.Parameter(torch.ones(3))  # 1-d, not a bias
        self.frozen = torch.nn.Parameter(torch.ones(2, 2), requires_grad=False)


def names(group: dict) -> list[str]:
    return list(group["param_names"])


def by_names(groups: list[dict]) -> dict[str, dict]:
    return {n: g for g in groups for n in g["param_names"]}


def test_default_split_biases_and_norm_weights_get_no_decay_and_no_adaptation():
    model = Net()
    groups = param_groups(model, weight_decay=0.05)
    assert len(groups) == 2
    no_decay, decay = groups  # first-seen order: the module's own parameters come first
    assert names(decay) == ["embed.weight", "backbone.0.weight", "backbone.2.weight", "backbone2.weight",
                            "head.weight"]
    assert names(no_decay) == ["temperature", "scale", "backbone.0.bias", "backbone.1.weight", "backbone.1.bias",
                               "backbone.2.bias", "backbone2.bias", "head.bias"]
    assert (decay["weight_decay"], decay["adapt"], decay["lr_scale"]) == (0.05, True, 1.0)
    assert (no_decay["weight_decay"], no_decay["adapt"], no_decay["lr_scale"]) == (0.0, False, 1.0)
    named = dict(model.named_parameters())
    for g in groups:
        assert [id(p) for p in g["params"]] == [id(named[n]) for n in g["param_names"]]
    assert all("frozen" not in n for g in groups for n in g["param_names"])


def test_every_trainable_parameter_appears_exactly_once():
    model = Net()
    groups = param_groups(model, lr_scale={"backbone": 0.1, "head": 2.0})
    seen = [id(p) for g in groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in model.parameters() if p.requires_grad)
    assert len(seen) == len(set(seen))
    assert all(g["params"] for g in groups)  # no empty groups


def test_lr_scale_by_prefix_longest_wins_on_module_boundaries():
    groups = param_groups(Net(), weight_decay=0.01, lr_scale={"backbone": 0.1, "backbone.1": 0.5, "head.": 3.0})
    g = by_names(groups)
    assert g["backbone.0.weight"]["lr_scale"] == 0.1
    assert g["backbone.1.weight"]["lr_scale"] == 0.5  # longer prefix wins
    assert g["backbone.1.bias"]["lr_scale"] == 0.5
    assert g["backbone2.weight"]["lr_scale"] == 1.0  # "backbone" is not a prefix of the module "backbone2"
    assert g["head.weight"]["lr_scale"] == 3.0 and g["head.bias"]["lr_scale"] == 3.0
    assert g["embed.weight"]["lr_scale"] == 1.0
    # groups are distinct (decay, adapt, scale) combinations in first-seen order
    keys = [(x["weight_decay"], x["adapt"], x["lr_scale"]) for x in groups]
    assert keys == [(0.0, False, 1.0), (0.01, True, 1.0), (0.01, True, 0.1), (0.0, False, 0.1), (0.0, False, 0.5),
                    (0.01, True, 3.0), (0.0, False, 3.0)]


def test_lr_scale_by_function():
    groups = param_groups(Net(), lr_scale=lambda name, p: 0.25 if p.ndim >= 2 else 1.0)
    g = by_names(groups)
    assert g["head.weight"]["lr_scale"] == 0.25 and g["head.bias"]["lr_scale"] == 1.0


def test_custom_predicates():
    groups = param_groups(Net(), weight_decay=0.1, no_decay=lambda n, p: n.startswith("embed"),
                          no_adapt=lambda n, p: False)
    g = by_names(groups)
    assert g["embed.weight"]["weight_decay"] == 0.0 and g["embed.weight"]["adapt"] is True
    assert g["head.bias"]["weight_decay"] == 0.1 and g["head.bias"]["adapt"] is True
    only_adapt = by_names(param_groups(Net(), no_adapt=lambda n, p: "head" in n))
    assert only_adapt["head.weight"]["adapt"] is False and only_adapt["head.weight"]["weight_decay"] == 0.01
    assert only_adapt["head.bias"]["adapt"] is False and only_adapt["head.bias"]["weight_decay"] == 0.0
    assert only_adapt["backbone.0.bias"]["adapt"] is True  # no_adapt given: it no longer follows no_decay


def test_torch_optimizers_accept_the_groups():
    model = Net()
    opt = torch.optim.AdamW(param_groups(model, weight_decay=0.1))
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 0.1]
    assert sum(len(g["params"]) for g in opt.param_groups) == len([p for p in model.parameters() if p.requires_grad])


@pytest.mark.parametrize("backend", backends_on_cpu())
def test_no_decay_group_is_not_decayed_by_adamw(backend):
    """With zero gradients AdamW's update is 0, so only the decoupled decay moves a parameter:
    ``p (1 - lr wd)`` in the decay group, unchanged in the no-decay group; ``lr_scale`` scales it."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = FusedAdamW(param_groups(model, weight_decay=0.1, lr_scale={"1": 0.5}), lr=0.2, backend=backend)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    after = dict(model.named_parameters())
    assert torch.allclose(after["0.weight"], before["0.weight"] * (1 - 0.2 * 0.1), rtol=1e-6, atol=0)
    for n in ("0.bias", "1.weight", "1.bias"):
        assert torch.equal(after[n].detach(), before[n]), n
    assert opt.get_last_lr() == pytest.approx([0.2, 0.2, 0.1])


@pytest.mark.parametrize("backend", backends_on_cpu())
def test_no_adapt_group_gets_ratio_one_in_lamb(backend):
    """Zero gradients: in the decay group ``u = wd p`` so the ratio is ``1/wd`` and ``p <- p (1 - lr)``;
    in the no-decay, no-adapt group ``u = 0`` and the ratio is 1."""
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = FusedLAMB(param_groups(model, weight_decay=0.1), lr=0.05, backend=backend)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    after = dict(model.named_parameters())
    assert torch.allclose(after["0.weight"], before["0.weight"] * (1 - 0.05), rtol=1e-6, atol=0)
    tel = opt.telemetry()
    ratio = {id(p): float(r) for p, r in zip(tel["params"], tel["trust_ratio"])}
    assert ratio[id(after["0.weight"])] == pytest.approx(1 / 0.1, rel=1e-6)
    for n in ("0.bias", "1.weight", "1.bias"):
        assert ratio[id(after[n])] == 1.0
        assert torch.equal(after[n].detach(), before[n]), n
