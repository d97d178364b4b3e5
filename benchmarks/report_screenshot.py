"""Render the HTML report of a benchmark run in headless Chromium and check the screenshot.

    python benchmarks/report_screenshot.py                      # baselines run -> docs/report_screenshot.png
    python benchmarks/report_screenshot.py --run RUN_DIR --html report.html

Needs Chromium (Debian: ``apt-get install chromium``). The report is built with the same code as
``stfusion report RUN_DIR --out report.html``; the check fails (exit 1) when the screenshot is not
the requested size, looks blank (grey-level spread, share of dark and of coloured pixels), or
the PNG is 1 MB or more.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from stfusion.errors import StfusionError
from stfusion.report import build_report, external_references
from stfusion.report.browser import screenshot, screenshot_stats

ROOT = Path(__file__).resolve().parents[1]
MAX_BYTES = 1_000_000
MIN_GREY_STD = 20.0  # a blank page: ~0
MIN_INK = 0.01  # text, lines and figures: clearly darker than the page
MIN_COLOUR = 0.01  # coloured figure pixels, not only text


def default_run() -> Path:
    """The full baselines run folder when it is here (it has the shuffled-label null runs), else its
    committed export (``benchmarks/export_results.py``), which a fresh clone has."""
    full = ROOT / "benchmarks" / "runs" / "baselines"
    return full if full.is_dir() else ROOT / "benchmarks" / "results" / "baselines"


def check(png: Path, width: int, height: int) -> dict:
    stats = screenshot_stats(png)
    facts = {**vars(stats), "bytes": png.stat().st_size}
    problems = []
    if (stats.width, stats.height) != (width, height):
        problems.append(f"size {stats.width}x{stats.height}, expected {width}x{height}")
    if stats.grey_std < MIN_GREY_STD or stats.ink_fraction < MIN_INK or stats.colour_fraction < MIN_COLOUR:
        problems.append("the page looks blank or has no figures")
    if facts["bytes"] >= MAX_BYTES:
        problems.append(f"{facts['bytes']} bytes, keep it under {MAX_BYTES}")
    facts["problems"] = problems
    return facts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=default_run())
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "report_screenshot.png")
    parser.add_argument("--html", type=Path, default=None, help="Keep the report here (default: a temporary file).")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=2000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        html = args.html or Path(tmp) / "report.html"
        page = build_report(args.run, html)
        text = html.read_text()
        screenshot(html, args.out, width=args.width, height=args.height)
        facts = check(args.out, args.width, args.height)
    facts.update(report_bytes=len(text.encode()), report_images=page.n_images, external_references=external_references(text))
    if facts["external_references"]:
        facts["problems"].append("the report links outside itself")
    print(json.dumps(facts, indent=2))
    return 1 if facts["problems"] else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except StfusionError as exc:  # no Chromium, no run folder: one line, not a traceback
        print(f"report_screenshot: {exc}", file=sys.stderr)
        sys.exit(2)
