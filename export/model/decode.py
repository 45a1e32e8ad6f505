"""Greedy caption decoding with a KV cache (docs/model.md §8), pure JAX.

Matches praxis' greedy decode: slot 0 holds BOS, each step feeds the token at slot `step` with
position `step`, takes the argmax (ties -> lowest id), and a row stops after emitting EOS. The
cross-attention keys/values of the image are projected once, not per step.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from .config import BOS_ID, EOS_ID, VilaConfig
from .modules import VilaModule


def _greedy_loop(next_logits, batch: int, max_len: int, carry):
    """The greedy loop shared by both decodes: `next_logits(ids, step, carry) -> (logits [B, V], carry)`.

    Returns ids [B, L] (slot 0 = BOS), lengths [B] (BOS and EOS counted), logprobs [B, L]:
    lengths = step+2 at the step a row emitted EOS, else L; slots after a row is done hold id 0 and
    log-prob 1.0, as does slot 0 (praxis' conventions).
    """
    def cond(state):
        step, _, _, _, done, _ = state
        return (step < max_len - 1) & ~jnp.all(done)

    def body(state):
        step, ids, logprobs, lengths, done, carry = state
        logits, carry = next_logits(ids, step, carry)
        logits = logits.astype(jnp.float32)
        next_ids = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        # The argmax's log-prob is the row's largest log-prob: the same value as indexing it, without
        # a batched gather (a StableHLO 1.1 op that TensorFlow 2.16 cannot read; docs/compatibility.md).
        next_lp = jnp.max(jax.nn.log_softmax(logits, axis=-1), axis=-1)
        ids = jax.lax.dynamic_update_index_in_dim(ids, jnp.where(done, 0, next_ids), step + 1, axis=1)
        logprobs = jax.lax.dynamic_update_index_in_dim(
            logprobs, jnp.where(done, 1.0, next_lp), step + 1, axis=1)
        finished_now = ~done & (next_ids == EOS_ID)
        lengths = jnp.where(finished_now, step + 2, lengths)
        return step + 1, ids, logprobs, lengths, done | finished_now, carry

    state = (jnp.asarray(0, jnp.int32),
             jnp.zeros((batch, max_len), jnp.int32).at[:, 0].set(BOS_ID),
             jnp.ones((batch, max_len), jnp.float32),
             jnp.full((batch,), max_len, jnp.int32),
             jnp.zeros((batch,), bool),
             carry)
    _, ids, logprobs, lengths, _, _ = jax.lax.while_loop(cond, body, state)
    return ids, lengths, logprobs


def greedy_decode(params, cfg: VilaConfig, generative_img_embed: jax.Array, max_len: int | None = None):
    """Greedy decode with a KV cache: each step feeds one token through the cached decoder."""
    model = VilaModule(cfg)
    max_len = max_len or cfg.decoding_max_len
    variables = {"params": params}
    cache = model.apply(variables, generative_img_embed, max_len, method=VilaModule.init_decode_cache)

    def next_logits(ids, step, cache):
        tokens = jax.lax.dynamic_index_in_dim(ids, step, axis=1, keepdims=False)
        return model.apply(variables, tokens, step, cache, method=VilaModule.decode_step)

    return _greedy_loop(next_logits, generative_img_embed.shape[0], max_len, cache)


def greedy_decode_uncached(params, cfg: VilaConfig, generative_img_embed: jax.Array, max_len: int | None = None):
    """greedy_decode without a KV cache: the benchmarks' baseline for what the cache saves.

    Every step reruns the whole text decoder (and the image cross-attention projections) over the
    full max_len window, with zero paddings: the causal mask hides the slots not written yet, so
    position `step` sees exactly the prefix. Only that position goes through the vocabulary
    projection, so the baseline pays for recomputing the prefix, not for 63 unused softmaxes.
    Same outputs, conventions and stopping rule as greedy_decode.
    """
    model = VilaModule(cfg)
    max_len = max_len or cfg.decoding_max_len
    variables = {"params": params}
    b = generative_img_embed.shape[0]
    no_padding = jnp.zeros((b, max_len), jnp.float32)

    def next_logits(ids, step, carry):
        hidden = model.apply(variables, ids, no_padding, generative_img_embed,
                             method=VilaModule.encode_text)["multimodal_txt_embed"]
        at_step = jax.lax.dynamic_index_in_dim(hidden, step, axis=1, keepdims=False)
        return model.apply(variables, at_step, method=lambda m, x: m.decoder.logits(x)), carry

    return _greedy_loop(next_logits, b, max_len, jnp.zeros((), jnp.int32))
