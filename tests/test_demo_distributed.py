"""The distributed demo (issue 7): ``torchrun --nproc-per-node 2 -m lrsched_fused demo --distributed fsdp|ddp``
on CPU with gloo against the single-process demo with the same settings.

The comparison: the same experiment (seed, so the same initial weights on every rank; model; hyperparameters;
the same global batch of ``BATCH`` windows per step in the same order; the same validation windows), run
once in one process and once in 2 processes that each take their ``BATCH / 2`` rows of every global batch.
Rank 0 writes ``runs.json``; its per-step training losses (the all-reduced mean of the ranks' losses) and its
validation losses must match the single-process ones to ``LOSS_RTOL`` = 1e-5 relative at every step, for
both recipes (FusedLAMB + WSD and torch AdamW + cosine).

That the run really was distributed is checked apart from the losses (which a single process would
reproduce exactly): ``runs.json`` records the mode, the world size, the threads per process and, under
FSDP2, rank 0 holding only its shard of the parameters. :func:`test_half_batch_training_is_caught`
shows that the tolerance catches a rank that logs its local loss or trains without averaged gradients.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from lrsched_fused.cli import main
from lrsched_fused.demo import distributed as D
from lrsched_fused.demo.compare import LOSS_RTOL, compare, format_agreement, within
from lrsched_fused.demo.data import BatchStream, load_corpus
from lrsched_fused.demo.model import TinyCausalLM, next_token_loss
from lrsched_fused.demo.recipes import Hyper, lamb_wsd
from lrsched_fused.demo.run import QUICK
from lrsched_fused.demo.train import train

STEPS = 10
BATCH = 16
#: the quick demo, shortened: the same flags for the single-process and the distributed runs
FLAGS = ["demo", "--quick", "--steps", str(STEPS), "--warmup", "2", "--batch-size", str(BATCH), "--no-progress",
         "--device", "cpu", "--seed", "3"]
#: a torchrun launch (2 processes importing torch on 2 cores, then the run) takes ~10 s; a hang is cut off here
TORCHRUN_TIMEOUT_S = 180


def rel_errors(got: list[float], ref: list[float]) -> list[float]:
    """Per-step ``|got - ref| / |ref|`` (independent of :mod:`lrsched_fused.demo.compare`)."""
    assert len(got) == len(ref)
    return [abs(a - b) / abs(b) for a, b in zip(got, ref)]


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> dict:
    """The single-process quick demo (its ``runs.json``), path included."""
    out = tmp_path_factory.mktemp("single")
    assert main(FLAGS + ["--out", str(out)]) == 0
    data = json.loads((out / "runs.json").read_text())
    data["path"] = out / "runs.json"
    return data


def torchrun(mode: str, out, *extra: str) -> subprocess.CompletedProcess:
    """2 processes of the demo under ``python -m torch.distributed.run`` (torchrun), ``--standalone`` so
    that concurrent jobs on one machine do not share a rendezvous port."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT", "OMP_NUM_THREADS")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "lrsched_fused", *FLAGS, "--distributed", mode, "--out", str(out), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TORCHRUN_TIMEOUT_S, env=env)


@pytest.mark.parametrize("mode", ["fsdp", "ddp"])
def test_distributed_demo_matches_single_process(mode, single, tmp_path):
    out = tmp_path / mode
    proc = torchrun(mode, out, "--compare", str(single["path"]))
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    data = json.loads((out / "runs.json").read_text())
    cfg = data["config"]

    # it did run distributed, as asked: 2 ranks, the explicit per-process thread count, and (FSDP2) shards
    assert cfg["distributed"] == mode and cfg["world_size"] == 2, cfg
    assert cfg["threads"] == D.default_threads(2)
    if mode == "fsdp":
        assert cfg["parameters_on_rank0"] < 0.6 * cfg["parameters"], cfg
    else:
        assert cfg["parameters_on_rank0"] == cfg["parameters"], cfg
    assert f"distributed: {mode} over 2 processes" in log
    # the same experiment as the single-process run
    for key in ("seed", "batch_size", "model", "hyper", "data", "val_batches", "max_bytes"):
        assert cfg[key] == single["config"][key], key
    assert single["config"]["world_size"] == 1

    # per-step losses and validation losses of both recipes, to 1e-5 relative
    ref_runs = {r["name"]: r for r in single["runs"]}
    assert [r["name"] for r in data["runs"]] == list(ref_runs) == ["FusedLAMB + WSD", "torch AdamW + cosine"]
    for run in data["runs"]:
        ref = ref_runs[run["name"]]
        assert len(run["losses"]) == STEPS
        worst = max(rel_errors(run["losses"], ref["losses"]))
        assert worst <= LOSS_RTOL, f"{mode} {run['name']}: training losses differ by {worst:.2e} relative"
        assert sorted(run["val"]) == sorted(ref["val"]) and len(ref["val"]) == 4
        worst_val = max(rel_errors([run["val"][k] for k in ref["val"]], list(ref["val"].values())))
        assert worst_val <= LOSS_RTOL, f"{mode} {run['name']}: validation losses differ by {worst_val:.2e}"
        assert run["losses"][-1] < run["losses"][0]  # and it trained
    # the demo's own check, printed by rank 0 only
    assert log.count("loss agreement with") == 1 and "match: tolerance 1e-05" in log
    assert log.count("| checkpoint") == 1


