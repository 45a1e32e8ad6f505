"""Flax re-implementation of the released VILA (CoCa) model, numerically faithful to praxis.

Module and parameter names mirror the praxis tree (docs/model.md §2), so loading a checkpoint is
a rename of paths, never a reshuffle: `encoder/transformers_stack/x_layers_3/self_attention/query/w`
here is the same array as in the paxml checkpoint. Numerics follow docs/model.md §3-7; the comments
name the praxis conventions that are easy to get wrong.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from .config import QUALITY_PROMPT_IDS, VilaConfig

Array = jax.Array
# praxis: py_utils.get_large_negative_number(float32) = -0.7 * float32 max.
LARGE_NEGATIVE = np.float32(-0.7 * np.finfo(np.float32).max)
LN_EPSILON = 1e-6
L2_EPSILON = 1e-12
# 1 / softplus(0): makes the per-dim scale start at exactly 1/sqrt(H).
R_SOFTPLUS_0 = 1.442695041

_weight_init = nn.initializers.variance_scaling(1.0, "fan_avg", "truncated_normal")
_zeros = nn.initializers.zeros


def matmul(x: Array, w: Array) -> Array:
    """x @ w in w's dtype with float32 accumulation and a float32 result.

    The compute dtype of a whole model is the dtype of its matmul weights (heads.compute_params):
    with float32 weights this is the plain float32 matmul; with bfloat16 weights the operands are
    rounded to bfloat16 (the accelerators' matrix units) and everything around the matmul (residual
    stream, layer norms, softmax, activations) stays float32. docs/accelerators.md lists the ops.
    """
    return jnp.matmul(x.astype(w.dtype), w, preferred_element_type=jnp.float32)


def einsum(spec: str, a: Array, b: Array, dtype) -> Array:
    """jnp.einsum with both operands in `dtype` and float32 accumulation and result (see matmul)."""
    return jnp.einsum(spec, a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32)


def l2_normalize(x: Array, axis: int = -1) -> Array:
    return x / jnp.sqrt(jnp.sum(x * x, axis=axis, keepdims=True) + L2_EPSILON)


class LayerNorm(nn.Module):
    """praxis LayerNorm: biased variance, eps 1e-6, applied as (1 + scale)."""
    dims: int

    def setup(self):
        self.scale = self.param("scale", _zeros, (self.dims,))
        self.bias = self.param("bias", _zeros, (self.dims,))

    def __call__(self, x: Array) -> Array:
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
        normed = (x - mean) * jax.lax.rsqrt(var + LN_EPSILON)
        return normed * (1 + self.scale) + self.bias


class _Weight(nn.Module):
    shape: tuple

    def setup(self):
        self.w = self.param("w", _weight_init, self.shape)


class _Bias(nn.Module):
    shape: tuple

    def setup(self):
        self.b = self.param("b", _zeros, self.shape)


class FeedForward(nn.Module):
    """praxis FeedForward: children `linear/w` [in, out] and `bias/b` [out]."""
    in_dims: int
    out_dims: int

    def setup(self):
        self.linear = _Weight((self.in_dims, self.out_dims))
        self.bias = _Bias((self.out_dims,))

    def __call__(self, x: Array) -> Array:
        return matmul(x, self.linear.w) + self.bias.b


class AttentionProjection(nn.Module):
    """q/k/v projection `w` [D, N, H], `b` [N, H]; with `is_output`, `w` [D, N, H] maps back."""
    dims: int
    num_heads: int
    dim_per_head: int
    is_output: bool = False

    def setup(self):
        self.w = self.param("w", _weight_init, (self.dims, self.num_heads, self.dim_per_head))
        b_shape = (self.dims,) if self.is_output else (self.num_heads, self.dim_per_head)
        self.b = self.param("b", _zeros, b_shape)

    def __call__(self, x: Array) -> Array:
        # Plain 2-D matmuls over the flattened (N, H) axes: the same sums as the einsums
        # btnh,dnh->btd / btd,dnh->btnh, but XLA:CPU runs a 3-D-weight einsum ~20x slower at
        # decode's one-token shapes.
        d, nh = self.dims, self.num_heads * self.dim_per_head
        w = self.w.reshape(d, nh)
        if self.is_output:
            return matmul(x.reshape(x.shape[:-2] + (nh,)), w.T) + self.b
        return matmul(x, w).reshape(x.shape[:-1] + (self.num_heads, self.dim_per_head)) + self.b


class PerDimScale(nn.Module):
    dim: int

    def setup(self):
        self.per_dim_scale = self.param("per_dim_scale", _zeros, (self.dim,))

    def __call__(self, q: Array) -> Array:
        scale = (R_SOFTPLUS_0 / math.sqrt(self.dim)) * jax.nn.softplus(self.per_dim_scale)
        return q * scale


class DotProductAttention(nn.Module):
    """praxis DotProductAttention with separate q/k/v/post projections.

    Transformer attentions scale queries by dim_per_head**-0.5 and cap logits at 50·tanh(x/50);
    the poolers use a learned per-dim scale and no cap.
    """
    dims: int
    num_heads: int
    dim_per_head: int
    logit_cap: float = 0.0
    per_dim_scale: bool = False

    def setup(self):
        proj = lambda out=False: AttentionProjection(self.dims, self.num_heads, self.dim_per_head, out)
        self.query, self.key, self.value, self.post = proj(), proj(), proj(), proj(True)
        if self.per_dim_scale:
            self.per_dim_scale_layer = PerDimScale(self.dim_per_head, name="per_dim_scale")

    def project_kv(self, x: Array) -> tuple[Array, Array]:
        return self.key(x), self.value(x)

    @property
    def compute_dtype(self):
        return self.query.w.dtype

    def attend(self, x_q: Array, k: Array, v: Array, mask: Optional[Array]) -> Array:
        q = self.query(x_q)
        if self.per_dim_scale:
            q = self.per_dim_scale_layer(q)
        else:
            q = q * (self.dim_per_head ** -0.5)
        logits = einsum("btnh,bsnh->bnts", q, k, self.compute_dtype)
        if self.logit_cap:
            logits = self.logit_cap * jnp.tanh(logits / self.logit_cap)
        logits = logits.astype(jnp.float32)
        if mask is not None:
            logits = logits + mask  # praxis adds the (min-combined) mask to capped logits
        probs = jax.nn.softmax(logits, axis=-1)
        context = einsum("bnts,bsnh->btnh", probs, v, self.compute_dtype)
        return self.post(context)

    def __call__(self, x_q: Array, x_kv: Array, mask: Optional[Array] = None) -> Array:
        k, v = self.project_kv(x_kv)
        return self.attend(x_q, k, v, mask)


class TransformerFeedForward(nn.Module):
    dims: int
    hidden_dims: int
    activation: Callable[[Array], Array]

    def setup(self):
        self.layer_norm = LayerNorm(self.dims)
        self.ffn_layer1 = FeedForward(self.dims, self.hidden_dims)
        self.ffn_layer2 = FeedForward(self.hidden_dims, self.dims)

    def __call__(self, x: Array, paddings: Optional[Array]) -> Array:
        keep = None if paddings is None else (1.0 - paddings)[..., None].astype(x.dtype)
        h = self.activation(self.ffn_layer1(self.layer_norm(x)))
        if keep is not None:
            h = h * keep
        out = self.ffn_layer2(h)
        if keep is not None:
            out = out * keep
        return x + out


def gelu_exact(x: Array) -> Array:
    return jax.nn.gelu(x, approximate=False)


class Transformer(nn.Module):
    """Pre-LN transformer block (praxis Transformer, norm_policy 'pre')."""
    dims: int
    num_heads: int
    dim_per_head: int
    ff_dims: int
    logit_cap: float
    activation: Callable[[Array], Array]
    has_cross_attention: bool = False

    def setup(self):
        attn = lambda: DotProductAttention(self.dims, self.num_heads, self.dim_per_head, self.logit_cap)
        self.layer_norm = LayerNorm(self.dims)
        self.self_attention = attn()
        if self.has_cross_attention:
            self.cross_layer_norm = LayerNorm(self.dims)
            self.cross_attention = attn()
        self.ff_layer = TransformerFeedForward(self.dims, self.ff_dims, self.activation)

    def __call__(self, x: Array, mask: Optional[Array] = None, paddings: Optional[Array] = None,
                 cross_kv: Optional[tuple] = None) -> Array:
        h = self.layer_norm(x)
        x = x + self.self_attention(h, h, mask)
        return self._cross_and_ffn(x, paddings, cross_kv)

    def _cross_and_ffn(self, x, paddings, cross_kv):
        if self.has_cross_attention:
            h = self.cross_layer_norm(x)
            x = x + self.cross_attention.attend(h, *cross_kv, None)
        return self.ff_layer(x, paddings)

    def cross_kv(self, image_features: Array) -> tuple[Array, Array]:
        return self.cross_attention.project_kv(image_features)

    def extend_step(self, x: Array, step: Array, cache: tuple[Array, Array],
                    cross_kv: Optional[tuple] = None):
        """One decode position: x [B,1,D] at `step`; cache (k, v) [B,L,N,H] updated in place."""
        h = self.layer_norm(x)
        k_new, v_new = self.self_attention.project_kv(h)
        k = jax.lax.dynamic_update_slice_in_dim(cache[0], k_new.astype(cache[0].dtype), step, axis=1)
        v = jax.lax.dynamic_update_slice_in_dim(cache[1], v_new.astype(cache[1].dtype), step, axis=1)
        # Causal: position `step` sees keys 0..step; later cache slots are still empty.
        visible = jnp.arange(k.shape[1]) <= step
        mask = jnp.where(visible, 0.0, LARGE_NEGATIVE).astype(jnp.float32)[None, None, None, :]
        x = x + self.self_attention.attend(h, k, v, mask)
        return self._cross_and_ffn(x, None, cross_kv), (k, v)


class StackedTransformer(nn.Module):
    """Unrepeated layers `x_layers_0..N-1`, as praxis StackedTransformer stores them."""
    num_layers: int
    layer_kwargs: dict

    def setup(self):
        self.layers = [Transformer(**self.layer_kwargs, name=f"x_layers_{i}") for i in range(self.num_layers)]

    def __call__(self, x, mask=None, paddings=None, cross_kv=None):
        for i, layer in enumerate(self.layers):
            x = layer(x, mask, paddings, None if cross_kv is None else cross_kv[i])
        return x

    def cross_kv(self, image_features):
        return [layer.cross_kv(image_features) for layer in self.layers]

    def extend_step(self, x, step, cache, cross_kv=None):
        new_cache = []
        for i, layer in enumerate(self.layers):
            x, c = layer.extend_step(x, step, cache[i], None if cross_kv is None else cross_kv[i])
            new_cache.append(c)
        return x, new_cache


class Embedding(nn.Module):
    num_rows: int
    dims: int
    init_std: float = 0.02

    def setup(self):
        self.emb_var = self.param("emb_var", nn.initializers.normal(self.init_std), (self.num_rows, self.dims))


class VisionEntry(nn.Module):
    cfg: VilaConfig

    def setup(self):
        self.patch_projection = FeedForward(self.cfg.patch_dims, self.cfg.model_dims)
        self.pos_emb = Embedding(self.cfg.num_patches, self.cfg.model_dims)

    def __call__(self, images: Array) -> Array:
        b = images.shape[0]
        g, p = self.cfg.grid_size, self.cfg.patch_size
        # b (m p) (n q) c -> b (m n) (p q c): row-major patches, (row, col, channel) inside a patch.
        x = images.reshape(b, g, p, g, p, 3).transpose(0, 1, 3, 2, 4, 5).reshape(b, g * g, p * p * 3)
        return self.patch_projection(x) + self.pos_emb.emb_var


class VisionExit(nn.Module):
    dims: int

    def setup(self):
        self.ln = LayerNorm(self.dims)

    def __call__(self, x):
        return self.ln(x)


class VisionTransformer(nn.Module):
    """ViT encoder: entry_stack (patches + position), transformers_stack, exit_stack (LN only)."""
    cfg: VilaConfig

    def setup(self):
        c = self.cfg
        self.entry_stack = VisionEntry(c)
        self.transformers_stack = StackedTransformer(c.num_encoder_layers, dict(
            dims=c.model_dims, num_heads=c.num_heads, dim_per_head=c.dim_per_head,
            ff_dims=c.encoder_ff_dims, logit_cap=c.atten_logit_cap, activation=gelu_exact))
        self.exit_stack = VisionExit(c.model_dims)

    def __call__(self, images: Array) -> Array:
        return self.exit_stack(self.transformers_stack(self.entry_stack(images)))


class AttenTokenPooling(nn.Module):
    """praxis AttenTokenPoolingLayer: learned queries attend to tokens, then LN; no residual/FFN."""
    cfg: VilaConfig
    num_queries: int

    def setup(self):
        c = self.cfg
        self.pooling_attn_query = self.param(
            "pooling_attn_query", _weight_init, (self.num_queries, c.model_dims))
        self.pool_attn = DotProductAttention(
            c.model_dims, c.pooler_num_heads, c.pooler_dim_per_head, logit_cap=0.0, per_dim_scale=True)
        self.pool_attn_ln = LayerNorm(c.model_dims)

    def __call__(self, tokens: Array) -> Array:
        q = jnp.broadcast_to(self.pooling_attn_query.astype(tokens.dtype),
                             (tokens.shape[0],) + self.pooling_attn_query.shape)
        return self.pool_attn_ln(self.pool_attn(q, tokens))


def sinusoidal_position_embedding(positions: Array, dims: int, dtype=jnp.float32) -> Array:
    """praxis PositionalEmbedding (min 1, max 1e4): [sin, cos] halves, sin first."""
    num_timescales = dims // 2
    increment = math.log(1.0e4 / 1.0) / max(num_timescales - 1, 1)
    inv_timescales = jnp.exp(jnp.arange(num_timescales, dtype=jnp.float32) * -increment)
    scaled = positions.astype(jnp.float32)[..., None] * inv_timescales
    return jnp.concatenate([jnp.sin(scaled), jnp.cos(scaled)], axis=-1).astype(dtype)


def causal_padding_mask(paddings: Array) -> Array:
    """[B,T] paddings -> [B,1,T,T] additive mask: padded keys and future keys, combined by min."""
    t = paddings.shape[1]
    key_pad = (paddings[:, None, None, :] * LARGE_NEGATIVE).astype(jnp.float32)
    causal = jnp.where(jnp.arange(t)[None, :] > jnp.arange(t)[:, None], LARGE_NEGATIVE, 0.0)
    return jnp.minimum(key_pad, causal.astype(jnp.float32)[None, None])


class SoftmaxLayer(nn.Module):
    dims: int
    vocab_size: int

    def setup(self):
        self.logits_ffn = FeedForward(self.dims, self.vocab_size)

    def __call__(self, x):
        return self.logits_ffn(x)


class MultimodalDecoder(nn.Module):
    """CoCa text decoder: unimodal (text-only) stack, CLS token, crossmodal stack, softmax."""
    cfg: VilaConfig

    def setup(self):
        c = self.cfg
        layer = dict(dims=c.model_dims, num_heads=c.num_heads, dim_per_head=c.dim_per_head,
                     ff_dims=c.decoder_ff_dims, logit_cap=c.atten_logit_cap, activation=jax.nn.relu)
        self.token_emb = Embedding(c.vocab_size, c.model_dims, init_std=c.model_dims ** -0.5)
        self.cls_emb = self.param("cls_emb", nn.initializers.normal(c.model_dims ** -0.5),
                                  (1, c.num_cls_tokens, c.model_dims))
        self.unimodal_transformer = StackedTransformer(c.num_unimodal_layers, layer)
        self.unimodal_ln = LayerNorm(c.model_dims)
        self.crossmodal_transformer = StackedTransformer(
            c.num_crossmodal_layers, dict(layer, has_cross_attention=True))
        self.crossmodal_ln = LayerNorm(c.model_dims)
        self.softmax = SoftmaxLayer(c.model_dims, c.vocab_size)

    def _embed_tokens(self, ids: Array, positions: Array) -> Array:
        emb = self.token_emb.emb_var
        x = jnp.take(emb, ids, axis=0) * math.sqrt(self.cfg.model_dims)
        return x + sinusoidal_position_embedding(positions, self.cfg.model_dims, emb.dtype)

    def __call__(self, ids: Array, paddings: Array, image_features: Optional[Array] = None) -> dict:
        c = self.cfg
        b, t = ids.shape
        x = self._embed_tokens(ids, jnp.arange(t)[None, :])
        cls = jnp.broadcast_to(self.cls_emb * math.sqrt(c.model_dims), (b, c.num_cls_tokens, c.model_dims))
        x = jnp.concatenate([x, cls.astype(x.dtype)], axis=1)
        paddings = jnp.concatenate(
            [paddings.astype(jnp.float32), jnp.zeros((b, c.num_cls_tokens), jnp.float32)], axis=1)
        mask = causal_padding_mask(paddings)
        x = self.unimodal_transformer(x, mask, paddings)
        unimodal = self.unimodal_ln(x)
        out = {"contrastive_txt_embed": unimodal[:, -1]}
        out["contrastive_txt_embed_norm"] = l2_normalize(out["contrastive_txt_embed"])
        if image_features is None:
            # praxis: with no image, the "multimodal" output is the un-normalized unimodal stream.
            out["multimodal_txt_embed"] = x[:, :t]
            return out
        cross_kv = self.crossmodal_transformer.cross_kv(image_features)
        y = self.crossmodal_ln(self.crossmodal_transformer(x, mask, paddings, cross_kv))
        out["multimodal_txt_embed"] = y[:, :t]
        return out

    def logits(self, multimodal_txt_embed: Array) -> Array:
        return self.softmax(multimodal_txt_embed)

    def init_cache(self, image_features: Array, max_len: int) -> dict:
        c = self.cfg
        b = image_features.shape[0]
        # Keys/values are held in the compute dtype: attention rounds them to it anyway, so a
        # bfloat16 cache loses nothing and halves decode's memory traffic.
        dtype = self.softmax.logits_ffn.linear.w.dtype
        zeros = lambda: jnp.zeros((b, max_len, c.num_heads, c.dim_per_head), dtype)
        cross_kv = [(k.astype(dtype), v.astype(dtype))
                    for k, v in self.crossmodal_transformer.cross_kv(image_features)]
        return {
            "unimodal": [(zeros(), zeros()) for _ in range(c.num_unimodal_layers)],
            "crossmodal": [(zeros(), zeros()) for _ in range(c.num_crossmodal_layers)],
            "cross_kv": cross_kv,
        }

    def extend_step(self, ids: Array, step: Array, cache: dict) -> tuple[Array, dict]:
        """Logits [B, V] for token ids [B] at position `step`, with the KV cache."""
        x = self._embed_tokens(ids[:, None], jnp.reshape(step, (1, 1)))
        x, uni = self.unimodal_transformer.extend_step(x, step, cache["unimodal"])
        x, cross = self.crossmodal_transformer.extend_step(x, step, cache["crossmodal"], cache["cross_kv"])
        logits = self.logits(self.crossmodal_ln(x))[:, 0]
        return logits, {"unimodal": uni, "crossmodal": cross, "cross_kv": cache["cross_kv"]}


class ContrastiveLoss(nn.Module):
    """Holds the training-only temperature so the tree matches the checkpoint's."""

    def setup(self):
        self.temperature = self.param("temperature", nn.initializers.constant(0.07), ())


