"""Pathology foundation encoders: layouts (full size, on the meta device), strict loading,
pooling, preprocessing and Hub errors. Reduced configurations keep every test to seconds."""

from __future__ import annotations

import json
import logging
import re
from collections import OrderedDict

import numpy as np
import pytest
import torch

from stfusion.errors import StfusionError
from stfusion.models import encoders as E
from stfusion.models.encoders import hub as H

# reduced configurations: the same key layout, tiny width/depth
REDUCED_VIT = dict(img_size=28, patch_size=14, embed_dim=32, depth=2, num_heads=4)
REDUCED = {
    "uni": dict(REDUCED_VIT, patch_size=7),
    "h_optimus_0": REDUCED_VIT,
    "virchow2": REDUCED_VIT,
    "phikon_v2": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, patch_size=8, image_size=32),
    "resnet50_trunc": dict(layers=(1, 1, 1)),  # one bottleneck per stage, same names
}
INPUT_PX = {"uni": 28, "h_optimus_0": 28, "virchow2": 28, "phikon_v2": 32, "resnet50_trunc": 32}
NAMES = sorted(REDUCED)


def randomise(model: torch.nn.Module, seed: int = 0) -> OrderedDict:
    """Random weights of a useful scale (LayerScale gammas included), positive BN variances."""
    g = torch.Generator().manual_seed(seed)
    state = OrderedDict()
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            state[key] = torch.rand(value.shape, generator=g) + 0.5
        else:
            state[key] = torch.randn(value.shape, generator=g) * 0.2
    return state


