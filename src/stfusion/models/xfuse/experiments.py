"""The XFuse paper's synthetic proof of principle (Fig. 1d-e), used by ``make demo``, the
benchmark in ``benchmarks/xfuse/synthetic.py`` and the tests.

A synthetic section (:func:`stfusion.data.synthetic.make_synthetic_section`: shapes of
three colour-coded subtypes, each expressing one marker gene, measured by 4 x 4 square
areas of 96 µm) is fitted; expression is predicted on a 1 µm grid (every image pixel) by
Monte Carlo over the posterior and scored against the per-pixel truth:

- per subtype k, the pixel-level AUC of the predicted expected count of marker k for
  "pixel is subtype k" (all pixels; background pixels are negatives), beside the
  per-spot-average baseline (each pixel gets its area's count of marker k per pixel);
- each shape pixel is classified as the subtype whose marker has the largest posterior
  mean share ``nu_k / sum_j nu_j``; the posterior SD of that share is the pixel's
  predictive SD, compared between misclassified and correctly classified pixels.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("stfusion")

# Settings of the synthetic experiment: 6 µm/px (64 x 64 working pixels; the smallest shapes
# are ~3 px across), the whole section in one 128 px patch under any rotation, a U-Net of
# depth 4 (a 64 px image has no use for 2 x 2 and 1 x 1 levels; depth 6 reaches the same
# AUCs in ~1.5x the time), 600 steps with drop-and-split every 50.
SYNTHETIC_PARAMS: dict[str, Any] = {"resolution_um": 6.0, "patch_px": 128, "batch_size": 1, "steps": 600,
                                    "metagene_interval": 50, "depth": 4}


@dataclass
class SyntheticResult:
    """Scores and maps of one synthetic experiment (maps are H x W at full resolution)."""

    auc: dict[str, float]
    baseline_auc: dict[str, float]
    sd_misclassified: float
    sd_correct: float
    n_misclassified: int
    n_shape_pixels: int
    fit_seconds: float
    predict_seconds: float
    metagenes: int
    steps: int
    params: dict[str, Any]
    label_map: np.ndarray = field(repr=False)
    mean: np.ndarray = field(repr=False)  # (K, H, W) expected counts of the markers
    sd: np.ndarray = field(repr=False)  # (K, H, W) posterior SD of the expected counts
    share_sd: np.ndarray = field(repr=False)  # (H, W) SD of the predicted class's share

    def table(self) -> list[dict[str, Any]]:
        return [{"subtype": k, "auc": self.auc[k], "baseline_auc": self.baseline_auc[k]} for k in self.auc]


def baseline_maps(section) -> np.ndarray:
    """Per-spot average: each pixel gets its area's count of each gene per pixel, (G, H, W)."""
    from scipy import sparse

    area_map = section.uns["synthetic"]["area_map"]
    x = section.X.toarray() if sparse.issparse(section.X) else np.asarray(section.X)
    n_px = np.bincount(area_map[area_map >= 0].ravel(), minlength=section.n_obs)
    per_px = x / np.maximum(n_px, 1)[:, None]
    out = np.zeros((section.n_vars, *area_map.shape), dtype=np.float32)
    inside = area_map >= 0
    out[:, inside] = per_px[area_map[inside]].T
    return out


def pixel_aucs(scores: np.ndarray, label_map: np.ndarray) -> dict[str, float]:
    """AUC of ``scores[k]`` (H x W) for pixels of subtype k, per subtype."""
    from sklearn.metrics import roc_auc_score

    return {f"subtype_{k}": float(roc_auc_score((label_map == k).ravel(), scores[k].ravel())) for k in range(len(scores))}


