"""Reader for the released paxml (FLAX-type) VILA checkpoints, and the converted orbax form.

paxml 1.0.0's FLAX checkpoints are one flax-msgpack document holding `flattened_state`: the
TrainState leaves in jax flatten order (step, then `mdl_vars['params']`, then optimizer state),
with no names. The names follow from the model: jax sorts dict keys as strings at every level, so
`x_layers_10` comes right after `x_layers_1`. The layer counts are found by trying the orderings
the leaf count allows and keeping the one whose shapes form a consistent VILA model.

Three on-disk layouts (docs/model.md §9), all accepted:
  1. checkpoint_<N>/metadata/metadata + checkpoint_<N>/state/checkpoint  (what paxml writes)
  2. checkpoint_<N>/checkpoint
  3. checkpoint_<N> is itself the msgpack file (legacy flax)
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from typing import Any, Callable, Iterable, Mapping, Optional

import numpy as np

from . import msgpack_index
from ..model.config import ConfigError, VilaConfig, config_from_shapes
from .msgpack_index import ArrayRef, ChunkedArrayRef, MsgpackFormatError
from ..model.params import InMemoryParams, ParamSource
from ..model.tree import flatten, unflatten

CONFIG_FILE = "vila_config.json"
ORBAX_SUBDIR = "params"
_STEP_RE = re.compile(r"^checkpoint_(\d+)$")


class CheckpointError(ValueError):
    """A checkpoint cannot be read as a VILA model; the message names the file and key."""


@dataclasses.dataclass
class LoadedCheckpoint:
    params: dict  # nested dict of numpy arrays, the `params` collection
    config: VilaConfig
    source: str  # the file or folder read
    step: Optional[int]
    sha256: Optional[str] = None


# ---------------------------------------------------------------------------------------------
# Paths and order


def sort_paths(paths: Iterable[str]) -> list[str]:
    """jax's flatten order for nested dicts: keys compared as strings level by level."""
    return sorted(paths, key=lambda p: p.split("/"))


@functools.lru_cache(maxsize=None)
def _template_tree(has_quality_head: bool):
    """The abstract parameter tree of a 1-layer, tiny-width model: names and ranks, no sizes."""
    from ..model.modules import abstract_params  # deferred: reading a checkpoint needs no jax until shapes are inferred
    return abstract_params(VilaConfig(
        model_type="vila_r" if has_quality_head else "vila_p", model_dims=8, num_heads=2, dim_per_head=4,
        encoder_ff_dims=8, decoder_ff_dims=8, pooler_num_heads=2, pooler_dim_per_head=4, num_encoder_layers=1,
        num_unimodal_layers=1, num_crossmodal_layers=1, vocab_size=8, image_size=4, patch_size=2,
        num_generative_queries=4))


@functools.lru_cache(maxsize=None)
def _path_template(has_quality_head: bool) -> tuple:
    """(fixed paths, {stack: per-layer suffixes}) of the parameter tree."""
    fixed, stacks = [], {}
    for path in flatten(_template_tree(has_quality_head)):
        m = re.match(r"(.*)/x_layers_0/(.*)", path)
        if m:
            stacks.setdefault(m.group(1), []).append(m.group(2))
        else:
            fixed.append(path)
    return tuple(fixed), {k: tuple(v) for k, v in stacks.items()}


@functools.lru_cache(maxsize=None)
def _template_ranks(has_quality_head: bool) -> dict:
    """Array rank of every template path (`stack/*/suffix` for layer parameters)."""
    return {_template_key(p): len(s.shape) for p, s in flatten(_template_tree(has_quality_head)).items()}


def _template_key(path: str) -> str:
    return re.sub(r"/x_layers_\d+/", "/*/", path)


ENCODER_STACK = "encoder/transformers_stack"
UNIMODAL_STACK = "decoder/unimodal_transformer"
CROSSMODAL_STACK = "decoder/crossmodal_transformer"


def param_paths(has_quality_head: bool, layers: Mapping[str, int]) -> list[str]:
    """All parameter paths, in checkpoint order, for the given layer count of each stack."""
    fixed, stacks = _path_template(has_quality_head)
    paths = list(fixed)
    for stack, suffixes in stacks.items():
        paths += [f"{stack}/x_layers_{i}/{s}" for i in range(layers[stack]) for s in suffixes]
    return sort_paths(paths)


