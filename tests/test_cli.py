"""The command line: ``plot`` (image + edge values), parse errors, ``info``, and the module entry point."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys

import pytest

from lrsched_fused import schedules as S
from lrsched_fused.cli import main
from lrsched_fused.plot import edge_table, sample_points

needs_matplotlib = pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None,
                                      reason="matplotlib not installed (pip install 'lrsched-fused[plot]')")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
WSD = "wsd(peak_lr=3e-4, total_steps=10000, warmup_steps=500, decay_fraction=0.2)"


def _edge_rows(text: str) -> dict[int, float]:
    """``{step: lr}`` parsed from the edge table lines ``  <step>  <lr>  <phase>``."""
    rows = {}
    for line in text.splitlines():
        m = re.match(r"^\s+([\d,]+)\s+([-+0-9.e]+)\s", line + " ")
        if m:
            rows[int(m.group(1).replace(",", ""))] = float(m.group(2))
    return rows


@needs_matplotlib
def test_plot_writes_png_and_prints_wsd_edge_values(tmp_path, capsys):
    out = tmp_path / "wsd.png"
    assert main(["plot", WSD, "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG_MAGIC
    printed = capsys.readouterr().out
    # warmup ends at 500, the decay (20% of 10000 = 2000 steps) starts at 8000, the run ends at 10000
    assert _edge_rows(printed) == {0: 0.0, 500: 3e-4, 8000: 3e-4, 10000: 0.0}
    assert f"wrote {out}" in printed


@needs_matplotlib
def test_plot_several_schedules_in_one_figure(tmp_path, capsys):
    out = tmp_path / "two.png"
    cos = "cosine(peak_lr=1e-3, total_steps=200, warmup_steps=20, final_lr=1e-4)"
    assert main(["plot", WSD, cos, "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG_MAGIC
    printed = capsys.readouterr().out
    assert printed.count("from here") == 2  # one edge table per schedule
    assert "cosine(peak_lr=0.001" in printed and "wsd(peak_lr=0.0003" in printed


def test_edge_table_values_equal_the_reference_evaluator():
    sched = S.infinite(peak_lr=1.0, total_steps=1000, warmup_steps=50, cooldown_steps=200, constant_lr=0.4,
                       anneal_steps=150, final_lr=0.02)
    rows = _edge_rows(edge_table(sched))
    assert sorted(rows) == list(sched.edges)
    for step, value in rows.items():
        assert value == pytest.approx(sched(step), rel=1e-5, abs=1e-12)


def test_sample_points_include_every_edge_and_its_left_neighbour():
    sched = S.wsd(peak_lr=1.0, total_steps=10_007, warmup_steps=13, decay_steps=999)
    ts = sample_points(sched, points=50)
    assert ts == sorted(set(ts)) and ts[0] == 0
    for e in sched.edges:
        assert e in ts and max(0, e - 1) in ts


@pytest.mark.parametrize("text, needle", [
    ("wsd(peak_lr=3e-4", "could not parse"),
    ("wsd(peak=3e-4, total_steps=10)", "unexpected keyword argument 'peak'"),
    ("nosuch(lr=1)", "unknown schedule constructor 'nosuch'"),
    ("wsd(peak_lr=3e-4, total_steps=100, warmup_steps=50, decay_fraction=0.8)", "total_steps"),
    ("cosine(peak_lr=-1.0, total_steps=10)", "peak_lr"),
    ("cosine(peak_lr=x, total_steps=10)", "literals"),
], ids=["unclosed-paren", "wrong-keyword", "unknown-constructor", "decay-overlaps-warmup", "negative-lr",
        "non-literal-argument"])
def test_plot_parse_errors_are_clear_and_exit_2(tmp_path, capsys, text, needle):
    out = tmp_path / "x.png"
    assert main(["plot", text, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lrsched-fused plot: error: ")
    assert needle in err
    assert not out.exists()


def test_plot_without_schedule_is_an_error(capsys):
    assert main(["plot"]) == 2
    assert "give at least one schedule" in capsys.readouterr().err


@needs_matplotlib
def test_plot_gallery_draws_every_constructor(tmp_path, capsys):
    from lrsched_fused.plot import GALLERY

    names = {text.split("(", 1)[0] for _, entries in GALLERY for _, text in entries}
    assert names >= set(S.CONSTRUCTORS)
    out = tmp_path / "gallery.png"
    assert main(["plot", "--gallery", "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_info_lists_every_backend_with_a_reason(capsys):
    from lrsched_fused import __version__
    from lrsched_fused.backends import BACKENDS, available_backends

    assert main(["info"]) == 0
    printed = capsys.readouterr().out
    assert f"lrsched-fused {__version__}" in printed
    assert "torch " in printed and "threads:" in printed
    avail = available_backends()
    for name in BACKENDS:
        line = next(ln for ln in printed.splitlines() if ln.startswith(f"  {name} "))
        assert ("unavailable: " in line) == (avail[name] is not None), line
    assert "backend='auto' on cpu tensors ->" in printed


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "demo" in capsys.readouterr().out


def test_version_flag(capsys):
    from lrsched_fused import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == __version__


@needs_matplotlib
def test_python_dash_m_entry_point_runs(tmp_path):
    out = tmp_path / "m.png"
    proc = subprocess.run([sys.executable, "-m", "lrsched_fused", "plot", "constant(0.1)", "-o", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "0.1" in proc.stdout and out.exists()


def test_demo_rejects_bad_flags_before_training(capsys, tmp_path):
    assert main(["demo", "--steps", "0", "--out", str(tmp_path)]) == 2
    assert "--steps" in capsys.readouterr().err
    assert main(["demo", "--quick", "--data", str(tmp_path / "missing.txt"), "--out", str(tmp_path),
                 "--no-progress"]) == 2
    assert "--data" in capsys.readouterr().err


# -- predict and demo --study (schedule science) ------------------------------------------------------
def _synthetic_curves(tmp_path):
    """Two curve files of a known law (noise-free), with validation every 10 steps."""
    import numpy as np

    from lrsched_fused.predict import AnnealingLaw, write_curve

    law = AnnealingLaw(L0=2.0, A=0.5, alpha=0.6, C=0.4)
    paths = []
    for name, sched in (("const", S.wsd(peak_lr=2e-3, total_steps=400, warmup_steps=20, decay_steps=0)),
                        ("wsd", S.wsd(peak_lr=2e-3, total_steps=400, warmup_steps=20, decay_fraction=0.25))):
        lrs = [sched(t) for t in range(400)]
        val_steps = np.arange(10, 401, 10)
        val = dict(zip(val_steps.tolist(), law.predict(sched, val_steps).tolist()))
        paths.append(write_curve(tmp_path / f"{name}.csv", [3.0] * 400, lrs, val))
    return law, paths


@needs_matplotlib
def test_predict_fits_curve_files_and_prints_predicted_final_losses(tmp_path, capsys):
    law, (const, wsd) = _synthetic_curves(tmp_path)
    cos = "cosine(peak_lr=2e-3, total_steps=400, warmup_steps=20)"
    out = tmp_path / "pred.png"
    assert main(["predict", "--fit", str(const), str(wsd), "--schedule", cos, "--schedule", "constant(2e-3)",
                 "--steps", "400", "--plot", str(out)]) == 0
    printed = capsys.readouterr().out
    want = law.predict(S.parse(cos), [400])[0]
    row = next(line for line in printed.splitlines() if line.startswith("| cosine("))
    assert f"{want:.4f}" in row and "| predicted | 400 |" in row
    assert "| const.csv | fit (val) | 400 |" in printed and "+0.00%" in printed
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_predict_defaults_and_fitted_decay(tmp_path, capsys):
    _, paths = _synthetic_curves(tmp_path)
    assert main(["predict", "--fit", *map(str, paths), "--decay", "fit", "--loss", "val", "--from-step", "40",
                 "--schedule", "wsd(peak_lr=2e-3, total_steps=300, warmup_steps=20, decay_fraction=0.2)"]) == 0
    printed = capsys.readouterr().out
    assert "| wsd(" in printed and "| predicted | 300 |" in printed  # the schedule's own total
    assert "lambda 0.999" in printed  # the curves were made with 0.999


def test_predict_prints_the_range_over_the_decays_the_fit_runs_cannot_reject(tmp_path, capsys):
    """The annealing law's table has a range column (AnnealingLaw.profile): each row's prediction lies in its
    range, and the range is the profile's own; the multi-power law has none."""
    from lrsched_fused.predict import PROFILE_DECAYS, AnnealingLaw, read_curve

    _, paths = _synthetic_curves(tmp_path)
    cos = "cosine(peak_lr=2e-3, total_steps=400, warmup_steps=20)"
    assert main(["predict", "--fit", *map(str, paths), "--schedule", cos]) == 0
    printed = capsys.readouterr().out
    assert "decays the fit runs cannot reject: lambda" in printed and "| range over lambda |" in printed
    row = next(line for line in printed.splitlines() if line.startswith("| cosine("))
    cells = [c.strip() for c in row.split("|")]
    predicted, (lo, hi) = float(cells[4]), map(float, cells[5].split("-"))
    assert lo <= predicted <= hi
    runs = []
    for path in paths:
        c = read_curve(path)
        steps, losses, _ = c.points("auto", 80)  # the default first fitted step: 20% of 400
        runs.append((c.lrs, steps, losses))
    decays = sorted({*PROFILE_DECAYS, 0.999})  # the profile's grid and the law's own decay
    want = AnnealingLaw.profile(runs, decays=decays).predict_range(S.parse(cos), [400])
    assert "is rejected" not in printed
    # a fixed lambda the curves (made with 0.999) reject is said to be
    assert main(["predict", "--fit", *map(str, paths), "--decay", "0.5", "--schedule", cos]) == 0
    assert "the law's own lambda 0.5 is rejected" in capsys.readouterr().out
    assert (lo, hi) == (round(float(want[0][0]), 4), round(float(want[1][0]), 4))


