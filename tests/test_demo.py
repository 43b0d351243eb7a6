"""The demo: end to end on tiny settings (outputs, determinism, same init and data for both runs), its
pieces (data split, batches, model, report), and the CLI with ``--data``."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

from lrsched_fused.demo import DemoConfig, run_demo
from lrsched_fused.demo.data import BatchStream, load_corpus, stdlib_sources
from lrsched_fused.demo.model import ModelConfig, TinyCausalLM
from lrsched_fused.demo.recipes import Hyper, cosine_multiplier
from lrsched_fused.demo.report import checkpoints, table, verdict
from lrsched_fused.demo.train import RunResult

pytest.importorskip("matplotlib")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STEPS = 12


def tiny_config(out_dir, **changes) -> DemoConfig:
    cfg = DemoConfig(model=ModelConfig(context=16, width=32, layers=1, heads=2), batch_size=8, val_batches=2,
                     max_bytes=60_000, out_dir=str(out_dir), progress=False, device="cpu",
                     hyper=Hyper(steps=STEPS, warmup=3, decay_fraction=0.25))
    return replace(cfg, **changes)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    lines: list[str] = []
    result = run_demo(tiny_config(out), echo=lines.append)
    return out, result, "\n".join(lines)


def test_demo_writes_png_table_and_json(tiny_run):
    out, result, _ = tiny_run
    assert (out / "demo.png").read_bytes()[:8] == PNG_MAGIC
    text = (out / "table.md").read_text()
    for label in ("start", "end of warmup", "end of stable", "end of decay", "optimizer step, median ms"):
        assert label in text
    assert result.verdict in text
    data = json.loads((out / "runs.json").read_text())
    assert [r["name"] for r in data["runs"]] == ["FusedLAMB + WSD", "torch AdamW + cosine"]
    for r in data["runs"]:
        assert len(r["losses"]) == len(r["lrs"]) == len(r["opt_seconds"]) == STEPS
        assert all(math.isfinite(x) for x in r["losses"])
        # validation at the WSD phase edges: 0, end of warmup (3), end of stable (9), end (12)
        assert sorted(int(k) for k in r["val"]) == [0, 3, 9, 12]


def test_demo_runs_share_init_and_data(tiny_run):
    _, result, _ = tiny_run
    lamb, adamw = result.runs
    # same weights and same first batch: identical loss before the first update and identical val at 0
    assert lamb.losses[0] == adamw.losses[0]
    assert lamb.val[0] == adamw.val[0]
    # and they did train: the last losses differ from the first
    assert lamb.losses[-1] != lamb.losses[0] and adamw.losses[-1] != adamw.losses[0]


def test_demo_lrs_follow_each_recipe_schedule(tiny_run):
    _, result, _ = tiny_run
    hyper = Hyper(steps=STEPS, warmup=3, decay_fraction=0.25)
    sched = hyper.wsd()
    lamb, adamw = result.runs
    for k in range(STEPS):
        # FusedLAMB reports the lr its kernel evaluated (float32); the reference is float64
        assert lamb.lrs[k] == pytest.approx(sched(k), rel=1e-6, abs=1e-12)
        assert adamw.lrs[k] == pytest.approx(hyper.adamw_lr * cosine_multiplier(k, 3, STEPS), rel=1e-12, abs=1e-15)


def test_demo_is_deterministic(tiny_run, tmp_path):
    _, first, _ = tiny_run
    again = run_demo(tiny_config(tmp_path), echo=lambda s: None)
    for a, b in zip(first.runs, again.runs):
        assert a.losses == b.losses
        assert a.val == b.val


def test_demo_on_reference_backend_trains_like_the_auto_backend(tiny_run, tmp_path):
    _, auto, _ = tiny_run
    ref = run_demo(tiny_config(tmp_path, hyper=Hyper(steps=STEPS, warmup=3, decay_fraction=0.25, backend="reference")),
                   echo=lambda s: None)
    assert "'reference'" in ref.runs[0].backend
    # same math on every backend: float32 rounding differences only, after 12 steps of a tiny LM
    for a, b in zip(auto.runs[0].losses, ref.runs[0].losses):
        assert a == pytest.approx(b, rel=1e-4)
    assert auto.runs[1].losses == ref.runs[1].losses  # the AdamW baseline does not depend on the backend


def test_demo_prints_table_and_verdict(tiny_run):
    _, result, printed = tiny_run
    assert result.table in printed
    assert "| checkpoint" in printed and "end of decay" in printed
    assert ("is better" in printed) or ("a tie" in printed)
    assert "Optimizer step:" in printed


def test_cli_demo_with_user_data_file(tmp_path, capsys):
    from lrsched_fused.cli import main

    data = tmp_path / "text.txt"
    data.write_text("the quick brown fox jumps over the lazy dog. " * 400)
    out = tmp_path / "out"
    rc = main(["demo", "--quick", "--steps", "6", "--batch-size", "4", "--data", str(data), "--out", str(out),
               "--no-progress", "--device", "cpu"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert str(data) in printed
    assert (out / "demo.png").read_bytes()[:8] == PNG_MAGIC
    assert "end of decay" in (out / "table.md").read_text()


# -- pieces ------------------------------------------------------------------------------------------


def test_stdlib_sources_are_python_files_in_a_fixed_order():
    files = stdlib_sources()
    assert files == stdlib_sources()
    assert len(files) > 50
    assert all(f.suffix == ".py" for f in files[:100])
    assert not any("site-packages" in f.parts for f in files)


def test_corpus_split_is_disjoint_and_complete():
    corpus = load_corpus(None, max_bytes=200_000, context=16)
    assert corpus.nbytes == 200_000
    assert 0.05 < corpus.val.numel() / corpus.nbytes < 0.15
    assert corpus.train.dtype == torch.int64 and int(corpus.train.max()) < 256


def test_load_corpus_rejects_missing_file(tmp_path):
    with pytest.raises(ValueError, match="--data"):
        load_corpus(tmp_path / "nope.txt")


def test_batches_depend_only_on_seed_and_step_and_shards_partition_them():
    tokens = torch.arange(5000)
    a = BatchStream(tokens, 8, 16, seed=3)
    b = BatchStream(tokens, 8, 16, seed=3)
    x, y = a.batch(7)
    assert torch.equal(x, b.batch(7)[0]) and torch.equal(y, x + 1)  # targets: inputs shifted by one
    assert not torch.equal(a.batch(8)[0], x)
    halves = [BatchStream(tokens, 8, 16, seed=3, shard=r, num_shards=2).batch(7)[0] for r in range(2)]
    assert torch.equal(torch.cat(halves), x)
    with pytest.raises(ValueError, match="batch_size"):
        BatchStream(tokens, 7, 16, seed=0, num_shards=2)


def test_model_is_causal_and_about_one_million_parameters():
    torch.manual_seed(0)
    model = TinyCausalLM(ModelConfig())
    assert 0.9e6 < model.num_parameters() < 1.2e6
    small = TinyCausalLM(ModelConfig(context=8, width=16, layers=1, heads=2))
    x = torch.randint(0, 256, (2, 8))
    y = x.clone()
    y[:, 5:] = (y[:, 5:] + 1) % 256  # change the future only
    with torch.no_grad():
        assert torch.allclose(small(x)[:, :5], small(y)[:, :5])
    with pytest.raises(ValueError, match="context"):
        small(torch.zeros(1, 9, dtype=torch.int64))


def test_checkpoints_drop_duplicate_edges():
    assert checkpoints(0, 10, 10) == [("start", 0), ("end of stable", 10)]
    assert [s for _, s in checkpoints(3, 9, 12)] == [0, 3, 9, 12]


def _run(name, final_val, opt_ms=1.0):
    return RunResult(name=name, backend="x", losses=[5.0, 4.0], lrs=[0.0, 1.0], opt_seconds=[opt_ms / 1e3] * 5,
                     val={0: 5.5, 2: final_val})


@pytest.mark.parametrize("va, vb, expect", [
    (3.00, 3.20, "A is better"),
    (3.20, 3.00, "B is better"),
    (3.000, 3.005, "a tie"),
], ids=["A-wins", "B-wins", "tie"])
def test_verdict_names_the_better_run(va, vb, expect):
    text = verdict(_run("A", va), _run("B", vb, opt_ms=4.0), final_step=2)
    assert expect in text
    assert "A 1.00 ms vs B 4.00 ms" in text


def test_table_has_a_row_per_checkpoint_and_timing_rows():
    text = table([_run("A", 3.0), _run("B", 3.1)], [("start", 0), ("end", 2)])
    lines = text.splitlines()
    assert lines[0].startswith("| checkpoint") and "A: train" in lines[0] and "B: train" in lines[0]
    assert any(ln.startswith("| end ") and "3.000" in ln and "3.100" in ln for ln in lines)
    assert any("optimizer step, median ms" in ln for ln in lines)


def test_demo_writes_each_runs_loss_curve_as_csv(tiny_run):
    from lrsched_fused.predict import read_curve

    out, result, printed = tiny_run
    for run, name in zip(result.runs, ("fusedlamb_wsd", "torch_adamw_cosine")):
        curve = read_curve(out / "curves" / f"{name}.csv")
        assert curve.lrs.tolist() == run.lrs and curve.train_losses.tolist() == run.losses
        assert dict(zip(curve.val_steps.tolist(), curve.val_losses.tolist())) == run.val
    assert "curves" not in printed  # the plain demo prints what it printed before
