"""TF Serving's base-folder layout, `<name>/<version>/` with integer versions: the one place that
finds the newest numbered version of a model (the runtime, Beam's remote copy, the serving config
and the packager all ask here)."""
from __future__ import annotations

import os
from typing import Iterable

SAVEDMODEL_FILE = "saved_model.pb"


def numbered(names: Iterable[str]) -> dict[int, str]:
    """{version: name} of the entries that are version numbers ("1", "0002"), as TF Serving reads them."""
    return {int(n): n for n in names if n.isdigit()}


def local_versions(base: str, marker: str = SAVEDMODEL_FILE) -> list[int]:
    """Sorted versions under a local base folder that hold `marker`."""
    if not os.path.isdir(base):
        return []
    return sorted(v for v, n in numbered(os.listdir(base)).items() if os.path.isfile(os.path.join(base, n, marker)))


def resolve_savedmodel(path: str) -> str:
    """A SavedModel folder, or a TF Serving base folder (`<name>/<version>/`): the newest version."""
    path = os.fspath(path)
    if os.path.isfile(os.path.join(path, SAVEDMODEL_FILE)):
        return path
    versions = local_versions(path)
    if versions:
        return os.path.join(path, numbered(os.listdir(path))[versions[-1]])
    raise FileNotFoundError(f"{path}: not a SavedModel folder (no saved_model.pb) nor a TF Serving base "
                            "folder with numbered versions")
