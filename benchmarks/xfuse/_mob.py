"""Shared helpers of the XFuse MOB benchmarks (STUtility mouse olfactory bulb, MOB1 and MOB2).

Data reading, the top-N gene choice, run provenance (command, seed, date, cores, load
average, threads) and small writers for the Markdown/CSV tables and ELBO curves.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SECTIONS = ("MOB1", "MOB2")


def data_root() -> Path:
    """The shared STUtility MOB folder ($STFUSION_SHARED_DATA overrides /work/shared/data)."""
    root = Path(os.environ.get("STFUSION_SHARED_DATA", REPO.parent / "shared" / "data"))
    path = root / "stutility_mob"
    if not path.is_dir():
        sys.exit(f"{path} not found: set STFUSION_SHARED_DATA to the folder holding stutility_mob/.")
    return path


def read(section: str) -> ad.AnnData:
    from stfusion.io import read_stutility

    return read_stutility(data_root(), section)


def top_genes(sections: Sequence[ad.AnnData], n: int = 100) -> list[str]:
    """Top ``n`` genes by mean count over the given sections (XFuse paper's choice)."""
    from stfusion.data.genes import resolve_genes

    return list(resolve_genes(int(n), list(sections)))


def holdout_fold(section: str = "MOB1", seed: int = 0, n_genes: int = 100) -> tuple[ad.AnnData, ad.AnnData, list[str]]:
    """(visible, hidden, genes) of ``mob_holdout.toml``'s fold of ``section``: 50% of the spots
    hidden by ``spot_holdout`` (seed), top ``n_genes`` by mean of the visible spots."""
    from stfusion.benchmark.protocols import spot_holdout

    fold = next(spot_holdout([read(section)], 0.5, seed))
    train = fold.train[0]
    return train, fold.test, top_genes([train], n_genes)


def peak_rss_mb() -> float:
    """Peak resident memory of this process, MB (Linux ``ru_maxrss`` is in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(int(n))


def log1p_cp10k(x: np.ndarray, totals: np.ndarray) -> np.ndarray:
    """The benchmarks' target space: log1p(x / total x 1e4)."""
    return np.log1p(np.asarray(x, float) / np.maximum(np.asarray(totals, float)[:, None], 1e-12) * 1e4)


def dense(x) -> np.ndarray:
    return np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float64)


