"""Backbones: torchvision layout (names, shapes, counts), weight loading, init, forward."""

from __future__ import annotations

import logging
import math
import sys
import time
import types
from collections import OrderedDict

import pytest
import torch
from torch import nn

from stfusion.errors import InputFileError, StfusionError
from stfusion.models import encoders as B
from stfusion.models.encoders.densenet import DenseNet

# ---- expected layouts, rebuilt from torchvision's naming rules (not from our modules) ----


def _bn(out: OrderedDict, prefix: str, c: int) -> None:
    for suffix in ("weight", "bias", "running_mean", "running_var"):
        out[f"{prefix}.{suffix}"] = (c,)
    out[f"{prefix}.num_batches_tracked"] = ()


def expected_densenet121(head: bool = True) -> OrderedDict:
    out: OrderedDict = OrderedDict()
    out["features.conv0.weight"] = (64, 3, 7, 7)
    _bn(out, "features.norm0", 64)
    n = 64
    for b, layers in enumerate((6, 12, 24, 16), start=1):
        for j in range(1, layers + 1):
            p, c_in = f"features.denseblock{b}.denselayer{j}", n + (j - 1) * 32
            _bn(out, f"{p}.norm1", c_in)
            out[f"{p}.conv1.weight"] = (128, c_in, 1, 1)
            _bn(out, f"{p}.norm2", 128)
            out[f"{p}.conv2.weight"] = (32, 128, 3, 3)
        n += layers * 32
        if b < 4:
            _bn(out, f"features.transition{b}.norm", n)
            out[f"features.transition{b}.conv.weight"] = (n // 2, n, 1, 1)
            n //= 2
    _bn(out, "features.norm5", n)
    if head:
        out["classifier.weight"], out["classifier.bias"] = (1000, n), (1000,)
    return out


def expected_resnet(bottleneck: bool, layers: tuple[int, ...], head: bool = True) -> OrderedDict:
    out: OrderedDict = OrderedDict()
    out["conv1.weight"] = (64, 3, 7, 7)
    _bn(out, "bn1", 64)
    exp, inplanes = (4 if bottleneck else 1), 64
    for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers, strict=True), start=1):
        for i in range(blocks):
            p = f"layer{stage}.{i}"
            if bottleneck:
                convs = [(planes, inplanes, 1), (planes, planes, 3), (planes * 4, planes, 1)]
            else:
                convs = [(planes, inplanes, 3), (planes, planes, 3)]
            for k, (c_out, c_in, ks) in enumerate(convs, start=1):
                out[f"{p}.conv{k}.weight"] = (c_out, c_in, ks, ks)
                _bn(out, f"{p}.bn{k}", c_out)
            if i == 0 and (stage > 1 or inplanes != planes * exp):
                out[f"{p}.downsample.0.weight"] = (planes * exp, inplanes, 1, 1)
                _bn(out, f"{p}.downsample.1", planes * exp)
            inplanes = planes * exp
    if head:
        out["fc.weight"], out["fc.bias"] = (1000, 512 * exp), (1000,)
    return out


EXPECTED = {
    "densenet121": expected_densenet121,
    "resnet18": lambda head=True: expected_resnet(False, (2, 2, 2, 2), head),
    "resnet50": lambda head=True: expected_resnet(True, (3, 4, 6, 3), head),
}


def random_state(shapes: OrderedDict, seed: int = 1) -> OrderedDict:
    """A 'foreign' checkpoint: torchvision layout, random values (positive running_var)."""
    g = torch.Generator().manual_seed(seed)
    state: OrderedDict = OrderedDict()
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.randint(1, 10_000, (), generator=g)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        else:
            state[key] = torch.randn(shape, generator=g)
    return state


def to_legacy(state: OrderedDict) -> OrderedDict:
    """Old torchvision DenseNet checkpoints: 'norm.1' names and no num_batches_tracked."""
    out: OrderedDict = OrderedDict()
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        for old, new in (("norm1", "norm.1"), ("conv1", "conv.1"), ("norm2", "norm.2"), ("conv2", "conv.2")):
            key = key.replace(f".{old}.", f".{new}.") if "denselayer" in key else key
        out[key] = value
    return out


