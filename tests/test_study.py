"""The schedule study (``lrsched-fused demo --study``) end to end on tiny settings: its runs, the law fitted to
the fit runs and its predictions, the refined schedule and its comparison over seeds, the outputs, and the
gradient-norm recorder."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest

from lrsched_fused import schedules as S
from lrsched_fused.demo.model import ModelConfig
from lrsched_fused.demo.recipes import Hyper
from lrsched_fused.demo.run import DemoConfig
from lrsched_fused.demo.study import StudyConfig, long_decay_fraction, run_study, study_schedules
from lrsched_fused.predict import AnnealingLaw, MultiPowerLaw, fit_curves, read_curve

pytest.importorskip("matplotlib")

STEPS, WARMUP = 20, 2


def tiny_study(out_dir, **changes) -> StudyConfig:
    demo = DemoConfig(model=ModelConfig(context=16, width=32, layers=1, heads=2), batch_size=8, val_batches=2,
                      max_bytes=60_000, out_dir=str(out_dir), progress=False, device="cpu", threads=1,
                      hyper=Hyper(steps=STEPS, warmup=WARMUP, decay_fraction=0.2))
    return replace(StudyConfig(demo=demo, eval_every=2), **changes)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    lines: list[str] = []
    result = run_study(tiny_study(out), echo=lines.append)
    return out, result, "\n".join(lines)


def test_study_trains_fit_held_out_and_refined_runs_over_the_seeds(study):
    _, result, _ = study
    runs = [(r.label, r.seed) for r in result.runs]
    assert runs == [(label, s) for label in ("constant", "WSD linear", "cosine", "WSD 1-sqrt", "REX", "refined")
                    for s in (0, 1)]
    for r in result.runs:
        assert len(r.result.losses) == len(r.result.lrs) == STEPS and r.norms.shape == (STEPS, 2)
        assert max(r.result.val) == STEPS and all(math.isfinite(v) for v in r.result.val.values())
        # the schedule ran in the optimizer unchanged: the lrs it used are the spec's (float32)
        np.testing.assert_allclose(r.result.lrs, [r.schedule(t) for t in range(STEPS)], rtol=1e-6, atol=1e-9)


def test_the_law_is_fitted_to_the_fit_runs_and_predicts_the_others(study):
    _, result, _ = study
    assert [p["schedule"] for p in result.predictions] == ["cosine", "WSD 1-sqrt", "REX", "refined"]
    for p in result.predictions:
        runs = [r for r in result.runs if r.label == p["schedule"]]
        assert p["fixed"] == pytest.approx(float(result.law.predict(runs[0].schedule, [STEPS])[0]))
        # the actual loss is the mean of the seeds' final validation losses
        assert p["finals"] == [r.final for r in runs] and len(runs) == 2
        assert p["actual"] == pytest.approx(np.mean(p["finals"]))
        assert p["half_range"] == pytest.approx(abs(p["finals"][0] - p["finals"][1]) / 2)
        assert p["fixed_error"] == pytest.approx(p["fixed"] / p["actual"] - 1)
    assert result.law.decay == 0.999 and 0.9 <= result.law_fitted_decay.decay <= 0.9999
    assert result.law.points == 2 * len(range(4, STEPS + 1, 2))  # validation every 2 steps from 20% of 20


def test_the_multi_power_law_is_fitted_to_the_same_points_and_reported_beside(study):
    out, result, printed = study
    mpl = result.law_multipower
    assert isinstance(mpl, MultiPowerLaw) and mpl.points == result.law.points
    for p in result.predictions:
        sched = next(r.schedule for r in result.runs if r.label == p["schedule"])
        assert p["multipower"] == pytest.approx(float(mpl.predict(sched, [STEPS])[0]))
        assert p["multipower_error"] == pytest.approx(p["multipower"] / p["actual"] - 1)
        row = next(line for line in printed.splitlines() if line.startswith(f"| {p['schedule']} |"))
        assert row.endswith(f" {p['multipower']:.4f} | {100 * p['multipower_error']:+.2f}% |")
    assert "multi-power (Luo et al." in printed and "The multi-power law:" in printed
    saved = json.loads((out / "study.json").read_text())["law_multipower"]
    assert MultiPowerLaw(**saved) == mpl


def test_the_law_is_fitted_to_the_seed_mean_curves(study):
    """The fit's points are the fit runs' validation losses averaged over the seeds, step by step: the same law as
    a fit to those means by hand, and not the first seed's law."""
    _, result, _ = study
    points = []
    for label in ("constant", "WSD linear"):
        runs = [r for r in result.runs if r.label == label]
        steps = np.array([k for k in sorted(runs[0].result.val) if k >= 4])
        points.append((runs[0].schedule, steps, np.mean([[r.result.val[k] for k in steps] for r in runs], axis=0)))
    by_hand = AnnealingLaw.fit(points, decay=0.999)
    for name in ("L0", "A", "alpha", "C"):
        assert getattr(result.law, name) == pytest.approx(getattr(by_hand, name), rel=1e-9, abs=1e-12)
    first = AnnealingLaw.fit([(s, k, np.array([r.result.val[j] for j in k]))
                              for (s, k, _), r in zip(points, (result.runs[0], result.runs[2]))], decay=0.999)
    assert (first.L0, first.A, first.C) != (result.law.L0, result.law.A, result.law.C)


