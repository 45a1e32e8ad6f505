"""Demo weights: the real architecture with seeded random numbers (what `make export` writes when
no checkpoint is given; its scores mean nothing and the export says so)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from .. import host_memory
from .config import VilaConfig
from .modules import _weight_init, abstract_params
from .params import ParamSource
from .tree import flatten, unflatten


class DemoParams(ParamSource):
    """Seeded random parameters, drawn one array at a time (demo weights: the architecture is
    real, the numbers are not). Each array depends only on the seed and its path's index, so the
    draw order is free and `init_params` gives the same tree.

    Drawn with the model's own initializers, one array at a time: a whole-model jitted `init`
    holds XLA temporaries of several times the parameter bytes at once.
    """

    def __init__(self, cfg: VilaConfig, seed: int = 0):
        self.cfg, self._key = cfg, jax.random.PRNGKey(seed)
        leaves = sorted(flatten(abstract_params(cfg)).items())
        self._index = {path: i for i, (path, _) in enumerate(leaves)}
        self.shapes = {path: tuple(leaf.shape) for path, leaf in leaves}

    def read(self, path: str) -> jax.Array:
        k, name, shape = jax.random.fold_in(self._key, self._index[path]), path.rsplit("/", 1)[-1], self.shapes[path]
        if name in ("w", "pooling_attn_query"):
            value = _weight_init(k, shape, jnp.float32)
        elif name in ("emb_var", "cls_emb"):
            std = 0.02 if "pos_emb" in path else self.cfg.model_dims ** -0.5
            value = jax.random.normal(k, shape, jnp.float32) * std
        elif name == "temperature":
            value = jnp.full(shape, 0.07, jnp.float32)
        else:  # biases, layer-norm scales/biases, per-dim scales
            value = jnp.zeros(shape, jnp.float32)
        return value.block_until_ready()


def init_params(cfg: VilaConfig, seed: int = 0):
    """The demo parameters (`DemoParams`) as one tree."""
    source = DemoParams(cfg, seed)
    out = {path: source.read(path) for path in source.shapes}
    host_memory.release_freed()  # the per-shape compilations' garbage
    return unflatten(out)
