"""Finds the released checkpoints and the tokenizer in a copy of the VILA release.

The bucket is published as

    vila/checkpoints/vila_rank_tuned/checkpoint_<N>/...   (VILA-R)
    vila/checkpoints/vila_pretrain/checkpoint_<N>/...     (VILA-P)
    vila/checkpoints/laion_pretrain/checkpoint_<N>/...    (LAION CoCa)
    vila/spm_model/spm.model

and users point `--vila-dir` at `vila/`, at `vila/checkpoints/`, or at a flat copy holding the model
folders and `spm_model/` side by side. All three resolve to the same `Release`.
"""
from __future__ import annotations

import dataclasses
import os

# Released checkpoint folders and their export names, in export order.
RELEASED = (("vila_rank_tuned", "vila_r"), ("vila_pretrain", "vila_p"), ("laion_pretrain", "laion_coca"))
CHECKPOINTS_DIR = "checkpoints"
SPM_RELATIVE = os.path.join("spm_model", "spm.model")


class ReleaseLayoutError(FileNotFoundError):
    """The folder is not a copy of the release; the message lists what was looked for where."""


@dataclasses.dataclass(frozen=True)
class Release:
    models: tuple          # ((export name, checkpoint folder), ...) in RELEASED order
    spm_path: str
    missing: tuple         # release folder names that are not in this copy


def _model_roots(vila_dir: str) -> list[str]:
    """Folders that may hold the model folders, most specific first."""
    roots = [os.path.join(vila_dir, CHECKPOINTS_DIR), vila_dir]
    return [r for r in roots if os.path.isdir(r)]


def _spm_candidates(vila_dir: str) -> list[str]:
    # DIR/spm_model/spm.model (published and flat); DIR/../spm_model/spm.model when DIR is the
    # checkpoints/ folder itself; DIR/spm.model for a hand-made copy.
    parent = os.path.dirname(os.path.abspath(vila_dir))
    return [os.path.join(vila_dir, SPM_RELATIVE), os.path.join(parent, SPM_RELATIVE),
            os.path.join(vila_dir, "spm.model")]


def find(vila_dir: str) -> Release:
    """Resolves a copy of the release; raises ReleaseLayoutError naming every path it tried."""
    if not os.path.isdir(vila_dir):
        raise ReleaseLayoutError(f"{vila_dir}: no such folder (VILA_DIR / --vila-dir should be the "
                                 f"copy of gs://gresearch/vila)")
    roots = _model_roots(vila_dir)
    models, missing = [], []
    for folder, name in RELEASED:
        hit = next((os.path.join(r, folder) for r in roots if os.path.isdir(os.path.join(r, folder))), None)
        if hit is None:
            missing.append(folder)
        else:
            models.append((name, hit))
    spm_path = next((p for p in _spm_candidates(vila_dir) if os.path.isfile(p)), None)
    problems = []
    if not models:
        looked = [os.path.join(r, f) for r in (os.path.join(vila_dir, CHECKPOINTS_DIR), vila_dir)
                  for f, _ in RELEASED]
        problems.append("no released checkpoint folder found; looked for:\n    " + "\n    ".join(looked))
    if spm_path is None:
        problems.append("no SentencePiece model found; looked for:\n    "
                        + "\n    ".join(_spm_candidates(vila_dir)))
    if problems:
        raise ReleaseLayoutError(
            f"{vila_dir} is not a copy of the VILA release (expected checkpoints/<model>/ and "
            f"spm_model/spm.model, as `gcloud storage cp -r gs://gresearch/vila .` writes them):\n  "
            + "\n  ".join(problems))
    return Release(tuple(models), spm_path, tuple(missing))
