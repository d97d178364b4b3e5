"""XFuse: super-resolution beats the per-spot average, persistence, bounded memory, images, pairs, CLI."""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import sparse
from torch.utils._pytree import tree_flatten

from stfusion import _constants as K
from stfusion.benchmark.pairs import merge_neighbour_pairs
from stfusion.data.synthetic import make_synthetic_section
from stfusion.errors import StfusionError
from stfusion.models.xfuse import XFuse, write_image_stack
from stfusion.models.xfuse.outputs import preview_genes
from stfusion.models.xfuse import data as D
from stfusion.models.xfuse.experiments import baseline_maps, pixel_aucs, posterior_grid

# A small network at 8 µm/px (48 x 48 working pixels): a ~25 s fit that still learns colours.
SMALL = {"resolution_um": 8.0, "patch_px": 96, "batch_size": 1, "depth": 4, "base_width": 8, "metagene_interval": 50,
         "samples": 6, "progress": False}
TINY = {"resolution_um": 12.0, "patch_px": 64, "batch_size": 1, "depth": 3, "base_width": 4, "steps": 2,
        "metagene_interval": 0, "samples": 3, "progress": False}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> ad.AnnData:
    return make_synthetic_section(tmp_path_factory.mktemp("syn"), seed=0)


@pytest.fixture(scope="module")
def fitted(synthetic) -> XFuse:
    return XFuse(steps=400, seed=0, **SMALL).fit([synthetic])


def test_super_resolution_beats_per_spot_average(fitted, synthetic) -> None:
    nu, _ = posterior_grid(fitted, synthetic, samples=4)
    labels = synthetic.uns["synthetic"]["label_map"]
    auc = pixel_aucs(nu.mean(axis=0), labels)
    base = pixel_aucs(baseline_maps(synthetic), labels)
    assert np.mean(list(auc.values())) > np.mean(list(base.values())) + 0.05, (auc, base)
    assert min(auc.values()) > 0.8, auc
    assert fitted.expr_.n_active >= 2  # drop-and-split grew the metagenes
    row = fitted.history_[-1]
    assert {"elbo", "expr_loglik", "image_loglik", "kl_z", "kl_global", "metagenes"} <= set(row)
    assert np.mean([r["elbo"] for r in fitted.history_[-20:]]) > np.mean([r["elbo"] for r in fitted.history_[:20]])


def test_predict_layers_and_target_space(fitted, synthetic) -> None:
    pred = fitted.predict(synthetic)
    assert list(pred.obs_names) == list(synthetic.obs_names)
    assert list(pred.var_names) == list(synthetic.var_names)
    for layer in ("sd", "mean_counts", "sd_counts"):
        assert pred.layers[layer].shape == pred.shape and np.isfinite(pred.layers[layer]).all()
    assert (pred.layers["sd"] >= 0).all() and (pred.X >= 0).all()
    # all genes are modelled (fraction 1): X is log1p of the posterior mean of each gene's share
    # of nu x 1e4, close to (not equal to: Jensen) the share of the posterior mean of nu
    share = pred.layers["mean_counts"] / pred.layers["mean_counts"].sum(axis=1, keepdims=True)
    assert np.abs(pred.X - np.log1p(share * 1e4)).max() < 0.5
    assert np.corrcoef(pred.X.ravel(), np.log1p(share * 1e4).ravel())[0, 1] > 0.99
    meta = pred.uns["stfusion"]
    assert meta["method"] == "xfuse" and meta["samples"] == 6 and meta["seed"] == 0
    # expected counts track the measured ones across the 16 areas
    r = np.corrcoef(pred.layers["mean_counts"].ravel(), synthetic.X.toarray().ravel())[0, 1]
    assert r > 0.8
    # ... and add up to them: prediction runs in frames of the training patch size. One short
    # fit's total is off by up to ~20% either way: seeds 0-5 of this fixture gave 1.21, 0.91,
    # 0.84, 1.06, 0.83, 0.98 x the measured total (2 AMD EPYC cores, torch 2.13 CPU, 2026-12-07),
    # so the bound is set outside that spread; a systematic bias shows across seeds, not here.
    ratio = pred.layers["mean_counts"].sum() / synthetic.X.sum()
    assert abs(ratio - 1) < 0.25, ratio


