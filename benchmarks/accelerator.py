"""Runs a vila-tf StableHLO bundle with jax and numpy only (no TensorFlow): checks and timings.

The bundle comes from `python -m export stablehlo SAVEDMODEL --out BUNDLE` (docs/accelerators.md).
Each function's serialized jax.export module (the bytes stored in the SavedModel) is deserialized
and run on the default jax backend (cpu, cuda or tpu) with the bundle's weights, or with random
weights of the right shapes when the bundle holds only shapes. With weights, the outputs for the
bundle's sample inputs are checked against the SavedModel's (float32 compute: within 1e-4, caption
ids identical; bfloat16 compute: the bounds in the manifest). Then each function is timed at each
batch size. Prints one JSON document; exits 1 when a check fails.

  python benchmarks/accelerator.py BUNDLE [--batch-sizes 1,8,32,128] [--functions image,caption]
      [--repeats 5] [--peak-tflops 989] [--out result.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

# Dense bfloat16 matrix peaks (TFLOP/s, no sparsity) by device-kind substring, for the share of the
# chip's peak; --peak-tflops overrides. Vendor datasheet figures.
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L4": 121.0, "TPU v5 lite": 197.0,
                    "TPU v5e": 197.0, "TPU v4": 275.0, "TPU v5p": 459.0}


def default_batch_sizes(backend: str) -> list[int]:
    return [1, 8, 32, 128] + ([] if backend == "cpu" else [256])


def load_bundle(path: str) -> dict:
    manifest_path = os.path.join(path, "manifest.json")
    if not os.path.isfile(manifest_path):
        sys.exit(f"{manifest_path}: not a vila-tf StableHLO bundle (python -m export stablehlo ... --out BUNDLE)")
    with open(manifest_path) as f:
        return json.load(f)


def _dtype(name: str):
    import jax.numpy as jnp
    return jnp.dtype(name)


def load_weights(path: str, manifest: dict, seed: int = 0) -> tuple[dict, bool]:
    """{name: numpy array}; True when they are the bundle's own, False when random of the right shapes."""
    spec = manifest["weights"]
    if spec["file"]:
        with np.load(os.path.join(path, spec["file"]), allow_pickle=False) as z:
            return {n: z[n].view(_dtype(a["dtype"])) if a["dtype"] == "bfloat16" else z[n]
                    for n, a in spec["arrays"].items()}, True
    rng = np.random.default_rng(seed)
    return {n: (rng.standard_normal(a["shape"], np.float32) * 0.02).astype(_dtype(a["dtype"]))
            for n, a in spec["arrays"].items()}, False


def make_input(kind: str, shape: list, dtype: str, batch: int, config: dict, rng) -> np.ndarray:
    """A data input at `batch`: images in [0, 1], token ids, or paddings (shapes from the module)."""
    text_length = 64
    concrete = [batch if i == 0 else d if d is not None else text_length for i, d in enumerate(shape)]
    if kind == "image":
        return rng.uniform(0, 1, concrete).astype(dtype)
    if kind == "ids":
        return rng.integers(3, int(config["vocab_size"]), concrete).astype(dtype)
    return np.zeros(concrete, dtype)


def compare(outputs, expected: list, tolerance: dict) -> dict:
    """Max |difference| of float outputs, agreement share of integer ones, against the bundle's."""
    result, ok = {"outputs": []}, True
    for got, want in zip(outputs, expected):
        got = np.asarray(got)
        if np.issubdtype(want.dtype, np.integer):
            agreement = float(np.mean(got == want))
            passed = agreement >= tolerance["int_agreement"]
            result["outputs"].append({"kind": "int", "agreement": agreement, "passed": passed})
        else:
            err = float(np.max(np.abs(got.astype(np.float32) - want.astype(np.float32))))
            passed = err <= tolerance["float_abs"]
            result["outputs"].append({"kind": "float", "max_abs_error": err, "passed": passed})
        ok &= passed
    result["passed"] = bool(ok)
    return result


def _flops(compiled) -> float | None:
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        return float(cost["flops"]) if cost and cost.get("flops") else None
    except Exception:  # noqa: BLE001 - not every backend reports a cost
        return None


class Compiled:
    """One function's executables by batch size, shared by the check and the timings."""

    def __init__(self, exported):
        import jax
        self.fn, self.by_batch = jax.jit(exported.call), {}

    def at(self, args: list, batch: int):
        """(executable, compile seconds) for `args` at `batch`."""
        if batch not in self.by_batch:
            t0 = time.perf_counter()
            self.by_batch[batch] = (self.fn.lower(*args).compile(), time.perf_counter() - t0)
        return self.by_batch[batch]


