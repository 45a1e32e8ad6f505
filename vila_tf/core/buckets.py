"""Batch-size buckets shared by the runtime, the TF Serving warmup file and the benchmarks.

Every distinct batch size reaching a jax2tf-lowered signature is one XLA compilation (seconds at
full size). The runtime pads each batch up to the next bucket and splits larger inputs into chunks
of the largest, so batch sizes 1..N cost at most len(BUCKETS) compilations per signature; the
padding wastes at most half of a batch above size 4.
"""
BUCKETS = (1, 4, 8, 16, 32)
MAX_BATCH = BUCKETS[-1]


def bucket_for(n: int) -> int:
    """The smallest bucket holding n items (n <= MAX_BATCH)."""
    if n < 1:
        raise ValueError(f"batch size must be >= 1, got {n}")
    for b in BUCKETS:
        if n <= b:
            return b
    raise ValueError(f"batch size {n} exceeds the largest bucket {MAX_BATCH}; split it first")


def chunks(n: int) -> list[tuple[int, int, int]]:
    """Splits n items into (start, stop, padded size) chunks of at most MAX_BATCH."""
    out = []
    for start in range(0, n, MAX_BATCH):
        stop = min(n, start + MAX_BATCH)
        out.append((start, stop, bucket_for(stop - start)))
    return out