def genewise_pearson(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Pearson r per column (NaN where either side is constant)."""
    p = pred - pred.mean(0)
    t = true - true.mean(0)
    den = np.sqrt((p**2).sum(0) * (t**2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (p * t).sum(0) / den, np.nan)


class Provenance:
    """Command, seed, date, cores, threads and load average at start and end of a run."""

    def __init__(self, seed: int, threads: int, **extra: Any) -> None:
        self.info: dict[str, Any] = {
            "command": "nice " * _niced() + f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '?')} "
            + " ".join(shlex.quote(a) for a in [".venv/bin/python", *sys.argv]),
            "seed": int(seed),
            "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
            "cores": os.cpu_count(),
            "torch_threads": int(threads),
            "load_start": _load(),
            "git_commit": _git_rev(),
            "xfuse_source_sha1": xfuse_source_hash(),
            "python": platform.python_version(),
            **extra,
        }
        self._t0 = time.perf_counter()

    def stop(self) -> dict[str, Any]:
        self.info["load_end"] = _load()
        self.info["wall_seconds"] = round(time.perf_counter() - self._t0, 1)
        return self.info

    def markdown(self) -> str:
        lines = [f"- {k}: `{v}`" if k == "command" else f"- {k}: {v}" for k, v in self.info.items()]
        return "\n".join(lines)


def xfuse_source_hash() -> str:
    """SHA-1 (first 12 hex digits) over src/stfusion/models/xfuse/*.py: which model code ran."""
    import hashlib

    h = hashlib.sha1()
    for f in sorted((REPO / "src" / "stfusion" / "models" / "xfuse").glob("*.py")):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:12]


def _niced() -> int:
    try:
        return int(os.getpriority(os.PRIO_PROCESS, 0) > 0)
    except OSError:
        return 0


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}, {five:.2f}, {fifteen:.2f} (1/5/15 min)"


def _git_rev() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
        return out.stdout.strip() + " (+ uncommitted working tree)"
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def md_table(df: pd.DataFrame, floatfmt: str = "{:.3f}") -> str:
    cols = list(df.columns)
    rows = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        cells = [floatfmt.format(v) if isinstance(v, (float, np.floating)) else str(v) for v in r]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def write_report(path: Path, title: str, prov: Provenance, body: str) -> None:
    path.write_text(f"# {title}\n\n{body.strip()}\n\n## Run\n\n{prov.markdown()}\n")
    path.with_suffix(".json").write_text(json.dumps(prov.info, indent=2, default=str) + "\n")


# --------------------------------------------------------------------------- ELBO curves
def history_frame(history: list[dict[str, Any]]) -> pd.DataFrame:
    cols = ["step", "seconds", "elbo", "loss", "expr_loglik", "image_loglik", "kl_z", "kl_global", "metagenes"]
    df = pd.DataFrame(history)
    return df[[c for c in cols if c in df.columns]]


def smoothed(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average (window shrinks at the start)."""
    c = np.cumsum(np.insert(np.asarray(values, float), 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(idx - window, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def plateau(df: pd.DataFrame, window: int = 100, tol: float = 0.01, relative_to: str = "rise") -> dict[str, float]:
    """First step from which the smoothed ELBO stays within ``tol`` of its final value.

    Plateau = the first step t such that for every later step the ``window``-step trailing
    mean of the ELBO lies within ``tol`` x D of the final smoothed ELBO (the mean over the
    last ``window`` steps). ``relative_to="rise"``: D = |final smoothed ELBO - ELBO at the
    first step|, the total rise; unchanged by adding a constant to the ELBO (such as the
    image likelihood's normalising terms). ``"final"``: D = |final smoothed ELBO|, the rule
    of the first runs, which is strict when the final ELBO happens to lie near zero.
    """
    elbo = df["elbo"].to_numpy(float)
    sm = smoothed(elbo, window)
    final = sm[-1]
    if relative_to not in ("rise", "final"):
        raise ValueError(f"relative_to must be 'rise' or 'final', got {relative_to!r}")
    scale = abs(final - elbo[0]) if relative_to == "rise" else abs(final)
    off = np.abs(sm - final) > tol * scale
    last_off = np.flatnonzero(off)
    i = 0 if last_off.size == 0 else int(last_off[-1]) + 1
    i = min(i, len(sm) - 1)
    return {"plateau_step": int(df["step"].iloc[i]), "plateau_seconds": float(df["seconds"].iloc[i]),
            "final_smoothed_elbo": float(final), "window": window, "tol": tol, "relative_to": relative_to}


def write_elbo(history: list[dict[str, Any]], stem: Path, title: str, window: int = 100,
               mark: dict[str, float] | None = None) -> pd.DataFrame:
    """ELBO curve as CSV (stem.csv, every step, rounded) and PNG (raw + smoothed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = history_frame(history)
    df.round({"seconds": 2, "elbo": 1, "loss": 5, "expr_loglik": 1, "image_loglik": 1, "kl_z": 1,
              "kl_global": 1}).to_csv(stem.with_suffix(".csv"), index=False)
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    ax.plot(df["step"], df["elbo"], lw=0.5, alpha=0.35, color="tab:blue", label="ELBO (per step)")
    ax.plot(df["step"], smoothed(df["elbo"].to_numpy(), window), lw=1.5, color="tab:blue",
            label=f"{window}-step mean")
    if mark is not None:
        ax.axvline(mark["plateau_step"], color="tab:red", ls="--", lw=1,
                   label=f"plateau: step {mark['plateau_step']} ({mark['plateau_seconds'] / 60:.1f} min)")
    lo, hi = np.percentile(df["elbo"], [2, 100])
    ax.set_ylim(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
    ax.set_xlabel("step")
    ax.set_ylabel("ELBO")
    ax.set_title(title, fontsize=9)
    ax2 = ax.twinx()
    ax2.step(df["step"], df["metagenes"], where="post", color="tab:gray", lw=0.8)
    ax2.set_ylabel("metagenes", color="tab:gray")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"))
    plt.close(fig)
    return df
