"""Gaussian-process baseline: marginal-likelihood fit, posterior mean, uncertainty."""

from __future__ import annotations

import numpy as np

from stfusion import _constants as K
from stfusion.baselines.gp import GaussianProcessBaseline, fit_variances, sq_exp_kernel
from stfusion.baselines.interpolation import ConstantBaseline, NearestNeighbourBaseline
from stfusion.models.base import target_expression
from tests.baselines.test_interpolation import holdout, make_section, mean_pearson, mse, smooth_section


def test_fit_variances_recovers_signal_and_noise():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 1000, size=(150, 2))
    kern = sq_exp_kernel(xy, xy, 200.0)
    cov = 2.0 * kern + 0.5 * np.eye(len(xy))
    z = np.linalg.cholesky(cov) @ rng.normal(size=(len(xy), 40))
    lam, u = np.linalg.eigh(kern)
    s, n, nlml = fit_variances(np.clip(lam, 0, None), (u.T @ z) ** 2)
    assert 1.4 < np.median(s) < 2.8 and 0.4 < np.median(n) < 0.62
    # the reported nlml is the exact negative log marginal likelihood of each gene
    g = 0
    c = s[g] * kern + n[g] * np.eye(len(xy))
    _, logdet = np.linalg.slogdet(c)
    exact = 0.5 * (z[:, g] @ np.linalg.solve(c, z[:, g]) + logdet + len(xy) * np.log(2 * np.pi))
    assert np.isclose(nlml[g], exact, rtol=1e-9)


def test_posterior_mean_and_sd_match_the_direct_formula(tmp_path):
    train, test = holdout(smooth_section(n_side=12), seed=1)
    model = GaussianProcessBaseline(n_lengthscales=8).fit([train], genes=["g0", "g4"])
    pred = model.predict(test)
    st = model.state_["S1"]
    xy, txy = train.obsm[K.SPATIAL] * 10.0, test.obsm[K.SPATIAL] * 10.0  # 10 µm per px
    y = target_expression(train, ["g0", "g4"]).astype(float)
    for g in range(2):
        ls, s, n = st["lengthscale"][g], st["signal"][g], st["noise"][g]
        c = s * sq_exp_kernel(xy, xy, ls) + n * np.eye(len(xy))
        ks = s * sq_exp_kernel(txy, xy, ls)
        mean = st["mean"][g] + ks @ np.linalg.solve(c, y[:, g] - st["mean"][g])
        var = s + n - np.einsum("ij,ji->i", ks, np.linalg.solve(c, ks.T))
        np.testing.assert_allclose(pred.X[:, g], mean, rtol=1e-4)
        np.testing.assert_allclose(pred.layers[K.LAYER_PRED_SD][:, g], np.sqrt(var), rtol=1e-3)
    again = GaussianProcessBaseline.load(model.save(tmp_path / "gp")).predict(test)
    np.testing.assert_array_equal(again.X, pred.X)
    np.testing.assert_array_equal(again.layers[K.LAYER_PRED_SD], pred.layers[K.LAYER_PRED_SD])


def test_gp_beats_constant_and_nearest_neighbour_on_a_noisy_smooth_field():
    sec = smooth_section(n_side=16, depth=3000, seed=4)
    train, test = holdout(sec, seed=2)
    truth = target_expression(test)
    model = GaussianProcessBaseline().fit([train])
    gp = model.predict(test).X
    const = ConstantBaseline().fit([train]).predict(test).X
    nn = NearestNeighbourBaseline().fit([train]).predict(test).X
    assert mean_pearson(gp, truth) > 0.85
    assert mse(gp, truth) < 0.3 * mse(const, truth)
    assert mse(gp, truth) < mse(nn, truth)
    # the field varies over ~1000 µm, so the chosen length scales are far above the 100 µm spacing
    assert np.all(model.state_["S1"]["lengthscale"] > 150.0)


def test_sd_grows_away_from_the_training_spots():
    train = smooth_section(n_side=8)
    probe = make_section(np.array([[45.0, 45.0], [90.0, 300.0]]), np.ones((2, 8), dtype=int))
    pred = GaussianProcessBaseline(n_lengthscales=6).fit([train]).predict(probe)
    sd = pred.layers[K.LAYER_PRED_SD]
    assert np.all(sd[1] > sd[0])
    # far from every training spot the posterior mean falls back to the training mean
    np.testing.assert_allclose(pred.X[1], target_expression(train).mean(axis=0), rtol=1e-4)


def test_space_counts_regresses_raw_counts():
    s = smooth_section(n_side=10, n_genes=4, seed=3)
    train, test = holdout(s, 0.3, seed=1)
    counts = GaussianProcessBaseline(n_lengthscales=6, space="counts").fit([train]).predict(test)
    target = GaussianProcessBaseline(n_lengthscales=6).fit([train]).predict(test)
    truth = test.X.toarray().astype(float)
    assert counts.uns[K.STFUSION]["expression_space"] == "counts"
    # predictions on the counts' scale (their mean near the measured mean), and correlated with the counts
    assert np.allclose(counts.X.mean(axis=0), truth.mean(axis=0), rtol=0.2)
    assert mean_pearson(counts.X, truth) > 0.5
    assert np.allclose(target.X.mean(axis=0), target_expression(test).mean(axis=0), rtol=0.2)  # default: the target
