"""DINOv2 ViT in the Hugging Face ``transformers`` layout (``Dinov2Model``), in plain torch (Phikon-v2).

Written after ``src/transformers/models/dinov2/modeling_dinov2.py`` of huggingface/transformers
(``Dinov2Embeddings``, ``Dinov2PatchEmbeddings``, ``Dinov2SelfAttention``, ``Dinov2SelfOutput``,
``Dinov2LayerScale``, ``Dinov2MLP``, ``Dinov2SwiGLUFFN``, ``Dinov2Layer``, ``Dinov2Model``; read at
commit 015e68769f98). Inference path only (no dropout, drop-path or masked positions).

State-dict layout of ``Dinov2Model`` (as saved by ``save_pretrained``; D = ``hidden_size``)::

    embeddings.cls_token                                   (1, 1, D)
    embeddings.mask_token                                  (1, D)      present when use_mask_token
    embeddings.position_embeddings                         (1, 1 + P, D)
    embeddings.patch_embeddings.projection.{weight, bias}  (D, 3, p, p), (D,)
    encoder.layer.{i}.norm1.{weight, bias}
    encoder.layer.{i}.attention.attention.{query, key, value}.{weight, bias}
    encoder.layer.{i}.attention.output.dense.{weight, bias}
    encoder.layer.{i}.layer_scale1.lambda1                 (D,)
    encoder.layer.{i}.norm2.{weight, bias}
    encoder.layer.{i}.mlp.fc1 / fc2                        GELU MLP, int(D * mlp_ratio) hidden
        (or mlp.weights_in / weights_out with use_swiglu_ffn)
    encoder.layer.{i}.layer_scale2.lambda1
    layernorm.{weight, bias}

A checkpoint of a task model (``Dinov2ForImageClassification``) prefixes these keys with
``dinov2.``; that prefix is stripped explicitly on loading (and reported), its ``classifier.*``
keys are reported as an ignored head.

Output: ``Dinov2Model``'s ``pooler_output`` is ``last_hidden_state[:, 0]`` (the class token after
``layernorm``); Phikon-v2's model card extracts exactly that (``last_hidden_state[:, 0, :]``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stfusion.models.encoders.base import Backbone

__all__ = ["Dinov2HF"]


class _PatchEmbeddings(nn.Module):
    def __init__(self, patch_size: int, dim: int) -> None:
        super().__init__()
        self.projection = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(x).flatten(2).transpose(1, 2)


class _Embeddings(nn.Module):
    def __init__(self, dim: int, patch_size: int, image_size: int, use_mask_token: bool) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.grid = image_size // patch_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        if use_mask_token:  # unused at inference; kept so released checkpoints load strictly
            self.mask_token = nn.Parameter(torch.zeros(1, dim))
        self.patch_embeddings = _PatchEmbeddings(patch_size, dim)
        self.position_embeddings = nn.Parameter(torch.zeros(1, self.grid * self.grid + 1, dim))

    def _positions(self, n_patches: int, height: int, width: int) -> torch.Tensor:
        """HF ``interpolate_pos_encoding``: as stored for the native square grid, else bicubic
        (``align_corners=False``, no antialias) to ``(height // p, width // p)``."""
        pos = self.position_embeddings
        if n_patches == pos.shape[1] - 1 and height == width:
            return pos
        cls_pos, grid = pos[:, :1], pos[:, 1:]
        dim = grid.shape[-1]
        grid = grid.reshape(1, self.grid, self.grid, dim).permute(0, 3, 1, 2)
        size = (height // self.patch_size, width // self.patch_size)
        grid = F.interpolate(grid.float(), size=size, mode="bicubic", align_corners=False).to(pos.dtype)
        return torch.cat([cls_pos, grid.permute(0, 2, 3, 1).reshape(1, -1, dim)], dim=1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        n, _, height, width = pixels.shape
        x = self.patch_embeddings(pixels)
        x = torch.cat([self.cls_token.expand(n, -1, -1), x], dim=1)
        return x + self._positions(x.shape[1] - 1, height, width)


class _SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden_size {dim} is not divisible by num_attention_heads {num_heads}.")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.query = nn.Linear(dim, dim, bias=qkv_bias)
        self.key = nn.Linear(dim, dim, bias=qkv_bias)
        self.value = nn.Linear(dim, dim, bias=qkv_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape

        def heads(t_: torch.Tensor) -> torch.Tensor:
            return t_.view(n, t, self.num_heads, self.head_dim).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(self.query(x)), heads(self.key(x)), heads(self.value(x)))
        return out.transpose(1, 2).reshape(n, t, d)


class _SelfOutput(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dense = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(x)


class _Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.attention = _SelfAttention(dim, num_heads, qkv_bias)
        self.output = _SelfOutput(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.attention(x))


class _LayerScale(nn.Module):
    def __init__(self, dim: int, value: float) -> None:
        super().__init__()
        self.lambda1 = nn.Parameter(torch.full((dim,), float(value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.lambda1


class _MLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))  # hidden_act "gelu": the exact (erf) GELU


class _SwiGLUFFN(nn.Module):
    """HF ``Dinov2SwiGLUFFN``: hidden ``(int(int(D * r) * 2 / 3) + 7) // 8 * 8``; ``weights_in`` packs 2x."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
        self.weights_in = nn.Linear(dim, 2 * hidden)
        self.weights_out = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.weights_in(x).chunk(2, dim=-1)
        return self.weights_out(F.silu(a) * b)


class _Layer(nn.Module):
    def __init__(
        self, dim: int, num_heads: int, hidden: int, eps: float, layerscale: float, qkv_bias: bool, swiglu: bool
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attention = _Attention(dim, num_heads, qkv_bias)
        self.layer_scale1 = _LayerScale(dim, layerscale)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = _SwiGLUFFN(dim, hidden) if swiglu else _MLP(dim, hidden)
        self.layer_scale2 = _LayerScale(dim, layerscale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.layer_scale1(self.attention(self.norm1(x)))
        return x + self.layer_scale2(self.mlp(self.norm2(x)))


class _Encoder(nn.Module):
    def __init__(self, layers: list[_Layer]) -> None:
        super().__init__()
        self.layer = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x)
        return x


class Dinov2HF(Backbone):
    """HF ``Dinov2Model`` (``Dinov2Config`` field names); ``forward`` returns the class token (D).

    Parameters
    ----------
    hidden_size, num_hidden_layers, num_attention_heads, mlp_ratio, patch_size, image_size,
    layer_norm_eps, layerscale_value, qkv_bias, use_swiglu_ffn, use_mask_token
        As in ``Dinov2Config`` (defaults: the config's defaults except ``image_size``).
    num_classes
        A linear ``classifier`` on the class token, or ``None`` (an encoder).
    """

    head_name = "classifier"
    layout = "Hugging Face Dinov2Model's"
    checkpoint_prefixes = ("dinov2.",)

    def __init__(
        self,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        mlp_ratio: float = 4.0,
        patch_size: int = 14,
        image_size: int = 224,
        layer_norm_eps: float = 1e-6,
        layerscale_value: float = 1.0,
        qkv_bias: bool = True,
        use_swiglu_ffn: bool = False,
        use_mask_token: bool = True,
        num_classes: int | None = None,
    ) -> None:
        super().__init__(hidden_size)
        self.patch_size = patch_size
        self.embeddings = _Embeddings(hidden_size, patch_size, image_size, use_mask_token)
        hidden = int(hidden_size * mlp_ratio)
        args = (hidden_size, num_attention_heads, hidden, layer_norm_eps, layerscale_value, qkv_bias, use_swiglu_ffn)
        self.encoder = _Encoder([_Layer(*args) for _ in range(num_hidden_layers)])
        self.layernorm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self._set_head(num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """HF ``Dinov2PreTrainedModel._init_weights``-like: trunc-normal(0.02) weights, zero biases."""
        for m in self.modules():
            if isinstance(m, nn.Linear | nn.Conv2d):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.embeddings.position_embeddings, std=0.02)
        nn.init.trunc_normal_(self.embeddings.cls_token, std=0.02)

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """``last_hidden_state``: (n, 1 + patches, D) after the final ``layernorm``."""
        if x.shape[-1] % self.patch_size or x.shape[-2] % self.patch_size:
            raise ValueError(f"Input side {tuple(x.shape[-2:])} is not a multiple of the patch size {self.patch_size}.")
        return self.layernorm(self.encoder(self.embeddings(x)))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_tokens(x)[:, 0]
