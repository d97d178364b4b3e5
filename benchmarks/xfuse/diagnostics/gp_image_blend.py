"""Do the image and the measured neighbours carry different information on the MOB hold-out?

On each section's 50% hold-out fold of ``mob_holdout.toml`` (seed 0, top 100 genes), the
Gaussian process (neighbours only) and two image regressions (image only) are fitted on the
visible spots; their predictions of the hidden spots (target space log1p(counts / total x
1e4)) are blended, ``(1 - w) GP + w image``, and scored by median gene-wise Pearson r as
the benchmark runner does. A blend above the GP means the image adds what the neighbours do
not show: room for a model that fuses the two (XFuse's premise) to beat the GP.

Run (repository root, ~3 min)::

    .venv/bin/python benchmarks/xfuse/diagnostics/gp_image_blend.py    # writes gp_image_blend.{md,json}
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent  # benchmarks/xfuse/diagnostics: results are written here
sys.path.insert(0, str(HERE.parent))  # benchmarks/xfuse: _mob.py and the benchmark scripts
import _mob as M  # noqa: E402
from holdout_variants import median_r  # noqa: E402

IMAGE = ("morphology_rf", "colour_texture_ridge")
WEIGHTS = (0.3, 0.5)


def section_rows(section: str, seed: int) -> list[dict]:
    from stfusion.models.registry import get

    train, test, genes = M.holdout_fold(section, seed)
    preds = {n: get(n)().fit([train], genes=genes).predict(test) for n in ("gaussian_process", *IMAGE)}
    rows = [{"section": section, "prediction": n, "median_r": median_r(p, test, genes)} for n, p in preds.items()]
    gp = np.asarray(preds["gaussian_process"][:, genes].X)
    for name in IMAGE:
        for w in WEIGHTS:
            blend = preds["gaussian_process"][:, genes].copy()
            blend.X = (1 - w) * gp + w * np.asarray(preds[name][:, genes].X)
            rows.append({"section": section, "prediction": f"{1 - w:.1f} GP + {w:.1f} {name}",
                         "median_r": median_r(blend, test, genes)})
    return rows


def main() -> None:
    prov = M.Provenance(seed=0, threads=1)
    M.set_threads(1)
    df = pd.DataFrame([r for s in M.SECTIONS for r in section_rows(s, 0)])
    table = df.pivot(index="prediction", columns="section", values="median_r").reset_index()
    prov.stop()
    M.write_report(HERE / "gp_image_blend.md", "GP and image regressions blended on the MOB 50% hold-out", prov,
                   "Median gene-wise Pearson r on the hidden spots (see the script's docstring).\n\n" + M.md_table(table))
    print((HERE / "gp_image_blend.md").read_text())


if __name__ == "__main__":
    main()
