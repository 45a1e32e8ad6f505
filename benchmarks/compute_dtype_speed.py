"""CPU speed of the full-size scoring function per storage x compute dtype, side by side in one run.

Times `heads.score` (what the `score_pixels` signature lowers) under jax.jit on this machine's CPU,
with the demo weights stored in each dtype and cast by heads.compute_params, at one batch size.
  python benchmarks/compute_dtype_speed.py [--batch 8] [--repeats 3] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run as a script: the repository root (for `export`) is not on the path

import numpy as np  # noqa: E402
from export.model import demo  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    import jax
    import jax.numpy as jnp
    from export.model import heads
    from export.model.config import VilaConfig
    cfg = VilaConfig()
    params = demo.init_params(cfg, 0)
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(a.batch, 224, 224, 3)).astype(np.float32))
    res = {"batch": a.batch, "device": jax.devices()[0].device_kind, "cpu_count": os.cpu_count(), "rows": []}
    reference = None
    for storage in ("float32", "bfloat16"):
        stored = jax.tree_util.tree_map(lambda v: v.astype(storage), params)
        for compute in ("float32", "bfloat16"):
            fn = jax.jit(lambda p, img, c=compute: heads.score(heads.compute_params(p, c), cfg, img))
            out = np.asarray(fn(stored, x))  # compile
            times = []
            for _ in range(a.repeats):
                t0 = time.perf_counter()
                jax.block_until_ready(fn(stored, x))
                times.append(time.perf_counter() - t0)
            reference = out if reference is None else reference
            row = {"storage": storage, "compute": compute, "seconds": min(times),
                   "images_per_s": a.batch / min(times),
                   "max_abs_diff_vs_float32": float(np.max(np.abs(out - reference)))}
            res["rows"].append(row)
            print(row, file=sys.stderr, flush=True)
        del stored
    base = res["rows"][0]["seconds"]
    for row in res["rows"]:
        row["speed_vs_float32"] = base / row["seconds"]
    print(json.dumps(res, indent=1))
    if a.out:
        from vila_tf.core.atomic import atomic_file
        with atomic_file(a.out) as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
