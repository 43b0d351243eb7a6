"""FusedLAMB numerics (issue 4), on every backend that runs on CPU tensors here.

* Each documented compatibility setting (``docs/lamb_variants.md``) against a test-local, independently
  written float64 implementation of that peer's update, from ``algorithms.md`` A.1-A.4: the paper (v5),
  apex ``FusedLAMB`` (``adam_w_mode=True``; ``use_nvlamb`` off/on; ``grad_averaging``;
  ``bias_correction``; global-norm clipping), DeepSpeed ``FusedLamb`` (``min_coeff``/``max_coeff``
  clamp, ``bias_correction=False``, its clipping) and timm ``Lamb`` (``trust_clip``, ``decoupled_decay``,
  ``always_adapt``, global-norm clipping). 20 steps across the phase edges of a WSD schedule, fp32
  parameters, ``max|p - ref| <= 1e-5 max|ref|`` per tensor.
* Against the package's float64 reference (``lrsched_fused.reference.run_lamb``), hypothesis over
  tensors, dtypes, per-group options, clipping and schedules; the telemetry (``||w||``, ``||u||``, the
  applied ratio, the global gradient norm) equals the reference's.
* Ratio 1 on zero norms.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import RTOL, backends_on_cpu, max_rel_err
from lrsched_fused import FusedLAMB, reference as R, schedules as S
from test_optim_adamw import (DTYPES, LOW_PRECISION, STEPS, assert_lrs_close, assert_params_close, examples,
                              make_problem, reference_groups, run_fused, short_schedules, split_groups, tensor_sets)

BACKENDS = backends_on_cpu()
SCHED = S.wsd(2e-2, total_steps=16, warmup_steps=3, decay_steps=6, decay="cosine", init_lr=2e-3, final_lr=1e-4)


def l2(x: torch.Tensor) -> float:
    return math.sqrt(float((x * x).sum()))


# ---------------------------------------------------------------------------------------------------
# peers, written from algorithms.md A.1-A.4 (float64, one tensor at a time, groups as lists of dicts
# {"params": [...], "weight_decay": wd}); each ``step(grads, lr)`` takes the flattened gradients.
# ---------------------------------------------------------------------------------------------------
class Peer:
    def __init__(self, groups, betas=(0.9, 0.999), eps=1e-6):
        self.groups = [dict(g, params=[p.detach().double().clone() for p in g["params"]]) for g in groups]
        self.b1, self.b2 = betas
        self.eps = eps
        self.m = {id(p): torch.zeros_like(p) for g in self.groups for p in g["params"]}
        self.v = {id(p): torch.zeros_like(p) for g in self.groups for p in g["params"]}
        self.t = 0

    @property
    def params(self):
        return [p for g in self.groups for p in g["params"]]

    def each(self, grads):
        """(group, param, grad as float64) in flattened order."""
        it = iter(grads)
        for g in self.groups:
            for p in g["params"]:
                yield g, p, next(it).double()


class PaperLAMB(Peer):
    """You et al. (arXiv 1904.00962 v5) Algorithm 2, phi = identity; ratio 1 on a zero norm (TF-addons)."""

    def step(self, grads, lr):
        self.t += 1
        for group, p, g in self.each(grads):
            lam = group["weight_decay"]
            m = self.m[id(p)] = self.b1 * self.m[id(p)] + (1 - self.b1) * g
            v = self.v[id(p)] = self.b2 * self.v[id(p)] + (1 - self.b2) * g * g
            m_hat, v_hat = m / (1 - self.b1 ** self.t), v / (1 - self.b2 ** self.t)
            r = m_hat / (v_hat.sqrt() + self.eps)
            d = r + lam * p
            x_norm, d_norm = l2(p), l2(d)
            phi = x_norm / d_norm if x_norm > 0 and d_norm > 0 else 1.0
            p -= lr * phi * d


class ApexFusedLAMB(Peer):
    """apex ``FusedLAMB`` with ``adam_w_mode=True`` (``fused_lamb.py`` / ``multi_tensor_lamb.cu``)."""

    def __init__(self, groups, betas=(0.9, 0.999), eps=1e-6, *, bias_correction=True, grad_averaging=True,
                 max_grad_norm=1.0, use_nvlamb=False):
        super().__init__(groups, betas, eps)
        self.bias_correction, self.grad_averaging = bias_correction, grad_averaging
        self.max_grad_norm, self.use_nvlamb = max_grad_norm, use_nvlamb

    def step(self, grads, lr):
        global_norm = math.sqrt(sum(l2(g.double()) ** 2 for g in grads))
        clip = global_norm / self.max_grad_norm if global_norm > self.max_grad_norm else 1.0
        beta3 = 1 - self.b1 if self.grad_averaging else 1.0
        self.t += 1
        bc1, bc2 = (1 - self.b1 ** self.t, 1 - self.b2 ** self.t) if self.bias_correction else (1.0, 1.0)
        for group, p, g in self.each(grads):
            lam = group["weight_decay"]
            g = g / clip
            p_norm = l2(p)  # stage 0: before the moments
            m = self.m[id(p)] = self.b1 * self.m[id(p)] + beta3 * g
            v = self.v[id(p)] = self.b2 * self.v[id(p)] + (1 - self.b2) * g * g
            u = (m / bc1) / ((v / bc2).sqrt() + self.eps) + lam * p  # written into p.grad by apex
            u_norm = l2(u)
            if (self.use_nvlamb or lam != 0.0) and p_norm != 0.0 and u_norm != 0.0:
                ratio = lr * (p_norm / u_norm)
            else:
                ratio = lr
            p -= ratio * u


class DeepSpeedFusedLamb(Peer):
    """DeepSpeed ``FusedLamb`` (``fused_lamb.py`` / ``fused_lamb_cuda_kernel.cu``): no bias correction
    inside ``u``; ``coeff = clamp(||p||/||u||, min_coeff, max_coeff)`` (1 on a zero norm), for every
    tensor; ``step_size = lr sqrt(bc2)/bc1`` with bias correction, else ``lr``."""

    def __init__(self, groups, betas=(0.9, 0.999), eps=1e-8, *, bias_correction=True, max_coeff=10.0,
                 min_coeff=0.01, max_grad_norm=0.0):
        super().__init__(groups, betas, eps)
        self.bias_correction, self.max_coeff, self.min_coeff = bias_correction, max_coeff, min_coeff
        self.max_grad_norm = max_grad_norm

    def step(self, grads, lr):
        if self.max_grad_norm > 0:  # with grad_norms passed in and scale = 1
            clip = (math.sqrt(sum(l2(g.double()) ** 2 for g in grads)) + 1e-6) / self.max_grad_norm
            if clip > 1:
                grads = [g.double() / clip for g in grads]
        self.t += 1
        step_size = lr * math.sqrt(1 - self.b2 ** self.t) / (1 - self.b1 ** self.t) if self.bias_correction else lr
        for group, p, g in self.each(grads):
            m = self.m[id(p)] = self.b1 * self.m[id(p)] + (1 - self.b1) * g
            v = self.v[id(p)] = self.b2 * self.v[id(p)] + (1 - self.b2) * g * g
            u = m / (v.sqrt() + self.eps) + group["weight_decay"] * p
            p_norm, u_norm = l2(p), l2(u)
            coeff = min(max(p_norm / u_norm, self.min_coeff), self.max_coeff) if p_norm and u_norm else 1.0
            p -= step_size * coeff * u


class TimmLamb(Peer):
    """timm ``Lamb`` (``timm/optim/lamb.py``), without ``caution`` and ``corrected_weight_decay``."""

    def __init__(self, groups, betas=(0.9, 0.999), eps=1e-6, *, bias_correction=True, grad_averaging=True,
                 max_grad_norm=1.0, trust_clip=False, always_adapt=False, decoupled_decay=False):
        super().__init__(groups, betas, eps)
        self.bias_correction, self.grad_averaging, self.max_grad_norm = bias_correction, grad_averaging, max_grad_norm
        self.trust_clip, self.always_adapt, self.decoupled_decay = trust_clip, always_adapt, decoupled_decay

    def step(self, grads, lr):
        clip = 1.0
        if self.max_grad_norm is not None:
            clip = max(math.sqrt(sum(l2(g.double()) ** 2 for g in grads)) / self.max_grad_norm, 1.0)
        beta3 = 1 - self.b1 if self.grad_averaging else 1.0
        self.t += 1
        bc1, bc2 = (1 - self.b1 ** self.t, 1 - self.b2 ** self.t) if self.bias_correction else (1.0, 1.0)
        for group, p, g in self.each(grads):
            lam = group["weight_decay"]
            g = g / clip  # timm divides p.grad in place
            m = self.m[id(p)] = self.b1 * self.m[id(p)] + beta3 * g
            v = self.v[id(p)] = self.b2 * self.v[id(p)] + (1 - self.b2) * g * g
            u = (m / bc1) / (v.sqrt() / math.sqrt(bc2) + self.eps)
            if lam != 0:
                if self.decoupled_decay:
                    p.add_(p, alpha=-lr * lam)
                else:
                    u = u + lam * p
            if lam != 0 or self.always_adapt:
                w_norm, g_norm = l2(p), l2(u)
                ratio = w_norm / g_norm if w_norm > 0 and g_norm > 0 else 1.0
                if self.trust_clip:
                    ratio = min(ratio, 1.0)
                u = u * ratio
            p.add_(u, alpha=-lr)


# ---------------------------------------------------------------------------------------------------
# the variants: (peer factory, FusedLAMB kwargs, how FusedLAMB's groups set `adapt`)
# ---------------------------------------------------------------------------------------------------
ADAPT_IF_DECAY = "decay"   # adapt=False on the weight_decay=0 group (apex use_nvlamb=False, timm default)
ADAPT_ALL = "all"

VARIANTS = {
    "paper-default": (lambda g: PaperLAMB(g), dict(), ADAPT_ALL),
    "apex-use_nvlamb=False": (lambda g: ApexFusedLAMB(g), dict(max_grad_norm=1.0), ADAPT_IF_DECAY),
    "apex-use_nvlamb=True": (lambda g: ApexFusedLAMB(g, use_nvlamb=True), dict(max_grad_norm=1.0), ADAPT_ALL),
    "apex-grad_averaging=False": (lambda g: ApexFusedLAMB(g, grad_averaging=False, use_nvlamb=True),
                                  dict(max_grad_norm=1.0, grad_averaging=False), ADAPT_ALL),
    "apex-bias_correction=False": (lambda g: ApexFusedLAMB(g, bias_correction=False),
                                   dict(max_grad_norm=1.0, bias_correction=False), ADAPT_IF_DECAY),
    "apex-max_grad_norm=0.3": (lambda g: ApexFusedLAMB(g, max_grad_norm=0.3), dict(max_grad_norm=0.3),
                               ADAPT_IF_DECAY),
    "deepspeed-clamp-bias_correction=False": (
        lambda g: DeepSpeedFusedLamb(g, bias_correction=False),
        dict(eps=1e-8, bias_correction=False, trust_clip=(0.01, 10.0)), ADAPT_ALL),
    "deepspeed-clamp-max_grad_norm": (  # DeepSpeed adds 1e-6 to the norm: equal to about 1e-6 relative
        lambda g: DeepSpeedFusedLamb(g, bias_correction=False, max_grad_norm=1.0),
        dict(eps=1e-8, bias_correction=False, trust_clip=(0.01, 10.0), max_grad_norm=1.0), ADAPT_ALL),
    "timm-trust_clip": (lambda g: TimmLamb(g, trust_clip=True), dict(max_grad_norm=1.0, trust_clip=(0.0, 1.0)),
                        ADAPT_IF_DECAY),
    "timm-decoupled_decay": (lambda g: TimmLamb(g, decoupled_decay=True),
                             dict(max_grad_norm=1.0, decoupled_decay=True), ADAPT_IF_DECAY),
    "timm-always_adapt-decoupled-trust_clip-no-clipping": (
        lambda g: TimmLamb(g, max_grad_norm=None, always_adapt=True, decoupled_decay=True, trust_clip=True),
        dict(decoupled_decay=True, trust_clip=(0.0, 1.0)), ADAPT_ALL),
    "timm-grad_averaging=False-bias_correction=False": (
        lambda g: TimmLamb(g, grad_averaging=False, bias_correction=False),
        dict(max_grad_norm=1.0, grad_averaging=False, bias_correction=False), ADAPT_IF_DECAY),
}
#: variants also run under the Triton interpreter in the default (non-slow) selection
TRITON_FAST = {"paper-default", "apex-use_nvlamb=False", "deepspeed-clamp-bias_correction=False",
               "timm-decoupled_decay"}


def peer_problem(seed: int = 0):
    """Three tensors whose trust ratios land above 10, near 1 and below 0.01 (so every clamp acts), in a
    decay group and a no-decay group; gradients whose global norm is sometimes above and sometimes
    below the clipping thresholds."""
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(4, 6, generator=gen) * 30.0, torch.randn(6, 5, generator=gen) * 0.5,
              torch.randn(5, generator=gen) * 1e-3]
    grads = [[torch.randn(p.shape, generator=gen) * [0.01, 0.3, 5.0][k % 3] for p in params] for k in range(STEPS)]
    groups = [dict(idx=[0, 1], weight_decay=0.05), dict(idx=[2], weight_decay=0.0)]
    return params, grads, groups


def _variant_cases():
    out = []
    for backend in BACKENDS:
        for name in VARIANTS:
            marks = [pytest.mark.slow] if backend == "triton" and name not in TRITON_FAST else []
            out.append(pytest.param(backend, name, id=f"{backend}-{name}", marks=marks))
    return out


@pytest.mark.parametrize("backend, variant", _variant_cases())
def test_matches_each_documented_peer_variant(backend, variant):
    make_peer, kwargs, adapt_rule = VARIANTS[variant]
    params0, grads, groups = peer_problem()
    peer = make_peer([dict(params=[params0[i] for i in g["idx"]], weight_decay=g["weight_decay"]) for g in groups])
    ours_groups = [dict(g, adapt=(adapt_rule == ADAPT_ALL or g["weight_decay"] != 0.0)) for g in groups]
    got, opt, lrs = run_fused(FusedLAMB, ours_groups, params0, grads, lr=SCHED, backend=backend, **kwargs)
    for k, step_grads in enumerate(grads):
        peer.step(step_grads, SCHED(k))
    order = [i for g in groups for i in g["idx"]]
    for i, want in zip(order, peer.params):
        err = max_rel_err(got[i], want)
        assert err <= 1e-5, f"{variant}/{backend}: tensor {i} rel err {err:.3g}"
    moved = [max_rel_err(got[i], params0[i]) for i in order]
    assert min(moved) > 1e-3, "every tensor moved (the comparison is not vacuous)"
    assert_lrs_close(lrs, [[SCHED(k)] * len(groups) for k in range(STEPS)], grads, [g["idx"] for g in groups])


def test_peer_variants_differ_from_each_other():
    """The variants are distinguishable on this problem, so matching one is a real statement."""
    params0, grads, groups = peer_problem()
    finals = {}
    for name, (make_peer, _, _) in VARIANTS.items():
        peer = make_peer([dict(params=[params0[i] for i in g["idx"]], weight_decay=g["weight_decay"])
                          for g in groups])
        for k, step_grads in enumerate(grads):
            peer.step(step_grads, SCHED(k))
        finals[name] = peer.params
    names = list(finals)
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            diff = max(max_rel_err(x, y) for x, y in zip(finals[names[a]], finals[names[b]]))
            assert diff > 1e-4, f"{names[a]} and {names[b]} give the same result"


def test_deepspeed_bias_correction_is_not_representable():
    """docs/lamb_variants.md: DeepSpeed's ``sqrt(bc2)/bc1`` step size has no FusedLAMB equivalent; the
    closest setting (``bias_correction=False``) differs early in training."""
    params0, grads, groups = peer_problem()
    peer = DeepSpeedFusedLamb([dict(params=[params0[i] for i in g["idx"]], weight_decay=g["weight_decay"])
                               for g in groups], bias_correction=True)
    for k, step_grads in enumerate(grads[:5]):
        peer.step(step_grads, SCHED(k))
    got, _, _ = run_fused(FusedLAMB, [dict(g, adapt=True) for g in groups], params0, grads[:5], lr=SCHED,
                          backend="reference", eps=1e-8, bias_correction=False, trust_clip=(0.01, 10.0))
    assert max(max_rel_err(got[i], p) for i, p in zip([0, 1, 2], peer.params)) > 1e-4


# ---------------------------------------------------------------------------------------------------
# against the package's float64 reference, with telemetry
# ---------------------------------------------------------------------------------------------------
@st.composite
def lamb_hparams(draw):
    return dict(betas=(draw(st.sampled_from([0.0, 0.5, 0.9])), draw(st.sampled_from([0.9, 0.99, 0.999]))),
                eps=draw(st.sampled_from([1e-8, 1e-6, 1e-3])), weight_decay=draw(st.sampled_from([0.0, 1e-2, 0.2])),
                bias_correction=draw(st.booleans()), grad_averaging=draw(st.booleans()), adapt=draw(st.booleans()),
                trust_clip=draw(st.sampled_from([None, (0.01, 10.0), (0.0, 1.0), (0.5, 2.0)])),
                decoupled_decay=draw(st.booleans()), lr_scale=draw(st.sampled_from([1.0, 1.0, 0.5, 3.0])),
                lr=draw(short_schedules()))


def assert_telemetry_matches(opt, got, ref, grads, order, dtype) -> None:
    """The last step's telemetry against the reference's last-step norms."""
    tel = opt.telemetry()
    rows = {id(p): r for r, p in enumerate(tel["params"])}
    last = ref.norms[-1]
    tol = max(RTOL[dtype], 1e-5)
    for j, i in enumerate(order):
        if grads[-1][i] is None:
            continue
        r = rows[id(got[i])]
        want = last[j]
        assert float(tel["param_norm"][r]) == pytest.approx(want.param_norm, rel=tol, abs=1e-30), f"||w|| of {j}"
        assert float(tel["update_norm"][r]) == pytest.approx(want.update_norm, rel=tol, abs=1e-30), f"||u|| of {j}"
        assert float(tel["trust_ratio"][r]) == pytest.approx(want.trust_ratio, rel=tol), f"ratio of {j}"


@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_float64_reference_with_telemetry(backend, dtype):
    @settings(max_examples=examples(backend, share=len(DTYPES)))
    @given(ts=tensor_sets(backend, dtype), data=st.data())
    def check(ts, data):
        master = ts["dtype"] in LOW_PRECISION and data.draw(st.booleans(), label="master_weights")
        max_grad_norm = data.draw(st.sampled_from([None, None, 1.0, 20.0]), label="max_grad_norm")
        groups = split_groups(data.draw, len(ts["shapes"]), lamb_hparams())
        params0, grads = make_problem(ts)
        got, opt, lrs = run_fused(FusedLAMB, groups, params0, grads, backend=backend, master_weights=master,
                                  max_grad_norm=max_grad_norm)
        ref_groups, order = reference_groups(groups, params0)
        storage = ts["dtype"] if ts["dtype"] in LOW_PRECISION and not master else None
        ref = R.run_lamb(ref_groups, [[step[i] for i in order] for step in grads], max_grad_norm=max_grad_norm,
                         param_storage=storage)
        assert_params_close([got[i] for i in order], ref.params, ts["dtype"], f"{backend} {groups}",
                            start=[params0[i] for i in order])
        assert_lrs_close(lrs, ref.lrs, grads, [g["idx"] for g in groups])
        assert_telemetry_matches(opt, got, ref, grads, order, ts["dtype"])
        if max_grad_norm is not None:
            tol = max(RTOL[ts["dtype"]], 1e-5)
            assert float(opt.telemetry()["grad_norm"]) == pytest.approx(ref.grad_norms[-1], rel=tol, abs=1e-30)

    check()


@pytest.mark.parametrize("backend", BACKENDS)
def test_ratio_is_one_on_zero_norms(backend):
    """``||w|| = 0`` (zero parameter), ``||u|| = 0`` (zero gradient, no decay) and an empty tensor all get
    ratio 1; with adaptation the ratio is otherwise ``||w|| / ||u||``."""
    params0 = [torch.zeros(6), torch.linspace(-1, 1, 5), torch.zeros(0), torch.linspace(0.5, 2.0, 4)]
    grads = [[torch.ones(6) * 0.5, torch.zeros(5), torch.zeros(0), torch.tensor([0.3, -0.2, 0.1, 0.4])]] * 3
    groups = [dict(idx=[0], weight_decay=0.1), dict(idx=[1, 2, 3], weight_decay=0.0)]
    got, opt, _ = run_fused(FusedLAMB, groups, params0, grads, lr=1e-2, backend=backend)
    ref_groups, order = reference_groups(groups, params0)
    ref = R.run_lamb(ref_groups, [[s[i] for i in order] for s in grads], lr=1e-2)
    tel = opt.telemetry()
    ratio = {id(p): float(tel["trust_ratio"][r]) for r, p in enumerate(tel["params"])}
    assert [ratio[id(got[i])] for i in (1, 2)] == [1.0, 1.0]
    assert float(tel["update_norm"][[id(p) for p in tel["params"]].index(id(got[1]))]) == 0.0
    assert torch.equal(got[1].detach(), params0[1])  # u = 0: nothing moves
    assert ratio[id(got[3])] == pytest.approx(ref.norms[-1][3].trust_ratio, rel=1e-5)
    assert ratio[id(got[3])] != 1.0
    for j, i in enumerate(order):
        assert max_rel_err(got[i], ref.params[j]) <= 1e-5
    # step 1 of the zero parameter: ratio 1, so it moves by exactly lr * u
    first, opt1, _ = run_fused(FusedLAMB, groups, params0, grads[:1], lr=1e-2, backend=backend)
    tel1 = opt1.telemetry()
    row0 = [id(p) for p in tel1["params"]].index(id(first[0]))
    assert float(tel1["param_norm"][row0]) == 0.0 and float(tel1["trust_ratio"][row0]) == 1.0
    assert torch.allclose(first[0].detach(), torch.full((6,), -1e-2 * 0.5 / (0.5 + 1e-6)), rtol=1e-6, atol=0)


# ---------------------------------------------------------------------------------------------------
# 16-bit moment states: one meaning on every backend (r from the moments as stored)
# ---------------------------------------------------------------------------------------------------
#: Tolerance of :func:`update_rel_err` between a backend (float32 math) and the float64 reference with
#: bf16 moment storage. Both round each new moment to bf16; they pick different bf16 neighbours only where
#: the float32 and the float64 value straddle a rounding midpoint (a few elements in 10^5 per step), and
#: such an element's update then differs by up to 2^-8 of itself: measured 5e-7 (no such element) to 2e-5.
#: The other meaning (r from the fresh moments) differs by ~6e-4: every element's r moves by up to 2^-9.
BF16_STATE_TOL = 1e-4
BF16_STATE_SCHED = S.wsd(2e-2, 20, warmup_steps=4, decay_steps=8, decay="cosine", final_lr=1e-3, init_lr=2e-3)


def bf16_state_problem(seed: int = 0, steps: int = 20):
    """fp32 parameters (2369 elements in three tensors) and ``steps`` steps of fp32 gradients."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(64, 33), (257,), (5, 4)]
    params0 = [torch.randn(s, generator=g) for s in shapes]
    grads = [[torch.randn(s, generator=g) for s in shapes] for _ in range(steps)]
    return params0, grads


