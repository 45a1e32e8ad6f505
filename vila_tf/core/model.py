"""The model core both backends extend: one API over a SavedModel (`vila_tf.savedmodel`) and a
LiteRT export (`vila_tf.litert`). No TensorFlow here.

`Model` owns what every backend shares: the inputs (`vila_tf.inputs`), the decode pool, the decode
budget and file-size cap, the demo-weights warning, `stream` over decoded batches, and every
collector (`score`, `zero_shot` with attributes or your own prompt pairs, `image_embedding`,
`caption`, `text_embedding`, `similarity`). A backend supplies only:

- `tasks`: what it computes (a subset of `TASKS`); anything else is refused by `require`, in one
  place, with the backend's own `refusal` sentence saying what to use instead;
- `_pixels(item)`: a loaded item (bytes or an array) -> what its model takes, in a decode thread;
- `_run(signature, pixels)`: one batch through the model -> {output name: numpy [B, ...]};
- `_text_embedding(texts)` and `_prompt_task(pairs)` where it has them;
- `describe()`: what `vila-tf info` prints.

The command line, Beam, evaluation and ranking are written against `Model` and its `supports`,
never against a backend class.
"""
from __future__ import annotations

import abc
import concurrent.futures
import os
import threading
from typing import Iterator, Optional, Sequence

import numpy as np

from vila_tf.core import buckets, pipeline, tasks as tasks_lib
from vila_tf.core import zero_shot as zsl
from vila_tf.core.metadata import ExportMetadata
from vila_tf.core.results import DemoModelWarning, ImageError, Result
from vila_tf.inputs.warn import warn
from vila_tf.inputs import decode_budget, image_formats
from vila_tf.inputs import items as inputs_lib

# Everything a model can be asked for. The image tasks are the registry's (vila_tf.core.tasks);
# "zero_shot_attributes": the release's six pairs' own scores; "zero_shot_prompts": your own pairs.
IMAGE_TASKS = tuple(tasks_lib.TASKS)
TASKS = IMAGE_TASKS + ("zero_shot_attributes", "zero_shot_prompts", "text_embedding", "similarity", "preprocess")
PROMPT_SETS_KEPT = 16  # prompt sets whose text embeddings a model keeps
DEFAULT_MAX_PIXELS = 50_000_000  # an image's header is checked against this before decoding


class UnsupportedTaskError(ValueError):
    """A task this backend cannot do; the message (one line) says what to use instead."""


