"""Example figures: super-resolved maps and an attention map of HisToGene on her2st C4.

Fits the ``fast`` preset on C2, C3, C5, C6 (the benchmark's fold C4), then writes
``superres_<GENE>.png`` (measured spots, HisToGene spots, 4x and 9x super-resolution) and
``attention_C4.png`` (attention of one spot, both layers). Run from the repository root::

    OMP_NUM_THREADS=1 nice python benchmarks/histogene/figures.py --out benchmarks/histogene
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from stfusion import io  # noqa: E402
from stfusion.data.genes import read_gene_list  # noqa: E402
from stfusion.models.base import target_expression  # noqa: E402
from stfusion.models.histogene import HisToGene  # noqa: E402
from stfusion.models.histogene.superres import plot_superres  # noqa: E402
from stfusion.pl.attention import attention_map  # noqa: E402

HERE = Path(__file__).resolve().parent
GENES = ("FASN", "IGKC")


def _section(root: Path, sid: str):
    s = io.read_her2st(root / "her2st", sid)
    return s[np.asarray(s.X.sum(axis=1)).ravel() >= 1].copy()


def _spots(ax, section, values, title):
    xy = np.asarray(section.obsm["spatial"])
    sc = ax.scatter(xy[:, 0], xy[:, 1], c=values, s=28, marker="s", cmap="viridis")
    ax.set_aspect("equal")
    ax.invert_yaxis()
    ax.set_axis_off()
    ax.set_title(title)
    ax.figure.colorbar(sc, ax=ax, shrink=0.7)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--data", type=Path, default=HERE.parents[1].parent / "shared" / "data")
    args = ap.parse_args()
    genes = read_gene_list(args.data / "her2st" / "her_hvg_cut_1000.npy")
    train = [_section(args.data, s) for s in ("C2", "C3", "C5", "C6")]
    test = _section(args.data, "C4")
    model = HisToGene("fast", seed=0).fit(train, genes=genes)
    pred = model.predict(test)
    sr = {f: model.predict_super_resolution(test, f) for f in (4, 9)}
    truth = target_expression(test, list(GENES))
    for j, gene in enumerate(GENES):
        fig, axes = plt.subplots(1, 4, figsize=(22, 5.5))
        _spots(axes[0], test, truth[:, j], f"{gene} measured (log1p cp10k)")
        r = np.corrcoef(truth[:, j], np.asarray(pred[:, gene].X).ravel())[0, 1]
        _spots(axes[1], test, np.asarray(pred[:, gene].X).ravel(), f"{gene} HisToGene (r = {r:.2f})")
        for ax, f in zip(axes[2:], (4, 9), strict=True):
            plot_superres(sr[f], gene, ax=ax, show_image=False)
        fig.savefig(args.out / f"superres_{gene}.png", dpi=110, bbox_inches="tight")
        plt.close(fig)
    spot = int(np.argmax(truth[:, 0]))
    fig = attention_map(test, model.attention(test, spot), spot)
    fig.savefig(args.out / "attention_C4.png", dpi=110, bbox_inches="tight")
    print("wrote figures to", args.out)


if __name__ == "__main__":
    main()
