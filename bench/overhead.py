"""Where the host time of ``FusedAdamW.step()`` goes with many tensors (a diagnostic, not the benchmark).

    python -m bench.overhead --params 10M --tensors 2000 --threads 2

Part 1 times, interleaved as in ``bench.run``: the whole ``step()``, the C++ call alone, ``step()`` with
the per-step plan validation replaced by the cached answer (what the step would cost if validation were
free; a prototype, not a supported mode), and ``torch.optim.AdamW(fused=True)``.

Part 2 times each host-side piece of one step in isolation (``timeit``, best of 5): the plan validation
(``lrsched_fused.optim.plan.reusable_grads``) and its passes over the tensors, reading and committing the
group tables (``optim.tables``), the backend's refresh of the gradient pointers, and ``advance``.

It reads private attributes of the optimizer (``_plan``, ``_tables``, ``_clock``) on purpose: it is a
measuring tool for the developers of ``lrsched_fused/optim/`` and ``backends/cpu.py``.
"""

from __future__ import annotations

import argparse
import timeit
from itertools import chain
from operator import attrgetter, is_

import torch

from .impls import BETAS, EPS, LR, WEIGHT_DECAY, Inputs, _schedule
from .timing import interleaved, summarize
from .workloads import Case, make_data, parse_count


def _us(fn, number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", type=parse_count, default=10_000_000)
    ap.add_argument("--tensors", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--timeit-number", type=int, default=200, help="calls per timeit repeat in part 2")
    args = ap.parse_args(argv)

    from lrsched_fused import FusedAdamW
    from lrsched_fused.backends import cpu as cpu_backend
    from lrsched_fused.optim import base as base_module, plan as plan_module
    from lrsched_fused.optim.tables import read_groups

    torch.set_num_threads(args.threads)
    case = Case(args.params, args.tensors, "fp32", args.threads)
    inputs = Inputs(*make_data(case))

    ours_params = inputs.clone_params()
    ours = FusedAdamW(ours_params, lr=_schedule(), betas=BETAS, eps=EPS["adamw"], weight_decay=WEIGHT_DECAY,
                      backend="cpu")
    ours.step()
    fast_params = inputs.clone_params()
    fast = FusedAdamW(fast_params, lr=_schedule(), betas=BETAS, eps=EPS["adamw"], weight_decay=WEIGHT_DECAY,
                      backend="cpu")
    fast.step()
    cached = plan_module.reusable_grads(fast._plan, fast.param_groups, fast.state, read_groups(fast.param_groups,
                                                                                                 fast.hyperparams))
    real_reusable = base_module.reusable_grads  # the name the step calls

    def fast_step() -> None:  # prototype: validation for free
        base_module.reusable_grads = lambda *args: cached
        try:
            fast.step()
        finally:
            base_module.reusable_grads = real_reusable
    torch_params = inputs.clone_params()
    ref = torch.optim.AdamW(torch_params, lr=LR, betas=BETAS, eps=EPS["adamw"], weight_decay=WEIGHT_DECAY, fused=True)

    plan = ours._plan
    bucket = plan.buckets[0]
    ctx = ours._tables.tables.context(ours._clock)
    tabs = bucket.batch.cache["cpu"]

    def kernel() -> None:
        cpu_backend._ext.adamw(tabs.desc, cpu_backend._ctx_addrs(ctx, bucket.batch), False, tabs.gnorm, args.threads)

    times = interleaved({"step()": ours.step, "C++ call only": kernel, "step(), validation free": fast_step,
                         "torch AdamW fused": ref.step}, repeats=args.repeats, warmup=3)
    print(f"{case.title()}: medians (p20-p80) over {args.repeats} interleaved rounds")
    med = {}
    for name, ts in times.items():
        st = summarize(ts)
        med[name] = st.median_ms
        print(f"  {name:26s} {st.median_ms:9.3f} ms  ({st.p20_ms:.3f}-{st.p80_ms:.3f})")
    print(f"  host cost of step()        {med['step()'] - med['C++ call only']:9.3f} ms")
    print(f"  step() / torch fused       {med['step()'] / med['torch AdamW fused']:9.3f}")
    print(f"  validation-free / torch    {med['step(), validation free'] / med['torch AdamW fused']:9.3f}")

    n = args.timeit_number
    groups = ours.param_groups
    configs = read_groups(groups, ours.hyperparams)
    flat = [p for g in groups for p in g["params"]]
    state = ours.state
    pieces = {
        "reusable_grads (plan validation), total": lambda: plan_module.reusable_grads(plan, groups, state, configs),
        "  params list + identity vs plan": lambda: all(map(is_, [p for g in groups for p in g["params"]],
                                                             plan.all_params)),
        "  p.grad of each + None pattern": lambda: list(map((lambda g: g is not None),
                                                            list(map(attrgetter("grad"), flat)))),
        "  data_ptr of each param": lambda: list(map(torch.Tensor.data_ptr, plan.order)),
        "  state.get(p) identity (Tensor.__hash__)": lambda: all(map(is_, map(state.get, plan.order), plan.states)),
        f"  state entries identity ({len(plan.state_values)} values)": lambda: all(map(
            is_, list(chain.from_iterable(map(dict.values, plan.states))), plan.state_values)),
        "  is_contiguous of each grad": lambda: all(map(torch.Tensor.is_contiguous, [p.grad for p in flat])),
        "read_groups + TablesCache.commit": lambda: ours._tables.commit(read_groups(groups, ours.hyperparams),
                                                                        groups, plan.device),
        "CpuBackend: refresh_grads (grad data_ptrs)": lambda: tabs.refresh_grads(bucket.batch.grads),
        "CpuBackend: _ctx_addrs": lambda: cpu_backend._ctx_addrs(ctx, bucket.batch),
        "advance (clock, lr telemetry)": lambda: bucket.backend.advance(ctx, plan.steps, ours._lr_out, None),
    }
    print(f"host pieces of one step ({len(flat)} tensors; timeit best of 5 x {n}):")
    for name, fn in pieces.items():
        print(f"  {name:46s} {_us(fn, n):9.1f} us")


if __name__ == "__main__":
    main()
