"""The demo end to end: data, one model initialisation, two runs with the same budget, the report.

``run_demo(DemoConfig())`` is what ``python -m lrsched_fused demo`` calls. Both runs start from the same
weights (one seeded initialisation, deep-copied) and see the same batches in the same order
(:class:`~lrsched_fused.demo.data.BatchStream` with the same seed), so they differ only in the optimizer
and its schedule.

With ``DemoConfig(distributed="fsdp" | "ddp")``, under ``torchrun``, every rank runs this same function on
its slice of each global batch (:mod:`.distributed` says how the run stays the same experiment); rank 0
alone prints and writes the outputs. ``compare=".../runs.json"`` then measures the loss agreement with a
previous (e.g. single-process) run (:mod:`.compare`).
"""

from __future__ import annotations

import copy
import json
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

from lrsched_fused import __version__

from . import distributed as D
from .compare import LOSS_RTOL, Agreement, compare, format_agreement, load_runs, within
from .data import BatchStream, load_corpus
from .model import ModelConfig, TinyCausalLM, next_token_loss
from .recipes import Hyper, adamw_cosine, lamb_wsd, resolved_backend
from .report import checkpoints, plot_runs, save_json, table, verdict, write_curves
from .train import RunResult, train

__all__ = ["DemoConfig", "DemoResult", "run_demo", "quick_config", "QUICK"]


