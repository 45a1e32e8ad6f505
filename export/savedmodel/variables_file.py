"""The SavedModel's weights, written without ever holding them all (the lean export,
docs/accelerators.md).

The module is built and saved with variables backed by untouched zero pages: they have their
real shapes and dtypes, so tracing and the graph are exactly as with the weights, but they occupy
no memory (reading a never-written private page maps the kernel's shared zero page). Then the
variables checkpoint that `tf.saved_model.save` wrote (zeros) is replaced by one written group by
group from the parameter source, each group its own shard, merged into the usual
`variables/variables.{index,data-*}`. Peak memory is one group of weights, not the model.
"""
from __future__ import annotations

import mmap
import os
import shutil
from typing import Callable

import numpy as np
import tensorflow as tf

from .. import host_memory
from ..model.params import ParamSource

# Weights per shard: the write's own peak memory (an array larger than this gets a shard alone).
GROUP_BYTES = 128 << 20
# tf.saved_model.save's layout: `variables/variables.index` and its data files.
CHECKPOINT_PREFIX = os.path.join("variables", "variables")
# Where the SavedModel's object graph puts each weight (the module's `_variables_flat` dict).
PARAM_KEY = "_variables_flat/{}/.ATTRIBUTES/VARIABLE_VALUE"
# TensorFlow requires tensor buffers aligned to Eigen's 64 bytes.
TF_ALIGNMENT = 64


def param_key(path: str) -> str:
    """The checkpoint key of parameter `path` (TensorFlow escapes "." and "/" in dict keys)."""
    return PARAM_KEY.format(path.replace(".", "..").replace("/", ".S"))


def float32_tensor(array) -> tf.Tensor:
    """`array` as a float32 tf.Tensor, sharing its buffer where possible (DLPack): a jax array
    on the CPU, or an aligned C-contiguous float32 numpy array (the checkpoint reader allocates
    them so). Anything else is copied."""
    import jax
    if isinstance(array, jax.Array) and array.dtype == np.float32 and \
            all(d.platform == "cpu" for d in array.devices()):
        return tf.experimental.dlpack.from_dlpack(array.__dlpack__())
    value = np.asarray(array)
    if value.dtype == np.float32 and value.flags.c_contiguous and value.size and \
            value.ctypes.data % TF_ALIGNMENT == 0:
        return tf.experimental.dlpack.from_dlpack(value.__dlpack__())
    return tf.constant(np.asarray(value, np.float32))


def stored(array, dtype: tf.DType) -> tf.Tensor:
    """A float32 array in the storage dtype (bfloat16 rounds to nearest even, as tf.cast does)."""
    value = float32_tensor(array)
    return tf.cast(value, tf.bfloat16) if dtype == tf.bfloat16 else value


def zero_variable(shape: tuple, dtype: tf.DType, name: str) -> tf.Variable:
    """A non-trainable variable of zeros that occupies no memory until written."""
    carrier = np.uint16 if dtype == tf.bfloat16 else np.float32  # numpy has no bfloat16
    count = int(np.prod(shape, dtype=np.int64))
    pages = mmap.mmap(-1, max(count * np.dtype(carrier).itemsize, 1), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    zeros = tf.experimental.dlpack.from_dlpack(np.frombuffer(pages, carrier, count=count).reshape(shape).__dlpack__())
    if dtype == tf.bfloat16:
        zeros = tf.bitcast(zeros, tf.bfloat16)  # same bits, same buffer
    # A new variable adopts its initial value's buffer: still the untouched pages.
    return tf.Variable(zeros, trainable=False, name=name)


def write_weights(savedmodel_dir: str, source: ParamSource, dtype: tf.DType,
                  log: Callable[[str], None] = print, group_bytes: int | None = None) -> None:
    """Replaces the zeros checkpoint of `savedmodel_dir` with `source`'s weights in `dtype`,
    reading one group of arrays at a time. Every other entry (the prompt embeddings, the object
    graph) is carried over."""
    prefix = os.path.join(savedmodel_dir, CHECKPOINT_PREFIX)
    reader = tf.train.load_checkpoint(prefix)
    shapes, dtypes = reader.get_variable_to_shape_map(), reader.get_variable_to_dtype_map()
    keys = {path: param_key(path) for path in source.shapes}
    for path, key in keys.items():
        if key not in shapes:
            raise RuntimeError(f"{prefix}: the saved module has no variable for params/{path} (key {key})")
        if tuple(shapes[key]) != tuple(source.shapes[path]) or dtypes[key] != dtype:
            raise RuntimeError(f"{prefix}: {key} is {dtypes[key].name} {shapes[key]}, "
                               f"expected {dtype.name} {list(source.shapes[path])}")
    param_keys = set(keys.values())
    carried = {k: tf.constant(reader.get_tensor(k), dtype=dtypes[k]) for k in shapes if k not in param_keys}
    del reader

    # Groups of whole arrays in checkpoint order; the carried entries ride with the first.
    group_bytes = group_bytes or GROUP_BYTES
    itemsize = dtype.size
    groups, current, size = [], [], 0
    for path, shape in source.shapes.items():
        nbytes = int(np.prod(shape, dtype=np.int64)) * itemsize
        if current and size + nbytes > group_bytes:
            groups.append(current)
            current, size = [], 0
        current.append(path)
        size += nbytes
    groups.append(current)

    parts_dir = os.path.join(savedmodel_dir, "variables", ".parts")
    os.makedirs(parts_dir)
    parts = []
    for i, group in enumerate(groups):
        tensors = dict(carried) if i == 0 else {}
        for path in group:
            value = stored(source.read(path), dtype)
            if tuple(value.shape) != tuple(source.shapes[path]):
                raise RuntimeError(f"params/{path}: read shape {list(value.shape)}, "
                                   f"expected {list(source.shapes[path])}")
            tensors[keys[path]] = value
        part = os.path.join(parts_dir, f"part-{i:05d}")
        tf.raw_ops.SaveV2(prefix=part, tensor_names=list(tensors), shape_and_slices=[""] * len(tensors),
                          tensors=list(tensors.values()))
        parts.append(part)
        del tensors, value
        host_memory.release_freed()
        log(f"weights: {sum(map(len, groups[:i + 1]))}/{len(source.shapes)} arrays written")
    for name in os.listdir(os.path.dirname(prefix)):
        if name.startswith("variables."):
            os.remove(os.path.join(os.path.dirname(prefix), name))
    tf.raw_ops.MergeV2Checkpoints(checkpoint_prefixes=parts, destination_prefix=prefix, delete_old_dirs=True)
    shutil.rmtree(parts_dir, ignore_errors=True)
