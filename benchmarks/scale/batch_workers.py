"""20 synthetic slides through `stfusion predict --images` with 1 and with 2 Dask workers.

Slides: 6,000 x 6,000 px pyramidal OME-TIFFs at 1 µm/px (written to --workdir); model: a saved
random-initialised ST-Net (fast preset, no test-time augmentation). Each run is the CLI in a
fresh process with a fresh output folder (so nothing is skipped); wall time includes the
Dask cluster start. The machine is shared: the load average is recorded before and after.

    .venv/bin/python benchmarks/scale/batch_workers.py --workdir /tmp/scale_batch
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _common import machine, write_results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/scale_batch"))
    parser.add_argument("--slides", type=int, default=20)
    parser.add_argument("--size", type=int, default=6000)
    args = parser.parse_args()
    slides = args.workdir / "slides"
    slides.mkdir(parents=True, exist_ok=True)
    from stfusion.models.api import save_model
    from stfusion.scale.synthetic import random_stnet, write_synthetic_slide

    for i in range(args.slides):
        path = slides / f"slide{i:02d}.ome.tif"
        if not path.exists():
            write_synthetic_slide(path, args.size, args.size, microns_per_pixel=1.0, seed=i)
    model = save_model(random_stnet([f"g{i}" for i in range(250)], seed=0, tta=False), args.workdir / "model")
    stfusion = Path(sys.executable).parent / "stfusion"
    rows = []
    for workers in (1, 2, 1, 2):  # alternate, twice, to average over the shared machine's load
        out = args.workdir / f"out_{workers}"
        shutil.rmtree(out, ignore_errors=True)
        before = machine()
        start = time.perf_counter()
        cmd = [str(stfusion), "-q", "predict", str(model), "--images", str(slides), "--out", str(out), "--workers", str(workers)]
        subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        seconds = time.perf_counter() - start
        done = len(list(out.glob("*.h5ad")))
        row = {"workers": workers, "slides": done, "seconds": round(seconds, 1), "seed": 0, **before,
               "load_1m_after": machine()["load_1m"]}  # fmt: skip
        print(row, flush=True)
        rows.append(row)
    t1 = [r["seconds"] for r in rows if r["workers"] == 1]
    t2 = [r["seconds"] for r in rows if r["workers"] == 2]
    ratio = sum(t2) / sum(t1)
    write_results("batch_workers", rows, "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/scale/batch_workers.py",
                  f"{args.slides} slides of {args.size} x {args.size} px. Ratio of total time, 2 workers / 1 worker: "
                  f"**{ratio:.2f}** (target <= 0.65).")  # fmt: skip
    print("ratio", round(ratio, 3))


if __name__ == "__main__":
    main()
