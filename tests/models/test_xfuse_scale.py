"""XFuse's optional image -> scale path (``image_scale=True``, stfusion's extension): it starts
with no effect, reads the image's local colour statistics, and is saved with the model."""

from __future__ import annotations

import pytest
import torch

from stfusion.models.xfuse.nn import XFuseNet, local_colour_stats


def test_local_colour_stats_are_local_means_of_channels_and_squares() -> None:
    image = torch.zeros(1, 3, 9, 9)
    image[:, :, 4, 4] = 0.5
    stats = local_colour_stats(image, kernel=3)
    assert stats.shape == (1, 6, 9, 9)
    assert torch.allclose(stats[0, 0, 4, 4], torch.tensor(0.5 / 9)) and torch.allclose(stats[0, 3, 3, 3], torch.tensor(0.25 / 9))
    assert stats[0, 0, 0, 0] == 0  # far from the bright pixel
    assert torch.allclose(local_colour_stats(torch.full((1, 3, 5, 5), 0.3), 3)[0, :3], torch.tensor(0.3))  # no padding bias


def test_image_scale_path_starts_neutral_then_follows_the_image() -> None:
    torch.manual_seed(0)
    plain, extended = XFuseNet(2, 4, 3), XFuseNet(2, 4, 3, image_scale=True)
    extended.load_state_dict(plain.state_dict(), strict=False)
    image = torch.rand(1, 3, 16, 16) * 1.8 - 0.9
    feats = plain.features(plain.encode(image).sample(mean=True))
    assert torch.allclose(plain.scale(feats), extended.scale(feats, image=image))  # zero-initialised: no effect yet
    with pytest.raises(ValueError, match="image_scale=True"):
        extended.scale(feats)
    with torch.no_grad():
        extended.image_scale_head.weight[0, 0] = -2.0  # darker (lower red) -> more counts
    dark, light = image.clone(), image.clone()
    dark[:, 0], light[:, 0] = -0.9, 0.9
    assert (extended.scale(feats, image=dark) > extended.scale(feats, image=light)).all()
    assert "image_scale_head.weight" in extended.state_dict() and "image_scale_head.weight" not in plain.state_dict()


def test_background_margin_leaves_pixels_near_the_tissue_out_of_the_background() -> None:
    """``background_margin_um``: pale tissue beside the mask must not be taught to hold zero counts."""
    import numpy as np

    from stfusion.models.xfuse import XFuse
    from stfusion.models.xfuse.data import BACKGROUND, UNOBSERVED, discs_spec, label_map

    tissue = np.zeros((20, 20), dtype=bool)
    tissue[5:15, 5:15] = True
    spec = discs_spec(np.array([[10.0, 10.0]]), 1.0)  # one spot in the middle (fx = fy = 1)
    plain, margin = label_map(spec, tissue, 1.0, 1.0), label_map(spec, tissue, 1.0, 1.0, background_margin_px=3.0)
    assert plain[10, 10] == margin[10, 10] == 1
    assert plain[5, 3] == BACKGROUND and margin[5, 3] == UNOBSERVED  # 2 px from the tissue
    assert plain[5, 1] == margin[5, 1] == BACKGROUND  # 4 px away
    for strip in (np.s_[5:15, 2:5], np.s_[5:15, 15:18], np.s_[2:5, 5:15], np.s_[15:18, 5:15]):  # 1-3 px beside each edge
        assert (margin[strip] == UNOBSERVED).all() and (plain[strip] == BACKGROUND).all()
    assert (plain == BACKGROUND).sum() > (margin == BACKGROUND).sum() > 0
    with pytest.raises(Exception, match="background_margin_um"):
        XFuse(background_margin_um=-1)