def check_batch_size(batch_size) -> int:
    """`batch_size` as an int in 1..MAX_BATCH, or ValueError saying the range."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or not 1 <= int(batch_size) <= buckets.MAX_BATCH:
        raise ValueError(f"batch_size {batch_size!r}: give a whole number from 1 to {buckets.MAX_BATCH} "
                         f"(the largest batch the exports are compiled for)")
    return int(batch_size)


class Model(abc.ABC):
    """An exported VILA model, whichever backend runs it. Use `vila_tf.load`."""

    backend = ""  # "SavedModel" or "LiteRT": how describe() and messages name it
    tasks: frozenset = frozenset()

    def __init__(self, path: str, metadata: ExportMetadata, max_workers: Optional[int] = None,
                 exif_orientation: bool = True, decode_budget_pixels: Optional[int] = None,
                 max_file_bytes: Optional[int] = None):
        for name, value in (("max_workers", max_workers), ("decode_budget_pixels", decode_budget_pixels),
                            ("max_file_bytes", max_file_bytes)):
            if value is not None and (isinstance(value, bool) or int(value) < 1):
                raise ValueError(f"{name}={value!r}: give a positive whole number (or leave it out for the default)")
        self.path = path
        self.metadata = metadata
        self.is_demo = bool(metadata.demo_weights)
        if self.is_demo:
            # A warning only: the library leaves its users' logging alone (one line in `vila-tf`).
            warn(f"{path} is a DEMO export with random weights: its outputs mean nothing. Export the "
                 "released checkpoints for real results.", DemoModelWarning)
        self.exif_orientation = bool(exif_orientation)
        self.max_pixels = int(metadata.max_pixels or DEFAULT_MAX_PIXELS)
        self.max_file_bytes = int(max_file_bytes or inputs_lib.DEFAULT_MAX_FILE_BYTES)
        # The pixels decoded at once across the threads (docs/streaming.md), checked from each
        # file's header before its bytes are read.
        self._budget = decode_budget.DecodeBudget(decode_budget_pixels or decode_budget.DEFAULT_DECODE_BUDGET)
        self.decode_threads = int(max_workers or min(8, os.cpu_count() or 2))
        self._pool = concurrent.futures.ThreadPoolExecutor(self.decode_threads, thread_name_prefix="vila_tf-decode")
        self._prompt_tasks: dict = {}
        self._prompt_lock = threading.Lock()

    # -- what a backend supplies ---------------------------------------------------------------------
    @abc.abstractmethod
    def _pixels(self, item: inputs_lib.Item) -> np.ndarray:
        """A loaded item (item.data: encoded bytes, or uint8 / float [H, W, 3]) -> what the model
        takes. Raises image_formats.ImageFormatError (or ValueError) with the reason for the image."""

    @abc.abstractmethod
    def _run(self, signature: str, pixels: list) -> dict:
        """One batch of `_pixels` results through `signature` -> {output: numpy [B, ...]}."""

    @abc.abstractmethod
    def describe(self) -> list[str]:
        """What `vila-tf info` prints, one line each."""

    @abc.abstractmethod
    def refusal(self, task: str) -> str:
        """One line: why this backend cannot do `task`, and what to use instead."""

    def _signature(self, task) -> str:
        """The signature that computes a task (a registry Task or a zero_shot.PairTask)."""
        return task.signature

    def _batch_step(self, batch_size: int) -> int:
        """Images decoded and run together."""
        return batch_size

    def _warm_up(self) -> None:
        """Work the decode threads need done once, before they start."""

    def _text_embedding(self, texts: list[str], batch_size: int) -> np.ndarray:
        raise UnsupportedTaskError(self.refusal("text_embedding"))

    def _prompt_task(self, pairs: tuple) -> zsl.PairTask:
        """The task scoring your own pairs: by default from their text embeddings, computed here."""
        embeddings = self.text_embedding([p for pair in pairs for p in pair])
        return zsl.PairTask(tuple(zsl.pair_name(p) for p in pairs), pairs, embeddings)

    # -- information ------------------------------------------------------------------------------
    @property
    def model_type(self) -> str:
        return self.metadata.model_type

    @property
    def has_quality_head(self) -> bool:
        return self.metadata.has_quality_head

    @property
    def decode_budget(self):
        """The pixels the decode threads may decode at once (`.pixels`), and the most held so far (`.peak`)."""
        return self._budget

    def supports(self, task: str) -> bool:
        """Whether this model computes `task` (one of TASKS, or a `vila-tf` command name)."""
        name = tasks_lib.BY_COMMAND[task].name if task in tasks_lib.BY_COMMAND else task
        return name in self.tasks

    def require(self, *names: str) -> None:
        """UnsupportedTaskError (one line, what to use instead) for the first task not supported."""
        for name in names:
            if not self.supports(name):
                raise UnsupportedTaskError(self.refusal(name))

    def __repr__(self) -> str:
        demo = ", DEMO weights" if self.is_demo else ""
        return f"{type(self).__name__}({self.path!r}, {self.model_type}{demo})"

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- decoding ---------------------------------------------------------------------------------
    def _decode(self, item: inputs_lib.Item) -> tuple:
        """One input item -> (pixels, None) or (None, why it failed), in a decode thread, within the
        decode budget: the item's cost, read from its header before the file is, is held until
        it is decoded."""
        cost = decode_budget.cost(item, self.max_file_bytes, self.max_pixels, self.exif_orientation)
        with self._budget.hold(cost):
            item = inputs_lib.load(item, self.max_file_bytes)
            if item.error:
                return None, item.error
            if not isinstance(item.data, bytes):
                h, w = item.data.shape[:2]
                if min(h, w) < 1:
                    return None, f"empty image array of shape {item.data.shape}"
                if h * w > self.max_pixels:
                    return None, (f"array of {w} x {h} pixels (width x height) = {w * h}, more than the "
                                  f"allowed {self.max_pixels} (max_pixels)")
            try:
                return self._pixels(item), None
            except (image_formats.ImageFormatError, ValueError) as e:
                return None, str(e)

    def _decoded_batches(self, inputs, batch_size: int, batches_ahead: int, report: image_formats.SkipReport):
        self._warm_up()
        step = self._batch_step(check_batch_size(batch_size))
        return pipeline.decoded_batches(inputs_lib.iter_items(inputs, report), self._decode, self._pool, step,
                                        batches_ahead)

    # -- streaming --------------------------------------------------------------------------------
    def _task(self, task):
        """A `stream` task -> a registry Task or a PairTask, refused here when not supported."""
        if isinstance(task, tasks_lib.OutputsTask):
            self.require(*task.requires)
            return task
        try:
            t = tasks_lib.get(task)
        except ValueError:
            if task in TASKS:  # a task, but no image task `stream` runs
                raise UnsupportedTaskError(f"{task}: not a stream task: call model.{task}() "
                                           f"(stream runs {', '.join(IMAGE_TASKS)})") from None
            raise
        self.require(t.name)
        return t

    def stream(self, task, inputs, batch_size: int = buckets.MAX_BATCH,
               batches_ahead: int = pipeline.DEFAULT_BATCHES_AHEAD,
               skipped: Optional[image_formats.SkipReport] = None) -> Iterator[Result]:
        """Results in input order, while later inputs are still being read: `Result(index, source,
        value, error)`, value a float ("score", "zero_shot"), a str ("caption"), a float32 [D]
        row ("image_embedding"), a dict of zero-shot scores (a `zero_shot_task()`) or of every
        image output (a `vila_tf.core.personal.FeatureTask`: one tower pass), and None
        with the reason in `error` for an input that failed.

        `inputs`: anything `score` takes, or any iterable or generator (an endless one too).
        `task` may also be a tuple of tasks: each image is then decoded once and `value` is a tuple.
        While the model runs a batch, the decode threads (`vila_tf.load(..., max_workers=)`) read
        and decode up to `batches_ahead` further batches, never more: memory is bounded by
        (batches_ahead + 2) * batch_size decoded images, whatever the number of inputs.

        Files of a folder or glob walk that are not images are not scored (docs/formats.md): they
        are added to `skipped` as the walk meets them when one is given, else summarized in one
        `SkippedFilesWarning` per kind when the stream has run to its end.
        """
        single = isinstance(task, (str, tasks_lib.OutputsTask))
        run = [self._task(t) for t in ((task,) if single else tuple(task))]
        report = image_formats.SkipReport() if skipped is None else skipped
        batches = self._decoded_batches(inputs, batch_size, batches_ahead, report)
        try:
            for batch in batches:
                good = [d for d in batch if d.error is None]
                per_task = self._values(run, [d.pixels for d in good]) if good else [[] for _ in run]
                by_index = {d.index: k for k, d in enumerate(good)}
                for d in batch:
                    value = None
                    if d.error is None:
                        values = tuple(p[by_index[d.index]] for p in per_task)
                        value = values[0] if single else values
                    yield Result(d.index, d.source, value, d.error)
        finally:
            batches.close()
        if skipped is None:
            report.warn()  # at the code that ran the stream to its end

    def _values(self, run: list, pixels: list) -> list[list]:
        """Each task's values for one batch; each signature runs once however many tasks read it."""
        outputs: dict = {}
        per_task = []
        for t in run:
            sig = self._signature(t)
            if sig not in outputs:
                outputs[sig] = self._run(sig, pixels)
            out = outputs[sig]
            per_task.append(t.values(out) if isinstance(t, tasks_lib.OutputsTask)
                            else [t.value(v) for v in out[t.output]])
        return per_task

    # -- collectors over `stream` -----------------------------------------------------------------
    def _collect(self, task, images, batch_size: int) -> tuple[list, list[ImageError]]:
        values, errors = [], []
        skipped = image_formats.SkipReport()
        for r in self.stream(task, images, batch_size, skipped=skipped):
            values.append(r.value)
            if r.error is not None:
                errors.append(ImageError(r.index, r.source, r.error))
        skipped.warn()
        return values, errors

    @staticmethod
    def _finish(values, errors: list[ImageError], return_errors: bool):
        for e in errors:
            warn(f"{e.source}: {e.reason}", RuntimeWarning)
        return (values, errors) if return_errors else values

    def _array_call(self, images, task: str, batch_size: int, return_errors: bool):
        values, errors = self._collect(task, images, batch_size)
        dims = (self.metadata.model_dims,) if task == "image_embedding" else ()
        out = np.full((len(values),) + dims, np.nan, np.float32)
        for i, v in enumerate(values):
            if v is not None:
                out[i] = v
        return self._finish(out, errors, return_errors)

    def score(self, images, batch_size: int = buckets.MAX_BATCH, return_errors: bool = False):
        """Aesthetic score per image, float32 [N] (VILA-R; the zero-shot score for a pretrain model)."""
        return self._array_call(images, "score", batch_size, return_errors)

    def zero_shot(self, images, batch_size: int = buckets.MAX_BATCH, return_errors: bool = False,
                  attributes: bool = False, prompts=None):
        """Zero-shot quality score per image from the release's good/bad prompt pairs, float32 [N].

        `attributes=True`: a `ZeroShotScores` instead, with each pair's own score too (the
        release's six attributes: image, lighting, content, background, foreground, composition).
        `prompts=[("sharp photo", "blurry photo"), "warm light|cold light", ...]`: a
        `ZeroShotScores` for your own pairs instead, each scored like the release's (softmax over
        image·good, image·bad), `score` their mean. See docs/runtime.md."""
        if not attributes and prompts is None:
            return self._array_call(images, "zero_shot", batch_size, return_errors)
        task = self.zero_shot_task(prompts)
        values, errors = self._collect(task, images, batch_size)
        return self._finish(zsl.scores_from_values(values, task), errors, return_errors)

    def zero_shot_task(self, prompts=None) -> zsl.PairTask:
        """A `stream` task giving each image's zero-shot scores as a dict {"score", name: ...}: the
        release's six attributes (prompts None), or your pairs ((good, bad) tuples or 'good|bad'
        strings), made once per prompt set."""
        if prompts is None:
            self.require("zero_shot_attributes")
            return zsl.release_task()
        pairs = zsl.pairs_from(prompts)
        self.require("zero_shot_prompts")
        with self._prompt_lock:
            task = self._prompt_tasks.get(pairs)
        if task is None:
            task = self._prompt_task(pairs)
            with self._prompt_lock:
                if len(self._prompt_tasks) >= PROMPT_SETS_KEPT:
                    self._prompt_tasks.clear()
                self._prompt_tasks[pairs] = task
        return task

    def image_embedding(self, images, batch_size: int = buckets.MAX_BATCH, return_errors: bool = False):
        """l2-normalized contrastive image embeddings, float32 [N, D]."""
        return self._array_call(images, "image_embedding", batch_size, return_errors)

    def caption(self, images, batch_size: int = buckets.MAX_BATCH, return_errors: bool = False):
        """Greedy aesthetic comment per image: list of str (None for failed images)."""
        texts, errors = self._collect("caption", images, batch_size)
        return self._finish(texts, errors, return_errors)

    def text_embedding(self, texts: Sequence[str] | str, batch_size: int = buckets.MAX_BATCH) -> np.ndarray:
        """l2-normalized text embeddings, float32 [N, D] (the text tower's CLS token)."""
        self.require("text_embedding")
        texts = [texts] if isinstance(texts, str) else list(texts)
        bad = [t for t in texts if not isinstance(t, str)]
        if bad:
            raise TypeError(f"text_embedding takes texts (str), got {type(bad[0]).__name__}: {bad[0]!r:.60}")
        if not texts:
            return np.zeros((0, self.metadata.model_dims), np.float32)
        return self._text_embedding(texts, check_batch_size(batch_size))

    def similarity(self, images, texts, batch_size: int = buckets.MAX_BATCH) -> np.ndarray:
        """Cosine image-text similarity matrix [N images, M texts] (NaN rows for failed images)."""
        self.require("similarity")
        text = self.text_embedding(texts, batch_size)
        return self.image_embedding(images, batch_size) @ text.T
