"""The personal head's contract (`vila-tf fit`, docs/personal.md): which image outputs are its
features and in which order, the `stream` task that computes them in one tower pass, and the
record an export keeps about its head. No TensorFlow: the SavedModel writer (vila_tf.personal), the
LiteRT converter (export/tools/litert_graph.py) and the tests apply the same head from here, so
the three cannot order the features differently.

A personal score is `features · weights + bias`, the features being, in this order, the image
embedding [D], the six zero-shot attribute scores (`zero_shot_image` ... `zero_shot_composition`)
and, for a VILA-R export, its own score (`predictions`). A pretrain export's score is the zero-shot
score, the mean of the six attributes: it would add nothing, so it is left out.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from vila_tf.core import tasks as tasks_lib
from vila_tf.core.signatures import ZERO_SHOT_ATTRIBUTE_OUTPUTS

FORMAT = "vila-tf-personal/1"
METADATA_KEY = "personal"  # the head's record in the export metadata (ExportMetadata.extra)
# The checkpoint names of the head's variables (a tf.Module attribute each): read back by the
# LiteRT converter, which reads the export's checkpoint rather than its graph.
WEIGHTS_VARIABLE, BIAS_VARIABLE = "personal_weights", "personal_bias"

# A `stream` signature name every backend maps to one pass of the image tower that returns all
# of its outputs (the SavedModel's `image_outputs_fn`, the LiteRT `image` signature).
IMAGE_OUTPUTS = "image_outputs"
ATTRIBUTES = ZERO_SHOT_ATTRIBUTE_OUTPUTS
# The rows of `OUT/features.jsonl` (vila-tf fit): one per photo, written as they are computed.
COLUMNS = ["input", "score", *ATTRIBUTES, "embedding", "error"]


class FeatureTask(tasks_lib.OutputsTask):
    """A `Model.stream` task: each image's embedding, six attribute scores and score, as a dict
    {"score", "zero_shot_<attribute>" ..., "embedding"} (the row fields of COLUMNS)."""

    signature = IMAGE_OUTPUTS
    requires = ("score", "image_embedding", "zero_shot_attributes")

    def values(self, outputs: dict) -> list:
        score = np.asarray(outputs["predictions"], np.float32).reshape(len(outputs["predictions"]), -1)[:, 0]
        embedding = np.asarray(outputs["image_embedding"], np.float32)
        attributes = [np.asarray(outputs[k], np.float32).reshape(-1) for k in ATTRIBUTES]
        return [{"score": float(score[i]), **{k: float(a[i]) for k, a in zip(ATTRIBUTES, attributes)},
                 "embedding": np.array(embedding[i])} for i in range(len(score))]


def row_fields(value: dict) -> dict:
    """A FeatureTask value as the rounded fields of a features row (vila_tf.core.tasks' rounding)."""
    out = {"score": tasks_lib.json_value("score", value["score"])}
    out.update({k: tasks_lib.json_value("score", value[k]) for k in ATTRIBUTES})
    out["embedding"] = tasks_lib.json_value("embedding", value["embedding"])
    return out


class Layout:
    """Which features a head reads: the embedding's width and whether the model's score is one."""

    def __init__(self, dims: int, with_score: bool):
        self.dims, self.with_score = int(dims), bool(with_score)

    @classmethod
    def for_model(cls, model_type: str, dims: int) -> "Layout":
        return cls(dims, with_score=model_type == "vila_r")

    @property
    def names(self) -> list[str]:
        return [f"image_embedding[{i}]" for i in range(self.dims)] + list(ATTRIBUTES) + \
            (["predictions"] if self.with_score else [])

    @property
    def size(self) -> int:
        return self.dims + len(ATTRIBUTES) + int(self.with_score)

    def record(self) -> dict:
        return {"image_embedding": self.dims, "zero_shot_attributes": list(ATTRIBUTES), "score": self.with_score,
                "order": "image_embedding, then the attributes in this order, then the score"}

    @classmethod
    def from_record(cls, record: dict) -> "Layout":
        if list(record.get("zero_shot_attributes", ATTRIBUTES)) != list(ATTRIBUTES):
            raise ValueError(f"a personal head over the attributes {record.get('zero_shot_attributes')}: this vila-tf "
                             f"orders them {list(ATTRIBUTES)}; upgrade vila-tf")
        return cls(int(record["image_embedding"]), bool(record.get("score")))

    def row(self, fields: dict) -> np.ndarray:
        """One features row (a dict of COLUMNS' fields) -> float64 [size]."""
        parts = [np.asarray(fields["embedding"], np.float64).reshape(-1)]
        if parts[0].shape[0] != self.dims:
            raise ValueError(f"an embedding of {parts[0].shape[0]} values, the model's has {self.dims}")
        parts.append(np.array([fields[k] for k in ATTRIBUTES], np.float64))
        if self.with_score:
            parts.append(np.array([fields["score"]], np.float64))
        return np.concatenate(parts)

    def from_outputs(self, outputs: dict) -> np.ndarray:
        """A batch of image outputs {name: [B, ...]} -> features float64 [B, size]."""
        emb = np.asarray(outputs["image_embedding"], np.float64)
        cols = [emb] + [np.asarray(outputs[k], np.float64).reshape(len(emb), 1) for k in ATTRIBUTES]
        if self.with_score:
            cols.append(np.asarray(outputs["predictions"], np.float64).reshape(len(emb), 1))
        return np.concatenate(cols, axis=1)


def apply(weights: Sequence[float], bias: float, features: np.ndarray) -> np.ndarray:
    """The personal score of feature rows [N, F]: features · weights + bias, float64 [N]."""
    return np.asarray(features, np.float64) @ np.asarray(weights, np.float64) + float(bias)


def scale_text(scale: dict) -> str:
    """The head's scale in words, for `vila-tf info`, the model card and the summary."""
    if scale.get("kind") == "log-odds":
        return ("preference log-odds: score(a) - score(b) is the log-odds that a is preferred to b; 0 is the "
                "average labelled photo")
    low, high = scale.get("min"), scale.get("max")
    unit = scale.get("unit", "the labels' scale")
    return f"{unit} (the labels run from {low:g} to {high:g})" if low is not None and high is not None else unit


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def describe(record: Optional[dict]) -> list[str]:
    """What `vila-tf info` says about a personal head (nothing for a base export)."""
    if not record:
        return []
    labels, cv = record.get("labels") or {}, record.get("cross_validation") or {}
    lines = [f"personal head: {record.get('learner')} over {record.get('feature_count')} features, "
             f"fitted to {labels.get('count')} labels ({labels.get('format')}: {labels.get('file')})",
             f"personal score: {scale_text(record.get('scale') or {})}"]
    base = (record.get("base") or {}).get("metrics") or {}
    lines.append(f"cross-validated ({cv.get('folds')} folds): SRCC {_fmt(cv.get('srcc'))}, "
                 f"PLCC {_fmt(cv.get('plcc'))}; "
                 f"the base model's own score: SRCC {_fmt(base.get('srcc'))}, PLCC {_fmt(base.get('plcc'))}")
    return lines




def card_section(record: dict) -> str:
    """The model card's "Personal head" section (markdown): what `serving_default` now returns, the
    head, the labels it was fitted to and how well it did under cross-validation."""
    labels, cv, base = record.get("labels") or {}, record.get("cross_validation") or {}, record.get("base") or {}
    sigs = record.get("signatures") or {}
    reg = ", ".join(f"{k} {v:g}" for k, v in (record.get("regularization") or {}).items())
    rows = [("Returns", f"`{sigs.get('personal', 'serving_default')}` and `score_pixels`: the personal score, on "
                        f"{scale_text(record.get('scale') or {})}; the base model's own score under "
                        f"`{sigs.get('base', 'base_score')}` and `base_score_pixels`"),
            ("Head", f"{record.get('learner')} ({reg}) over {record.get('feature_count')} features: the image "
                     "embedding, the six zero-shot attribute scores" + (" and the base score" if (
                         record.get("features") or {}).get("score") else "")),
            ("Labels", f"{labels.get('count')} {labels.get('format')} labels of {labels.get('photos')} photos "
                       f"(`{labels.get('file')}`, sha256 `{labels.get('sha256')}`)"),
            ("Base model", f"`{base.get('path')}` ({base.get('identity')})")]
    table = ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    metrics = ["", f"Cross-validated ({cv.get('folds')} folds, seed {cv.get('seed')}) against the labels:", "",
               "| score | SRCC | PLCC | KRCC |", "|---|---|---|---|"]
    for name, rec in (("personal (cross-validated)", cv), ("base model", base.get("metrics") or {})):
        metrics.append(f"| {name} | " + " | ".join(_fmt(rec.get(k)) for k in ("srcc", "plcc", "krcc")) + " |")
    return "\n".join(table + metrics)
