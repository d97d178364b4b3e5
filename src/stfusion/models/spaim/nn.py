"""SpaIM's torch modules and losses (Li et al., Nat Commun 2025), written from the paper's description.

One sample is one gene. The ST autoencoder encodes a gene's spatial profile (N cells) into
content and style at two depths (N -> h1 -> h2, default 512 -> 256); the ST generator encodes
the gene's reference content (K clusters) the other way round (K -> h2 -> h1) and a learned
style code from a constant input; both decode through one shared decoder that fuses
content * style at each depth and adds the deeper decoded output (recursive style transfer,
ReST). Every encoder layer is Linear -> LayerNorm -> ReLU; the decoder's last layer is linear.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["ReSTLayer", "SpaIMNet", "gram_matrix", "spaim_loss"]


class ReSTLayer(nn.Module):
    """Linear -> LayerNorm -> ReLU (``norm=False``: the plain linear map, for the output layer)."""

    def __init__(self, n_in: int, n_out: int, norm: bool = True) -> None:
        super().__init__()
        self.linear = nn.Linear(n_in, n_out)
        self.norm = nn.LayerNorm(n_out) if norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x)
        return x if self.norm is None else F.relu(self.norm(x))


class SpaIMNet(nn.Module):
    """ST autoencoder + ST generator sharing one decoder.

    Parameters
    ----------
    n_clusters
        K, the reference clusters (width of the content input).
    n_cells
        N, the spatial cells: the output layer has N units, so a net belongs to one dataset.
    hidden
        ``(h1, h2)``: widths at depth 1 and 2 (default 512, 256 as the reference code).
    style_dim
        Width of the constant input of the style encoders (1 in the reference code).
    """

    def __init__(self, n_clusters: int, n_cells: int, hidden: tuple[int, int] = (512, 256), style_dim: int = 1) -> None:
        super().__init__()
        h1, h2 = (int(h) for h in hidden)
        self.style_dim = int(style_dim)
        self.st_content1, self.st_content2 = ReSTLayer(n_cells, h1), ReSTLayer(h1, h2)
        self.st_style1, self.st_style2 = ReSTLayer(n_cells, h1), ReSTLayer(h1, h2)
        self.sc_content2, self.sc_content1 = ReSTLayer(n_clusters, h2), ReSTLayer(h2, h1)
        self.gen_style2, self.gen_style1 = ReSTLayer(self.style_dim, h2), ReSTLayer(self.style_dim, h1)
        self.dec2, self.dec1 = ReSTLayer(h2, h1), ReSTLayer(h1, n_cells, norm=False)

    def decode(self, c1: torch.Tensor, c2: torch.Tensor, s1: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
        """Shared decoder: fuse content * style at depth 2, decode, add the depth-1 fusion, decode."""
        return self.dec1(self.dec2(c2 * s2) + c1 * s1)

    def generate(self, content: torch.Tensor) -> dict[str, torch.Tensor]:
        """ST generator: reference content (genes x K) -> predicted spatial profiles (genes x N)."""
        c2 = self.sc_content2(content)
        c1 = self.sc_content1(c2)
        style_in = content.new_ones(content.shape[0], self.style_dim)
        s2, s1 = self.gen_style2(style_in), self.gen_style1(style_in)
        return {"sc_content1": c1, "sc_content2": c2, "gen_style1": s1, "gen_style2": s2,
                "fake": self.decode(c1, c2, s1, s2)}  # fmt: skip

    def forward(self, content: torch.Tensor, spatial: torch.Tensor) -> dict[str, torch.Tensor]:
        """Both paths (training): contents, styles, the autoencoder's ``real`` and the generator's ``fake``."""
        c1 = self.st_content1(spatial)
        c2 = self.st_content2(c1)
        s1 = self.st_style1(spatial)
        s2 = self.st_style2(s1)
        out = self.generate(content)
        out.update({"st_content1": c1, "st_content2": c2, "st_style1": s1, "st_style2": s2,
                    "real": self.decode(c1, c2, s1, s2)})  # fmt: skip
        return out


def gram_matrix(feat: torch.Tensor) -> torch.Tensor:
    """Gram matrix over a batch of genes: ``feat @ feat.T / (batch * width)``."""
    b, d = feat.shape
    return feat @ feat.T / (b * d)


def spaim_loss(out: dict[str, torch.Tensor], spatial: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Content MSE + Gram style MSE + cosine reconstruction losses, at both depths.

    As the reference implementation: content MSE between ST and reference content (gradients
    to both), style MSE between the Gram matrices of the generator's style and the
    autoencoder's style (the latter detached, the target), ``1 - cos(real, fake)`` for the
    generator and ``1 - cos(real, spatial)`` for the autoencoder, cosine over cells per gene.
    Returns the total and its detached terms.
    """
    content = sum(F.mse_loss(out[f"st_content{d}"], out[f"sc_content{d}"]) for d in (1, 2))
    style = sum(
        F.mse_loss(gram_matrix(out[f"gen_style{d}"]), gram_matrix(out[f"st_style{d}"]).detach()) for d in (1, 2)
    )
    gen = 1.0 - F.cosine_similarity(out["real"], out["fake"], dim=1).mean()
    auto = 1.0 - F.cosine_similarity(out["real"], spatial, dim=1).mean()
    parts = {"content": content, "style": style, "cos_gen": gen, "cos_auto": auto}
    return content + style + gen + auto, {k: v.detach() for k, v in parts.items()}
