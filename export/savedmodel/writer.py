"""SavedModel assembly: jax2tf-lowered heads, in-graph pre/post-processing, signatures, atomic write.

Three functions of `export.heads` are lowered with jax2tf native serialization (StableHLO in an
`XlaCallModule` op) for cpu, cuda and tpu at once, with a polymorphic batch dimension: the image
heads as one (`image_outputs`: embedding, zero-shot score with its six per-attribute scores, and
quality score from one tower pass), the caption and the text embedding. Parameters
are `tf.Variable`s owned by the module and shared by every signature. The VILA-R prompt embedding
and the twelve zero-shot prompt embeddings are computed once here and stored as variables, so
scoring never runs the text tower.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Callable, Optional

import jax
import numpy as np
import tensorflow as tf
from jax.experimental import jax2tf

from ..model import heads
from .. import host_memory
from . import tf_targets, variables_file
from .jax_settings import calling_convention, reproducible_locations
from vila_tf.savedmodel import preprocessing as preprocess
from vila_tf.savedmodel import tf_compat
from ..model.tree import unflatten
from ..model.config import VilaConfig
from ..model.params import ParamSource, as_source
from .tokenizer import LingvoTokenizer
from vila_tf.serving.warmup import write_warmup
from vila_tf.core.atomic import atomic_dir
from vila_tf.core import metadata as export_metadata
from vila_tf.core.signatures import (ALL_SIGNATURES, BYTES, CAPTION_HEAD, IMAGE_HEAD, NO_HEAD, PIXELS, SIGNATURES,
                                TEXT, ZERO_SHOT_ATTRIBUTE_OUTPUTS)

PLATFORMS = ("cpu", "cuda", "tpu")
SPM_ASSET_NAME = "spm.model"
TEXT_LENGTH = 64  # tokens per text for the text_embedding signature (the release's max text length)



@dataclasses.dataclass
class ExportOptions:
    dtype: str = "float32"  # or "bfloat16": weights stored in bfloat16
    compute_dtype: str = "float32"  # or "bfloat16": matmuls in bfloat16 (heads.compute_params)
    platforms: tuple = PLATFORMS
    max_pixels: int = preprocess.DEFAULT_MAX_PIXELS
    webp: bool = True  # WebP decoded in the graph (False for TensorFlow releases without its decoder)
    demo: bool = False
    source: Optional[str] = None
    source_sha256: Optional[str] = None
    source_step: Optional[int] = None
    # "X.Y": lower for TensorFlow / TF Serving X.Y and newer (export.tf_targets); None: this TensorFlow.
    target_tensorflow: Optional[str] = None

    @property
    def variable_dtype(self) -> tf.DType:
        """The weight variables' dtype (`dtype`, the storage)."""
        return tf.bfloat16 if self.dtype == "bfloat16" else tf.float32


@functools.lru_cache(maxsize=None)
def tf_calling_convention_version() -> int:
    """The newest jax.export calling convention that this TensorFlow's XlaCallModule runs.

    Probed by running a trivial lowered function under each version jax can write, newest first.
    """
    from jax import export as jax_export
    newest = jax_export.maximum_supported_calling_convention_version
    oldest = jax_export.minimum_supported_calling_convention_version
    for version in range(newest, oldest - 1, -1):
        try:
            with calling_convention(version):
                f = jax2tf.convert(lambda x: x + 1, with_gradient=False, native_serialization_platforms=("cpu",))
                tf.function(f, autograph=False)(tf.constant(1.0)).numpy()
            return version
        except Exception:  # noqa: BLE001 - an unsupported version fails in the TF kernel
            continue
    raise RuntimeError("TensorFlow's XlaCallModule accepts none of the calling conventions jax can write")


def lowering_versions(options: ExportOptions) -> tuple[int, str]:
    """(calling convention version, StableHLO version) the heads are serialized with: the target
    release's (docs/compatibility.md), or by default the newest this TensorFlow runs and jax's own
    StableHLO choice."""
    if options.target_tensorflow:
        target = tf_targets.target(options.target_tensorflow)
        return min(target.calling_convention, tf_calling_convention_version()), \
            tf_targets.older_stablehlo(target.stablehlo, tf_targets.jax_default_stablehlo())
    return tf_calling_convention_version(), tf_targets.jax_default_stablehlo()


# The parameters the text tower reads: enough to embed the prompts at export time.
TEXT_TOWER = ("decoder/token_emb/", "decoder/cls_emb", "decoder/unimodal_transformer/", "decoder/unimodal_ln/")