def fresh_moment_lamb(params0, grads, lr, state_dtype=torch.bfloat16, max_grad_norm=None,
                      **hparams) -> list[torch.Tensor]:
    """The meaning *not* chosen, for contrast (torch's fused kernels' way, the C++ CPU backend's before):
    ``r`` from the fresh float64 moments, which are stored rounded to ``state_dtype`` afterwards."""
    params = [p.double().clone() for p in params0]
    states = [R.new_lamb_state(p) for p in params]
    for k, step_grads in enumerate(grads):
        clip_div = 1.0 if max_grad_norm is None else max(1.0, R.global_grad_norm(step_grads) / max_grad_norm)
        R.lamb_step(params, step_grads, states, lr=lr(k), clip_div=clip_div, **hparams)
        for st_ in states:
            st_["exp_avg"] = R.round_to_storage(st_["exp_avg"], state_dtype)
            st_["exp_avg_sq"] = R.round_to_storage(st_["exp_avg_sq"], state_dtype)
    return params


def update_rel_err(got, ref, start) -> float:
    """``||(got - start) - (ref - start)|| / ||ref - start||`` over all tensors together (float64): the error of
    the whole run's update, which a rare one-element difference cannot dominate."""
    d = torch.cat([(x.detach().double() - s.double()).flatten() for x, s in zip(got, start)])
    dr = torch.cat([(r.double() - s.double()).flatten() for r, s in zip(ref, start)])
    return float((d - dr).norm() / dr.norm())


