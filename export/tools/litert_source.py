"""What the LiteRT image heads are built from: the image tower's weights and the prompt embeddings.

From an export (the SavedModel's own checkpoint, read one array at a time with
`tf.train.load_checkpoint`: no graph is loaded, and the prompt embeddings the export computed are
read back as they are), or from a checkpoint plus its SentencePiece model (the prompts are then
embedded here, exactly as the export does it: export.savedmodel.writer).

Your own prompt pairs (`--prompt 'GOOD|BAD'`) are embedded by the text tower the runtime would use
for them on the SavedModel: the export's `text_embedding` signature (its in-graph tokenizer, 64
tokens), or from a checkpoint the same tokenizer and text tower in JAX. They become constants of
the model beside the release's six pairs, scored by the same per-pair softmax
(export/tools/litert_graph.py).
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Iterable, Optional

import numpy as np

from ..model import heads
from ..model.config import VilaConfig
from ..model.tree import unflatten
from vila_tf.core import metadata as export_metadata
from vila_tf.core import personal, zero_shot
from vila_tf.core.digest import file_sha256
from vila_tf.core.signatures import SIGNATURES

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
    prompts: tuple = ()  # your own (good, bad) pairs, in column order
    prompt_embeddings: Optional[np.ndarray] = None  # their embeddings [2K, D], good/bad alternating
    # A personal export's head (`vila-tf fit`, vila_tf.core.personal): {"layout", "weights", "bias",
    # "record"}; `predictions` is then the personal score.
    personal_head: Optional[dict] = None

    @property
    def pair_prompts(self) -> np.ndarray:
        """Every pair the model scores, [2 (6 + K), D]: the release's six, then yours."""
        if not self.prompts:
            return self.zero_shot_prompts
        return np.concatenate([self.zero_shot_prompts, self.prompt_embeddings]).astype(np.float32)


def _pairs(prompts) -> tuple:
    """`prompts` ('good|bad' strings or (good, bad) pairs) as checked pairs; () for none."""
    return zero_shot.pairs_from(prompts) if prompts else ()


def _texts(pairs: Iterable) -> list:
    return [p for pair in pairs for p in pair]  # good, bad alternating


