"""Peak memory against the number of inputs: 50, then 1000 JPEGs through one model, each a fresh
copy of a noisy 480x360 JPEG made lazily by a generator, in a fresh process per mode.

  stream   `VilaModel.stream("score", generator)`: results as they come;
  score    `VilaModel.score(generator)`: the collector (one float kept per input);
and with --before DIR the `score` of the vila_tf package in DIR (e.g. an older commit's:
`git archive <commit> vila_tf | tar -x -C DIR`), which held every input and its pixels.
Peak RSS is the process's VmHWM (its own peak since exec).

  python benchmarks/stream_memory.py MODEL [--before DIR] [--out benchmarks/stream_memory.json]
"""
import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

SCRIPT = r"""
import io, json, sys
import numpy as np
from PIL import Image
import vila_tf

model = vila_tf.load(sys.argv[1])
buf = io.BytesIO()
Image.fromarray(np.random.default_rng(0).integers(0, 256, (360, 480, 3), np.uint8)).save(buf, "JPEG", quality=95)
jpeg = buf.getvalue()

def photos(n):
    for _ in range(n):
        yield bytes(bytearray(jpeg))

def peak_mb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024

out = {"vila_tf": vila_tf.__file__, "jpeg_mb": len(jpeg) / 2**20}
for n in (50, int(sys.argv[3]) if len(sys.argv) > 3 else 1000):
    if sys.argv[2] == "stream":
        count = sum(r.error is None for r in model.stream("score", photos(n), batch_size=25))
    else:
        count = int(np.isfinite(model.score(photos(n), batch_size=25)).sum())
    out[str(n)] = {"scored": count, "peak_rss_mb": round(peak_mb(), 1)}
print(json.dumps(out))
"""


def run(model: str, mode: str, package_dir: str = None) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **({"PYTHONPATH": package_dir} if package_dir else {}))
    r = subprocess.run([sys.executable, "-c", SCRIPT, model, mode], capture_output=True, text=True, env=env,
                       cwd=package_dir or HERE)
    if r.returncode:
        raise RuntimeError(r.stderr[-2000:])
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["growth_mb"] = round(out["1000"]["peak_rss_mb"] - out["50"]["peak_rss_mb"], 1)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--before", metavar="DIR")
    p.add_argument("--out", default=os.path.join(HERE, "stream_memory.json"))
    args = p.parse_args()
    res = {"stream": run(args.model, "stream"), "score": run(args.model, "score")}
    if args.before:
        res["score_before"] = run(args.model, "score", args.before)
    print("| runtime | peak RSS after 50 | after 1000 | growth |\n|---|---|---|---|")
    for name, r in res.items():
        print(f"| {name} | {r['50']['peak_rss_mb']:.0f} MB | {r['1000']['peak_rss_mb']:.0f} MB | {r['growth_mb']:+.0f} MB |")
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
