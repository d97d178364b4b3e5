"""A self-contained HTML page: inline CSS, figures embedded as base64 PNG, no external links."""

from __future__ import annotations

import base64
import html
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from stfusion.io.atomic import atomic_path

FIGURE_DPI = 100

CSS = """
body { font-family: "DejaVu Sans", Helvetica, Arial, sans-serif; margin: 0; color: #222; background: #fafafa; }
main { max-width: 1180px; margin: 0 auto; padding: 16px 28px 48px; background: #fff; }
header { border-bottom: 2px solid #3b6ea5; margin-bottom: 12px; }
h1 { font-size: 24px; margin: 12px 0 4px; } h2 { font-size: 19px; margin-top: 28px; color: #3b6ea5; }
h3 { font-size: 15px; margin: 18px 0 6px; } p.meta, p.note { color: #555; font-size: 13px; margin: 4px 0 10px; }
nav { font-size: 13px; margin: 6px 0 10px; } nav a { margin-right: 14px; color: #3b6ea5; }
table { border-collapse: collapse; font-size: 12.5px; margin: 6px 0 12px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; } th { background: #eef3f8; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; } tr.best td { font-weight: bold; }
figure { margin: 8px 0 16px; } figure img { max-width: 100%; height: auto; }
figcaption { font-size: 12px; color: #555; } details { font-size: 12px; margin: 8px 0; }
pre { background: #f4f4f4; padding: 8px; overflow-x: auto; font-size: 11px; }
"""


def figure_png(fig, dpi: int = FIGURE_DPI) -> bytes:
    """PNG bytes of a matplotlib figure; the figure is closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def image_tag(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _format(value, column: str, floatfmt: str, coarse: tuple[str, ...]) -> tuple[str, bool]:
    """(text, is_number) of one cell."""
    if isinstance(value, (bool, np.bool_)):
        return str(value), False
    if isinstance(value, (int, np.integer)):
        return str(value), True
    if isinstance(value, (float, np.floating)):
        if np.isnan(value):
            return "—", True
        return format(value, ".1f" if any(c in column for c in coarse) else floatfmt), True
    return html.escape(str(value)), False


def table_html(
    df: pd.DataFrame, *, floatfmt: str = ".3f", coarse: tuple[str, ...] = (), highlight_first: bool = False
) -> str:
    """An HTML table of ``df`` (index dropped); numbers right-aligned, NaN shown as a dash.

    Columns whose name contains one of ``coarse`` get one decimal (counts, seconds, MB).
    ``highlight_first`` makes the first row bold (the best method when sorted).
    """
    cols = [str(c) for c in df.columns]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    rows = []
    for i, row in enumerate(df.itertuples(index=False)):
        cells = []
        for col, value in zip(cols, row, strict=True):
            text, num = _format(value, col, floatfmt, coarse)
            cells.append(f'<td class="num">{text}</td>' if num else f"<td>{text}</td>")
        cls = ' class="best"' if highlight_first and i == 0 else ""
        rows.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"


@dataclass
class Page:
    """Collects headed sections of HTML and renders one self-contained document."""

    title: str
    subtitle: str = ""
    parts: list[str] = field(default_factory=list)
    toc: list[tuple[str, str]] = field(default_factory=list)
    n_images: int = 0

    def heading(self, text: str, level: int = 2) -> None:
        anchor = slug(text) + (f"-{len(self.toc)}" if any(a == slug(text) for a, _ in self.toc) else "")
        if level == 2:
            self.toc.append((anchor, text))
        self.parts.append(f'<h{level} id="{anchor}">{html.escape(text)}</h{level}>')

    def text(self, text: str, cls: str = "note") -> None:
        self.parts.append(f'<p class="{cls}">{html.escape(text)}</p>')

    def raw(self, fragment: str) -> None:
        """Add trusted HTML (built by this package, e.g. :func:`table_html`)."""
        self.parts.append(fragment)

    def table(self, df: pd.DataFrame, **kwargs) -> None:
        self.parts.append(table_html(df, **kwargs))

    def figure(self, fig, caption: str, dpi: int = FIGURE_DPI) -> None:
        """Embed a matplotlib figure (closed afterwards) with a caption."""
        self.parts.append(f"<figure>{image_tag(figure_png(fig, dpi), caption)}<figcaption>{html.escape(caption)}</figcaption></figure>")
        self.n_images += 1

    def details(self, summary: str, body: str) -> None:
        self.parts.append(f"<details><summary>{html.escape(summary)}</summary><pre>{html.escape(body)}</pre></details>")

    def render(self) -> str:
        nav = "".join(f'<a href="#{a}">{html.escape(t)}</a>' for a, t in self.toc)
        sub = f'<p class="meta">{html.escape(self.subtitle)}</p>' if self.subtitle else ""
        return (
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(self.title)}</title><style>{CSS}</style></head><body><main>"
            f"<header><h1>{html.escape(self.title)}</h1>{sub}<nav>{nav}</nav></header>"
            + "\n".join(self.parts)
            + "</main></body></html>\n"
        )


def write_html(text: str, out: str | Path) -> Path:
    """Write the page atomically (a failed run leaves no partial file)."""
    out = Path(out)
    with atomic_path(out) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return out


def external_references(text: str) -> list[str]:
    """``src``/``href`` attributes that point outside the document (should be empty)."""
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)["']""", text, flags=re.IGNORECASE)
    return [r for r in refs if not (r.startswith("#") or r.startswith("data:"))]
