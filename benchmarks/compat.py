"""`make compat`: which TensorFlow releases run which export, measured (docs/compatibility.md).

For each TensorFlow release still installable (2.15 ... 2.21) a virtual environment with that
release and the matching tensorflow-text is created (once; `--venvs`, default
~/.cache/vila-tf/compat-venvs). The tiny genuine VILA-R fixture is exported here with the default
lowering and with `--target-tensorflow` for the oldest reachable release (`--targets`: others too),
every signature is run here (the reference) and then in each release on the same inputs:

  loads   tf.saved_model.load succeeds
  runs    every signature runs
  matches every output equals the exporting environment's (float: max |diff| <= 1e-5; strings equal)
  vila_tf vila_tf.load + score: "ok", or "refused" (the load-time version check) before loading

Each release is also probed for what decides the lowering (the newest XlaCallModule calling
convention it runs, the newest StableHLO version it reads, tf.io.decode_webp): the values
export/tf_targets.py holds. Prints the matrix and writes it as JSON (`--out`).

    python benchmarks/compat.py [--releases 2.16,2.21] [--targets oldest|all|2.16,2.18] [--out benchmarks/compat.json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

# 2.15 is below the oldest reachable release: measured to show how it fails (docs/compatibility.md).
RELEASES = ("2.15", "2.16", "2.17", "2.18", "2.19", "2.20", "2.21")
DEFAULT_VENVS = os.environ.get("VILA_COMPAT_VENVS", os.path.expanduser("~/.cache/vila-tf/compat-venvs"))
TOLERANCE = 1e-5
FIXTURE = "vila_r_tiny"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- virtual environments ----------------------------------------------------------------------------

def venv_python(venvs: str, release: str) -> str:
    """The python of `release`'s virtual environment, created and installed on first use."""
    folder = os.path.join(venvs, f"tf{release}")
    python = os.path.join(folder, "bin", "python")
    stamp = os.path.join(folder, ".installed")
    if os.path.isfile(stamp):
        return python
    log(f"creating {folder} (TensorFlow {release}.*, ~2 GB of downloads)")
    subprocess.run([sys.executable, "-m", "venv", folder], check=True)
    # tf-keras and tensorflow-text pin TensorFlow: all three on the same minor release, or pip
    # would upgrade TensorFlow.
    packages = [f"tensorflow=={release}.*", f"tensorflow-text=={release}.*", f"tf-keras=={release}.*",
                "tensorflow-hub>=0.16", "pillow"]
    with open(os.path.join(folder, "install.log"), "w") as out:
        r = subprocess.run([python, "-m", "pip", "install", "-q", *packages], stdout=out, stderr=subprocess.STDOUT)
    if r.returncode:
        raise RuntimeError(f"installing {' '.join(packages)} failed; see {folder}/install.log")
    open(stamp, "w").close()
    return python