class VilaModule(tf.Module):
    """The exported object: variables, tokenizer, and one tf.function per signature.

    `variables`, `trainable_variables` (none: inference only) and `regularization_losses` are saved
    as plain attributes, the reusable-SavedModel convention that `hub.KerasLayer` reads.
    """
    # Plain attributes instead of tf.Module's computed properties, so they are saved.
    variables = None
    trainable_variables = None

    def __init__(self, source: ParamSource, cfg: VilaConfig, spm_model_path: str, options: ExportOptions):
        """Reads only the text tower from `source` (to embed the prompts): the weight variables
        are zeros that occupy no memory, filled in the saved checkpoint afterwards
        (`export.variables_file`, the lean export)."""
        super().__init__(name="vila")
        self.cfg, self.options = cfg, options
        self.tokenizer = LingvoTokenizer(spm_model_path)
        spm_vocab = int(self.tokenizer.vocab_size())
        if spm_vocab > cfg.vocab_size:
            raise ValueError(f"{spm_model_path}: the SentencePiece model has {spm_vocab} pieces but the "
                             f"checkpoint's token embedding has only {cfg.vocab_size} rows")
        # The prompts are embedded first, from the text tower alone (a fraction of the model), each
        # array handed to jax as it is read: jit would otherwise copy them all beside the originals.
        self._embed_prompts({p: jax.device_put(v) for p, v in source.read_tree(TEXT_TOWER).items()})
        host_memory.release_freed()

        # One variable per checkpoint array, named by its praxis path; shared by all signatures.
        self._variables_flat = {path: variables_file.zero_variable(shape, options.variable_dtype, path.replace("/", "."))
                                for path, shape in source.shapes.items()}
        self.params = unflatten(self._variables_flat)
        self.variables = list(self._variables_flat.values()) + [
            v for v in (self.zero_shot_prompt_embeddings, getattr(self, "quality_prompt_embedding", None)) if v is not None]
        self.trainable_variables = []
        self.regularization_losses = []
        self._lower()
        self._make_signatures()

    def _embed_prompts(self, text_tower: dict) -> None:
        """The zero-shot prompts' and the VILA-R prompt's embeddings, stored as variables."""
        cfg = self.cfg
        params = heads.compute_params(unflatten(text_tower), self.options.compute_dtype)
        zsl_ids, _, zsl_pad = self.tokenizer.strings_to_ids(tf.constant(heads.ZERO_SHOT_PROMPTS),
                                                           heads.ZERO_SHOT_PROMPT_LEN)
        self.zero_shot_prompt_ids = tf.Variable(zsl_ids, trainable=False, name="zero_shot_prompt_ids")
        zsl = jax.jit(functools.partial(heads.text_embedding, cfg=cfg))(params, ids=zsl_ids.numpy(),
                                                                         paddings=zsl_pad.numpy())
        self.zero_shot_prompt_embeddings = tf.Variable(np.asarray(zsl), trainable=False,
                                                       name="zero_shot_prompt_embeddings")
        if cfg.has_quality_head:
            q = jax.jit(functools.partial(heads.quality_prompt_embedding, cfg=cfg))(params)
            self.quality_prompt_embedding = tf.Variable(np.asarray(q), trainable=False,
                                                        name="quality_prompt_embedding")

    # -- lowering ----------------------------------------------------------------------------
    def _convert(self, fn: Callable, poly: tuple) -> Callable:
        cfg, compute_dtype = self.cfg, self.options.compute_dtype

        def with_compute_params(params, *args):
            return fn(heads.compute_params(params, compute_dtype), cfg, *args)

        converted = jax2tf.convert(with_compute_params, polymorphic_shapes=(None,) + poly, with_gradient=False,
                                   native_serialization_platforms=tuple(self.options.platforms))

        def lowered_then_released(*args):
            out = converted(*args)  # runs while TensorFlow traces the signature: lowers the head
            host_memory.release_freed()
            return out
        return lowered_then_released

    def _lower(self):
        s = self.cfg.image_size
        img = f"(b, {s}, {s}, 3)"
        pixels = tf.TensorSpec([None, s, s, 3], tf.float32)
        # The score, embedding and zero-shot heads are one function (heads.image_outputs), lowered
        # once: each image signature selects its output, and TensorFlow compiles the image tower
        # once per batch size for all three.
        prompts = [self.zero_shot_prompt_embeddings]
        if self.cfg.has_quality_head:
            image_jax = self._convert(
                lambda p, cfg, prompts, prompt, x: heads.image_outputs(p, cfg, x, prompts, prompt), (None, None, img))
            prompts.append(self.quality_prompt_embedding)
        else:
            image_jax = self._convert(lambda p, cfg, prompts, x: heads.image_outputs(p, cfg, x, prompts), (None, img))
        caption_jax = self._convert(lambda p, cfg, x: heads.caption(p, cfg, x)[:2], (img,))
        text_jax = self._convert(heads.text_embedding, ("(b, t)", "(b, t)"))
        self._image_head = _head(lambda x: image_jax(self.params, *prompts, x), pixels)
        self._caption_head = _head(lambda x: caption_jax(self.params, x), pixels)
        self._text_head = _head(lambda ids, paddings: text_jax(self.params, ids, paddings),
                                tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None, None], tf.float32))

    # -- pixel-level functions -------------------------------------------------------------------
    def _image_outputs(self, image) -> dict:
        embedding, zero_shot_score, pairs, *quality = self._image_head(image)
        # A pretrain model has no quality head: its score is the zero-shot score (design contract).
        score = quality[0] if quality else zero_shot_score[:, None]
        # The per-pair scores leave the lowered function as one [B, 6] array and are split here
        # (slices, no model work) into one named output per attribute.
        attributes = {key: pairs[:, i] for i, key in enumerate(ZERO_SHOT_ATTRIBUTE_OUTPUTS)}
        return {"image_embedding": embedding, "zero_shot_score": zero_shot_score, "predictions": score,
                **attributes}

    def caption_pixels(self, image):
        ids, lengths = self._caption_head(image)
        return {"caption": self.tokenizer.ids_to_strings(ids, lengths), "caption_ids": ids,
                "caption_length": lengths}

    def text_embedding(self, text):
        ids, _, paddings = self.tokenizer.strings_to_ids(text, TEXT_LENGTH)
        return {"text_embedding": self._text_head(ids, paddings)}

    def preprocess(self, image_bytes):
        return {"image": preprocess.preprocess_batch(image_bytes, self.options.max_pixels, self.options.webp)}

    # -- signatures ------------------------------------------------------------------------------
    def _make_signatures(self):
        """Every signature of the table in `vila_tf.core.signatures`, as tf.functions on this module."""
        s = self.cfg.image_size
        tf_fn = lambda f, spec: tf.function(f, input_signature=[spec], autograph=False)
        specs = {PIXELS: tf.TensorSpec([None, s, s, 3], tf.float32, name="image"),
                 TEXT: tf.TensorSpec([None], tf.string, name="text"),
                 BYTES: tf.TensorSpec([None], tf.string, name="image_bytes")}
        # One lowering of each head, called by every signature that runs it: lowered separately the
        # modules would differ in their debug locations and be compiled once each. The bytes
        # signatures call the preprocess and pixel functions, so the decoder is traced once too.
        self.preprocess_fn = tf_fn(self.preprocess, specs[BYTES])
        self.image_outputs_fn = tf_fn(self._image_outputs, specs[PIXELS])
        heads_on_pixels = {IMAGE_HEAD: self.image_outputs_fn, CAPTION_HEAD: self.caption_pixels}
        self.signature_fns = {}
        for sig in sorted(SIGNATURES.values(), key=lambda sig: sig.kind != PIXELS):  # pixel twins first
            if sig.kind == PIXELS:
                fn = _selecting(heads_on_pixels[sig.head], sig.outputs)
            elif sig.kind == TEXT:
                fn = self.text_embedding
            elif sig.head is NO_HEAD:
                self.signature_fns[sig.name] = self.preprocess_fn
                continue
            else:
                fn = self._after_preprocess(self.signature_fns[sig.pixels])
            spec = tf.TensorSpec(None, tf.string, name=sig.input) if sig.any_rank else specs[sig.kind]
            self.signature_fns[sig.name] = tf_fn(fn, spec)

    def _after_preprocess(self, pixel_fn):
        return lambda image_bytes: pixel_fn(self.preprocess_fn(tf.reshape(image_bytes, [-1]))["image"])

    def signatures(self) -> dict:
        return {name: self.signature_fns[name] for name in ALL_SIGNATURES}


