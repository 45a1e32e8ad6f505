"""Size and time of `make package` on an export: the figures docs/publishing.md quotes.

Exports the full-size demo model as `make export` does (`python -m export all`, into a temporary
folder) unless --model names an existing SavedModel, then packages it as `make package` does
(`python -m export package`, a fresh process, timed whole) and writes the SavedModel's size, the
archive's size and the packaging time to JSON.

  python benchmarks/package_size.py [--model SAVEDMODEL_DIR] [--out benchmarks/package_size.json]
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def run(cmd: list[str]) -> float:
    """Runs one toolkit command from the checkout; its wall time in seconds."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), TF_CPP_MIN_LOG_LEVEL="2")
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if r.returncode:
        sys.exit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return seconds


def measure(model: str | None, work: str) -> dict:
    result = {}
    if model is None:
        result["export_seconds"] = round(run([sys.executable, "-m", "export", "all", "--out",
                                              os.path.join(work, "exported")]), 1)
        model = os.path.join(work, "exported", "vila_demo", "1")
        result["model"] = "full-size demo export (VILA-R architecture, 303 M parameters, float32, random weights)"
    else:
        result["model"] = os.path.abspath(model)
    dist = os.path.join(work, "dist")
    seconds = run([sys.executable, "-m", "export", "package", model, "--out", dist])
    [archive] = [f for f in os.listdir(dist) if f.endswith(".tar.gz")]
    result.update(
        savedmodel_bytes=folder_bytes(model),
        variables_bytes=folder_bytes(os.path.join(model, "variables")),
        archive=archive,
        archive_bytes=os.path.getsize(os.path.join(dist, archive)),
        package_seconds=round(seconds, 1),
    )
    result["archive_over_savedmodel"] = round(result["archive_bytes"] / result["savedmodel_bytes"], 4)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="an exported SavedModel folder (default: export the full-size demo first)")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "package_size.json"))
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="vila_package_size_") as work:
        result = measure(args.model, work)
    result["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(),
                         "load_average_1min": os.getloadavg()[0]}
    text = json.dumps(result, indent=1)
    print(text)
    sys.path.insert(0, ROOT)
    from vila_tf.core.atomic import atomic_file
    with atomic_file(args.out) as f:
        f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
