"""ST-Net: training on real data, TTA invariance, save/load, foreign weights, slide tiling, IG."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from stfusion.baselines.interpolation import ConstantBaseline
from stfusion.benchmark.scoring import score_histology
from stfusion.data.normalize import normalize
from stfusion.models.stnet import EMBEDDING_KEY, EXPRESSION_SPACE, STNet
from stfusion.models.stnet.nn import STNetNet, predict_arrays
from stfusion.models.stnet.tiling import WHITE, tissue_tiles
from tests.conftest import need

SMALL = {"preset": "fast", "width": 8, "out_px": 32, "batch_size": 16, "epochs": 8, "lr": 0.01, "seed": 0}


@pytest.fixture(scope="module")
def toy_split(shared_data):
    from stfusion.io import read_xfuse_toy

    sec = read_xfuse_toy(need(shared_data, "xfuse_mob_toy"))
    sec = sec[np.asarray(sec.X.sum(axis=1)).ravel() >= 100].copy()
    # spatial split: left 60% of the spots train, the rest test (no neighbouring-spot leakage across it)
    x = sec.obsm["spatial"][:, 0]
    cut = np.quantile(x, 0.6)
    return sec[x <= cut].copy(), sec[x > cut].copy()


@pytest.fixture(scope="module")
def fitted(toy_split):
    train, _ = toy_split
    return STNet(**SMALL).fit([train], genes=list(train.var_names[:6]))


def _mean_pearson(pred, test, genes) -> float:
    table = score_histology(pred, test, genes)
    return float(table.loc[table.metric == "pearson", "value"].mean())


def test_training_beats_constant_on_held_out_spots(fitted, toy_split):
    train, test = toy_split
    genes = fitted.genes_
    pred = fitted.predict(test)
    const = ConstantBaseline().fit([train], genes=genes).predict(test)
    r_model, r_const = _mean_pearson(pred, test, genes), _mean_pearson(const, test, genes)
    assert r_const == 0.0
    assert r_model > r_const + 0.1
    assert pred.uns["stfusion"]["expression_space"] == "log1p_cp10k"  # the fast preset trains on the primary target
    assert pred.uns["stfusion"]["backbone_weights"] == "random init"
    assert pred.obsm[EMBEDDING_KEY].shape == (test.n_obs, 64)  # small_cnn width 8 -> 64 features
    assert len(fitted.info_["history"]) == SMALL["epochs"]


def test_head_starts_at_training_mean(toy_split):
    train, test = toy_split
    genes = list(train.var_names[:4])
    model = STNet(**{**SMALL, "epochs": 1, "lr": 0.0, "target": "stnet"}).fit([train], genes=genes)
    expected = normalize(train, "stnet", genes=genes).mean(axis=0)  # ST-Net's normalisation (paper)
    out = model.predict(test)
    assert out.uns["stfusion"]["expression_space"] == EXPRESSION_SPACE
    pred = out.X
    np.testing.assert_allclose(pred, np.broadcast_to(expected, pred.shape), rtol=0, atol=1e-5)


def test_tta_is_invariant_to_rotating_the_patch():
    torch.manual_seed(1)
    from stfusion.models.encoders import make_backbone

    backbone, nf = make_backbone("small_cnn", width=4)
    net = STNetNet(backbone, nf, 3)
    torch.nn.init.normal_(net.head.weight)
    patches = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    base, _ = predict_arrays(net, patches, tta=True)
    np.testing.assert_allclose(predict_arrays(net, patches, tta=True, batch_size=2, progress=True)[0], base, rtol=1e-5, atol=1e-6)
    for k in (1, 2, 3):
        rot, _ = predict_arrays(net, np.rot90(patches, k, axes=(1, 2)).copy(), tta=True)
        np.testing.assert_allclose(rot, base, rtol=1e-5, atol=1e-5)
    flipped, _ = predict_arrays(net, patches[:, :, ::-1].copy(), tta=True)
    np.testing.assert_allclose(flipped, base, rtol=1e-5, atol=1e-5)
    plain, _ = predict_arrays(net, np.rot90(patches, 1, axes=(1, 2)).copy(), tta=False)
    assert np.abs(plain - predict_arrays(net, patches, tta=False)[0]).max() > 1e-3  # the net itself is not invariant


def test_save_load_predict_is_exact(fitted, toy_split, tmp_path):
    _, test = toy_split
    fitted.save(tmp_path / "m")
    card = json.loads((tmp_path / "m" / "model.json").read_text())
    assert card["method"] == "stnet" and card["weights_source"] == "random init"
    assert card["patch_field_um"] == 150.0 and card["out_px"] == 32 and card["genes"] == fitted.genes_
    assert len(card["training"]["channel_mean"]) == 3
    loaded = STNet.load(tmp_path / "m")
    a, b = fitted.predict(test), loaded.predict(test)
    assert np.array_equal(a.X, b.X)
    assert np.array_equal(a.obsm[EMBEDDING_KEY], b.obsm[EMBEDDING_KEY])


def test_foreign_torchvision_densenet_state_dict_loads(tmp_path):
    from stfusion.models.encoders import densenet121

    torch.manual_seed(3)
    ref = densenet121(num_classes=1000)  # torchvision's layout, classifier included
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in ref.state_dict().items()}
    path = tmp_path / "densenet121.pth"
    torch.save(state, path)
    model = STNet(backbone="densenet121", weights=str(path))
    net = model.build_net(n_genes=3)
    key = "features.denseblock2.denselayer3.conv1.weight"
    assert torch.equal(net.backbone.state_dict()[key], state[key])
    assert model.weights_source == str(path)


def test_frozen_mode_fits_head_only(toy_split):
    train, test = toy_split
    genes = list(train.var_names[:6])
    model = STNet(**{**SMALL, "frozen": True}).fit([train], genes=genes)
    assert model.info_["head"] == "ridge"
    pred = model.predict(test)
    assert np.isfinite(pred.X).all() and pred.X.std(axis=0).min() > 0


def _blob_slide() -> np.ndarray:
    img = np.full((600, 600, 3), 255, np.uint8)
    yy, xx = np.mgrid[:600, :600]
    img[(yy - 300) ** 2 + (xx - 280) ** 2 < 170**2] = (200, 120, 170)  # H&E-pink disc
    return img


def test_tiling_keeps_only_tissue_tiles():
    img = _blob_slide()
    tiles = tissue_tiles(img, microns_per_pixel=1.0, field_um=100.0, out_px=20)
    assert tiles.n_total == 36
    tissue = img.mean(axis=-1) < WHITE
    expected = {(r, c) for r in range(6) for c in range(6) if tissue[r * 100 : (r + 1) * 100, c * 100 : (c + 1) * 100].mean() >= 0.5}
    assert {tuple(rc) for rc in tiles.grid_rc} == expected
    assert 4 < len(expected) < 36


def test_predict_image_on_synthetic_slide(fitted, tmp_path):
    from PIL import Image

    path = tmp_path / "slide.png"
    Image.fromarray(_blob_slide()).save(path)
    out = fitted.predict_image(path, microns_per_pixel=1.5)  # 150 µm field = 100 px tiles
    assert 4 < out.n_obs < 36 and out.uns["stfusion"]["n_tiles_total"] == 36
    centres = out.obsm["spatial"]
    assert np.all(np.hypot(centres[:, 0] - 280, centres[:, 1] - 300) < 170 + 71)  # every tile centre near the disc
    np.testing.assert_allclose(out.uns["pseudo_bulk"], out.X.mean(axis=0), rtol=1e-6)
    assert out.obsm[EMBEDDING_KEY].shape[0] == out.n_obs


def test_integrated_gradients_completeness(fitted, toy_split, tmp_path):
    from stfusion.models.stnet.attribution import attribution_maps, integrated_gradients

    _, test = toy_split
    net = fitted.net_
    patches = fitted.patches(test)[:2]
    attr, delta = integrated_gradients(net, patches, 1, steps=64)
    from stfusion.models.stnet.nn import to_tensor

    with torch.no_grad():
        net.eval()
        gap = net(to_tensor(patches))[:, 1] - net(torch.ones_like(to_tensor(patches)))[:, 1]
    np.testing.assert_allclose(attr.reshape(2, -1).sum(axis=1), gap.numpy(), atol=0.02 * np.abs(gap.numpy()).max() + 1e-4)
    assert np.abs(delta).max() < 0.02 * np.abs(gap.numpy()).max() + 1e-4
    paths = attribution_maps(fitted, test, fitted.genes_[1], list(test.obs_names[:2]), tmp_path, steps=8)
    assert len(paths) == 2 and all(p.stat().st_size > 1000 for p in paths)


def test_embedding_umap_figure(fitted, toy_split, monkeypatch):
    from matplotlib.figure import Figure

    from stfusion.pl import embedding

    _, test = toy_split
    pred = fitted.predict(test)
    pred.obs["half"] = np.where(np.arange(pred.n_obs) % 2 == 0, "a", "b")
    # the plot logic with a PCA stand-in for UMAP (numba's first compile alone takes a minute)
    monkeypatch.setattr(embedding, "umap_coords", lambda x, **kw: np.linalg.svd(x - x.mean(0), full_matrices=False)[0][:, :2])
    for color in (fitted.genes_[0], "half", None):
        assert isinstance(embedding.embedding_umap(pred, color=color), Figure)
    assert pred.obsm[EMBEDDING_KEY + "_umap"].shape == (pred.n_obs, 2)
    with pytest.raises(Exception, match="neither an obs column"):
        embedding.embedding_umap(pred, color="not_a_gene")


@pytest.mark.slow
def test_umap_coords_real():
    from stfusion.pl.embedding import umap_coords

    rng = np.random.default_rng(0)
    x = np.vstack([rng.normal(0, 1, (30, 8)), rng.normal(6, 1, (30, 8))])
    xy = umap_coords(x, n_neighbors=5)
    # the two clusters stay apart in 2-D
    a, b = xy[:30].mean(0), xy[30:].mean(0)
    assert np.linalg.norm(a - b) > 3 * max(xy[:30].std(0).max(), xy[30:].std(0).max())


def test_epoch_selection_refit_uses_holdout_then_all_sections(toy_split):
    train, _ = toy_split
    y = train.obsm["spatial"][:, 1]
    parts = [train[y <= np.median(y)].copy(), train[y > np.median(y)].copy()]
    model = STNet(**{**SMALL, "width": 4, "epochs": 3, "epoch_selection": "refit", "patience": 1}).fit(parts, genes=list(train.var_names[:3]))
    info = model.info_
    assert info["epoch_selection"] == "refit"
    assert all(h["val_loss"] is not None for h in info["selection_history"])  # holdout run validated each epoch
    assert 1 <= info["selected_epochs"] <= 3 and info["epochs_run"] == info["selected_epochs"]