@dataclass(frozen=True)
class DemoConfig:
    """Everything that defines a demo run (the CLI flags map onto these fields).

    The defaults take about two minutes on 2 idle CPU cores with a compiled optimizer backend: a 1.0M
    parameter model, 250 steps of 64 windows of 64 bytes (4096 tokens per step) per run.

    ``distributed``: ``None`` (one process), ``"ddp"`` or ``"fsdp"`` (under ``torchrun``, CPU and gloo;
    ``batch_size`` is the global batch and must be divisible by the number of processes). ``threads``: torch
    intra-op threads per process; ``None`` leaves torch's setting alone in one process and uses
    :func:`~lrsched_fused.demo.distributed.default_threads` per process when distributed. ``compare``: a
    ``runs.json`` of an earlier run of the same experiment to check the losses against.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    hyper: Hyper = field(default_factory=Hyper)
    batch_size: int = 64
    val_batches: int = 8
    max_bytes: int = 4_000_000
    data: str | None = None
    seed: int = 0
    device: str = "auto"
    out_dir: str = "demo_out"
    progress: bool = True
    distributed: str | None = None
    threads: int | None = None
    compare: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1; got {self.batch_size!r}")
        if not isinstance(self.val_batches, int) or self.val_batches < 1:
            raise ValueError(f"val_batches must be an integer >= 1; got {self.val_batches!r}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]'; got {self.device!r}")
        if self.distributed is not None:
            if self.distributed not in D.MODES:
                raise ValueError(f"distributed must be one of {', '.join(D.MODES)}; got {self.distributed!r}")
            if self.device not in ("auto", "cpu"):
                raise ValueError(f"the distributed demo runs on CPU with gloo: device must be 'auto' or 'cpu' with "
                                 f"--distributed; got {self.device!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"threads must be an integer >= 1; got {self.threads!r}")

    def resolved_device(self) -> torch.device:
        if self.distributed is not None:
            return torch.device("cpu")
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {self.device!r} was asked for but torch sees no CUDA device")
        return torch.device(self.device)


#: ``--quick``: a smaller model, fewer steps, less data; well under a minute on 2 cores even with the
#: slow reference backend (used by CI).
QUICK = dict(model=ModelConfig(context=32, width=64, layers=2, heads=2), batch_size=32, val_batches=4,
             max_bytes=600_000, steps=80, warmup=8)


def quick_config(**overrides) -> DemoConfig:
    """The ``--quick`` configuration, with ``overrides`` applied (``steps``/``warmup`` go to ``hyper``)."""
    q = dict(QUICK)
    q.update(overrides)
    steps, warmup = q.pop("steps"), q.pop("warmup")
    hyper = q.pop("hyper", Hyper())
    return DemoConfig(hyper=replace(hyper, steps=steps, warmup=warmup), **q)


@dataclass
class DemoResult:
    """Both runs and where the outputs went."""

    runs: list[RunResult]
    table: str
    verdict: str
    png: Path | None
    json: Path | None
    table_path: Path | None
    #: with ``compare``, on rank 0 (or the single process): the loss agreement per recipe
    agreement: list[Agreement] | None = None

    @property
    def matches(self) -> bool:
        """No comparison, or the losses of the first :data:`~lrsched_fused.demo.compare.MATCH_STEPS` steps
        agree to :data:`~lrsched_fused.demo.compare.LOSS_RTOL` (:func:`~lrsched_fused.demo.compare.within`)."""
        return self.agreement is None or within(self.agreement, LOSS_RTOL)


def _progress_bar(total: int, desc: str, enabled: bool):
    """A tqdm bar on a terminal (tqdm comes with ``pip install 'lrsched-fused[demo]'``); otherwise (a log
    file, CI, tqdm missing) one line about every 10% of the run. Returns ``(tick, close)``."""
    if not enabled:
        return (lambda k, loss: None), (lambda: None)
    tqdm = None
    if sys.stderr.isatty():
        try:
            from tqdm.auto import tqdm
        except ImportError:
            pass
    if tqdm is None:
        every = max(1, total // 10)
        last = {"loss": None}

        def tick(k: int, loss: float | None) -> None:
            last["loss"] = loss if loss is not None else last["loss"]
            if (k + 1) % every == 0 or k == total - 1:
                shown = "" if last["loss"] is None else f"  loss {last['loss']:.3f}"
                print(f"  {desc}: step {k + 1}/{total}{shown}", file=sys.stderr, flush=True)

        return tick, (lambda: None)
    bar = tqdm(total=total, desc=desc, unit="step", leave=True, dynamic_ncols=True)

    def tick(k: int, loss: float | None) -> None:
        bar.update(1)
        if loss is not None:
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

    return tick, bar.close


def run_demo(cfg: DemoConfig, echo: Callable[[str], None] = print) -> DemoResult:
    """Train the model twice (FusedLAMB + WSD, torch AdamW + cosine), print the table and the verdict,
    and write ``demo.png``, ``table.md``, ``runs.json`` and the loss curves ``curves/<run>.csv`` (columns
    ``step,loss,lr,val_loss``, for ``lrsched-fused predict``) into ``cfg.out_dir``.

    Distributed (``cfg.distributed``): joins the ``torchrun`` job (gloo, initialised here unless a process
    group exists; destroyed at the end if created here), and only rank 0 echoes and writes files (the
    returned paths are ``None`` on the other ranks).
    """
    reference = load_runs(cfg.compare) if cfg.compare is not None else None  # a bad path fails before training
    if cfg.distributed is None:
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        return _run(cfg, echo, None, reference)
    env, created = D.init(cfg.distributed)
    try:
        torch.set_num_threads(cfg.threads if cfg.threads is not None else D.default_threads(env.local_world_size))
        if cfg.batch_size % env.world_size:
            raise ValueError(f"batch_size ({cfg.batch_size}, the global batch) must be divisible by the number of "
                             f"processes ({env.world_size})")
        return _run(cfg, echo if env.is_main else (lambda s: None), env, reference)
    finally:
        if created:
            D.shutdown()


def _run(cfg: DemoConfig, echo: Callable[[str], None], env: D.DistEnv | None, reference: dict | None) -> DemoResult:
    device = cfg.resolved_device()
    hyper = cfg.hyper
    main = env is None or env.is_main
    rank, world = (0, 1) if env is None else (env.rank, env.world_size)
    out = Path(cfg.out_dir)
    if main:
        out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    corpus = load_corpus(cfg.data, max_bytes=cfg.max_bytes, context=cfg.model.context)
    # this rank's rows of every global batch (all of them in one process)
    stream = BatchStream(corpus.train, cfg.batch_size, cfg.model.context, seed=cfg.seed, shard=rank, num_shards=world)
    val_stream = BatchStream(corpus.val, cfg.batch_size, cfg.model.context, seed=cfg.seed + 1, shard=rank,
                             num_shards=world)
    val = [val_stream.batch(i, device) for i in range(cfg.val_batches)]

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    initial = TinyCausalLM(cfg.model).to(device)
    schedule = hyper.wsd()
    warm, stable_end, total = schedule.starts[1], schedule.starts[2], schedule.total
    rows = checkpoints(warm, stable_end, total)
    lamb_backend = resolved_backend(hyper.backend, device)
    threads = torch.get_num_threads()

    echo(f"lrsched-fused {__version__} demo: causal byte-level LM, {initial.num_parameters() / 1e6:.2f}M parameters "
         f"(width {cfg.model.width}, {cfg.model.layers} layers, context {cfg.model.context})")
    echo(f"data: {corpus.source}: {corpus.files} file(s), {corpus.train.numel():,} train / {corpus.val.numel():,} "
         f"validation bytes")
    echo(f"budget per run: {total} steps x {cfg.batch_size} windows x {cfg.model.context} bytes "
         f"({cfg.batch_size * cfg.model.context:,} tokens per step) on {device}, {threads} thread(s)"
         + ("" if env is None else f" per process, {cfg.batch_size // world} windows per process"))
    if env is not None:
        echo(D.describe(env, threads))
    echo(f"  A: FusedLAMB (backend {hyper.backend!r} -> {lamb_backend!r}) + {schedule!r}")
    echo(f"  B: torch.optim.AdamW(lr={hyper.adamw_lr:g}) + LambdaLR(linear warmup {hyper.warmup}, cosine to "
         f"{hyper.final_lr_ratio:g} x peak)")
    if lamb_backend == "reference":
        why = ("no compiled backend for these tensors is built here, so " if hyper.backend == "auto" else "")
        echo(f"  note: {why}FusedLAMB runs on the slow pure-torch 'reference' backend; its step time below is not "
             "representative (see `lrsched-fused info`)")

    runs = []
    params_here = initial.num_parameters()
    for label, factory in (("A: FusedLAMB + WSD", lamb_wsd(hyper)), ("B: AdamW + cosine", adamw_cosine(hyper))):
        model = copy.deepcopy(initial)
        if env is not None:
            model = D.wrap(model, env)
            params_here = D.local_numel(D.unwrap(model))
            factory = _on_unwrapped(factory)
        tick, close = _progress_bar(total, label, cfg.progress and main)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r"lrsched_fused: no compiled backend",
                                        category=RuntimeWarning)
                runs.append(train(model, factory, stream, total, val_batches=val, eval_at=[k for _, k in rows],
                                  device=device, progress=tick, loss_fn=next_token_loss,
                                  reduce=None if env is None else D.mean_over_ranks))
        finally:
            close()

    text = table(runs, rows)
    summary = verdict(runs[0], runs[1], total)
    # the fields of cfg, then what was resolved at run time (the actual threads, the data source, ...)
    config = {**{k: v for k, v in asdict(cfg).items() if k not in ("hyper", "model")},
              "version": __version__, "device": str(device), "threads": threads, "torch": torch.__version__,
              "data": corpus.source, "schedule": schedule.to_dict(), "model": asdict(cfg.model), "hyper": asdict(hyper),
              "world_size": world, "parameters": initial.num_parameters(), "parameters_on_rank0": params_here}
    agreement = None
    if reference is not None and main:  # rank 0 alone decides the exit status (the others exit 0)
        # through JSON, as the reference was (tuples become lists, step keys strings)
        mine = json.loads(json.dumps({"config": config, "runs": [
            {"name": r.name, "losses": r.losses, "val": {str(k): v for k, v in r.val.items()}} for r in runs]}))
        agreement = compare(mine, reference)
    if not main:
        return DemoResult(runs=runs, table=text, verdict=summary, png=None, json=None, table_path=None,
                          agreement=agreement)

    table_path = out / "table.md"
    table_path.write_text(text + "\n\n" + summary + "\n")
    json_path = save_json(runs, config, out / "runs.json")
    write_curves(runs, out / "curves")  # step,loss,lr CSVs for `lrsched-fused predict --fit` (not listed below)
    png = None
    try:
        png = plot_runs(runs, schedule.edges, out / "demo.png",
                        title=f"{initial.num_parameters() / 1e6:.2f}M-parameter byte LM, {total} steps x "
                              f"{cfg.batch_size * cfg.model.context} tokens, seed {cfg.seed}"
                              + ("" if env is None else f", {env.mode} x {world}"))
    except ImportError:
        echo("matplotlib is not installed: no figure (pip install 'lrsched-fused[demo]')")

    echo("")
    echo(text)
    echo("")
    echo(summary)
    if agreement is not None:
        echo("")
        echo(format_agreement(agreement, cfg.compare, LOSS_RTOL))
    echo("")
    written = ", ".join(str(p) for p in (table_path, json_path, png) if p is not None)
    echo(f"wrote {written}  ({time.perf_counter() - t_start:.0f} s in all)")
    return DemoResult(runs=runs, table=text, verdict=summary, png=png, json=json_path, table_path=table_path,
                      agreement=agreement)


def _on_unwrapped(factory):
    """The recipe factory applied to the module the optimizer must update (``ddp.module`` under DDP; the
    sharded root under FSDP2), while ``train`` drives the wrapper."""
    return lambda wrapped: factory(D.unwrap(wrapped))
