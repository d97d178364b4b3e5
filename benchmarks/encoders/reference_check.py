"""Numerical check of stfusion's encoders against timm's own source, on the same random weights.

What runs
---------
timm (``pip install timm``) does not import on this machine: torchvision is not installed in the
venv, and the torchvision wheels that exist for torch 2.13 CPU lack their compiled ops. timm's
*model code* does not need torchvision, only its package imports do (``timm.layers.create_norm``
imports ``torchvision.ops.misc.FrozenBatchNorm2d``, ``timm.data.transforms`` imports
``torchvision.transforms``). So this script

1. takes timm's source tree (``--timm-src DIR`` holding ``timm/``; by default it is exported with
   ``git archive`` from the fetched mirror of huggingface/pytorch-image-models),
2. if ``import torchvision`` fails, installs an import hook that answers every
   ``torchvision.*`` import with an inert placeholder module (nothing of it is called by the
   model code below; a model that did call it would fail loudly, not silently),
3. builds timm's ``VisionTransformer`` / ``resnet50`` and stfusion's modules with the same
   configuration, loads timm's random state dict into ours **strictly**, and compares outputs.

Cases (reduced width/depth by default; ``--full NAME`` adds one full-size model, several GB):

- ``uni``          timm ``vit_large_patch16_224`` args + ``init_values=1e-5``, class token
- ``h_optimus_0``  + 4 registers, ``no_embed_class``, ``SwiGLUPacked``/SiLU, ``mlp_ratio=5.33334``
- ``virchow2``     + 4 registers (pos-embed over prefix), ``SwiGLUPacked``, ``mlp_ratio=5.3375``,
                   ``global_pool=""``; our CLS+mean pooling vs ``cat(out[:, 0], out[:, 5:].mean(1))``
                   as on the Virchow2 model card
- ``vit_swiglu``   timm ``SwiGLU`` (split ``fc1_g``/``fc1_x``)
- ``dynamic``      Virchow2-like at a non-native input size (``dynamic_img_size=True``)
- ``phikon_v2``    our Hugging Face-layout ``Dinov2HF`` vs timm's ViT (DINOv2 = class token,
                   pos-embed over it, LayerScale, GELU MLP): HF keys are mapped to timm's
                   (query/key/value concatenated into ``qkv``, ``attention.output.dense`` ->
                   ``attn.proj``, ``lambda1`` -> ``gamma``, ``layernorm`` -> ``norm``). The
                   ``transformers`` package is not installed and its repository snapshot is too
                   large to fetch here, so HF's own ``Dinov2Model`` is *not* executed: this checks
                   the arithmetic against an independent implementation of the same network;
                   the key names and shapes are checked against ``modeling_dinov2.py`` in the tests.
- ``resnet50_trunc`` timm ``resnet50`` (torchvision key names) up to ``layer3`` + average pooling,
                   loaded from timm's *full* state dict (``layer4``/``fc`` dropped knowingly).

Usage::

    .venv/bin/python benchmarks/encoders/reference_check.py [--timm-src DIR] [--full uni] \
        [--out benchmarks/encoders/reference_check.json]
"""

from __future__ import annotations

import argparse
import atexit
import importlib.abc
import importlib.machinery
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

MIRROR = Path("/work/.mirror/huggingface+pytorch-image-models/repo")


# ---- timm's source, importable without torchvision ----


class _Placeholder(type):
    def __getattr__(cls, name: str) -> str:
        if name.startswith("__"):
            raise AttributeError(name)
        return f"{cls.__name__}.{name}"

    def __iter__(cls):
        return iter(())


