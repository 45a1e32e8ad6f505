"""Parameter trees as nested dicts and as flat {"a/b/c": leaf} maps: the one conversion every
part of the toolkit (checkpoint reader, demo draw, export) uses. A leaf module: it imports nothing
of the project."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def flatten(tree: Mapping, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        path = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, path + "/"))
        else:
            out[path] = v
    return out


def unflatten(flat: Mapping[str, Any]) -> dict:
    tree: dict = {}
    for path, v in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return tree
