"""The scripts in ``examples/`` run as users run them (a subprocess each) and print what they promise.

* ``swap_in_for_adamw.py``: FusedAdamW with an in-kernel cosine schedule against torch AdamW + LambdaLR
  (<= 1e-5 relative), and a torch.save / torch.load(weights_only=True) resume (bit-exact);
* ``fsdp2_lamb.py`` under ``python -m torch.distributed.run`` with 2 processes (gloo on CPU): a straight
  run, a run that saves a sharded DCP checkpoint at step K on the way, and a ``--resume`` from that
  checkpoint in fresh processes all print the same final evaluation loss, compared as ``repr`` strings
  (bit-exact on CPU). The logged steps after K also print identically;
* ``hf_trainer.py``: FusedAdamW under the HF Trainer against torch AdamW + LambdaLR (weights <= 1e-5 relative,
  logged learning_rate <= 1e-12) and a resume from the Trainer's checkpoint (exact);
* ``lightning.py``: FusedLAMB under Lightning: LearningRateMonitor's lr equals the schedule, and
  ``fit(ckpt_path=...)`` ends with the uninterrupted run's weights (exact).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import importlib.util

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
#: a hang is cut off here (each run takes a few seconds; a torchrun launch ~7 s on 2 idle cores)
TIMEOUT_S = 180
#: fsdp2_lamb.py settings: N updates, checkpoint after K (inside WSD's stable phase; the decay follows)
N, K, LOG_EVERY = 12, 6, 3


def clean_env() -> dict[str, str]:
    """This environment without the variables of an enclosing torchrun job (the launcher sets its own)."""
    drop = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "OMP_NUM_THREADS")
    return {k: v for k, v in os.environ.items() if k not in drop}


def run(*args: str) -> str:
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=TIMEOUT_S,
                          env=clean_env(), cwd=EXAMPLES.parent)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    return proc.stdout


def test_swap_in_for_adamw_matches_torch_and_resumes_exactly():
    out = run(str(EXAMPLES / "swap_in_for_adamw.py"), "--steps", "20")
    diffs = [float(x) for x in re.findall(r"max rel diff (\S+)", out)]
    assert len(diffs) == 2, out
    b_vs_a, c_vs_b = diffs
    assert b_vs_a <= 1e-5, out
    assert c_vs_b == 0.0, out
    assert "clock=[20, 0]" in out and out.rstrip().endswith("OK"), out


def fsdp2_lamb(ckpt: Path, *extra: str) -> str:
    return run("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               str(EXAMPLES / "fsdp2_lamb.py"), "--steps", str(N), "--log-every", str(LOG_EVERY),
               "--ckpt", str(ckpt), *extra)


def final_loss(out: str) -> str:
    found = re.findall(r"^final eval loss (\S+)$", out, flags=re.M)
    assert len(found) == 1, out
    return found[0]


def step_lines(out: str) -> dict[int, str]:
    return {int(m.group(1)): m.group(0) for m in re.finditer(r"^step +(\d+) .*$", out, flags=re.M)}


@pytest.mark.slow
def test_fsdp2_lamb_resume_from_sharded_checkpoint_is_exact(tmp_path):
    ckpt = tmp_path / "ckpt"
    straight = fsdp2_lamb(tmp_path / "unused", "--save-at", "0")
    saving = fsdp2_lamb(ckpt, "--save-at", str(K))
    resumed = fsdp2_lamb(ckpt, "--resume")

    assert "2 process(es), 16 rows each" in straight, straight
    assert not (tmp_path / "unused").exists()
    assert f"saved a sharded checkpoint at step {K}" in saving, saving
    assert sorted(p.name for p in ckpt.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]  # one per rank
    assert f"resumed from {ckpt} at step {K}" in resumed, resumed

    # the resumed processes ran only the steps after K, and logged them as the uninterrupted runs did
    logged = step_lines(resumed)
    assert logged and min(logged) > K, resumed
    assert logged == {s: line for s, line in step_lines(straight).items() if s > K}
    assert step_lines(saving) == step_lines(straight)
    assert final_loss(saving) == final_loss(straight)
    assert final_loss(resumed) == final_loss(straight)


def need(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (pip install -e '.[test]')")


def test_hf_trainer_matches_torch_and_resumes_exactly():
    need("transformers", "accelerate")
    out = run(str(EXAMPLES / "hf_trainer.py"), "--steps", "12")
    found = re.findall(r"weights max rel diff (\S+), logged lr max rel diff (\S+)", out)
    assert len(found) == 2, out
    (w_ba, lr_ba), (w_cb, lr_cb) = [(float(w), float(lr)) for w, lr in found]
    assert w_ba <= 1e-5 and lr_ba <= 1e-12, out
    assert w_cb == 0.0 and lr_cb == 0.0, out
    assert "clock=[12, 0]" in out and out.rstrip().endswith("OK"), out


def test_lightning_logs_the_schedule_and_resumes_exactly():
    need("pytorch_lightning")
    out = run(str(EXAMPLES / "lightning.py"), "--epochs", "2")
    lr_diff = re.findall(r"max rel diff (\S+)\n", out)
    assert lr_diff and float(lr_diff[0]) <= 1e-12, out
    assert "weights max rel diff 0.000e+00, logged lr equal at the 8 resumed steps" in out, out
    assert "steps=16 resumed_at=8 param groups=2 clock=[16, 0]" in out and out.rstrip().endswith("OK"), out
