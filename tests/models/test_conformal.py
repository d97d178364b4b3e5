"""Split-conformal intervals (issue 26): coverage on synthetic data with known noise, interval
sanity, hold-outs, the model interface (fit(calibration=), calibrate, predict(coverage=)),
save/load, and the errors that say how to calibrate."""

from __future__ import annotations

import numpy as np
import pytest

from stfusion import _constants as K
from stfusion.baselines.interpolation import ConstantBaseline, NearestNeighbourBaseline
from stfusion.metrics.coverage import coverage, interval_width
from stfusion.models.conformal import (
    Calibration,
    CalibrationError,
    blocked_spot_holdout,
    conformal_quantile,
    conformal_rank,
    gaussian_intervals,
    split_for_calibration,
    truth_in_space,
)
from tests.baselines.test_interpolation import make_section

LEVELS = (0.5, 0.8, 0.9, 0.95)


def sampling_error(c: float, n_cal: int, n_test: int, n_genes: int, z: float = 4.0) -> float:
    """z standard errors of the gene-averaged coverage: the calibration quantile's own spread
    (Beta, ~ c(1-c)/n_cal) plus the test spots' binomial spread, genes independent."""
    return z * np.sqrt(c * (1 - c) * (1.0 / n_cal + 1.0 / n_test) / n_genes) + 1.0 / (n_cal + 1)


# --------------------------------------------------------------------------- ranks
def test_finite_sample_rank():
    assert conformal_rank(19, 0.95) == 19  # (19 + 1) * 0.95 = 19 exactly (floating point 19.000000000000004)
    assert conformal_rank(18, 0.95) == 19  # > n: unbounded
    assert conformal_rank(99, 0.9) == 90 and conformal_rank(100, 0.9) == 91
    scores = np.sort(np.arange(1.0, 20.0))[:, None]
    assert conformal_quantile(scores, np.array([19]), 0.95)[0] == 19.0
    assert conformal_quantile(scores[:18], np.array([18]), 0.95)[0] == np.inf
    with pytest.raises(CalibrationError, match="strictly between 0 and 1"):
        conformal_rank(10, 90)


# --------------------------------------------------------------------------- known noise
@pytest.mark.parametrize("normalised", [False, True])
def test_coverage_within_sampling_error_known_noise(normalised):
    rng = np.random.default_rng(1)
    n_cal, n_test, g = 500, 2000, 40
    mu = rng.normal(2.0, 1.0, size=g)
    if normalised:  # heteroscedastic noise whose SD the model knows
        sd_cal, sd_test = rng.uniform(0.1, 2.0, (n_cal, g)), rng.uniform(0.1, 2.0, (n_test, g))
    else:
        sd_cal, sd_test = np.full((n_cal, g), 0.5), np.full((n_test, g), 0.5)
    genes = [f"g{i}" for i in range(g)]
    truth_cal = mu + sd_cal * rng.standard_t(5, size=(n_cal, g))  # heavy tails: no Gaussian assumption
    truth_test = mu + sd_test * rng.standard_t(5, size=(n_test, g))
    pred_cal, pred_test = np.broadcast_to(mu, (n_cal, g)), np.broadcast_to(mu, (n_test, g))
    cal = Calibration.from_residuals(truth_cal, pred_cal, genes, kind="synthetic", space="log1p_cp10k",
                                     sd=sd_cal if normalised else None)
    for c in LEVELS:
        lo, hi = cal.intervals(pred_test, genes, c, sd=sd_test if normalised else None)
        per_gene, _ = coverage(truth_test, lo, hi)
        assert abs(per_gene.mean() - c) < sampling_error(c, n_cal, n_test, g), (c, per_gene.mean())
    assert cal.normalised is normalised


def test_intervals_contain_prediction_and_are_ordered():
    rng = np.random.default_rng(2)
    genes = ["a", "b", "c"]
    pred = rng.normal(0.2, 1.0, size=(300, 3))  # negative predictions too (a ridge model can give them)
    truth = np.abs(pred + rng.normal(0, 0.5, size=pred.shape))
    cal = Calibration.from_residuals(truth[:150], pred[:150], genes, kind="t", space="log1p_cp10k")
    for c in LEVELS:
        for nonneg in (False, True):
            lo, hi = cal.intervals(pred[150:], genes, c, nonnegative=nonneg)
            assert (lo <= hi).all() and (lo <= pred[150:]).all() and (pred[150:] <= hi).all()
            if nonneg:
                assert (lo >= np.minimum(pred[150:], 0) - 1e-12).all()
    lo, hi = gaussian_intervals(pred, np.full(pred.shape, 0.3), 0.9, nonnegative=True)
    assert (lo <= pred).all() and (pred <= hi).all()
    widths = [interval_width(*cal.intervals(pred[150:], genes, c)).mean() for c in LEVELS]
    assert np.all(np.diff(widths) >= 0)  # nested: higher coverage, wider


