"""Where the export takes the weights from, one array at a time (the lean export,
docs/accelerators.md).

The SavedModel is assembled before any weight is read in full (its variables are untouched zero
pages, `export.savedmodel.variables_file`), then the weights are written group by group: a source only has
to say each parameter's shape and produce one array on request. A paxml checkpoint reads it from
the file (`export.checkpoints.paxml.open_paxml`), the demo draws it (`export.model.demo.DemoParams`), and a
parameter tree already in memory hands it over (`InMemoryParams`).
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .tree import flatten


class ParamSource:
    """A parameter tree read one array at a time. `shapes`: {path: shape}, in checkpoint order.
    A checkpoint's source also says where it came from (`export.checkpoints.paxml.open_params`)."""
    shapes: dict
    config = path = step = sha256 = None

    def read(self, path: str):
        """The float32 array at `path` (numpy or jax)."""
        raise NotImplementedError

    def read_tree(self, prefixes: tuple) -> Mapping:
        """{path: array} of the parameters under any of `prefixes` (e.g. the text tower), each
        read when its item is taken: iterate `.items()` once to hold one array at a time."""
        return _LazyTree(self, [p for p in self.shapes if p.startswith(prefixes)])


class _LazyTree(Mapping):
    def __init__(self, source: ParamSource, paths: list):
        self._source, self._paths = source, paths

    def __getitem__(self, path):
        if path not in self._paths:
            raise KeyError(path)
        return self._source.read(path)

    def __iter__(self):
        return iter(self._paths)

    def __len__(self):
        return len(self._paths)


class InMemoryParams(ParamSource):
    """A nested dict of arrays. `consume`: each array is dropped once read for the last time (the
    export reads the text tower twice and everything else once), so memory falls as it goes."""

    def __init__(self, params: Mapping, consume: bool = False):
        self._flat = flatten(params)
        if consume and isinstance(params, dict):
            params.clear()  # the flat dict now holds the only references
        self._consume = consume
        self.shapes = {p: tuple(np.shape(v)) for p, v in self._flat.items()}

    def read(self, path: str):
        return self._flat.pop(path) if self._consume else self._flat[path]

    def read_tree(self, prefixes: tuple) -> dict:
        return {p: v for p, v in self._flat.items() if p.startswith(prefixes)}


def as_source(params, consume: bool = False) -> ParamSource:
    return params if isinstance(params, ParamSource) else InMemoryParams(params, consume)
