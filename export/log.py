"""The toolkit's one logger: time-stamped progress lines on stderr, and a per-array progress
reporter for long reads and writes."""
from __future__ import annotations

import sys
import time


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def progress(label: str):
    """report(done, total): a log line at every 10% (and at the end)."""
    state = {"last": -1}

    def report(done: int, total: int) -> None:
        pct = done * 100 // max(total, 1)
        if pct != state["last"] and (pct % 10 == 0 or done == total):
            state["last"] = pct
            log(f"{label}: {done}/{total} arrays ({pct}%)")
    return report
