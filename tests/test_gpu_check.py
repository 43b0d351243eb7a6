"""The GPU check (``python -m bench.gpu_check``, ``bench/gpu/``) on a CPU machine: its pure parts (arguments,
the plan, bytes, the tables, the files), the shell script's syntax, and a dry run on the C++ backend.

The dry run with the Triton interpreter as well (every code path of the GPU run, about a minute) is
marked slow; a real run needs a GPU (``bash bench/gpu_check.sh``).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `bench` is a top-level directory of the repository, not an installed package
    sys.path.insert(0, str(REPO))

from bench.gpu import report  # noqa: E402
from bench.gpu.cli import DEFAULT_CSV, main, parse_args  # noqa: E402
from bench.gpu.record import Record  # noqa: E402
from bench.gpu.timings import transformer_shapes  # noqa: E402

from helpers import have_backend  # noqa: E402


def _env(**extra: str) -> dict:
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


# ---------------------------------------------------------------------------------------------------
# arguments and plan
# ---------------------------------------------------------------------------------------------------
def test_defaults_and_dry_run_backends(monkeypatch):
    monkeypatch.delenv("GPU_CHECK_BUDGET_S", raising=False)
    args = parse_args([])
    assert (args.backends, args.params, args.iters, args.budget, args.csv) == (["triton", "cuda"], 10**9, 20, 210.0,
                                                                               DEFAULT_CSV)
    dry = parse_args(["--dry-run"])
    assert dry.backends == ["triton", "cpu"] and dry.csv is None  # the dry run appends to no CSV unless asked
    assert parse_args(["--params", "500M", "--backends", "cuda,cuda"]).params == 500_000_000
    assert parse_args(["--backends", "cuda,cuda"]).backends == ["cuda"]
    monkeypatch.setenv("GPU_CHECK_BUDGET_S", "123")  # gpu_check.sh passes what the install left
    assert parse_args([]).budget == 123.0


@pytest.mark.parametrize("argv,message", [
    (["--backends", "triton,rocm"], "--backends"),
    (["--iters", "0"], "--iters"),
    (["--params", "ten"], "not a count"),
    (["--budget", "0"], "--budget"),
    (["--pytest", "maybe"], "--pytest"),
], ids=["unknown-backend", "zero-iters", "bad-params", "zero-budget", "bad-pytest"])
def test_bad_arguments_are_rejected(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_plan_needs_no_gpu_and_counts_bytes(capsys):
    assert main(["--plan", "--params", "1e9"]) == 0
    out = capsys.readouterr().out
    n = sum(torch.Size(s).numel() for s in transformer_shapes(1e9))
    assert f"on {n:,} params" in out
    for row, b in (("adamw fp32 (ours, torch fused)", 28), ("lamb fp32 (ours)", 40),
                   ("adamw bf16, ours: fp32 master + moments", 30), ("adamw bf16, torch fused: bf16 moments", 14)):
        line = next(x for x in out.splitlines() if row in x)
        assert line.split()[-3] == str(b) and float(line.split()[-1]) == pytest.approx(b * n / 4300e6, abs=1e-3)
    assert "correctness per backend (triton, cuda)" in out and "bf16+bf16 states" in out


def test_model_shapes_are_near_the_target():
    for target in (3e8, 1e9):
        n = sum(torch.Size(s).numel() for s in transformer_shapes(target))
        assert abs(n - target) / target < 0.03
    assert len(transformer_shapes(1e3)) == 1 + 12 + 2  # at least one layer


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_without_cuda_it_exits_zero_at_once(capsys):
    assert main([]) == 0
    assert "nothing to check" in capsys.readouterr().out


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_shell_script_parses():
    proc = subprocess.run(["bash", "-n", str(REPO / "bench" / "gpu_check.sh")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    text = (REPO / "bench" / "gpu_check.sh").read_text()
    assert "-m bench.gpu_check" in text and "LRSCHED_BUILD_CUDA" in text


def test_runs_as_a_module_and_as_a_file(tmp_path):
    for cmd in ([sys.executable, "-m", "bench.gpu_check", "--plan"],
                [sys.executable, str(REPO / "bench" / "gpu_check.py"), "--plan"]):
        proc = subprocess.run(cmd, cwd=REPO if "-m" in cmd else tmp_path, capture_output=True, text=True,
                              timeout=120, env=_env())
        assert proc.returncode == 0 and "gpu_check plan" in proc.stdout, proc.stderr[-2000:]


# ---------------------------------------------------------------------------------------------------
# record and report
# ---------------------------------------------------------------------------------------------------
def _record() -> Record:
    rec = Record(echo=False)
    rec.info.update(date="2026-01-01T00:00:00", gpu="NVIDIA H200", torch="2.11.0", triton="3.6.0",
                    lrsched_fused="0.1.0", copy_gbps=4000.0, model="219 tensors, 1009.5M params", run_id="r1")
    rec.check("correctness (triton)", "triton adamw fp32", True, "1e-8")
    rec.check("correctness (cuda)", "cuda lamb bf16", False, "max rel err 3e-1")
    rec.skip("correctness (cuda)", "cuda adamw fp64", "no kernels")
    n = 1_000_000_000
    rec.add_row("copy (floor)", "tensor.copy_", "copy", 500_000_000, 1, "float32", [1.0, 1.0, 1.0], 8, what="floor")
    rec.add_row("adamw fp32", "ours triton: FusedAdamW.step()", "triton", n, 219, "float32", [7.0, 8.0, 9.0], 28)
    rec.add_row("adamw fp32", "ours triton: kernel launches only", "triton", n, 219, "float32", [6.0], 28,
                what="kernel")
    rec.add_row("adamw fp32", "ours cuda: FusedAdamW.step()", "cuda", n, 219, "float32", [14.0], 28)
    rec.add_row("adamw fp32", "torch.optim.AdamW(fused=True)", "torch", n, 219, "float32", [10.0], 28)
    rec.add_row("lamb fp32", "ours triton: FusedLAMB.step()", "triton", n, 219, "float32", [20.0], 40)
    return rec


def test_rows_get_bandwidth_floor_fraction_and_ratio():
    rec = _record()
    step = rec.rows[1]
    assert (step["median_ms"], step["p20_ms"], step["p80_ms"], step["repeats"]) == (8.0, 7.4, 8.6, 3)
    assert step["GB_s"] == pytest.approx(28e9 / 8e-3 / 1e9)
    rows = {r["implementation"]: r for r in report.finish_rows(rec.rows, rec.info)}
    assert rows["ours triton: FusedAdamW.step()"]["ratio_vs_torch_fused"] == 0.8
    assert rows["ours cuda: FusedAdamW.step()"]["ratio_vs_torch_fused"] == 1.4
    assert rows["torch.optim.AdamW(fused=True)"]["ratio_vs_torch_fused"] == ""  # not against itself
    assert rows["ours triton: FusedLAMB.step()"]["ratio_vs_torch_fused"] == ""  # no torch LAMB
    assert rows["ours triton: FusedAdamW.step()"]["floor_frac"] == pytest.approx(3500 / 4000, abs=1e-4)
    assert rows["tensor.copy_"]["floor_frac"] == 1.0
    assert all(r["floor_frac"] == "" for r in report.finish_rows(rec.rows, {}))


def test_short_table_has_verdicts_ours_vs_torch_and_floor():
    rec = _record()
    text = report.summary(rec.info, rec.checks, rec.rows)
    lines = text.splitlines()
    assert "1 checks passed, 1 failed, 1 skipped" in lines[0] and "NVIDIA H200" in lines[0]
    verdicts = {x[:20].strip(): x.split()[2:] for x in lines if x.startswith("correctness (")}
    assert verdicts == {"correctness (triton)": ["1", "0", "0", "PASS"], "correctness (cuda)": ["0", "1", "1", "FAIL"]}
    assert any("FAIL [correctness (cuda)] cuda lamb bf16: max rel err 3e-1" in x for x in lines)
    header = next(x for x in lines if x.startswith("ms per step")).split()
    assert header[3:] == ["triton", "cuda", "torch", "fused", "triton/torch", "cuda/torch", "triton", "%", "floor",
                          "cuda", "%", "floor"]
    adamw = next(x for x in lines if x.startswith("adamw fp32")).split()
    assert adamw[2:] == ["8.000", "14.000", "10.000", "0.80x", "1.40x", "88%", "50%"]  # kernel row left out
    lamb = next(x for x in lines if x.startswith("lamb fp32")).split()
    assert lamb[2:] == ["20.000", "-", "-", "-", "-", "50%", "-"]


def test_markdown_lists_failures_and_every_row():
    rec = _record()
    text = report.markdown(rec.info, rec.checks, rec.rows)
    assert "Checks: 1/2 passed (1 skipped)" in text and "- FAIL [correctness (cuda)] cuda lamb bf16" in text
    table = [x for x in text.splitlines() if x.startswith("| ") and "---" not in x]
    assert len(table) == 1 + len(rec.rows)
    assert "| adamw fp32 | ours triton: FusedAdamW.step() | step | 1000.0M | 219 | float32 | 8.000 |" in text
    assert text.count("0.80x") == 1


def test_format_table_aligns_columns():
    out = report.format_table(["name", "ms"], [["a", "1.5"], ["longer", "10.25"]], indent="  ")
    assert out.splitlines() == ["  name       ms", "  a         1.5", "  longer  10.25"]


def test_csv_is_appended_with_one_header_and_outputs_are_written(tmp_path):
    rec = _record()
    path = tmp_path / "out" / "gpu_check.csv"
    for _ in range(2):
        report.append_csv(path, report.csv_rows(rec.info, rec.rows))
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * len(rec.rows)
    assert tuple(rows[0]) == report.CSV_COLUMNS
    ours = rows[1]
    assert (ours["backend"], ours["what"], ours["ratio_vs_torch_fused"], ours["device"], ours["run_id"]) == (
        "triton", "step", "0.8", "NVIDIA H200", "r1")
    paths = report.write_outputs(tmp_path / "o", rec.info, rec.checks, rec.rows, "text")
    assert sorted(p.name for p in paths) == ["gpu_check.csv", "gpu_check.json", "gpu_check.md"]
    data = json.loads((tmp_path / "o" / "gpu_check.json").read_text())
    assert len(data["checks"]) == 3 and data["rows"][1]["ratio_vs_torch_fused"] == 0.8


def test_a_crashing_section_is_a_failure_and_the_next_runs():
    rec = Record(echo=False)
    with rec.section("first"):
        raise RuntimeError("boom")
    with rec.section("second"):
        rec.check("second", "fine", True)
    assert [c["ok"] for c in rec.checks] == [False, True] and "boom" in rec.checks[0]["detail"]
    assert not rec.all_passed()
    assert Record(echo=False).all_passed() is False  # nothing ran: not a pass


# ---------------------------------------------------------------------------------------------------
# dry runs
# ---------------------------------------------------------------------------------------------------
def _dry_run(tmp_path: Path, *extra: str, timeout: float) -> subprocess.CompletedProcess:
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--dry-run", "--csv", str(tmp_path / "rows.csv"),
                           *extra], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env=_env(OUT=str(out), TRITON_INTERPRET="1"))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert {p.name for p in out.iterdir()} == {"gpu_check.md", "gpu_check.json", "gpu_check.csv"}
    with (tmp_path / "rows.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) >= 6
    return proc


@pytest.mark.cpu_ext
@pytest.mark.skipif(not have_backend("cpu"), reason="the C++ extension is not built")
def test_dry_run_on_the_cpu_backend(tmp_path):
    proc = _dry_run(tmp_path, "--backends", "cpu", timeout=300)
    tail = proc.stdout.rstrip().splitlines()[-8:]
    assert any(x.startswith("ms per step") for x in tail) and any(x.startswith("adamw fp32") for x in tail)
    assert "0 failed" in proc.stdout and "correctness (cpu)" in proc.stdout


@pytest.mark.slow
@pytest.mark.triton
@pytest.mark.cpu_ext
@pytest.mark.skipif(not have_backend("cpu"), reason="the C++ extension is not built")
def test_dry_run_of_every_code_path(tmp_path):
    proc = _dry_run(tmp_path, timeout=900)
    assert "correctness (triton)" in proc.stdout and "ours triton launches: chunk" in proc.stdout