def test_save_load_predict_identical(fitted, synthetic, tmp_path) -> None:
    from stfusion.models.api import load_model, save_model

    save_model(fitted, tmp_path / "m")
    back = load_model(tmp_path / "m")
    assert isinstance(back, XFuse) and back.history_ and back.genes_ == fitted.genes_
    a, b = fitted.predict(synthetic), back.predict(synthetic)
    np.testing.assert_array_equal(a.X, b.X)
    np.testing.assert_array_equal(a.layers["mean_counts"], b.layers["mean_counts"])


def test_grid_masks_de_summary_and_image_stack(fitted, synthetic, tmp_path) -> None:
    grid = fitted.predict_grid(synthetic, grid_um=8, genes=["marker_0", "marker_1"], samples=3)
    assert grid.n_vars == 2 and grid.uns["stfusion"]["grid_um"] == 8 and grid.n_obs > 100
    labels = synthetic.uns["synthetic"]["label_map"]
    masks = {"sub0": labels == 0, "sub1": labels == 1}
    areas = fitted.predict_masks(synthetic, masks, samples=4)
    assert list(areas.obs_names) == ["sub0", "sub1"]
    de = fitted.differential_expression(synthetic, masks["sub0"], masks["sub1"], samples=8)
    assert de.loc["marker_0", "log2fc_mean"] > 0 > de.loc["marker_1", "log2fc_mean"]
    assert list(de.columns[:4]) == ["log2fc_mean", "log2fc_sd", "p_up", "credibility"]
    rgb = fitted.summarized_map(synthetic)
    assert rgb.dtype == np.uint8 and rgb.shape[2] == 3
    written = write_image_stack(grid, tmp_path / "g.ome.tif")
    import tifffile

    with tifffile.TiffFile(written["mean"]) as tif:
        assert tif.series[0].shape[0] == 2 and tif.is_ome
        assert "PhysicalSizeX=\"8.0\"" in tif.ome_metadata
    assert sorted(p.name for p in written["png"].iterdir()) == ["marker_0.png", "marker_1.png"]
    flat = ad.AnnData(np.column_stack([np.full(6, 50.0), np.arange(6.0), np.arange(6.0) + 100]),
                      var=pd.DataFrame(index=["high_flat", "varied", "high_varied"]))
    assert preview_genes(flat, 2) == ["varied", "high_varied"] and preview_genes(flat, 3) == list(flat.var_names)


def test_image_only_prediction_generalises(fitted, tmp_path) -> None:
    other = make_synthetic_section(tmp_path, seed=1)  # a new slide: only its image is used
    data = fitted.image_data(D.Path(other.uns["spatial"]["synthetic_1"]["metadata"]["source_image_path"]), 1.0)
    grid = fitted.predict_grid(data, grid_um=6.0, genes=["marker_0", "marker_1", "marker_2"], samples=3, tissue_only=False)
    labels = other.uns["synthetic"]["label_map"][3::6, 3::6]  # 6 µm cells: their centre pixels
    img = np.zeros((3, *labels.shape))
    r, c = grid.obs["grid_row"].to_numpy(), grid.obs["grid_col"].to_numpy()
    img[:, r, c] = grid.layers["mean_counts"].T
    assert min(pixel_aucs(img, labels).values()) > 0.7
    spots = fitted.predict_image(data_path(other), 1.0)  # the CLI's entry point: a grid of spot-sized cells
    assert spots.n_obs > 0 and np.isfinite(spots.X).all() and spots.uns["stfusion"]["grid_um"] == pytest.approx(96.0)


def data_path(section: ad.AnnData):
    lib = next(iter(section.uns["spatial"].values()))
    return lib["metadata"]["source_image_path"]


class _MaxNumel(torch.utils._python_dispatch.TorchDispatchMode):
    """Largest tensor (elements) any torch op produces inside the block."""

    def __init__(self) -> None:
        super().__init__()
        self.max = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.max = max(self.max, t.numel())
        return out


def _wide(section: ad.AnnData, n_genes: int) -> ad.AnnData:
    rng = np.random.default_rng(0)
    extra = rng.poisson(50.0, size=(section.n_obs, n_genes - section.n_vars))
    x = sparse.hstack([section.X, sparse.csr_matrix(extra)]).tocsr()
    wide = ad.AnnData(X=x, obs=section.obs.copy(), var=ad.AnnData(x).var.set_axis(
        list(section.var_names) + [f"g{i}" for i in range(extra.shape[1])]))
    wide.obsm[K.SPATIAL] = section.obsm[K.SPATIAL]
    wide.obsm[K.AREA_BBOX] = section.obsm[K.AREA_BBOX]
    wide.uns[K.SPATIAL], wide.uns[K.STFUSION] = section.uns[K.SPATIAL], section.uns[K.STFUSION]
    return wide


