"""Peak resident memory of one full-size export, as a multiple of the float32 parameter bytes.

Runs full-size exports (the released architecture, 303 M parameters) each in a fresh process and
reads that process's own peak RSS (os.wait4), then compares it with the lean-export target of
docs/accelerators.md: peak <= 2x the float32 parameter bytes. Two sources, side by side:
  checkpoint  a release-shaped paxml checkpoint (1.25 GB, with optimizer state) written here first:
              what `make export VILA_DIR=...` runs
  demo        the demo weights, drawn with jax as they are written: what `make export` runs

  python benchmarks/export_memory.py [--sources checkpoint,demo] [--dtype float32]
                                     [--compute-dtype float32] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET_RATIO = 2.0


def float32_parameter_bytes() -> int:
    code = ("import sys, numpy as np; sys.path.insert(0, %r)\n"
            "from export.checkpoints import paxml as checkpoint; from export.model.config import VilaConfig\n"
            "print(sum(int(np.prod(s)) for s in checkpoint.expected_shapes(VilaConfig()).values()) * 4)\n") % ROOT
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def _child_code(source: str, tmp: str, out: str, dtype: str, compute_dtype: str) -> str:
    if source == "demo":
        return ("import sys; sys.path.insert(0, %r)\n"
                "from export import exporter\n"
                "exporter.export_demo(%r, %r, compute_dtype=%r)\n") % (ROOT, out, dtype, compute_dtype)
    # A release-shaped checkpoint and a tokenizer, made in another process (not measured).
    ckpt, spm_path = os.path.join(tmp, "ckpt"), os.path.join(tmp, "spm", "spm.model")
    setup = ("import sys; sys.path.insert(0, %r); sys.path.insert(0, %r)\n"
             "import checkpoint_memory\n"
             "from export.savedmodel import spm\n"
             "checkpoint_memory.write(%r)\n"
             "spm.train(spm.repo_sentences(%r), %r, 64000)\n") % (ROOT, os.path.dirname(__file__), ckpt, ROOT, spm_path)
    subprocess.run([sys.executable, "-c", setup], check=True, capture_output=True)
    return ("import sys; sys.path.insert(0, %r)\n"
            "from export import exporter\n"
            "exporter.export_checkpoint(%r, %r, %r, %r, compute_dtype=%r)\n") % (
        ROOT, ckpt, spm_path, out, dtype, compute_dtype)


def export_peak(source: str, tmp: str, dtype: str, compute_dtype: str) -> dict:
    """One export in a fresh process: wall time and that child's own peak RSS."""
    code = _child_code(source, tmp, os.path.join(tmp, "m", "1"), dtype, compute_dtype)
    log_path = os.path.join(tmp, "log")
    t0 = time.perf_counter()
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=log_file, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4: tell Popen
    if proc.returncode:
        with open(log_path) as f:
            raise RuntimeError(f"{source} export failed ({proc.returncode}):\n{f.read()[-3000:]}")
    return {"seconds": round(time.perf_counter() - t0, 1), "peak_rss_bytes": usage.ru_maxrss * 1024}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sources", default="checkpoint,demo", help="comma-separated: checkpoint, demo")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--compute-dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--out", help="also write the result to this JSON file")
    ap.add_argument("--label", default="", help="free text stored with the result (e.g. the commit)")
    a = ap.parse_args(argv)
    params_f32 = float32_parameter_bytes()
    results = {}
    for source in a.sources.split(","):
        with tempfile.TemporaryDirectory(prefix="vila_export_mem_") as tmp:
            res = export_peak(source, tmp, a.dtype, a.compute_dtype)
        res["ratio"] = round(res["peak_rss_bytes"] / params_f32, 3)
        res["meets_target"] = res["ratio"] <= TARGET_RATIO
        results[source] = res
    report = {"dtype": a.dtype, "compute_dtype": a.compute_dtype, "label": a.label,
              "float32_parameter_bytes": params_f32, "target_ratio": TARGET_RATIO, "sources": results}
    print(json.dumps(report, indent=1))
    for source, res in results.items():
        print(f"{source}: peak {res['peak_rss_bytes'] / 1e9:.2f} GB = {res['ratio']:.2f}x the float32 parameters "
              f"(target <= {TARGET_RATIO}x: {'met' if res['meets_target'] else 'NOT met'}), {res['seconds']} s",
              file=sys.stderr)
    if a.out:
        sys.path.insert(0, ROOT)
        from vila_tf.core.atomic import atomic_file
        with atomic_file(a.out) as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
