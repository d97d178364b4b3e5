"""Rewrite a run folder's ``config.resolved.json`` from the full committed config, then its tables.

When several processes compute the cells of one run folder, each over a subset of the config
(a few datasets or methods; ``--shard`` does not need this), the last one to start leaves its
subset in ``config.resolved.json``. This writes the full config back (keeping the recorded
environment) and rewrites ``summary``/``per_gene``/``timings`` from every finished cell.

Usage (repository root): python benchmarks/rewrite_run_config.py CONFIG.toml RUN_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from stfusion.benchmark.config import load_config
from stfusion.benchmark.report import write_outputs


def main(config: str, run_dir: str) -> None:
    run = Path(run_dir)
    path = run / "config.resolved.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**load_config(config).as_dict(), "environment": old.get("environment", {})}, indent=2))
    write_outputs(run)
    print(f"{run}: config.resolved.json from {config}; tables rewritten")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