def time_function(compiled: Compiled, weights_dev: list, positions: list, batch: int, config: dict,
                  repeats: int, rng, is_caption: bool) -> dict:
    """Times one function at `batch`: a warm-up call, then the best of `repeats`."""
    import jax
    args = list(weights_dev)
    for pos, inp in positions:
        args.insert(pos, jax.device_put(make_input(inp["data"], inp["shape"], inp["dtype"], batch, config, rng)))
    executable, compile_s = compiled.at(args, batch)
    out = jax.block_until_ready(executable(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(executable(*args))
        times.append(time.perf_counter() - t0)
    best = min(times)
    row = {"batch": batch, "compile_s": round(compile_s, 3), "seconds": best,
           "median_seconds": float(np.median(times)), "items_per_s": batch / best}
    # XLA's count for one call; for caption's while loop it may count the loop body once.
    flops = _flops(executable)
    if flops:
        row["flops"] = flops
        row["tflops_per_s"] = flops / best / 1e12
    if is_caption:
        # caption outputs: ids [B, L], lengths [B] (BOS and EOS counted): generated tokens = lengths - 1
        generated = int(np.sum(np.asarray(out[1]) - 1))
        row["generated_tokens"] = generated
        row["tokens_per_s"] = generated / best
    return row


def run(bundle: str, batch_sizes: list[int] | None, functions: list[str] | None, repeats: int,
        peak_tflops: float | None) -> dict:
    import jax
    from jax import export as jax_export

    manifest = load_bundle(bundle)
    device = jax.devices()[0]
    backend = jax.default_backend()
    batch_sizes = batch_sizes or default_batch_sizes(backend)
    if peak_tflops is None:
        peak_tflops = next((v for k, v in BF16_PEAK_TFLOPS.items() if k.lower() in device.device_kind.lower()), None)
    weights, own_weights = load_weights(bundle, manifest)
    weights_dev = {n: jax.device_put(a) for n, a in weights.items()}
    rng = np.random.default_rng(0)
    result = {"bundle": os.path.abspath(bundle), "backend": backend, "device": device.device_kind,
              "device_count": jax.device_count(), "jax": jax.__version__, "python": platform.python_version(),
              "dtype": manifest["dtype"], "compute_dtype": manifest["compute_dtype"],
              "weights": "bundle" if own_weights else "random (the bundle holds shapes only)",
              "bf16_peak_tflops": peak_tflops, "batch_sizes": batch_sizes, "functions": {}}
    all_passed = True
    for name, spec in manifest["functions"].items():
        if functions and name not in functions:
            continue
        with open(os.path.join(bundle, spec["module"]), "rb") as f:
            exported = jax_export.deserialize(bytearray(f.read()))
        entry = {"signatures": spec["signatures"]}
        compiled = Compiled(exported)
        weight_args = [weights_dev[i["weight"]] for i in spec["inputs"] if "weight" in i]
        positions = [(k, i) for k, i in enumerate(spec["inputs"]) if "data" in i]
        if own_weights:
            with np.load(os.path.join(bundle, spec["samples"]), allow_pickle=False) as z:
                args = [weights_dev[i["weight"]] if "weight" in i else jax.device_put(z[f"input_{k}"])
                        for k, i in enumerate(spec["inputs"])]
                expected = [z[f"output_{k}"] for k in range(len(spec["outputs"]))]
            got = compiled.at(args, int(expected[0].shape[0]))[0](*args)
            got = got if isinstance(got, (list, tuple)) else [got]
            entry["check"] = compare(got, expected, manifest["tolerance"])
            all_passed &= entry["check"]["passed"]
        else:
            entry["check"] = {"passed": None, "skipped": "random weights: nothing to compare with"}
        entry["timings"] = []
        for b in batch_sizes:
            row = time_function(compiled, weight_args, positions, b, manifest["config"], repeats, rng,
                                is_caption=(name == "caption"))
            if peak_tflops and row.get("tflops_per_s"):
                row["fraction_of_bf16_peak"] = row["tflops_per_s"] / peak_tflops
            entry["timings"].append(row)
            print(f"[accelerator] {name} batch {b}: {row['seconds'] * 1e3:.1f} ms, "
                  f"{row['items_per_s']:.1f} items/s", file=sys.stderr, flush=True)
        result["functions"][name] = entry
    result["passed"] = bool(all_passed)
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", help="folder written by `python -m export stablehlo`")
    ap.add_argument("--batch-sizes", help="comma-separated (default 1,8,32,128, plus 256 off CPU)")
    ap.add_argument("--functions", help="comma-separated subset of the bundle's functions")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per batch size (best is reported)")
    ap.add_argument("--peak-tflops", type=float, help="the chip's dense bfloat16 matmul peak, TFLOP/s")
    ap.add_argument("--out", help="also write the JSON document to this file")
    a = ap.parse_args(argv)
    sizes = [int(b) for b in a.batch_sizes.split(",")] if a.batch_sizes else None
    result = run(a.bundle, sizes, a.functions.split(",") if a.functions else None, a.repeats, a.peak_tflops)
    text = json.dumps(result, indent=1)
    print(text)
    if a.out:
        tmp = a.out + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, a.out)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
