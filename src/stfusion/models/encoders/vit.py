"""Vision Transformer with timm's parameter names, in plain torch (for UNI, H-optimus-0, Virchow2).

Written after ``timm/models/vision_transformer.py`` (``VisionTransformer``, ``Block``),
``timm/layers/attention.py`` (``Attention``), ``timm/layers/mlp.py`` (``Mlp``, ``GluMlp``,
``SwiGLUPacked = partial(GluMlp, act_layer=nn.SiLU, gate_last=False)``, ``SwiGLU``),
``timm/layers/layer_scale.py`` (``LayerScale.gamma``) and ``timm/layers/pos_embed.py``
(``resample_abs_pos_embed``) of huggingface/pytorch-image-models (read at commit
aa4b5850c154, 2026-08). Only the inference path of the pre-norm ``Block`` is kept (no dropout,
drop-path, attention masks, qk-norm or attention pooling).

State-dict layout (``num_classes=0``, so no ``head``; ``fc_norm`` and ``norm_pre`` are
parameter-free identities for these models)::

    cls_token            (1, 1, D)
    reg_token            (1, R, D)            only with R > 0 register tokens
    pos_embed            (1, P + [1 + R], D)  P patches; prefix rows unless no_embed_class
    patch_embed.proj.{weight (D, 3, p, p), bias (D,)}
    blocks.{i}.norm1.{weight, bias}
    blocks.{i}.attn.qkv.{weight (3D, D), bias}
    blocks.{i}.attn.proj.{weight (D, D), bias}
    blocks.{i}.ls1.gamma (D,)                 only with LayerScale (init_values)
    blocks.{i}.norm2.{weight, bias}
    blocks.{i}.mlp....                        see the MLP classes below
    blocks.{i}.ls2.gamma (D,)
    norm.{weight, bias}

LayerNorm eps is 1e-6 (timm's ``LayerNorm`` default). The MLP hidden width is
``int(D * mlp_ratio)`` as in timm's ``Block``; for the packed gated MLP that is the width of
``fc1`` (value and gate together), so ``fc2`` takes half of it.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from stfusion.models.encoders.base import Backbone

__all__ = ["GeluMlp", "LayerScale", "SwiGLU", "SwiGLUPacked", "VisionTransformer", "resample_pos_embed"]

MlpKind = Literal["gelu", "swiglu_packed", "swiglu"]
Pooling = Literal["cls", "cls+mean", "mean"]
_LN_EPS = 1e-6


class GeluMlp(nn.Module):
    """timm ``Mlp``: ``fc1`` (D -> H), GELU (erf), ``fc2`` (H -> D)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwiGLUPacked(nn.Module):
    """timm ``SwiGLUPacked`` (``GluMlp`` with SiLU, ``gate_last=False``), as in H-optimus-0 and Virchow2.

    ``fc1`` (D -> H) produces the gate and the value packed together; the first half is the
    gate: ``fc2(silu(a) * b)`` with ``a, b = fc1(x).chunk(2, -1)``; ``fc2`` is (H/2 -> D).
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        if hidden % 2:
            raise ValueError(f"SwiGLUPacked needs an even hidden width, got {hidden}.")
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden // 2, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(F.silu(gate) * value)


class SwiGLU(nn.Module):
    """timm ``SwiGLU`` (separate projections): ``fc2(silu(fc1_g(x)) * fc1_x(x))``; all (D -> H), fc2 (H -> D)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1_g = nn.Linear(dim, hidden)
        self.fc1_x = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.silu(self.fc1_g(x)) * self.fc1_x(x))


_MLPS: dict[str, type[nn.Module]] = {"gelu": GeluMlp, "swiglu_packed": SwiGLUPacked, "swiglu": SwiGLU}


