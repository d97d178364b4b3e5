"""XFuse on the MOB 50% hold-out folds: where does it fall short of the Gaussian process?

One fold of ``mob_holdout.toml`` (MOB1 by default, the hidden spots of ``spot_holdout`` seed 0,
top 100 genes by mean of the visible spots). Each run fits one XFuse variant (the ``fast`` preset plus
the given parameters) on the visible spots and scores median gene-wise Pearson r on
log1p(counts / spot total x 1e4) on the hidden spots *and on the visible (training) spots*,
beside the Gaussian-process baseline on the hidden spots. A model that scores as low on its
training spots as on the hidden ones under-fits the expression; one that is much better there
over-fits.

``--save DIR`` keeps the fitted model (for ``diagnostics/frozen_heads.py``).

``--no-drop`` keeps every metagene that drop-and-split creates (the drop step is switched off;
splits go on), to see whether more metagenes help.

``--section MOB2`` runs MOB2's fold instead; ``--seed`` picks the fold's hidden spots
(``spot_holdout`` seed) and seeds the model.

Run (repository root; one fit per variant, ~8-20 min each on one thread)::

    nice env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/xfuse/holdout_variants.py --name fast
    nice env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/xfuse/holdout_variants.py --name no_drop --no-drop

Rows accumulate in benchmarks/xfuse/holdout_variants.{csv,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _mob as M  # noqa: E402

OUT = M.HERE / "holdout_variants"


def pearson_per_gene(pred, part, genes: list[str]) -> np.ndarray:
    """Gene-wise Pearson r on the primary target, scored as the benchmark runner does."""
    from stfusion.benchmark.scoring import score_histology

    df = score_histology(pred, part, genes)
    return df.loc[df.metric == "pearson", "value"].to_numpy(float)


def median_r(pred, part, genes: list[str]) -> float:
    return float(np.nanmedian(pearson_per_gene(pred, part, genes)))


def run(name: str, params: dict, no_drop: bool, seed: int, save: Path | None = None, section: str = "MOB1") -> dict:
    from stfusion.models.registry import get as get_model
    from stfusion.models.xfuse import XFuse

    if no_drop:
        import stfusion.models.xfuse.metagenes as MG

        MG.drop = lambda *args, **kwargs: None
    train, test, genes = M.holdout_fold(section, seed)
    start = time.perf_counter()
    model = XFuse(preset="fast", progress=False, samples=10, seed=seed, **params).fit([train], genes=genes)
    fit_s = time.perf_counter() - start
    if save is not None:
        model.save(save)
    gp = get_model("gaussian_process")().fit([train], genes=genes)
    return {"variant": name, "section": section, "seed": seed, "params": json.dumps(params, sort_keys=True), "no_drop": no_drop,
            "metagenes": model.expr_.n_active, "steps": len(model.history_), "fit_s": round(fit_s, 1),
            "xfuse_hidden": median_r(model.predict(test), test, genes),
            "xfuse_visible": median_r(model.predict(train), train, genes),
            "gp_hidden": median_r(gp.predict(test), test, genes)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", required=True)
    ap.add_argument("--params", default="{}", help='JSON of XFuse arguments, e.g. \'{"steps": 6000}\'')
    ap.add_argument("--no-drop", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--section", default="MOB1", choices=M.SECTIONS)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=OUT, help="table path without suffix")
    ap.add_argument("--save", type=Path, help="save the fitted model here (for diagnostics/frozen_heads.py)")
    args = ap.parse_args()
    M.set_threads(args.threads)
    prov = M.Provenance(seed=args.seed, threads=args.threads)
    row = run(args.name, json.loads(args.params), args.no_drop, args.seed, args.save, args.section)
    info = prov.stop()
    row.update(date_utc=info["date_utc"], load_start=info["load_start"], load_end=info["load_end"],
               xfuse_source_sha1=info["xfuse_source_sha1"], command=info["command"])
    out = args.out
    csv = out.with_suffix(".csv")
    df = pd.concat([pd.read_csv(csv), pd.DataFrame([row])]) if csv.is_file() else pd.DataFrame([row])
    df.to_csv(csv, index=False)
    cols = ["variant", "section", "seed", "params", "no_drop", "metagenes", "steps", "fit_s", "xfuse_hidden",
            "xfuse_visible", "gp_hidden"]
    out.with_suffix(".md").write_text(
        "# XFuse variants on the MOB 50% hold-out folds\n\nWritten by `holdout_variants.py` (see its docstring); "
        f"{os.cpu_count()} cores, one torch thread; commands, dates and load in `holdout_variants.csv`.\n"
        "Median gene-wise Pearson r, top 100 genes. The seed picks the hidden spots and seeds the model.\n\n" + M.md_table(df[cols]) + "\n")
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
