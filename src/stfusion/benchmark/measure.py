"""Wall-clock seconds and peak resident memory of a piece of work."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def current_rss_bytes() -> int:
    """Resident set size of this process (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except OSError:
        return 0


@dataclass
class Measurement:
    seconds: float
    peak_rss_mb: float  # highest RSS seen while the work ran
    rss_increase_mb: float  # peak minus RSS at the start


def measure(fn: Callable[[], Any], interval: float = 0.02) -> tuple[Any, Measurement]:
    """Run ``fn()``, sampling RSS every ``interval`` seconds in a background thread."""
    start_rss = current_rss_bytes()
    peak = [start_rss]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(interval):
            peak[0] = max(peak[0], current_rss_bytes())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    try:
        result = fn()
    finally:
        seconds = time.perf_counter() - t0
        done.set()
        thread.join()
        peak[0] = max(peak[0], current_rss_bytes())
    mb = 1024**2
    return result, Measurement(seconds, peak[0] / mb, (peak[0] - start_rss) / mb)
