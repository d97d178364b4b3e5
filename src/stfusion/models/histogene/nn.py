"""HisToGene's network: a vision transformer over the spot patches of a section.

Each token is one spot: its flattened patch, linearly embedded to ``dim``, plus a learned
embedding of its grid column and one of its grid row (a one-hot vector over ``grid_size``
entries followed by a linear map is the same as a lookup table, so ``nn.Embedding``).
``depth`` pre-norm transformer blocks (multi-head self-attention + a GELU MLP of width
``mlp_ratio * dim``, dropout) follow, then a LayerNorm + linear head to the genes, as in
Pang et al. 2021. Sections of different lengths are batched by padding; ``mask`` marks
the real tokens and padded keys get no attention.
"""

from __future__ import annotations

import torch
from torch import nn


class Block(nn.Module):
    """Pre-norm transformer encoder block whose attention weights can be returned."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 2.0, dropout: float = 0.1) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim), nn.Dropout(dropout)
        )

    def forward(
        self, x: torch.Tensor, pad: torch.Tensor | None = None, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``x`` (B, N, D); ``pad`` (B, N) True at padded tokens. Returns (x, weights (B, H, N, N) or None)."""
        h = self.norm1(x)
        out, w = self.attn(h, h, h, key_padding_mask=pad, need_weights=need_weights, average_attn_weights=False)
        x = x + self.drop(out)
        x = x + self.mlp(self.norm2(x))
        return x, w


class HisToGeneNet(nn.Module):
    """Patch + position embedding, ``depth`` transformer blocks, linear gene head.

    Parameters
    ----------
    patch_dim
        Length of a flattened patch (``3 * px * px``).
    n_genes
        Outputs per token.
    dim, depth, heads, dropout, mlp_ratio
        Transformer size (paper: 1024, 8, 16, 0.1; the reference code's MLP is 2 x dim).
    grid_size
        Entries of each position table (paper: 30; reference code: 64).
    """

    def __init__(
        self,
        patch_dim: int,
        n_genes: int,
        *,
        dim: int = 1024,
        depth: int = 8,
        heads: int = 16,
        dropout: float = 0.1,
        mlp_ratio: float = 2.0,
        grid_size: int = 64,
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads}); pick e.g. dim={heads * 16}.")
        self.grid_size = int(grid_size)
        self.patch_embed = nn.Linear(patch_dim, dim)
        self.x_embed = nn.Embedding(grid_size, dim)
        self.y_embed = nn.Embedding(grid_size, dim)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList([Block(dim, heads, mlp_ratio, dropout) for _ in range(depth)])
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, n_genes))

    def embed(self, patches: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Sum of patch, column and row embeddings: (B, N, P), (B, N, 2) -> (B, N, D)."""
        return self.drop(self.patch_embed(patches) + self.x_embed(pos[..., 0]) + self.y_embed(pos[..., 1]))

    def forward(
        self,
        patches: torch.Tensor,
        pos: torch.Tensor,
        mask: torch.Tensor | None = None,
        return_attention: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Predictions (B, N, G); with ``return_attention`` also one (B, H, N, N) tensor per layer.

        ``mask`` (B, N) is True at real tokens (default: all real).
        """
        pad = None if mask is None else ~mask.bool()
        x = self.embed(patches, pos)
        weights = []
        for block in self.blocks:
            x, w = block(x, pad, need_weights=return_attention)
            if return_attention:
                weights.append(w)
        out = self.head(x)
        return (out, weights) if return_attention else out


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the real tokens only (mask (B, N) True at real tokens)."""
    m = mask.to(pred.dtype).unsqueeze(-1)
    n = m.sum() * pred.shape[-1]
    return ((pred - target) ** 2 * m).sum() / n.clamp_min(1.0)
