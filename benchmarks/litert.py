"""LiteRT on this CPU: the on-device image heads side by side with the SavedModel (docs/on_device.md).

One process, the full-size demo model (random weights of the released architecture: fine for timing):
  1. export it (`python -m export all`), convert it (`python -m export litert`: float32, float16, int8);
  2. batch 1, taking turns call by call: the SavedModel's `score_pixels` (XLA, pixels already
     preprocessed) and each LiteRT variant's `image` signature (XNNPACK on every core; a 640x480
     photo's uint8 pixels, the resize inside); load time, file size;
  3. accuracy of each variant against the SavedModel on photo-like images of several sizes (score
     and zero-shot differences, embedding cosine);
  4. the runtime's batch path: `vila_tf.load(DIR).score(folder of JPEGs)` end to end, images/s, for
     the SavedModel and the LiteRT variants.
It exits non-zero when float32 LiteRT disagrees with the SavedModel (1e-4) or is slower than it at
batch 1 (best calls), prints the tables docs/on_device.md quotes and writes them to a JSON file
(tests/test_docs.py checks the page's figures against it: docs/on_device.md marks each).

  python benchmarks/litert.py [--out benchmarks/litert_results.json] [--work-dir DIR [--reuse]] [--rounds N]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

TOLERANCE = 1e-4
PHOTO = (480, 640)  # (height, width) of the timed photo
BATCH_IMAGES = 16  # JPEGs of the runtime's batch path
VARIANTS = ("float32", "float16", "int8")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def photo(seed: int, h: int, w: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    f = rng.uniform(10, 60, size=3)
    base = np.stack([np.sin(x / f[0]), np.cos(y / f[1]), np.sin((x + y) / f[2])], -1)
    return np.clip(128 + 90 * base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)


def run_step(cmd: list, log_path: str) -> float:
    t0 = time.time()
    with open(log_path, "w") as f:
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    if r.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {r.returncode}); see {log_path}")
    return time.time() - t0


def folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def build(work: str, reuse: bool) -> dict:
    savedmodel = os.path.join(work, "exported", "vila_demo", "1")
    litert_dir = os.path.join(work, "litert")
    stats_path = os.path.join(work, "build.json")
    if reuse and os.path.isfile(stats_path):
        log(f"reusing the export and the LiteRT models in {work}")
        with open(stats_path) as f:
            return json.load(f)
    log("exporting the full-size demo model (python -m export all)")
    export_s = run_step([sys.executable, "-m", "export", "all", "--out", os.path.join(work, "exported")],
                        os.path.join(work, "export.log"))
    log("converting it (python -m export litert)")
    litert_s = run_step([sys.executable, "-m", "export", "litert", savedmodel, "--out", litert_dir],
                        os.path.join(work, "litert.log"))
    stats = {"savedmodel": savedmodel, "litert": litert_dir, "export_seconds": round(export_s, 1),
             "litert_seconds": round(litert_s, 1)}
    with open(stats_path, "w") as f:
        json.dump(stats, f)
    return stats


def timed_rounds(fns: dict, rounds: int) -> dict:
    """Warm-up call each, then `rounds` rounds of one call each, taking turns: the compared paths
    see the same load from other processes."""
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: {"median_s": float(np.median(v)), "best_s": float(min(v)), "times_s": v} for k, v in times.items()}


def measure(stats: dict, rounds: int) -> dict:
    import tensorflow as tf
    import tensorflow_text  # noqa: F401
    from ai_edge_litert.interpreter import Interpreter
    from vila_tf.savedmodel import preprocessing
    from vila_tf.litert import format as litert_format
    meta = litert_format.read_metadata(stats["litert"])
    sm = tf.saved_model.load(stats["savedmodel"])
    sigs = sm.signatures
    image = photo(0, *PHOTO)
    pixels = tf.constant(preprocessing.crop_and_scale(tf.constant(image.astype(np.float32))).numpy()[None])
    runners, load_s = {}, {}
    for v in VARIANTS:
        t0 = time.perf_counter()
        it = Interpreter(model_path=litert_format.variant_path(stats["litert"], meta, v), num_threads=os.cpu_count())
        runners[v] = it.get_signature_runner(litert_format.IMAGE_SIGNATURE)
        runners[v](image=image[None])
        load_s[v] = time.perf_counter() - t0
    fns = {"savedmodel_score_pixels": lambda: sigs["score_pixels"](image=pixels)["predictions"].numpy()}
    fns.update({f"litert_{v}": (lambda r=runners[v]: r(image=image[None])["predictions"]) for v in VARIANTS})
    log(f"batch 1: {rounds} rounds of {', '.join(fns)}")
    timing = timed_rounds(fns, rounds)
    sm_score = float(fns["savedmodel_score_pixels"]()[0, 0])
    lite_score = float(runners["float32"](image=image[None])["predictions"][0, 0])

    log("accuracy against the SavedModel")
    from export.tools.litert import ACCURACY_SIZES
    accuracy = {v: {"score": [], "zero_shot": [], "cosine": []} for v in VARIANTS}
    for k, (h, w) in enumerate(ACCURACY_SIZES):
        img = photo(100 + k, h, w)
        px = tf.constant(preprocessing.crop_and_scale(tf.constant(img.astype(np.float32))).numpy()[None])
        ref_score = sigs["score_pixels"](image=px)["predictions"].numpy()[0, 0]
        ref_emb = sigs["image_embedding_pixels"](image=px)["image_embedding"].numpy()[0]
        ref_zsl = sigs["zero_shot_pixels"](image=px)["zero_shot_score"].numpy()[0]
        for v in VARIANTS:
            out = runners[v](image=img[None])
            e = out["image_embedding"][0]
            accuracy[v]["score"].append(abs(float(out["predictions"][0, 0] - ref_score)))
            accuracy[v]["zero_shot"].append(abs(float(out["zero_shot_score"][0] - ref_zsl)))
            accuracy[v]["cosine"].append(float(e @ ref_emb / (np.linalg.norm(e) * np.linalg.norm(ref_emb))))
    accuracy = {v: {"images": len(ACCURACY_SIZES), "score_max_abs_error": max(a["score"]),
                    "zero_shot_max_abs_error": max(a["zero_shot"]), "embedding_min_cosine": min(a["cosine"])}
                for v, a in accuracy.items()}
    del runners
    sizes = {"savedmodel": folder_bytes(stats["savedmodel"]),
             **{v: meta["variants"][v]["bytes"] for v in VARIANTS}}
    return {"timing": timing, "load_s": load_s, "agreement": {"savedmodel": sm_score, "litert_float32": lite_score,
                                                              "abs_difference": abs(sm_score - lite_score)},
            "accuracy": accuracy, "bytes": sizes}


def runtime_batch_path(stats: dict, work: str) -> dict:
    """`vila_tf.load(...).score(folder)` end to end (decode threads, the model), images/s."""
    import warnings
    from PIL import Image
    import vila_tf
    folder = os.path.join(work, "jpegs")
    os.makedirs(folder, exist_ok=True)
    for i in range(BATCH_IMAGES):
        Image.fromarray(photo(200 + i, *PHOTO)).save(os.path.join(folder, f"{i:03d}.jpg"), quality=90)
    out = {}
    paths = {"savedmodel": (stats["savedmodel"], None), **{f"litert_{v}": (stats["litert"], v) for v in VARIANTS}}
    scores = {}
    for name, (path, variant) in paths.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = vila_tf.load(path, variant=variant) if variant else vila_tf.load(path)
            model.score(folder)  # warm-up: the SavedModel compiles its batch of 16 here
            t0 = time.perf_counter()
            scores[name] = model.score(folder)
            seconds = time.perf_counter() - t0
        model.close()
        out[name] = {"images": BATCH_IMAGES, "seconds": seconds, "images_per_s": BATCH_IMAGES / seconds}
        log(f"{name}: {BATCH_IMAGES / seconds:.2f} images/s")
    out["litert_float32_max_abs_difference"] = float(np.abs(scores["litert_float32"] - scores["savedmodel"]).max())
    return out


def doc_rows(res: dict) -> dict:
    """The table rows docs/on_device.md quotes, from the results (the test compares them)."""
    t, b, acc, rt = res["timing"], res["bytes"], res["accuracy"], res["runtime"]
    sm = t["savedmodel_score_pixels"]
    speed = [f"| SavedModel `score_pixels` (XLA) | {b['savedmodel'] / 1e6:.0f} MB | {sm['median_s']:.3f} s | "
             f"{sm['best_s']:.3f} s | 1.00 | {rt['savedmodel']['images_per_s']:.2f} |"]
    for v in VARIANTS:
        r = t[f"litert_{v}"]
        speed.append(f"| LiteRT {v} | {b[v] / 1e6:.0f} MB | {r['median_s']:.3f} s | {r['best_s']:.3f} s | "
                     f"{sm['best_s'] / r['best_s']:.2f} | {rt[f'litert_{v}']['images_per_s']:.2f} |")
    accuracy = [f"| {v} | {acc[v]['score_max_abs_error']:.1e} | {acc[v]['zero_shot_max_abs_error']:.1e} | "
                f"{acc[v]['embedding_min_cosine']:.6f} |" for v in VARIANTS]
    return {"speed": speed, "accuracy": accuracy}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "litert_results.json"))
    p.add_argument("--work-dir", help="folder for the export and the LiteRT models (default: temporary)")
    p.add_argument("--reuse", action="store_true", help="reuse the export and LiteRT models in --work-dir")
    p.add_argument("--rounds", type=int, default=12, help="timed calls per path at batch 1")
    args = p.parse_args(argv)
    work = args.work_dir or tempfile.mkdtemp(prefix="vila_litert_bench_")
    os.makedirs(work, exist_ok=True)
    from bench import machine_info
    try:
        res = {"machine": machine_info(), "build": build(work, args.reuse)}
        res.update(measure(res["build"], args.rounds))
        res["runtime"] = runtime_batch_path(res["build"], work)
        res["machine"]["load_average_end"] = os.getloadavg()
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    t = res["timing"]
    res["ratio_best"] = t["savedmodel_score_pixels"]["best_s"] / t["litert_float32"]["best_s"]
    res["ratio_median"] = t["savedmodel_score_pixels"]["median_s"] / t["litert_float32"]["median_s"]
    rows = doc_rows(res)
    res["doc_rows"] = rows
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    print("| | size | batch 1, median | batch 1, best | speed vs SavedModel (best) | runtime images/s |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows["speed"]))
    print("\n| variant | score error | zero-shot error | embedding cosine |\n|---|---|---|---|")
    print("\n".join(rows["accuracy"]))
    print(f"\nfloat32 LiteRT / SavedModel speed ratio: {res['ratio_best']:.2f} (best calls), "
          f"{res['ratio_median']:.2f} (medians); load average {res['machine']['load_average_start'][0]:.1f} -> "
          f"{res['machine']['load_average_end'][0]:.1f} on {res['machine']['cores']} cores")
    ok = True
    if res["agreement"]["abs_difference"] > TOLERANCE or res["accuracy"]["float32"]["score_max_abs_error"] > TOLERANCE:
        print(f"FAIL: float32 LiteRT differs from the SavedModel by more than {TOLERANCE}", file=sys.stderr)
        ok = False
    if res["ratio_best"] < 1.0:
        print("FAIL: float32 LiteRT is slower than the SavedModel at batch 1", file=sys.stderr)
        ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
