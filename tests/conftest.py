"""Shared fixtures. Real data is read in place from ../shared/data (or $STFUSION_SHARED_DATA)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test, restored after: the nets in these tests are tiny, and one
    thread avoids oversubscribing a shared 2-core CI machine. Use with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def shared_data_dir() -> Path:
    return Path(os.environ.get("STFUSION_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the shared real data; tests that need it skip with a reason when it is absent."""
    root = shared_data_dir()
    if not root.is_dir():
        pytest.skip(f"real data not found at {root} (set STFUSION_SHARED_DATA to its folder)")
    return root


def need(root: Path, rel: str) -> Path:
    """A dataset folder below the shared data root, or skip with the reason."""
    path = root / rel
    if not path.exists():
        pytest.skip(f"{rel} not found under {root}")
    return path


def _mean_under(grey, xy, r):
    import numpy as np

    vals = []
    for x, y in xy:
        x0, y0 = int(round(x)), int(round(y))
        win = grey[max(0, y0 - r) : y0 + r + 1, max(0, x0 - r) : x0 + r + 1]
        if win.size:
            vals.append(win.mean())
    return float(np.mean(vals))


def assert_spots_on_tissue(adata, image_key: str = "hires", margin: float = 5.0, check_swap: bool = True) -> None:
    """Spot centres must lie on tissue: the image is darker under spots than the slide's background.

    This is the check that catches swapped x/y and a wrong scale factor. It samples the
    stored preview image at each spot centre (a disc of the spot's diameter) and compares
    the mean grey level under spots with the median grey level of the slide's background
    (pixels brighter than the Otsu threshold: on a her2st slide most of the image is
    tissue, so the median of all pixels is not background). When the x/y-swapped placement
    also fits in the image, the true placement must be darker than the swapped one too
    (``check_swap=False`` where the tissue is symmetric enough that both placements land on it;
    such tests need their own swap check).
    """
    import numpy as np
    from skimage.filters import threshold_otsu

    from stfusion import _constants as K
    from stfusion.data import spatial_info

    lib = spatial_info(adata)
    img = np.asarray(lib[K.IMAGES][image_key], dtype=float)
    grey = img[..., :3].mean(axis=2) if img.ndim == 3 else img
    if grey.max() <= 1.0:
        grey = grey * 255.0
    scalef = lib[K.SCALEFACTORS][K.HIRES_SCALEF if image_key == K.HIRES else K.LOWRES_SCALEF]
    xy = np.asarray(adata.obsm[K.SPATIAL]) * scalef
    r = max(1, int(round(lib[K.SCALEFACTORS][K.SPOT_DIAMETER_FULLRES] * scalef / 2)))
    under = _mean_under(grey, xy, r)
    background = float(np.median(grey[grey > threshold_otsu(grey)]))
    assert under < background - margin, (
        f"spots are not on tissue: mean grey under spots {under:.1f} vs slide background {background:.1f}"
    )
    h, w = grey.shape
    swapped = xy[:, ::-1]
    if check_swap and (swapped[:, 0] < w).all() and (swapped[:, 1] < h).all():
        other = _mean_under(grey, swapped, r)
        assert under < other - margin, f"spots are not darker than with x/y swapped: {under:.1f} vs {other:.1f}"
