"""Shared helpers of the scale benchmarks: child processes with peak RSS, machine facts, result files."""

from __future__ import annotations

import csv
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def machine() -> dict:
    """Cores, platform, date and the current load average (the machine is shared)."""
    load = os.getloadavg()
    return {"cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "date": datetime.datetime.now().isoformat(timespec="seconds"), "load_1m": round(load[0], 2),
            "load_5m": round(load[1], 2)}  # fmt: skip


def run_child(code: str, *args: str, env: dict | None = None) -> dict:
    """Run ``python -c code args`` in a fresh process; it prints one JSON line last. Adds its peak RSS (MB)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(env or {})}
    wrapped = code + "\nimport resource, json as _j\nprint(_j.dumps({**RESULT, 'peak_rss_mb': round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))\n"
    proc = subprocess.run([sys.executable, "-c", wrapped, *args], capture_output=True, text=True, env=full_env)
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def write_results(name: str, rows: list[dict], command: str, notes: str = "") -> None:
    """``<name>.csv`` and ``<name>.md`` next to this file (overwritten)."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    with open(HERE / f"{name}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    lines = [f"# {name}", "", f"Command: `{command}`", ""]
    if notes:
        lines += [notes, ""]
    lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(row.get(k, "")) for k in keys) + " |" for row in rows]
    (HERE / f"{name}.md").write_text("\n".join(lines) + "\n")
