"""What the LiteRT image heads are built from: the image tower's weights and the prompt embeddings.

From an export (the SavedModel's own checkpoint, read one array at a time with
`tf.train.load_checkpoint`: no graph is loaded, and the prompt embeddings the export computed are
read back as they are), or from a checkpoint plus its SentencePiece model (the prompts are then
embedded here, exactly as the export does it: export.savedmodel.writer).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Optional

import numpy as np

from ..model import heads
from ..model.config import VilaConfig
from ..model.tree import unflatten
from vila_tf.core import metadata as export_metadata
from vila_tf.core.digest import file_sha256

# The parameters the image heads read (docs/model.md §4-5 and docs/model.md §7): the ViT, both
# poolers and the VILA-R projection. The text tower only embeds the prompts, which are constants.
IMAGE_TOWER = ("encoder/", "generative_img_pooler/", "contrastive_img_pooler/", "residual_ffn/")

_FLAT_PREFIX = "_variables_flat/"  # the export's variables: VilaModule._variables_flat, keyed by path
_VALUE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"


class SourceError(ValueError):
    """The folder given is not an export (or the checkpoint lacks something the heads need)."""


@dataclasses.dataclass
class ImageHeads:
    config: VilaConfig
    params: dict  # the image tower, nested {name: float32 numpy}
    zero_shot_prompts: np.ndarray  # [12, D], l2-normalized, good/bad alternating
    quality_prompt: Optional[np.ndarray]  # [1, D] for VILA-R, else None
    source: dict  # what the LiteRT metadata records about where the weights came from


def _checkpoint_key_to_path(key: str) -> str:
    """`_variables_flat/encoder.Stransformers_stack.../.ATTRIBUTES/VARIABLE_VALUE` -> `encoder/transformers_stack/...`
    (TensorFlow escapes '/' in a dict key as '.S' and '.' as '..')."""
    name = key[len(_FLAT_PREFIX):-len(_VALUE_SUFFIX)]
    out, i = [], 0
    while i < len(name):
        if name[i] == "." and i + 1 < len(name):
            out.append("/" if name[i + 1] == "S" else name[i + 1])
            i += 2
        else:
            out.append(name[i])
            i += 1
    return "".join(out)


def from_savedmodel(savedmodel_dir: str) -> ImageHeads:
    """The image heads of an export: its weights as stored (bfloat16 storage widened to float32)
    and the prompt embeddings it computed."""
    import tensorflow as tf
    from vila_tf.core.versions import resolve_savedmodel
    savedmodel_dir = resolve_savedmodel(savedmodel_dir)
    try:
        meta = export_metadata.read(savedmodel_dir)
    except export_metadata.MetadataError as e:
        raise SourceError(f"{e} (or give --checkpoint and --spm)") from None
    cfg = VilaConfig.from_dict(meta.config)
    reader = tf.train.load_checkpoint(os.path.join(savedmodel_dir, "variables", "variables"))
    keys = reader.get_variable_to_shape_map()

    def value(key: str) -> np.ndarray:
        return np.asarray(reader.get_tensor(key)).astype(np.float32)

    flat = {}
    for key in keys:
        if key.startswith(_FLAT_PREFIX) and key.endswith(_VALUE_SUFFIX):
            path = _checkpoint_key_to_path(key)
            if path.startswith(IMAGE_TOWER):
                flat[path] = value(key)
    prompts_key = "zero_shot_prompt_embeddings" + _VALUE_SUFFIX
    if not flat or prompts_key not in keys:
        raise SourceError(f"{savedmodel_dir}: its variables hold no image tower or prompt embeddings "
                          "(an export older than vila-tf/1?); re-export it or give --checkpoint and --spm")
    quality_key = "quality_prompt_embedding" + _VALUE_SUFFIX
    quality = value(quality_key) if cfg.has_quality_head else None
    return ImageHeads(cfg, unflatten(flat), value(prompts_key), quality, {
        "from": "savedmodel", "savedmodel": os.path.abspath(savedmodel_dir),
        "demo_weights": bool(meta.demo_weights), "source_checkpoint": meta.source_checkpoint,
        "source_sha256": meta.source_sha256, "source_step": meta.source_step, "export_dtype": meta.dtype,
        "zero_shot_prompts": [list(p) for p in (meta.zero_shot_prompts or heads.ZERO_SHOT_PROMPT_PAIRS)]})


def from_checkpoint(ckpt: str, spm_path: str, step: Optional[int] = None, overrides: Optional[dict] = None) -> ImageHeads:
    """The image heads of a paxml (or converted) checkpoint; the prompts are tokenized with
    `spm_path` and embedded with the checkpoint's text tower, as the export does."""
    import jax
    import tensorflow as tf
    from ..checkpoints import paxml
    from ..savedmodel.tokenizer import LingvoTokenizer
    from ..savedmodel.writer import TEXT_TOWER
    if not os.path.isfile(spm_path):
        raise FileNotFoundError(f"{spm_path}: SentencePiece model not found (--spm)")
    source = paxml.open_params(ckpt, step, **(overrides or {}))
    cfg = source.config
    text = heads.compute_params(unflatten({p: jax.device_put(v) for p, v in source.read_tree(TEXT_TOWER).items()}))
    ids, _, paddings = LingvoTokenizer(spm_path).strings_to_ids(tf.constant(heads.ZERO_SHOT_PROMPTS),
                                                              heads.ZERO_SHOT_PROMPT_LEN)
    zsl = jax.jit(functools.partial(heads.text_embedding, cfg=cfg))(text, ids=ids.numpy(), paddings=paddings.numpy())
    quality = np.asarray(jax.jit(functools.partial(heads.quality_prompt_embedding, cfg=cfg))(text)) \
        if cfg.has_quality_head else None
    del text
    flat = {p: np.asarray(v, np.float32) for p, v in source.read_tree(IMAGE_TOWER).items()}
    sha = source.sha256 or (file_sha256(source.path) if os.path.isfile(source.path) else None)
    return ImageHeads(cfg, unflatten(flat), np.asarray(zsl, np.float32), quality, {
        "from": "checkpoint", "demo_weights": False, "source_checkpoint": os.path.abspath(source.path),
        "source_sha256": sha, "source_step": source.step, "export_dtype": "float32",
        "zero_shot_prompts": [list(p) for p in heads.ZERO_SHOT_PROMPT_PAIRS]})
