"""Any registered encoder as the backbone of ST-Net and HisToGene, from Python and the command line
(`stfusion fit stnet ... -p encoder=uni -p encoder_weights=PATH`), and `stfusion features`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from stfusion.cli import main
from stfusion.models.histogene import HisToGene
from stfusion.models.stnet import STNet
from tests.conftest import need
from tests.models.test_encoder_ridge import REDUCED

pytestmark = pytest.mark.usefixtures("one_torch_thread")
UNI = json.dumps(REDUCED["uni"])


@pytest.fixture(scope="module")
def toy(shared_data, tmp_path_factory):
    from stfusion.io import read_xfuse_toy, write_h5ad

    section = read_xfuse_toy(need(shared_data, "xfuse_mob_toy"))[:60].copy()  # 60 spots keep 224 px inputs quick
    path = tmp_path_factory.mktemp("toy") / "toy.h5ad"
    write_h5ad(section, path)
    return section, path


@pytest.fixture(scope="module")
def uni_weights(tmp_path_factory):
    """A reduced UNI state dict (timm's key names) with non-default values, as a .safetensors file."""
    from safetensors.torch import save_file

    from stfusion.models import encoders as E

    torch.manual_seed(5)
    module = E.encoder_spec("uni").build(**REDUCED["uni"])
    state = {k: (v + 0.01 * torch.randn_like(v)).contiguous() for k, v in module.state_dict().items()}
    path = tmp_path_factory.mktemp("w") / "uni_reduced.safetensors"
    save_file(state, str(path))
    return path, state


def test_stnet_cli_takes_a_registered_encoder_and_its_weights(toy, uni_weights, tmp_path):
    import anndata as ad

    from stfusion.models.api import load_model

    _, section_path = toy
    path, state = uni_weights
    model_dir, pred_path = tmp_path / "m", tmp_path / "pred.h5ad"
    args = ["fit", "stnet", str(section_path), "--genes", "10", "--preset", "fast", "--out", str(model_dir),
            "-p", "encoder=uni", "-p", f"encoder_weights={path}", "-p", f"encoder_kwargs={UNI}",
            "-p", "out_px=28", "-p", "frozen=true", "-p", "tta=false"]  # fmt: skip
    assert main(args) == 0
    model = load_model(model_dir)
    backbone = model.net_.backbone.state_dict()
    assert all(torch.equal(backbone[k], state[k]) for k in state)  # the file's tensors, loaded strictly
    card = model.card()
    assert card["backbone"] == "uni" and card["weights_source"] == str(path) and card["patch_field_um"] == 112.0
    np.testing.assert_allclose(card["training"]["channel_mean"], [0.485, 0.456, 0.406])  # UNI's, not the patches'
    assert main(["predict", str(model_dir), str(section_path), "--out", str(pred_path)]) == 0
    pred = ad.read_h5ad(pred_path)
    assert pred.uns["stfusion"]["encoder"] == "uni" and "stain_shift" in pred.uns["stfusion"]
    assert np.isfinite(pred.X).all()
    # a file that does not fit the encoder is refused, naming the key
    bad = tmp_path / "bad.safetensors"
    from safetensors.torch import save_file

    save_file({k: v for k, v in state.items() if k != "cls_token"}, str(bad))
    args[args.index(f"encoder_weights={path}")] = f"encoder_weights={bad}"
    assert main(args) == 1


def test_stnet_backbone_and_encoder_conflict():
    with pytest.raises(Exception, match="either backbone"):
        STNet(preset="fast", backbone="resnet18", encoder="uni")
    model = STNet(preset="fast", encoder="resnet18")  # the CNN backbones are encoders too
    assert model.config["backbone"] == "resnet18" and model.config["patch_um"] == 150.0 and not model.foundation_encoder


def test_histogene_tokens_are_frozen_encoder_embeddings(toy, tmp_path):
    from stfusion.models.api import load_model, save_model

    section, _ = toy
    genes = list(section.var_names)
    tiny = {"dim": 32, "depth": 1, "heads": 2, "epochs": 3, "lr": 2e-3, "dropout": 0.0, "seed": 0}
    assert HisToGene("fast", encoder="phikon_v2").hyperparams["patch_px"] == 224  # the encoder's input size
    model = HisToGene("fast", **tiny, encoder="phikon_v2", encoder_kwargs=REDUCED["phikon_v2"], patch_px=32)
    model.fit([section], genes=genes)
    assert model.state_["patch_um"] == 112.0  # the encoder's field
    assert model.net_.patch_embed.in_features == 32  # reduced Phikon-v2's embedding, not 3 x px²
    assert not model.hyperparams["augment"] and not model.hyperparams["tta"]
    before = {k: v.clone() for k, v in model.encoder_.module.state_dict().items()}
    pred = model.predict(section)
    assert pred.shape == (section.n_obs, len(genes)) and np.isfinite(pred.X).all()
    assert all(torch.equal(before[k], v) for k, v in model.encoder_.module.state_dict().items())  # frozen
    loaded = load_model(save_model(model, tmp_path / "hg"))
    np.testing.assert_allclose(loaded.predict(section).X, pred.X, rtol=1e-5, atol=1e-5)


def test_features_cli_caches_embeddings_that_encoder_ridge_reuses(toy, uni_weights, tmp_path, monkeypatch):
    import anndata as ad

    from stfusion.models.encoder_ridge import FrozenEncoder

    _, section_path = toy
    path, _ = uni_weights
    out = tmp_path / "feat"
    assert main(["features", str(section_path), "--encoder", "uni", "--weights", str(path),
                 "--encoder-kwargs", UNI, "--out-dir", str(out)]) == 0  # fmt: skip
    adata = ad.read_h5ad(out / section_path.name)
    record = adata.uns["stfusion_features"]["X_uni"]
    assert adata.obsm["X_uni"].shape == (adata.n_obs, 32)
    assert record["encoder"] == "uni" and record["weights"] == str(path) and record["field_um"] == 112.0
    assert list(record["preprocessing"]["mean"]) == pytest.approx([0.485, 0.456, 0.406])

    def boom(*a, **k):
        raise AssertionError("embeddings were recomputed")

    monkeypatch.setattr(FrozenEncoder, "embed_section", boom)
    model_dir = tmp_path / "er"
    assert main(["--debug", "fit", "encoder_ridge", str(out / section_path.name), "--genes", "10", "--out", str(model_dir),
                 "-p", "encoder=uni", "-p", f"encoder_weights={path}", "-p", f"encoder_kwargs={UNI}",
                 "-p", "n_components=16"]) == 0  # fmt: skip
