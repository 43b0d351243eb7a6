"""The multi-power law on the demo study: fixed before it ran (2026-12-06) and reported whatever it gives.

Why: the annealing law (Tissue et al., arXiv 2408.11029) misses REX by 2.37% at 250 steps and by 6.01% at
500 steps (docs/schedule_science.md), and no lambda fixes it: the gap is in the law's form. The multi-power
law (Luo et al., "A Multi-Power Law for Loss Curve Prediction Across Learning Rate Schedules", arXiv
2503.12811) was built for exactly this: a decay's benefit grows as a power of the lr area after it, instead of
decaying with a fixed step memory.

Fixed before the run:
- Data: a fresh `lrsched-fused demo --study --out DIR` with every default (250 steps, seeds 0 and 1). If time
  allows, also `--steps 500` (fit from step 100), reported the same way.
- Fit runs and points: the study's own, unchanged: constant and WSD linear, seed means of the validation
  losses at steps >= the study's fit_from_step. Held-out: cosine, WSD 1-sqrt, REX (seed means of the final
  validation loss); the refined schedule is reported too.
- Law: L(t) = L0 + A * S1(t)^-alpha - B * sum_{k<=t} d_k * G(lr_k^-gamma * S_k(t)), G(x) = 1 - (C x + 1)^-beta,
  S_k(t) = sum_{k<=i<=t} lr_i, with S1 and d_k exactly as the annealing law's (warmup: d_k = 0 while the lr
  climbs to a new maximum; S1 counts warmup, which is the paper's S1 + S_W).
- Fit: Huber (delta 1e-3) on log L, the annealing law's objective; (L0, A, B) >= 0 by the same bounded IRLS;
  (alpha, beta, gamma, C) by Nelder-Mead from a fixed grid of starts within alpha, beta in [0.01, 5],
  gamma in [0, 1.5], log10 C in [-4, 4].
- Hypothesis: the worst held-out final-loss error is <= 2% (issue 16's bar).
- Whatever it gives: MultiPowerLaw ships in lrsched_fused.predict with its tests, the study and the CLI keep
  the annealing law as their default, and docs/schedule_science.md reports the figures.

    lrsched-fused demo --study --out study250
    python docs/experiments/multi_power_law.py study250

Outcome (added after the runs, 2026-12-06; the text above is unchanged): at 250 steps the hypothesis holds
(cosine -0.64%, WSD 1-sqrt -0.44%, REX +0.80%; residual 1.06%); at 500 steps it fails (cosine +2.88%, WSD
1-sqrt -0.05%, REX +5.35%; residual 0.61%). Both fits leave beta on a bound of its box; widened after the
fact, the 250-step fit finds an equally good law (same residual) that misses REX by 3.82%.
docs/schedule_science.md has the tables.
"""
import json
import sys
import time

import numpy as np

from lrsched_fused import schedules as S
from lrsched_fused.predict import AnnealingLaw, MultiPowerLaw

FIT, HELD_OUT = ("constant", "WSD linear"), ("cosine", "WSD 1-sqrt", "REX")
study = json.load(open(sys.argv[1] + "/study.json"))
start, total = study["config"]["fit_from_step"], max(int(k) for k in study["runs"][0]["val"])
by_label: dict[str, list] = {}
for run in study["runs"]:
    by_label.setdefault(run["schedule"], []).append(run)


def seed_mean(label, first=start):
    runs = by_label[label]
    steps = np.array(sorted(int(k) for k in runs[0]["val"] if int(k) >= first))
    return S.from_dict(runs[0]["spec"]), steps, np.mean([[r["val"][str(k)] for k in steps] for r in runs], axis=0)


fit_runs = [seed_mean(label) for label in FIT]
t0 = time.time()
mpl = MultiPowerLaw.fit(fit_runs)
print(f"multi-power law ({time.time() - t0:.1f} s): {mpl.describe()}")
laws = {"multi-power": mpl, "annealing, lambda fitted": AnnealingLaw.fit(fit_runs, decay="fit"),
        "annealing, lambda 0.999": AnnealingLaw.fit(fit_runs, decay=0.999)}
for name, law in laws.items():
    print(f"{name:26s} residual {100 * law.residual:.2f}% ({law.points} points)")
print(f"\n| held-out ({total} steps) | final val loss, mean | " + " | ".join(f"{n} | error" for n in laws) + " |")
print("|---|---:|" + "---:|---:|" * len(laws))
worst = dict.fromkeys(laws, 0.0)
for label in [*HELD_OUT, *(l for l in by_label if l not in FIT + HELD_OUT)]:
    sched, _, _ = seed_mean(label)
    actual = float(np.mean([r["val"][str(total)] for r in by_label[label]]))
    cells = []
    for name, law in laws.items():
        pred = float(law.predict(sched, [total])[0])
        if label in HELD_OUT:
            worst[name] = max(worst[name], abs(pred / actual - 1))
        cells.append(f"{pred:.4f} | {100 * (pred / actual - 1):+.2f}%")
    print(f"| {label} | {actual:.4f} | " + " | ".join(cells) + " |")
print("\nworst held-out error: " + ", ".join(f"{n} {100 * w:.2f}%" for n, w in worst.items()))
print("hypothesis (multi-power worst <= 2%):", "holds" if worst["multi-power"] <= 0.02 else "fails")
