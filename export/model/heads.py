"""Pure inference functions, one per head, plus `image_outputs` (the three image heads from one
tower pass), which is what the export lowers for the image signatures.

Every function takes the parameter tree (the `params` collection) first; images are float32
[B, H, W, 3] in [0, 1]; text is lingvo-style ids/paddings [B, T].
"""
from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from . import decode
from .config import QUALITY_PROMPT_IDS, VilaConfig
from .modules import VilaModule, l2_normalize

# The release's zero-shot quality prompts (run_vila_predict._ZSL_QUALITY_PROMPTS): good/bad pairs,
# one per attribute, in the release's order (the order of the per-attribute scores everywhere).
ZERO_SHOT_PROMPT_PAIRS = (
    ("good image", "bad image"),
    ("good lighting", "bad lighting"),
    ("good content", "bad content"),
    ("good background", "bad background"),
    ("good foreground", "bad foreground"),
    ("good composition", "bad composition"),
)
ZERO_SHOT_PROMPTS = tuple(p for pair in ZERO_SHOT_PROMPT_PAIRS for p in pair)
ZERO_SHOT_ATTRIBUTES = tuple(good.split(" ", 1)[1] for good, _ in ZERO_SHOT_PROMPT_PAIRS)
# The release tokenizes the zero-shot prompts with max_length=4.
ZERO_SHOT_PROMPT_LEN = 4


COMPUTE_DTYPES = ("float32", "bfloat16")


def compute_params(params, compute_dtype: str = "float32"):
    """The parameter tree as the model computes with it, whatever the storage dtype.

    Matmul and convolution weights (the leaves named `w`: every FeedForward, attention projection,
    the patch projection and the vocabulary projection) take `compute_dtype`; everything else
    (embedding tables, layer-norm scales, biases, per-dim scales, pooling queries) is float32.
    model.matmul reads the compute dtype off the weights, so this one cast sets it everywhere.
    """
    if compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f"compute dtype {compute_dtype!r}: expected one of {', '.join(COMPUTE_DTYPES)}")
    matmul_dtype = jnp.dtype(compute_dtype)

    # Plain recursion over mappings: inside jax2tf the tree may hold TF's dict wrappers.
    def cast(tree):
        return {k: cast(v) if isinstance(v, Mapping) else
                jnp.asarray(v).astype(matmul_dtype if k == "w" else jnp.float32) for k, v in tree.items()}
    return cast(params)


def _apply(params, cfg: VilaConfig, method, *args):
    return VilaModule(cfg).apply({"params": params}, *args, method=method)


def encode_image(params, cfg: VilaConfig, images):
    return _apply(params, cfg, VilaModule.encode_image, images)


def image_embedding(params, cfg: VilaConfig, images):
    """l2-normalized contrastive image embedding [B, D]."""
    return encode_image(params, cfg, images)["contrastive_img_embed_norm"]


def text_embedding(params, cfg: VilaConfig, ids, paddings):
    """l2-normalized contrastive (CLS) text embedding [B, D], text tower only."""
    return _apply(params, cfg, VilaModule.encode_text, ids, paddings)["contrastive_txt_embed_norm"]


def quality_prompt_embedding(params, cfg: VilaConfig):
    """Text side of the VILA-R score: embedding of ids [1, 391, 11] with no padding, [1, D]."""
    ids = jnp.asarray([QUALITY_PROMPT_IDS], jnp.int32)
    return text_embedding(params, cfg, ids, jnp.zeros(ids.shape, jnp.float32))


def score_from_prompt(params, cfg: VilaConfig, images, prompt_embedding):
    """VILA-R quality score [B, 1] given the precomputed prompt embedding [1, D]."""
    if not cfg.has_quality_head:
        raise ValueError("the VILA-R quality score needs a checkpoint with `residual_ffn` (a VILA-R model)")
    img = encode_image(params, cfg, images)["contrastive_img_embed"]
    img = _apply(params, cfg, VilaModule.quality_image_embedding, img)
    return img @ prompt_embedding.T


def image_outputs(params, cfg: VilaConfig, images, zero_shot_prompts, quality_prompt=None):
    """What every image signature returns, from one pass of the image tower: (l2-normalized
    embedding [B, D], zero-shot score [B], per-pair zero-shot scores [B, K]) and, given the
    VILA-R prompt embedding [1, D], the quality score [B, 1] last. One lowered function for the
    three heads, so a server or process compiles the tower once per batch size, not once per head
    (docs/model.md §7)."""
    img = encode_image(params, cfg, images)
    embedding = img["contrastive_img_embed_norm"]
    pairs = zero_shot_pairs_from_embeddings(embedding, zero_shot_prompts)
    zero_shot_score = pairs.mean(axis=1)
    if quality_prompt is None:
        return embedding, zero_shot_score, pairs
    if not cfg.has_quality_head:
        raise ValueError("the VILA-R quality score needs a checkpoint with `residual_ffn` (a VILA-R model)")
    quality = _apply(params, cfg, VilaModule.quality_image_embedding, img["contrastive_img_embed"])
    return embedding, zero_shot_score, pairs, quality @ quality_prompt.T


def score(params, cfg: VilaConfig, images):
    """VILA-R quality score [B, 1] (praxis compute_predictions' `quality_scores`)."""
    return score_from_prompt(params, cfg, images, quality_prompt_embedding(params, cfg))


def zero_shot_pairs_from_embeddings(image_embedding_norm, prompt_embeddings):
    """[B, D] x [2K, D] (good, bad alternating) -> [B, K]: per pair, softmax over (image·good,
    image·bad) without temperature, the good column (the release's ZSL score before its mean)."""
    sims = image_embedding_norm @ prompt_embeddings.T
    sims = sims.reshape(sims.shape[0], -1, 2)
    return jax.nn.softmax(sims, axis=-1)[:, :, 0]


def zero_shot_from_embeddings(image_embedding_norm, prompt_embeddings):
    """[B, D] x [2K, D] (good, bad alternating) -> [B]: mean over pairs of softmax(good vs bad)."""
    return zero_shot_pairs_from_embeddings(image_embedding_norm, prompt_embeddings).mean(axis=1)


def zero_shot(params, cfg: VilaConfig, images, prompt_ids, prompt_paddings):
    """Zero-shot quality score [B] from the 12 tokenized prompts (run_vila_predict's ZSL score)."""
    prompts = text_embedding(params, cfg, prompt_ids, prompt_paddings)
    return zero_shot_from_embeddings(image_embedding(params, cfg, images), prompts)


def caption(params, cfg: VilaConfig, images, max_len: int | None = None):
    """Greedy caption ids [B, L], lengths [B], log-probs [B, L] (docs/model.md §8)."""
    gen = encode_image(params, cfg, images)["generative_img_embed"]
    return decode.greedy_decode(params, cfg, gen, max_len)


def teacher_forced_logits(params, cfg: VilaConfig, images, ids, paddings):
    gen = encode_image(params, cfg, images)["generative_img_embed"]
    return _apply(params, cfg, VilaModule.text_logits, ids, paddings, gen)
