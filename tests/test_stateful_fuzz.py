"""Stateful fuzzing (issue 13): hypothesis drives random sequences of what a training stack does to an
optimizer, and after every rule ours is checked against an independent run.

* ``FusedAdamW`` against ``torch.optim.AdamW`` whose float lr is set before each step to the schedule's
  value at the clock the test keeps (an equivalent ``LambdaLR``: it advances only on applied steps and
  follows ``set_clock``);
* ``FusedLAMB`` against the float64 reference ``lrsched_fused.reference.lamb_step``, group by group.

Rules: step (optionally with a GradScaler whose scale we choose and, sometimes, an inf in a gradient:
the step is then skipped, clock included), zero_grad of a subset, add_param_group, state_dict -> a fresh
optimizer -> load_state_dict, set_clock, an edit of a group's hyperparameters, moving a parameter to the
next group (the flat order unchanged), and replacing a state tensor (a new tensor, or new storage under the
same object). Tolerances (one table): ``max|x - ref| <= RTOL * max|ref|`` per tensor.

Profiles: the loaded hypothesis profile's ``max_examples`` sequences (``ci``: 20 -> 6 here; ``dev``: 200 ->
60) of up to ``STEPS`` rules (``ci`` 30, ``dev`` 50). ``RUNS`` counts sequences and steps for the note.
"""

from __future__ import annotations

import copy
import math
import os
import warnings

import pytest
import torch
from hypothesis import settings, strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition, rule,
                                 run_state_machine_as_test)

from helpers import max_rel_err
from lrsched_fused import FusedAdamW, FusedLAMB, reference as R, schedules as S

