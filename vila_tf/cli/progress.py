"""The progress bar of the `vila-tf` commands (score, zero-shot, caption, embed, evaluate, rank):
tqdm's, on stderr, from the first photo; in Jupyter tqdm's notebook widget.

The total is counted in a background thread (a walk of file names, no reading) so the first rows
never wait for it; until it is known the bar shows the count and the rate."""
from __future__ import annotations

import sys
import threading
from typing import Optional


class Progress:
    """`update(processed, skipped)` after each photo; `message(text)` for a line that must not run
    into the bar. Shown on a terminal, or everywhere with `enabled=True` (`--progress`)."""

    def __init__(self, label: str, enabled: bool, total: Optional[int] = None):
        self.label, self.enabled = label, enabled
        self._bar = None
        if enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError:  # a LiteRT-only install without it: no bar, the rows still come
                self.enabled = False
                return
            self._bar = tqdm(total=total, desc=label, unit="img", file=sys.stderr, dynamic_ncols=True,
                             mininterval=0.2, smoothing=0.1)

    @property
    def total(self) -> Optional[int]:
        return self._bar.total if self._bar is not None else None

    @total.setter
    def total(self, value: Optional[int]) -> None:
        if self._bar is not None:
            self._bar.total = value
            self._bar.refresh()

    def count_in_background(self, inputs) -> None:
        if self._bar is None:
            return

        def count():
            from vila_tf.inputs import items as inputs_lib
            total = sum(1 for _ in inputs_lib.iter_items(inputs))
            if self._bar is not None and self._bar.total is None:
                self._bar.total = total
        threading.Thread(target=count, daemon=True, name="vila-tf-count").start()

    def message(self, text: str) -> None:
        """A line on stderr above the bar."""
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def update(self, processed: int, skipped: int = 0, final: bool = False) -> None:
        """`processed` inputs done by this run, `skipped` found done by --resume."""
        if self._bar is None:
            return
        done = processed + skipped
        if done != self._bar.n:
            self._bar.update(done - self._bar.n)
        if final:
            self._bar.total = done
            self._bar.refresh()
            self._bar.close()
            self._bar = None
