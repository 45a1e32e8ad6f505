"""TF Serving base layout: OUT/<name>/<version>/ SavedModels, OUT/models.config and
OUT/batching_parameters.txt (server-side batching in the same buckets as the warmup requests)."""
from __future__ import annotations

import os

from vila_tf.core.buckets import BUCKETS
from vila_tf.core.versions import local_versions


def model_versions(root: str) -> dict:
    """{model name: sorted integer versions} of the SavedModels under `root`."""
    found = {}
    if not os.path.isdir(root):
        return found
    for name in sorted(os.listdir(root)):
        base = os.path.join(root, name)
        if name.startswith(".") or not os.path.isdir(base):
            continue
        versions = local_versions(base)
        if versions:
            found[name] = versions
    return found


def write_models_config(root: str) -> str:
    """Writes `root/models.config` (a ModelServerConfig text proto) naming every exported model."""
    entries = []
    for name in model_versions(root):
        entries.append("  config {\n"
                       f"    name: \"{name}\"\n"
                       f"    base_path: \"{os.path.abspath(os.path.join(root, name))}\"\n"
                       "    model_platform: \"tensorflow\"\n"
                       "  }\n")
    path = os.path.join(root, "models.config")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("model_config_list {\n" + "".join(entries) + "}\n")
    os.replace(tmp, path)
    return path


def write_batching_parameters(root: str, batch_timeout_micros: int = 5000, num_batch_threads: int = 2) -> str:
    """`--batching_parameters_file` whose allowed sizes are the warmup buckets, so server-side
    batching never produces a batch size that was not compiled at load."""
    path = os.path.join(root, "batching_parameters.txt")
    os.makedirs(root, exist_ok=True)
    with open(path, "w") as f:
        f.write(f"max_batch_size {{ value: {BUCKETS[-1]} }}\n"
                f"batch_timeout_micros {{ value: {batch_timeout_micros} }}\n"
                f"num_batch_threads {{ value: {num_batch_threads} }}\n"
                f"max_enqueued_batches {{ value: 100 }}\n"
                + "".join(f"allowed_batch_sizes: {b}\n" for b in BUCKETS)
                + "pad_variable_length_inputs: false\n")
    return path
