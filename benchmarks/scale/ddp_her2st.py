"""ST-Net trained by `stfusion fit` on the shared her2st sections: 1 process vs 2 processes (DDP, gloo).

Reads her2st sections from the shared data folder (../shared/data/her2st, read-only) into
--workdir, then runs `stfusion fit stnet ... --preset fast` with `--devices 1` and with
`--devices 2 --strategy ddp` (Lightning's launcher re-runs the command for rank 1; rank 0
saves). Compares the saved folders (files, state-dict keys and shapes, model-card keys) and the
per-epoch training loss curves.

    .venv/bin/python benchmarks/scale/ddp_her2st.py --workdir /tmp/scale_ddp
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from _common import machine, write_results

SECTIONS = ["C2", "C3", "C4", "C5"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/scale_ddp"))
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[3] / "shared" / "data" / "her2st")
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"her2st not found at {args.data}; pass --data")
    args.workdir.mkdir(parents=True, exist_ok=True)
    stfusion = str(Path(sys.executable).parent / "stfusion")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    files = []
    for s in SECTIONS:
        path = args.workdir / f"{s}.h5ad"
        if not path.exists():
            subprocess.run([stfusion, "-q", "read", "her2st", str(args.data), "--section", s, "--out", str(path)], check=True, env=env)
        files.append(str(path))
    rows, cards = [], {}
    for label, extra in (("1 process", ["--devices", "1"]), ("2 processes (ddp)", ["--devices", "2", "--strategy", "ddp"])):
        out = args.workdir / label.split()[0]
        before = machine()
        start = time.perf_counter()
        cmd = [stfusion, "-q", "fit", "stnet", *files, "--out", str(out), "--preset", "fast", "--genes", "100",
               "--epochs", str(args.epochs), "--seed", "0", *extra]  # fmt: skip
        subprocess.run(cmd, check=True, env=env)
        seconds = time.perf_counter() - start
        card = json.loads((out / "model.json").read_text())
        cards[label] = (out, card)
        curve = [round(h["train_loss"], 4) for h in card["training"]["history"]]
        rows.append({"run": label, "seconds": round(seconds, 1), "train_loss_per_epoch": " ".join(map(str, curve)),
                     "files": " ".join(sorted(p.name for p in out.iterdir())), "seed": 0, **before})  # fmt: skip
        print(rows[-1], flush=True)
    import torch

    (o1, c1), (o2, c2) = cards.values()
    w1, w2 = (torch.load(o / "weights.pt", weights_only=True) for o in (o1, o2))
    same_keys = w1.keys() == w2.keys() and all(w1[k].shape == w2[k].shape for k in w1)
    a = np.array([h["train_loss"] for h in c1["training"]["history"]])
    b = np.array([h["train_loss"] for h in c2["training"]["history"]])
    corr = float(np.corrcoef(a, b)[0, 1])
    notes = (f"Sections {', '.join(SECTIONS)} (her2st, Andersson et al. 2021), 100 genes, {args.epochs} epochs, fast preset. "
             f"Same files: {sorted(p.name for p in o1.iterdir()) == sorted(p.name for p in o2.iterdir())}; "
             f"same state-dict keys and shapes: {same_keys}; same model-card keys: {c1.keys() == c2.keys()}; "
             f"Pearson r of the two loss curves: {corr:.3f}; both decrease: {bool(a[-1] < a[0] and b[-1] < b[0])}.")
    write_results("ddp_her2st", rows, "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/scale/ddp_her2st.py", notes)
    print(notes)


if __name__ == "__main__":
    main()
