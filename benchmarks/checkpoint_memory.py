"""Peak memory of reading a full-size VILA-R paxml checkpoint (with optimizer state).

Writes a 1.25 GB checkpoint shaped like the release (484 parameter arrays, then the ShardedAdafactor
state of docs/model.md §9), then reads it in a fresh process and reports that process's peak RSS.
  python benchmarks/checkpoint_memory.py --dir /tmp/vila_mem [--json] [--out benchmarks/checkpoint_memory.json]
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run as a script: the repository root (for `export`) is not on the path

from export.model.tree import flatten, unflatten  # noqa: E402


def write(dir_):
    import numpy as np
    from export.checkpoints import paxml as checkpoint
    from export.model.config import VilaConfig
    shapes = checkpoint.expected_shapes(VilaConfig())
    params = {p: np.full(s, 0.01, np.float32) for p, s in shapes.items()}
    # Optimizer state as the release's ShardedAdafactor (decay 'adam'): counts, dummies (1,),
    # factored row/column statistics for >=2-D params, full `v` for 1-D params.
    extra = [np.int32(0), np.int32(0), np.int32(0)]
    order = checkpoint.sort_paths(shapes)
    for kind in ("m", "m_scale", "v", "vc", "vr"):
        for p in order:
            s = shapes[p]
            if kind == "v":
                extra.append(np.zeros(s if len(s) < 2 else (1,), np.float32))
            elif kind == "vr":
                extra.append(np.zeros(s[:-1] if len(s) >= 2 else (1,), np.float32))
            elif kind == "vc":
                extra.append(np.zeros(s[:-2] + s[-1:] if len(s) >= 2 else (1,), np.float32))
            else:
                extra.append(np.zeros((1,), np.float32))
    extra.append(np.int32(0))
    return checkpoint.write_paxml(unflatten(params), dir_, extra_leaves=extra)


def read(dir_):
    from export.checkpoints import paxml as checkpoint
    t = time.time()
    ck = checkpoint.load(dir_)
    n = sum(v.nbytes for v in flatten(ck.params).values())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"seconds": time.time() - t, "param_bytes": n, "peak_rss_bytes": peak}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--out", help="also write the result to this JSON file (docs/export.md quotes it)")
    ap.add_argument("--read-only", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.read_only:
        print(json.dumps(read(a.dir)))
        return
    target = write(a.dir)
    r = subprocess.run([sys.executable, __file__, "--dir", a.dir, "--read-only"], capture_output=True, text=True)
    if r.returncode:
        sys.exit(r.stderr)
    result = json.loads(r.stdout.strip().splitlines()[-1])
    result["file_bytes"] = os.path.getsize(target)
    result["ratio"] = result["peak_rss_bytes"] / result["file_bytes"]
    result["machine"] = {"cpus": os.cpu_count(), "load_average_1min": os.getloadavg()[0]}
    if a.out:
        from vila_tf.core.atomic import atomic_file
        with atomic_file(a.out) as f:
            f.write(json.dumps(result, indent=1) + "\n")
    if a.json:
        print(json.dumps(result))
    else:
        print(f"checkpoint {result['file_bytes']/1e9:.3f} GB read in {result['seconds']:.1f} s; "
              f"peak RSS {result['peak_rss_bytes']/1e9:.3f} GB = {result['ratio']:.2f}x the file")


if __name__ == "__main__":
    main()