def run_bf16_state_lamb(backend: str, params0, grads, **hparams) -> list[torch.Tensor]:
    params = [torch.nn.Parameter(p.clone()) for p in params0]
    opt = FusedLAMB(params, lr=BF16_STATE_SCHED, state_dtype=torch.bfloat16, backend=backend, **hparams)
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        opt.step()
    assert all(opt.state[p]["exp_avg"].dtype == torch.bfloat16 for p in params)
    return params


@pytest.mark.parametrize("backend", BACKENDS)
def test_bf16_states_form_the_update_from_the_stored_moments(backend):
    """FusedLAMB with fp32 params and bf16 moments follows ``run_lamb(..., state_storage=torch.bfloat16)``
    (``||update - ref|| <= BF16_STATE_TOL ||ref||`` over 20 steps of a WSD schedule), and that check can
    fail: the fresh-moment meaning misses the same reference by more than three times the tolerance."""
    hp = dict(weight_decay=0.01)
    params0, grads = bf16_state_problem()
    ref = R.run_lamb(params0, grads, lr=BF16_STATE_SCHED, state_storage=torch.bfloat16, **hp).params
    fresh = fresh_moment_lamb(params0, grads, BF16_STATE_SCHED, **hp)
    assert update_rel_err(fresh, ref, params0) > 3 * BF16_STATE_TOL
    got = run_bf16_state_lamb(backend, params0, grads, **hp)
    err = update_rel_err(got, ref, params0)
    assert err <= BF16_STATE_TOL, f"{backend}: update differs from the stored-moment reference by {err:.3g}"
