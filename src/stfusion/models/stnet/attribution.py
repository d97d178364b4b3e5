"""Integrated-gradients attribution of one gene's prediction to the pixels of a spot's patch.

Uses captum's :class:`~captum.attr.IntegratedGradients` (Gauss-Legendre path integral
from a baseline image to the patch). The default baseline is a white image, i.e. "no
tissue" for H&E. Attributions satisfy completeness: their sum equals the prediction at
the patch minus the prediction at the baseline (up to the integral's error, returned as
``delta``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import torch

from stfusion.errors import StfusionError
from stfusion.models.stnet.nn import STNetNet, to_tensor


def integrated_gradients(
    net: STNetNet,
    patches: np.ndarray,
    gene_index: int,
    *,
    baseline: str | float = "white",
    steps: int = 50,
) -> tuple[np.ndarray, np.ndarray]:
    """Attributions (N, H, W, 3) of output ``gene_index`` for uint8 patches, and the completeness gap (N,).

    ``baseline``: ``"white"`` (255), ``"black"`` (0), or a grey level in [0, 1].
    """
    from captum.attr import IntegratedGradients

    x = to_tensor(patches)
    level = {"white": 1.0, "black": 0.0}.get(baseline, baseline) if isinstance(baseline, str) else float(baseline)
    if isinstance(level, str):
        raise ValueError(f"baseline must be 'white', 'black' or a number in [0, 1], got {baseline!r}.")
    base = torch.full_like(x, float(level))
    was_training = net.training
    net.eval()
    try:
        ig = IntegratedGradients(net)
        attr, delta = ig.attribute(x, baselines=base, target=int(gene_index), n_steps=int(steps),
                                   return_convergence_delta=True)
    finally:
        net.train(was_training)
    return attr.detach().permute(0, 2, 3, 1).numpy(), delta.detach().numpy()


def attribution_maps(
    model,
    section: ad.AnnData,
    gene: str,
    spots: Sequence[str],
    out_dir: str | Path,
    *,
    steps: int = 50,
    baseline: str | float = "white",
) -> list[Path]:
    """Save one PNG overlay (patch | attribution heat map) per spot for ``gene``; returns the paths.

    ``model`` is a fitted :class:`~stfusion.models.stnet.STNet`; ``spots`` are obs names of
    ``section``. Files are ``<out_dir>/<gene>_<spot>.png``.
    """
    from stfusion.data.section import spot_coords
    from stfusion.pl.attribution import attribution_overlay

    genes = model._check_fitted()
    if gene not in genes:
        raise StfusionError(f"Gene {gene!r} is not predicted by this model; choose one of its {len(genes)} genes (model.genes_).")
    idx = section.obs_names.get_indexer(list(spots))
    if (idx < 0).any():
        missing = [s for s, i in zip(spots, idx) if i < 0]
        raise StfusionError(f"Spots {missing[:3]} are not in the section; pass names from section.obs_names.")
    patches = model.patches(section, spot_coords(section)[idx])
    attr, _ = integrated_gradients(model.net_, patches, genes.index(gene), baseline=baseline, steps=steps)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for spot, patch, a in zip(spots, patches, attr):
        fig = attribution_overlay(patch, a, title=f"{gene} @ {spot}")
        path = out_dir / f"{_safe(gene)}_{_safe(spot)}.png"
        fig.savefig(path, dpi=100, bbox_inches="tight")
        _close(fig)
        paths.append(path)
    return paths


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))


def _close(fig) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)