def child(python: str, *args, timeout: int = 1200) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT)
    r = subprocess.run([python, os.path.join(HERE, "compat_child.py"), *args], capture_output=True, text=True,
                       env=env, timeout=timeout)
    if r.returncode:
        return {"crashed": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"}
    return json.loads(r.stdout.strip().splitlines()[-1])


# -- what the exporting environment writes ----------------------------------------------------------

def write_inputs(work: str) -> None:
    """Two images (PNG, JPEG), pixels and texts, the same for every release."""
    import io

    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(18)
    base = (rng.random((150, 200, 3)) * 255).astype(np.uint8)
    png, jpeg = io.BytesIO(), io.BytesIO()
    Image.fromarray(base).save(png, "PNG")
    Image.fromarray(base[::-1]).save(jpeg, "JPEG", quality=90)
    np.savez(os.path.join(work, "inputs.npz"), png=np.frombuffer(png.getvalue(), np.uint8),
             jpeg=np.frombuffer(jpeg.getvalue(), np.uint8),
             pixels=rng.random((2, 224, 224, 3)).astype(np.float32),
             texts=np.array(["good image", "a photo of a dog on the beach at sunset"]))


def write_stablehlo_probes(work: str, versions) -> None:
    """One trivial jax2tf SavedModel per StableHLO version (calling convention 9, which every
    release runs): the newest one a release loads and runs is the newest version it reads."""
    import jax.numpy as jnp
    import tensorflow as tf
    from jax.experimental import jax2tf

    from export.savedmodel import tf_targets
    from export.savedmodel.jax_settings import calling_convention
    for version in versions:
        with calling_convention(9), tf_targets.stablehlo_target(version):
            m = tf.Module()
            f = jax2tf.convert(lambda x: jnp.tanh(x) @ x.T + 1, with_gradient=False,
                               polymorphic_shapes=["(b, 4)"], native_serialization_platforms=("cpu",))
            m.f = tf.function(f, input_signature=[tf.TensorSpec([None, 4], tf.float32)], autograph=False)
            m.f(tf.ones([2, 4]))
            tf.saved_model.save(m, os.path.join(work, "stablehlo_probes", version))


def write_exports(work: str, targets) -> dict:
    """{label: SavedModel dir}: the fixture with the default lowering and with each target."""
    import tiny_models
    from export import exporter
    spm = tiny_models.train_spm(os.path.join(work, "spm", "spm.model"))
    exports = {}
    for t in (None, *targets):
        label = "default" if t is None else f"target {t}"
        log(f"exporting {FIXTURE} ({label})")
        exports[label] = exporter.export_checkpoint(
            os.path.join(tiny_models.DATA, FIXTURE, "ckpt"), spm, os.path.join(work, "exports", label.replace(" ", "_")),
            overrides=tiny_models.FIXTURE_OVERRIDES, target_tensorflow=t)
    return exports


# -- comparison -----------------------------------------------------------------------------------

def compare(reference: str, candidate: str) -> float | str:
    """Max |diff| over the float outputs, or the first mismatch of a non-float output."""
    import numpy as np
    ref, got = np.load(reference, allow_pickle=False), np.load(candidate, allow_pickle=False)
    if set(ref.files) != set(got.files):
        return f"outputs differ: {sorted(set(ref.files) ^ set(got.files))}"
    worst = 0.0
    for k in ref.files:
        a, b = ref[k], got[k]
        if a.shape != b.shape:
            return f"{k}: shape {b.shape} != {a.shape}"
        if a.dtype.kind == "f":
            worst = max(worst, float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0)
        elif not np.array_equal(a, b):
            return f"{k}: differs"
    return worst


def matrix(venvs: str, releases, targets, work: str) -> dict:
    from export.savedmodel import tf_targets
    pythons = {r: venv_python(venvs, r) for r in releases}
    probes = {r: child(p, "probe") for r, p in pythons.items()}
    for r, p in probes.items():
        log(f"TensorFlow {r}: {p}")
    from jax._src.lib.mlir.dialects import hlo
    versions = sorted({tf_targets.jax_default_stablehlo(), hlo.get_current_version(),
                       *(t.stablehlo for t in tf_targets.TARGETS.values()),
                       *(p.get("stablehlo_reported") for p in probes.values() if p.get("stablehlo_reported"))},
                      key=tf_targets.version_key)
    write_stablehlo_probes(work, versions)
    for r, p in pythons.items():
        reads = child(p, "stablehlo", work)
        readable = [v for v in versions if reads.get(v)]
        probes[r]["stablehlo_reads"] = max(readable, key=tf_targets.version_key) if readable else None
        probes[r]["stablehlo_probed"] = reads
    write_inputs(work)
    exports = write_exports(work, targets)
    results = {}
    os.makedirs(os.path.join(work, "outputs"), exist_ok=True)

    def run_all(python: str, prefix: str) -> dict:
        """{label: (status, outputs.npz)} for every export, in one process of `python`."""
        outs = {label: os.path.join(work, "outputs", f"{prefix}_{label.replace(' ', '_')}.npz") for label in exports}
        statuses = child(python, "run", work, *(f"{outs[l]}={p}" for l, p in exports.items()))
        return {label: (statuses.get(path, statuses), outs[label]) for label, path in exports.items()}

    reference = run_all(sys.executable, "reference")
    for label, (status, _) in reference.items():
        if status.get("loads") != "ok" or any(v != "ok" for v in status.get("signatures", {}).values()):
            raise RuntimeError(f"the exporting environment cannot run its own export ({label}): {status}")
    for r, p in pythons.items():
        log(f"TensorFlow {r}: running {', '.join(exports)}")
        for label, (status, out) in run_all(p, r).items():
            path = exports[label]
            sigs = status.get("signatures", {})
            runs = bool(sigs) and all(v == "ok" for v in sigs.values())
            diff = compare(reference[label][1], out) if runs else None
            results.setdefault(r, {})[label] = {
                "loads": status.get("loads") == "ok", "runs": runs,
                "matches": isinstance(diff, float) and diff <= TOLERANCE, "max_abs_diff": diff,
                "vila_tf_load": status.get("vila_tf_load"), "errors": sorted({v for v in sigs.values() if v != "ok"})
                or ([status["loads"]] if status.get("loads") not in (None, "ok") else [])
                or ([status["crashed"]] if "crashed" in status else []),
                "metadata_minimum": json.load(open(os.path.join(path, "assets.extra", "vila_tf.json")))
                ["tensorflow_support"]["minimum"]}
    return {"releases": probes, "results": results, "exports": list(exports), "tolerance": TOLERANCE}


def _mark(cell: dict | None) -> str:
    if cell is None:
        return "-"
    if not cell["loads"]:
        return "no load"
    if not cell["runs"]:
        return "loads, fails"
    return "yes" if cell["matches"] else f"runs, differs ({cell['max_abs_diff']})"


def table(report: dict) -> str:
    labels = report["exports"]
    head = ["TensorFlow", "XlaCallModule ≤", "StableHLO ≤", "decode_webp"] + \
        [f"{l}: loads/runs/matches" for l in labels] + [f"vila_tf.load ({l})" for l in labels]
    rows = []
    for r, cells in report["results"].items():
        p = report["releases"][r]
        vila = [(cells[l]["vila_tf_load"] or "-") if l in cells else "-" for l in labels]
        vila = ["refused" if v.startswith("refused") else v for v in vila]
        rows.append([p.get("tensorflow", r), str(p.get("calling_convention")), str(p.get("stablehlo_reads")),
                     "yes" if p.get("decode_webp") else "no"] + [_mark(cells.get(l)) for l in labels] + vila)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    from export.savedmodel import tf_targets
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--venvs", default=DEFAULT_VENVS, help="folder of the per-release virtual environments")
    p.add_argument("--releases", default=",".join(RELEASES), help="TensorFlow releases to test (X.Y,...)")
    p.add_argument("--targets", default="oldest",
                   help="--target-tensorflow exports to test: 'oldest', 'all' or X.Y,... (the default export always)")
    p.add_argument("--out", default=os.path.join(HERE, "compat.json"), help="JSON report to write")
    p.add_argument("--work", default=None, help="keep the exports and outputs here (default: a temporary folder)")
    args = p.parse_args(argv)
    releases = [tf_targets.release_of(r) for r in args.releases.split(",") if r]
    if args.targets in ("oldest", "all"):
        # A known-bad release (measured here as a release, never a target: vila_tf refuses it) is no target.
        targets = sorted((t for t in tf_targets.TARGETS if t not in tf_targets.KNOWN_BAD),
                         key=tf_targets.release_key)[:1 if args.targets == "oldest" else None]
    else:
        targets = [tf_targets.target(t).release for t in args.targets.split(",") if t]
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="vila_compat_") as tmp:
        work = args.work or tmp
        os.makedirs(work, exist_ok=True)
        report = matrix(args.venvs, releases, targets, work)
    report["seconds"] = round(time.time() - t0)
    from vila_tf.core.atomic import atomic_file
    with atomic_file(args.out) as f:
        f.write(json.dumps(report, indent=1) + "\n")
    print(table(report))
    print(f"wrote {args.out} ({report['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