def test_the_refined_schedule_comes_from_the_constant_runs_l1_norms(study):
    _, result, _ = study
    const = result.runs[0]
    want = S.refine(const.norms[:, 1], peak_lr=2e-2, variant="adam", smoothing=0.1, warmup_steps=WARMUP)
    assert result.refined == want and result.refined(STEPS - 1) == 0.0
    rows = {r["schedule"]: r for r in result.comparison}
    assert set(rows) == {"refined", "WSD linear", "cosine"}
    for r in rows.values():
        assert len(r["finals"]) == 2
        assert r["mean"] == pytest.approx(np.mean(r["finals"])) and r["half_range"] >= 0


def test_the_range_over_lambda_is_the_profiles_and_is_reported(study):
    """Each prediction's range is the decay profile's over the decays it keeps (the grid, lambda 0.999 and the
    fitted lambda among them); printed as a column and a sentence, saved with the profile in study.json."""
    out, result, printed = study
    prof = result.profile
    assert {0.999, result.law_fitted_decay.decay} <= {law.decay for law in prof.laws}
    assert all(law.points == result.law.points for law in prof.laws)
    for p in result.predictions:
        sched = next(r.schedule for r in result.runs if r.label == p["schedule"])
        lo, hi = prof.predict_range(sched, [STEPS])
        assert (p["range_lo"], p["range_hi"]) == (float(lo[0]), float(hi[0])) and p["range_lo"] <= p["range_hi"]
        assert p["in_range"] == (p["range_lo"] <= p["actual"] <= p["range_hi"])
        row = next(line for line in printed.splitlines() if line.startswith(f"| {p['schedule']} |"))
        assert f" {p['range_lo']:.4f}-{p['range_hi']:.4f} |" in row
    assert "| range over lambda |" in printed and "Range over lambda: " in printed
    saved = json.loads((out / "study.json").read_text())["decay_profile"]
    kept = {law.decay for law in prof.plausible()}
    assert [(x["decay"], x["kept"]) for x in saved] == [(law.decay, law.decay in kept) for law in prof.laws]


def test_the_third_fit_run_decays_longer_and_joins_the_fit():
    h = Hyper(steps=STEPS, warmup=WARMUP, decay_fraction=0.2)
    fit, held = study_schedules(h, third_fit_run=True)
    assert [label for label, _ in fit] == ["constant", "WSD linear", "WSD linear 50%"] and len(held) == 3
    assert fit[2][1] == S.wsd(peak_lr=h.lamb_lr, total_steps=STEPS, warmup_steps=WARMUP, decay_fraction=0.5)
    assert study_schedules(h)[0] == fit[:2]
    assert long_decay_fraction(0.3) == 0.75 and long_decay_fraction(0.6) == 0.9
    with pytest.raises(ValueError, match="decay_fraction"):
        study_schedules(replace(h, decay_fraction=0.88), third_fit_run=True)
    with pytest.raises(ValueError, match="third_fit_run"):
        StudyConfig(third_fit_run=1)