def reduced(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return E.encoder_spec(name).build(**REDUCED[name]).eval()


def x_for(name: str, n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, INPUT_PX[name], INPUT_PX[name], generator=torch.Generator().manual_seed(1))


# ---- (a) save -> load strictly -> same function ----


@pytest.mark.parametrize("name", NAMES)
def test_safetensors_round_trip_is_strict_and_exact(name: str, tmp_path) -> None:
    from safetensors.torch import save_file

    source = reduced(name)
    state = randomise(source)
    source.load_state_dict(state)
    path = tmp_path / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    model, prep = E.make_encoder(name, weights=path, **REDUCED[name])
    assert not model.training and isinstance(prep, E.Preprocessing)
    got = model.state_dict()
    assert list(got) == list(state)
    assert all(torch.equal(got[k], state[k]) for k in state)
    x = x_for(name)
    with torch.no_grad():
        out, ref = model(x), source(x)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    assert out.shape == (2, model.n_features) and torch.isfinite(out).all() and out.std() > 0
    # a torch .pth of the same tensors (weights_only) gives the same model
    pth = tmp_path / f"{name}.pth"
    torch.save(state, pth)
    again, _ = E.make_encoder(name, weights=pth, **REDUCED[name])
    with torch.no_grad():
        torch.testing.assert_close(again(x), ref, rtol=0, atol=0)


# ---- (b) missing / unexpected keys ----


@pytest.mark.parametrize(
    ("name", "drop"),
    [
        ("uni", "blocks.1.ls2.gamma"),
        ("h_optimus_0", "reg_token"),
        ("virchow2", "blocks.0.mlp.fc1.weight"),
        ("phikon_v2", "encoder.layer.1.layer_scale1.lambda1"),
        ("resnet50_trunc", "layer3.0.bn3.running_mean"),
    ],
)
def test_missing_and_unexpected_keys_are_named(name: str, drop: str) -> None:
    state = randomise(reduced(name))
    missing = OrderedDict(state)
    del missing[drop]
    with pytest.raises(E.WeightsError, match="1 missing keys.*" + re.escape(drop)):
        E.make_encoder(name, weights=missing, **REDUCED[name])
    extra = OrderedDict(state)
    extra["blocks.99.attn.qkv.weight"] = torch.zeros(1)
    with pytest.raises(E.WeightsError, match=r"1 unexpected keys.*blocks\.99\.attn\.qkv\.weight"):
        E.make_encoder(name, weights=extra, **REDUCED[name])


def test_shape_mismatch_names_the_key() -> None:
    state = randomise(reduced("virchow2"))
    state["pos_embed"] = torch.zeros(1, 4, 32)  # a grid without the prefix rows
    with pytest.raises(E.WeightsError, match=r"pos_embed: file \(1, 4, 32\) vs model \(1, 9, 32\).*timm's"):
        E.make_encoder("virchow2", weights=state, **REDUCED["virchow2"])


def test_known_checkpoint_prefixes_are_mapped_and_reported(caplog: pytest.LogCaptureFixture) -> None:
    vit = reduced("uni")
    state = randomise(vit)
    report = E.load_weights(vit, {f"model.{k}": v for k, v in state.items()})
    assert report.stripped_prefix == "model."
    assert torch.equal(vit.blocks[1].ls1.gamma, state["blocks.1.ls1.gamma"])
    # a Hugging Face Dinov2ForImageClassification checkpoint: "dinov2." keys and a classifier
    dino = reduced("phikon_v2")
    dstate = randomise(dino, seed=3)
    wrapped = {f"dinov2.{k}": v for k, v in dstate.items()}
    wrapped |= {"classifier.weight": torch.zeros(5, 64), "classifier.bias": torch.zeros(5)}
    with caplog.at_level(logging.INFO, logger="stfusion"):
        report = E.load_weights(dino, wrapped, name="phikon_v2")
    assert report.stripped_prefix == "dinov2."
    assert report.ignored_head == ["classifier.bias", "classifier.weight"]
    assert "stripped the checkpoint prefix 'dinov2.'" in caplog.text
    assert torch.equal(dino.layernorm.weight, dstate["layernorm.weight"])
    # an unknown prefix is not guessed
    with pytest.raises(E.WeightsError, match="missing keys"):
        E.load_weights(reduced("uni"), {f"encoder.{k}": v for k, v in state.items()})


def test_full_resnet50_state_dict_loads_into_the_truncated_model(caplog: pytest.LogCaptureFixture) -> None:
    from stfusion.models.encoders.resnet import Bottleneck

    torch.manual_seed(4)
    full = E.ResNet(Bottleneck, (1, 1, 1, 2), num_classes=1000).eval()  # a reduced full ResNet-50 layout
    state = randomise(full, seed=4)
    full.load_state_dict(state)
    with caplog.at_level(logging.INFO, logger="stfusion"):
        trunc, prep = E.make_encoder("resnet50_trunc", weights=state, layers=(1, 1, 1))
    report = E.load_weights(E.resnet50_trunc(layers=(1, 1, 1)), state)
    n_layer4 = sum(k.startswith("layer4.") for k in state)
    # 2 bottlenecks of 3 convs + 3 BNs (5 tensors each), and the downsample conv + BN
    assert n_layer4 == 2 * (3 + 3 * 5) + 1 + 5 == 42 and len(report.dropped_unused) == n_layer4
    assert all(k.startswith("layer4.") for k in report.dropped_unused)
    assert report.ignored_head == ["fc.bias", "fc.weight"] and report.missing == report.unexpected == []
    assert "dropped 42 keys this encoder does not use (layer4.*)" in caplog.text
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        f = full.maxpool(full.relu(full.bn1(full.conv1(x))))
        ref = full.layer3(full.layer2(full.layer1(f))).mean(dim=(2, 3))
        torch.testing.assert_close(trunc(x), ref)
    assert trunc(x).shape == (2, 1024) and prep.input_px == 224
    with torch.device("meta"):  # the full-size model drops the 60 layer4 keys of torchvision's ResNet-50
        full_keys = E.resnet50(num_classes=1000).state_dict()
        assert len(E.load_weights(E.resnet50_trunc(), full_keys).dropped_unused) == 3 * (3 + 3 * 5) + 1 + 5 == 60


# ---- (c) output shape and pooling ----


def test_pooling_cls_and_cls_plus_mean() -> None:
    v2 = reduced("virchow2")
    v2.load_state_dict(randomise(v2))
    x = x_for("virchow2")
    with torch.no_grad():
        tokens, out = v2.forward_tokens(x), v2(x)
    assert tokens.shape == (2, 1 + 4 + 4, 32)  # class, 4 registers, 2 x 2 patches
    assert out.shape == (2, 64) == (2, 2 * v2.embed_dim)
    torch.testing.assert_close(out[:, :32], tokens[:, 0])
    torch.testing.assert_close(out[:, 32:], tokens[:, 5:].mean(dim=1))  # registers excluded
    ho = reduced("h_optimus_0")
    with torch.no_grad():
        torch.testing.assert_close(ho(x), ho.forward_tokens(x)[:, 0])
    assert ho.pos_embed.shape == (1, 4, 32)  # no_embed_class: patches only
    assert v2.pos_embed.shape == (1, 9, 32)  # class + registers + patches
    dino = reduced("phikon_v2")
    xd = x_for("phikon_v2")
    with torch.no_grad():
        torch.testing.assert_close(dino(xd), dino.forward_tokens(xd)[:, 0])


@pytest.mark.parametrize(("name", "dim"), [("resnet50_trunc", 1024), ("uni", 1024), ("h_optimus_0", 1536),
                                           ("virchow2", 2560), ("phikon_v2", 1024)])
def test_full_size_output_dims(name: str, dim: int) -> None:
    spec = E.encoder_spec(name)
    assert spec.output_dim == dim == E.feature_dim(name)
    with torch.device("meta"):
        out = spec.build()(torch.empty(2, 3, 224, 224))
    assert out.shape == (2, dim)


def test_mlp_variants_compute_the_timm_functions() -> None:
    from stfusion.models.encoders.vit import GeluMlp, SwiGLU, SwiGLUPacked

    torch.manual_seed(0)
    x = torch.randn(3, 5, 8)
    packed = SwiGLUPacked(8, 12)
    assert packed.fc1.weight.shape == (12, 8) and packed.fc2.weight.shape == (8, 6)
    h = packed.fc1(x)
    torch.testing.assert_close(packed(x), packed.fc2(torch.nn.functional.silu(h[..., :6]) * h[..., 6:]))
    split = SwiGLU(8, 6)
    assert sorted(k.split(".")[0] for k in split.state_dict()) == ["fc1_g", "fc1_g", "fc1_x", "fc1_x", "fc2", "fc2"]
    ref = split.fc2(torch.nn.functional.silu(split.fc1_g(x)) * split.fc1_x(x))
    torch.testing.assert_close(split(x), ref)
    gelu = GeluMlp(8, 16)
    torch.testing.assert_close(gelu(x), gelu.fc2(torch.nn.functional.gelu(gelu.fc1(x))))
    vit = E.VisionTransformer(**REDUCED_VIT, mlp="swiglu", reg_tokens=2)
    assert "blocks.1.mlp.fc1_g.weight" in vit.state_dict() and vit.reg_token.shape == (1, 2, 32)
    assert "blocks.0.ls1.gamma" not in vit.state_dict()  # no LayerScale without init_values


def test_other_input_sizes_resample_position_embeddings() -> None:
    vit = reduced("virchow2")
    with torch.no_grad():
        out = vit(torch.randn(1, 3, 42, 56))  # 3 x 4 patches from a 2 x 2 grid
    assert out.shape == (1, 64) and torch.isfinite(out).all()
    dino = reduced("phikon_v2")
    with torch.no_grad():
        assert dino(torch.randn(1, 3, 48, 40)).shape == (1, 32)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        vit(torch.randn(1, 3, 30, 28))


# ---- (d) full-size layouts, written from the reference sources ----


def _vit_block(d: int, fc1: int, fc2_in: int, layerscale: bool = True) -> dict[str, tuple[int, ...]]:
    out = {
        "norm1.weight": (d,), "norm1.bias": (d,),
        "attn.qkv.weight": (3 * d, d), "attn.qkv.bias": (3 * d,),
        "attn.proj.weight": (d, d), "attn.proj.bias": (d,),
        "ls1.gamma": (d,),
        "norm2.weight": (d,), "norm2.bias": (d,),
        "mlp.fc1.weight": (fc1, d), "mlp.fc1.bias": (fc1,),
        "mlp.fc2.weight": (d, fc2_in), "mlp.fc2.bias": (d,),
        "ls2.gamma": (d,),
    }
    return out if layerscale else {k: v for k, v in out.items() if not k.startswith("ls")}


def _dinov2_layer(d: int, hidden: int) -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {"norm1.weight": (d,), "norm1.bias": (d,)}
    for proj in ("query", "key", "value"):
        out[f"attention.attention.{proj}.weight"], out[f"attention.attention.{proj}.bias"] = (d, d), (d,)
    out |= {
        "attention.output.dense.weight": (d, d), "attention.output.dense.bias": (d,),
        "layer_scale1.lambda1": (d,),
        "norm2.weight": (d,), "norm2.bias": (d,),
        "mlp.fc1.weight": (hidden, d), "mlp.fc1.bias": (hidden,),
        "mlp.fc2.weight": (d, hidden), "mlp.fc2.bias": (d,),
        "layer_scale2.lambda1": (d,),
    }
    return out


# name: (top-level keys and shapes, per-block keys and shapes, depth, block prefix, params (M) as
# published, tolerance (M)). Sources: timm vision_transformer.py / layers (key names, the
# SwiGLUPacked widths: int(D * mlp_ratio) into fc1, half of it out of the gate), HF
# modeling_dinov2.py; params: timm model card "Params (M): 303.3" for ViT-L/16 without head (+49k
# LayerScale), H-optimus-0 "1.13B", Virchow2 paper "632 million", Phikon-v2 model.safetensors
# 1.21 GB of float32 (about 303 M).
LAYOUTS = {
    "uni": (
        {"cls_token": (1, 1, 1024), "pos_embed": (1, 197, 1024), "patch_embed.proj.weight": (1024, 3, 16, 16),
         "patch_embed.proj.bias": (1024,), "norm.weight": (1024,), "norm.bias": (1024,)},
        _vit_block(1024, 4096, 4096), 24, "blocks", 303.35, 0.1,
    ),
    "h_optimus_0": (
        {"cls_token": (1, 1, 1536), "reg_token": (1, 4, 1536), "pos_embed": (1, 256, 1536),
         "patch_embed.proj.weight": (1536, 3, 14, 14), "patch_embed.proj.bias": (1536,),
         "norm.weight": (1536,), "norm.bias": (1536,)},
        _vit_block(1536, 8192, 4096), 40, "blocks", 1130.0, 10.0,
    ),
    "virchow2": (
        {"cls_token": (1, 1, 1280), "reg_token": (1, 4, 1280), "pos_embed": (1, 261, 1280),
         "patch_embed.proj.weight": (1280, 3, 14, 14), "patch_embed.proj.bias": (1280,),
         "norm.weight": (1280,), "norm.bias": (1280,)},
        _vit_block(1280, 6832, 3416), 32, "blocks", 632.0, 1.5,
    ),
    "phikon_v2": (
        {"embeddings.cls_token": (1, 1, 1024), "embeddings.mask_token": (1, 1024),
         "embeddings.position_embeddings": (1, 197, 1024),
         "embeddings.patch_embeddings.projection.weight": (1024, 3, 16, 16),
         "embeddings.patch_embeddings.projection.bias": (1024,),
         "layernorm.weight": (1024,), "layernorm.bias": (1024,)},
        _dinov2_layer(1024, 4096), 24, "encoder.layer", 303.0, 1.0,
    ),
}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_full_size_keys_and_shapes_match_the_reference(name: str) -> None:
    top, block, depth, prefix, params_m, tol = LAYOUTS[name]
    with torch.device("meta"):
        model = E.encoder_spec(name).build()
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = dict(top)
    for i in range(depth):
        expected |= {f"{prefix}.{i}.{k}": v for k, v in block.items()}
    assert sorted(got) == sorted(expected)
    assert got == expected
    # first and last block spelled out (the layout is the same for every block)
    assert got[f"{prefix}.0.{next(iter(block))}"] == next(iter(block.values()))
    assert f"{prefix}.{depth - 1}.{list(block)[-1]}" in got and f"{prefix}.{depth}.{list(block)[-1]}" not in got
    n_params = sum(p.numel() for p in model.parameters())
    assert abs(n_params / 1e6 - params_m) < tol, n_params
    assert n_params == E.encoder_spec(name).n_params()


def test_resnet50_trunc_layout_is_resnet50_without_layer4_and_fc() -> None:
    with torch.device("meta"):
        full = {k: tuple(v.shape) for k, v in E.resnet50(num_classes=1000).state_dict().items()}
        trunc = {k: tuple(v.shape) for k, v in E.encoder_spec("resnet50_trunc").build().state_dict().items()}
    assert trunc == {k: v for k, v in full.items() if not k.startswith(("layer4.", "fc."))}
    assert trunc["layer3.5.conv3.weight"] == (1024, 256, 1, 1)
    assert E.encoder_spec("resnet50_trunc").n_params() == 8_543_296


# ---- registry, preprocessing, Hub ----


def test_registry_entries() -> None:
    assert E.available_encoders() == ["h_optimus_0", "phikon_v2", "resnet50_trunc", "uni", "virchow2"]
    assert E.available_backbones() == ["densenet121", "resnet18", "resnet50", "small_cnn"]  # unchanged
    repos = {n: E.encoder_spec(n).hf_repo for n in E.available_encoders()}
    assert repos == {"h_optimus_0": "bioptimus/H-optimus-0", "phikon_v2": "owkin/phikon-v2",
                     "resnet50_trunc": "timm/resnet50.tv_in1k", "uni": "MahmoodLab/UNI",
                     "virchow2": "paige-ai/Virchow2"}
    for name in E.available_encoders():
        spec = E.encoder_spec(name)
        assert spec.preprocessing.input_px == 224 and spec.preprocessing.field_um == 112.0
        assert spec.licence and spec.pooling and spec.architecture
    assert E.encoder_spec("H-Optimus-0").preprocessing.mean == (0.707223, 0.578729, 0.703617)
    assert E.encoder_spec("h_optimus_0").preprocessing.std == (0.211883, 0.230117, 0.177517)
    with pytest.raises(StfusionError, match="Unknown encoder 'conch'.*uni"):
        E.make_encoder("conch")
    # make_backbone / feature_dim accept the encoders (ST-Net uses them)
    model, n = E.make_backbone("virchow2", **REDUCED["virchow2"])
    assert n == 64 == model.n_features and E.feature_dim("uni") == 1024


def test_random_initialisation_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="stfusion"):
        E.make_encoder("uni", **REDUCED["uni"])
    assert "encoder uni: random initialisation" in caplog.text


