"""torch.compile: a whole training step compiled with the CPU inductor runs a full WSD schedule without
recompiling.

``step()`` is ``torch.compiler.disable``d (dynamo breaks the graph there and calls it eagerly), and the lr
and the step count live in device tensors the optimizer owns: no changing Python float ever enters a
compiled region, so the guards of the compiled graphs (model forward and backward) never fail. Asserted
with ``torch._dynamo.config.error_on_recompile`` (a recompile raises) and dynamo's counters (the number of
compiled graphs and of frames does not grow after the first step). A control shows the counter does see
recompiles caused by a changing Python float.

Inductor compiles in ~20 s on this 2-core machine (cold cache; the second case reuses it), under the
~60 s at which a test is marked slow.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from lrsched_fused import FusedAdamW, FusedLAMB, schedules as S

WSD = S.wsd(peak_lr=1e-2, total_steps=12, warmup_steps=3, decay_steps=4, final_lr=1e-3)


def _graphs() -> int:
    return counters["stats"]["unique_graphs"]


def test_recompile_counter_sees_a_changing_python_float():
    """Control: a Python float argument that changes each call makes dynamo recompile (and the counter and
    ``error_on_recompile`` notice), which is what a float lr inside a compiled step would do."""
    torch._dynamo.reset()
    counters.clear()

    @torch.compile(backend="eager", dynamic=False)
    def scaled(x, lr):
        return x * lr

    x = torch.ones(3)
    scaled(x, 0.1)
    first = _graphs()
    scaled(x, 0.2)
    assert _graphs() > first
    with torch._dynamo.config.patch(error_on_recompile=True), pytest.raises(Exception, match="[Rr]ecompil"):
        scaled(x, 0.3)
    torch._dynamo.reset()


@pytest.mark.parametrize("kind", ["adamw", "lamb"])
def test_compiled_training_step_runs_a_full_wsd_schedule_without_recompiling(kind):
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 1))
    if kind == "adamw":
        opt = FusedAdamW(model.parameters(), lr=WSD, weight_decay=0.1, backend="auto")
    else:
        opt = FusedLAMB(model.parameters(), lr=WSD, max_grad_norm=1.0, backend="auto")

    def train_step(x, y):
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    compiled = torch.compile(train_step, backend="inductor")
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(4, 8, generator=gen), torch.randn(4, 1, generator=gen)) for _ in range(WSD.total + 2)]
    compiled(*batches[0])
    graphs, frames = _graphs(), counters["frames"]["ok"]
    assert graphs >= 1
    lrs = [opt.get_last_lr()[0]]
    with torch._dynamo.config.patch(error_on_recompile=True):
        for x, y in batches[1:]:
            compiled(x, y)
            lrs.append(opt.get_last_lr()[0])
    assert _graphs() == graphs and counters["frames"]["ok"] == frames, "recompiled during the schedule"
    assert opt.clock.tolist() == [len(batches), 0]
    # the lr really went through warmup, plateau, decay and the tail
    assert lrs == pytest.approx([WSD(t) for t in range(len(batches))], rel=1e-6, abs=1e-12)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    torch._dynamo.reset()
