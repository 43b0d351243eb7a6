"""Gradient release on a small transformer: peak gradient memory and step time, with and without release.

    python -m bench.release                      # AdamW, 4 layers, d_model 256: about half a minute on 2 cores
    python -m bench.release --optimizer lamb --bucket-mb 0.5 --layers 6
    python -m bench.release --quick              # seconds (tests/test_release.py)

Two copies of the same model and optimizer (``FusedAdamW`` / ``FusedLAMB``, cosine schedule in the
kernel) train on the same token batches: ``step`` runs ``loss.backward(); opt.step(); opt.zero_grad()``,
``release`` runs ``loss.backward()`` with :func:`lrsched_fused.release.attach` (``--bucket-mb`` per
bucket). Printed per mode:

* **peak grads (profiler)**: the peak of the bytes that ``torch.profiler`` (``profile_memory=True``,
  ``record_shapes``, ``with_stack``) attributes to the GRADIENT category over one whole training step
  (forward, backward, update), from its memory timeline (``prof._memory_profile()``);
* **peak grads (live)**: the largest sum of ``p.grad`` bytes alive at any gradient hook of one step (a
  hook registered before release's own, so it sees each gradient before release frees it; plain Python,
  no profiler);
* **peak all (profiler)**: the peak of everything torch allocated during that step (activations,
  gradients, temporaries; parameters and optimizer state existed before and are not counted);
* **step ms**: median (p20-p80) of whole training steps, the two modes interleaved round by round
  (``bench.timing.interleaved``), and their ratio. tracemalloc is not used: it does not see torch's tensors.

Both runs end with the same weights (printed: the largest difference, 0 when bit-identical).
"""

from __future__ import annotations

import argparse
from typing import Callable

import torch
import torch.nn.functional as tnf

from .timing import interleaved, summarize


class Block(torch.nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)
        self.qkv, self.proj = torch.nn.Linear(d, 3 * d), torch.nn.Linear(d, d)
        self.fc1, self.fc2 = torch.nn.Linear(d, 4 * d), torch.nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = tnf.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
        x = x + self.proj(a)
        return x + self.fc2(tnf.gelu(self.fc1(self.ln2(x))))


class TinyGPT(torch.nn.Module):
    """A pre-norm decoder: token and position embeddings, ``layers`` blocks, a final norm, an untied head."""

    def __init__(self, vocab: int, seq: int, d: int, layers: int, heads: int) -> None:
        super().__init__()
        self.tok, self.pos = torch.nn.Embedding(vocab, d), torch.nn.Embedding(seq, d)
        self.blocks = torch.nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln, self.head = torch.nn.LayerNorm(d), torch.nn.Linear(d, vocab, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.release", description=__doc__.split("\n\n")[0])
    ap.add_argument("--optimizer", choices=("adamw", "lamb"), default="adamw")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--bucket-mb", type=float, default=1.0, help="gradient MiB per release bucket (default 1)")
    ap.add_argument("--accumulation", type=int, default=1, help="backward passes per update (default 1)")
    ap.add_argument("--steps", type=int, default=20, help="timed rounds (default 20)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed rounds first (default 3)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--no-profiler", action="store_true", help="skip the torch.profiler memory timeline")
    ap.add_argument("--quick", action="store_true", help="a tiny model and 3 rounds (a smoke test)")
    args = ap.parse_args(argv)
    if args.quick:
        args.layers, args.d_model, args.heads, args.seq, args.batch, args.vocab = 2, 32, 2, 16, 2, 128
        args.steps, args.warmup, args.bucket_mb = 3, 1, 0.01
    for name in ("layers", "d_model", "heads", "seq", "batch", "vocab", "steps", "threads", "accumulation"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.d_model % args.heads or args.bucket_mb <= 0 or args.warmup < 1:
        ap.error("--d-model must be a multiple of --heads, --bucket-mb > 0 and --warmup >= 1")
    return args


class Run:
    """One model + optimizer, trained with (``release=True``) or without gradient release."""

    def __init__(self, args: argparse.Namespace, release: bool) -> None:
        from lrsched_fused import FusedAdamW, FusedLAMB, release as R, schedules as S

        torch.manual_seed(0)
        self.model = TinyGPT(args.vocab, args.seq, args.d_model, args.layers, args.heads)
        sched = S.cosine(peak_lr=3e-3, total_steps=1000, warmup_steps=10)
        cls = FusedAdamW if args.optimizer == "adamw" else FusedLAMB
        self.opt = cls(self.model.parameters(), lr=sched, weight_decay=0.01)
        self.args, self.release, self.step_index = args, release, 0
        self.probe_peak: int | None = None  # set while probing
        self._probes = [p.register_post_accumulate_grad_hook(self._probe) for p in self.model.parameters()]
        self.handle = (R.attach(self.model, self.opt, bucket_bytes=max(1, int(args.bucket_mb * 2**20)),
                                accumulation_steps=args.accumulation) if release else None)

    def _probe(self, _p: torch.Tensor) -> None:
        if self.probe_peak is not None:
            live = sum(p.grad.numel() * p.grad.element_size() for p in self.model.parameters() if p.grad is not None)
            self.probe_peak = max(self.probe_peak, live)

    def batch(self, i: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(i)
        return torch.randint(0, self.args.vocab, (self.args.batch, self.args.seq + 1), generator=g)

    def __call__(self) -> None:
        """One training step (``accumulation`` micro-batches, then the update)."""
        for _ in range(self.args.accumulation):
            tokens = self.batch(self.step_index)
            self.step_index += 1
            logits = self.model(tokens[:, :-1])
            loss = tnf.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
            loss.backward()
        if not self.release:
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)

    def grad_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.model.parameters())


def probe_peak(run: Run) -> int:
    run.probe_peak = 0
    run()
    peak, run.probe_peak = run.probe_peak, None
    return peak


def profiler_peaks(run: Run) -> tuple[int, int] | None:
    """(peak GRADIENT bytes, peak of all bytes) over one training step, from torch.profiler's memory timeline."""
    from torch.profiler import ProfilerActivity, profile

    try:
        from torch.profiler._memory_profiler import Action, Category
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                     with_stack=True) as prof:
            run()
        mp = prof._memory_profile()
        cur: dict = {}
        grad_peak = total_peak = total = 0
        for _, action, (key, version), size in mp.timeline:
            if action not in (Action.CREATE, Action.DESTROY):
                continue
            delta = size if action == Action.CREATE else -size
            cat = mp._categories.get(key, version)
            cur[cat] = cur.get(cat, 0) + delta
            total += delta
            grad_peak = max(grad_peak, cur.get(Category.GRADIENT, 0))
            total_peak = max(total_peak, total)
        return grad_peak, total_peak
    except Exception as exc:  # noqa: BLE001 - a private profiler API: report and go on
        print(f"(torch.profiler memory timeline unavailable: {type(exc).__name__}: {exc})")
        return None


