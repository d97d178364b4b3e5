"""HisToGene: aggregation algebra, positions, and a short real-data training run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stfusion.models.histogene import superres as SR
from stfusion.models.histogene.positions import grid_mapper, section_positions, spot_grid, to_table
from tests.conftest import need

TINY = {"dim": 32, "depth": 2, "heads": 2, "patch_px": 16, "epochs": 40, "lr": 2e-3, "dropout": 0.0}


# ----------------------------------------------------------------------------- algebra (no data)
def _toy_spots() -> np.ndarray:
    xs, ys = np.meshgrid(np.arange(5) * 200.0 + 1000, np.arange(4) * 200.0 + 700)
    return np.column_stack([xs.ravel(), ys.ravel()])


@pytest.mark.parametrize("factor", [4, 9, 25])
def test_subpatch_mean_of_covering_patches(factor):
    spots = _toy_spots()
    grid = SR.dense_grid(spots, side_px=100.0, factor=factor)
    k = grid.k
    assert grid.stride_px == pytest.approx(100.0 / k)
    rng = np.random.default_rng(0)
    values = rng.normal(size=(len(grid.patch_ij), 3))
    ab, cells, cover = SR.average_subpatches(values, grid.patch_ij, k, grid.shape)
    # brute force: a patch covers a sub-patch when the sub-patch centre lies inside the patch square
    centres, pc = grid.cell_centres(ab), grid.patch_centres
    for c in rng.choice(len(ab), 25, replace=False):
        inside = np.all(np.abs(pc - centres[c]) < 50.0, axis=1)
        assert inside.sum() == cover[c] <= k * k
        np.testing.assert_allclose(cells[c], values[inside].mean(axis=0))
    assert (cover == k * k).sum() > len(spots) * k * k  # interior fully covered


@pytest.mark.parametrize("factor", [4, 9])
def test_spot_aggregation_sums_shares(factor):
    spots = _toy_spots() + np.array([13.3, -7.1])  # spots off the sub-patch lattice
    grid = SR.dense_grid(spots, side_px=100.0, factor=factor)
    k = grid.k
    members = SR.spot_members(grid, spots)
    assert members.shape == (len(spots), k * k, 2)
    for s, m in zip(spots, members, strict=True):  # exactly the k² sub-patch centres inside the spot square
        c = grid.cell_centres(m)
        assert np.all((c >= s - 50.0 - 1e-9) & (c < s + 50.0))
    ab, _, _ = SR.average_subpatches(np.zeros((len(grid.patch_ij), 1)), grid.patch_ij, k, grid.shape)
    rng = np.random.default_rng(1)
    log_vals = rng.uniform(0, 3, size=(len(ab), 2))
    agg, used = SR.aggregate_to_spots(ab, log_vals, members, grid.shape)
    assert (used == k * k).all()
    lookup = {tuple(x): i for i, x in enumerate(ab)}
    for i, m in enumerate(members):
        lin = np.expm1(log_vals[[lookup[tuple(x)] for x in m]])
        np.testing.assert_allclose(agg[i], np.log1p(lin.sum(axis=0) / (k * k)))
    # a constant field aggregates to itself
    flat, _ = SR.aggregate_to_spots(ab, np.full((len(ab), 1), 1.7), members, grid.shape)
    np.testing.assert_allclose(flat, 1.7)


def test_spot_equals_weighted_patches_for_k2():
    """k = 2: a spot's mean sub-patch value is the (1,2,1)x(1,2,1)/16 average of the 3x3 patches around it."""
    spots = np.array([[1000.0, 1000.0], [1400.0, 1200.0]])
    grid = SR.dense_grid(spots, side_px=100.0, factor=4, radius_px=1e6)
    vals = np.random.default_rng(2).normal(size=(len(grid.patch_ij), 1))
    ab, cells, _ = SR.average_subpatches(vals, grid.patch_ij, 2, grid.shape)
    cell = {tuple(x): v for x, v in zip(ab, cells[:, 0], strict=True)}
    patch = {tuple(x): v for x, v in zip(grid.patch_ij, vals[:, 0], strict=True)}
    i0 = np.rint((spots[0] - grid.origin) / grid.stride_px).astype(int)  # patch centred on the spot
    members = SR.spot_members(grid, spots[:1])[0]
    mean_cells = np.mean([cell[tuple(m)] for m in members])
    w = np.outer([1, 2, 1], [1, 2, 1]) / 16
    expected = sum(w[a + 1, b + 1] * patch[(i0[0] + a, i0[1] + b)] for a in (-1, 0, 1) for b in (-1, 0, 1))
    assert mean_cells == pytest.approx(expected)


