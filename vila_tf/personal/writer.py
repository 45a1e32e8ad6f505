"""The personal export: a SavedModel made from a base SavedModel alone, with TensorFlow only (no
JAX, no checkpoint), whose `serving_default` returns the personal score (docs/personal.md).

The base SavedModel is loaded and a new module takes over everything it tracks under the same
names (its variables, tokenizer, lowered heads and functions), plus the head's two variables. So
the new checkpoint holds the base's weights under the keys the base had (the LiteRT converter
reads them back unchanged: export/tools/litert_source.py), and the lowered heads are saved as they
were, not lowered again. The signatures are the base's, except:

- `serving_default` (`image_bytes` -> `predictions`) and its pixel twin `score_pixels` return the
  personal score, from one pass of the image tower (the function every image signature calls);
- `base_score` and `base_score_pixels` are the base's own `serving_default` and `score_pixels`.

Then the warmup requests are written for every signature, and the metadata: the base's record with
the head's (`personal`, vila_tf.core.personal) and a model card. The folder is written atomically.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable

import numpy as np

from vila_tf.core import metadata as export_metadata
from vila_tf.core import personal
from vila_tf.core.atomic import atomic_dir
from vila_tf.core.signatures import ALL_SIGNATURES, PERSONAL_SIGNATURES

CARD_RELATIVE = "assets.extra/model_card.md"
# What the loaded base tracks that the new module sets itself: the signatures are passed to save,
# and the TF Hub lists are made again with the head's variables in them.
_NOT_TAKEN = frozenset({"signatures", "_self_saveable_object_factories", "variables", "trainable_variables",
                        "regularization_losses"})


def _personal_module(base, layout: personal.Layout, weights: np.ndarray, bias: float, image_size: int):
    import tensorflow as tf

    class PersonalModule(tf.Module):
        """The base module's objects, the head's variables, and the personal score functions."""
        # Plain attributes, saved (hub.KerasLayer reads them), as the exporter's VilaModule has them.
        variables = None
        trainable_variables = None

        def __init__(self):
            super().__init__(name="vila")
            for name, child in tf.train.TrackableView(base).children(base).items():
                if name not in _NOT_TAKEN:
                    setattr(self, name, child)
            setattr(self, personal.WEIGHTS_VARIABLE,
                    tf.Variable(np.asarray(weights, np.float32), trainable=False, name=personal.WEIGHTS_VARIABLE))
            setattr(self, personal.BIAS_VARIABLE,
                    tf.Variable(np.float32(bias), trainable=False, name=personal.BIAS_VARIABLE))
            head = [getattr(self, personal.WEIGHTS_VARIABLE), getattr(self, personal.BIAS_VARIABLE)]
            self.variables = list(base.variables) + head
            self.trainable_variables = []
            self.regularization_losses = []
            pixels = tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name="image")
            self.personal_pixels_fn = tf.function(self._score, input_signature=[pixels], autograph=False)
            self.personal_bytes_fn = tf.function(self._score_bytes, autograph=False,
                                                 input_signature=[tf.TensorSpec(None, tf.string, name="image_bytes")])

        def _score(self, image):
            out = self.image_outputs_fn(image)  # every image output, one tower pass
            columns = [out["image_embedding"]] + [tf.reshape(out[k], [-1, 1]) for k in personal.ATTRIBUTES]
            if layout.with_score:
                columns.append(tf.reshape(out["predictions"], [-1, 1]))
            features = tf.concat(columns, axis=1)
            w, b = getattr(self, personal.WEIGHTS_VARIABLE), getattr(self, personal.BIAS_VARIABLE)
            return {"predictions": (tf.linalg.matvec(features, w) + b)[:, None]}

        def _score_bytes(self, image_bytes):
            # A scalar (one image, TF Hub's call) or a batch, as the base's serving_default takes it.
            return self.personal_pixels_fn(self.preprocess_fn(tf.reshape(image_bytes, [-1]))["image"])

    return PersonalModule()


def write(base_dir: str, out_dir: str, layout: personal.Layout, weights: np.ndarray, bias: float, record: dict,
          log: Callable[[str], None] = lambda msg: None) -> str:
    """Writes the personal export of the SavedModel at `base_dir` to exactly `out_dir`, atomically."""
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (registers the tokenizer's ops the base graph holds)
    from vila_tf.serving.warmup import write_warmup
    meta = export_metadata.read(base_dir)
    if meta.extra.get(personal.METADATA_KEY):
        raise ValueError(f"{base_dir} is already a personal export: fit from the base model it was made from "
                         f"({meta.extra[personal.METADATA_KEY].get('base', {}).get('path')})")
    if len(weights) != layout.size:
        raise ValueError(f"a head of {len(weights)} weights for {layout.size} features")
    t0 = time.time()
    with atomic_dir(out_dir) as tmp:
        log(f"loading {base_dir}")
        base = tf.saved_model.load(base_dir)
        missing = [n for n in ALL_SIGNATURES if n not in base.signatures]
        if missing or not hasattr(base, "image_outputs_fn") or not hasattr(base, "preprocess_fn"):
            raise ValueError(f"{base_dir}: an export without {', '.join(missing) or 'its image outputs function'}: "
                             "re-export it with this vila-tf (docs/export.md)")
        size = int(meta.config.get("image_size", 224))
        module = _personal_module(base, layout, weights, bias, size)
        signatures = {name: base.signatures[name] for name in ALL_SIGNATURES}
        signatures.update(base_score=base.signatures["serving_default"],
                          base_score_pixels=base.signatures["score_pixels"],
                          serving_default=module.personal_bytes_fn, score_pixels=module.personal_pixels_fn)
        log("writing the personal SavedModel")
        tf.saved_model.save(module, tmp, signatures=signatures,
                            options=tf.saved_model.SaveOptions(experimental_custom_gradients=False))
        del module, base
        log("writing TF Serving warmup requests")
        every = tuple(ALL_SIGNATURES) + tuple(PERSONAL_SIGNATURES)
        write_warmup(tmp, every, size)
        kind = (meta.model_kind or meta.model_type) + " + personal head (vila-tf fit)"
        extra = {**meta.extra, personal.METADATA_KEY: record}
        export_metadata.write(tmp, dataclasses.replace(meta, model_kind=kind, signatures=every, extra=extra,
                                                       export_seconds=round(time.time() - t0, 1)))
        with open(os.path.join(tmp, CARD_RELATIVE), "w", encoding="utf-8") as f:
            f.write(f"# Personal export of {meta.model_kind or meta.model_type}\n\n"
                    + personal.card_section(record) + "\n")
    return out_dir
