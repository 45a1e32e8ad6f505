"""VILA model configuration, inferred from a checkpoint's array shapes.

Every size the model needs can be read off the parameter shapes (docs/model.md §1-2), so a
released checkpoint configures the model by itself; only `atten_logit_cap` and `decoding_max_len`
are not visible in the arrays and keep the release's values unless overridden.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any, Mapping

VILA_R = "vila_r"  # CoCaVilaRankBasedFinetune: has the `residual_ffn` quality head
VILA_P = "vila_p"  # CoCaVilaPretrain (also the class of the LAION CoCa checkpoint)

BOS_ID = 1
EOS_ID = 2
PAD_ID = 0
# Prompt of the VILA-R quality score: BOS, "good", "image" (release code constants).
QUALITY_PROMPT_IDS = (BOS_ID, 391, 11)


class ConfigError(ValueError):
    """A checkpoint's arrays do not describe a VILA model."""


@dataclasses.dataclass(frozen=True)
class VilaConfig:
    model_type: str = VILA_R
    model_dims: int = 768
    num_heads: int = 12
    dim_per_head: int = 64
    encoder_ff_dims: int = 3072
    decoder_ff_dims: int = 3072
    pooler_num_heads: int = 12
    pooler_dim_per_head: int = 256
    num_encoder_layers: int = 12
    num_unimodal_layers: int = 6
    num_crossmodal_layers: int = 6
    vocab_size: int = 64000
    image_size: int = 224
    patch_size: int = 16
    num_generative_queries: int = 196
    num_contrastive_queries: int = 1
    num_cls_tokens: int = 1
    atten_logit_cap: float = 50.0
    decoding_max_len: int = 64

    def __post_init__(self):
        if self.model_type not in (VILA_R, VILA_P):
            raise ConfigError(f"model_type must be {VILA_R!r} or {VILA_P!r}, got {self.model_type!r}")
        if self.image_size % self.patch_size:
            raise ConfigError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")

    @property
    def has_quality_head(self) -> bool:
        return self.model_type == VILA_R

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size ** 2

    @property
    def patch_dims(self) -> int:
        return self.patch_size * self.patch_size * 3

    def replace(self, **overrides) -> "VilaConfig":
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "VilaConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"unknown config keys: {sorted(unknown)}")
        return cls(**d)


def _layer_count(shapes: Mapping[str, tuple], stack: str) -> int:
    pat = re.compile(re.escape(stack) + r"/x_layers_(\d+)/")
    idx = {int(m.group(1)) for p in shapes if (m := pat.match(p))}
    if not idx:
        raise ConfigError(f"checkpoint has no layers under {stack}/x_layers_*")
    if idx != set(range(len(idx))):
        missing = sorted(set(range(max(idx) + 1)) - idx)
        raise ConfigError(f"{stack}: layers {missing} are missing (found {sorted(idx)})")
    return len(idx)


def config_from_shapes(shapes: Mapping[str, tuple], **overrides) -> VilaConfig:
    """Infers a VilaConfig from `{param path under params/: shape}`; `overrides` win."""

    def shape(path: str) -> tuple:
        if path not in shapes:
            raise ConfigError(f"checkpoint lacks the parameter {path!r}, needed to infer the model config")
        return tuple(shapes[path])

    enc_q = shape("encoder/transformers_stack/x_layers_0/self_attention/query/w")
    pool_q = shape("generative_img_pooler/pool_attn/query/w")
    vocab, dims = shape("decoder/token_emb/emb_var")
    patch_in, patch_out = shape("encoder/entry_stack/patch_projection/linear/w")
    num_patches = shape("encoder/entry_stack/pos_emb/emb_var")[0]
    patch = math.isqrt(patch_in // 3)
    grid = math.isqrt(num_patches)
    if patch * patch * 3 != patch_in or grid * grid != num_patches:
        raise ConfigError(
            f"patch projection input {patch_in} / {num_patches} position embeddings do not describe a "
            "square patch grid of RGB patches")
    uni_ff = shape("decoder/unimodal_transformer/x_layers_0/ff_layer/ffn_layer1/linear/w")[1]
    cross_ff = shape("decoder/crossmodal_transformer/x_layers_0/ff_layer/ffn_layer1/linear/w")[1]
    if uni_ff != cross_ff:
        raise ConfigError(f"decoder stacks disagree on FFN width: unimodal {uni_ff}, crossmodal {cross_ff}")
    inferred = dict(
        model_type=VILA_R if "residual_ffn/linear/w" in shapes else VILA_P,
        model_dims=dims,
        num_heads=enc_q[1],
        dim_per_head=enc_q[2],
        encoder_ff_dims=shape("encoder/transformers_stack/x_layers_0/ff_layer/ffn_layer1/linear/w")[1],
        decoder_ff_dims=uni_ff,
        pooler_num_heads=pool_q[1],
        pooler_dim_per_head=pool_q[2],
        num_encoder_layers=_layer_count(shapes, "encoder/transformers_stack"),
        num_unimodal_layers=_layer_count(shapes, "decoder/unimodal_transformer"),
        num_crossmodal_layers=_layer_count(shapes, "decoder/crossmodal_transformer"),
        vocab_size=vocab,
        image_size=grid * patch,
        patch_size=patch,
        num_generative_queries=shape("generative_img_pooler/pooling_attn_query")[0],
        num_contrastive_queries=shape("contrastive_img_pooler/pooling_attn_query")[0],
        # Optional for inference: a reader reporting a mis-shaped cls_emb still gets a config.
        num_cls_tokens=tuple(shapes.get("decoder/cls_emb", (1, 1, dims)))[1],
    )
    if patch_out != dims:
        raise ConfigError(f"patch projection output {patch_out} != model dims {dims}")
    inferred.update({k: v for k, v in overrides.items() if v is not None})
    return VilaConfig(**inferred)
