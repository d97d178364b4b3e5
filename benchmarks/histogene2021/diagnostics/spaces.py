"""Which space is compared: two checks beside the histogene2021_her2st run.

Usage (repository root): OMP_NUM_THREADS=1 nice .venv/bin/python benchmarks/histogene2021/diagnostics/spaces.py
Writes spaces.md next to this file. Same sections (C2-C6), genes (her_hvg_cut_1000.npy), folds
and seed (0) as benchmarks/histogene2021/her2st.toml.

1. Depth in each truth: per section, the mean over the 785 genes of Pearson r between the truth
   and the spot's measured log1p(total counts over all genes), for the papers' truth
   (log10(1 + 1e4 x / total over the 785 genes)) and the strict target (log1p(cp10k over all genes)).
2. HisToGene (fast preset): the papers' view of the prediction as the model returns it (strict
   space, what the committed run scores) and of the network's own output in the papers' space
   (un-z-scored, before HisToGene.to_eval_scale maps it to the strict space), as HisToGene's
   code compared it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from stfusion import io
from stfusion.benchmark.papers.histogene2021 import HisToGene2021Her2st, gene_pearson, paper_expression
from stfusion.models.base import dense
from stfusion.models.histogene import HisToGene

ROOT = Path(os.environ.get("STFUSION_SHARED_DATA", Path(__file__).resolve().parents[4] / "shared" / "data"))
SECTIONS = ["C2", "C3", "C4", "C5", "C6"]


def nanmean_r(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.nanmean(gene_pearson(a, b)[0]))


def main() -> None:
    sections = [io.read_her2st(ROOT / "her2st", s) for s in SECTIONS]
    protocol = HisToGene2021Her2st()
    folds = protocol.folds(sections, seed=0)
    genes = protocol.genes(folds[0], "her2st/her_hvg_cut_1000.npy")
    depth_rows, model_rows = [], []
    for fold in folds:
        test = fold.test
        x = dense(test.X).astype(float)
        log_depth = np.log1p(x.sum(1))[:, None].repeat(len(genes), 1)
        paper = paper_expression(test[:, genes].X)
        strict = np.log1p(dense(test[:, genes].X) / x.sum(1, keepdims=True) * 1e4)
        depth_rows.append((fold.name, nanmean_r(log_depth, paper), nanmean_r(log_depth, strict)))

        model = HisToGene(preset="fast", seed=0)
        raw: list[np.ndarray] = []
        to_eval = model.to_eval_scale

        def record(pred, _to_eval=to_eval, _raw=raw, _model=model):
            p = np.asarray(pred, float)
            if _model.hyperparams["scale_targets"]:
                p = p * np.asarray(_model.state_["target_std"]) + np.asarray(_model.state_["target_mean"])
            _raw.append(p)
            return _to_eval(pred)

        model.to_eval_scale = record
        model.fit(fold.train, genes=genes)
        returned = dense(model.predict(test)[:, genes].X).astype(float)
        model_rows.append(
            (fold.name, nanmean_r(returned, paper), nanmean_r(raw[-1], paper), nanmean_r(returned, strict))
        )
        print(fold.name, depth_rows[-1], model_rows[-1], flush=True)

    def table(header: list[str], rows: list[tuple]) -> list[str]:
        mean = ("mean", *np.mean([r[1:] for r in rows], axis=0))
        out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return out + ["| " + " | ".join([r[0], *(f"{v:.3f}" for v in r[1:])]) + " |" for r in [*rows, mean]]

    md = ["# Which space is compared (histogene2021_her2st)", "", "Made by `spaces.py` (see its docstring).", "",
          "## 1. Mean gene r of each truth with the spot's measured log depth", "",
          *table(["section", "papers' truth", "strict truth"], depth_rows), "",
          "## 2. HisToGene fast, seed 0: mean gene r (NaN genes dropped)", "",
          *table(["section", "paper view, returned prediction", "paper view, network output in the papers' space",
                  "strict view, returned prediction"], model_rows), ""]  # fmt: skip
    (Path(__file__).parent / "spaces.md").write_text("\n".join(md))


if __name__ == "__main__":
    main()
