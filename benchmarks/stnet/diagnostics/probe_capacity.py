"""Capacity probe for the ST-Net fast preset on one fold (train C2, C3, C5, C6; test C4).

Usage: python benchmarks/stnet/diagnostics/probe_capacity.py '{"width": 32, "epochs": 30}' ...
Each argument is a JSON dict of STNet hyperparameters on top of preset="fast", seed 0.
Exploratory: C4 is also a test fold of the benchmark, so these numbers are optimistic.
"""
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from stfusion.io import read_her2st
from stfusion.models.stnet import STNet
from stfusion.benchmark.scoring import score_histology
# the shared data next to the repository (as the tests find it); STFUSION_SHARED_DATA overrides
root = Path(os.environ.get("STFUSION_SHARED_DATA", Path(__file__).resolve().parents[4] / "shared" / "data")) / "her2st"
genes = list(np.load(f"{root}/her_hvg_cut_1000.npy", allow_pickle=False))
train = [read_her2st(root, s) for s in ("C2", "C3", "C5", "C6")]
test = read_her2st(root, "C4")
for spec in sys.argv[1:]:
    params = json.loads(spec)
    t = time.time()
    m = STNet(preset="fast", seed=0, **params).fit(train, genes=genes)
    tab = score_histology(m.predict(test), test, genes)
    r = tab[tab.metric == "pearson"].value
    print(spec, f"mean r {r.mean():.3f} median {r.median():.3f} seconds {time.time()-t:.0f}", flush=True)
