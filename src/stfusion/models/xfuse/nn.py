"""XFuse's networks: a convolutional U-Net recognition network (encoder) and generator
(decoder) with one diagonal-Gaussian latent map per scale.

The encoder maps an image (B, 3, H, W), pixels in [-0.9, 0.9], to the variational
posterior q(Z | image) = N(mu_l, sd_l) at every level l (1/2^l of the input resolution,
``widths[l]`` channels, 1x1-convolution heads). The decoder maps latent samples, deepest
first, back up the scales (nearest-neighbour upsampling, concatenation with the next
level's latent, two 3x3 convolutions, each followed by group normalisation and a leaky
ReLU) to per-pixel features, and 1x1 heads give:

- the image likelihood's mean (tanh) and standard deviation (softplus + 0.01),
- the scale ``s`` (softplus), and
- metagene logits; activities are ``softmax`` over the active metagenes.

With an expression field (:mod:`.field`), its offsets are added to the scale's
pre-activation and to the metagene logits (``field_at``, ``scale``, ``activities``).

Depth 6 and base width 16 (channels 16 -> 512) are the reference implementation's sizes.
Both networks are fully convolutional (translation-equivariant), so patches of any size and
whole sections go through the same weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

IMAGE_RANGE = 0.9  # pixels are scaled to [-0.9, 0.9]
_SLOPE = 0.2
_MIN_SD = 1e-3
INIT_LATENT_SD_RAW = -1.0502  # softplus(-1.0502) = 0.3
_MIN_IMAGE_SD = 0.01  # about one 8-bit grey level in [-0.9, 0.9]; keeps the image likelihood bounded


def widths(depth: int, base_width: int, max_width: int = 512) -> list[int]:
    """Channels per level: base_width * 2^level, capped at ``max_width``."""
    return [min(int(base_width) * 2**level, int(max_width)) for level in range(int(depth))]


def _norm(channels: int) -> nn.GroupNorm:
    """Group normalisation (batch-size independent: batches here are a few patches)."""
    return nn.GroupNorm(min(8, max(1, channels // 4)), channels)


def _block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1),
        _norm(c_out),
        nn.LeakyReLU(_SLOPE),
        nn.Conv2d(c_out, c_out, 3, padding=1),
        _norm(c_out),
        nn.LeakyReLU(_SLOPE),
    )


@dataclass
class Latents:
    """Posterior parameters of Z, one (mu, sd) pair of (B, C_l, H_l, W_l) maps per level."""

    mu: list[torch.Tensor]
    sd: list[torch.Tensor]

    def sample(self, generator: torch.Generator | None = None, mean: bool = False) -> list[torch.Tensor]:
        """Reparameterised samples (or the means)."""
        if mean:
            return list(self.mu)
        out = []
        for mu, sd in zip(self.mu, self.sd, strict=True):
            eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
            out.append(mu + sd * eps)
        return out

    def kl(self, valid: torch.Tensor | None = None) -> torch.Tensor:
        """KL(q || N(0, I)) per batch item, summed over levels, channels and (valid) positions.

        ``valid``: (B, 1, H, W) weights at the input resolution; each level uses their
        average over its cells, so padding outside the image adds no KL.
        """
        total = 0.0
        for mu, sd in zip(self.mu, self.sd, strict=True):
            kl = 0.5 * (mu**2 + sd**2 - 1.0) - torch.log(sd)
            if valid is not None:
                w = F.adaptive_avg_pool2d(valid, mu.shape[-2:]) if valid.shape[-2:] != mu.shape[-2:] else valid
                kl = kl * w
            total = total + kl.sum(dim=(1, 2, 3))
        return total


SCALE_INIT_BIAS = 0.5413  # the scale head's initial bias: softplus(0.5413) = 1, so s starts at 1
IMAGE_SCALE_KERNEL = 5  # working pixels averaged by the image-scale path (50 µm at the fast preset's 10 µm/px)


def local_colour_stats(image: torch.Tensor, kernel: int = IMAGE_SCALE_KERNEL) -> torch.Tensor:
    """Local means of each channel and of its square over ``kernel`` x ``kernel`` pixels, (B, 6, H, W):
    how dark and how varied (cell-dense) the tissue around each pixel looks."""
    x = torch.cat([image, image * image], dim=1)
    return F.avg_pool2d(x, kernel, stride=1, padding=kernel // 2, count_include_pad=False)


class XFuseNet(nn.Module):
    """Encoder + decoder + heads; see the module docstring.

    Parameters
    ----------
    depth, base_width, max_width
        Levels of the U-Net and channels of its first level (doubling per level, capped).
    max_metagenes
        Metagene logit channels (the cap of drop-and-split; inactive ones are masked).
    """

    def __init__(self, depth: int = 6, base_width: int = 16, max_metagenes: int = 40, max_width: int = 512,
                 image_scale: bool = False) -> None:
        super().__init__()
        if depth < 1 or base_width < 1 or max_metagenes < 1:
            raise ValueError(f"depth, base_width and max_metagenes must be >= 1, got {depth}, {base_width}, {max_metagenes}.")
        ws = widths(depth, base_width, max_width)
        self.widths = ws
        self.encoders = nn.ModuleList(
            [_block(3 if lv == 0 else ws[lv - 1], ws[lv], stride=1 if lv == 0 else 2) for lv in range(depth)]
        )
        self.latent_heads = nn.ModuleList([nn.Conv2d(w, 2 * w, 1) for w in ws])
        self.top = nn.Sequential(nn.Conv2d(ws[-1], ws[-1], 3, padding=1), nn.LeakyReLU(_SLOPE))
        self.decoders = nn.ModuleList([_block(ws[lv + 1] + ws[lv], ws[lv]) for lv in range(depth - 1)])
        self.image_mean_head = nn.Conv2d(ws[0], 3, 1)
        self.image_sd_head = nn.Conv2d(ws[0], 3, 1)
        self.scale_head = nn.Conv2d(ws[0], 1, 1)
        self.metagene_head = nn.Conv2d(ws[0], int(max_metagenes), 1)
        # stfusion's extension (not the paper's): the image's local colour statistics -> log scale
        self.image_scale_head = nn.Conv2d(2 * 3, 1, 1) if image_scale else None
        self.field = None  # per-section expression field (:class:`.field.ExpressionField`), when trained with one
        self._init_heads()

    def _init_heads(self) -> None:
        # Posterior means start as random projections of the encoder features (the default
        # init, as the reference) and posterior SDs at 0.3, so the image passes through the
        # latents from the first step; the KL warm-up of training then moves them to the prior.
        for head in self.latent_heads:
            half = head.bias.shape[0] // 2
            nn.init.normal_(head.weight[half:], std=1e-2)
            nn.init.zeros_(head.bias)
            head.bias.data[half:] = INIT_LATENT_SD_RAW
        self.init_image_heads(torch.zeros(3), torch.full((3,), 0.3))
        nn.init.zeros_(self.metagene_head.weight)
        nn.init.zeros_(self.metagene_head.bias)
        nn.init.normal_(self.scale_head.weight, std=1e-2)
        nn.init.constant_(self.scale_head.bias, SCALE_INIT_BIAS)
        if self.image_scale_head is not None:  # starts with no effect
            nn.init.zeros_(self.image_scale_head.weight)
            nn.init.zeros_(self.image_scale_head.bias)

    @torch.no_grad()
    def init_image_heads(self, mean: torch.Tensor, sd: torch.Tensor) -> None:
        """Centre the image likelihood on the training images' per-channel mean and SD, as
        the reference does (small weights, so every pixel starts near the average colour and
        gradients still reach the decoder)."""
        for head, value in ((self.image_mean_head, torch.atanh(mean.clamp(-0.99, 0.99))),
                            (self.image_sd_head, torch.log(torch.expm1((sd - _MIN_IMAGE_SD).clamp_min(1e-3))))):
            nn.init.normal_(head.weight, std=0.05)
            head.bias.copy_(value)

    @property
    def depth(self) -> int:
        return len(self.widths)

    def encode(self, x: torch.Tensor) -> Latents:
        """q(Z | image) at every level."""
        mus, sds = [], []
        h = x
        for enc, head in zip(self.encoders, self.latent_heads, strict=True):
            h = enc(h)
            mu, raw = head(h).chunk(2, dim=1)
            mus.append(mu)
            sds.append(F.softplus(raw) + _MIN_SD)
        return Latents(mus, sds)

    def features(self, zs: list[torch.Tensor]) -> torch.Tensor:
        """Per-pixel decoder features at the input resolution from latent maps (finest first)."""
        h = self.top(zs[-1])
        for lv in range(self.depth - 2, -1, -1):
            h = F.interpolate(h, size=zs[lv].shape[-2:], mode="nearest")
            h = self.decoders[lv](torch.cat([h, zs[lv]], dim=1))
        return h

    def image_params(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean (tanh, in [-1, 1]) and SD of the Gaussian image likelihood, (B, 3, H, W) each."""
        return torch.tanh(self.image_mean_head(feats)), F.softplus(self.image_sd_head(feats)) + _MIN_IMAGE_SD

    def field_at(self, place, hw) -> torch.Tensor | None:
        """The expression field's offsets over patches placed by ``place`` (a
        :class:`.field.Placement`; None without a field or a placement)."""
        if self.field is None or place is None:
            return None
        return self.field.read(place, hw)

    def scale(self, feats: torch.Tensor, field: torch.Tensor | None = None, image: torch.Tensor | None = None) -> torch.Tensor:
        """Per-pixel scale s >= 0, (B, 1, H, W); ``field``: :meth:`field_at`'s offsets; ``image``: the
        network's input, read by the image-scale path when the network has one."""
        pre = self.scale_head(feats)
        if self.image_scale_head is not None:
            if image is None:
                raise ValueError("this XFuse network reads the image for its scale (image_scale=True): pass image=.")
            pre = pre + self.image_scale_head(local_colour_stats(image))
        return F.softplus(pre if field is None else pre + field[:, -1:])

    def metagene_logits(self, feats: torch.Tensor, active: torch.Tensor, field: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of the active metagenes, (B, M_active, H, W)."""
        logits = self.metagene_head(feats)
        if field is not None:
            logits = logits + field[:, :-1]
        return logits[:, active]

    def activities(self, feats: torch.Tensor, active: torch.Tensor, field: torch.Tensor | None = None) -> torch.Tensor:
        """Softmax metagene activities over the active metagenes, (B, M_active, H, W)."""
        return torch.softmax(self.metagene_logits(feats, active, field), dim=1)
