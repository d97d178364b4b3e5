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


def test_image_scale_starts_from_the_ridge_of_spot_depth_on_colour() -> None:
    """image_scale=True: the path starts where a ridge regression of each training spot's log count
    density on its mean local colour statistics ends, so darker-and-denser spots start with a larger scale."""
    import numpy as np

    from stfusion.models.xfuse.data import SectionData
    from stfusion.models.xfuse.nn import local_colour_stats
    from stfusion.models.xfuse.sampling import image_tensor, to_model_range
    from stfusion.models.xfuse.scale_init import LOG_SOFTPLUS_SLOPE, init_image_scale

    rng = np.random.default_rng(0)
    n, side = 36, 6  # 6 x 6 spots of 6 x 6 pixels, each of one grey level
    grey = rng.uniform(60, 220, n)
    image = np.zeros((36, 36, 3), dtype=np.uint8)
    labels = np.zeros((36, 36), dtype=np.int32)
    for i in range(n):
        r, c = divmod(i, 6)
        image[r * side:(r + 1) * side, c * side:(c + 1) * side] = grey[i]
        labels[r * side:(r + 1) * side, c * side:(c + 1) * side] = i + 1
    density = np.exp(2.0 - grey / 80.0)  # darker spots hold more counts per pixel
    counts = np.outer(density * side * side, [0.6, 0.4]).astype(np.float32)
    data = SectionData("s", image, np.ones((36, 36), bool), 1.0, 1.0, 1.0, (36, 36), np.zeros(0, np.float32),
                       labels=labels, counts=counts)
    net = XFuseNet(2, 4, 3, image_scale=True)
    info = init_image_scale(net, [data], kernel=1)
    assert info["spots"] == n and info["r"] > 0.99
    with torch.no_grad():
        pre = net.image_scale_head(local_colour_stats(to_model_range(image_tensor(image))[None], 1))[0, 0].numpy()
    per_spot = np.array([pre[labels == i + 1].mean() for i in range(n)])
    assert abs(per_spot.mean()) < 1e-4  # the mean pre-activation is unchanged: the genes' baselines keep the level
    slope = np.polyfit(np.log(density), per_spot * LOG_SOFTPLUS_SLOPE, 1)[0]
    assert 0.9 < slope < 1.1  # one unit of log density is one unit of log scale (linearised at s = 1)
