"""The time to a first result: `vila-tf score MODEL photo.jpg` in a fresh process, against a bare
`python -c "import tensorflow, tensorflow_text"` measured in the same run (best of N, runs
interleaved, warm page cache), with the compilation cache cold (an empty folder), warm (filled by
an earlier run) and off; the LiteRT export's command when one is given; the same pair in a plain
`pip install vila-tf` environment when one is given (--plain-venv); and where the time goes inside
one process (imports, load, first call, second call, and tf.saved_model.load side by side).

    python benchmarks/first_result.py --model exported/vila_demo --litert litert/vila_demo/1 \
        [--plain-venv /tmp/plain] --out benchmarks/first_result.json

Writes the JSON that docs/runtime.md quotes (its drift markers check the figures).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VILA_TF = os.path.join(os.path.dirname(sys.executable), "vila-tf")

BREAKDOWN = r"""
import json, os, sys, time
t0 = time.perf_counter()
from vila_tf.savedmodel import tf_import
tf = tf_import.tensorflow(lean=True)  # as `vila-tf` imports it
tf_import.register_text_ops()
t1 = time.perf_counter()
import vila_tf
from vila_tf.cli import options
from vila_tf.savedmodel import compile_cache
model_path, photo = sys.argv[1], sys.argv[2]
class A: model = model_path; variant = None
compile_cache.enable(options.check_model(A)["identity"])
t2 = time.perf_counter()
m = vila_tf.load(model_path)
t3 = time.perf_counter()
m.score([photo])
t4 = time.perf_counter()
m.score([photo])
t5 = time.perf_counter()
tf.saved_model.load(m.path)  # what the runtime's loader replaces, side by side
t6 = time.perf_counter()
print(json.dumps({"import_tensorflow": t1 - t0, "cli_checks": t2 - t1, "load": t3 - t2, "first_call": t4 - t3,
                  "second_call": t5 - t4, "load_with_tf_saved_model_load": t6 - t5}))
"""


def _timed(cmd: list, env: dict) -> float:
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    took = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-2000:]}")
    return took


def _machine() -> dict:
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
    except OSError:
        model = platform.processor()
    return {"cpu": model, "cores": os.cpu_count(), "avx512": "avx512f" in flags, "amx": "amx_tile" in flags,
            "python": platform.python_version()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=os.path.join(ROOT, "exported", "vila_demo"))
    p.add_argument("--litert", help="a LiteRT export of the same model (python -m export litert)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--plain-venv", help="a virtual environment with only `pip install vila-tf` (no extras: "
                   "no scikit-learn, matplotlib or JAX for TensorFlow's import to pull in), timed the same way")
    p.add_argument("--out", help="write the figures here as JSON")
    args = p.parse_args(argv)
    from PIL import Image
    work = tempfile.mkdtemp(prefix="vila-first-result-")
    photo = os.path.join(work, "photo.jpg")
    Image.fromarray((np.random.RandomState(0).rand(768, 1024, 3) * 255).astype(np.uint8)).save(photo, quality=90)
    base = {k: v for k, v in os.environ.items() if k not in ("TF_XLA_FLAGS", "TF_CPP_MIN_LOG_LEVEL")}
    warm_cache = os.path.join(work, "warm")
    commands = {
        "bare_import": ([sys.executable, "-c", "import tensorflow, tensorflow_text"], dict(base)),
        "score_cache_off": ([VILA_TF, "score", args.model, photo], dict(base, VILA_TF_CACHE_DIR="off")),
        "score_cache_warm": ([VILA_TF, "score", args.model, photo], dict(base, VILA_TF_CACHE_DIR=warm_cache)),
    }
    if args.litert:
        commands["score_litert"] = ([VILA_TF, "score", args.litert, photo], dict(base))
    if args.plain_venv:
        plain = os.path.join(os.path.abspath(args.plain_venv), "bin")
        commands["plain_bare_import"] = ([os.path.join(plain, "python"), "-c", "import tensorflow, tensorflow_text"],
                                         dict(base))
        commands["plain_score_cache_warm"] = ([os.path.join(plain, "vila-tf"), "score", args.model, photo],
                                              dict(base, VILA_TF_CACHE_DIR=warm_cache))
    _timed(*commands["score_cache_warm"])  # fills the warm cache (and the page cache)
    times: dict = {name: [] for name in commands}
    times["score_cache_cold"] = []
    for run in range(args.runs):
        for name, (cmd, env) in commands.items():
            times[name].append(_timed(cmd, env))
        cold = dict(base, VILA_TF_CACHE_DIR=os.path.join(work, f"cold{run}"))
        times["score_cache_cold"].append(_timed([VILA_TF, "score", args.model, photo], cold))
        print(f"run {run + 1}/{args.runs}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), flush=True)
    best = {k: min(v) for k, v in times.items()}
    ratios = {k: best[k] / best["bare_import"] for k in best if k != "bare_import" and not k.startswith("plain_")}
    if args.plain_venv:  # each environment against its own bare import
        ratios["plain_score_cache_warm"] = best["plain_score_cache_warm"] / best["plain_bare_import"]
    breakdown = {}
    for label, cache in (("cache_warm", warm_cache), ("cache_off", "off")):
        env = dict(base, VILA_TF_CACHE_DIR=cache, PYTHONPATH=ROOT)
        r = subprocess.run([sys.executable, "-c", BREAKDOWN, args.model, photo], capture_output=True, text=True,
                           env=env)
        if r.returncode != 0:
            raise SystemExit(r.stderr[-2000:])
        breakdown[label] = json.loads(r.stdout.strip().splitlines()[-1])
    result = {"machine": _machine(), "model": os.path.abspath(args.model), "litert": args.litert,
              "runs": args.runs, "seconds": times, "best_seconds": best, "ratio_to_bare_import": ratios,
              "in_process": breakdown}
    print(json.dumps({"best_seconds": best, "ratio_to_bare_import": ratios, "in_process": breakdown}, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