def test_factor_must_be_square():
    with pytest.raises(ValueError, match="square"):
        SR.factor_to_k(8)


def test_to_table_clips_with_warning():
    with pytest.warns(UserWarning, match="clipped"):
        idx = to_table(np.array([[0.0, 70.0], [3.2, 2.6]]), np.zeros(2), 64)
    assert idx.tolist() == [[0, 63], [3, 3]]


# ----------------------------------------------------------------------------- real data
@pytest.fixture(scope="module")
def her2st(shared_data):
    from stfusion import io

    root = need(shared_data, "her2st")
    secs = {s: io.read_her2st(root, s) for s in ("C2", "C3", "C4")}
    genes = io_genes(secs)
    return secs, genes


def io_genes(secs):
    from stfusion.data.genes import top_mean_genes

    return top_mean_genes(list(secs.values()), 30)


@pytest.fixture(scope="module")
def fitted(her2st):
    from stfusion.models.histogene import HisToGene

    secs, genes = her2st
    return HisToGene("fast", **TINY, seed=0).fit([secs["C2"], secs["C3"]], genes=genes)


def test_positions_pixel_binning_matches_array(her2st):
    secs, _ = her2st
    s = secs["C4"]
    pos_arr, origin = section_positions(s, [200.0, 200.0], 64)
    assert pos_arr.min(axis=0).tolist() == [0, 0]
    pos_px, _ = section_positions(s, [200.0, 200.0], 64, use_array=False)
    assert np.mean(np.all(pos_px == pos_arr, axis=1)) > 0.9  # H&E-only positions ≈ the grid
    # super-resolution positions share the training scale: spot centres map back onto their grid cell
    mapped = to_table(grid_mapper(s, [200.0, 200.0])(s.obsm["spatial"]), origin, 64)
    assert np.array_equal(mapped, pos_arr)
    assert np.allclose(spot_grid(s, [200.0, 200.0]), s.obs[["array_col", "array_row"]].to_numpy())


def test_training_beats_constant_on_held_out_section(her2st, fitted):
    from stfusion.baselines.interpolation import ConstantBaseline
    from stfusion.benchmark.scoring import score_histology

    secs, genes = her2st
    test = secs["C4"]
    pred = fitted.predict(test)
    assert pred.shape == (test.n_obs, len(genes)) and list(pred.var_names) == genes
    scores = score_histology(pred, test, genes)
    r = scores[scores.metric == "pearson"].value.to_numpy()
    assert np.nanmean(r) > 0.15  # the constant baseline scores r = 0 on every gene
    assert np.mean(r > 0) > 0.8
    const = score_histology(ConstantBaseline().fit([secs["C2"], secs["C3"]], genes=genes).predict(test), test, genes)
    assert np.nanmean(r) > const[const.metric == "pearson"].value.mean() + 0.15
    assert fitted.history_[-1]["train_loss"] < fitted.history_[0]["train_loss"]


def test_save_load_predict_exact(her2st, fitted, tmp_path):
    from stfusion.models.api import load_model, save_model

    secs, _ = her2st
    save_model(fitted, tmp_path / "m")
    card = fitted.read_card(tmp_path / "m")
    for key in ("genes", "normalization", "patch_um", "patch_px", "dim", "depth", "heads", "grid_size",
                "pixel_mean", "training_sections", "seed", "version", "preset"):
        assert key in card
    loaded = load_model(tmp_path / "m")
    a, b = fitted.predict(secs["C4"]), loaded.predict(secs["C4"])
    assert np.array_equal(np.asarray(a.X), np.asarray(b.X))


def test_attention_rows_sum_to_one(her2st, fitted):
    from stfusion.pl.attention import attention_map

    s = her2st[0]["C4"]
    w = fitted.attention(s, 10, layers=[0, 1])
    assert w.shape == (2, TINY["heads"], s.n_obs)
    np.testing.assert_allclose(w.sum(axis=-1), 1.0, atol=1e-5)
    assert (w >= 0).all()
    fig = attention_map(s, w, 10, layers=[1, 2])
    assert len(fig.axes) >= 2