def savedmodel_text_embeddings(savedmodel_dir: str, texts: list) -> np.ndarray:
    """The export's own `text_embedding` signature on `texts` -> float32 [N, D]: what the runtime
    gets for your prompt pairs on the SavedModel. Loads the graph, then lets it go."""
    import gc
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (registers the tokenizer's SentencePiece op)
    from ..host_memory import release_freed
    sig = SIGNATURES["text_embedding"]
    model = tf.saved_model.load(savedmodel_dir)
    out = model.signatures[sig.name](**{sig.input: tf.constant(texts)})[sig.outputs[0]].numpy().astype(np.float32)
    del model
    gc.collect()
    release_freed()
    return out


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


def from_savedmodel(savedmodel_dir: str, prompts=()) -> ImageHeads:
    """The image heads of an export: its weights as stored (bfloat16 storage widened to float32)
    and the prompt embeddings it computed; your own `prompts` embedded by its `text_embedding`
    signature."""
    import tensorflow as tf
    from vila_tf.core.versions import resolve_savedmodel
    pairs = _pairs(prompts)
    savedmodel_dir = resolve_savedmodel(savedmodel_dir)
    try:
        meta = export_metadata.read(savedmodel_dir)
    except export_metadata.MetadataError as e:
        raise SourceError(f"{e} (or give --checkpoint and --spm)") from None
    cfg = VilaConfig.from_dict(meta.config)
    # Before the image tower is read, so that the graph is gone when the weights are held.
    own = savedmodel_text_embeddings(savedmodel_dir, _texts(pairs)) if pairs else None
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
    head = _personal_head(meta, reader, keys, savedmodel_dir)
    return ImageHeads(cfg, unflatten(flat), value(prompts_key), quality, {
        "from": "savedmodel", "savedmodel": os.path.abspath(savedmodel_dir),
        "demo_weights": bool(meta.demo_weights), "source_checkpoint": meta.source_checkpoint,
        "source_sha256": meta.source_sha256, "source_step": meta.source_step, "export_dtype": meta.dtype,
        "zero_shot_prompts": [list(p) for p in (meta.zero_shot_prompts or heads.ZERO_SHOT_PROMPT_PAIRS)],
        **({personal.METADATA_KEY: head["record"]} if head else {})},
        pairs, own, head)


def _personal_head(meta, reader, keys, savedmodel_dir: str) -> Optional[dict]:
    """A personal export's head, read back from its checkpoint (None for a base export)."""
    record = meta.extra.get(personal.METADATA_KEY)
    if not record:
        return None
    names = [f"{personal.WEIGHTS_VARIABLE}{_VALUE_SUFFIX}", f"{personal.BIAS_VARIABLE}{_VALUE_SUFFIX}"]
    if any(n not in keys for n in names):
        raise SourceError(f"{savedmodel_dir}: its metadata records a personal head but its variables hold none: "
                          "fit it again (vila-tf fit)")
    layout = personal.Layout.from_record(record["features"])
    weights = np.asarray(reader.get_tensor(names[0]), np.float32).reshape(-1)
    if len(weights) != layout.size:
        raise SourceError(f"{savedmodel_dir}: a personal head of {len(weights)} weights over {layout.size} features")
    return {"layout": layout, "weights": weights, "bias": float(reader.get_tensor(names[1])), "record": record}


def from_checkpoint(ckpt: str, spm_path: str, step: Optional[int] = None, overrides: Optional[dict] = None,
                    prompts=()) -> ImageHeads:
    """The image heads of a paxml (or converted) checkpoint; the prompts are tokenized with
    `spm_path` and embedded with the checkpoint's text tower, as the export does: the release's
    at their 4 tokens (its zero-shot prompts), your own `prompts` at the 64 of its
    `text_embedding` signature."""
    import jax
    import tensorflow as tf
    from ..checkpoints import paxml
    from ..savedmodel.tokenizer import LingvoTokenizer
    from ..savedmodel.writer import TEXT_LENGTH, TEXT_TOWER
    pairs = _pairs(prompts)
    if not os.path.isfile(spm_path):
        raise FileNotFoundError(f"{spm_path}: SentencePiece model not found (--spm)")
    source = paxml.open_params(ckpt, step, **(overrides or {}))
    cfg = source.config
    text = heads.compute_params(unflatten({p: jax.device_put(v) for p, v in source.read_tree(TEXT_TOWER).items()}))
    tokenizer = LingvoTokenizer(spm_path)
    embed = jax.jit(functools.partial(heads.text_embedding, cfg=cfg))

    def embedded(texts, length):
        ids, _, paddings = tokenizer.strings_to_ids(tf.constant(texts), length)
        return np.asarray(embed(text, ids=ids.numpy(), paddings=paddings.numpy()), np.float32)

    zsl = embedded(list(heads.ZERO_SHOT_PROMPTS), heads.ZERO_SHOT_PROMPT_LEN)
    own = embedded(_texts(pairs), TEXT_LENGTH) if pairs else None
    quality = np.asarray(jax.jit(functools.partial(heads.quality_prompt_embedding, cfg=cfg))(text)) \
        if cfg.has_quality_head else None
    del text
    flat = {p: np.asarray(v, np.float32) for p, v in source.read_tree(IMAGE_TOWER).items()}
    sha = source.sha256 or (file_sha256(source.path) if os.path.isfile(source.path) else None)
    return ImageHeads(cfg, unflatten(flat), zsl, quality, {
        "from": "checkpoint", "demo_weights": False, "source_checkpoint": os.path.abspath(source.path),
        "source_sha256": sha, "source_step": source.step, "export_dtype": "float32",
        "zero_shot_prompts": [list(p) for p in heads.ZERO_SHOT_PROMPT_PAIRS]}, pairs, own)