def test_gaussian_interval_is_z_sd():
    lo, hi = gaussian_intervals(np.zeros((1, 1)), np.ones((1, 1)), 0.95)
    assert hi[0, 0] == pytest.approx(1.959964, abs=1e-5) and lo[0, 0] == pytest.approx(-1.959964, abs=1e-5)


# --------------------------------------------------------------------------- synthetic sections and models
def grid_section(i: int, rng, n_side: int = 20, g: int = 12):
    xy = np.stack(np.meshgrid(np.arange(n_side), np.arange(n_side)), -1).reshape(-1, 2) * 20.0 + 10
    counts = rng.poisson(np.linspace(40, 200, g), size=(len(xy), g))  # spots iid: sections exchangeable
    counts = np.hstack([counts, rng.poisson(800, size=(len(xy), 1))])
    section = make_section(xy, counts, section_id=f"S{i}")
    section.uns[K.STFUSION][K.PATIENT] = "P1" if i < 2 else "P2"
    return section


@pytest.fixture(scope="module")
def sections():
    rng = np.random.default_rng(0)
    return [grid_section(i, rng) for i in range(5)]


def test_model_conformal_coverage_on_exchangeable_sections(sections):
    model = ConstantBaseline().fit(sections[:3], calibration="sections")
    assert model.training_data_["n_sections"] == 2  # the calibration section did not train it
    assert model.card()["calibration"]["kind"] == "sections" and model.card()["calibration"]["sections"] == ["S2"]
    test = sections[4]
    truth = truth_in_space(test, model.genes_, "log1p_cp10k")
    n_genes = len(model.genes_)
    for c in LEVELS:
        pred = model.predict(test, coverage=c)
        per_gene, _ = coverage(truth, pred.layers[K.LAYER_LOWER], pred.layers[K.LAYER_UPPER])
        assert abs(per_gene.mean() - c) < sampling_error(c, 400, 400, n_genes), (c, per_gene.mean())
        info = pred.uns["stfusion"][K.COVERAGE]
        assert info["nominal"] == c and info["calibration"] == "sections"
        assert (pred.layers[K.LAYER_LOWER] <= pred.X).all() and (pred.X <= pred.layers[K.LAYER_UPPER]).all()


def test_default_fit_is_unchanged_and_coverage_needs_calibration(sections):
    plain = ConstantBaseline().fit(sections[:3])
    assert plain.calibration_ is None and plain.card()["calibration"] is None
    np.testing.assert_array_equal(plain.predict(sections[4]).X, ConstantBaseline().fit(sections[:3]).predict(sections[4]).X)
    with pytest.raises(CalibrationError, match="calibration='sections'"):
        plain.predict(sections[4], coverage=0.9)
    plain.calibrate(sections[3], kind="held-out section")  # after the fact, on a section it did not see
    out = plain.predict(sections[4], coverage=0.9)
    assert out.uns["stfusion"][K.COVERAGE]["calibration"] == "held-out section"
    assert "lower" not in plain.predict(sections[4]).layers  # no coverage: no intervals


def test_save_load_gives_identical_intervals(sections, tmp_path):
    model = ConstantBaseline().fit(sections[:3], calibration="spots", calibration_fraction=0.25)
    assert model.card()["calibration"]["fraction"] == 0.25
    before = model.predict(sections[4], coverage=0.8)
    model.save(tmp_path / "m")
    assert (tmp_path / "m" / "calibration.npz").exists()
    loaded = ConstantBaseline.load(tmp_path / "m")
    after = loaded.predict(sections[4], coverage=0.8)
    for key in (K.LAYER_LOWER, K.LAYER_UPPER):
        np.testing.assert_array_equal(before.layers[key], after.layers[key])
    assert loaded.card()["calibration"] == model.card()["calibration"]
    # saving an uncalibrated model into the same folder removes the stale calibration
    ConstantBaseline().fit(sections[:2]).save(tmp_path / "m")
    assert not (tmp_path / "m" / "calibration.npz").exists()
    assert ConstantBaseline.load(tmp_path / "m").calibration_ is None


def test_blocked_holdout_and_splits(sections):
    s = sections[0]
    mask = blocked_spot_holdout(s, 0.2, seed=0)
    assert 0.15 <= mask.mean() <= 0.35
    np.testing.assert_array_equal(mask, blocked_spot_holdout(s, 0.2, seed=0))
    # blocked: most held-out spots have a held-out nearest neighbour
    from scipy.spatial import cKDTree

    xy = s.obsm["spatial"]
    _, nn = cKDTree(xy).query(xy[mask], k=2)
    assert mask[nn[:, 1]].mean() > 0.7
    train, held, kind = split_for_calibration(sections[:3], "auto")
    assert kind == "sections" and len(train) == 2 and len(held) == 1
    train, held, kind = split_for_calibration(sections[:2], "auto")
    assert kind == "spots" and [t.n_obs + h.n_obs for t, h in zip(train, held)] == [400, 400]
    train, held, kind = split_for_calibration(sections, "patient")
    assert {t.uns["stfusion"]["patient"] for t in train} == {"P1"} and len(held) == 3
    with pytest.raises(CalibrationError, match="at least two"):
        split_for_calibration(sections[:1], "sections")
    with pytest.raises(CalibrationError, match="must be one of"):
        split_for_calibration(sections, "cells")


