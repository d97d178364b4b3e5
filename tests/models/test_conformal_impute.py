"""TISSUE-style intervals for imputed genes: nominal coverage on data with known noise, intervals
that hold the prediction, identical intervals after save/load, clear errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from stfusion import _constants as K
from stfusion.baselines.knn_reference import KNNReferenceImputer
from stfusion.baselines.peers import TangramImputer, peer_available
from stfusion.data.synthetic import make_synthetic_pair
from stfusion.errors import StfusionError
from stfusion.metrics.core import interval_coverage
from stfusion.models.conformal_impute import (
    ImputationCalibration, _upper_rank, calibrate_imputer, calibration_from_predictions, conformal_impute,
    cross_validated_predictions, local_variability, neighbour_weights, spatial_neighbours,
)  # fmt: skip

LEVELS = (0.8, 0.9, 0.95)


# --------------------------------------------------------------------------- known noise, no imputer
def grid_fields(n_genes: int, seed: int, side: int = 24):
    """Cells on a grid; each gene a field that is smooth on the left half and rough on the right."""
    rng = np.random.default_rng(seed)
    xs, ys = np.meshgrid(np.arange(side, dtype=float), np.arange(side, dtype=float))
    coords = np.stack([xs.ravel(), ys.ravel()], 1)
    right = coords[:, 0] >= side / 2
    pred = np.empty((len(coords), n_genes))
    for g in range(n_genes):
        base = rng.uniform(2, 4) + np.sin(coords[:, 0] / rng.uniform(4, 8) + rng.uniform(0, 6))
        rough = rng.uniform(1, 3) * np.sin(coords[:, 0] * 2.1 + rng.uniform(0, 6)) * np.cos(coords[:, 1] * 1.7)
        pred[:, g] = base + np.where(right, rough, 0.0)
    return coords, pred, right


def noisy_truth(pred, coords, profiles, seed, scale=0.7):
    """Truth = prediction + Gaussian noise with SD proportional to the prediction's local variability
    (TISSUE's premise; the variability as the calibration defines it, so scores are iid normal)."""
    nb = spatial_neighbours(coords, 15)
    var = local_variability(pred, nb, neighbour_weights(profiles, nb), offset=1.0)
    return pred + np.random.default_rng(seed).normal(size=pred.shape) * scale * var


@pytest.fixture(scope="module")
def known_noise():
    coords, pred, right = grid_fields(80, seed=0)
    calib_cols, test_cols = np.arange(40), np.arange(40, 80)
    truth = noisy_truth(pred, coords, pred[:, calib_cols], seed=1)
    names = [f"c{i}" for i in range(len(coords))]
    genes = [f"g{j}" for j in calib_cols]
    kw = dict(coords=coords, seed=0)
    tissue = calibration_from_predictions(pred[:, calib_cols], truth[:, calib_cols], genes, names, **kw)
    plain = calibration_from_predictions(pred[:, calib_cols], truth[:, calib_cols], genes, names, offset=1e6,
                                         gene_groups=1, cell_groups=1, **kw)  # fmt: skip
    return tissue, plain, pred[:, test_cols], truth[:, test_cols], right


@pytest.mark.parametrize("level", LEVELS)
def test_coverage_is_nominal_with_known_noise(known_noise, level):
    tissue, _, pred, truth, _ = known_noise
    lo, hi = tissue.intervals(pred, level, nonnegative=False)  # Gaussian truth may be < 0
    _, overall = interval_coverage(truth, lo, hi)
    # 576 cells x 40 genes, iid noise: binomial SE ~0.002-0.003 (+ the calibration quantile's)
    assert abs(overall - level) < 0.015, (level, overall)


def test_scores_normalised_by_local_variability_adapt_where_plain_conformal_does_not(known_noise):
    tissue, plain, pred, truth, right = known_noise
    lo, hi = tissue.intervals(pred, 0.9, nonnegative=False)
    inside = (truth >= lo) & (truth <= hi)
    smooth_cov, rough_cov = inside[~right].mean(), inside[right].mean()
    assert abs(smooth_cov - 0.9) < 0.03 and abs(rough_cov - 0.9) < 0.03, (smooth_cov, rough_cov)
    plo, phi = plain.intervals(pred, 0.9, nonnegative=False)
    p_inside = (truth >= plo) & (truth <= phi)
    # one width everywhere: too wide where the field is smooth, too narrow where it is rough
    assert p_inside[~right].mean() > 0.97 and p_inside[right].mean() < 0.85
    assert (hi - lo)[~right].mean() < (phi - plo)[~right].mean()


def test_finite_sample_rank():
    v = np.arange(1.0, 10.0)  # n = 9
    assert _upper_rank(v, 0.8) == 8.0 and _upper_rank(v, 0.5) == 5.0  # ceil(10 * level)
    with pytest.warns(UserWarning, match="too few"):
        assert _upper_rank(v, 0.95) == 9.0


def test_neighbourhood_holds_the_cell_first_and_weights_are_exp_cosine():
    coords = np.array([[0.0, 0], [1, 0], [0, 1], [5, 5], [5, 5]])
    nb = spatial_neighbours(coords, 3)
    assert (nb[:, 0] == np.arange(5)).all() and nb.shape == (5, 3)
    prof = np.array([[1.0, 0], [1, 0], [0, 1], [1, 1], [2, 2]])
    w = neighbour_weights(prof, nb, n_pcs=2)
    assert np.allclose(w[:, 0], np.e)  # itself: cosine 1
    pred = np.array([[0.0], [3], [4], [1], [1]])
    var = local_variability(pred, nb[:, :2], np.ones((5, 2)), offset=0.5)
    # cell 0 and its nearest neighbour: sqrt(mean(0, 9)) + 0.5
    assert var[0, 0] == pytest.approx(np.sqrt(4.5) + 0.5)


# --------------------------------------------------------------------------- real imputers, synthetic counts
@pytest.fixture(scope="module")
def pair():
    ref, sp = make_synthetic_pair(n_ref_cells=300, n_spatial_cells=300, n_genes=60, n_types=4, seed=3)
    genes = list(sp.var_names)
    hidden = genes[::3]  # 20 genes
    visible = [g for g in genes if g not in hidden]
    return ref, sp, visible, hidden


@pytest.fixture(scope="module")
def knn_out(pair):
    ref, sp, visible, hidden = pair
    sp_vis = sp[:, visible].copy()
    out = conformal_impute(lambda: KNNReferenceImputer(k=20), ref, sp_vis, hidden, coverage=0.9, n_folds=4)
    totals = np.asarray(sp_vis.X.sum(axis=1), dtype=float).ravel()
    counts = np.asarray(sp[:, hidden].X.toarray(), dtype=float)
    return out, np.log1p(counts / totals[:, None] * 1e4)


def test_knn_hidden_gene_coverage_near_nominal_on_gamma_poisson_counts(knn_out):
    out, truth = knn_out
    per_gene, overall = interval_coverage(truth, out.layers[K.LAYER_LOWER], out.layers[K.LAYER_UPPER])
    # 20 hidden genes: the sampling error is between genes (SE of the gene mean ~0.02 here)
    assert abs(np.mean(per_gene) - 0.9) < 0.05, per_gene
    assert overall == pytest.approx(np.mean(per_gene))


def test_layers_hold_the_prediction_and_describe_themselves(knn_out):
    out, _ = knn_out
    lo, hi, x = out.layers[K.LAYER_LOWER], out.layers[K.LAYER_UPPER], np.asarray(out.X)
    assert lo.shape == hi.shape == x.shape and lo.dtype == np.float32
    assert (lo <= x).all() and (x <= hi).all() and (lo <= hi).all() and np.isfinite(lo).all() and np.isfinite(hi).all()
    assert (lo >= 0).all()  # non-negative expression: lower ends clipped at 0 (predictions are >= 0)
    assert (hi - lo).mean() > 0
    info = out.uns[K.STFUSION][K.COVERAGE]
    assert info["nominal"] == 0.9 and info["kind"] == "conformal_tissue" and info["n_folds"] == 4
    assert info["n_calibration_genes"] == 40
    assert out.uns[K.STFUSION]["method"] == "knn_reference"


def test_cross_validation_never_shows_a_gene_to_its_own_predictor(pair):
    ref, sp, visible, _ = pair
    seen = []
    totals = np.asarray(sp[:, visible].X.sum(axis=1)).ravel()

    class Spy(KNNReferenceImputer):
        def fit(self, reference, spatial, genes=None):
            seen.append((set(spatial.var_names), set(genes)))
            # the fold is hidden, the cell totals are not: the same as those of the data given
            np.testing.assert_allclose(np.asarray(spatial.X.sum(axis=1)).ravel(), totals)
            return super().fit(reference, spatial, genes)

        def impute(self, genes, coverage=None):
            assert not set(genes) & seen[-1][0] and not set(genes) & seen[-1][1]
            return super().impute(genes)

    pred, truth = cross_validated_predictions(lambda: Spy(k=20), ref, sp[:, visible].copy(), visible, n_folds=3)
    assert len(seen) == 3 and pred.shape == truth.shape == (sp.n_obs, len(visible))
    assert np.isfinite(pred).all()


@pytest.fixture(scope="module")
def knn_calibrated(pair):
    ref, sp, visible, _ = pair
    return KNNReferenceImputer(k=20).fit(ref, sp[:, visible].copy()).calibrate(ref, sp[:, visible].copy(), n_folds=3)


def test_wider_at_higher_coverage_and_asymmetric_option(pair, knn_calibrated):
    hidden, m = pair[3], knn_calibrated
    widths = [float(np.mean(o.layers[K.LAYER_UPPER] - o.layers[K.LAYER_LOWER]))
              for o in (m.impute(hidden, coverage=c) for c in LEVELS)]  # fmt: skip
    assert widths[0] < widths[1] < widths[2]
    pred = np.asarray(m.impute(hidden).X, dtype=float)
    lo, hi = m.calibration_.intervals(pred, 0.9, symmetric=False)
    assert (lo <= pred).all() and (pred <= hi).all()
    assert not np.allclose(pred - lo, hi - pred)


def test_knn_save_load_gives_identical_intervals(pair, knn_calibrated, tmp_path):
    ref, sp, visible, hidden = pair
    m = knn_calibrated
    before = m.impute(hidden, coverage=0.8)
    m.save(tmp_path)
    assert (tmp_path / "calibration.json").exists() and (tmp_path / "calibration.npz").exists()
    after = KNNReferenceImputer.load(tmp_path).impute(hidden, coverage=0.8)
    for key in (K.LAYER_LOWER, K.LAYER_UPPER):
        np.testing.assert_array_equal(before.layers[key], after.layers[key])
    assert before.uns[K.STFUSION][K.COVERAGE] == after.uns[K.STFUSION][K.COVERAGE]
    # a refit drops the calibration (it belongs to one fit); a model saved without one loads without one
    refit = KNNReferenceImputer.load(tmp_path).fit(ref, sp[:, visible].copy())
    assert refit.calibration_ is None
    KNNReferenceImputer(k=20).fit(ref, sp[:, visible].copy()).save(tmp_path / "plain")
    with pytest.raises(StfusionError, match="calibrate"):
        KNNReferenceImputer.load(tmp_path / "plain").impute(hidden, coverage=0.9)


def test_spaim_save_load_gives_identical_intervals(pair, tmp_path, one_torch_thread):
    from stfusion.models.spaim import SpaIM

    ref, sp, visible, hidden = pair
    sp_vis = sp[:, visible].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = SpaIM(epochs=2, batch_size=16, hidden=(32, 16)).fit(ref, sp_vis)
        m.calibrate(ref, sp_vis, n_folds=2)
    before = m.impute(hidden, coverage=0.9)
    after = SpaIM.load(m.save(tmp_path)).impute(hidden, coverage=0.9)
    np.testing.assert_array_equal(before.X, after.X)
    for key in (K.LAYER_LOWER, K.LAYER_UPPER):
        np.testing.assert_array_equal(before.layers[key], after.layers[key])
    assert (before.layers[K.LAYER_LOWER] <= before.X).all() and (before.X <= before.layers[K.LAYER_UPPER]).all()


@pytest.mark.skipif(not peer_available("tangram"), reason="tangram-sc not installed: pip install 'stfusion[peers]'")
def test_tangram_save_load_gives_identical_intervals(pair, tmp_path, one_torch_thread):
    ref, sp, visible, hidden = pair
    sp_vis = sp[:, visible].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = TangramImputer(epochs=20).fit(ref, sp_vis).calibrate(ref, sp_vis, n_folds=2)
        before = m.impute(hidden, coverage=0.95)
        after = TangramImputer.load(m.save(tmp_path)).impute(hidden, coverage=0.95)
    for key in (K.LAYER_LOWER, K.LAYER_UPPER):
        np.testing.assert_array_equal(before.layers[key], after.layers[key])


@pytest.mark.skipif(not peer_available("scvi"), reason="scvi-tools not installed: pip install 'stfusion[peers]'")
def test_gimvi_save_load_gives_identical_intervals(pair, tmp_path, one_torch_thread):
    from stfusion.baselines.peers import GimVIImputer

    ref, sp, visible, hidden = pair
    sp_vis = sp[:, visible].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = GimVIImputer(epochs=2, batch_size=64).fit(ref, sp_vis).calibrate(ref, sp_vis, n_folds=2)
        before = m.impute(hidden, coverage=0.9)
        after = GimVIImputer.load(m.save(tmp_path)).impute(hidden, coverage=0.9)
    for key in (K.LAYER_LOWER, K.LAYER_UPPER):
        np.testing.assert_array_equal(before.layers[key], after.layers[key])


def test_clear_errors(pair, known_noise):
    ref, sp, visible, hidden = pair
    m = KNNReferenceImputer(k=20).fit(ref, sp[:, visible].copy())
    with pytest.raises(StfusionError, match="calibrate"):
        m.impute(hidden, coverage=0.9)
    tissue = known_noise[0]
    with pytest.raises(ValueError, match="coverage"):
        tissue.multipliers(1.0)
    with pytest.raises(StfusionError, match="cells"):
        tissue.intervals(np.zeros((5, 2)), 0.9)
    with pytest.raises(StfusionError, match="n_folds"):
        calibrate_imputer(lambda: KNNReferenceImputer(k=20), ref, sp[:, visible].copy(), visible[:3], n_folds=5)
    no_coords = sp[:, visible].copy()
    del no_coords.obsm[K.SPATIAL]
    with pytest.raises(StfusionError, match="coordinates"):
        calibrate_imputer(lambda: KNNReferenceImputer(k=20), ref, no_coords, visible, n_folds=2)


def test_calibration_roundtrip_is_exact(known_noise, tmp_path):
    tissue, _, pred, _, _ = known_noise
    again = ImputationCalibration.load(tissue.save(tmp_path))
    for level in LEVELS:
        a, b = tissue.intervals(pred, level), again.intervals(pred, level)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