def test_memory_does_not_grow_with_genes_times_pixels(synthetic) -> None:
    """Collapsed likelihood: no tensor of pixels x genes in training or prediction."""
    import tracemalloc

    peaks, tensors = {}, {}
    for n_genes in (50, 2000):
        section = _wide(synthetic, n_genes)
        model = XFuse(steps=2, **{**SMALL, "patch_px": 96})
        with _MaxNumel() as mode:
            model.fit([section])
        fit_max = mode.max
        tracemalloc.start()
        with _MaxNumel() as mode:
            model.predict(section, samples=2)
        peaks[n_genes] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        tensors[n_genes] = (fit_max, mode.max)
    pixels = 96 * 96  # one training patch; the working image is 64 x 64
    extra_genes = 2000 - 50
    for phase in (0, 1):
        grew = tensors[2000][phase] - tensors[50][phase]
        assert grew < 0.05 * pixels * extra_genes, (phase, tensors)
    # numpy side of prediction: grows with areas x genes (outputs), far below pixels x genes
    assert peaks[2000] - peaks[50] < 0.1 * 64 * 64 * extra_genes * 4, peaks


def test_without_a_bar_training_logs_its_progress(synthetic, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="stfusion"):
        XFuse(**TINY).fit([synthetic])
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("XFuse step")]
    assert [line.split(" (")[0] for line in lines] == ["XFuse step 1/2", "XFuse step 2/2"]
    assert "ELBO/px" in lines[-1] and "metagenes 1" in lines[-1]


def test_round_spots_and_merged_pairs(tmp_path) -> None:
    section = make_synthetic_section(tmp_path, seed=2, size_px=192, grid=(6, 6), spot_shape="round", n_shapes=16)
    merged, table = merge_neighbour_pairs(section, seed=0)
    assert merged.obsm[K.AREA_CENTRES].shape == (merged.n_obs, 4)
    spec = D.area_spec(merged)
    assert spec.kind == "discs" and len(spec) == merged.n_obs
    one = D.area_pixels(spec, 0, 0.25, 0.25, (48, 48))
    single = D.area_pixels(D.area_spec(section), section.obs_names.get_loc(table.iloc[0]["member_a"]), 0.25, 0.25, (48, 48))
    assert len(one) > 1.5 * len(single)  # the union of two discs
    model = XFuse(**{**TINY, "resolution_um": 4.0}).fit([merged])  # spots of 16 µm: ~12 working pixels
    pair = model.predict_samples(merged, samples=3)
    members = model.predict_samples(section, samples=3)
    assert members.shape == (3, section.n_obs, section.n_vars)
    a = members[:, section.obs_names.get_indexer(table["member_a"])]
    b = members[:, section.obs_names.get_indexer(table["member_b"])]
    np.testing.assert_allclose(a + b, pair, rtol=1e-4, atol=1e-6)  # areas add up, same posterior samples
    counts = model.predict_samples(section, samples=2, kind="counts")
    assert counts.shape == (2, section.n_obs, section.n_vars) and (counts >= 0).all()


def test_holdout_areas_are_unobserved_not_background(synthetic) -> None:
    keep = np.arange(synthetic.n_obs) % 2 == 0
    train = synthetic[keep].copy()
    data = D.prepare_section(train, 4.0, np.zeros(0), list(train.var_names), training=True)
    assert data.labels.max() == train.n_obs
    held = D.area_weights(D.area_spec(synthetic[~keep]), data.fx, data.fy, data.shape)
    held_px = np.unique(held.indices)
    labels = data.labels.ravel()[held_px]
    tissue = data.tissue.ravel()[held_px]
    assert (labels[tissue] == D.UNOBSERVED).all()  # held-out tissue is unobserved
    assert (labels[~tissue] == D.BACKGROUND).all()  # only non-tissue is background