def test_preprocessing_json_and_pixels(tmp_path) -> None:
    prep = E.encoder_spec("h_optimus_0").preprocessing
    path = tmp_path / "preprocessing.json"
    path.write_text(prep.to_json())
    back = E.Preprocessing.from_json(path.read_text())
    assert back == prep and json.loads(path.read_text())["um_per_px"] == 0.5
    patches = np.full((3, 224, 224, 3), 200, dtype=np.uint8)
    out = prep(patches)
    assert out.shape == (3, 3, 224, 224) and out.dtype == torch.float32
    expected = (200 / 255 - np.array(prep.mean)) / np.array(prep.std)
    torch.testing.assert_close(out[1, :, 5, 7], torch.tensor(expected, dtype=torch.float32))
    big = np.random.default_rng(0).integers(0, 256, size=(2, 256, 256, 3), dtype=np.uint8)
    resized = prep(torch.from_numpy(big))
    assert resized.shape == (2, 3, 224, 224) and torch.isfinite(resized).all()
    assert prep(big[0]).shape == (1, 3, 224, 224)
    with pytest.raises(ValueError, match="uint8"):
        prep(big.astype(np.float32))
    with pytest.raises(ValueError, match=r"\(n, H, W, 3\)"):
        prep(big[..., :2])
    with pytest.raises(ValueError, match="Unknown preprocessing fields"):
        E.Preprocessing.from_dict({"mean": [0, 0, 0], "size": 3})


