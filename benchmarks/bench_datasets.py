"""Throughput of one `vila-tf beam` worker per input format, side by side with `vila_tf` itself.

The same synthetic JPEG photos are written as loose files, TFRecord, WebDataset and Parquet shards;
for each format the job runs on the DirectRunner with one worker (FnApiRunner, in this process)
twice (best of --repeats runs each), over a few images and over all of them, so that the start-up (pipeline, model load,
compilations) cancels out: images/s = (N - n) / (t_N - t_n). The baseline is `VilaModel.score` on
the same bytes in this process (after a warm-up call), so the ratio is what Beam and the reading
of the format cost. Prints a markdown table and writes the numbers to a JSON file.

  python benchmarks/bench_datasets.py [--model EXPORT] [--images 768] [--repeats 2] [--formats tfrecord,...] [--out FILE]

Without --model it exports the tiny test fixture (tests/data) to a temporary folder.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

FEW = 16
PER_SHARD = 64


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def photos(count: int, size=(320, 240)) -> list[bytes]:
    from PIL import Image
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        arr = (rng.uniform(0, 1, (size[1], size[0], 3)) * 255).astype(np.uint8)
        arr[: size[1] // 2] //= 2
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def write_all(folder: str, images: list[bytes]) -> dict:
    """The images in each format, in shards of PER_SHARD: {format: input pattern}."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tensorflow.core.example import example_pb2
    from vila_tf.beam import shards
    os.makedirs(folder)
    for i, data in enumerate(images):
        with open(os.path.join(folder, f"img{i:05d}.jpg"), "wb") as f:
            f.write(data)
    for s in range(0, len(images), PER_SHARD):
        part = list(enumerate(images))[s:s + PER_SHARD]
        with open(os.path.join(folder, f"shard-{s:05d}.tfrecord"), "wb") as f:
            for i, data in part:
                ex = example_pb2.Example()
                ex.features.feature["image/encoded"].bytes_list.value.append(data)
                f.write(shards.tfrecord_frame(ex.SerializeToString()))
        with open(os.path.join(folder, f"shard-{s:05d}.tar"), "wb") as f:
            writer = shards.TarShardWriter(f)
            for i, data in part:
                writer.write(f"img{i:05d}", [("jpg", data), ("txt", b"a photo")])
            writer.close()
        pq.write_table(pa.table({"image": [d for _, d in part]}), os.path.join(folder, f"shard-{s:05d}.parquet"))
    return {"files": f"{folder}/img*.jpg", "tfrecord": f"{folder}/*.tfrecord", "webdataset": f"{folder}/*.tar",
            "parquet": f"{folder}/*.parquet"}


def run_job(model: str, pattern: str, out: str) -> float:
    from vila_tf import beam as vila_beam
    t0 = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):
        rc = vila_beam.main(["score", model, "--input", pattern, "--output", out, "--direct_num_workers=1"])
    seconds = time.perf_counter() - t0
    if rc != 0:
        raise RuntimeError(f"the job over {pattern} exited with {rc}")
    return seconds


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="an exported SavedModel (default: export the tiny test fixture)")
    p.add_argument("--images", type=int, default=768)
    p.add_argument("--repeats", type=int, default=2, help="runs of each job; the fastest counts")
    p.add_argument("--formats", default="files,tfrecord,webdataset,parquet", help="comma-separated")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results_datasets.json"))
    args = p.parse_args()
    import vila_tf
    with tempfile.TemporaryDirectory(prefix="bench_datasets-") as work:
        model_path = args.model
        if not model_path:
            import tiny_models
            log("exporting the tiny fixture")
            spm = tiny_models.train_spm(os.path.join(work, "spm.model"))
            model_path = tiny_models.export_fixture("vila_r_tiny", spm, os.path.join(work, "model", "1"))
        images = photos(args.images)
        few = write_all(os.path.join(work, "few"), images[:FEW])
        full = write_all(os.path.join(work, "all"), images)

        model = vila_tf.load(model_path)
        model.score(images[:32])  # warm-up: compilations, decode tracing
        direct_s = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            model.score(images)
            direct_s.append(time.perf_counter() - t0)
        direct = args.images / min(direct_s)
        log(f"vila_tf VilaModel.score: {direct:.1f} images/s (best of {args.repeats})")
        model.close()
        del model

        rows = {}
        for fmt in args.formats.split(","):
            # Best of several runs each: on a shared machine the slow runs are the disturbed ones.
            t_few = min(run_job(model_path, few[fmt], os.path.join(work, f"out-{fmt}-few-{r}"))
                        for r in range(args.repeats))
            t_all = min(run_job(model_path, full[fmt], os.path.join(work, f"out-{fmt}-all-{r}"))
                        for r in range(args.repeats))
            rate = (args.images - FEW) / max(t_all - t_few, 1e-9)
            rows[fmt] = {"seconds_few": t_few, "seconds_all": t_all, "images_per_s": rate,
                         "ratio_to_vila_tf": rate / direct}
            log(f"{fmt}: {t_few:.1f} s for {FEW}, {t_all:.1f} s for {args.images}: {rate:.1f} images/s")

    meta = {"model": os.path.abspath(args.model) if args.model else "tiny test fixture (vila_r_tiny)",
            "images": args.images, "image_size": "320x240 JPEG", "cpus": os.cpu_count(),
            "load_average_1min": os.getloadavg()[0], "machine": platform.machine()}
    result = {"meta": meta, "vila_tf_images_per_s": direct, "beam_one_worker": rows}
    print(f"\n{args.images} JPEG photos 320x240, one DirectRunner worker, {os.cpu_count()} CPUs, best of {args.repeats} "
          f"(load average {meta['load_average_1min']:.1f})\n")
    print("| input | images/s | vs VilaModel.score |\n|---|---|---|")
    print(f"| VilaModel.score (no Beam) | {direct:.1f} | 1.00 |")
    for fmt, r in rows.items():
        print(f"| {fmt} | {r['images_per_s']:.1f} | {r['ratio_to_vila_tf']:.2f} |")
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
