"""A user's labels for `vila-tf fit`, in the forms people keep them (docs/personal.md):

- scores: a `path,score` CSV or AVA's `AVA.txt`, read exactly as `vila-tf evaluate` reads them
  (vila_tf.evaluation.labels), except that a photo listed twice with the same score is one label;
- pairwise preferences: a CSV of `better,worse` rows, one comparison each (the header optional:
  a row naming two photos is a comparison, since a score never names a photo);
- star ratings: a folder of photos, each photo's XMP `xmp:Rating` from its sidecar or embedded
  (vila_tf.personal.xmp).

Every problem is a `LabelsError` naming the file (and line): too few labels to cross-validate,
all equal, duplicates that disagree, a value that is not a number, a photo preferred to itself.
Labels are small (a number and a name per photo) and are held in memory; photos never are.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import os
from typing import Optional

import numpy as np

from vila_tf.evaluation import labels as evaluation_labels
from vila_tf.evaluation.labels import LabelsError
from vila_tf.inputs import image_formats
from vila_tf.personal import xmp

SCORES, PAIRS = "scores", "pairs"
PAIRS_HEADER = ("better", "worse")
MIN_LABELS = 10  # below this a cross-validated correlation says nothing


@dataclasses.dataclass
class Labels:
    kind: str  # SCORES or PAIRS
    format: str  # "csv", "ava", "pairs" or "xmp"
    file: str  # the labels file, or the folder of rated photos
    photos: list  # the photo files, each once, in the labels' order
    scores: Optional[np.ndarray] = None  # SCORES: float64 [photos]
    pairs: Optional[np.ndarray] = None  # PAIRS: int [P, 2], (better, worse) indices into photos
    unit: str = "the labels' scale"
    sha256: str = ""  # the labels file's; for ratings, of the (photo, stars) list read
    notes: list = dataclasses.field(default_factory=list)  # what the user should be told

    @property
    def count(self) -> int:
        """Labels: scored photos, or comparisons."""
        return len(self.scores) if self.kind == SCORES else len(self.pairs)

    def subset(self, keep: np.ndarray) -> "Labels":
        """The labels of the photos where `keep` [photos] is True. A comparison needs both its photos,
        and a photo of comparisons is kept only while one of its comparisons is."""
        keep = np.asarray(keep, bool)
        if self.kind == SCORES:
            return dataclasses.replace(self, photos=[p for p, k in zip(self.photos, keep) if k],
                                       scores=self.scores[keep])
        pairs = self.pairs[keep[self.pairs[:, 0]] & keep[self.pairs[:, 1]]]
        named = np.zeros(len(self.photos), bool)
        named[pairs.reshape(-1)] = True
        index = np.cumsum(named) - 1
        return dataclasses.replace(self, photos=[p for p, k in zip(self.photos, named) if k], pairs=index[pairs])


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read(path: str, images: Optional[str] = None) -> Labels:
    """The labels at `path` (a file, or a folder of rated photos); LabelsError naming what is wrong."""
    if os.path.isdir(path):
        return _read_ratings(path)
    fmt = evaluation_labels.detect_format(path)
    first = _first_row(path)
    if fmt == "csv" and (first[:2] == list(PAIRS_HEADER) or len(first) >= 2 and all(map(_is_photo, first[:2]))):
        return _read_pairs(path, images, header=first[:2] == list(PAIRS_HEADER))
    fmt, rows = evaluation_labels.read_labels(path, images, agreeing_duplicates=True)
    by_path: dict = {}
    for row in rows:  # two names of one file (`a.jpg`, `./a.jpg`) are one photo
        if row.path in by_path and by_path[row.path].mos != row.mos:
            raise LabelsError(f"{path}: {by_path[row.path].key} and {row.key} are the same photo with different "
                              f"scores ({by_path[row.path].mos:g} and {row.mos:g}); keep one")
        by_path.setdefault(row.path, row)
    rows = list(by_path.values())
    unit = "mean opinion score (AVA's 1 to 10)" if fmt == "ava" else "the labels' scale"
    return Labels(SCORES, fmt, path, [r.path for r in rows], np.array([r.mos for r in rows], np.float64),
                  unit=unit, sha256=_sha256(path))


def _is_photo(cell: str) -> bool:
    """A cell naming a photo (a score never does): two of them make a row a comparison."""
    ext = os.path.splitext(cell)[1].lower()
    return ext in image_formats.IMAGE_EXTENSIONS or ext in image_formats.RAW_EXTENSIONS


def _first_row(path: str) -> list:
    with open(path, encoding="utf-8-sig", newline="") as f:
        for row in csv.reader(f):
            if row and any(cell.strip() for cell in row):
                return [cell.strip().lower() for cell in row]
    return []


def _read_pairs(path: str, images: Optional[str], header: bool) -> Labels:
    base = images if images else os.path.dirname(os.path.abspath(path))
    index: dict = {}
    pairs = []
    for n, row in evaluation_labels.csv_rows(path):
        if header:
            header = False  # the `better,worse` header
            continue
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise LabelsError(f"{path}:{n}: expected `better,worse` (two photos), got {','.join(row)[:80]!r}")
        better, worse = (os.path.normpath(os.path.join(base, cell.strip())) for cell in row[:2])
        if better == worse:
            raise LabelsError(f"{path}:{n}: {row[0].strip()} is preferred to itself")
        pairs.append([index.setdefault(better, len(index)), index.setdefault(worse, len(index))])
    if not pairs:
        raise LabelsError(f"{path}: a `better,worse` header and no comparison under it")
    return Labels(PAIRS, "pairs", path, list(index), pairs=np.array(pairs, np.int64),
                  unit="preference log-odds", sha256=_sha256(path))


def _read_ratings(folder: str) -> Labels:
    from vila_tf.inputs import walk
    report = image_formats.SkipReport()
    photos = [p for p in walk.Walk(report).files(folder) if image_formats.keep(p, report)]
    rated, unrated, digest = [], 0, hashlib.sha256()
    try:
        for r in xmp.ratings(photos):
            if r.stars is None:
                unrated += 1
                continue
            rated.append((r.path, r.stars))
            digest.update(f"{os.path.relpath(r.path, folder)}\t{r.stars:g}\n".encode("utf-8", "surrogateescape"))
    except xmp.RatingError as e:
        raise LabelsError(str(e)) from None
    if not rated:
        raise LabelsError(f"{folder}: none of its {len(photos)} photos has a star rating (XMP xmp:Rating in a "
                          "NAME.EXT.xmp or NAME.xmp sidecar, or embedded): rate some, or give a labels file")
    notes = [f"{unrated} unrated photo{'s' if unrated != 1 else ''} of {folder} left out"] if unrated else []
    return Labels(SCORES, "xmp", folder, [p for p, _ in rated], np.array([s for _, s in rated], np.float64),
                  unit="stars (0 = rejected, 1 to 5)", sha256=digest.hexdigest(), notes=notes)


def minimum(folds: int) -> int:
    """The fewest labels `vila-tf fit` cross-validates with `folds` folds."""
    return max(MIN_LABELS, 2 * folds)


def check(labels: Labels, folds: int, what: str = "labelled photos") -> None:
    """LabelsError when the labels cannot be cross-validated: too few, or all equal."""
    need = minimum(folds)
    if labels.count < need:
        noun = "comparisons" if labels.kind == PAIRS else what
        raise LabelsError(f"{labels.file}: {labels.count} {noun}: too few to cross-validate with {folds} folds "
                          f"(give at least {need})")
    if labels.kind == SCORES and np.ptp(labels.scores) == 0:
        raise LabelsError(f"{labels.file}: all {labels.count} {what} have the same score "
                          f"({labels.scores[0]:g}): nothing to learn from")
    if labels.kind == PAIRS and len(labels.photos) < need:
        raise LabelsError(f"{labels.file}: its comparisons name {len(labels.photos)} photos: too few to "
                          f"cross-validate with {folds} folds (give at least {need})")
