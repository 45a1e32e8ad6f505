"""Runs inside one TensorFlow release's virtual environment for `benchmarks/compat.py`: TensorFlow,
tensorflow-text and the vila_tf runtime only (never jax).

    python compat_child.py probe                      -> what this TensorFlow runs (JSON line)
    python compat_child.py stablehlo WORK             -> which StableHLO probe artifacts it reads
    python compat_child.py run WORK OUT.npz=EXPORT... -> loads / runs every signature of each EXPORT
"""
from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _first_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    for marker in ("Cannot deserialize", "XlaCallModuleOp with version", "not supported by this build",
                   "Op type not registered"):
        at = text.find(marker)
        if at >= 0:
            return f"{type(e).__name__}: {text[at:at + 200]}"
    return f"{type(e).__name__}: {text[:200]}"


def probe() -> dict:
    import tensorflow as tf
    out = {"tensorflow": tf.__version__, "decode_webp": hasattr(tf.io, "decode_webp")}
    try:
        import tensorflow_text
        out["tensorflow_text"] = tensorflow_text.__version__
    except Exception as e:  # noqa: BLE001 - reported in the matrix
        out["tensorflow_text"] = _first_line(e)
    from tensorflow.compiler.tf2xla.python import xla as tfxla
    out["calling_convention"] = int(tfxla.call_module_maximum_supported_version())
    try:
        from tensorflow.compiler.mlir.stablehlo import stablehlo
        out["stablehlo_reported"] = stablehlo.get_current_version()
    except ImportError:
        out["stablehlo_reported"] = None
    return out


def stablehlo_reads(work: str) -> dict:
    """{version: True/False} for the probe artifacts compat.py wrote (one per StableHLO version)."""
    import tensorflow as tf
    result = {}
    root = os.path.join(work, "stablehlo_probes")
    for name in sorted(os.listdir(root)):
        try:
            m = tf.saved_model.load(os.path.join(root, name))
            ok = bool(abs(float(m.f(tf.ones([2, 4]))[0, 0]) - EXPECTED_PROBE) < 1e-4)
        except Exception:  # noqa: BLE001 - a version this TensorFlow cannot read
            ok = False
        result[name] = ok
    return result


EXPECTED_PROBE = 4.0463767  # tanh(1) * 4 + 1, what the probe function returns for ones([2, 4])


def signature_inputs(work: str) -> dict:
    """{signature: {input key: array}} from the inputs compat.py wrote (the same in every release)."""
    import numpy as np
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from vila_tf.core.signatures import ALL_SIGNATURES, BYTES, PIXELS, SIGNATURE_INPUTS
    data = np.load(os.path.join(work, "inputs.npz"), allow_pickle=False)
    images = np.array([bytes(data["png"]), bytes(data["jpeg"])], dtype=object)
    texts = np.array([t.encode() for t in data["texts"]], dtype=object)
    out = {}
    for name in ALL_SIGNATURES:  # an export's own (a personal export's base_score* are not in every export)
        key, kind = SIGNATURE_INPUTS[name]
        out[name] = {key: images if kind == BYTES else data["pixels"] if kind == PIXELS else texts}
    return out


def run(work: str, export: str, out_npz: str) -> dict:
    import numpy as np
    import tensorflow as tf
    import tensorflow_text  # noqa: F401 - the SentencePiece ops of the graph
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import vila_tf
    status = {"loads": None, "signatures": {}, "vila_tf_load": None}
    try:
        module = tf.saved_model.load(export)
        status["loads"] = "ok"
    except Exception as e:  # noqa: BLE001 - reported in the matrix
        status["loads"] = _first_line(e)
        return status
    arrays = {}
    for name, inputs in signature_inputs(work).items():
        try:
            outputs = module.signatures[name](**{k: tf.constant(v) for k, v in inputs.items()})
            for k, v in outputs.items():
                arrays[f"{name}/{k}"] = v.numpy()
            status["signatures"][name] = "ok"
        except Exception as e:  # noqa: BLE001 - reported in the matrix
            status["signatures"][name] = _first_line(e)
    np.savez(out_npz, **{k: (v.astype(str) if v.dtype == object else v) for k, v in arrays.items()})
    # The runtime wrapper: loads and scores, or refuses before loading with its versioned message.
    try:
        model = vila_tf.load(export)
        model.score(signature_inputs(work)["serving_default"]["image_bytes"].tolist())
        status["vila_tf_load"] = "ok"
    except vila_tf.IncompatibleTensorFlowError as e:
        status["vila_tf_load"] = f"refused: {e}"
    except Exception as e:  # noqa: BLE001 - reported in the matrix
        status["vila_tf_load"] = _first_line(e)
    return status


def main(argv) -> int:
    import warnings
    warnings.simplefilter("ignore")
    if argv[0] == "probe":
        result = probe()
    elif argv[0] == "stablehlo":
        result = stablehlo_reads(argv[1])
    elif argv[0] == "run":  # one process for every export: TensorFlow starts once
        result = {}
        for pair in argv[2:]:
            out_npz, export = pair.split("=", 1)
            result[export] = run(argv[1], export, out_npz)
    else:
        raise SystemExit(f"unknown mode {argv[0]!r}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
