"""The task registry: what each thing the runtime does with an image is called, which signature
computes it, and how its value is written. The API (`VilaModel`), the `vila-tf` command line, Beam
and the result writers all read this one table, so a task's name, help text and rounding cannot
differ between them."""
from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

# Digits kept in JSON / CSV: float32 carries ~7 significant digits; a score in [0, 1] needs 6
# decimals, an embedding component 7.
SCORE_DECIMALS, EMBEDDING_DECIMALS = 6, 7


class OutputsTask:
    """A `Model.stream` task that reads several outputs of one signature and makes each image's
    value from them (zero-shot scores by prompt pair, the features `vila-tf fit` learns from).
    A subclass gives `signature`, `requires` (the model tasks it needs: a backend without one of
    them refuses it) and `values(outputs) -> one value per image`."""

    signature: str = ""
    requires: tuple = ()

    def values(self, outputs: dict) -> list:
        raise NotImplementedError


class Task(NamedTuple):
    name: str  # the VilaModel method and `stream` task: score, zero_shot, caption, image_embedding
    command: str  # the `vila-tf` / `vila-tf beam` subcommand
    signature: str  # the pixel signature that computes it
    output: str  # that signature's output key
    field: str  # the value's key in a result row / record
    help: str  # one line, for --help and the docs

    def value(self, row) -> Any:
        """One row of the signature's output -> the task's Python value."""
        if self.field == "caption":
            return row.decode("utf-8", "replace")
        if self.field == "embedding":
            return np.array(row)  # a copy, not a view of the batch
        return float(np.asarray(row).reshape(-1)[0])

    def json_value(self, value) -> Any:
        """The value as written to JSON Lines, CSV and Beam records."""
        return json_value(self.field, value)


def json_value(field: str, value) -> Any:
    """A row field's value as written to JSON Lines, CSV and Beam records: the one place values
    are rounded. Fields that are not numbers pass through."""
    if field == "embedding":
        return [round(float(x), EMBEDDING_DECIMALS) for x in value]
    if field == "score":
        return round(float(value), SCORE_DECIMALS)
    return value


TASKS = {t.name: t for t in (
    Task("score", "score", "score_pixels", "predictions", "score",
         "aesthetic score per image (VILA-R; the zero-shot score for a pretrain model)"),
    Task("zero_shot", "zero-shot", "zero_shot_pixels", "zero_shot_score", "score",
         "zero-shot quality score from the release's six good/bad prompt pairs, with each pair's own score "
         "(image, lighting, content, background, foreground, composition), or from your own pairs"),
    Task("caption", "caption", "caption_pixels", "caption", "caption",
         "an aesthetic comment per image (greedy decoding)"),
    Task("image_embedding", "embed", "image_embedding_pixels", "image_embedding", "embedding",
         "l2-normalized image embeddings"),
)}
BY_COMMAND = {t.command: t for t in TASKS.values()}


def get(name: str) -> Task:
    """A task by API name or command name; ValueError naming the choices otherwise."""
    task = TASKS.get(name) or BY_COMMAND.get(name)
    if task is None:
        raise ValueError(f"unknown task {name!r}: one of {', '.join(TASKS)}")
    return task
