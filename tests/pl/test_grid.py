"""Grid previews and the summary map (issue 27 item 6): plain colour bars, one set of µm axes, colour."""

from __future__ import annotations

import numpy as np

from stfusion.pl.grid import grid_preview, summary_map
from stfusion.pl.style import add_colorbar, colour_limits


def _bar_text(fig) -> list[str]:
    fig.canvas.draw()
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    return [bar.yaxis.get_offset_text().get_text() for bar in bars]


def test_nearly_constant_map_has_no_offset_noise_on_its_colour_bar():
    rng = np.random.default_rng(0)
    mean = 6.688375 + 1e-7 * rng.random((20, 30))
    lo, hi = colour_limits(mean)
    assert hi - lo > 1e-3 and lo < 6.688375 < hi  # the noise is not stretched over the colour map
    fig = grid_preview(mean, 0.01 + 1e-9 * rng.random((20, 30)), "Gad1", um=10.0, origin=(5, 7))
    assert _bar_text(fig) == ["", ""]


def test_plain_matplotlib_bar_would_show_the_offset():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    art = ax.imshow(6.688375 + 1e-7 * np.random.default_rng(0).random((5, 5)))
    fig.colorbar(art, ax=ax)
    assert any(_bar_text(fig))  # what add_colorbar prevents
    fig2, ax2 = plt.subplots()
    add_colorbar(fig2, ax2.imshow(6.688375 + 1e-7 * np.random.default_rng(0).random((5, 5))), ax2)
    assert not any(_bar_text(fig2))
    plt.close("all")


def test_preview_and_summary_share_um_axes_from_the_image_corner():
    rgb = np.full((100, 100, 3), 255, np.uint8)
    rgb[20:60, 30:90] = 120  # tissue: rows 20-59, cols 30-89 of 10 µm pixels
    rgb[20:60, 30:60, 0] = 125  # a faint difference between two metagene regions
    summary = summary_map(rgb, um=10.0)
    preview = grid_preview(np.ones((40, 60)), None, "g", um=10.0, origin=(20, 30))
    assert summary.axes[0].get_xlim() == preview.axes[0].get_xlim() == (300.0, 900.0)
    drawn = summary.axes[0].images[0].get_array()
    assert np.ptp(drawn[..., 0]) > 200  # stretched: the faint difference shows as colour, not grey
    assert any(line.get_gid() == "scale_bar" for line in summary.axes[0].lines)