def test_interpolation_baseline_calibrates_on_held_out_spots(sections):
    model = NearestNeighbourBaseline().fit(sections[:1], calibration="spots")
    assert model.calibration_.kind == "spots" and model.calibration_.sources == ["S0"]
    pred = model.predict(sections[0], coverage=0.9)
    assert (pred.layers[K.LAYER_LOWER] <= pred.layers[K.LAYER_UPPER]).all()


def test_sd_model_gives_model_intervals_and_normalised_calibration(sections):
    """A model with an SD layer: uncalibrated coverage= uses X ± z SD; calibrated, SD-normalised scores."""
    from stfusion.baselines.gp import GaussianProcessBaseline

    small = [s[s.obsm["spatial"][:, 0] < 200].copy() for s in sections[:1]]  # 100 spots: quick
    gp = GaussianProcessBaseline(n_lengthscales=3).fit(small)
    pred = gp.predict(small[0], coverage=0.9)
    assert pred.uns["stfusion"][K.COVERAGE]["calibration"] is None
    z = (pred.layers[K.LAYER_UPPER] - pred.X) / np.maximum(pred.layers[K.LAYER_PRED_SD], 1e-12)
    np.testing.assert_allclose(z[pred.layers[K.LAYER_PRED_SD] > 1e-3], 1.6449, rtol=1e-3)
    gp.calibrate(sections[0][sections[0].obsm["spatial"][:, 0] >= 200].copy(), kind="spots")
    assert gp.calibration_.normalised
    conf = gp.predict(small[0], coverage=0.9)
    assert "SD-normalised" in conf.uns["stfusion"][K.COVERAGE]["interval"]
    model_iv = gp.predict(small[0], coverage=0.9, interval="model")
    assert model_iv.uns["stfusion"][K.COVERAGE]["calibration"] is None
    with pytest.raises(CalibrationError, match="predicts no SD"):
        ConstantBaseline().fit(small).predict(small[0], coverage=0.9, interval="model")


def test_api_fit_passes_calibration_and_load_model_keeps_it(sections, tmp_path):
    from stfusion.models.api import fit, load_model, save_model

    model = fit("constant", sections[:3], calibration="auto")
    assert model.calibration_.kind == "spots"  # "auto" for a model that reads no histology: held-out spots
    save_model(model, tmp_path / "m")
    back = load_model(tmp_path / "m")
    a, b = model.predict(sections[4], coverage=0.95), back.predict(sections[4], coverage=0.95)
    np.testing.assert_array_equal(a.layers[K.LAYER_UPPER], b.layers[K.LAYER_UPPER])
    assert back.read_card(tmp_path / "m")["calibration"]["kind"] == "spots"


def test_grid_predictions_take_the_model_sd_and_shifted_slides_are_flagged(sections, caplog):
    """Conformal intervals hold for spots: a grid prediction (XFuse's predict_grid) gets the model's SD
    intervals under 'auto' and a clear error under 'conformal'; a slide whose stain lies outside the
    training sections' gets its intervals with a warning and ``shift_flagged``."""
    model = ConstantBaseline().fit(sections[:3], calibration="sections")
    grid = model.predict(sections[4])
    grid.uns["stfusion"][K.GRID_UM] = 10.0
    grid.layers[K.LAYER_PRED_SD] = np.full(grid.shape, 0.5, dtype=np.float32)
    out = model.add_intervals(grid.copy(), 0.9)
    assert out.uns["stfusion"][K.COVERAGE]["calibration"] is None  # the model's SD, not the spot calibration
    np.testing.assert_allclose(out.layers[K.LAYER_UPPER] - out.X, 1.6449 * 0.5, rtol=1e-3)
    with pytest.raises(CalibrationError, match="--interval model"):
        model.add_intervals(grid.copy(), 0.9, interval="conformal")
    spots = model.predict(sections[4])
    assert model.add_intervals(spots.copy(), 0.9).uns["stfusion"][K.COVERAGE]["shift_flagged"] is False
    spots.uns["stfusion"]["stain_shift"] = {"flagged": True, "score": 2.9}
    with caplog.at_level("WARNING", logger="stfusion"):
        flagged = model.add_intervals(spots, 0.9)
    assert flagged.uns["stfusion"][K.COVERAGE]["shift_flagged"] is True
    assert "stain_shift" in caplog.text and "coverage can fall short" in caplog.text