def max_weight_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max(float((p.detach() - q.detach()).abs().max()) for p, q in zip(a.parameters(), b.parameters()))


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.2f}"


def main(argv: list[str] | None = None, echo: Callable[[str], None] = print) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    runs = {"step": Run(args, release=False), "release": Run(args, release=True)}
    n_params = sum(p.numel() for p in runs["step"].model.parameters())
    echo(f"TinyGPT: {args.layers} layers, d_model {args.d_model}, vocab {args.vocab}, seq {args.seq}, batch "
         f"{args.batch}: {n_params / 1e6:.2f}M params, {_mib(runs['step'].grad_bytes())} MiB of fp32 gradients; "
         f"{args.optimizer}, accumulation {args.accumulation}, release buckets of {args.bucket_mb:g} MiB "
         f"({len(runs['release'].handle.buckets)} buckets), {args.threads} threads")
    times = interleaved({name: run for name, run in runs.items()}, repeats=args.steps, warmup=args.warmup)
    stats = {name: summarize(t) for name, t in times.items()}
    live = {name: probe_peak(run) for name, run in runs.items()}
    prof = {name: (None if args.no_profiler else profiler_peaks(run)) for name, run in runs.items()}
    diff = max_weight_diff(runs["step"].model, runs["release"].model)
    rows = {}
    echo(f"{'mode':<8} {'peak grads MiB (profiler)':>26} {'peak grads MiB (live)':>22} {'peak all MiB (profiler)':>24} "
         f"{'step ms median (p20-p80)':>26}")
    for name in runs:
        s, pr = stats[name], prof[name]
        rows[name] = {"grad_peak_profiler": None if pr is None else pr[0], "grad_peak_live": live[name],
                      "all_peak_profiler": None if pr is None else pr[1], "median_ms": s.median_ms}
        echo(f"{name:<8} {_mib(None if pr is None else pr[0]):>26} {_mib(live[name]):>22} "
             f"{_mib(None if pr is None else pr[1]):>24} {f'{s.median_ms:.1f} ({s.p20_ms:.1f}-{s.p80_ms:.1f})':>26}")
    ratio = stats["release"].median_ms / stats["step"].median_ms
    echo(f"release / step: peak grads {live['release'] / live['step']:.3f} (live), step time {ratio:.3f}; "
         f"weights after {runs['step'].step_index // args.accumulation} steps: max |difference| {diff:.3g}")
    return {"rows": rows, "time_ratio": ratio, "weight_diff": diff, "buckets": len(runs["release"].handle.buckets),
            "grad_bytes": runs["step"].grad_bytes(), "steps": runs["step"].step_index // args.accumulation}


if __name__ == "__main__":
    main()