def test_covariates_and_cli(synthetic, tmp_path) -> None:
    from stfusion.cli import main
    from stfusion.io import write_h5ad

    path = tmp_path / "s.h5ad"
    write_h5ad(synthetic, path)
    model_dir, out = tmp_path / "model", tmp_path / "pred.h5ad"
    params = [arg for k, v in TINY.items() if k not in ("progress", "resolution_um") for arg in ("-p", f"{k}={v}")]
    assert main(["fit", "xfuse", str(path), str(path), "--out", str(model_dir), "--covariate", "batch=a,b",
                 "--resolution-um", str(TINY["resolution_um"]), *params]) == 0
    model = XFuse.load(model_dir)
    assert model.hyperparams["resolution_um"] == TINY["resolution_um"]
    assert model.state_["effects"] == [["batch", "a"], ["batch", "b"]] and model.expr_.E_mu.shape == (2, 3)
    assert main(["predict", str(model_dir), str(path), "--out", str(out), "--grid-um", "24", "--samples", "2",
                 "--genes", "marker_0,marker_2"]) == 0
    grid = ad.read_h5ad(out)
    assert list(grid.var_names) == ["marker_0", "marker_2"] and grid.uns["stfusion"]["grid_um"] == 24
    assert (tmp_path / "pred.ome.tif").is_file() and (tmp_path / "pred.sd.ome.tif").is_file()
    assert (tmp_path / "pred.summary.png").is_file() and len(list((tmp_path / "pred_png").glob("*.png"))) == 2
    labels = synthetic.uns["synthetic"]["label_map"]
    np.save(tmp_path / "a.npy", labels == 0)
    from PIL import Image

    Image.fromarray(((labels == 1) * 255).astype(np.uint8)).save(tmp_path / "b.png")
    assert main(["de", str(model_dir), str(path), "--area-a", str(tmp_path / "a.npy"), "--area-b",
                 str(tmp_path / "b.png"), "--out", str(tmp_path / "de.csv"), "--samples", "3"]) == 0

    de = pd.read_csv(tmp_path / "de.csv", index_col=0)
    assert set(de.index) == set(synthetic.var_names) and "credibility" in de
    assert main(["predict", str(model_dir), str(path), "--out", str(tmp_path / "m.h5ad"), "--mask", str(tmp_path / "a.npy")]) == 0
    slide = ["predict", str(model_dir), "--image", data_path(synthetic), "--microns-per-pixel", "1.0"]
    assert main([*slide, "--grid-um", "24", "--samples", "2", "--genes", "marker_1", "--out", str(tmp_path / "s.h5ad")]) == 0
    on_slide = ad.read_h5ad(tmp_path / "s.h5ad")  # H&E only: the options are honoured, stacks and summary written
    assert list(on_slide.var_names) == ["marker_1"] and on_slide.uns["stfusion"]["grid_um"] == 24
    assert (tmp_path / "s.ome.tif").is_file() and (tmp_path / "s.summary.png").is_file()
    assert main([*slide, "--mask", str(tmp_path / "a.npy"), "--out", str(tmp_path / "x.h5ad")]) != 0
    assert not (tmp_path / "x.h5ad").exists()
    assert ad.read_h5ad(tmp_path / "m.h5ad").n_obs == 1


def test_posterior_and_recalibrated_intervals(synthetic, tmp_path) -> None:
    """Issue 26 item 3: posterior intervals X ± z SD without calibration; with fit(calibration=...)
    the conformal recalibration scales the posterior SD (SD-normalised scores); saved and loaded
    identically."""
    plain = XFuse(**TINY).fit([synthetic])
    post = plain.predict(synthetic, coverage=0.9)
    sd = post.layers[K.LAYER_PRED_SD]
    assert post.uns["stfusion"][K.COVERAGE]["calibration"] is None
    np.testing.assert_allclose((post.layers[K.LAYER_UPPER] - post.X)[sd > 1e-4] / sd[sd > 1e-4], 1.6449, rtol=1e-3)
    model = XFuse(**TINY).fit([synthetic], calibration="spots", calibration_fraction=0.5)
    cal = model.calibration_
    assert cal.normalised and cal.kind == "spots" and model.card()["calibration"]["kind"] == "spots"
    assert model.training_data_["n_spots"] < synthetic.n_obs  # the calibration spots did not train it
    pred = model.predict(synthetic, coverage=0.5)
    lo, hi = pred.layers[K.LAYER_LOWER], pred.layers[K.LAYER_UPPER]
    assert (lo <= pred.X).all() and (pred.X <= hi).all()
    assert "SD-normalised" in pred.uns["stfusion"][K.COVERAGE]["interval"]
    model.save(tmp_path / "m")
    back = XFuse.load(tmp_path / "m").predict(synthetic, coverage=0.5)
    np.testing.assert_array_equal(back.layers[K.LAYER_LOWER], lo)
    np.testing.assert_array_equal(back.layers[K.LAYER_UPPER], hi)
    with pytest.raises(StfusionError, match="calibration='spots'"):
        XFuse(**TINY).fit([synthetic], covariates=[{"batch": "a"}], calibration="sections")