@pytest.fixture(scope="module")
def densenet_file(tmp_path_factory: pytest.TempPathFactory):
    state = random_state(expected_densenet121(head=True))
    path = tmp_path_factory.mktemp("w") / "densenet121.pth"
    torch.save(state, path)
    return path, state


# ---- layout ----


@pytest.mark.parametrize(
    ("name", "n_params", "n_keys"),
    [("densenet121", 7_978_856, 727), ("resnet18", 11_689_512, 122), ("resnet50", 25_557_032, 320)],
)
def test_parameter_and_key_counts_match_torchvision(name: str, n_params: int, n_keys: int) -> None:
    model = B.BACKBONES[name](num_classes=1000)
    assert sum(p.numel() for p in model.parameters()) == n_params
    assert len(model.state_dict()) == n_keys


@pytest.mark.parametrize("name", ["densenet121", "resnet18", "resnet50"])
def test_state_dict_keys_and_shapes_match_torchvision_layout(name: str) -> None:
    expected = EXPECTED[name](head=True)
    got = OrderedDict((k, tuple(v.shape)) for k, v in B.BACKBONES[name](num_classes=1000).state_dict().items())
    assert list(got) == list(expected)  # same names in the same order
    assert got == expected
    headless, _ = B.make_backbone(name)
    assert list(headless.state_dict()) == list(EXPECTED[name](head=False))


def test_sample_of_exact_names() -> None:
    d = B.densenet121().state_dict()
    for key in [
        "features.denseblock1.denselayer1.norm1.num_batches_tracked",
        "features.denseblock3.denselayer24.conv2.weight",
        "features.transition3.conv.weight",
        "features.norm5.running_var",
    ]:
        assert key in d
    assert d["features.transition1.conv.weight"].shape == (128, 256, 1, 1)
    r50_model = B.resnet50()
    r18, r50 = B.resnet18().state_dict(), r50_model.state_dict()
    assert "layer1.0.downsample.0.weight" not in r18 and "layer2.0.downsample.1.running_var" in r18
    assert r50["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
    assert r50["layer4.2.conv3.weight"].shape == (2048, 512, 1, 1)
    assert r50["layer2.0.conv2.weight"].shape == (128, 128, 3, 3)  # v1.5: stride on the 3x3
    assert r50_model.layer2[0].conv2.stride == (2, 2)


# ---- forward and dims ----


@pytest.mark.parametrize(("name", "dim"), [("densenet121", 1024), ("resnet18", 512), ("resnet50", 2048)])
def test_output_feature_dims(name: str, dim: int) -> None:
    torch.manual_seed(0)
    model, n = B.make_backbone(name)
    assert n == dim == B.feature_dim(name)
    with torch.no_grad():
        out = model.eval()(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, dim)
    assert torch.isfinite(out).all() and (out >= 0).all()  # pooled post-ReLU features
    assert out.std() > 0


def test_small_cnn_is_small_and_fast() -> None:
    model, n = B.make_backbone("small_cnn")
    assert n == 128 == B.feature_dim("small_cnn")
    assert B.feature_dim("small_cnn", width=8) == 64
    assert sum(p.numel() for p in model.parameters()) == 97_680
    x = torch.randn(8, 3, 64, 64)
    start = time.perf_counter()
    out = model(x)
    out.sum().backward()
    assert time.perf_counter() - start < 5.0
    assert out.shape == (8, 128)
    assert model.features.block1.conv.weight.grad is not None
    with pytest.raises(ValueError, match="width"):
        B.small_cnn(width=0)


def test_loaded_model_computes_the_same_function(tmp_path) -> None:
    torch.manual_seed(11)
    ref = B.resnet18(num_classes=1000).eval()
    path = tmp_path / "ref.pth"
    torch.save(ref.state_dict(), path)
    torch.manual_seed(12)
    full = B.resnet18(num_classes=1000).eval()
    report = B.load_weights(full, path)
    assert report.ignored_head == [] and len(report.loaded) == 122
    headless, _ = B.make_backbone("resnet18", weights=path)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits, feats = full(x), headless.eval()(x)
        torch.testing.assert_close(logits, ref(x))
    assert logits.shape == (2, 1000) and torch.isfinite(logits).all()
    torch.testing.assert_close(logits, full.fc(feats))


def test_memory_efficient_densenet_matches_plain() -> None:
    torch.manual_seed(3)
    plain = DenseNet(8, (2, 3), 16, num_classes=None)
    efficient = DenseNet(8, (2, 3), 16, num_classes=None, memory_efficient=True)
    efficient.load_state_dict(plain.state_dict())
    assert plain.n_features == (16 + 16) // 2 + 24 == 40
    x = torch.randn(2, 3, 32, 32)
    outs, grads = [], []
    for model in (plain, efficient):
        out = model(x)
        out.square().sum().backward()
        outs.append(out.detach())
        grads.append(model.features.conv0.weight.grad.clone())
    torch.testing.assert_close(outs[0], outs[1])
    torch.testing.assert_close(grads[0], grads[1])


# ---- init ----


def test_deterministic_init_under_manual_seed() -> None:
    torch.manual_seed(7)
    a = B.resnet18().state_dict()
    torch.manual_seed(7)
    b = B.resnet18().state_dict()
    torch.manual_seed(8)
    c = B.resnet18().state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["conv1.weight"], c["conv1.weight"])


