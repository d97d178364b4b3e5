"""Learning-rate experiment for ST-Net trained from scratch (writes benchmarks/stnet/diagnostics/lr_experiment.md).

Train on her2st C2 + C3, validate on C4 (785 genes), fast-preset network, SGD momentum 0.9,
batch 32; for each learning rate: validation MSE per epoch (ST-Net space) and the mean
gene-wise Pearson on C4 (primary target) of the best-validation-epoch weights.
Run from the repository root: nice .venv/bin/python benchmarks/stnet/diagnostics/lr_experiment.py [EPOCHS] [LR ...]
"""

from __future__ import annotations

import datetime
import os
import sys
import time
from pathlib import Path

import numpy as np

from stfusion import io
from stfusion.benchmark.scoring import score_histology
from stfusion.models.stnet import STNet

ROOT = Path(os.environ.get("STFUSION_SHARED_DATA", Path(__file__).resolve().parents[4] / "shared" / "data"))


def main() -> None:
    epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 8
    lrs = [float(v) for v in sys.argv[2:]] or [1e-3, 1e-2, 1e-1]
    secs = []
    for sid in ("C2", "C3", "C4"):
        s = io.read_her2st(ROOT / "her2st", sid)
        secs.append(s[np.asarray(s.X.sum(axis=1)).ravel() >= 1].copy())
    genes = list(np.load(ROOT / "her2st" / "her_hvg_cut_1000.npy", allow_pickle=False))
    rows = []
    for lr in lrs:
        t0 = time.time()
        # epoch_selection="holdout": trains on C2+C3, early-stops on the last section given (C4)
        model = STNet(preset="fast", lr=lr, epochs=epochs, epoch_selection="holdout", patience=epochs, seed=0)
        model.fit(secs, genes=genes)
        table = score_histology(model.predict(secs[2]), secs[2], genes)
        r = table.loc[table.metric == "pearson", "value"]
        hist = model.info_["history"]
        rows.append((lr, [h["val_loss"] for h in hist], model.info_["best_epoch"], r.mean(), r.median(), time.time() - t0))
        print(rows[-1], flush=True)
    write(rows, epochs)


def write(rows, epochs: int) -> None:
    cfg = STNet(preset="fast").config
    lines = [
        "# ST-Net learning rate (from scratch)",
        "",
        f"Date {datetime.date.today()}, {os.cpu_count()} CPU cores (shared), seed 0. Command: "
        f"`nice .venv/bin/python benchmarks/stnet/diagnostics/lr_experiment.py {epochs} {' '.join(str(r[0]) for r in rows)}`.",
        f"Train her2st C2 + C3, validate on C4, 785 genes; fast-preset network ({cfg['backbone']} width {cfg['width']}, "
        f"{cfg['out_px']} px patches of 150 µm, random init, target {cfg['target']}), SGD momentum 0.9, batch 32, {epochs} epochs, augmentation on.",
        "Validation loss = MSE on the fast preset's training target (log1p(counts / total x 1e4), the primary target); Pearson = mean/median gene-wise r on C4 (primary target), "
        "weights of the best validation epoch, 8-fold TTA.",
        "",
        "| lr | val MSE per epoch | best epoch | mean r | median r | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for lr, vals, best, mean_r, med_r, sec in rows:
        lines.append(f"| {lr:g} | {' '.join(f'{v:.4f}' for v in vals)} | {best} | {mean_r:.3f} | {med_r:.3f} | {sec:.0f} |")
    out = Path(__file__).resolve().parent / "lr_experiment.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