class LayerScale(nn.Module):
    """Per-channel scale of a residual branch (``gamma``, initialised to ``init_values``)."""

    def __init__(self, dim: int, init_values: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Attention(nn.Module):
    """Multi-head self-attention with one fused ``qkv`` projection (timm ``Attention``)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}.")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)  # scale head_dim ** -0.5, as timm
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-norm block: ``x + ls1(attn(norm1(x)))``, then ``x + ls2(mlp(norm2(x)))``."""

    def __init__(
        self, dim: int, num_heads: int, mlp_hidden: int, mlp: MlpKind, init_values: float | None, qkv_bias: bool
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.ls1: nn.Module = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.mlp = _MLPS[mlp](dim, mlp_hidden)
        self.ls2: nn.Module = LayerScale(dim, init_values) if init_values else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches -> D channels (``proj``: a strided convolution)."""

    def __init__(self, patch_size: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)  # (n, D, H/p, W/p)


def resample_pos_embed(
    pos: torch.Tensor, new_hw: tuple[int, int], old_hw: tuple[int, int], n_prefix: int
) -> torch.Tensor:
    """Bicubic (antialiased) resampling of a grid of position embeddings, as timm's
    ``resample_abs_pos_embed``; the ``n_prefix`` leading rows (class/register) are kept."""
    if new_hw == old_hw:
        return pos
    prefix, grid = pos[:, :n_prefix], pos[:, n_prefix:]
    dim = grid.shape[-1]
    grid = grid.float().reshape(1, old_hw[0], old_hw[1], dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=new_hw, mode="bicubic", antialias=True)
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim).to(pos.dtype)
    return torch.cat([prefix, grid], dim=1)


class VisionTransformer(Backbone):
    """ViT encoder with timm's state-dict keys; ``forward`` returns pooled embeddings.

    Parameters
    ----------
    img_size, patch_size
        Native input side (px) and patch side; the position-embedding grid is
        ``img_size // patch_size`` square. Other input sizes (multiples of ``patch_size``)
        resample the grid bicubically (timm's ``dynamic_img_size=True``).
    embed_dim, depth, num_heads
        Width D, number of blocks, attention heads.
    mlp_ratio, mlp
        MLP width ``int(D * mlp_ratio)`` and kind: ``"gelu"`` (timm ``Mlp``),
        ``"swiglu_packed"`` (timm ``SwiGLUPacked``) or ``"swiglu"`` (timm ``SwiGLU``).
    init_values
        LayerScale initial value (``ls1.gamma``/``ls2.gamma``), or ``None`` for no LayerScale.
    reg_tokens
        Number of register tokens (``reg_token``), placed after the class token.
    no_embed_class
        Position embeddings cover patches only (prefix tokens get none), as timm's DINOv2
        register models; otherwise they cover class and register tokens too.
    pooling
        ``"cls"``: the class token after the final norm (D); ``"cls+mean"``: the class token
        concatenated with the mean of the patch tokens, registers excluded (2D, Virchow2);
        ``"mean"``: mean of patch tokens (D).
    num_classes
        A linear ``head`` on the pooled features, or ``None`` (an encoder: no head keys).
    """

    head_name = "head"
    layout = "timm's"
    # a wrapper module holding the timm model as ``.model`` saves "model.<timm key>"
    checkpoint_prefixes = ("model.",)

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        mlp: MlpKind = "gelu",
        init_values: float | None = None,
        reg_tokens: int = 0,
        no_embed_class: bool = False,
        qkv_bias: bool = True,
        pooling: Pooling = "cls",
        num_classes: int | None = None,
    ) -> None:
        if pooling not in ("cls", "cls+mean", "mean"):
            raise ValueError(f"pooling must be 'cls', 'cls+mean' or 'mean', got {pooling!r}.")
        if mlp not in _MLPS:
            raise ValueError(f"mlp must be one of {sorted(_MLPS)}, got {mlp!r}.")
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}.")
        super().__init__(2 * embed_dim if pooling == "cls+mean" else embed_dim)
        self.embed_dim, self.patch_size, self.pooling = embed_dim, patch_size, pooling
        self.grid = (img_size // patch_size, img_size // patch_size)
        self.num_reg_tokens = reg_tokens
        self.num_prefix_tokens = 1 + reg_tokens
        self.no_embed_class = no_embed_class
        n_patches = self.grid[0] * self.grid[1]
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.reg_token = nn.Parameter(torch.zeros(1, reg_tokens, embed_dim)) if reg_tokens else None
        pos_len = n_patches if no_embed_class else n_patches + self.num_prefix_tokens
        self.pos_embed = nn.Parameter(torch.zeros(1, pos_len, embed_dim))
        hidden = int(embed_dim * mlp_ratio)
        self.blocks = nn.Sequential(
            *[Block(embed_dim, num_heads, hidden, mlp, init_values, qkv_bias) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(embed_dim, eps=_LN_EPS)
        self._set_head(num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """timm-like: trunc-normal(0.02) position embeddings and linears, tiny class/register tokens."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.reg_token is not None:
            nn.init.normal_(self.reg_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        w = self.patch_embed.proj.weight
        nn.init.trunc_normal_(w, std=math.sqrt(1.0 / (w.shape[1] * w.shape[2] * w.shape[3])))

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        """(n, D, h, w) patch grid -> (n, prefix + h*w, D) tokens with position embeddings."""
        n, d, h, w = x.shape
        n_prefix_pos = 0 if self.no_embed_class else self.num_prefix_tokens
        pos = resample_pos_embed(self.pos_embed, (h, w), self.grid, n_prefix_pos)
        x = x.flatten(2).transpose(1, 2)
        prefix = [self.cls_token.expand(n, -1, -1)]
        if self.reg_token is not None:
            prefix.append(self.reg_token.expand(n, -1, -1))
        if self.no_embed_class:
            return torch.cat([*prefix, x + pos], dim=1)
        return torch.cat([*prefix, x], dim=1) + pos

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """All tokens after the final norm: (n, 1 + R + patches, D) (class, registers, patches)."""
        if x.shape[-1] % self.patch_size or x.shape[-2] % self.patch_size:
            raise ValueError(f"Input side {tuple(x.shape[-2:])} is not a multiple of the patch size {self.patch_size}.")
        return self.norm(self.blocks(self._pos_embed(self.patch_embed(x))))

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        cls = tokens[:, 0]
        if self.pooling == "cls":
            return cls
        patches = tokens[:, self.num_prefix_tokens :].mean(dim=1)
        return patches if self.pooling == "mean" else torch.cat([cls, patches], dim=-1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_tokens(x))
