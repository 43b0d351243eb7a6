"""The demo end to end: data, one model initialisation, two runs with the same budget, the report.

``run_demo(DemoConfig())`` is what ``python -m lrsched_fused demo`` calls. Both runs start from the same
weights (one seeded initialisation, deep-copied) and see the same batches in the same order
(:class:`~lrsched_fused.demo.data.BatchStream` with the same seed), so they differ only in the optimizer
and its schedule.
"""

from __future__ import annotations

import copy
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

from lrsched_fused import __version__

from .data import BatchStream, load_corpus
from .model import ModelConfig, TinyCausalLM
from .recipes import Hyper, adamw_cosine, lamb_wsd, resolved_backend
from .report import checkpoints, plot_runs, save_json, table, verdict
from .train import RunResult, train

__all__ = ["DemoConfig", "DemoResult", "run_demo", "quick_config", "QUICK"]


@dataclass(frozen=True)
class DemoConfig:
    """Everything that defines a demo run (the CLI flags map onto these fields).

    The defaults take about two minutes on 2 idle CPU cores with a compiled optimizer backend: a 1.0M
    parameter model, 250 steps of 64 windows of 64 bytes (4096 tokens per step) per run.
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

    def __post_init__(self) -> None:
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1; got {self.batch_size!r}")
        if not isinstance(self.val_batches, int) or self.val_batches < 1:
            raise ValueError(f"val_batches must be an integer >= 1; got {self.val_batches!r}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]'; got {self.device!r}")

    def resolved_device(self) -> torch.device:
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
    json: Path
    table_path: Path


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
    and write ``demo.png``, ``table.md`` and ``runs.json`` into ``cfg.out_dir``."""
    device = cfg.resolved_device()
    hyper = cfg.hyper
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    corpus = load_corpus(cfg.data, max_bytes=cfg.max_bytes, context=cfg.model.context)
    stream = BatchStream(corpus.train, cfg.batch_size, cfg.model.context, seed=cfg.seed)
    val_stream = BatchStream(corpus.val, cfg.batch_size, cfg.model.context, seed=cfg.seed + 1)
    val = [val_stream.batch(i, device) for i in range(cfg.val_batches)]

    torch.manual_seed(cfg.seed)
    initial = TinyCausalLM(cfg.model).to(device)
    schedule = hyper.wsd()
    warm, stable_end, total = schedule.starts[1], schedule.starts[2], schedule.total
    rows = checkpoints(warm, stable_end, total)
    lamb_backend = resolved_backend(hyper.backend, device)

    echo(f"lrsched-fused {__version__} demo: causal byte-level LM, {initial.num_parameters() / 1e6:.2f}M parameters "
         f"(width {cfg.model.width}, {cfg.model.layers} layers, context {cfg.model.context})")
    echo(f"data: {corpus.source}: {corpus.files} file(s), {corpus.train.numel():,} train / {corpus.val.numel():,} "
         f"validation bytes")
    echo(f"budget per run: {total} steps x {cfg.batch_size} windows x {cfg.model.context} bytes "
         f"({cfg.batch_size * cfg.model.context:,} tokens per step) on {device}, {torch.get_num_threads()} thread(s)")
    echo(f"  A: FusedLAMB (backend {hyper.backend!r} -> {lamb_backend!r}) + {schedule!r}")
    echo(f"  B: torch.optim.AdamW(lr={hyper.adamw_lr:g}) + LambdaLR(linear warmup {hyper.warmup}, cosine to "
         f"{hyper.final_lr_ratio:g} x peak)")
    if lamb_backend == "reference":
        why = ("no compiled backend for these tensors is built here, so " if hyper.backend == "auto" else "")
        echo(f"  note: {why}FusedLAMB runs on the slow pure-torch 'reference' backend; its step time below is not "
             "representative (see `lrsched-fused info`)")

    runs = []
    for label, factory in (("A: FusedLAMB + WSD", lamb_wsd(hyper)), ("B: AdamW + cosine", adamw_cosine(hyper))):
        model = copy.deepcopy(initial)
        tick, close = _progress_bar(total, label, cfg.progress)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r"lrsched_fused: no compiled backend",
                                        category=RuntimeWarning)
                runs.append(train(model, factory, stream, total, val_batches=val, eval_at=[k for _, k in rows],
                                  device=device, progress=tick))
        finally:
            close()

    text = table(runs, rows)
    summary = verdict(runs[0], runs[1], total)
    table_path = out / "table.md"
    table_path.write_text(text + "\n\n" + summary + "\n")
    config = {"version": __version__, "device": str(device), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "data": corpus.source, "schedule": schedule.to_dict(),
              **{k: v for k, v in asdict(cfg).items() if k not in ("hyper", "model")},
              "model": asdict(cfg.model), "hyper": asdict(hyper)}
    json_path = save_json(runs, config, out / "runs.json")
    png = None
    try:
        png = plot_runs(runs, schedule.edges, out / "demo.png",
                        title=f"{initial.num_parameters() / 1e6:.2f}M-parameter byte LM, {total} steps x "
                              f"{cfg.batch_size * cfg.model.context} tokens, seed {cfg.seed}")
    except ImportError:
        echo("matplotlib is not installed: no figure (pip install 'lrsched-fused[demo]')")

    echo("")
    echo(text)
    echo("")
    echo(summary)
    echo("")
    written = ", ".join(str(p) for p in (table_path, json_path, png) if p is not None)
    echo(f"wrote {written}  ({time.perf_counter() - t_start:.0f} s in all)")
    return DemoResult(runs=runs, table=text, verdict=summary, png=png, json=json_path, table_path=table_path)