def test_init_follows_torchvision() -> None:
    torch.manual_seed(0)
    dn, rn = B.densenet121(), B.resnet50()
    # DenseNet: kaiming normal, fan_in (3 * 7 * 7); ResNet: fan_out (64 * 7 * 7)
    assert dn.features.conv0.weight.std().item() == pytest.approx(math.sqrt(2 / 147), rel=0.05)
    assert rn.conv1.weight.std().item() == pytest.approx(math.sqrt(2 / 3136), rel=0.05)
    assert abs(dn.features.conv0.weight.mean().item()) < 0.01
    for bn in (dn.features.norm5, rn.layer3[2].bn2):
        assert torch.equal(bn.weight, torch.ones_like(bn.weight))
        assert torch.equal(bn.bias, torch.zeros_like(bn.bias))
    assert torch.equal(dn.classifier.bias, torch.zeros(1000))
    assert rn.fc.bias.abs().max() > 0  # torchvision leaves the ResNet fc at nn.Linear's default


def test_random_weights_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="stfusion"):
        B.make_backbone("small_cnn")
    assert any("random" in r.getMessage() and r.levelno == logging.INFO for r in caplog.records)


def test_registry_and_unknown_name() -> None:
    assert B.available_backbones() == ["densenet121", "resnet18", "resnet50", "small_cnn"]
    assert B.make_backbone("Small-CNN", width=2)[1] == 16
    with pytest.raises(StfusionError, match="densenet121, resnet18"):
        B.make_backbone("vgg16")


# ---- loading weights ----


def test_foreign_densenet_state_dict_loads(densenet_file, caplog: pytest.LogCaptureFixture) -> None:
    path, state = densenet_file
    with caplog.at_level(logging.INFO, logger="stfusion"):
        model, n = B.make_backbone("densenet121", weights=path)
    assert n == 1024
    loaded = model.state_dict()
    assert len(loaded) == 725
    for key, value in loaded.items():
        assert torch.equal(value, state[key]), key
    assert "classifier.weight" in caplog.text and "725 tensors" in caplog.text
    report = B.load_weights(B.make_backbone("densenet121")[0], state)
    assert report.ignored_head == ["classifier.bias", "classifier.weight"]
    assert report.filled_buffers == [] and report.legacy_renamed == 0


def test_legacy_densenet_names_load(tmp_path, densenet_file) -> None:
    _, state = densenet_file
    legacy = to_legacy(state)
    assert "features.denseblock2.denselayer5.norm.1.running_mean" in legacy
    path = tmp_path / "legacy.pth"
    torch.save(legacy, path)
    model, _ = B.make_backbone("densenet121", weights=path)
    report = B.load_weights(model, path)
    assert report.legacy_renamed == 58 * 10  # 4 BN tensors x 2 + 2 conv weights per layer
    assert len(report.filled_buffers) == 121  # every BN's num_batches_tracked
    got = model.state_dict()
    key = "features.denseblock2.denselayer5.norm1.running_mean"
    assert torch.equal(got[key], state[key])
    assert got["features.norm5.num_batches_tracked"].item() == 0