def expected_shapes(cfg: VilaConfig) -> dict:
    return dict(_expected_shapes(cfg))


@functools.lru_cache(maxsize=16)
def _expected_shapes(cfg: VilaConfig) -> tuple:
    # Tracing the model for its shapes costs about a second; a config's shapes never change.
    from ..model.modules import abstract_params  # deferred, as in _template_tree
    return tuple((p, tuple(s.shape)) for p, s in flatten(abstract_params(cfg)).items())


# ---------------------------------------------------------------------------------------------
# Locating the checkpoint file


def locate(ckpt: str, step: Optional[int] = None) -> tuple[str, Optional[int]]:
    """Returns (msgpack file, step) for a checkpoint folder, a checkpoint_<N> entry or a file."""
    ckpt = os.fspath(ckpt)
    if not os.path.exists(ckpt):
        raise CheckpointError(f"{ckpt}: no such file or directory")
    name = os.path.basename(os.path.normpath(ckpt))
    m = _STEP_RE.match(name)
    if os.path.isfile(ckpt):
        return ckpt, int(m.group(1)) if m else None
    if m:
        return _file_in_step_dir(ckpt), int(m.group(1))
    steps = {}
    for entry in os.listdir(ckpt):
        em = _STEP_RE.match(entry)
        if em:
            steps[int(em.group(1))] = os.path.join(ckpt, entry)
    if not steps:
        for candidate in ("state/checkpoint", "checkpoint"):
            if os.path.isfile(os.path.join(ckpt, candidate)):
                return os.path.join(ckpt, candidate), None
        raise CheckpointError(
            f"{ckpt}: no checkpoint_<step> entry found (expected e.g. {ckpt}/checkpoint_0/state/checkpoint)")
    if step is None:
        step = max(steps)  # paxml restores the latest step by default
    elif step not in steps:
        raise CheckpointError(f"{ckpt}: no checkpoint for step {step} (found steps {sorted(steps)})")
    entry = steps[step]
    return (entry if os.path.isfile(entry) else _file_in_step_dir(entry)), step


def _file_in_step_dir(step_dir: str) -> str:
    meta = os.path.join(step_dir, "metadata", "metadata")
    for candidate in (os.path.join(step_dir, "state", "checkpoint"), os.path.join(step_dir, "checkpoint")):
        if os.path.isfile(candidate):
            if os.path.isfile(meta):
                _check_metadata(meta)
            return candidate
    raise CheckpointError(
        f"{step_dir}: holds neither state/checkpoint (paxml layout) nor checkpoint (flax layout)")


def _check_metadata(meta_path: str) -> None:
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{meta_path}: unreadable paxml metadata: {e}") from None
    if not isinstance(meta, dict) or "version" not in meta:
        raise CheckpointError(f"{meta_path}: paxml metadata has no 'version' key")


# ---------------------------------------------------------------------------------------------
# Reading


def _leaf_shape(ref) -> tuple:
    if not isinstance(ref, (ArrayRef, ChunkedArrayRef)):
        raise CheckpointError(f"found a {type(ref).__name__} where an array was expected")
    return tuple(ref.shape)


def _find_params_in_state_dict(doc: Mapping, path: str) -> dict:
    """Older flax checkpoints hold a named state dict; find its `params` collection."""
    for keys in (("mdl_vars", "params"), ("params",), ("target", "params"), ("params", "params")):
        node: Any = doc
        for k in keys:
            node = node.get(k) if isinstance(node, Mapping) else None
        if isinstance(node, Mapping):
            if "params" in node and isinstance(node["params"], Mapping) and "encoder" not in node:
                continue
            return flatten(node)
    raise CheckpointError(
        f"{path}: the checkpoint has no `params` subtree (top-level keys: {sorted(map(str, doc))[:10]}); "
        "expected paxml's `flattened_state` or a state dict with mdl_vars/params")


