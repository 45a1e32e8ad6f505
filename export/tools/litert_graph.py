"""The TensorFlow functions the LiteRT converter turns into the on-device image heads.

What makes the `.tflite` fast on a phone's (or laptop's) CPU:

- Static shapes. The SavedModel's heads are lowered with a polymorphic batch, which the converter
  keeps as ~250 shape-computation ops (SHAPE, BROADCAST_TO, UNSORTED_SEGMENT_PROD) that split the
  XNNPACK delegate's graph. Here the image tower is lowered for one fixed batch, so every tensor
  after the resize has a static shape. Only the input image's height and width are free: the
  resize to 272x272 is the one op that reads them (LiteRT resizes the input tensor per call).
- GELU as one op. jax lowers the encoder's exact GELU through `erf`, which the converter expands
  into ~12 elementwise ops (LESS, SELECT, EXP...) that XNNPACK does not take: 37 delegate
  partitions instead of 1, 1.5x slower. While the heads are lowered here, the activation is the
  same function wrapped as a StableHLO composite named like PyTorch's (`aten.gelu.default`), which
  the converter maps to TFLite's GELU op (approximate=False: the same erf form, docs/model.md §3).

- Less work in the poolers, same sums. Their queries are learned constants, so what depends only
  on the weights is computed once here, in numpy: the generative pooler's 196 projected queries
  (0.9 GFLOP a call), and for the contrastive pooler's single query its keys are folded into its
  query (logits = G·(W_k q) + b_k·q) and its values applied after the attention-weighted mean
  (sum_s p_s (G_s W_v + b_v) = (sum_s p_s G_s) W_v + b_v, the probabilities summing to one):
  two [196, 768] x [768, 3072] projections fewer (1.9 GFLOP). About 7% of the tower's FLOPs; the
  encoder, the layer norms and the quality head run the model's own modules (docs/model.md §5).

The preprocessing is the SavedModel's own code (`vila_tf.savedmodel.preprocessing.crop_and_scale`: the TF1
resize without half-pixel centers to 272, center crop 224, /255; docs/model.md §11), so an app that
passes decoded pixels gets the export's score.
"""
from __future__ import annotations

import contextlib
import jax
import tensorflow as tf
from jax.experimental import jax2tf

import numpy as np

from ..model import heads, modules
from ..savedmodel import tf_targets
from ..savedmodel.jax_settings import reproducible_locations
from vila_tf.savedmodel import preprocessing
from vila_tf.litert.format import ATTRIBUTE_OUTPUTS, IMAGE_INPUT, IMAGE_SIGNATURE, PROMPT_SCORES_OUTPUT

def _gelu_composite(x):
    exact = lambda x, approximate="none": jax.nn.gelu(x, approximate=False)
    return jax.lax.composite(exact, name="aten.gelu.default")(x, approximate="none")


@contextlib.contextmanager
def _tflite_gelu():
    """The encoder's activation as a composite while the heads are traced (modules reads
    `gelu_exact` when the Flax modules are set up, i.e. at every trace)."""
    saved = modules.gelu_exact
    modules.gelu_exact = _gelu_composite
    try:
        yield
    finally:
        modules.gelu_exact = saved


def converter_stablehlo() -> str:
    """The StableHLO version this TensorFlow's converter reads (jax's default is newer)."""
    release = tf_targets.release_of(tf.__version__)
    known = tf_targets.TARGETS.get(release)
    newest_known = tf_targets.TARGETS[max(tf_targets.TARGETS, key=tf_targets.release_key)]
    return (known or newest_known).stablehlo


def _pooler_constants(pool: dict, query: np.ndarray) -> np.ndarray:
    """What a pooler's attention computes from its weights alone: its queries, projected and scaled
    (praxis per-dim scale, docs/model.md §5), [Q, N, H]."""
    attn = pool["pool_attn"]
    w, b = np.asarray(attn["query"]["w"], np.float32), np.asarray(attn["query"]["b"], np.float32)
    d, n, h = w.shape
    pds = np.asarray(attn["per_dim_scale"]["per_dim_scale"], np.float32)
    scale = (modules.R_SOFTPLUS_0 / np.sqrt(h)) * np.logaddexp(0.0, pds)  # softplus
    return ((query @ w.reshape(d, n * h)).reshape(-1, n, h) + b) * scale.astype(np.float32)