def test_distributed_demo_rejects_a_global_batch_not_divisible_by_the_processes(tmp_path):
    proc = torchrun("ddp", tmp_path, "--batch-size", "15")
    assert proc.returncode != 0
    assert "must be divisible by the number of processes (2)" in proc.stdout + proc.stderr
    assert not (tmp_path / "runs.json").exists()


def test_half_batch_training_is_caught(single):
    """The sensitivity of the check: a rank training on its half of each batch without averaged gradients
    (a DDP loss computed through ``ddp.module``, or a silent single process on a shard) logs losses that
    differ from the global-batch run by more than 1e-5 (at step 0 already, by logging its local loss: the
    initial losses are all near ln 256, so that first difference is small, ~7e-5; later ones are larger)."""
    cfg = single["config"]
    corpus = load_corpus(None, max_bytes=cfg["max_bytes"], context=cfg["model"]["context"])
    torch.manual_seed(cfg["seed"])
    model = TinyCausalLM(QUICK["model"])
    stream = BatchStream(corpus.train, BATCH, QUICK["model"].context, seed=cfg["seed"], shard=0, num_shards=2)
    hyper = Hyper(**{**cfg["hyper"], "betas": tuple(cfg["hyper"]["betas"])})
    half = train(model, lamb_wsd(hyper), stream, STEPS, val_batches=[], loss_fn=next_token_loss)
    errors = rel_errors(half.losses, single["runs"][0]["losses"])
    assert errors[0] > 3 * LOSS_RTOL
    assert max(errors[1:]) > 100 * LOSS_RTOL


def test_compare_flags_a_loss_difference_above_tolerance(single):
    perturbed = json.loads(json.dumps({k: v for k, v in single.items() if k != "path"}))
    assert within(compare(perturbed, perturbed))
    perturbed["runs"][1]["losses"][4] *= 1 + 3 * LOSS_RTOL
    agreement = compare(perturbed, single)
    assert not within(agreement)
    assert agreement[1].worst_step == 4 and agreement[1].train_max_rel == pytest.approx(3 * LOSS_RTOL, rel=1e-6)
    assert agreement[0].max_rel == 0.0
    assert agreement[1].first_over == 4 and agreement[0].first_over is None
    assert "MISMATCH" in format_agreement(agreement, "ref")
    # the verdict looks at the first MATCH_STEPS steps only: a difference after them is reported, not failed
    late = compare(perturbed, single, match_steps=4)
    assert within(late) and late[1].early_max_rel == 0.0 and late[1].train_max_rel > LOSS_RTOL
    assert "match" in format_agreement(late, "ref") and "over 1e-05 from step 4" in format_agreement(late, "ref")
    other = json.loads(json.dumps(perturbed))
    other["config"]["seed"] += 1
    with pytest.raises(ValueError, match="different experiments.*seed"):
        compare(other, single)


def test_distributed_flag_outside_torchrun_is_a_clear_error(monkeypatch, tmp_path, capsys):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    assert main(FLAGS + ["--out", str(tmp_path), "--distributed", "fsdp"]) == 2
    err = capsys.readouterr().err
    assert "torchrun" in err and "RANK" in err
    assert main(FLAGS + ["--out", str(tmp_path), "--distributed", "ddp", "--device", "cuda"]) == 2
    assert "CPU with gloo" in capsys.readouterr().err
    assert not (tmp_path / "runs.json").exists()


def test_default_threads_split_the_cores_between_local_processes():
    cores = D.usable_cores()
    assert D.default_threads(1) == cores
    assert D.default_threads(2) == max(1, cores // 2)
    assert D.default_threads(10 * cores) == 1