class VilaModule(nn.Module):
    """CoCaVilaRankBasedFinetune (VILA-R) or CoCaVilaPretrain (VILA-P), chosen by cfg.model_type."""
    cfg: VilaConfig

    def setup(self):
        c = self.cfg
        self.encoder = VisionTransformer(c)
        self.generative_img_pooler = AttenTokenPooling(c, c.num_generative_queries)
        self.contrastive_img_pooler = AttenTokenPooling(c, c.num_contrastive_queries)
        self.decoder = MultimodalDecoder(c)
        self.contrastive_loss = ContrastiveLoss()
        if c.has_quality_head:
            self.residual_ffn = FeedForward(c.model_dims, c.model_dims)

    def encode_image(self, images: Array) -> dict:
        """images float [B,H,W,3] in [0,1] (no normalization, as the release)."""
        encoder_out = self.encoder(images)
        generative = self.generative_img_pooler(encoder_out)
        # The contrastive pooler pools the *generative* pooler's output, not the encoder's.
        contrastive = self.contrastive_img_pooler(generative)
        contrastive = contrastive.reshape(contrastive.shape[0], -1) if contrastive.shape[1] == 1 else contrastive
        return {
            "encoder_out": encoder_out,
            "generative_img_embed": generative,
            "contrastive_img_embed": contrastive,
            "contrastive_img_embed_norm": l2_normalize(contrastive),
        }

    def encode_text(self, ids: Array, paddings: Array, image_features: Optional[Array] = None) -> dict:
        return self.decoder(ids, paddings, image_features)

    def text_logits(self, ids: Array, paddings: Array, image_features: Array) -> Array:
        return self.decoder.logits(self.decoder(ids, paddings, image_features)["multimodal_txt_embed"])

    def quality_image_embedding(self, contrastive_img_embed: Array) -> Array:
        """VILA-R: l2n(e + residual_ffn(e)), the image side of the quality score."""
        e = contrastive_img_embed
        return l2_normalize(e + self.residual_ffn(e))

    def init_decode_cache(self, image_features: Array, max_len: int) -> dict:
        return self.decoder.init_cache(image_features, max_len)

    def decode_step(self, ids: Array, step: Array, cache: dict):
        return self.decoder.extend_step(ids, step, cache)

    def __call__(self, images: Array, ids: Array, paddings: Array) -> dict:
        """praxis compute_predictions; also touches every parameter (used by `init`)."""
        img = self.encode_image(images)
        out = dict(img)
        out.update(self.encode_text(ids, paddings, img["generative_img_embed"]))
        out["logits"] = self.decoder.logits(out["multimodal_txt_embed"])
        out["temperature"] = self.contrastive_loss.temperature
        if self.cfg.has_quality_head:
            prompt = self.encode_text(jnp.asarray([QUALITY_PROMPT_IDS], jnp.int32),
                                      jnp.zeros((1, len(QUALITY_PROMPT_IDS)), jnp.float32))
            out["quality_scores"] = (self.quality_image_embedding(img["contrastive_img_embed"])
                                     @ prompt["contrastive_txt_embed_norm"].T)
        return out


def abstract_params(cfg: VilaConfig):
    """The parameter tree as ShapeDtypeStructs, allocating nothing: the shapes every checkpoint
    reader and the export check against."""
    model = VilaModule(cfg)
    img = jax.ShapeDtypeStruct((1, cfg.image_size, cfg.image_size, 3), jnp.float32)
    ids = jax.ShapeDtypeStruct((1, 4), jnp.int32)
    pad = jax.ShapeDtypeStruct((1, 4), jnp.float32)
    return jax.eval_shape(model.init, jax.random.PRNGKey(0), img, ids, pad)["params"]
