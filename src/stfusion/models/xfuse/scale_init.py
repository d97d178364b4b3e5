"""A starting point for XFuse's image -> scale path (``image_scale=True``): a ridge regression of
each training spot's log count density on its mean local colour statistics.

The path adds ``w · stats(x) + b`` (:func:`.nn.local_colour_stats`) to the scale's
pre-activation. Learnt from zero it moves slowly (a few hundred steps change little, see
``benchmarks/xfuse/diagnostics/toy_totals.md``), while a direct regression of spot depth on the
same statistics already predicts it. So the path starts where that regression ends:
``log(total_i / pixels_i) ~ a + c · mean stats_i`` over the training spots (ridge on
standardised statistics), turned into pre-activation units by the slope of ``log softplus`` at
the scale's starting point (s = 1), with the bias chosen so the mean pre-activation over the
spots is unchanged (the genes' baselines keep the overall level). Training goes on from there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from stfusion.models.xfuse.data import SectionData
from stfusion.models.xfuse.nn import SCALE_INIT_BIAS, XFuseNet, local_colour_stats
from stfusion.models.xfuse.sampling import image_tensor, to_model_range
from stfusion.models.xfuse.training import baseline_sizes

__all__ = ["LOG_SOFTPLUS_SLOPE", "init_image_scale", "spot_colour_stats"]

LOG_SOFTPLUS_SLOPE = (1.0 / (1.0 + math.exp(-SCALE_INIT_BIAS))) / math.log1p(math.exp(SCALE_INIT_BIAS))  # d log s / d pre at s = 1
RIDGE_ALPHA = 1.0


def spot_colour_stats(data: SectionData, kernel: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean local colour statistics (n_obs, 6) of each observation's pixels and its pixel count."""
    with torch.no_grad():
        img = to_model_range(image_tensor(data.image))[None]
        stats = local_colour_stats(img, kernel)[0].reshape(6, -1).numpy().T.astype(np.float64)
    n = data.counts.shape[0]
    lab = data.labels.ravel()
    inside = lab > 0
    sums = np.zeros((n, 6))
    np.add.at(sums, lab[inside] - 1, stats[inside])
    pixels = baseline_sizes(data.labels, n)
    return sums / np.maximum(pixels, 1.0)[:, None], pixels


def init_image_scale(net: XFuseNet, datas: Sequence[SectionData], kernel: int) -> dict[str, float]:
    """Set ``net.image_scale_head`` from the ridge regression (see the module docstring); returns
    the regression's in-sample Pearson r and the number of spots it used."""
    from sklearn.linear_model import Ridge

    xs, ys = [], []
    for d in datas:
        stats, pixels = spot_colour_stats(d, kernel)
        totals = d.counts.sum(axis=1)
        ok = (pixels > 0) & (totals > 0)
        xs.append(stats[ok])
        ys.append(np.log(totals[ok] / pixels[ok]))
    x, y = np.concatenate(xs), np.concatenate(ys)
    if len(y) < 10 or np.std(y) == 0:
        return {"r": float("nan"), "spots": len(y)}
    mean, sd = x.mean(axis=0), np.maximum(x.std(axis=0), 1e-6)
    ridge = Ridge(alpha=RIDGE_ALPHA).fit((x - mean) / sd, y)
    coef = ridge.coef_ / sd / LOG_SOFTPLUS_SLOPE  # per raw statistic, in pre-activation units
    with torch.no_grad():
        net.image_scale_head.weight.copy_(torch.as_tensor(coef, dtype=torch.float32).reshape(1, 6, 1, 1))
        net.image_scale_head.bias.fill_(float(-coef @ mean))
    r = float(np.corrcoef(ridge.predict((x - mean) / sd), y)[0, 1])
    return {"r": r, "spots": len(y)}
