"""The three schedule evaluators agree (issue 3, DESIGN "one spec, three evaluators").

For random valid specs from every constructor and random chains of phases (``cases()`` of
``test_schedule_properties``), at drawn steps (every phase edge and its neighbours, 0, total, up to
2**40), the kernel evaluators reached through ``S.evaluate(sched, steps, backend=...)`` return float32
values with

    max|x - ref| <= 2e-6 * max|ref|

against the float64 reference ``Schedule.__call__``. A backend that is not available here (not built,
no GPU and no interpreter) is skipped with its reason.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import have_backend
from lrsched_fused import schedules as S
from test_schedule_properties import Case, cases, probe_steps

TOLERANCE = 2e-6
KERNEL_BACKENDS = ["triton", "cpu"]


def _skip_unless_available(backend: str) -> None:
    if not have_backend(backend):
        from lrsched_fused.backends import available_backends

        pytest.skip(f"backend {backend!r} unavailable: {available_backends().get(backend)}")


def assert_parity(sched, steps: list[int], backend: str) -> None:
    t = torch.tensor(steps, dtype=torch.int64)
    ref = S.evaluate(sched, t, backend="reference")
    got = S.evaluate(sched, t, backend=backend)
    assert got.shape == ref.shape
    assert got.dtype == torch.float32
    err = (got.double() - ref).abs()
    bound = TOLERANCE * float(ref.abs().max())
    worst = int(err.argmax())
    assert float(err[worst]) <= bound, (
        f"{sched!r} on {backend}: at step {steps[worst]} got {float(got[worst])!r}, reference "
        f"{float(ref[worst])!r}; max err {float(err[worst]):.3g} > {bound:.3g}\n{sched.describe()}")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_evaluators_agree_on_random_specs(backend):
    _skip_unless_available(backend)
    # the Triton interpreter runs one program at a time: fewer examples there
    examples = settings.default.max_examples if backend != "triton" else max(5, settings.default.max_examples // 2)

    @settings(max_examples=examples)
    @given(case=cases(), data=st.data())
    def check(case: Case, data) -> None:
        assert_parity(case.sched, data.draw(probe_steps(case.sched, extra=48)), backend)

    check()


FIXED = {
    "wsd-linear": S.wsd(3e-4, 10_000, 500, decay_fraction=0.2),
    "wsd-exp": S.wsd(3e-4, 10_000, 500, decay_steps=2_000, decay="exp", final_lr=3e-6),
    "wsd-1-sqrt-huge": S.wsd(3e-4, 2**40, 2**20, decay_steps=2**38, decay="1-sqrt"),
    "cosine": S.cosine(1e-3, 1000, 100, final_lr=1e-5, init_lr=1e-6),
    "rex-0.9": S.rex(1e-3, 1000, 10, beta=0.9),
    "power-tokens": S.power(0.02, 4.6, -0.51, 10**12, 10**9, decay_fraction=0.1, decay="exp", final_lr=1e-5),
    "infinite-inv-sqrt": S.infinite(1e-3, 10_000, 100, 1_000, 3e-4, 2_000, 1e-5, cooldown="inv-sqrt"),
    "rewarm": S.rewarm(S.cosine(1e-3, 1000, 100), 1200, 50, 5e-4, 3000),
    "tabulated": S.tabulated([0, 10, 100, 2**40], [0.0, 1e-3, 5e-4, 1e-6]),
    "constant": S.constant(1e-3),
    # the kernels evaluate in float32 from an exact int64 offset: deep into long runs (issue 13)
    "cosine-2e9-steps": S.cosine(1e-3, 2 * 10**9, 10**6, final_lr=1e-5),
    "wsd-1-sqrt-2e9-steps": S.wsd(1e-3, 2 * 10**9, 10**6, decay_fraction=0.6, decay="1-sqrt"),
    "power-2e13-tokens": S.power(0.02, 4.6, -0.51, 2 * 10**13, 10**10, decay_fraction=0.2, final_lr=1e-5),
}
#: clocks deep into a run: 1e9 steps and 1e13 tokens, and their neighbours
DEEP = {c + d for c in (10**9, 10**13) for d in (-12345, -1, 0, 1, 12345)}


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("name", list(FIXED))
def test_evaluators_agree_on_named_schedules(name, backend):
    _skip_unless_available(backend)
    sched = FIXED[name]
    steps = sorted({max(0, e + d) for e in sched.edges for d in (-1, 0, 1)}
                   | {int(sched.total * k / 63) for k in range(64)} | {2**40, 2**40 + 1} | DEEP)
    assert_parity(sched, steps, backend)
