"""XFuse's per-gene field: geometry, offsets, prior, a pattern the image does not show, persistence."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import torch
from scipy import sparse

from stfusion import _constants as K
from stfusion.data.synthetic import make_synthetic_section
from stfusion.models.xfuse import XFuse
from stfusion.models.xfuse.gene_field import NUGGET, GeneField, area_centres_um

TINY = {"resolution_um": 12.0, "patch_px": 64, "batch_size": 1, "depth": 3, "base_width": 4, "steps": 4,
        "metagene_interval": 0, "samples": 2, "progress": False}


def test_area_centres_in_microns() -> None:
    # a 4 x 6 working image at half the full resolution (fx = fy = 0.5), 2 µm per full-res pixel
    W = sparse.csr_matrix(np.array([[1, 1, 0, 0, 0, 0] + [0] * 18, [0] * 24]), dtype=np.float32)
    xy = area_centres_um(W, 6, 0.5, 0.5, 2.0)
    np.testing.assert_allclose(xy[0], [(1.0 + 3.0) / 2 * 2.0, 1.0 * 2.0])  # pixels (0, 0), (0, 1): x 1 and 3 full-res px
    assert np.isnan(xy[1]).all()  # an empty area


def _field(n_genes: int = 3) -> tuple[GeneField, np.ndarray]:
    xy = np.array([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0], [100.0, 100.0], [300.0, 50.0]])
    field = GeneField(["s"], [(10, 10)], [len(xy)], n_genes)
    field.set_prior(0, xy, np.full(n_genes, 80.0), np.linspace(0.5, 1.5, n_genes))
    return field, xy


def test_whitened_values_have_the_gp_prior_covariance() -> None:
    field, xy = _field(n_genes=5)
    field.set_prior(0, xy, np.full(5, 80.0), np.full(5, 0.7))
    with torch.no_grad():
        field.maps[0].copy_(torch.eye(5))  # z = I: columns of f are the basis, f f^T = sd^2 (k + nugget I)
    f = field.values(0).detach().double().numpy()
    d2 = ((xy[:, None] - xy[None]) ** 2).sum(-1)
    np.testing.assert_allclose(f @ f.T, 0.49 * (np.exp(-0.5 * d2 / 80.0**2) + NUGGET * np.eye(5)), atol=1e-5)
    assert float(field.log_prior().detach()) == pytest.approx(-2.5)


def test_training_offsets_and_kriging_agree_at_the_spots_and_vanish_far_away() -> None:
    field, xy = _field()
    with torch.no_grad():
        field.maps[0].copy_(torch.from_numpy(np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)))
    f = field.values(0).detach().numpy()
    patches = field.training_offsets(np.array([0, 0]), [np.array([4, 1]), np.array([3])])
    off, again = (o.detach().numpy() for o in patches)
    np.testing.assert_allclose(again, np.vstack([np.zeros(3), f[3]]), rtol=1e-6)  # a second patch of the section
    np.testing.assert_allclose(off[0], 0.0)  # the background row
    np.testing.assert_allclose(off[1:], f[[4, 1]], rtol=1e-6)
    krig = field.area_offsets(0, np.vstack([xy, [[5000.0, 5000.0], [np.nan, np.nan]]]), np.array([2, 0]))
    # at the spots: the smooth part of f (the nugget's independent share stays behind)
    assert np.corrcoef(krig[:5].ravel(), f[:, [2, 0]].ravel())[0, 1] > 0.99
    np.testing.assert_allclose(krig[5:], 0.0, atol=1e-12)  # far from every spot, and an empty area: the prior mean


def test_training_offsets_of_patches_sharing_spots_match_the_full_values_and_gradients() -> None:
    """Values computed at the batch's spots only: the same offsets and gradients as indexing
    the values at every spot of the section."""
    field, _ = _field()
    with torch.no_grad():
        field.maps[0].copy_(torch.from_numpy(np.random.default_rng(1).normal(size=(5, 3)).astype(np.float32)))
    obs = [np.array([4, 1]), np.array([1, 3, 1]), np.array([], dtype=int)]
    weights = [torch.arange(1.0, 1.0 + 3 * (len(o) + 1)).reshape(-1, 3) for o in obs]
    field.zero_grad()
    offsets = field.training_offsets(np.array([0, 0, 0]), obs)
    sum((w * o).sum() for w, o in zip(weights, offsets)).backward()
    grad_rows = field.maps[0].grad.clone()
    field.zero_grad()
    f = field.values(0)
    full = [torch.cat([f.new_zeros(1, 3), f[torch.from_numpy(o)]]) for o in obs]
    sum((w * o).sum() for w, o in zip(weights, full)).backward()
    for a, b in zip(offsets, full):
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad_rows.numpy(), field.maps[0].grad.numpy(), rtol=1e-5, atol=1e-5)


def test_saved_field_reloads_the_same_values_in_another_eigenbasis(monkeypatch) -> None:
    """The saved state carries the field's values: a machine whose LAPACK returns other
    eigenvector signs rebuilds the same field from them."""
    field, _ = _field()
    with torch.no_grad():
        field.maps[0].copy_(torch.from_numpy(np.random.default_rng(2).normal(size=(5, 3)).astype(np.float32)))
    f = field.values(0).detach().numpy()
    state = field.state_dict()
    eigh = np.linalg.eigh

    def flipped(a):
        lam, u = eigh(a)
        return lam, u * np.where(np.arange(u.shape[1]) % 2 == 0, -1.0, 1.0)

    monkeypatch.setattr(np.linalg, "eigh", flipped)
    other = GeneField.from_spec(field.spec())
    other.load_state_dict(state)
    assert not torch.allclose(other.maps[0], field.maps[0])  # other coordinates ...
    np.testing.assert_allclose(other.values(0).detach().numpy(), f, rtol=1e-5, atol=1e-5)  # ... same field
    assert set(other.state_dict()) == set(state)


def _with_position_gene(section: ad.AnnData, factor: float = 6.0) -> ad.AnnData:
    """The synthetic section plus gene ``right``: counts ``factor`` x higher right of the
    middle, a pattern its image does not show."""
    x = section.obsm[K.SPATIAL][:, 0]
    rng = np.random.default_rng(0)
    lam = np.where(x > np.median(x), 60.0 * factor, 60.0)
    counts = sparse.hstack([section.X, sparse.csr_matrix(rng.poisson(lam).astype(np.float32)[:, None])]).tocsr()
    out = ad.AnnData(counts, obs=section.obs.copy(), obsm={k: v for k, v in section.obsm.items()},
                     uns=section.uns.copy())
    out.var_names = [*section.var_names, "right"]
    return out


@pytest.fixture(scope="module")
def position_section(tmp_path_factory) -> ad.AnnData:
    return _with_position_gene(make_synthetic_section(tmp_path_factory.mktemp("syn"), seed=0))


def _right_score(model: XFuse, section: ad.AnnData) -> float:
    pred = model.predict(section).X[:, list(section.var_names).index("right")]
    true = np.log1p(section.X[:, -1].toarray().ravel() / np.asarray(section.X.sum(1)).ravel() * 1e4)
    return float(np.nan_to_num(np.corrcoef(pred, true)[0, 1]))  # a constant prediction scores 0


def test_gene_field_learns_a_pattern_the_image_does_not_show(position_section, tmp_path, one_torch_thread) -> None:
    params = {**TINY, "steps": 80, "metagene_interval": 20, "seed": 0}
    plain = XFuse(**params).fit([position_section])
    fused = XFuse(gene_field=True, **params).fit([position_section])
    r_plain, r_fused = _right_score(plain, position_section), _right_score(fused, position_section)
    assert r_fused > 0.8 and r_fused > r_plain + 0.3, (r_plain, r_fused)
    grid = fused.predict_grid(position_section, grid_um=12.0, genes=["right"])  # kriged field on grid cells
    gx, mid = grid.obsm[K.SPATIAL][:, 0], np.median(position_section.obsm[K.SPATIAL][:, 0])
    assert grid.X[gx > mid + 50, 0].mean() > grid.X[gx < mid - 50, 0].mean() + 0.4
    fused.save(tmp_path / "m")
    back = XFuse.load(tmp_path / "m")
    assert back.card()["gene_field"]["n_obs"] == [position_section.n_obs]
    np.testing.assert_array_equal(back.predict(position_section).X, fused.predict(position_section).X)
    # a section the model was not trained on gets no field: the same as the model without it
    other = position_section.copy()
    other.uns[K.STFUSION] = {**dict(other.uns[K.STFUSION]), K.SECTION_ID: "another"}
    back.expr_.gene_field = None
    np.testing.assert_array_equal(XFuse.load(tmp_path / "m").predict(other).X, back.predict(position_section).X)


def test_hidden_spots_get_the_pattern_of_their_measured_neighbours(position_section, one_torch_thread) -> None:
    x = position_section.obsm[K.SPATIAL][:, 0]
    hidden = np.isin(np.arange(position_section.n_obs), [1, 6, 9, 14])  # two left of the middle, two right
    assert set(x[hidden] > np.median(x)) == {True, False}
    model = XFuse(gene_field=True, **{**TINY, "steps": 80, "metagene_interval": 20, "seed": 0})
    model.fit([position_section[~hidden].copy()])
    pred = model.predict(position_section[hidden].copy())
    right = pred.X[:, -1]
    is_right = x[hidden] > np.median(x)
    # measured: 6x the counts right of the middle (log 6 = 1.8); spots next to the step get
    # values between the two sides, as a Gaussian process would
    assert right[is_right].mean() > right[~is_right].mean() + 0.4, right