def test_padded_batch_equals_single_section(her2st, fitted):
    from stfusion.models.histogene.model import collate_sections

    secs, _ = her2st
    items = []
    for name in ("C4", "C2"):
        s = secs[name]
        x = fitted._patches(s, s.obsm["spatial"])[:, None]
        items.append((x, torch.from_numpy(fitted._positions(s)), torch.zeros(s.n_obs, 1)))
    patches, pos, mask, _ = collate_sections(items)
    assert mask.sum(dim=1).tolist() == [secs["C4"].n_obs, secs["C2"].n_obs]
    with torch.no_grad():
        batched = fitted.net_(patches[:, :, 0], pos, mask)
    for b, name in enumerate(("C4", "C2")):
        n = secs[name].n_obs
        alone = fitted._run(items[b][0][:, 0], items[b][1].numpy())
        np.testing.assert_allclose(batched[b, :n].numpy(), alone, atol=1e-4)


def test_super_resolution_and_histogene_star(her2st, fitted):
    from stfusion.models.histogene.superres import plot_superres

    s = her2st[0]["C4"]
    sr = fitted.predict_super_resolution(s, factor=4)
    info = sr.uns["stfusion"]["superres"]
    assert info["factor"] == 4 and info["subpatch_um"] == pytest.approx(50.0, rel=0.02)
    assert sr.n_obs > 4 * s.n_obs and sr.obsm["spatial"].shape == (sr.n_obs, 2)
    assert set(sr.obs["n_covering"].unique()) <= {1, 2, 3, 4} and (sr.obs["n_covering"] == 4).mean() > 0.5
    star = fitted.aggregate_superres(s, factor=4)
    assert star.shape == (s.n_obs, len(fitted.genes_))
    spot = np.asarray(fitted.predict(s).X)
    r = [np.corrcoef(star[:, g], spot[:, g])[0, 1] for g in range(star.shape[1])]
    assert np.nanmean(r) > 0.5  # HisToGene* and HisToGene agree on the spots
    fig = plot_superres(sr, fitted.genes_[0])
    assert fig.axes


def test_cli_predict_super_resolution(her2st, fitted, tmp_path):
    import anndata as ad

    from stfusion.cli import main
    from stfusion.io import write_h5ad
    from stfusion.models.api import save_model

    save_model(fitted, tmp_path / "m")
    write_h5ad(her2st[0]["C4"], tmp_path / "c4.h5ad")
    args = ["predict", str(tmp_path / "m"), str(tmp_path / "c4.h5ad"), "--super-resolution", "9"]
    assert main([*args, "--out", str(tmp_path / "sr.h5ad")]) in (0, None)
    sr = ad.read_h5ad(tmp_path / "sr.h5ad")
    assert sr.uns["stfusion"]["superres"]["factor"] == 9 and sr.n_vars == len(fitted.genes_)


def test_stain_augment_adds_jittered_copies_as_token_variants():
    """stain_augment: each training patch gets STAIN_COPIES HED-jittered copies; variant 0 stays the
    patch itself (used outside training); seeded; 0 leaves the tokens as they were."""
    from stfusion.models.histogene import HisToGene
    from stfusion.models.histogene.tokens import STAIN_COPIES, stain_views, token_variants

    rng = np.random.default_rng(0)
    patches = rng.integers(60, 220, size=(5, 4, 4, 3), dtype=np.uint8)
    views = stain_views([patches], 0.3, seed=1)[0]
    assert len(views) == 1 + STAIN_COPIES and views[0] is patches
    assert all(np.abs(v.astype(int) - patches.astype(int)).mean() > 1 for v in views[1:])  # the stains moved
    np.testing.assert_array_equal(stain_views([patches], 0.3, seed=1)[0][2], views[2])  # seeded
    assert len(stain_views([patches], 0.0, seed=1)[0]) == 1
    flat = token_variants([v.astype(np.float32) for v in views], dihedral=False)
    assert flat.shape == (5, 1 + STAIN_COPIES, 48)
    np.testing.assert_array_equal(flat[:, 0], patches.reshape(5, -1).astype(np.float32))
    assert token_variants([v.astype(np.float32) for v in views], dihedral=True).shape == (5, 8 * (1 + STAIN_COPIES), 48)
    assert HisToGene("fast", stain_augment=0.2).hyperparams["stain_augment"] == 0.2
    assert "stain_augment" not in HisToGene("fast").hyperparams  # cards without it stay as they were
    with pytest.raises(ValueError, match="stain_augment"):
        HisToGene("fast", stain_augment=1.5)