def _head(fn: Callable, *specs: tf.TensorSpec):
    """A lowered head as a TensorFlow function of its own, never inlined into the functions that
    call it. XLA's persistent compilation cache (TF_XLA_FLAGS=--tf_xla_persistent_cache_directory=)
    keys a program by its module, which is named after the XlaCallModule's node path once calls
    are inlined: inlined, each signature (and, in a TF1 Session, each SignatureDef) gave the same
    head another name, and a fresh process compiled it again per signature. Not inlined, every
    signature shares one program per batch size."""
    return tf.function(fn, input_signature=list(specs), autograph=False, experimental_attributes={"_noinline": True})


def _selecting(head_fn, outputs: tuple):
    """A pixel signature: the head's outputs that the signature returns."""
    return lambda image: {k: v for k, v in head_fn(image).items() if k in outputs}


def metadata(cfg: VilaConfig, opts: ExportOptions, **recorded) -> export_metadata.ExportMetadata:
    import flax
    return export_metadata.ExportMetadata(
        model_type=cfg.model_type,
        model_kind="VILA-R (CoCaVilaRankBasedFinetune)" if cfg.has_quality_head
        else "VILA-P / CoCa pretrain (CoCaVilaPretrain)",
        demo_weights=opts.demo,
        config=cfg.to_dict(),
        source_checkpoint=opts.source,
        source_sha256=opts.source_sha256,
        source_step=opts.source_step,
        dtype=opts.dtype,
        compute_dtype=opts.compute_dtype,
        platforms=tuple(opts.platforms),
        max_pixels=opts.max_pixels,
        image_formats=tuple(preprocess.graph_formats(opts.webp)),
        text_length=TEXT_LENGTH,
        zero_shot_prompts=tuple(heads.ZERO_SHOT_PROMPT_PAIRS),
        zero_shot_attributes=tuple(heads.ZERO_SHOT_ATTRIBUTES),
        signatures=tuple(ALL_SIGNATURES),
        versions={"jax": jax.__version__, "flax": flax.__version__, "tensorflow": tf.__version__,
                  "numpy": np.__version__},
        **recorded,
    )


