"""``stfusion plot``: each subcommand writes one figure file with --out."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from stfusion.cli import main
from stfusion.io import write_h5ad
from tests.pl import synthetic as S


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("plot")
    truth = S.section(root)
    pred = S.prediction(truth)
    pred.obsm["X_stnet"] = np.random.default_rng(0).normal(size=(pred.n_obs, 8)).astype(np.float32)
    write_h5ad(truth, root / "truth.h5ad")
    pred.write_h5ad(root / "pred.h5ad")
    return root


def _png_size(path):
    with Image.open(path) as img:
        return img.size


@pytest.mark.parametrize(
    ("args", "min_width"),
    [
        (["spots", "{root}/truth.h5ad", "--gene", "marker_0"], 300),
        (["map", "{root}/pred.h5ad", "-g", "marker_0", "--layer", "sd"], 300),
        (["panels", "{root}/pred.h5ad", "-g", "marker_0", "--truth", "{root}/truth.h5ad"], 900),  # 3 panels
        (["umap", "{root}/pred.h5ad", "--color", "marker_0"], 300),
    ],
)
def test_plot_subcommands_write_png(files, args, min_width, monkeypatch):
    import stfusion.pl.embedding as E

    monkeypatch.setattr(E, "umap_coords", lambda x, **kw: np.asarray(x)[:, :2])  # umap-learn's JIT takes ~20 s
    out = files / f"{args[0]}.png"
    assert main(["plot", *[a.format(root=files) for a in args], "--out", str(out)]) == 0
    width, height = _png_size(out)
    assert width >= min_width and height >= 200


def test_plot_writes_pdf_and_rejects_other_suffixes(files, capsys):
    assert main(["plot", "map", str(files / "pred.h5ad"), "-g", "marker_1", "-o", str(files / "m.pdf")]) == 0
    assert (files / "m.pdf").read_bytes()[:4] == b"%PDF"
    assert main(["plot", "map", str(files / "pred.h5ad"), "-g", "marker_1", "-o", str(files / "m.txt")]) == 1
    assert ".png, .pdf or .svg" in capsys.readouterr().err
    assert not (files / "m.txt").exists()


def test_plot_errors_are_one_line(files, capsys):
    assert main(["plot", "map", str(files / "pred.h5ad"), "-g", "NOPE", "-o", str(files / "x.png")]) == 1
    assert "Gene 'NOPE' is not among" in capsys.readouterr().err
    assert main(["plot", "umap", str(files / "truth.h5ad"), "-o", str(files / "x.png")]) == 1
    assert "X_stnet" in capsys.readouterr().err
    assert not (files / "x.png").exists()


def test_plot_boxplot_of_a_run(files, tmp_path):
    rng = np.random.default_rng(0)
    rows = [{"dataset": "d", "method": m, "metric": "pearson", "value": v, "kind": "model", "fold": "f", "gene": f"g{i}"}
            for m, mu in (("a", 0.1), ("b", 0.4)) for i, v in enumerate(rng.normal(mu, 0.05, 20))]  # fmt: skip
    pd.DataFrame(rows).to_csv(tmp_path / "per_gene.csv", index=False)
    assert main(["plot", "boxplot", str(tmp_path), "-o", str(tmp_path / "b.png")]) == 0
    assert _png_size(tmp_path / "b.png")[0] > 200
    assert main(["plot", "boxplot", str(files), "-o", str(tmp_path / "c.png")]) == 1


def test_plot_attention_of_a_histogene_model(files, tmp_path):
    from stfusion.io import read_h5ad
    from stfusion.models.api import save_model
    from stfusion.models.histogene import HisToGene

    section = read_h5ad(files / "truth.h5ad")
    model = HisToGene(preset="fast", dim=16, depth=2, heads=2, patch_px=8, epochs=1).fit([section], genes=["marker_0"])
    save_model(model, tmp_path / "hg")
    out = tmp_path / "att.png"
    assert main(["plot", "attention", str(tmp_path / "hg"), str(files / "truth.h5ad"), "--spot", "3", "-o", str(out)]) == 0
    assert _png_size(out)[0] > 600  # one panel per layer
