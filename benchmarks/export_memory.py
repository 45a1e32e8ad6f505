"""Peak resident memory of one full-size export, as a multiple of the float32 parameter bytes.

Runs the full-size demo export (the released architecture, 303 M parameters) in a fresh process
and reads that process's own peak RSS (os.wait4), then compares it with the lean-export target of
docs/accelerators.md: peak <= 2x the float32 parameter bytes.

  python benchmarks/export_memory.py [--dtype float32] [--compute-dtype float32] [--out FILE.json]
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
            "from export import checkpoint; from export.config import VilaConfig\n"
            "print(sum(int(np.prod(s)) for s in checkpoint.expected_shapes(VilaConfig()).values()) * 4)\n") % ROOT
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def export_peak(out: str, dtype: str, compute_dtype: str, log_path: str) -> dict:
    """The demo export in a fresh process: wall time and that child's own peak RSS."""
    code = ("import sys; sys.path.insert(0, %r)\n"
            "from export import cli_export\n"
            "import inspect\n"
            "kw = {'compute_dtype': %r} if 'compute_dtype' in inspect.signature(cli_export.export_demo).parameters else {}\n"
            "cli_export.export_demo(%r, %r, **kw)\n") % (ROOT, compute_dtype, out, dtype)
    t0 = time.perf_counter()
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=log_file, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4: tell Popen
    if proc.returncode:
        with open(log_path) as f:
            raise RuntimeError(f"export failed ({proc.returncode}):\n{f.read()[-3000:]}")
    return {"seconds": round(time.perf_counter() - t0, 1), "peak_rss_bytes": usage.ru_maxrss * 1024}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--compute-dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--out", help="also write the result to this JSON file")
    ap.add_argument("--label", default="", help="free text stored with the result (e.g. the commit)")
    a = ap.parse_args(argv)
    params_f32 = float32_parameter_bytes()
    with tempfile.TemporaryDirectory(prefix="vila_export_mem_") as tmp:
        res = export_peak(os.path.join(tmp, "m", "1"), a.dtype, a.compute_dtype, os.path.join(tmp, "log"))
    res.update(dtype=a.dtype, compute_dtype=a.compute_dtype, label=a.label, float32_parameter_bytes=params_f32,
               ratio=round(res["peak_rss_bytes"] / params_f32, 3), target_ratio=TARGET_RATIO)
    res["meets_target"] = res["ratio"] <= TARGET_RATIO
    print(json.dumps(res, indent=1))
    if a.out:
        sys.path.insert(0, ROOT)
        from vila_tf.atomic import atomic_file
        with atomic_file(a.out) as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
