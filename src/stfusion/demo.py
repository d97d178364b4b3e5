"""The built-in example that ``make demo`` runs."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("stfusion")


def run_demo(out_dir: str | Path, *, seed: int = 0) -> dict[str, Path]:
    """Generate the synthetic section (XFuse's proof of principle), read it back, plot it.

    Writes ``synthetic.h5ad``, ``synthetic_<seed>.png`` (the generated H&E-like image) and
    ``overlay.png`` (spots coloured by total counts) into ``out_dir``.
    """
    from stfusion.data.synthetic import make_synthetic_section
    from stfusion.io import read_h5ad, write_h5ad
    from stfusion.io.atomic import atomic_path
    from stfusion.pl import spot_overlay

    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    section = make_synthetic_section(out_dir=out_dir, seed=seed)
    h5ad_path = out_dir / "synthetic.h5ad"
    write_h5ad(section, h5ad_path)
    back = read_h5ad(h5ad_path)
    fig = spot_overlay(back)
    overlay = out_dir / "overlay.png"
    with atomic_path(overlay) as tmp:
        fig.savefig(tmp, dpi=150, bbox_inches="tight")
    log.info(f"demo: {back.n_obs} measurement areas x {back.n_vars} genes; wrote {h5ad_path} and {overlay}")
    return {"section": h5ad_path, "overlay": overlay}
