"""When did an ELBO curve make most of its rise? Reads an ELBO CSV written by the MOB scripts.

For each fraction f, the first step from which the 100-step trailing mean of the ELBO stays at
or above ELBO(step 1) + f x (final trailing mean - ELBO(step 1)). A companion to the plateau
rule of ``_mob.plateau`` (within 1% of the final value), which is strict when the final ELBO
is close to zero. Run: ``.venv/bin/python benchmarks/xfuse/elbo_rise.py benchmarks/xfuse/mob_speed_elbo.csv``
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _mob as M  # noqa: E402


def rise_table(csv: Path, fractions=(0.9, 0.95, 0.98, 0.99), window: int = 100) -> pd.DataFrame:
    d = pd.read_csv(csv)
    sm = M.smoothed(d["elbo"].to_numpy(float), window)
    start, final = float(d["elbo"].iloc[0]), float(sm[-1])
    rows = []
    for f in fractions:
        below = np.flatnonzero(sm < start + f * (final - start))
        i = 0 if below.size == 0 else min(int(below[-1]) + 1, len(sm) - 1)
        rows.append({"fraction_of_rise": f, "step": int(d["step"].iloc[i]), "minutes": round(float(d["seconds"].iloc[i]) / 60, 2)})
    return pd.DataFrame(rows)


if __name__ == "__main__":
    for path in sys.argv[1:]:
        print(path)
        print(M.md_table(rise_table(Path(path)), floatfmt="{:g}"))