def test_predict_a_decay_branch_of_the_stable_run(tmp_path, capsys):
    """A branch spec in text (``branch(...)``): predicted at its own end, at_step + decay_steps."""
    law, paths = _synthetic_curves(tmp_path)
    text = ("branch(wsd(peak_lr=2e-3, total_steps=400, warmup_steps=20, decay_steps=0), at_step=200, "
            "decay_steps=50, shape='1-sqrt')")
    assert main(["predict", "--fit", *map(str, paths), "--schedule", text]) == 0
    printed = capsys.readouterr().out
    row = next(line for line in printed.splitlines() if line.startswith("| branch("))
    want = law.predict(S.parse(text), [250])[0]
    assert "| predicted | 250 |" in row and f"{want:.4f}" in row


def test_predict_with_the_multi_power_law(tmp_path, capsys):
    """``--law multi-power`` fits MultiPowerLaw: curves made by one are predicted from it."""
    import numpy as np

    from lrsched_fused.predict import MultiPowerLaw, write_curve

    law = MultiPowerLaw(L0=2.0, A=0.5, alpha=0.6, B=300.0, C=2.0, beta=0.6, gamma=0.5)
    paths = []
    for name, sched in (("const", S.wsd(peak_lr=2e-3, total_steps=400, warmup_steps=20, decay_steps=0)),
                        ("wsd", S.wsd(peak_lr=2e-3, total_steps=400, warmup_steps=20, decay_fraction=0.25))):
        val_steps = np.arange(10, 401, 10)
        val = dict(zip(val_steps.tolist(), law.predict(sched, val_steps).tolist()))
        paths.append(write_curve(tmp_path / f"{name}.csv", [3.0] * 400, [sched(t) for t in range(400)], val))
    cos = "cosine(peak_lr=2e-3, total_steps=400, warmup_steps=20)"
    assert main(["predict", "--fit", *map(str, paths), "--law", "multi-power", "--schedule", cos]) == 0
    printed = capsys.readouterr().out
    assert "sum_k d_k" in printed.splitlines()[0] and "range over lambda" not in printed
    row = next(line for line in printed.splitlines() if line.startswith("| cosine("))
    predicted = float(row.split("|")[4])
    assert predicted == pytest.approx(law.predict(S.parse(cos), [400])[0], rel=2e-3)
    with pytest.raises(SystemExit) as exc:  # an unknown law is argparse's usage error
        main(["predict", "--fit", *map(str, paths), "--law", "power"])
    assert exc.value.code == 2 and "--law" in capsys.readouterr().err


