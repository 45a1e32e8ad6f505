"""Human labels for `vila-tf evaluate`: AVA's own `AVA.txt`, or a CSV of `path,score`; and the
join of labels with scored images.

AVA.txt (Murray et al., CVPR 2012), one image per line, 15 whitespace-separated integers:

    index  image_id  c1 c2 ... c10  tag1 tag2  challenge_id

c_k is the number of votes for score k (1..10); the mean opinion score is
sum(k * c_k) / sum(c_k), and the image is `<image_id>.jpg` in the images folder.

A labels CSV holds `path,score` rows (a header row is optional: it is recognised by its second
cell not being a number). A relative path is relative to `--images` when given, else to the
CSV's own folder.

Labels are small (a float and a name per image) and are held in memory; images never are.
"""
from __future__ import annotations

import csv
import math
import os
from typing import Iterable, NamedTuple, Optional

AVA_FIELDS = 15  # index, image id, 10 vote counts, 2 semantic tag ids, challenge id
AVA_SCORES = tuple(range(1, 11))


class LabelsError(ValueError):
    """A labels, subset or results file that cannot be read: the message names the file and line."""


class Label(NamedTuple):
    key: str  # the AVA image id, or the CSV's path as written
    path: str  # the image file to score
    mos: float  # mean opinion score


def mean_opinion_score(counts: Iterable[int]) -> float:
    """sum(k * c_k) / sum(c_k) for vote counts c_1..c_10 (math.fsum: exact up to one rounding)."""
    counts = list(counts)
    return math.fsum(k * c for k, c in zip(AVA_SCORES, counts)) / math.fsum(counts)


def detect_format(path: str) -> str:
    """'ava' or 'csv', from the first non-empty line of `path`."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.strip():
                    fields = line.split()
                    if "," not in line and len(fields) == AVA_FIELDS and all(_is_int(x) for x in fields):
                        return "ava"
                    return "csv"
    except OSError as e:
        raise LabelsError(f"{path}: cannot read: {e.strerror or e}") from None
    raise LabelsError(f"{path}: the labels file is empty")


def read_labels(path: str, images: Optional[str] = None, agreeing_duplicates: bool = False) -> tuple[str, list[Label]]:
    """(format, labels) of an AVA.txt or a path,score CSV, in file order (`agreeing_duplicates`:
    see read_csv)."""
    fmt = detect_format(path)
    return fmt, (read_ava(path, images) if fmt == "ava" else read_csv(path, images, agreeing_duplicates))


def read_ava(path: str, images: Optional[str] = None) -> list[Label]:
    """The images of an AVA.txt with their mean opinion scores; `images` is the folder holding
    `<image id>.jpg` (None when scores come from a results file). Images without votes are left
    out (they have no mean)."""
    labels, seen = [], {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != AVA_FIELDS or not all(_is_int(x) for x in fields):
                raise LabelsError(f"{path}:{n}: not an AVA.txt line (expected {AVA_FIELDS} integers: index, "
                                  f"image id, 10 vote counts, 2 tag ids, challenge id), got {line.strip()[:80]!r}")
            image_id, counts = fields[1], [int(x) for x in fields[2:12]]
            if any(c < 0 for c in counts):
                raise LabelsError(f"{path}:{n}: negative vote count for image {image_id}")
            if image_id in seen:
                raise LabelsError(f"{path}:{n}: image {image_id} is listed twice (also on line {seen[image_id]})")
            seen[image_id] = n
            if sum(counts):
                labels.append(Label(image_id, os.path.join(images or "", f"{image_id}.jpg"), mean_opinion_score(counts)))
    return labels


def csv_rows(path: str):
    """(line number, row) of a labels CSV's rows that hold something (a BOM allowed);
    LabelsError naming the file when it is not a readable CSV."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        try:
            rows = list(csv.reader(f))
        except csv.Error as e:
            raise LabelsError(f"{path}: not a readable CSV: {e}") from None
    return [(n, row) for n, row in enumerate(rows, 1) if row and any(cell.strip() for cell in row)]


def read_csv(path: str, images: Optional[str] = None, agreeing_duplicates: bool = False) -> list[Label]:
    """The rows of a `path,score` CSV (header optional), paths resolved against `images` or the
    CSV's folder. A path listed twice is an error; with `agreeing_duplicates` (`vila-tf fit`: a
    photo rated twice alike) only when the two scores differ."""
    base = images if images else os.path.dirname(os.path.abspath(path))
    labels, seen, header = [], {}, False
    for n, row in csv_rows(path):
        if len(row) < 2:
            raise LabelsError(f"{path}:{n}: expected `path,score`, got {','.join(row)[:80]!r}")
        key, score = row[0].strip(), row[1].strip()
        if not labels and not header and not _is_float(score):
            header = True  # a header row: only before the first label
            continue
        if not _is_float(score) or not math.isfinite(float(score)):
            raise LabelsError(f"{path}:{n}: the score {score!r} of {key!r} is not a number")
        if not key:
            raise LabelsError(f"{path}:{n}: empty image path")
        if key in seen:
            first = labels[seen[key][1]].mos
            if agreeing_duplicates and first == float(score):
                continue
            if agreeing_duplicates:
                raise LabelsError(f"{path}:{n}: {key} is listed twice with different scores: {first:g} on line "
                                  f"{seen[key][0]}, {float(score):g} here; keep one")
            raise LabelsError(f"{path}:{n}: {key} is listed twice (also on line {seen[key][0]})")
        seen[key] = (n, len(labels))
        labels.append(Label(key, os.path.normpath(os.path.join(base, key)), float(score)))
    return labels


def read_subset(path: str) -> set[str]:
    """Image ids (AVA) or paths (CSV) to keep, one per line: e.g. AVA's
    `aesthetics_image_lists/generic_test.jpgl`."""
    try:
        with open(path, encoding="utf-8") as f:
            return {line.strip() for line in f if line.strip()}
    except OSError as e:
        raise LabelsError(f"{path}: cannot read the subset list: {e.strerror or e}") from None


class Matcher:
    """Finds the label of a scored image. An AVA label matches an image whose file name is
    `<image id>.<ext>`; a CSV label matches its resolved path, or else its file name when that
    name is unique among the labels (a results file written from another folder)."""

    def __init__(self, labels: list[Label], fmt: str):
        self.fmt = fmt
        self.by_path: dict[str, int] = {}
        self.by_name: dict[str, Optional[int]] = {}
        for i, label in enumerate(labels):
            if fmt == "ava":
                self.by_name[label.key] = i
            else:
                self.by_path[_norm(label.path)] = i
                name = os.path.basename(label.path)
                self.by_name[name] = None if name in self.by_name else i  # None: ambiguous

    def find(self, source: str) -> Optional[int]:
        """The index of the label of the image `source` (a path as a results file holds it), or None."""
        name = os.path.basename(source)
        if self.fmt == "ava":
            return self.by_name.get(os.path.splitext(name)[0])
        i = self.by_path.get(_norm(source))
        return i if i is not None else self.by_name.get(name)


def _norm(path: str) -> str:
    return os.path.normcase(os.path.normpath(os.path.abspath(path)))


def _is_int(text: str) -> bool:
    try:
        int(text)
        return True
    except ValueError:
        return False


def _is_float(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False
