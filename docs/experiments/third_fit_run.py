"""A third fit run for the annealing law (docs/schedule_science.md, "lambda is not identified"): fixed before it
ran (2026-12-05) and reported whatever it gave.

Question: does a fit run with a second decay length pin lambda? Fit set: constant + WSD linear 20% (from a
full study's study.json) + WSD linear 50% (trained here at seeds 0 and 1, as the study trains); lambda fitted
and 0.999; held-out: cosine, WSD 1-sqrt, REX (seed means from the same study.json).

    lrsched-fused demo --study --out study_full
    python docs/experiments/third_fit_run.py study_full
"""
import json
import sys
from dataclasses import replace

import numpy as np
import torch

from lrsched_fused import schedules as S
from lrsched_fused.demo.run import DemoConfig
from lrsched_fused.demo.study import StudyConfig, _Trainer, _mean_points
from lrsched_fused.predict import AnnealingLaw
torch.set_num_threads(2)
cfg = StudyConfig(demo=replace(DemoConfig(), out_dir=sys.argv[1] + "/third_fit_run", progress=False))
h = cfg.demo.hyper
tr = _Trainer(cfg, print); tr.out.mkdir(parents=True, exist_ok=True)
sched = S.wsd(peak_lr=h.lamb_lr, total_steps=h.steps, warmup_steps=h.warmup, decay_fraction=0.5)
new = [tr.run("WSD linear 50%", sched, s) for s in (0, 1)]
d = json.load(open(sys.argv[1] + "/study.json")); start = d["config"]["fit_from_step"]
runs = {}
for r in d["runs"]: runs.setdefault(r["schedule"], []).append(r)
def pts(label):
    rs = runs[label]; steps = np.array(sorted(int(k) for k in rs[0]["val"] if int(k) >= start))
    return S.from_dict(rs[0]["spec"]), steps, np.mean([[r["val"][str(k)] for k in steps] for r in rs], axis=0)
fits = {"constant + WSD20 (the study)": [pts("constant"), pts("WSD linear")],
        "constant + WSD20 + WSD50 (pre-registered)": [pts("constant"), pts("WSD linear"), _mean_points(new, start)]}
print("WSD50 finals", [r.final for r in new])
for name, p in fits.items():
    for decay in ("fit", 0.999):
        law = AnnealingLaw.fit(p, decay=decay)
        errs = {l: float(law.predict(S.from_dict(runs[l][0]["spec"]), [h.steps])[0]) / np.mean([r["val"][str(h.steps)] for r in runs[l]]) - 1
                for l in ("cosine", "WSD 1-sqrt", "REX")}
        print(f"{name:45s} lambda {law.decay:.4g} resid {100*law.residual:.2f}% " +
              " ".join(f"{l} {100*e:+.2f}%" for l, e in errs.items()) + f" worst {100*max(map(abs, errs.values())):.2f}%")
    # identifiability: residual across lambda
    print("   residual by lambda:", " ".join(f"{lam}:{100*AnnealingLaw.fit(p, decay=lam).residual:.3f}%" for lam in (0.5, 0.8, 0.9, 0.95, 0.99, 0.999)))
