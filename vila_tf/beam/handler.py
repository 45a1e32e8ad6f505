"""The model on a Beam worker: `VilaModelHandler` for RunInference, and the copy of a remote
SavedModel to local disk (once per machine)."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import stat
import tempfile
import warnings
from typing import Any, Iterable, Optional, Sequence

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

import vila_tf
from vila_tf.core import buckets
from vila_tf.core import tasks
from vila_tf.core import zero_shot
from vila_tf.core.versions import numbered

log = logging.getLogger("vila_tf.beam")
METRICS_NAMESPACE = "vila_tf"
RESULTS, ERRORS = "results", "errors"
FAILED_ON_IMAGE = "the model failed on this image"


# `vila-tf beam` tasks by command name (score, zero-shot, caption, embed): the runtime's registry.
TASKS = tasks.BY_COMMAND


# -- the model on a worker ---------------------------------------------------------------------------

def is_remote(path: str) -> bool:
    return FileSystems.get_scheme(path) not in (None, "file")


def remote_savedmodel(path: str) -> str:
    """The SavedModel folder at a remote `path`, or the newest numbered version under it (TF Serving layout)."""
    path = path.rstrip("/")
    if FileSystems.exists(FileSystems.join(path, "saved_model.pb")):
        return path
    found = FileSystems.match([FileSystems.join(path, "*", "saved_model.pb")])[0].metadata_list
    folders = {m.path[: -len("/saved_model.pb")].rsplit("/", 1)[-1]: m.path[: -len("/saved_model.pb")] for m in found}
    versions = {v: folders[name] for v, name in numbered(folders).items()}
    if not versions:
        raise FileNotFoundError(f"{path}: not a SavedModel folder (no saved_model.pb) nor a TF Serving base "
                                "folder with numbered versions")
    return versions[max(versions)]


def _private_cache(cache_dir: Optional[str]) -> str:
    """The folder the copies go in: `<temp>/vila_tf-models-<uid>` (or `cache_dir`), made with mode
    0700; one that another user owns, that is a link, or that others can reach is not used (what
    it holds could be anything): a fresh private folder replaces it, unshared."""
    root = cache_dir or os.path.join(tempfile.gettempdir(), f"vila_tf-models-{os.getuid()}")
    try:
        os.makedirs(root, mode=0o700)
    except FileExistsError:
        pass
    info = os.lstat(root)
    if stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o077:
        return root
    fresh = tempfile.mkdtemp(prefix="vila_tf-models-")
    log.warning("not using the model cache %s (%s): copying into %s instead", root,
                "not a folder" if not stat.S_ISDIR(info.st_mode) else
                f"owned by user {info.st_uid}" if info.st_uid != os.getuid() else
                f"mode {stat.S_IMODE(info.st_mode):o}, open to other users", fresh)
    return fresh


def _model_files(source: str) -> list:
    """(relative name, remote path, size, mtime) of every object of the SavedModel; a name that is
    absolute or has a '..' part (it would be written outside the copy) refuses the model."""
    files = []
    for m in FileSystems.match([source + "/**"])[0].metadata_list:
        if m.path.endswith("/"):  # object stores list folder placeholders too
            continue
        relative = m.path[len(source) + 1:] if m.path.startswith(source + "/") else None
        parts = relative.split("/") if relative else []
        if not parts or any(p in ("", ".", "..") or "\\" in p for p in parts):
            raise ValueError(f"{source}: the object {m.path} has an unsafe name (absolute, or with an empty, '.' "
                             "or '..' part): refusing to copy this model")
        files.append((relative, m.path, m.size_in_bytes, m.last_updated_in_seconds))
    return sorted(files)


def fetch_savedmodel(path: str, cache_dir: Optional[str] = None) -> str:
    """Copies a SavedModel from any Beam filesystem (gs://, s3://, ...) to local disk and returns the copy.

    TensorFlow reads SavedModels from local disk on every platform, and each of a machine's worker
    processes would otherwise download its own copy (1.2 GB at full size): the copy is shared by
    the machine's processes of this user (`_private_cache`), named after the source and its
    content (each object's name, size and modification time), so a changed model is copied anew,
    and renamed into place only when complete. Earlier copies stay (one per model version).
    """
    source = remote_savedmodel(path)
    files = _model_files(source)
    identity = hashlib.sha256(json.dumps([source, files]).encode()).hexdigest()[:16]
    cache_dir = _private_cache(cache_dir)
    dest = os.path.join(cache_dir, f"{hashlib.sha256(source.encode()).hexdigest()[:16]}-{identity}")
    if os.path.isfile(os.path.join(dest, "saved_model.pb")):
        return dest
    partial = tempfile.mkdtemp(prefix=".partial-", dir=cache_dir)
    try:
        for relative, remote, _, _ in files:
            local = os.path.join(partial, *relative.split("/"))
            os.makedirs(os.path.dirname(local), exist_ok=True)
            with FileSystems.open(remote, compression_type=CompressionTypes.UNCOMPRESSED) as src, \
                    open(local, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 22)
        os.rename(partial, dest)
        log.info("copied %s to %s", source, dest)
    except OSError:
        if not os.path.isfile(os.path.join(dest, "saved_model.pb")):
            raise
        # Another process on this machine finished the same copy first: use theirs.
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return dest


class VilaModelHandler(ModelHandler[bytes, PredictionResult, Any]):
    """RunInference handler for an exported VILA model: encoded image bytes in, one record body out.

    Each inference is `{"score": 0.63}` (`{"caption": ...}`, `{"embedding": [...]}`), or
    `{"error": reason}` for an image the model could not read. Wrap it in `KeyedModelHandler` to keep
    file names with the results. Batches are exactly `batch_size` images (one of the export's
    buckets, so no padding) except the last of each bundle, which VilaModel pads to the next bucket.
    """

    def __init__(self, model_path: str, task: str = "score", batch_size: int = buckets.MAX_BATCH,
                 device: Optional[str] = None, raw_values: bool = False, exif_orientation: bool = True,
                 prompts: Optional[Sequence] = None):
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
        if prompts is not None and task != "zero-shot":
            raise ValueError(f"prompt pairs are for the zero-shot task, not {task}")
        if batch_size not in buckets.BUCKETS:
            raise ValueError(f"batch size {batch_size} is not one of the export's buckets {buckets.BUCKETS}")
        # Leaving share_model_across_processes() False: Beam keeps one model per worker process,
        # shared by that process's threads (VilaModel is thread-safe).
        super().__init__(min_batch_size=batch_size, max_batch_size=batch_size)
        self.model_path, self.task, self.batch_size, self.device = model_path, task, batch_size, device
        # raw_values: the model's float32 values (np.float32 / arrays) instead of JSON-rounded ones,
        # for writers that keep full precision (Parquet) or compare scores to a threshold.
        self.raw_values = raw_values
        self.exif_orientation = exif_orientation  # False: photos as stored, as the release scored them
        # zero-shot: your (good, bad) pairs, else the release's six attributes; each record holds
        # "score" and one column per pair (vila_tf.core.zero_shot)
        self.prompts = zero_shot.pairs_from(prompts) if prompts is not None else None

    def load_model(self):
        # Failed images go to the errors output; VilaModel's warning per failed image (named "<bytes i>",
        # as the handler passes bytes) would only flood the worker logs.
        warnings.filterwarnings("ignore", message=r"<bytes \d+>: ", category=RuntimeWarning, module=r"vila_tf\.")
        path = fetch_savedmodel(self.model_path) if is_remote(self.model_path) else self.model_path
        log.info("vila_tf.beam: process %d loads %s", os.getpid(), path)
        return vila_tf.load(path,  # TensorFlow is imported here, on the workers only
                             device=self.device, exif_orientation=self.exif_orientation)

    def run_inference(self, batch: Sequence[bytes], model, inference_args: Optional[dict] = None
                      ) -> Iterable[PredictionResult]:
        field = TASKS[self.task].field
        batch = list(batch)
        try:
            values, failed = self._run(model, batch)
        except Exception as batch_error:  # noqa: BLE001
            values, failed = self._run_one_by_one(model, batch, batch_error)
        value = (lambda v: v) if self.raw_values else TASKS[self.task].json_value

        def body(v):
            if isinstance(v, dict):  # zero-shot: the score and a score per pair
                return {k: x if self.raw_values else tasks.json_value("score", x) for k, x in v.items()}
            return {field: value(v)}
        return [PredictionResult(example, {"error": failed[i]} if i in failed else body(values[i]), self.model_path)
                for i, example in enumerate(batch)]

    def _run(self, model, images: list) -> tuple[list, dict]:
        """VilaModel reports the images it cannot read (NaN rows) instead of raising."""
        if self.task == "zero-shot":
            scores, errors = model.zero_shot(images, batch_size=self.batch_size, return_errors=True,
                                             attributes=True, prompts=self.prompts)
            values = [scores.row(i) for i in range(len(scores))]
        else:
            values, errors = getattr(model, TASKS[self.task].name)(images, batch_size=self.batch_size,
                                                                    return_errors=True)
        return list(values), {e.index: e.reason for e in errors}

    def _run_one_by_one(self, model, batch: list, batch_error: Exception) -> tuple[list, dict]:
        """After a batch raised: each image alone, so one image the model chokes on fails alone."""
        values, failed, raised = [None] * len(batch), {}, 0
        for i, image in enumerate(batch):
            try:
                value, errors = self._run(model, [image])
                values[i] = value[0]
                if errors:
                    failed[i] = errors[0]
            except Exception as e:  # noqa: BLE001
                raised += 1
                failed[i] = f"{FAILED_ON_IMAGE}: {type(e).__name__}: {str(e).strip()[:300]}"
        if raised == len(batch) > 1:
            raise batch_error  # every image fails alone too: the model or the worker is broken, not the images
        return values, failed

    def get_num_bytes(self, batch: Sequence[bytes]) -> int:
        return sum(len(b) for b in batch)  # the default pickles the whole batch to measure it

    def get_metrics_namespace(self) -> str:
        return METRICS_NAMESPACE
