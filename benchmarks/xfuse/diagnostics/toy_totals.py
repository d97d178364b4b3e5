"""Issue 24, acceptance test candidate: does a short XFuse fit on the xfuse toy section predict the
spot totals of held-out spots? Hold-out: stfusion.benchmark.protocols.spot_holdout(0.5, seed=0);
score: Pearson r of log1p(predicted total) (sum of layers["mean_counts"] over the 10 genes) with
log1p(measured total over the same genes) on the hidden spots. Reference: a ridge regression of
the log totals on the spot disc's colour statistics (mean, mean square, SD of R, G, B).

Usage (repository root): python benchmarks/xfuse/diagnostics/toy_totals.py ridge
                         python benchmarks/xfuse/diagnostics/toy_totals.py xfuse "steps=300, image_scale=True"
"""

import sys
import time
from pathlib import Path

import numpy as np

from stfusion import _constants as K
from stfusion.benchmark.protocols import spot_holdout
from stfusion.io import read_xfuse_toy

TOY = Path(__file__).resolve().parents[4] / "shared" / "data" / "xfuse_mob_toy"


def ridge(section, fold) -> float:
    from PIL import Image
    from sklearn.linear_model import RidgeCV

    img = np.asarray(Image.open(TOY / "image.jpg").convert("RGB"), dtype=float) / 255
    lib = next(iter(section.uns["spatial"]))
    r = section.uns["spatial"][lib]["scalefactors"]["spot_diameter_fullres"] / 2
    yy, xx = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
    feats = []
    for x, y in section.obsm["spatial"]:
        p = img[(xx - x) ** 2 + (yy - y) ** 2 <= r * r]
        feats.append(np.r_[p.mean(0), (p**2).mean(0), p.std(0)])
    f, tot = np.array(feats), np.log1p(np.asarray(section.X.sum(1)).ravel())
    te = section.obs_names.isin(fold.test.obs_names)
    model = RidgeCV(alphas=np.logspace(-4, 3, 20)).fit(f[~te], tot[~te])
    return float(np.corrcoef(model.predict(f[te]), tot[te])[0, 1])


def xfuse(fold, kw: dict) -> float:
    from stfusion.models.xfuse import XFuse

    t = time.time()
    model = XFuse(progress=False, **kw).fit(fold.train)
    pred = model.predict(fold.test)
    pred_tot = np.asarray(pred.layers[K.LAYER_MEAN_COUNTS]).sum(1)
    true_tot = np.asarray(fold.test[:, pred.var_names].X.sum(1)).ravel()
    print(f"fit+predict {time.time() - t:.0f} s; SD of log totals predicted {np.log1p(pred_tot).std():.3f}, "
          f"measured {np.log1p(true_tot).std():.3f}")
    return float(np.corrcoef(np.log1p(pred_tot), np.log1p(true_tot))[0, 1])


if __name__ == "__main__":
    section = read_xfuse_toy(TOY)
    fold = next(spot_holdout([section], 0.5, seed=0))
    if sys.argv[1] == "ridge":
        print(f"colour ridge: r log totals {ridge(section, fold):.3f}")
    else:
        kw = eval("dict(" + (sys.argv[2] if len(sys.argv) > 2 else "") + ")")
        print(f"XFuse {kw}: r log totals {xfuse(fold, kw):.3f}")