def device_params(params: dict) -> dict:
    """The image tower's weights as the on-device function takes them: the encoder and the VILA-R
    projection as they are, the poolers with their query-side constants precomputed."""
    gen, con = params["generative_img_pooler"], params["contrastive_img_pooler"]
    q_gen = _pooler_constants(gen, np.asarray(gen["pooling_attn_query"], np.float32))
    q_con = _pooler_constants(con, np.asarray(con["pooling_attn_query"], np.float32))[0]  # [N, H]
    attn = con["pool_attn"]
    wk, bk = np.asarray(attn["key"]["w"], np.float32), np.asarray(attn["key"]["b"], np.float32)
    wv = np.asarray(attn["value"]["w"], np.float32)
    out = {k: v for k, v in params.items() if k not in ("generative_img_pooler", "contrastive_img_pooler")}
    out["generative"] = {"q": q_gen, "attn": {k: v for k, v in gen["pool_attn"].items() if k in ("key", "value", "post")},
                         "ln": gen["pool_attn_ln"]}
    out["contrastive"] = {
        "u": np.einsum("dnh,nh->dn", wk, q_con).astype(np.float32),  # keys folded into the query: [D, N]
        "c": np.einsum("nh,nh->n", bk, q_con).astype(np.float32),  # the key bias' share: [N]
        "wv": np.ascontiguousarray(wv.transpose(1, 0, 2)),  # [N, D, H]
        "bv": np.asarray(attn["value"]["b"], np.float32), "post": attn["post"], "ln": con["pool_attn_ln"]}
    return out


def _project(x, proj: dict):
    """x [.., D] -> [.., N, H] with a q/k/v projection's weights (modules.AttentionProjection)."""
    w = proj["w"]
    d, n, h = w.shape
    return (x @ w.reshape(d, n * h)).reshape(x.shape[:-1] + (n, h)) + proj["b"]


def _post(context, proj: dict):
    """[.., N, H] -> [.., D]: the output projection (modules.AttentionProjection, is_output)."""
    w = proj["w"]
    d, n, h = w.shape
    return context.reshape(context.shape[:-2] + (n * h,)) @ w.reshape(d, n * h).T + proj["b"]


def _layer_norm(x, ln: dict):
    return modules.LayerNorm(x.shape[-1]).apply({"params": ln}, x)


def image_outputs(p: dict, cfg, images, pair_prompts, quality_prompt=None):
    """heads.image_outputs on `device_params`, with the poolers' constant work done ahead: the
    embedding [B, D], the zero-shot score [B] (the mean over the release's six pairs), the score
    of every pair [B, 6 + K] (the release's six, then your own K; `pair_prompts` [2 (6 + K), D],
    good/bad alternating) and, for VILA-R, the quality score [B, 1]."""
    import jax.numpy as jnp
    model = modules.VilaModule(cfg)
    tower = {k: v for k, v in p.items() if k not in ("generative", "contrastive")}
    encoder_out = model.apply({"params": tower}, images, method=lambda m, x: m.encoder(x))  # [B, S, D]
    g = p["generative"]
    k, v = _project(encoder_out, g["attn"]["key"]), _project(encoder_out, g["attn"]["value"])
    logits = jnp.einsum("qnh,bsnh->bnqs", g["q"], k)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    generative = _layer_norm(_post(jnp.einsum("bnqs,bsnh->bqnh", probs, v), g["attn"]["post"]), g["ln"])  # [B, Q, D]
    c = p["contrastive"]
    logits = jnp.einsum("bsd,dn->bns", generative, c["u"]) + c["c"][None, :, None]
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)  # [B, N, S]
    mean = jnp.einsum("bns,bsd->bnd", probs, generative)  # attention-weighted mean of the tokens
    context = jnp.einsum("bnd,ndh->bnh", mean, c["wv"]) + c["bv"]
    contrastive = _layer_norm(_post(context, c["post"]), c["ln"])  # [B, D]
    embedding = modules.l2_normalize(contrastive)
    # One mechanism for every pair, the release's and yours: constant prompt embeddings and the
    # release's per-pair softmax (heads.zero_shot_pairs_from_embeddings).
    pairs = heads.zero_shot_pairs_from_embeddings(embedding, pair_prompts)
    zero_shot_score = pairs[:, :len(ATTRIBUTE_OUTPUTS)].mean(axis=1)
    if quality_prompt is None:
        return embedding, zero_shot_score, pairs
    quality = model.apply({"params": tower}, contrastive, method=modules.VilaModule.quality_image_embedding)
    return embedding, zero_shot_score, pairs, quality @ quality_prompt.T


