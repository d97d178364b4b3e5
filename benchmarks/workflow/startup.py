"""Start-up time of the command line (issue 27): ``stfusion --help``, ``--version`` and ``methods``
must answer in at most 1.5 s on 2 cores, so heavy libraries (torch, scanpy, anndata) are
imported only inside the commands that need them.

    .venv/bin/python benchmarks/workflow/startup.py [--runs 5] [--stfusion PATH]

Runs each command ``--runs`` times in a fresh process (output discarded) and prints the median and
worst wall-clock seconds, the median CPU seconds (less sensitive to other jobs on the machine) and
which heavy modules ``import stfusion.cli`` pulled in (none expected).
Exit status 1 when a median is above the limit.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

LIMIT_S = 1.5
COMMANDS = (["--help"], ["--version"], ["methods"], ["fit", "--help"], ["predict", "--help"])
HEAVY = ("torch", "scanpy", "anndata", "lightning", "matplotlib", "sklearn", "dask", "pandas")


def time_command(exe: str, args: list[str], runs: int) -> tuple[list[float], list[float]]:
    """Wall-clock and CPU (user + system) seconds of each run."""
    wall, cpu = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run([exe, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        wall.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return wall, cpu


def heavy_imports(python: str) -> list[str]:
    code = f"import sys, stfusion.cli; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout
    return out.split()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--stfusion", default=str(Path(sys.executable).parent / "stfusion"))
    args = parser.parse_args()
    slow = []
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; limit {LIMIT_S} s, {args.runs} runs\n")
    print("| command | median wall s | worst wall s | median CPU s | |\n|---|---|---|---|---|")
    for cmd in COMMANDS:
        wall, cpu = time_command(args.stfusion, cmd, args.runs)
        median = statistics.median(wall)
        slow += [cmd] if median > LIMIT_S else []
        verdict = "ok" if median <= LIMIT_S else "SLOW"
        print(f"| stfusion {' '.join(cmd)} | {median:.2f} | {max(wall):.2f} | {statistics.median(cpu):.2f} | {verdict} |")
    heavy = heavy_imports(str(Path(args.stfusion).parent / "python"))
    print(f"\nheavy modules imported by `import stfusion.cli`: {', '.join(heavy) or 'none'}")
    return 1 if slow or heavy else 0


if __name__ == "__main__":
    sys.exit(main())
