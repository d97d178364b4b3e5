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