def posterior_grid(model, section, samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Posterior samples of the markers' expected counts on every full-resolution pixel.

    Returns ``nu`` (samples, K, H, W) and the marker gene indices.
    """
    from stfusion.models.xfuse import predict as P

    genes = [g for g in model.genes_ if g.startswith("marker_")]
    idx = np.asarray([model.genes_.index(g) for g in genes])
    data = model._data(section)
    grid = P.grid_weights(data, data.mpp, tissue_only=False)  # one cell per full-resolution pixel
    draws = model._draws(data, grid.W, samples)
    nu = P.expected_counts(draws, idx)  # samples x cells x K
    h, w = grid.shape
    out = np.zeros((nu.shape[0], len(idx), h, w), dtype=np.float32)
    out[:, :, grid.rc[:, 0], grid.rc[:, 1]] = nu.transpose(0, 2, 1)
    return out, idx


def run_synthetic(out_dir: str | Path, *, seed: int = 0, samples: int = 20, progress: bool = False,
                  threads: int | None = 1, **params: Any) -> tuple[SyntheticResult, Any, Any]:
    """Make the synthetic section (seed), fit XFuse, score it; returns (result, model, section).

    ``threads``: torch threads for the run (restored afterwards; None keeps the current
    setting). One by default: this small network gains little from a second core, and on a
    busy machine two threads are several times slower than one.
    """
    import torch

    from stfusion.data.synthetic import make_synthetic_section
    from stfusion.models.xfuse.model import XFuse

    section = make_synthetic_section(out_dir, seed=seed)
    hp = {**SYNTHETIC_PARAMS, **params}
    model = XFuse(seed=seed, progress=progress, **hp)
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        start = time.perf_counter()
        model.fit([section])
        fit_s = time.perf_counter() - start
        start = time.perf_counter()
        nu, _ = posterior_grid(model, section, samples)
        pred_s = time.perf_counter() - start
    finally:
        torch.set_num_threads(before)
    result = score(section, nu, fit_s, pred_s, model, hp)
    return result, model, section


def score(section, nu: np.ndarray, fit_s: float, pred_s: float, model, params: dict) -> SyntheticResult:
    """AUCs, baseline AUCs and the SD of misclassified vs correct pixels from posterior samples."""
    labels = section.uns["synthetic"]["label_map"]
    mean, sd = nu.mean(axis=0), nu.std(axis=0, ddof=1)
    share = nu / np.maximum(nu.sum(axis=1, keepdims=True), 1e-12)
    pred = share.mean(axis=0).argmax(axis=0)
    share_sd = np.take_along_axis(share.std(axis=0, ddof=1), pred[None], axis=0)[0]
    shape_px = labels >= 0
    wrong = shape_px & (pred != labels)
    right = shape_px & (pred == labels)
    base = baseline_maps(section)[: mean.shape[0]]
    return SyntheticResult(
        auc=pixel_aucs(mean, labels), baseline_auc=pixel_aucs(base, labels),
        sd_misclassified=float(share_sd[wrong].mean()) if wrong.any() else float("nan"),
        sd_correct=float(share_sd[right].mean()) if right.any() else float("nan"),
        n_misclassified=int(wrong.sum()), n_shape_pixels=int(shape_px.sum()), fit_seconds=fit_s,
        predict_seconds=pred_s, metagenes=int(model.expr_.n_active), steps=len(model.history_), params=dict(params),
        label_map=labels, mean=mean, sd=sd, share_sd=share_sd,
    )


def save_figures(result: SyntheticResult, section, out_dir: str | Path) -> dict[str, Path]:
    """Ground truth, inferred mean and inferred SD images (PNG with colour bars), one row per subtype."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    colors = np.asarray(section.uns["synthetic"]["subtype_colors"], dtype=float) / 255
    k_n = result.mean.shape[0]
    truth_rgb = np.ones((*result.label_map.shape, 3))
    for k in range(k_n):
        truth_rgb[result.label_map == k] = colors[k]
    paths = {}
    fig, axes = plt.subplots(k_n, 3, figsize=(11, 3.4 * k_n), squeeze=False)
    for k in range(k_n):
        truth = (result.label_map == k).astype(float) * section.uns["synthetic"]["reads_per_pixel"]
        for ax, img, title, cmap in ((axes[k, 0], truth, "truth", "viridis"), (axes[k, 1], result.mean[k], "inferred mean", "viridis"),
                                     (axes[k, 2], result.sd[k], "inferred SD", "magma")):
            im = ax.imshow(img, cmap=cmap, interpolation="nearest")
            ax.set_title(f"marker_{k}: {title}" + (f" (AUC {result.auc[f'subtype_{k}']:.3f})" if title == "inferred mean" else ""))
            ax.axis("off")
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="reads / pixel")
    fig.tight_layout()
    paths["maps"] = out_dir / "synthetic_maps.png"
    fig.savefig(paths["maps"], dpi=110)
    plt.close(fig)
    fig, axes = plt.subplots(1, 3, figsize=(12, 4))
    share = result.mean / np.maximum(result.mean.sum(axis=0, keepdims=True), 1e-12)
    comp = np.clip(np.einsum("khw,kc->hwc", share, colors) * np.clip(result.mean.sum(0) / max(np.percentile(result.mean.sum(0), 99), 1e-9), 0, 1)[..., None]
                   + (1 - np.clip(result.mean.sum(0) / max(np.percentile(result.mean.sum(0), 99), 1e-9), 0, 1))[..., None], 0, 1)
    axes[0].imshow(truth_rgb)
    axes[0].set_title("ground truth (subtype)")
    axes[1].imshow(comp)
    axes[1].set_title("inferred (marker shares x expression)")
    im = axes[2].imshow(result.share_sd, cmap="magma")
    axes[2].set_title("predictive SD of the called\nsubtype's share of the markers")
    fig.colorbar(im, ax=axes[2], fraction=0.046, pad=0.04, label="SD of the share (0-1)")
    for ax in axes:
        ax.axis("off")
    from matplotlib.patches import Patch

    fig.legend(handles=[Patch(color=colors[k], label=f"subtype {k} (marker_{k})") for k in range(k_n)],
               loc="lower center", ncol=min(k_n, 6), frameon=False, bbox_to_anchor=(0.5, -0.02))
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    paths["summary"] = out_dir / "synthetic_summary.png"
    fig.savefig(paths["summary"], dpi=110, bbox_inches="tight")
    plt.close(fig)
    return paths
