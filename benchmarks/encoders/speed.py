"""Inference speed and peak memory of each full-size encoder on CPU (random weights).

For each encoder name, a fresh Python process builds the full-size model with random weights
(seeded), runs one warm-up batch, then embeds ``--patches`` random uint8 patches (224 px,
through the encoder's own :class:`~stfusion.models.encoders.Preprocessing`) in batches of
``--batch`` under ``torch.inference_mode()`` with ``--threads`` torch threads. Reported:
seconds per 100 patches (scaled from ``--patches``), and the process's peak resident memory
(``ru_maxrss``: weights + activations + interpreter). The load average before and after each
run is recorded, since the numbers are only comparable on a quiet machine.

Usage::

    .venv/bin/python benchmarks/encoders/speed.py resnet50_trunc uni --patches 20 \
        --out benchmarks/encoders/speed.json

Full-size ViT-g (h_optimus_0, ~4.5 GB of float32 weights) and ViT-H (virchow2, ~2.5 GB) need
several minutes per 100 patches on 2 cores; run them on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path


def measure(name: str, patches: int, batch: int, threads: int) -> dict:
    import numpy as np
    import torch

    from stfusion.models import encoders as E

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model, prep = E.make_encoder(name)
    build_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, size=(patches, prep.input_px, prep.input_px, 3), dtype=np.uint8)
    with torch.inference_mode():
        model(prep(data[: min(batch, patches)]))  # warm-up
        t0 = time.perf_counter()
        for i in range(0, patches, batch):
            out = model(prep(data[i : i + batch]))
        run_s = time.perf_counter() - t0
    return {
        "encoder": name,
        "params": sum(p.numel() for p in model.parameters()),
        "output_dim": int(out.shape[1]),
        "patches": patches,
        "batch": batch,
        "threads": threads,
        "build_s": round(build_s, 2),
        "s_per_100_patches": round(run_s * 100 / patches, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="+")
    parser.add_argument("--patches", type=int, default=100)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:  # one encoder per process, so ru_maxrss is that encoder's peak
        print(json.dumps(measure(args.names[0], args.patches, args.batch, args.threads)))
        return
    rows = []
    for name in args.names:
        load_before = os.getloadavg()
        cmd = [sys.executable, __file__, name, "--child", "--patches", str(args.patches),
               "--batch", str(args.batch), "--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode:
            print(proc.stderr, file=sys.stderr)
            raise SystemExit(f"{name}: failed")
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        row["load_avg_before"] = [round(v, 2) for v in load_before]
        row["load_avg_after"] = [round(v, 2) for v in os.getloadavg()]
        print(json.dumps(row))
        rows.append(row)
    record = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {_cpu_model()}",
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "rows": rows,
    }
    if args.out:
        args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
