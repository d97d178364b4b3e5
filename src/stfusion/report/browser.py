"""Render a report in headless Chromium and check the screenshot is a real page.

Used by ``benchmarks/report_screenshot.py`` and the tests (which skip without a browser).
Chromium is not a Python dependency: install it with the system's package manager
(Debian: ``apt-get install chromium``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stfusion.errors import StfusionError

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome executable ($STFUSION_CHROMIUM first), or None."""
    override = os.environ.get("STFUSION_CHROMIUM")
    if override:
        return override if Path(override).exists() else shutil.which(override)
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot(html: str | Path, png: str | Path, *, width: int = 1280, height: int = 2000, timeout: float = 120) -> Path:
    """Screenshot of the top ``width`` x ``height`` pixels of a local HTML file."""
    browser = find_chromium()
    if browser is None:
        raise StfusionError("No Chromium found. Install it (Debian: apt-get install chromium) or set STFUSION_CHROMIUM.")
    html, png = Path(html).resolve(), Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="stfusion-chromium-") as profile:
        cmd = [
            browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
            "--disable-extensions", f"--user-data-dir={profile}", f"--window-size={width},{height}",
            f"--screenshot={png}", html.as_uri(),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0 or not png.exists():
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise StfusionError(f"Chromium failed (exit {done.returncode}): {' | '.join(tail)}")
    return png


@dataclass
class ScreenshotStats:
    width: int
    height: int
    grey_std: float  # standard deviation of the grey levels (0-255): ~0 for a blank page
    ink_fraction: float  # fraction of pixels clearly darker than the page background
    colour_fraction: float  # fraction of saturated pixels (figures, not only text)


def screenshot_stats(png: str | Path) -> ScreenshotStats:
    """Numbers that tell a rendered report from a blank or broken page."""
    from PIL import Image

    with Image.open(png) as im:
        rgb = np.asarray(im.convert("RGB"), dtype=float)
    grey = rgb.mean(axis=2)
    saturation = rgb.max(axis=2) - rgb.min(axis=2)
    return ScreenshotStats(
        width=int(rgb.shape[1]),
        height=int(rgb.shape[0]),
        grey_std=float(grey.std()),
        ink_fraction=float((grey < np.median(grey) - 60).mean()),
        colour_fraction=float((saturation > 60).mean()),
    )