#: per-dtype tolerance of the comparison (fp32 parameters; the sequences are at most STEPS rules long)
RTOL = {torch.float32: 1e-5}
DEV = os.environ.get("HYPOTHESIS_PROFILE", "ci") == "dev"
STEPS = 50 if DEV else 30
SEQUENCES = max(2, settings.default.max_examples // 3)
SCHED = S.wsd(peak_lr=2e-2, total_steps=60, warmup_steps=5, decay_steps=20, final_lr=1e-3)
SHAPES = [(3, 2), (5,), (1,), (2, 2, 2), (4,), (3,)]
#: what the runs covered, for the issue's note (printed by the last test)
RUNS = {"sequences": 0, "steps": 0, "skipped_steps": 0, "rules": 0}


class _Machine(RuleBasedStateMachine):
    kind = "adamw"

    def __init__(self) -> None:
        super().__init__()
        self.k = 0
        self.clock = 0
        self.gen = torch.Generator().manual_seed(0)
        self.scaler = None

    # -- the two optimizers ----------------------------------------------------------------------------
    def _groups(self, params, hp):
        return [{"params": list(ps), **h} for ps, h in zip(params, hp)]

    @initialize(seed=st.integers(0, 2**16))
    def setup(self, seed):
        RUNS["sequences"] += 1
        self.gen.manual_seed(seed)
        init = [torch.randn(s, generator=self.gen) for s in SHAPES[:4]]
        self.ours_p = [torch.nn.Parameter(t.clone()) for t in init]
        self.ref_p = [torch.nn.Parameter(t.clone().double() if self.kind == "lamb" else t.clone()) for t in init]
        self.hp = [{"weight_decay": 0.1, "betas": (0.9, 0.99), "eps": 1e-8},
                   {"weight_decay": 0.0, "betas": (0.8, 0.999), "eps": 1e-6}]
        split = [self.ours_p[:2], self.ours_p[2:]]
        ref_split = [self.ref_p[:2], self.ref_p[2:]]
        cls = FusedAdamW if self.kind == "adamw" else FusedLAMB
        self.ours = cls(self._groups(split, self.hp), lr=SCHED, backend="cpu")
        if self.kind == "adamw":
            self.ref = torch.optim.AdamW(self._groups(ref_split, self.hp), lr=SCHED(0), foreach=False)
        else:
            self.ref_groups = self._groups(ref_split, self.hp)
            self.ref_state = {id(p): R.new_lamb_state(p) for p in self.ref_p}

    def _ref_param_groups(self):
        return self.ref.param_groups if self.kind == "adamw" else self.ref_groups

    # -- rules -------------------------------------------------------------------------------------------
    @rule(scaled=st.booleans(), inf=st.integers(0, 9), which=st.integers(0, 5))
    def step(self, scaled, inf, which):
        RUNS["rules"] += 1
        bad = scaled and inf == 0  # one step in ten under a scaler has an inf gradient
        grads = [torch.randn(p.shape, generator=self.gen) for p in self.ours_p]
        if bad:
            grads[which % len(grads)].view(-1)[0] = math.inf
        if scaled and self.scaler is None:
            self.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=3)
            self.scaler.scale(torch.ones(()))
        scale = self.scaler.get_scale() if scaled else 1.0
        for p, q, g in zip(self.ours_p, self.ref_p, grads):
            p.grad = g * scale
            q.grad = g.to(q.dtype)
        if scaled:
            self.scaler.step(self.ours)
            self.scaler.update()
        else:
            self.ours.step()
        self.k += 1
        RUNS["steps"] += 1
        if bad:
            RUNS["skipped_steps"] += 1
            return  # skipped: the reference does nothing, the clock stays
        self._ref_step()
        self.clock += 1

    def _ref_step(self):
        lr = SCHED(self.clock)
        if self.kind == "adamw":
            for g in self.ref.param_groups:
                g["lr"] = lr
            self.ref.step()
            return
        for g in self.ref_groups:
            params = g["params"]
            with torch.no_grad():
                R.lamb_step(params, [p.grad for p in params], [self.ref_state[id(p)] for p in params], lr=lr,
                            betas=g["betas"], eps=g["eps"], weight_decay=g["weight_decay"])

    @rule(mask=st.lists(st.booleans(), min_size=6, max_size=6))
    def zero_grad_some(self, mask):
        RUNS["rules"] += 1
        for p, q, drop in zip(self.ours_p, self.ref_p, mask):
            if drop:
                p.grad = q.grad = None

    @precondition(lambda self: len(self.ours_p) < len(SHAPES))
    @rule()
    def add_param_group(self):
        RUNS["rules"] += 1
        t = torch.randn(SHAPES[len(self.ours_p)], generator=self.gen)
        p, q = torch.nn.Parameter(t.clone()), torch.nn.Parameter(t.clone().to(self.ref_p[0].dtype))
        hp = {"weight_decay": 0.05, "betas": (0.85, 0.995), "eps": 1e-7}
        self.ours.add_param_group({"params": [p], "lr": SCHED, **hp})
        if self.kind == "adamw":
            self.ref.add_param_group({"params": [q], "lr": SCHED(self.clock), **hp})
        else:
            self.ref_groups.append({"params": [q], **hp})
            self.ref_state[id(q)] = R.new_lamb_state(q)
        self.ours_p.append(p)
        self.ref_p.append(q)

    @rule()
    def checkpoint_and_resume_in_a_fresh_optimizer(self):
        RUNS["rules"] += 1
        sd = copy.deepcopy(self.ours.state_dict())
        groups = [{"params": list(g["params"])} for g in self.ours.param_groups]
        fresh = type(self.ours)(groups, lr=1e-3, backend="cpu")
        fresh.load_state_dict(sd)
        if self.scaler is not None:  # the scaler is tied to the optimizer object it stepped
            self.scaler = None
        self.ours = fresh

    @rule(clock=st.integers(0, 80))
    def set_clock(self, clock):
        RUNS["rules"] += 1
        self.ours.set_clock(steps=clock)
        self.clock = clock

    @rule(group=st.integers(0, 3), wd=st.sampled_from([0.0, 0.01, 0.2]), b1=st.sampled_from([0.5, 0.9]))
    def edit_hyperparameters(self, group, wd, b1):
        RUNS["rules"] += 1
        gi = group % len(self.ours.param_groups)
        for groups in (self.ours.param_groups, self._ref_param_groups()):
            groups[gi]["weight_decay"] = wd
            groups[gi]["betas"] = (b1, groups[gi]["betas"][1])

    @rule(group=st.integers(0, 3))
    def move_a_parameter_to_the_next_group(self, group):
        RUNS["rules"] += 1
        n = len(self.ours.param_groups)
        gi = group % (n - 1)
        if len(self.ours.param_groups[gi]["params"]) < 2:
            return
        for groups in (self.ours.param_groups, self._ref_param_groups()):
            groups[gi + 1]["params"].insert(0, groups[gi]["params"].pop())  # the flat order is unchanged

    @rule(index=st.integers(0, 5), key=st.sampled_from(["exp_avg", "exp_avg_sq"]), form=st.sampled_from(["assign", "data"]))
    def replace_a_state_tensor(self, index, key, form):
        RUNS["rules"] += 1
        p = self.ours_p[index % len(self.ours_p)]
        st_ = self.ours.state.get(p)
        if not st_ or key not in st_:
            return
        copy_ = st_[key].clone()
        if form == "assign":
            st_[key] = copy_
        else:
            st_[key].data = copy_  # new storage under the same object

    # -- the check after every rule -------------------------------------------------------------------------
    @invariant()
    def ours_matches_the_reference(self):
        for i, (p, q) in enumerate(zip(self.ours_p, self.ref_p)):
            err = max_rel_err(p, q)
            assert err <= RTOL[torch.float32], f"param {i}: relative error {err:.3g} after {self.k} steps"
        if self.ours.clock is not None:
            assert int(self.ours.clock[0]) == self.clock


class AdamWMachine(_Machine):
    kind = "adamw"


class LambMachine(_Machine):
    kind = "lamb"


@pytest.mark.cpu_ext
@pytest.mark.parametrize("machine", [AdamWMachine, LambMachine], ids=["adamw-vs-torch", "lamb-vs-float64"])
def test_random_sequences_of_what_training_stacks_do(machine):
    from helpers import have_backend

    if not have_backend("cpu"):
        pytest.skip("the C++ extension is not built")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the scaler's and the schedules' expected warnings
        run_state_machine_as_test(machine, settings=settings(max_examples=SEQUENCES, stateful_step_count=STEPS,
                                                            deadline=None))


def test_zz_report_the_fuzz_statistics(capsys):
    """Prints what the runs above covered (for the issue's note): sequences, steps, skipped steps."""
    with capsys.disabled():
        print(f"\nstateful fuzz ({'dev' if DEV else 'ci'} profile, up to {STEPS} rules per sequence): {RUNS}")
    assert RUNS["sequences"] == 0 or RUNS["steps"] > 0
