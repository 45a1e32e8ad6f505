"""The bounded decode pipeline behind `VilaModel.stream`: decoded batches, in input order.

Items are taken from the (possibly endless) input iterator only as room frees up: at most
`batches_ahead` batches are being read and decoded by the thread pool while the caller runs the
model on the current batch, so a slow model never lets decoded pixels pile up (back-pressure),
and a fast one finds the next batch ready. The input iterator itself is only ever advanced from
the caller's thread, so user generators need not be thread-safe. Closing the generator (the
caller stopped early, Ctrl-C, an error) cancels the decodes not yet started.
"""
from __future__ import annotations

import collections
import concurrent.futures
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Optional

DEFAULT_BATCHES_AHEAD = 2


class Decoded(NamedTuple):
    index: int  # position in the inputs
    source: str  # the input's label (path, <bytes i>, ...)
    pixels: Any  # what `decode` returned for it (None when it failed)
    error: Optional[str]  # why it failed, None when it worked


def decoded_batches(items: Iterable, decode: Callable, pool: concurrent.futures.Executor, batch_size: int,
                    batches_ahead: int = DEFAULT_BATCHES_AHEAD) -> Iterator[list[Decoded]]:
    """Lists of up to `batch_size` Decoded, in input order. `decode(item)` -> (pixels, error) runs
    in `pool`; `item.source` labels the result. While the caller works on a batch, at most
    `batches_ahead` more batches of items are taken from the inputs (read, decoding or decoded);
    so at most (batches_ahead + 1) * batch_size items are held at any time."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if batches_ahead < 1:
        raise ValueError(f"batches_ahead must be >= 1, got {batches_ahead}")
    limit = batches_ahead * batch_size
    window: collections.deque = collections.deque()  # (index, source, future), in input order
    source = iter(items)
    exhausted = False
    index = 0
    head: list = []

    def top_up():
        nonlocal exhausted, index
        while not exhausted and len(window) < limit:
            try:
                item = next(source)
            except StopIteration:
                exhausted = True
                return
            window.append((index, item.source, pool.submit(decode, item)))
            index += 1

    try:
        while True:
            head = []
            top_up()
            if not window:
                return
            head = [window.popleft() for _ in range(min(batch_size, len(window)))]
            top_up()  # the next batches decode while this one waits and runs
            batch = []
            for i, src, future in head:
                pixels, error = future.result()
                batch.append(Decoded(i, src, pixels, error))
            head = []
            yield batch
    finally:
        for _, _, future in list(window) + head:
            future.cancel()
