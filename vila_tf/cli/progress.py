"""The one-line progress bar the `vila-tf` commands draw on stderr (score, evaluate, rank)."""
from __future__ import annotations

import math
import sys
import threading
import time
from typing import Optional


class Progress:
    """A one-line progress bar on stderr (only on a terminal unless forced): done/total, rate, ETA.

    The total is counted in a background thread (a walk of file names, no reading) so the first
    rows never wait for it; until it is known the bar shows done/? and the rate."""

    def __init__(self, label: str, enabled: bool):
        self.label, self.enabled = label, enabled
        self.total: Optional[int] = None
        self.start = time.monotonic()
        self._last = 0.0

    def count_in_background(self, inputs) -> None:
        if not self.enabled:
            return

        def count():
            from vila_tf.inputs import items as inputs_lib
            self.total = sum(1 for _ in inputs_lib.iter_items(inputs))
        threading.Thread(target=count, daemon=True, name="vila-tf-count").start()

    def message(self, text: str) -> None:
        """A line on stderr that does not run into the bar (the bar is redrawn on the next update)."""
        sys.stderr.write(("\r\x1b[K" if self.enabled and self._last else "") + text + "\n")
        self._last = 0.0  # redraw the bar on the next update
        sys.stderr.flush()

    def update(self, processed: int, skipped: int = 0, final: bool = False) -> None:
        """`processed` inputs scored by this run, `skipped` found done by --resume."""
        now = time.monotonic()
        if not self.enabled or (not final and now - self._last < 0.2):
            return
        self._last = now
        done = processed + skipped
        rate = processed / max(now - self.start, 1e-9)
        total = done if final else self.total
        if total:
            frac = min(1.0, done / total)
            bar = "#" * int(30 * frac) + "-" * (30 - int(30 * frac))
            eta = (total - done) / rate if rate > 0 else float("inf")
            eta_text = "--:--" if not math.isfinite(eta) else time.strftime("%H:%M:%S", time.gmtime(eta))
            text = f"{self.label} [{bar}] {done}/{total} {100 * frac:.0f}% {rate:.1f} img/s ETA {eta_text}"
        else:
            text = f"{self.label} [{'counting':^30}] {done}/? {rate:.1f} img/s"
        sys.stderr.write("\r" + text)
        if final:
            sys.stderr.write("\n")
        sys.stderr.flush()