def options_for_target(options: ExportOptions, log: Callable[[str], None] = print) -> ExportOptions:
    """The options with what the target TensorFlow release lacks left out: before 2.20 its image
    decoder reads no WebP, so the graph takes the release's formats only."""
    if options.target_tensorflow and options.webp and not tf_targets.target(options.target_tensorflow).decode_webp:
        log(f"TensorFlow {options.target_tensorflow} decodes no WebP: the graph refuses WebP bytes "
            "(docs/compatibility.md)")
        return dataclasses.replace(options, webp=False)
    return options


def write_savedmodel(params, cfg: VilaConfig, spm_model_path: str, out_dir: str,
                     options: Optional[ExportOptions] = None, log: Callable[[str], None] = print,
                     consume_params: bool = False) -> str:
    """Builds and saves the SavedModel at exactly `out_dir`, atomically (`vila_tf.core.atomic`): a crash,
    Ctrl-C or SIGKILL leaves either the previous complete model or the new one, never a partial one.

    `params`: a `ParamSource` (read one array at a time) or a nested dict of arrays, which
    `consume_params` empties as its arrays are written. The graph is saved first with weightless
    variables, then the weights group by group (`export.variables_file`): the peak memory is the
    graph's plus one group of weights, not the whole model's.
    """
    options = options_for_target(options or ExportOptions(), log)
    source = as_source(params, consume_params)
    del params
    out_dir = os.path.abspath(out_dir)
    with atomic_dir(out_dir) as tmp:
        t0 = time.time()
        convention, stablehlo = lowering_versions(options)
        with calling_convention(convention), tf_targets.stablehlo_target(stablehlo), \
                reproducible_locations():
            log(f"building the TF module ({cfg.model_type}, {options.dtype} storage, {options.compute_dtype} "
                f"compute, platforms {','.join(options.platforms)})")
            module = VilaModule(source, cfg, spm_model_path, options)
            log("lowering the heads and writing the SavedModel")
            tf.saved_model.save(module, tmp, signatures=module.signatures(),
                                options=tf.saved_model.SaveOptions(experimental_custom_gradients=False))
        del module  # its graphs: the weights come next
        host_memory.release_freed()
        log("writing the weights")
        variables_file.write_weights(tmp, source, options.variable_dtype, log=log)
        support = tf_targets.support(convention, stablehlo, tf_compat.graph_ops(tmp), options.target_tensorflow,
                                     options.webp)
        log(f"runs on TensorFlow / TF Serving {tf_compat.releases_in_words(support)} (calling convention "
            f"{convention}, StableHLO {stablehlo}; docs/compatibility.md)")
        log("writing TF Serving warmup requests")
        write_warmup(tmp, ALL_SIGNATURES, cfg.image_size)
        export_metadata.write(tmp, metadata(cfg, options, calling_convention_version=convention,
                                            tensorflow_support=support,
                                            export_seconds=round(time.time() - t0, 1)))
    return out_dir
