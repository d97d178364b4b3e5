"""Fit, save, load and predict any registered model by name; the CLI gives the same numbers."""

import numpy as np
import pytest

from stfusion.cli import main
from stfusion.errors import StfusionError
from stfusion.io import read_xfuse_toy, write_h5ad
from stfusion.models.api import create, fit, load_model, save_model
from tests.conftest import need


@pytest.fixture(scope="module")
def toy(shared_data):
    section = read_xfuse_toy(need(shared_data, "xfuse_mob_toy"))
    totals = np.asarray(section.X.sum(axis=1)).ravel()
    return section[totals >= 100].copy()


def test_unknown_hyperparameter_lists_valid_ones():
    with pytest.raises(StfusionError, match="accepts none"):
        create("constant", epochs=3)
    with pytest.raises(StfusionError, match="alphas"):
        create("colour_texture_ridge", alpha=1)


def test_python_and_cli_give_identical_predictions(toy, tmp_path):
    model = fit("colour_texture_ridge", [toy], genes=5)
    save_model(model, tmp_path / "py")
    py = load_model(tmp_path / "py").predict(toy)

    section_path = tmp_path / "toy.h5ad"
    write_h5ad(toy, section_path)
    assert main(["fit", "colour_texture_ridge", str(section_path), "--genes", "5", "--out", str(tmp_path / "cli")]) == 0
    assert main(["predict", str(tmp_path / "cli"), str(section_path), "--out", str(tmp_path / "p.h5ad")]) == 0
    import anndata as ad

    cli = ad.read_h5ad(tmp_path / "p.h5ad")
    assert list(cli.var_names) == list(py.var_names) and list(cli.obs_names) == list(py.obs_names)
    np.testing.assert_array_equal(cli.X, py.X)


def test_failed_save_keeps_previous_model(toy, tmp_path, monkeypatch):
    model = fit("constant", [toy], genes=3)
    target = save_model(model, tmp_path / "m")
    before = (target / "model.json").read_text()

    def broken(directory):
        (directory / "model.json").write_text("partial")
        raise OSError("disk full")

    monkeypatch.setattr(model, "save", broken)
    with pytest.raises(OSError):
        save_model(model, target)
    assert (target / "model.json").read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no partial folders left


def test_load_model_rejects_other_folders(tmp_path):
    with pytest.raises(StfusionError, match="not a saved stfusion model"):
        load_model(tmp_path)


# ----------------------------------------------------------------------------- model cards and scale checks
def _synthetic(tmp_path, name="a", **kw):
    from stfusion.data.synthetic import make_synthetic_section

    return make_synthetic_section(tmp_path / name, size_px=384, grid=(8, 8), n_genes=5, microns_per_pixel=1.0,
                                  spot_shape="round", **kw)  # fmt: skip


