"""Frozen encoder + PCA + ridge (HEST's linear probe) and the embedding cache of `stfusion features`:
it learns colour-dependent expression, runs end to end with every registered encoder architecture
(reduced configurations, random weights), reuses stored embeddings only when they match, and flags
sections whose features lie outside the training sections'."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from stfusion.data.section import section_from_image
from stfusion.models.base import target_expression
from stfusion.models.encoder_ridge import EncoderRidge, FrozenEncoder, add_features, cached_features
from tests.conftest import need

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# reduced configurations of every registered encoder (same key layout; tests/models/test_encoders.py)
REDUCED_VIT = dict(img_size=28, patch_size=14, embed_dim=32, depth=2, num_heads=4)
REDUCED = {
    "uni": dict(REDUCED_VIT, patch_size=7),
    "h_optimus_0": REDUCED_VIT,
    "virchow2": REDUCED_VIT,
    "phikon_v2": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, patch_size=8, image_size=32),
    "resnet50_trunc": dict(layers=(1, 1, 1)),
}
INPUT_PX = {"uni": 28, "h_optimus_0": 28, "virchow2": 28, "phikon_v2": 32, "resnet50_trunc": 16}
GENES = ["up", "down", "flat", "other"]


def colour_section(tmp_path, seed: int, *, n: int = 8, recolour: bool = False, patient: str = "P"):
    """An n x n grid of spots, 120 µm apart (2 µm/px), each on a square of one colour between purple
    (t = 0) and pink (t = 1) with pixel noise; gene "up" is expressed in proportion to t, "down" to
    1 - t, "flat" and "other" not at all. ``recolour``: the same tissue with green and blue swapped
    and darker, as a very different stain or scanner would give."""
    rng = np.random.default_rng(seed)
    step = 60
    t = rng.uniform(0, 1, n * n)
    purple, pink = np.array([110, 60, 160]), np.array([235, 150, 190])
    img = np.full((n * step, n * step, 3), 255, np.uint8)
    coords = []
    for k, tk in enumerate(t):
        r, c = divmod(k, n)
        colour = (1 - tk) * purple + tk * pink
        block = colour + rng.normal(0, 12, (step, step, 3))
        img[r * step : (r + 1) * step, c * step : (c + 1) * step] = np.clip(block, 0, 255).astype(np.uint8)
        coords.append((c * step + step / 2, r * step + step / 2))
    if recolour:
        img = (img[..., [0, 2, 1]] * 0.7).astype(np.uint8)
    path = tmp_path / f"colour_{seed}_{int(recolour)}.png"
    Image.fromarray(img).save(path)
    lam = np.stack([5 + 60 * t, 5 + 60 * (1 - t), np.full_like(t, 30), np.full_like(t, 200)], axis=1)
    counts = rng.poisson(lam)
    return section_from_image(counts, np.asarray(coords), path, obs_names=[f"s{k}" for k in range(n * n)],
                              var_names=GENES, library_id=f"colour{seed}{'r' if recolour else ''}",
                              microns_per_pixel=2.0, meta={"patient": patient})  # fmt: skip


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def small(name: str = "uni", **kw) -> EncoderRidge:
    return EncoderRidge(name, encoder_kwargs=REDUCED[name], out_px=INPUT_PX[name], n_components=16, **kw)


@pytest.fixture(scope="module")
def colour(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("colour")
    return colour_section(tmp, 1), colour_section(tmp, 2), colour_section(tmp, 2, recolour=True)


def test_learns_colour_dependent_expression_better_than_a_constant(colour):
    from stfusion.models import get

    train, test, _ = colour
    pred = small().fit([train], genes=GENES).predict(test)
    truth = target_expression(test, GENES)
    model_r = [pearson(pred[:, g].X.ravel(), truth[:, i]) for i, g in enumerate(GENES[:2])]
    const = get("constant")().fit([train], genes=GENES).predict(test)
    const_mse = float(((const[:, GENES[:2]].X - truth[:, :2]) ** 2).mean())
    model_mse = float(((pred[:, GENES[:2]].X - truth[:, :2]) ** 2).mean())
    assert min(model_r) > 0.6, model_r  # random-init features still see the colour
    assert model_mse < 0.5 * const_mse, (model_mse, const_mse)
    meta = pred.uns["stfusion"]
    assert meta["method"] == "encoder_ridge" and meta["encoder"] == "uni" and meta["patch_field_um"] == 112.0
    assert pred.obsm["X_uni"].shape == (test.n_obs, 32)


def test_hest_alpha_and_pca_are_recorded(colour):
    train, _, _ = colour
    model = small().fit([train], genes=GENES)
    info = model.card()["training"]
    assert info["n_components"] == 16 and info["alpha"] == "hest"
    np.testing.assert_allclose(model.params_["alpha"], 100.0 / (16 * len(GENES)))
    assert model.params_["pca_components"].shape == (16, 32)
    assert 0 < info["explained_variance_ratio"] <= 1
    assert info["encoder"]["weights"].startswith("random init")
    with pytest.raises(Exception, match="alpha must be"):
        EncoderRidge(alpha="gcv")


def test_feature_shift_warns_on_a_recoloured_section_only(colour, caplog):
    train, test, recoloured = colour
    model = small().fit([train], genes=GENES)
    with caplog.at_level(logging.WARNING, logger="stfusion"):
        same = model.predict(train)
        held_out = model.predict(test)
    assert not [r for r in caplog.records if "far outside the training" in r.message]
    assert not same.uns["stfusion"]["feature_shift"]["flagged"] and not held_out.uns["stfusion"]["feature_shift"]["flagged"]
    with caplog.at_level(logging.WARNING, logger="stfusion"):
        shifted = model.predict(recoloured)
    record = shifted.uns["stfusion"]["feature_shift"]
    assert record["flagged"] and record["score"] > record["threshold"] >= 1.5
    assert any("far outside the training" in r.message and "stain_norm='macenko'" in r.message for r in caplog.records)


def test_cached_embeddings_are_reused_only_for_the_same_encoder(colour, monkeypatch):
    train, test, _ = colour
    train, test = train.copy(), test.copy()
    enc = FrozenEncoder("uni", None, REDUCED["uni"], input_px=28)
    key = add_features(train, enc)
    add_features(test, enc)
    assert key == "X_uni" and train.obsm[key].shape == (train.n_obs, 32)
    record = train.uns["stfusion_features"][key]
    assert record["encoder"] == "uni" and record["preprocessing"]["input_px"] == 28
    assert record["field_um"] == 112.0 and record["weights"] == "random init (seed 0)"
    direct = small().fit([train], genes=GENES).predict(test).X

    def boom(*a, **k):
        raise AssertionError("embeddings were recomputed")

    monkeypatch.setattr(FrozenEncoder, "embed_section", boom)
    np.testing.assert_allclose(small().fit([train], genes=GENES).predict(test).X, direct, rtol=1e-6, atol=1e-6)
    other = FrozenEncoder("uni", None, REDUCED["uni"], input_px=28, seed=1)
    assert cached_features(train, other) is None  # other weights (another seed): not reused
    with pytest.raises(AssertionError, match="recomputed"):
        small(seed=1).fit([train], genes=GENES)


@pytest.mark.parametrize("name", sorted(REDUCED))
def test_every_registered_architecture_end_to_end_on_the_toy_section(name, shared_data, tmp_path):
    from stfusion.io import read_xfuse_toy
    from stfusion.models.api import load_model, save_model

    section = read_xfuse_toy(need(shared_data, "xfuse_mob_toy"))
    section = section[:120].copy()
    genes = list(section.var_names)
    torch.manual_seed(0)
    model = small(name).fit([section], genes=genes)
    pred = model.predict(section)
    assert pred.shape == (section.n_obs, len(genes)) and np.isfinite(pred.X).all()
    assert pred.X.std(axis=0).max() > 0
    loaded = load_model(save_model(model, tmp_path / name))
    np.testing.assert_allclose(loaded.predict(section).X, pred.X, rtol=1e-5, atol=1e-5)
    assert loaded.card()["training"]["encoder"]["encoder"] == name


def test_changed_weights_are_refused_at_predict(colour, tmp_path):
    from safetensors.torch import save_file

    train, _, _ = colour
    enc = FrozenEncoder("uni", None, REDUCED["uni"])
    path = tmp_path / "uni.safetensors"
    save_file({k: v.contiguous() for k, v in enc.module.state_dict().items()}, str(path))
    model = small("uni", encoder_weights=str(path)).fit([train], genes=GENES)
    state = {k: v.clone() for k, v in enc.module.state_dict().items()}
    state["cls_token"] += 1.0
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    model.encoder_ = model._make_encoder()
    with pytest.raises(Exception, match="weights differ"):
        model.predict(train)