@pytest.mark.parametrize("extra, needle", [
    (["--decay", "slow"], "--decay"),
    (["--decay", "1.5"], "decay"),
    (["--steps", "0"], "--steps"),
    (["--from-step", "0"], "--from-step"),
    (["--schedule", "cosine(peak_lr=1e-3)"], "total_steps"),
    (["--schedule", "nosuch(1)"], "unknown schedule constructor"),
])
def test_predict_rejects_bad_arguments(tmp_path, capsys, extra, needle):
    _, paths = _synthetic_curves(tmp_path)
    assert main(["predict", "--fit", *map(str, paths), *extra]) == 2
    assert needle in capsys.readouterr().err


def test_predict_rejects_missing_and_malformed_curve_files(tmp_path, capsys):
    assert main(["predict", "--fit", str(tmp_path / "missing.csv")]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("step,loss\n0,1.0\n")
    assert main(["predict", "--fit", str(bad)]) == 2
    assert "step,loss,lr" in capsys.readouterr().err


@needs_matplotlib
def test_demo_study_runs_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "study"
    assert main(["demo", "--study", "--quick", "--steps", "12", "--batch-size", "4", "--seeds", "1", "--no-progress",
                 "--threads", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Loss prediction" in printed and "Refinement" in printed and "seed 0" in printed
    assert (out / "study.md").exists() and (out / "study.png").exists()
    assert len(list((out / "curves").glob("*.csv"))) == 6  # 2 fit + 3 held-out + 1 refined, one seed


def test_demo_study_rejects_distributed_and_bad_seeds(tmp_path, capsys):
    assert main(["demo", "--study", "--distributed", "ddp", "--out", str(tmp_path)]) == 2
    assert "--study" in capsys.readouterr().err
    assert main(["demo", "--study", "--seeds", "0", "--out", str(tmp_path)]) == 2
    assert "--seeds" in capsys.readouterr().err
    assert main(["demo", "--third-fit-run", "--out", str(tmp_path)]) == 2  # a study option without --study
    assert "--third-fit-run" in capsys.readouterr().err
