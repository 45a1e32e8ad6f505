"""TF Serving base layout: OUT/<name>/<version>/ SavedModels and OUT/models.config."""
from __future__ import annotations

import os


def model_versions(root: str) -> dict:
    """{model name: sorted integer versions} of the SavedModels under `root`."""
    found = {}
    if not os.path.isdir(root):
        return found
    for name in sorted(os.listdir(root)):
        base = os.path.join(root, name)
        if name.startswith(".") or not os.path.isdir(base):
            continue
        versions = sorted(int(v) for v in os.listdir(base)
                          if v.isdigit() and os.path.isfile(os.path.join(base, v, "saved_model.pb")))
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