def _halved(section, tmp_path, claimed_mpp, factor=2):
    """The same section with its image downsampled ``factor`` x (BOX) and spots moved with it;
    ``claimed_mpp`` is recorded as its scale (``factor`` is the truth)."""
    from PIL import Image

    from stfusion.data.section import fullres_path, section_from_image, spot_diameter_px

    img = Image.open(fullres_path(section))
    path = tmp_path / f"small_{factor}_{claimed_mpp}.png"
    img.resize((img.width // factor, img.height // factor), Image.Resampling.BOX).save(path)
    return section_from_image(section.X, np.asarray(section.obsm["spatial"]) / factor, path, obs_names=list(section.obs_names),
                              var_names=list(section.var_names), library_id="half",
                              spot_diameter_um=spot_diameter_px(section) * 1.0, microns_per_pixel=claimed_mpp)  # fmt: skip


def test_model_card_carries_scale_training_data_and_validation(tmp_path, capsys):
    import json

    section = _synthetic(tmp_path)
    save_model(fit("colour_texture_ridge", [section], genes=4), tmp_path / "m")
    card = json.loads((tmp_path / "m" / "model.json").read_text())
    assert card["method"] == "colour_texture_ridge" and card["version"] and len(card["genes"]) == 4
    assert card["normalisation"].startswith("log1p(counts / spot total")
    assert card["patch_field_um"] == 100.0 and card["microns_per_pixel"] == pytest.approx(100.0 / 64)
    assert card["training_data"]["n_spots"] == 64 and card["training_data"]["sections"][0]["microns_per_pixel"] == 1.0
    assert card["validation"]["split"] is None  # this model holds out no validation split: said, not invented
    assert load_model(tmp_path / "m").training_data_ == card["training_data"]
    assert main(["info", str(tmp_path / "m"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["training_data"]["n_spots"] == 64
    assert main(["info", str(tmp_path / "m")]) == 0
    assert "training spots" in capsys.readouterr().out


def test_stnet_card_records_its_holdout_validation(tmp_path):
    from stfusion.models.stnet import STNet

    parts = [_synthetic(tmp_path, f"s{i}", seed=i) for i in range(2)]
    model = STNet(preset="fast", backbone="small_cnn", width=4, out_px=16, epochs=2, batch_size=16,
                  epoch_selection="holdout", tta=False).fit(parts, genes=["marker_0", "marker_1"])  # fmt: skip
    val = model.card()["validation"]
    losses = [row["val_loss"] for row in model.info_["history"]]
    assert val["best_val_loss"] == pytest.approx(min(losses)) and "held out" in val["split"]
    assert val["section"] == model.info_["training_sections"][-1]


def test_predict_without_scale_fails_clearly(tmp_path):
    from stfusion import _constants as K
    from stfusion.errors import ScaleError

    section = _synthetic(tmp_path)
    model = fit("colour_texture_ridge", [section], genes=3)
    broken = section.copy()
    lib = next(iter(broken.uns[K.SPATIAL]))
    broken.uns[K.SPATIAL] = {lib: {k: v for k, v in broken.uns[K.SPATIAL][lib].items() if k != K.MICRONS_PER_PIXEL}}
    with pytest.raises(ScaleError, match="no valid microns per pixel.*--microns-per-pixel"):
        model.predict(broken)


def test_histology_models_rescale_by_microns(tmp_path):
    """A section whose image has half the resolution (2 µm/px) gives near-identical patches and
    predictions to the original (1 µm/px), because patches are read by physical size; recording a
    wrong scale instead changes them a lot. Measured: patch |diff| 5 vs 41 (grey levels, SD 62),
    prediction r 0.99 vs 0.90."""
    import logging

    from stfusion.data.patches import read_patches
    from stfusion.data.section import spot_coords

    a = _synthetic(tmp_path)
    rescaled, wrong = _halved(a, tmp_path, 2.0), _halved(a, tmp_path, 1.0)
    pa, pr, pw = (read_patches(s, spot_coords(s), 100.0, 64).astype(float) for s in (a, rescaled, wrong))
    assert np.abs(pa - pr).mean() < 0.15 * pa.std() < np.abs(pa - pw).mean()
    model = fit("colour_texture_ridge", [a])
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("stfusion").addHandler(handler)
    try:
        y, yr, yw = (np.asarray(model.predict(s).X).ravel() for s in (a, rescaled, wrong))
        records[:] = [r for r in records if "coarser" in r.getMessage()]  # not the stain check's warning
        assert not records  # 2x coarser than the training section: within the limit
        model.predict(_halved(a, tmp_path, 3.0, factor=3))
        records[:] = [r for r in records if "coarser" in r.getMessage()]
    finally:
        logging.getLogger("stfusion").removeHandler(handler)
    r_rescaled, r_wrong = np.corrcoef(y, yr)[0, 1], np.corrcoef(y, yw)[0, 1]
    assert r_rescaled > 0.98 and r_rescaled > r_wrong + 0.05
    assert len(records) == 1 and "3.0x coarser" in records[0].getMessage()  # 3x: warned, still predicted
