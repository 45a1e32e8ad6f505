"""Zero-shot scores by good/bad prompt pairs: the release's six attributes, or your own pairs.

The release scores an image zero-shot with six pairs ("good image" / "bad image", "good lighting" /
"bad lighting", ...): per pair, the softmax over (image · good, image · bad) of the l2-normalized
embeddings, no temperature; the zero-shot score is the mean over the pairs (docs/model.md §7).
The SavedModel computes the release's six in the graph (outputs `zero_shot_<attribute>`); your
own pairs are scored here on the host from the `image_embedding` and `text_embedding`
signatures, with the same formula.

Names: a release attribute is named by its word (`image`, `lighting`, ...); your own pair by its
two prompts joined with `|` (`sharp photo|blurry photo`), the form `--prompt` takes. Those are the
column names of the CLI's CSV / JSON Lines / Parquet output and the keys of `ZeroShotScores`.
No TensorFlow here: the Beam integration and result writers share it.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Optional, Sequence, Union

import numpy as np

from vila_tf.core.signatures import ZERO_SHOT_ATTRIBUTE_OUTPUTS, ZERO_SHOT_ATTRIBUTES
from vila_tf.core.tasks import OutputsTask

SEPARATOR = "|"
# The release's pairs, in its order (run_vila_predict._ZSL_QUALITY_PROMPTS).
RELEASE_PAIRS = tuple((f"good {a}", f"bad {a}") for a in ZERO_SHOT_ATTRIBUTES)

Pair = tuple  # (good prompt, bad prompt)


class PromptError(ValueError):
    """A prompt pair that cannot be used; the message quotes it and says what form is expected."""


def parse_pair(text: str) -> Pair:
    """`"sharp photo|blurry photo"` -> ("sharp photo", "blurry photo"): exactly one `|`, two
    non-empty prompts (surrounding spaces dropped)."""
    parts = [p.strip() for p in str(text).split(SEPARATOR)]
    if len(parts) != 2 or not all(parts):
        raise PromptError(f"prompt pair {text!r}: expected 'GOOD PROMPT|BAD PROMPT', two non-empty prompts "
                          f"joined by one '{SEPARATOR}' (e.g. 'sharp photo|blurry photo')")
    return parts[0], parts[1]


def pairs_from(prompts: Iterable[Union[str, Sequence[str]]]) -> tuple[Pair, ...]:
    """Your pairs as given to `VilaModel.zero_shot(prompts=...)`: (good, bad) tuples or
    'good|bad' strings. PromptError for a malformed or repeated pair, or none at all."""
    if isinstance(prompts, str):
        prompts = [prompts]
    pairs = []
    for p in prompts:
        if isinstance(p, str):
            pair = parse_pair(p)
        else:
            p = tuple(p)
            if len(p) != 2 or not all(isinstance(x, str) for x in p):
                raise PromptError(f"prompt pair {p!r}: expected two strings (good prompt, bad prompt)")
            if any(SEPARATOR in x for x in p):
                raise PromptError(f"prompt pair {p!r}: a prompt may not contain '{SEPARATOR}' (it separates the "
                                  "two prompts in column names)")
            pair = parse_pair(SEPARATOR.join(p))
        if pair in pairs:
            raise PromptError(f"prompt pair {pair_name(pair)!r} is given twice")
        pairs.append(pair)
    if not pairs:
        raise PromptError("no prompt pairs given: pass at least one ('good prompt', 'bad prompt')")
    return tuple(pairs)


def pair_name(pair: Pair) -> str:
    """A pair's column name: its two prompts joined by '|'."""
    return f"{pair[0]}{SEPARATOR}{pair[1]}"