class _PlaceholderModule(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Placeholder(name, (), {"__init__": lambda self, *a, **k: None})


class _TorchvisionStub(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        return _PlaceholderModule(spec.name)

    def exec_module(self, module):
        module.__path__ = []


def import_timm(timm_src: Path | None) -> tuple[types.ModuleType, str]:
    """timm from ``timm_src`` (a directory holding ``timm/``) or exported from the mirror."""
    if timm_src is None:
        if not MIRROR.exists():
            raise SystemExit(f"No --timm-src given and no mirror at {MIRROR}: pass a timm checkout.")
        commit = subprocess.run(["git", "-C", str(MIRROR), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        timm_src = Path(tempfile.mkdtemp(prefix="timm_src_"))
        atexit.register(shutil.rmtree, timm_src, ignore_errors=True)
        archive = subprocess.run(["git", "-C", str(MIRROR), "archive", "HEAD", "timm"], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(timm_src)], input=archive.stdout, check=True)
        origin = f"huggingface/pytorch-image-models@{commit[:12]} (mirror)"
    else:
        origin = str(timm_src)
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - missing, or present without its compiled ops
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        sys.meta_path.insert(0, _TorchvisionStub())
        origin += "; torchvision stubbed (not importable here)"
    sys.path.insert(0, str(timm_src))
    import timm  # noqa: F401
    import timm.layers
    import timm.models.resnet
    import timm.models.vision_transformer

    return timm, origin


# ---- cases ----


def _randomise(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in model.state_dict().items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(3)
        elif k.endswith("running_var"):
            out[k] = torch.rand(v.shape, generator=g) + 0.5
        else:
            out[k] = torch.randn(v.shape, generator=g) * 0.1
    return out


def vit_cases(timm, full: set[str]) -> list[dict]:
    from timm.layers import SwiGLU, SwiGLUPacked

    small = dict(img_size=28, patch_size=14, embed_dim=96, depth=3, num_heads=4)  # int(96 * 5.3375) is even
    cases = [
        ("uni", dict(small, patch_size=7), dict(init_values=1e-5), {}),
        ("h_optimus_0", small,
         dict(init_values=1e-5, mlp_ratio=2.66667 * 2, mlp_layer=SwiGLUPacked, act_layer=torch.nn.SiLU,
              reg_tokens=4, no_embed_class=True), {}),
        ("virchow2", small,
         dict(init_values=1e-5, mlp_ratio=5.3375, mlp_layer=SwiGLUPacked, act_layer=torch.nn.SiLU,
              reg_tokens=4, global_pool=""), {}),
        ("vit_swiglu", small, dict(init_values=1e-5, mlp_ratio=4.0, mlp_layer=SwiGLU, act_layer=torch.nn.SiLU),
         dict(mlp="swiglu", mlp_ratio=4.0, init_values=1e-5)),
        ("dynamic", small,
         dict(init_values=1e-5, mlp_ratio=5.3375, mlp_layer=SwiGLUPacked, act_layer=torch.nn.SiLU,
              reg_tokens=4, global_pool="", dynamic_img_size=True), {"_input": (42, 56), "_like": "virchow2"}),
    ]
    full_args = {
        "uni": (dict(img_size=224, patch_size=16, embed_dim=1024, depth=24, num_heads=16), dict(init_values=1e-5)),
        "h_optimus_0": (dict(img_size=224, patch_size=14, embed_dim=1536, depth=40, num_heads=24), cases[1][2]),
        "virchow2": (dict(img_size=224, patch_size=14, embed_dim=1280, depth=32, num_heads=16), cases[2][2]),
    }
    for name in sorted(full & set(full_args)):
        arch, extra = full_args[name]
        cases.append((f"{name} (full size)", arch, extra, {"_like": name, "_full": True}))
    return cases


def run_vit_case(timm, name, arch, timm_extra, ours_extra) -> dict:
    from stfusion.models import encoders as E

    like = ours_extra.pop("_like", name)
    size = ours_extra.pop("_input", (arch["img_size"], arch["img_size"]))
    ours_extra.pop("_full", None)
    torch.manual_seed(0)
    ref = timm.models.vision_transformer.VisionTransformer(num_classes=0, **arch, **timm_extra).eval()
    state = _randomise(ref, seed=1)
    ref.load_state_dict(state)
    if like in E.ENCODERS:
        ours = E.encoder_spec(like).build(**arch, **ours_extra)
    else:
        ours = E.VisionTransformer(**arch, **ours_extra)
    report = E.load_weights(ours.eval(), state, strict=True, name=name)
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        r = ref(x)
        if r.ndim == 3:  # global_pool="": Virchow2's model-card embedding
            r = torch.cat([r[:, 0], r[:, ref.num_prefix_tokens :].mean(1)], dim=-1)
        o = ours(x)
    return _result(name, r, o, len(report.loaded))


def run_gate_order_control(timm) -> dict:
    """Negative control: with the two halves of every packed ``fc1`` swapped (value first, gate
    second) the outputs must differ -- the comparison can tell the gate order apart."""
    from timm.layers import SwiGLUPacked

    from stfusion.models import encoders as E

    arch = dict(img_size=28, patch_size=14, embed_dim=96, depth=3, num_heads=4)
    extra = dict(init_values=1e-5, mlp_ratio=5.3375, mlp_layer=SwiGLUPacked, act_layer=torch.nn.SiLU, reg_tokens=4)
    ref = timm.models.vision_transformer.VisionTransformer(num_classes=0, **arch, **extra).eval()
    state = _randomise(ref, seed=1)
    ref.load_state_dict(state)
    swapped = dict(state)
    for key, value in state.items():
        if ".mlp.fc1." in key:
            a, b = value.chunk(2, dim=0)
            swapped[key] = torch.cat([b, a], dim=0)
    ours = E.encoder_spec("h_optimus_0").build(**arch, no_embed_class=False, pooling="cls").eval()
    E.load_weights(ours, swapped, strict=True)
    x = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = _result("control: gate/value halves swapped (must differ)", ref(x), ours(x), len(state))
    out["pass"] = out["max_abs_diff"] > 1e-3
    return out


def run_phikon_case(timm) -> dict:
    """Our HF-layout Dinov2 vs timm's ViT with the HF -> timm key mapping."""
    from stfusion.models import encoders as E

    cfg = dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, patch_size=8, image_size=32)
    torch.manual_seed(0)
    ours = E.encoder_spec("phikon_v2").build(**cfg).eval()
    state = _randomise(ours, seed=3)
    E.load_weights(ours, state, strict=True, name="phikon_v2")
    ref = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=64, depth=3, num_heads=4, num_classes=0, init_values=1.0
    ).eval()
    mapped = {
        "cls_token": state["embeddings.cls_token"],
        "pos_embed": state["embeddings.position_embeddings"],
        "patch_embed.proj.weight": state["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": state["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": state["layernorm.weight"],
        "norm.bias": state["layernorm.bias"],
    }
    for i in range(3):
        h, t = f"encoder.layer.{i}.", f"blocks.{i}."
        att = h + "attention.attention."
        for part in ("weight", "bias"):
            mapped[t + f"attn.qkv.{part}"] = torch.cat([state[att + f"{p}.{part}"] for p in ("query", "key", "value")])
            mapped[t + f"attn.proj.{part}"] = state[h + f"attention.output.dense.{part}"]
            for n in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                mapped[t + f"{n}.{part}"] = state[h + f"{n}.{part}"]
        mapped[t + "ls1.gamma"] = state[h + "layer_scale1.lambda1"]
        mapped[t + "ls2.gamma"] = state[h + "layer_scale2.lambda1"]
    ref.load_state_dict(mapped, strict=True)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        return _result("phikon_v2 (HF layout vs timm ViT)", ref(x), ours(x), len(state))


def run_resnet_case(timm) -> dict:
    from stfusion.models import encoders as E

    torch.manual_seed(0)
    ref = timm.models.resnet.resnet50(num_classes=1000).eval()
    state = _randomise(ref, seed=5)
    ref.load_state_dict(state)
    ours = E.encoder_spec("resnet50_trunc").build().eval()
    report = E.load_weights(ours, state, strict=True, name="resnet50_trunc")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        f = ref.maxpool(ref.act1(ref.bn1(ref.conv1(x))))
        r = ref.layer3(ref.layer2(ref.layer1(f))).mean(dim=(2, 3))
        out = _result("resnet50_trunc (timm resnet50 to layer3)", r, ours(x), len(report.loaded))
    out["dropped_unused"] = len(report.dropped_unused)
    out["ignored_head"] = report.ignored_head
    return out


def _result(name: str, ref: torch.Tensor, ours: torch.Tensor, n_tensors: int) -> dict:
    diff = (ref - ours).abs().max().item()
    scale = ref.abs().max().item()
    return {
        "case": name,
        "shape": list(ours.shape),
        "tensors_loaded_strictly": n_tensors,
        "max_abs_diff": diff,
        "max_abs_ref": scale,
        "pass": tuple(ref.shape) == tuple(ours.shape) and diff <= 1e-4 * max(1.0, scale),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--timm-src", type=Path, default=None)
    parser.add_argument(
        "--full", action="append", default=[], help="also a full-size model (uni, h_optimus_0, virchow2)"
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    timm, origin = import_timm(args.timm_src)
    start = time.perf_counter()
    results = [run_vit_case(timm, *case) for case in vit_cases(timm, set(args.full))]
    results.append(run_phikon_case(timm))
    results.append(run_resnet_case(timm))
    results.append(run_gate_order_control(timm))
    for r in results:
        print(
            f"{'PASS' if r['pass'] else 'FAIL'}  {r['case']:<45} shape {r['shape']}  max|diff| {r['max_abs_diff']:.2e}"
            f"  (max|ref| {r['max_abs_ref']:.2e}, {r['tensors_loaded_strictly']} tensors)"
        )
    record = {
        "timm": origin,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "seconds": round(time.perf_counter() - start, 1),
        "results": results,
    }
    if args.out:
        args.out.write_text(json.dumps(record, indent=2) + "\n")
    if not all(r["pass"] for r in results):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