class ImageHeadsModule(tf.Module):
    """The image tower's weights as variables (frozen into constants by the converter) and the
    one signature function: uint8 pixels [1, H, W, 3] -> the three image heads, the six
    attributes' scores and, given your own pairs, their scores."""

    def __init__(self, source):
        super().__init__(name="vila_litert")
        cfg = self.cfg = source.config
        self.weights = tf.nest.map_structure(lambda a: tf.Variable(a, trainable=False), device_params(source.params))
        self.own_pairs = len(source.prompts)
        self.personal = source.personal_head
        pair_prompts, quality = source.pair_prompts, source.quality_prompt

        def outputs(params, images):
            return image_outputs(params, cfg, images, pair_prompts, quality)

        # Batch 1, static: the converter then emits no shape computation (see the module docstring).
        self._lowered = jax2tf.convert(outputs, with_gradient=False, native_serialization_platforms=("cpu",))
        self.image_fn = tf.function(self._image, autograph=False,
                                    input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8, name=IMAGE_INPUT)])

    def _image(self, image):
        pixels = preprocessing.crop_and_scale(tf.cast(image[0], tf.float32))[None]
        embedding, zero_shot_score, pairs, *quality = self._lowered(self.weights, pixels)
        # A pretrain model has no quality head: its score is the zero-shot score (as the SavedModel's).
        score = quality[0] if quality else zero_shot_score[:, None]
        # The per-pair scores leave the lowered function as one [1, 6 + K] array and are sliced
        # here (no model work) into one output per attribute, as the SavedModel's, and your pairs'.
        n = len(ATTRIBUTE_OUTPUTS)
        if self.personal is not None:
            score = personal_score(self.personal, embedding, pairs[:, :n], score)
        out = {"predictions": score, "image_embedding": embedding, "zero_shot_score": zero_shot_score,
               **{key: pairs[:, i] for i, key in enumerate(ATTRIBUTE_OUTPUTS)}}
        if self.own_pairs:
            out[PROMPT_SCORES_OUTPUT] = pairs[:, n:]
        return out

    def concrete_functions(self) -> dict:
        """{signature name: concrete function}, lowered with the GELU composite, for the StableHLO
        version this TensorFlow's converter reads."""
        with _tflite_gelu(), tf_targets.stablehlo_target(converter_stablehlo()), reproducible_locations():
            return {IMAGE_SIGNATURE: self.image_fn.get_concrete_function()}


def personal_score(head: dict, embedding, attributes, score):
    """A personal export's score (`vila-tf fit`): its head over the features in
    vila_tf.core.personal's order. A product and a sum, not a matmul: the quantizer leaves them in
    float32 in every variant (it quantizes fully-connected layers)."""
    columns = [embedding, attributes] + ([score] if head["layout"].with_score else [])
    features = tf.concat(columns, axis=1)
    weights = tf.constant(head["weights"], tf.float32)[None]
    return tf.reduce_sum(features * weights, axis=1, keepdims=True) + tf.constant(head["bias"], tf.float32)


def convert(module: ImageHeadsModule, work_dir: str) -> bytes:
    """The float32 `.tflite` flatbuffer: TFLite builtin ops only (no Flex/TF ops, no custom ops).

    Converted from a SavedModel written to `work_dir` (a scratch folder), the converter's one
    entry point that keeps the signatures' names for any number of them."""
    fns = module.concrete_functions()
    tf.saved_model.save(module, work_dir, signatures=fns)
    converter = tf.lite.TFLiteConverter.from_saved_model(work_dir, signature_keys=list(fns))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return converter.convert()