def pair_scores(image_embeddings: np.ndarray, prompt_embeddings: np.ndarray) -> np.ndarray:
    """[N, D] l2-normalized image embeddings x [2K, D] prompt embeddings (good, bad alternating)
    -> float32 [N, K]: per pair softmax(image·good, image·bad)[good] = 1 / (1 + exp(bad − good)).
    A NaN image row (an image that failed) stays NaN."""
    image_embeddings = np.asarray(image_embeddings, np.float64)
    sims = (image_embeddings @ np.asarray(prompt_embeddings, np.float64).T).reshape(len(image_embeddings), -1, 2)
    # The two-way softmax's good column, written so that neither exp can overflow.
    diff = sims[..., 1] - sims[..., 0]
    with np.errstate(over="ignore", invalid="ignore"):
        return np.where(diff > 0, np.exp(-diff) / (1 + np.exp(-diff)), 1 / (1 + np.exp(diff))).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class ZeroShotScores:
    """Zero-shot scores of N images for K prompt pairs.

    `score` float32 [N]: the mean over the pairs (for the release's six, the SavedModel's
    `zero_shot_score`); `pairs` float32 [N, K]: each pair's score; `names`: each column's name
    (a release attribute, or 'good|bad'); `prompts`: the (good, bad) pairs. Failed images are NaN
    rows. `scores["lighting"]` (or `scores["sharp photo|blurry photo"]`) is one column [N]."""
    score: np.ndarray
    pairs: np.ndarray
    names: tuple
    prompts: tuple

    def __getitem__(self, name: str) -> np.ndarray:
        if name == "score":
            return self.score
        try:
            return self.pairs[:, self.names.index(name)]
        except ValueError:
            raise KeyError(f"{name!r}: the columns are score, {', '.join(self.names)}") from None

    def __len__(self) -> int:
        return len(self.score)

    def row(self, i: int) -> dict:
        """Image i's scores by column name, as `stream` and the result rows give them."""
        return {"score": float(self.score[i]), **{n: float(v) for n, v in zip(self.names, self.pairs[i])}}

    def columns(self) -> dict:
        """{"score": [N], name: [N], ...} in column order."""
        return {"score": self.score, **{n: self.pairs[:, k] for k, n in enumerate(self.names)}}


@dataclasses.dataclass(frozen=True)
class PairTask(OutputsTask):
    """A zero-shot task for `Model.stream` (make it with `model.zero_shot_task`): each value is a
    dict {"score": mean over the pairs, name: that pair's score, ...} in column order.

    Where a pair's score comes from: the release's six from the model's own attribute outputs
    (computed in the graph); your own pairs either from the image embedding and `embeddings`, the
    pairs' text embeddings [2K, D] (good, bad alternating), computed once when the task is made
    (the SavedModel), or from the `columns` of an `output` that a model computes them in (pairs
    baked into a LiteRT export at conversion)."""
    names: tuple
    prompts: tuple
    embeddings: Optional[np.ndarray] = None
    columns: Optional[tuple] = None
    output: Optional[str] = None

    @property
    def release(self) -> bool:
        return self.embeddings is None and self.columns is None

    @property
    def signature(self) -> str:
        return "zero_shot_pixels" if self.release or self.columns is not None else "image_embedding_pixels"

    @property
    def requires(self) -> tuple:
        return ("zero_shot_attributes",) if self.release else ("zero_shot_prompts",)

    def pair_values(self, outputs: dict) -> np.ndarray:
        """The signature's outputs for a batch -> float32 [B, K]."""
        if self.release:
            return np.stack([np.asarray(outputs[k]).reshape(-1) for k in ZERO_SHOT_ATTRIBUTE_OUTPUTS], axis=-1)
        if self.columns is not None:
            return np.asarray(outputs[self.output], np.float32)[:, list(self.columns)]
        return pair_scores(outputs["image_embedding"], self.embeddings)

    def values(self, outputs: dict) -> list:
        """The signature's outputs for a batch -> one value per image."""
        pairs = self.pair_values(outputs)
        # The release's score is the graph's own mean; yours the mean of your pairs.
        scores = np.asarray(outputs["zero_shot_score"]).reshape(-1) if self.release else pairs.mean(axis=1)
        return [{"score": float(s), **{n: float(v) for n, v in zip(self.names, row)}}
                for s, row in zip(scores, pairs)]


def release_task() -> PairTask:
    return PairTask(ZERO_SHOT_ATTRIBUTES, RELEASE_PAIRS)


def scores_from_values(values: Sequence[Optional[dict]], task: PairTask) -> ZeroShotScores:
    """`stream` values (None for a failed image) -> ZeroShotScores with NaN rows for the failures."""
    n, k = len(values), len(task.names)
    score = np.full(n, np.nan, np.float32)
    pairs = np.full((n, k), np.nan, np.float32)
    for i, v in enumerate(values):
        if v is not None:
            score[i] = v["score"]
            pairs[i] = [v[name] for name in task.names]
    return ZeroShotScores(score, pairs, tuple(task.names), tuple(task.prompts))