def test_resnet_foreign_state_dict_with_wrappers(tmp_path) -> None:
    state = random_state(EXPECTED["resnet18"](head=True), seed=5)
    path = tmp_path / "r18.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    model, n = B.make_backbone("resnet18", weights=path)
    assert n == 512
    got = model.state_dict()
    assert all(torch.equal(got[k], state[k]) for k in got)
    assert torch.equal(got["layer3.0.downsample.1.running_var"], state["layer3.0.downsample.1.running_var"])


def test_wrong_shape_raises_clear_error(tmp_path, densenet_file) -> None:
    _, state = densenet_file
    bad = OrderedDict(state)
    bad["features.denseblock1.denselayer2.conv1.weight"] = torch.zeros(128, 95, 1, 1)
    path = tmp_path / "bad.pth"
    torch.save(bad, path)
    with pytest.raises(B.WeightsError, match=r"shape mismatch.*denselayer2\.conv1\.weight.*\(128, 95, 1, 1\)"):
        B.make_backbone("densenet121", weights=path)
    with pytest.raises(B.WeightsError, match="shape mismatch"):
        B.make_backbone("densenet121", weights=bad, strict=False)


def test_missing_and_unexpected_keys_raise(densenet_file, caplog: pytest.LogCaptureFixture) -> None:
    _, state = densenet_file
    missing = OrderedDict(state)
    del missing["features.transition2.conv.weight"]
    with pytest.raises(B.WeightsError, match=r"1 missing keys.*transition2\.conv\.weight"):
        B.make_backbone("densenet121", weights=missing)
    extra = OrderedDict(state)
    extra["features.denseblock5.denselayer1.conv1.weight"] = torch.zeros(1)
    with pytest.raises(B.WeightsError, match=r"1 unexpected keys.*denseblock5"):
        B.make_backbone("densenet121", weights=extra)
    with pytest.raises(B.WeightsError, match="do not fit backbone resnet18"):
        B.make_backbone("resnet18", weights=state)  # a DenseNet file into a ResNet
    torch.manual_seed(0)
    with caplog.at_level(logging.WARNING, logger="stfusion"):
        model, _ = B.make_backbone("densenet121", weights=missing, strict=False)
    assert "1 keys missing" in caplog.text
    assert torch.equal(model.features.conv0.weight, state["features.conv0.weight"])
    kept = model.features.transition2.conv.weight  # left at its random init
    assert kept.abs().sum() > 0 and not torch.equal(kept, state["features.transition2.conv.weight"])


class _NotATensor:
    pass


def test_unsafe_or_invalid_files_are_rejected(tmp_path) -> None:
    pickled = tmp_path / "pickled.pth"
    torch.save({"conv1.weight": torch.zeros(1), "obj": _NotATensor()}, pickled)
    with pytest.raises(B.WeightsError, match="weights-only"):
        B.make_backbone("small_cnn", weights=pickled)
    not_state = tmp_path / "meta.pth"
    torch.save({"epoch": 3, "lr": 0.1}, not_state)
    with pytest.raises(B.WeightsError, match="does not hold a state dict"):
        B.make_backbone("small_cnn", weights=not_state)
    with pytest.raises(InputFileError, match="does not exist"):
        B.make_backbone("small_cnn", weights=tmp_path / "absent.pth")


def test_safetensors(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"placeholder")
    torch.manual_seed(0)
    source = B.small_cnn(width=4, num_classes=10).state_dict()
    if "safetensors" not in sys.modules:
        with pytest.raises(B.WeightsError, match="pip install safetensors"):
            B.make_backbone("small_cnn", weights=path, width=4)
    fake_torch = types.ModuleType("safetensors.torch")
    fake_torch.load_file = lambda filename, device="cpu": dict(source)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "safetensors", types.ModuleType("safetensors"))
    monkeypatch.setitem(sys.modules, "safetensors.torch", fake_torch)
    model, n = B.make_backbone("small_cnn", weights=path, width=4)
    assert n == 32
    assert torch.equal(model.features.block4.conv.weight, source["features.block4.conv.weight"])
    assert isinstance(model.classifier, nn.Identity)