def _param_leaves_from_flattened(leaves: list, path: str, overrides: Mapping) -> tuple[dict, VilaConfig]:
    """Names the parameter leaves of a paxml `flattened_state` list; returns {path: ref}, config."""
    if not leaves:
        raise CheckpointError(f"{path}: flattened_state is empty")
    shapes = []
    for i, ref in enumerate(leaves):
        try:
            shapes.append(_leaf_shape(ref))
        except CheckpointError as e:
            raise CheckpointError(f"{path}: flattened_state[{i}]: {e}") from None
    # Leaf 0 is TrainState.step; the params end where the optimizer state's first scalar `count`
    # begins (the only scalar parameter, contrastive_loss/temperature, sits at a known place).
    fixed_r, _ = _path_template(True)
    temp_index = 1 + sort_paths(fixed_r).index("contrastive_loss/temperature")
    end = next((i for i in range(temp_index + 1, len(shapes)) if shapes[i] == ()), len(shapes))
    n_params = end - 1
    found = shapes[1:end]
    candidates = []
    for has_head in (True, False):
        fixed, stacks = _path_template(has_head)
        per_layer = {s: len(v) for s, v in stacks.items()}
        rest = n_params - len(fixed)
        for n_cross in range(1, rest // per_layer[CROSSMODAL_STACK] + 1):
            rest2 = rest - n_cross * per_layer[CROSSMODAL_STACK]
            for n_uni in range(1, rest2 // per_layer[UNIMODAL_STACK] + 1):
                rest3 = rest2 - n_uni * per_layer[UNIMODAL_STACK]
                if rest3 <= 0 or rest3 % per_layer[ENCODER_STACK]:
                    continue
                layers = {ENCODER_STACK: rest3 // per_layer[ENCODER_STACK], UNIMODAL_STACK: n_uni,
                          CROSSMODAL_STACK: n_cross}
                names = param_paths(has_head, layers)
                ranks = _template_ranks(has_head)
                wrong_rank = [i for i, n in enumerate(names) if len(found[i]) != ranks[_template_key(n)]]
                candidates.append((len(wrong_rank), names, wrong_rank))
    if not candidates:
        raise CheckpointError(f"{path}: the {len(leaves)} leaves ({n_params} before the optimizer state) do not "
                              "form a VILA parameter tree: no layer counts give that many parameters (a missing "
                              "or extra array?)")
    # The layout whose array ranks fit best is the checkpoint's; its mismatches are the errors.
    candidates.sort(key=lambda c: c[0])
    best = [c for c in candidates if c[0] == candidates[0][0]]
    matching = []
    for n_wrong, names, wrong_rank in best:
        named = {n: found[i] for i, n in enumerate(names) if i not in wrong_rank}
        try:
            cfg = config_from_shapes(named, **overrides)
            expected = expected_shapes(cfg)
        except (ConfigError, ValueError, TypeError, IndexError):
            continue
        bad = [i for i, n in enumerate(names) if expected[n] != found[i]]
        if not bad:
            matching.append((names, cfg))
        elif len(best) == 1:
            i = bad[0]
            raise CheckpointError(
                f"{path}: leaf {i + 1} (params/{names[i]}): expected shape {list(expected[names[i]])}, "
                f"found {list(found[i])}" + (f" ({len(bad)} leaves differ)" if len(bad) > 1 else ""))
    if len(matching) != 1:
        n_wrong, names, wrong_rank = best[0]
        detail = (f"; e.g. leaf {wrong_rank[0] + 1} (params/{names[wrong_rank[0]]}) has shape "
                  f"{list(found[wrong_rank[0]])}" if wrong_rank else "")
        raise CheckpointError(
            f"{path}: the {len(leaves)} leaves ({n_params} before the optimizer state) do not form a "
            f"VILA parameter tree" + (f" (ambiguous: {len(matching)} layouts fit)" if matching else detail))
    names, cfg = matching[0]
    return {n: leaves[1 + i] for i, n in enumerate(names)}, cfg


class PaxmlParams(ParamSource):
    """The parameters of a paxml/flax msgpack checkpoint, read from the file one array at a time
    (only parameter bytes, no optimizer state). Indexing checks every shape first."""

    def __init__(self, path: str, refs: dict, config: VilaConfig, step: Optional[int]):
        self.path, self.config, self.step, self._refs = path, config, step, refs
        self.shapes = {name: tuple(ref.shape) for name, ref in refs.items()}

    def read(self, name: str) -> np.ndarray:
        try:
            with open(self.path, "rb") as f:
                return self._refs[name].read(f, f"{self.path}: params/{name}")
        except MsgpackFormatError as e:
            raise CheckpointError(str(e)) from None
        except OSError as e:
            raise CheckpointError(f"{self.path}: cannot read params/{name}: {e}") from None


def open_paxml(ckpt: str, step: Optional[int] = None, **overrides) -> PaxmlParams:
    """Indexes a paxml/flax msgpack checkpoint: names, shapes and config, no array read yet."""
    path, step = locate(ckpt, step)
    try:
        with open(path, "rb") as f:
            try:
                doc = msgpack_index.index_file(f, path)
            except MsgpackFormatError as e:
                raise CheckpointError(f"not a flax-msgpack checkpoint: {e}") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read: {e}") from None
    if not isinstance(doc, dict):
        raise CheckpointError(f"{path}: not a flax-msgpack checkpoint (top level is "
                              f"{type(doc).__name__}, expected a map)")
    if "flattened_state" in doc:
        if not isinstance(doc["flattened_state"], list):
            raise CheckpointError(f"{path}: flattened_state is not a list of arrays")
        refs, cfg = _param_leaves_from_flattened(doc["flattened_state"], path, overrides)
    else:
        refs = _find_params_in_state_dict(doc, path)
        try:
            cfg = config_from_shapes({k: _leaf_shape(v) for k, v in refs.items()}, **overrides)
        except ConfigError as e:
            raise CheckpointError(f"{path}: {e}") from None
        check_shapes({k: _leaf_shape(v) for k, v in refs.items()}, cfg, path)
    return PaxmlParams(path, refs, cfg, step)


def read_paxml(ckpt: str, step: Optional[int] = None, progress: Optional[Callable[[int, int], None]] = None,
               **overrides) -> LoadedCheckpoint:
    """Reads a paxml/flax msgpack checkpoint; only parameter bytes are read (no optimizer state).

    Peak memory is the parameters themselves plus a few kilobytes of index.
    """
    source = open_paxml(ckpt, step, **overrides)
    params, total = {}, len(source.shapes)
    for i, name in enumerate(source.shapes):
        params[name] = source.read(name)
        if progress:
            progress(i + 1, total)
    return LoadedCheckpoint(unflatten(params), source.config, source.path, source.step)


def check_shapes(shapes: Mapping[str, tuple], cfg: VilaConfig, source: str) -> None:
    """Every expected parameter present with its exact shape, nothing unexpected."""
    expected = expected_shapes(cfg)
    for name, shape in expected.items():
        if name not in shapes:
            raise CheckpointError(f"{source}: missing parameter params/{name} (expected shape {list(shape)})")
        if tuple(shapes[name]) != shape:
            raise CheckpointError(
                f"{source}: params/{name}: expected shape {list(shape)}, found {list(shapes[name])}")
    extra = sorted(set(shapes) - set(expected))
    if extra:
        raise CheckpointError(f"{source}: unexpected parameters for a {cfg.model_type} model: {extra[:5]}")


# ---------------------------------------------------------------------------------------------
# Writing paxml-format checkpoints (tests, the full-size memory check, demo inputs)


def write_paxml(params: Mapping, out_dir: str, step: int = 0, layout: str = "paxml",
                extra_leaves: Iterable[np.ndarray] = ()) -> str:
    """Writes `params` as paxml 1.0.0 would: one flax-msgpack `flattened_state` document.

    layout: "paxml" (checkpoint_N/metadata/metadata + state/checkpoint), "flax"
    (checkpoint_N/checkpoint) or "file" (checkpoint_N is the msgpack file). `extra_leaves` stand
    for the optimizer state after the parameters. Leaves are streamed one at a time.
    """
    flat = flatten(params)
    names = sort_paths(flat)
    extra = list(extra_leaves)
    entry = os.path.join(out_dir, f"checkpoint_{step}")
    os.makedirs(out_dir, exist_ok=True)
    if layout == "paxml":
        os.makedirs(os.path.join(entry, "metadata"), exist_ok=True)
        with open(os.path.join(entry, "metadata", "metadata"), "w") as f:
            json.dump({"version": 1.0}, f)
        target = os.path.join(entry, "state", "checkpoint")
    elif layout == "flax":
        target = os.path.join(entry, "checkpoint")
    elif layout == "file":
        target = entry
    else:
        raise ValueError(f"unknown layout {layout!r}")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    import msgpack
    n = 1 + len(names) + len(extra)
    with open(target, "wb") as f:
        f.write(b"\x82")  # map of 2
        f.write(msgpack.packb("flattened_state"))
        f.write(b"\xdd" + n.to_bytes(4, "big"))  # array32 header
        f.write(msgpack_index.pack_array(np.asarray(step, np.uint32)))
        for name in names:
            f.write(msgpack_index.pack_array(np.asarray(flat[name])))
        for leaf in extra:
            f.write(msgpack_index.pack_array(np.asarray(leaf)))
        f.write(msgpack.packb("str_pytree_state"))
        f.write(msgpack.packb(f"PyTreeDef(TrainState[step, mdl_vars={{'params': {len(names)} leaves}}])"))
    return target


# ---------------------------------------------------------------------------------------------
# Converted form: orbax-checkpoint params + config JSON


def save_converted(loaded: LoadedCheckpoint, out_dir: str) -> str:
    """Writes the params as an orbax checkpoint plus `vila_config.json`, atomically."""
    import orbax.checkpoint as ocp
    from vila_tf.core.atomic import atomic_dir
    out_dir = os.path.abspath(out_dir)
    with atomic_dir(out_dir) as tmp:
        with ocp.PyTreeCheckpointer() as ckptr:
            ckptr.save(os.path.join(tmp, ORBAX_SUBDIR), loaded.params)
        with open(os.path.join(tmp, CONFIG_FILE), "w") as f:
            json.dump({"config": loaded.config.to_dict(), "source": loaded.source, "step": loaded.step,
                       "sha256": loaded.sha256}, f, indent=1)
    return out_dir


def is_converted(path: str) -> bool:
    return os.path.isfile(os.path.join(path, CONFIG_FILE))


def read_converted(path: str, **overrides) -> LoadedCheckpoint:
    import orbax.checkpoint as ocp
    cfg_path = os.path.join(path, CONFIG_FILE)
    try:
        with open(cfg_path) as f:
            meta = json.load(f)
        cfg = VilaConfig.from_dict(meta["config"])
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{cfg_path}: unreadable converted-checkpoint config: {e}") from None
    if overrides:
        cfg = cfg.replace(**{k: v for k, v in overrides.items() if v is not None})
    params_dir = os.path.join(path, ORBAX_SUBDIR)
    if not os.path.isdir(params_dir):
        raise CheckpointError(f"{params_dir}: missing `params` subtree of the converted checkpoint")
    with ocp.PyTreeCheckpointer() as ckptr:
        params = ckptr.restore(params_dir)
    params = {k: np.asarray(v) for k, v in flatten(params).items()}
    check_shapes({k: v.shape for k, v in params.items()}, cfg, params_dir)
    return LoadedCheckpoint(unflatten(params), cfg, meta.get("source") or path, meta.get("step"),
                            meta.get("sha256"))


def open_params(path: str, step: Optional[int] = None, **overrides) -> ParamSource:
    """Either form as a `ParamSource` with `config`, `path`, `step` and `sha256`: a paxml
    checkpoint is indexed and read one array at a time later; a converted one is read whole."""
    if os.path.isdir(path) and is_converted(path):
        loaded = read_converted(path, **overrides)
        source = InMemoryParams(loaded.params, consume=True)
        source.config, source.path, source.step, source.sha256 = loaded.config, loaded.source, loaded.step, loaded.sha256
        return source
    return open_paxml(path, step, **overrides)


def load(path: str, step: Optional[int] = None, progress=None, **overrides) -> LoadedCheckpoint:
    """Either form: a converted folder (vila_config.json) or a paxml checkpoint."""
    if os.path.isdir(path) and is_converted(path):
        return read_converted(path, **overrides)
    return read_paxml(path, step, progress, **overrides)
