"""Greedy caption decoding with a KV cache (spec §8), pure JAX.

Matches praxis' greedy decode: slot 0 holds BOS, each step feeds the token at slot `step` with
position `step`, takes the argmax (ties -> lowest id), and a row stops after emitting EOS. The
cross-attention keys/values of the image are projected once, not per step.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from export.config import BOS_ID, EOS_ID, VilaConfig
from export.model import VilaModel


def greedy_decode(params, cfg: VilaConfig, generative_img_embed: jax.Array, max_len: int | None = None):
    """Returns ids [B, L] (slot 0 = BOS), lengths [B] (BOS and EOS counted), logprobs [B, L].

    lengths = step+2 at the step a row emitted EOS, else L; slots after a row is done hold id 0 and
    log-prob 1.0, as does slot 0 (praxis' conventions).
    """
    model = VilaModel(cfg)
    max_len = max_len or cfg.decoding_max_len
    variables = {"params": params}
    b = generative_img_embed.shape[0]
    cache = model.apply(variables, generative_img_embed, max_len, method=VilaModel.init_decode_cache)
    ids = jnp.zeros((b, max_len), jnp.int32).at[:, 0].set(BOS_ID)
    logprobs = jnp.ones((b, max_len), jnp.float32)
    lengths = jnp.full((b,), max_len, jnp.int32)
    done = jnp.zeros((b,), bool)

    def cond(state):
        step, _, _, _, done, _ = state
        return (step < max_len - 1) & ~jnp.all(done)

    def body(state):
        step, ids, logprobs, lengths, done, cache = state
        tokens = jax.lax.dynamic_index_in_dim(ids, step, axis=1, keepdims=False)
        logits, cache = model.apply(variables, tokens, step, cache, method=VilaModel.decode_step)
        logits = logits.astype(jnp.float32)
        next_ids = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        next_lp = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), next_ids[:, None], axis=-1)[:, 0]
        ids = jax.lax.dynamic_update_index_in_dim(ids, jnp.where(done, 0, next_ids), step + 1, axis=1)
        logprobs = jax.lax.dynamic_update_index_in_dim(
            logprobs, jnp.where(done, 1.0, next_lp), step + 1, axis=1)
        finished_now = ~done & (next_ids == EOS_ID)
        lengths = jnp.where(finished_now, step + 2, lengths)
        return step + 1, ids, logprobs, lengths, done | finished_now, cache

    state = (jnp.asarray(0, jnp.int32), ids, logprobs, lengths, done, cache)
    _, ids, logprobs, lengths, _, _ = jax.lax.while_loop(cond, body, state)
    return ids, lengths, logprobs
