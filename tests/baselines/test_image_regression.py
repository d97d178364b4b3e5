"""Image-feature baselines on the real toy section: fit on half the spots, predict the other half."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from stfusion.baselines.image_regression import (
    ColourTextureRidgeBaseline,
    DepthOnlyBaseline,
    HistogramRegressionBaseline,
    MorphologyForestBaseline,
    log_depth,
)
from stfusion.errors import StfusionError
from stfusion.models.base import NotFittedError, target_expression
from tests.conftest import need

MODELS = [HistogramRegressionBaseline, MorphologyForestBaseline, DepthOnlyBaseline, ColourTextureRidgeBaseline]


@pytest.fixture(scope="module")
def halves(shared_data):
    from stfusion.data.section import section_from_image

    root = need(shared_data, "xfuse_mob_toy")
    counts = pd.read_csv(root / "counts.tsv", sep="\t", index_col=0)
    spots = pd.read_csv(root / "spots.tsv", sep="\t")
    spots.index = [f"{x}x{y}" for x, y in zip(spots["x"], spots["y"], strict=True)]
    ids = counts.index.intersection(spots.index)
    section = section_from_image(
        counts.loc[ids].to_numpy(),
        spots.loc[ids, ["pixel_x", "pixel_y"]].to_numpy(),
        root / "image.jpg",
        obs_names=ids,
        var_names=counts.columns,
        library_id="xfuse_mob_toy",
        spot_spacing_um=200,
    )
    perm = np.random.default_rng(0).permutation(section.n_obs)
    half = section.n_obs // 2
    return section[np.sort(perm[:half])].copy(), section[np.sort(perm[half:])].copy()


@pytest.fixture(scope="module")
def fitted(halves):
    train, _ = halves
    return {cls: cls().fit([train]) for cls in MODELS}


def mean_pearson(pred: np.ndarray, truth: np.ndarray) -> float:
    r = [np.corrcoef(pred[:, j], truth[:, j])[0, 1] for j in range(truth.shape[1])]
    return float(np.nanmean(r))


@pytest.mark.parametrize("cls", MODELS, ids=lambda c: c.name)
def test_fit_predict_save_load(cls, fitted, halves, tmp_path):
    train, test = halves
    model = fitted[cls]
    before = test.copy()
    pred = model.predict(test)
    assert list(pred.obs_names) == list(test.obs_names)
    assert list(pred.var_names) == list(train.var_names)
    assert pred.uns["stfusion"]["method"] == cls.name
    assert np.isfinite(pred.X).all() and pred.X.std(axis=0).min() > 0
    np.testing.assert_array_equal(pred.obsm["spatial"], test.obsm["spatial"])
    np.testing.assert_array_equal(test.X.toarray(), before.X.toarray())  # input untouched
    model.save(tmp_path / "m")
    assert (tmp_path / "m" / "params.npz").exists()
    loaded = cls.load(tmp_path / "m")
    assert loaded.hyperparams == model.hyperparams and loaded.genes_ == model.genes_
    np.testing.assert_array_equal(loaded.predict(test).X, pred.X)


def test_histogram_predictions_non_negative(fitted, halves):
    assert fitted[HistogramRegressionBaseline].predict(halves[1]).X.min() >= 0


def test_colour_models_correlate_with_truth(fitted, halves):
    # Seen on this split: ColourTextureRidge 0.52, DepthOnly 0.30, Histogram 0.36, Morphology 0.35.
    _, test = halves
    truth = target_expression(test)
    assert mean_pearson(fitted[ColourTextureRidgeBaseline].predict(test).X, truth) > 0.3
    assert mean_pearson(fitted[DepthOnlyBaseline].predict(test).X, truth) > 0.15
    assert mean_pearson(fitted[HistogramRegressionBaseline].predict(test).X, truth) > 0.15


def test_depth_only_is_affine_in_predicted_depth(fitted, halves):
    train, test = halves
    model = fitted[DepthOnlyBaseline]
    depth = model.predict_depth(test)
    pred = model.predict(test).X
    slope, intercept = model.params_["gene_slope"], model.params_["gene_intercept"]
    np.testing.assert_allclose(pred, intercept + np.outer(depth, slope), rtol=1e-5, atol=1e-5)
    truth = target_expression(test)
    for j in range(truth.shape[1]):
        r_pred = np.corrcoef(pred[:, j], truth[:, j])[0, 1]
        assert r_pred == pytest.approx(np.sign(slope[j]) * np.corrcoef(depth, truth[:, j])[0, 1], abs=1e-4)
    # predicted depth tracks the observed depth of unseen spots
    assert np.corrcoef(depth, log_depth(test))[0, 1] > 0.2


def test_genes_argument_and_errors(halves, tmp_path):
    train, test = halves
    genes = list(train.var_names[[3, 0]])
    model = ColourTextureRidgeBaseline(out_px=32).fit([train], genes=genes)
    assert list(model.predict(test).var_names) == genes
    with pytest.raises(NotFittedError):
        DepthOnlyBaseline().predict(test)
    model.save(tmp_path / "ct")
    with pytest.raises(StfusionError, match="colour_texture_ridge"):
        DepthOnlyBaseline.load(tmp_path / "ct")
    with pytest.raises(StfusionError, match="not in the section"):
        ColourTextureRidgeBaseline().fit([train], genes=["NotAGene"])


def test_depth_only_gene_map_options(fitted, halves):
    train, test = halves
    oof = DepthOnlyBaseline(gene_map="predicted").fit([train])
    observed = fitted[DepthOnlyBaseline]
    np.testing.assert_array_equal(oof.predict_depth(test), observed.predict_depth(test))  # same depth model
    assert not np.allclose(oof.params_["gene_slope"], observed.params_["gene_slope"])
    with pytest.raises(ValueError, match="gene_map"):
        DepthOnlyBaseline(gene_map="true")


def test_spots_without_counts_are_left_out_of_training(halves):
    train, test = halves
    zeroed = train.copy()
    x = zeroed.X.toarray()
    x[:5] = 0
    zeroed.X = sparse.csr_matrix(x)
    a = HistogramRegressionBaseline().fit([zeroed]).predict(test).X
    b = HistogramRegressionBaseline().fit([train[5:].copy()]).predict(test).X
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
