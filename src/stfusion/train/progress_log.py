"""Progress as log lines, for runs without a progress bar.

``stfusion`` shows progress bars only on a terminal. A batch job writing to a log file would
otherwise say nothing for the length of a fit, so the training loops report through the
``stfusion`` logger at INFO instead, at every tenth of the run: what is done, the loss, the
time taken and an estimate of the time left. Libraries configure no handler, so in Python
these lines appear only where the caller has set up logging (``stfusion`` CLI: unless
``--quiet``).
"""

from __future__ import annotations

import logging
import math
import time

log = logging.getLogger("stfusion")


class ProgressLog:
    """Log ``what`` ``done``/``total`` at ``parts`` evenly spaced points (and the last one)."""

    def __init__(self, what: str, total: int, unit: str = "step", parts: int = 10, done: int = 0) -> None:
        """``done``: already done when timing starts (a resumed run), for the time left."""
        self.what, self.total, self.unit, self.first = what, max(1, int(total)), unit, int(done)
        self.marks = {math.ceil(self.total * k / parts) for k in range(1, parts + 1)}
        self.start = time.perf_counter()

    def update(self, done: int, **values: float | int | None) -> bool:
        """Log a line if ``done`` is one of the marks; ``values`` (name: number) are appended.
        Returns whether a line was logged."""
        if int(done) not in self.marks:
            return False
        seconds = time.perf_counter() - self.start
        ran = int(done) - self.first
        left = seconds * (self.total - done) / ran if ran > 0 else float("nan")
        shown = "".join(f", {k} {_fmt(v)}" for k, v in values.items() if v is not None)
        log.info("%s %s %d/%d (%d%%)%s; %s, ~%s left", self.what, self.unit, done, self.total,
                 round(100 * done / self.total), shown, _duration(seconds), _duration(left))
        return True


def _fmt(value: float | int) -> str:
    return str(value) if isinstance(value, int) else f"{value:.4g}"


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"