def test_end_to_end_uint8_patches_to_embeddings() -> None:
    model, prep = E.make_encoder("virchow2", **REDUCED["virchow2"])
    small = E.Preprocessing(prep.mean, prep.std, 28, prep.um_per_px, prep.interpolation)
    patches = np.random.default_rng(1).integers(0, 256, size=(4, 56, 56, 3), dtype=np.uint8)
    with torch.no_grad():
        emb = model(small(patches))
    assert emb.shape == (4, 64)


def _error(cls, message: str = "refused"):
    exc = cls.__new__(cls)  # these errors want an HTTP response object; the message is enough here
    Exception.__init__(exc, message)
    return exc


def test_gated_download_names_the_access_step(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError

    def refuse(*args, **kwargs):
        raise _error(GatedRepoError)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    with pytest.raises(E.WeightsError, match=r"accept the licence on https://huggingface\.co/MahmoodLab/UNI.*HF_TOKEN"):
        E.make_encoder("uni", weights="hub", **REDUCED["uni"])


def test_offline_download_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError("offline")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(E.WeightsError, match="unreachable.*pass its local path"):
        H.download_weights("owkin/phikon-v2", ["model.safetensors"])


def test_hub_download_falls_back_to_the_next_file_and_passes_the_token(tmp_path, monkeypatch) -> None:
    import huggingface_hub
    from huggingface_hub.errors import RemoteEntryNotFoundError

    source = reduced("uni")
    state = randomise(source, seed=9)
    local = tmp_path / "pytorch_model.bin"
    torch.save(state, local)
    calls = []

    def fake(repo_id, filename, **kwargs):
        calls.append((repo_id, filename, kwargs["token"]))
        if filename == "model.safetensors":
            raise _error(RemoteEntryNotFoundError)
        return str(local)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    model, _ = E.make_encoder("uni", weights="hub", **REDUCED["uni"])
    assert calls == [
        ("MahmoodLab/UNI", "model.safetensors", "hf_test"),
        ("MahmoodLab/UNI", "pytorch_model.bin", "hf_test"),
    ]
    assert torch.equal(model.blocks[0].ls1.gamma, state["blocks.0.ls1.gamma"])
    E.make_encoder("uni", weights="hub", token="hf_arg", **REDUCED["uni"])
    assert calls[-1][2] == "hf_arg"