@pytest.mark.slow
def test_a_study_with_a_third_fit_run_fits_all_three(tmp_path):
    lines: list[str] = []
    result = run_study(tiny_study(tmp_path, seeds=1, third_fit_run=True), echo=lines.append)
    labels = [r.label for r in result.runs]
    assert labels[:3] == ["constant", "WSD linear", "WSD linear 50%"] and len(labels) == 7
    assert result.law.points == 3 * len(range(4, STEPS + 1, 2))
    assert all(law.points == result.law.points for law in result.profile.laws)


def test_study_writes_its_outputs_and_prints_its_tables(study):
    out, result, printed = study
    for name in ("study.md", "study.json", "study.png"):
        assert (out / name).stat().st_size > 0
    assert len(list((out / "curves").glob("*.csv"))) == 12
    for needle in ("Loss prediction", "fit residual", "Refinement", "mean of 2 seeds", "From seed 0 alone",
                   "Loss versus budget", "REX"):
        assert needle in printed
    data = json.loads((out / "study.json").read_text())
    assert len(data["runs"]) == 12 and data["law"]["points"] == result.law.points
    assert data["single_seed"]["seed"] == 0 and len(data["single_seed"]["predictions"]) == 3
    assert len(data["runs"][0]["grad_norm_l1"]) == STEPS
    assert S.from_dict(data["refined_schedule"]) == result.refined


def test_study_curves_refit_to_the_same_law(study):
    out, result, _ = study
    curve = read_curve(out / "curves" / "constant_seed0.csv")
    assert curve.steps == STEPS and list(curve.val_steps) == list(range(0, STEPS + 1, 2))
    fit = fit_curves([out / "curves" / "constant_seed0.csv", out / "curves" / "wsd_linear_seed0.csv"], which="val",
                     from_step=4)
    seed0 = [r for r in result.runs if r.seed == 0 and r.label in ("constant", "WSD linear")]
    want = AnnealingLaw.fit([(r.schedule, k, np.array([r.result.val[j] for j in k]))
                             for r in seed0 for k in [np.array([j for j in sorted(r.result.val) if j >= 4])]],
                            decay=0.999)
    for name in ("L0", "A", "alpha", "C"):  # lrs from the CSV (float32 telemetry) vs the specs: close, not equal
        assert getattr(fit.law, name) == pytest.approx(getattr(want, name), rel=1e-3, abs=1e-6)


def test_branch_predictions_cover_the_budgets(study):
    _, result, _ = study
    assert [b["budget"] for b in result.branches] == [10, 15, 20]
    assert all(b["at_step"] + b["decay_steps"] == b["budget"] for b in result.branches)


def test_study_runs_carry_the_kernels_gradient_norm_history(study):
    """Each run's norms are the optimizer's telemetry_history(): one [l2, l1] row per step, l1 >= l2 > 0."""
    _, result, _ = study
    for run in result.runs:
        assert run.norms.shape == (len(run.result.losses), 2)
        assert (run.norms[:, 0] > 0).all() and (run.norms[:, 1] >= run.norms[:, 0]).all()


def test_study_schedules_share_the_peak_warmup_and_budget():
    fit, held = study_schedules(Hyper(steps=100, warmup=10))
    assert [label for label, _ in fit] == ["constant", "WSD linear"]
    assert [label for label, _ in held] == ["cosine", "WSD 1-sqrt", "REX"]
    for _, sched in fit + held:
        assert sched(10) == 2e-2 and sched(0) == 0.0
    assert all(sched(100) == 0.0 for _, sched in held)


@pytest.mark.parametrize("changes, name", [(dict(seeds=0), "seeds"), (dict(eval_every=0), "eval_every"),
                                           (dict(fit_start=1.0), "fit_start")])
def test_study_config_is_validated(tmp_path, changes, name):
    with pytest.raises(ValueError, match=name):
        tiny_study(tmp_path, **changes)
    with pytest.raises(ValueError, match="distributed"):
        StudyConfig(demo=DemoConfig(distributed="ddp"))
