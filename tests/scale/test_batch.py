"""Many slides through Dask: every slide predicted once, finished slides skipped on re-run."""

from __future__ import annotations

import os

import anndata as ad
import pandas as pd
import pytest

from stfusion.models.api import save_model
from stfusion.scale.batch import list_slides, predict_slides
from stfusion.scale.synthetic import random_stnet, write_synthetic_slide

pytest.importorskip("dask.distributed")


def test_batch_predicts_each_slide_once_and_resumes(tmp_path):
    slides = tmp_path / "slides"
    slides.mkdir()
    for i in range(3):
        write_synthetic_slide(slides / f"s{i}.ome.tif", 700, 800, microns_per_pixel=1.5, seed=i, tile=128, min_side=300)
    (slides / "notes.txt").write_text("not a slide")
    model_dir = save_model(random_stnet(["a", "b"], width=4, out_px=16, tta=False), tmp_path / "model")
    out = tmp_path / "out"
    assert [p.name for p in list_slides(slides)] == ["s0.ome.tif", "s1.ome.tif", "s2.ome.tif"]

    first = predict_slides(model_dir, str(slides / "s*.ome.tif"), out, workers=2)
    assert list(first.status) == ["done"] * 3 and (first.spots > 0).all()
    assert sorted(p.name for p in out.glob("*.h5ad")) == ["s0.h5ad", "s1.h5ad", "s2.h5ad"]
    assert ad.read_h5ad(out / "s1.h5ad").n_obs == first.spots[1]
    mtime = os.path.getmtime(out / "s0.h5ad")

    (out / "s2.h5ad").unlink()  # as if the run had stopped before s2 finished
    second = predict_slides(model_dir, slides, out, workers=1)
    assert list(second.status) == ["skipped", "skipped", "done"]
    assert os.path.getmtime(out / "s0.h5ad") == mtime
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary.status) == ["skipped", "skipped", "done"]
