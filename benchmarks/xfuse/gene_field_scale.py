"""What the optional XFuse gene field (``gene_field=True``) costs at Visium size (issue 6).

A synthetic section of ``--spots`` spots on the Visium lattice (100 µm centre spacing,
hexagonal) and ``--genes`` genes whose length scales are spread over ``--lengthscales``
distinct values (the GP baseline's grid has 16: the worst case for one section). Times, on
this machine, side by side in one run:

- one eigendecomposition of the spots x spots kernel (the field keeps one per distinct length
  scale; the GP prior fit does the same again, once, before training);
- one training step's field work (forward and backward) for a batch of two patches holding
  ``--patch-spots`` spots each, computing the values at the batch's spots only (what
  ``GeneField.training_offsets`` does) and, for comparison, at every spot of the section
  (what it did before);
- kriging means for ``--areas`` areas at random positions, as ``GeneField.area_offsets``
  computes them (:mod:`stfusion.models.xfuse.kriging`: float32 kernels truncated at 7 length
  scales, long length scales interpolated from nodes when there are many areas) and, for
  comparison, as a plain float64 sum over every spot, one kernel per length scale (the
  implementation before kriging.py), with the largest difference between the two;
- the same for every cell of a ``--grid-um`` grid over the spots (~340,000 cells of 10 µm
  at Visium size), compared with the float64 sum on ``--grid-check`` random cells.

and the resident memory after the bases are built. Run (repository root)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/xfuse/gene_field_scale.py --spots 4000 --genes 1000
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/xfuse/gene_field_scale.py --spots 400 --genes 100 --lengthscales 4

Writes benchmarks/xfuse/gene_field_scale.md (appends one section per run) and prints it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _mob as M  # noqa: E402


def visium_lattice(n: int, pitch_um: float = 100.0) -> np.ndarray:
    """``n`` spot centres (µm) on a hexagonal lattice, as close to square as possible."""
    cols = int(np.ceil(np.sqrt(n * 2 / np.sqrt(3))))
    i, j = np.divmod(np.arange(n), cols)
    return np.column_stack([(j + 0.5 * (i % 2)) * pitch_um, i * pitch_um * np.sqrt(3) / 2])


def reference_kriging(field, centres: np.ndarray, genes: np.ndarray) -> np.ndarray:
    """The kriging means in float64, one kernel per length scale (the earlier implementation)."""
    from stfusion.baselines.gp import sq_exp_kernel

    out = np.zeros((len(centres), len(genes)))
    xy = field.coords_0.numpy()
    for cols, ls, alpha in field._kriging_weights(0, genes):
        for rows in np.array_split(np.arange(len(centres)), max(1, len(centres) // 4096)):
            out[np.ix_(rows, cols)] = sq_exp_kernel(centres[rows], xy, ls) @ alpha.numpy().astype(np.float64)
    return out


def grid_cells(xy: np.ndarray, pitch_um: float) -> np.ndarray:
    """Centres of a square grid of ``pitch_um`` over the bounding box of ``xy``."""
    lo, hi = xy.min(0), xy.max(0)
    gx, gy = np.meshgrid(np.arange(lo[0], hi[0], pitch_um) + pitch_um / 2, np.arange(lo[1], hi[1], pitch_um) + pitch_um / 2)
    return np.column_stack([gx.ravel(), gy.ravel()])


def timed(fn, repeats: int = 3) -> float:
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    from stfusion.models.xfuse.gene_field import GeneField

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spots", type=int, default=4000)
    ap.add_argument("--genes", type=int, default=1000)
    ap.add_argument("--lengthscales", type=int, default=16)
    ap.add_argument("--patch-spots", type=int, default=150)
    ap.add_argument("--areas", type=int, default=50_000)
    ap.add_argument("--grid-um", type=float, default=10.0, help="also krige a grid of this pitch over the spots")
    ap.add_argument("--grid-check", type=int, default=5000, help="grid cells compared with the float64 reference")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=M.HERE / "gene_field_scale.md")
    args = ap.parse_args()
    M.set_threads(args.threads)
    prov = M.Provenance(args.seed, args.threads, spots=args.spots, genes=args.genes, lengthscales=args.lengthscales)
    rng = np.random.default_rng(args.seed)
    xy = visium_lattice(args.spots)
    ls = np.geomspace(50.0, float(np.ptp(xy, axis=0).max()), args.lengthscales)[np.arange(args.genes) % args.lengthscales]
    field = GeneField(["s"], [(10, 10)], [args.spots], args.genes)
    field.set_prior(0, xy, ls, np.full(args.genes, 0.5))
    rss0 = M.peak_rss_mb() / 1024
    t0 = time.perf_counter()
    field._basis(0)
    basis_s = time.perf_counter() - t0
    rss1 = M.peak_rss_mb() / 1024
    with torch.no_grad():
        field.maps[0].normal_(generator=torch.Generator().manual_seed(args.seed))
    obs = [rng.choice(args.spots, args.patch_spots, replace=False) for _ in range(2)]

    def step_rows() -> None:
        field.zero_grad()
        sum(o.sum() for o in field.training_offsets(np.array([0, 0]), obs)).backward()

    def step_all() -> None:
        field.zero_grad()
        f = field.values(0)
        sum(f[torch.from_numpy(o)].sum() for o in obs).backward()

    rows_s, all_s = timed(step_rows), timed(step_all, repeats=1)
    centres = rng.uniform(xy.min(0), xy.max(0), size=(args.areas, 2))
    genes = np.arange(args.genes)
    t0 = time.perf_counter()
    krig = field.area_offsets(0, centres, genes)
    krig_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = reference_kriging(field, centres, genes)
    ref_s = time.perf_counter() - t0
    grid = grid_cells(xy, args.grid_um)
    t0 = time.perf_counter()
    grid_krig = field.area_offsets(0, grid, genes)
    grid_s = time.perf_counter() - t0
    check = rng.choice(len(grid), min(args.grid_check, len(grid)), replace=False)
    grid_diff = np.abs(grid_krig[check] - reference_kriging(field, grid[check], genes)).max()
    prov.stop()
    table = M.md_table(pd.DataFrame([{
        "spots": args.spots, "genes": args.genes, "distinct length scales": args.lengthscales,
        "bases built (s)": round(basis_s, 1), "per eigendecomposition (s)": round(basis_s / args.lengthscales, 2),
        "RSS added by the bases (GB)": round(rss1 - rss0, 2),
        "step, batch rows only (s)": round(rows_s, 3), "step, all spots (s)": round(all_s, 3),
        f"kriging {args.areas:,} areas (s)": round(krig_s, 1), "the same, float64 per length scale (s)": round(ref_s, 1),
        "largest difference": float(f"{np.abs(krig - ref).max():.2g}"), "largest offset": round(float(np.abs(ref).max()), 2),
        f"kriging a {args.grid_um:g} µm grid (s)": round(grid_s, 1), "grid cells": len(grid),
        f"largest difference, {len(check):,} grid cells": float(f"{grid_diff:.2g}"),
        "peak RSS (GB)": round(M.peak_rss_mb() / 1024, 2)}]), floatfmt="{:g}")
    text = f"\n## {args.spots} spots, {args.genes} genes\n\n{table}\n\n{prov.markdown()}\n"
    if not args.out.exists():
        args.out.write_text("# XFuse gene field: cost at Visium size (`gene_field_scale.py`)\n")
    with args.out.open("a") as fh:
        fh.write(text)
    print(text)


if __name__ == "__main__":
    main()
