"""Whole-slide streaming: peak RSS and throughput for 10k x 10k and 40k x 40k px synthetic slides.

Writes the slides (pyramidal OME-TIFF, 256 px JPEG tiles, 0.5 µm/px) tile by tile into --workdir
(not the repository), then predicts each with a random-initialised ST-Net (fast preset: small
CNN, 64 px patches of 150 µm, no test-time augmentation) and HisToGene (fast preset,
16 px patches of 100 µm on a 200 µm square lattice, 32 x 32-spot windows), each in its own
child process (peak RSS = that process's ru_maxrss). Tiles/s = full-resolution 256 px TIFF tiles
covering the slide / wall seconds.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/scale/slide_memory.py --workdir /tmp/scale_bench
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _common import machine, run_child, write_results

CHILD = """
import sys, time, torch
torch.set_num_threads(1)
from stfusion.scale import predict_slide
from stfusion.scale.synthetic import random_histogene, random_stnet
method, slide, out = sys.argv[1:4]
genes = [f"g{i}" for i in range(250)]
model = random_stnet(genes, seed=0, tta=False) if method == "stnet" else random_histogene(genes, seed=0)
res = predict_slide(model, slide, out, chunk_spots=256)
RESULT = {"spots": res.n_spots, "lattice_spots": res.n_lattice, "seconds": round(res.seconds, 1),
          "tiles": res.level_tiles, "tiles_per_s": round(res.level_tiles / res.seconds, 1),
          "spots_per_s": round(res.n_spots / res.seconds, 1)}
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/scale_bench"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 40_000])
    parser.add_argument("--methods", nargs="+", default=["stnet", "histogene"])
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in args.sizes:
        slide = args.workdir / f"slide_{size}.ome.tif"
        if not slide.exists():
            start = time.perf_counter()
            from stfusion.scale.synthetic import write_synthetic_slide

            write_synthetic_slide(slide, size, size, microns_per_pixel=0.5, compression="jpeg", seed=0)
            print(f"wrote {slide} in {time.perf_counter() - start:.0f} s", flush=True)
        for method in args.methods:
            info = machine()
            res = run_child(CHILD, method, str(slide), str(args.workdir / f"{method}_{size}.h5ad"))
            row = {"method": method, "slide_px": f"{size}x{size}", **res, "file_mb": round(slide.stat().st_size / 1e6),
                   "seed": 0, **info, "load_1m_after": machine()["load_1m"]}  # fmt: skip
            print(row, flush=True)
            rows.append(row)
    write_results("slide_memory", rows, "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/scale/slide_memory.py",
                  "Random-init models (memory/throughput only). One child process per row; 1 torch thread.")


if __name__ == "__main__":
    main()
