"""The export's metadata record, `assets.extra/vila_tf.json`: what the exporter wrote about a
SavedModel (model kind, sizes, weights and compute dtypes, demo flag, source, platforms, the
TensorFlow releases it runs on). One typed, versioned record with `read` and `write`, so the
runtime, the serving check, Beam, the model card and the StableHLO bundle read the same fields the
same way.

The `format` field is "vila-tf/<N>": N changes when a field changes meaning or a new field is
required. A reader accepts its own N and older; a newer N is refused with a message saying to
upgrade vila-tf, since guessing at fields it does not know would serve wrong numbers.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Optional

from vila_tf.core.signatures import METADATA_RELATIVE

FORMAT_NAME = "vila-tf"
FORMAT_VERSION = 1
FORMAT = f"{FORMAT_NAME}/{FORMAT_VERSION}"


class MetadataError(ValueError):
    """The metadata file is missing, unreadable, or of a newer format; the message names the file
    and what to do."""


@dataclasses.dataclass(frozen=True)
class ExportMetadata:
    model_type: str  # "vila_r" (has the VILA-R quality head) or "vila_p"
    config: dict  # the VilaConfig fields (sizes, vocab, decoding length)
    demo_weights: bool = False  # random weights: outputs mean nothing
    model_kind: str = ""
    source_checkpoint: Optional[str] = None
    source_sha256: Optional[str] = None
    source_step: Optional[int] = None
    dtype: str = "float32"  # weights as stored
    compute_dtype: str = "float32"  # matmuls computed in
    platforms: tuple = ()
    max_pixels: Optional[int] = None
    image_formats: tuple = ()
    text_length: int = 64
    zero_shot_prompts: tuple = ()  # (good, bad) pairs
    # each pair's attribute, in the same order: its score is the zero-shot output `zero_shot_<attribute>`
    zero_shot_attributes: tuple = ()
    signatures: tuple = ()
    versions: dict = dataclasses.field(default_factory=dict)  # jax, flax, tensorflow, numpy that built it
    calling_convention_version: Optional[int] = None
    tensorflow_support: Optional[dict] = None  # {"minimum": "2.18", ...} (vila_tf.savedmodel.tf_compat)
    export_seconds: Optional[float] = None
    format: str = FORMAT
    # Fields a newer exporter of the same format added: kept, so a rewrite loses nothing.
    extra: dict = dataclasses.field(default_factory=dict)

    @property
    def has_quality_head(self) -> bool:
        return self.model_type == "vila_r"

    @property
    def model_dims(self) -> int:
        return int(self.config.get("model_dims", 0))

    def to_json(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        for key in ("platforms", "image_formats", "signatures", "zero_shot_attributes"):
            out[key] = list(out[key])
        out["zero_shot_prompts"] = [list(p) for p in self.zero_shot_prompts]
        return {**out, **self.extra}

    @classmethod
    def from_json(cls, record: Any, where: str = METADATA_RELATIVE) -> "ExportMetadata":
        if not isinstance(record, dict):
            raise MetadataError(f"{where}: not a JSON object: {_REEXPORT}")
        _check_format(record.get("format"), where)
        missing = [k for k in ("model_type", "config") if k not in record]
        if missing:
            raise MetadataError(f"{where}: no {', '.join(missing)}: {_REEXPORT}")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in record.items() if k in names}
        for key in ("platforms", "image_formats", "signatures", "zero_shot_attributes"):
            if key in known:
                known[key] = tuple(known[key])
        if "zero_shot_prompts" in known:
            known["zero_shot_prompts"] = tuple(tuple(p) for p in known["zero_shot_prompts"])
        return cls(**known, extra={k: v for k, v in record.items() if k not in names})


_REEXPORT = "re-export the model with this vila-tf (`python -m export ...`, docs/export.md)"


def _check_format(value: Any, where: str) -> None:
    m = re.fullmatch(rf"{FORMAT_NAME}/(\d+)", str(value))
    if not m:
        raise MetadataError(f"{where}: format {value!r} is not a vila-tf metadata format: {_REEXPORT}")
    if int(m.group(1)) > FORMAT_VERSION:
        raise MetadataError(f"{where}: written by a newer vila-tf (format {value}; this one reads up to {FORMAT}): "
                            "upgrade vila-tf (pip install -U vila-tf) to load it")


def path_in(savedmodel_dir: str) -> str:
    return os.path.join(savedmodel_dir, METADATA_RELATIVE)


def read(savedmodel_dir: str) -> ExportMetadata:
    """The metadata of an export; MetadataError naming the file when it is missing, unreadable or
    of a newer format."""
    where = path_in(savedmodel_dir)
    try:
        with open(where, encoding="utf-8") as f:
            record = json.load(f)
    except FileNotFoundError:
        raise MetadataError(f"{where} is missing: {savedmodel_dir} is not a complete vila-tf export "
                            f"(the metadata says what the model is and which TensorFlow runs it); {_REEXPORT}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise MetadataError(f"{where}: cannot be read ({e}); {_REEXPORT}") from None
    except json.JSONDecodeError as e:
        raise MetadataError(f"{where}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}): the file "
                            f"is damaged; {_REEXPORT}") from None
    return ExportMetadata.from_json(record, where)


def write(savedmodel_dir: str, metadata: ExportMetadata) -> str:
    """Writes the record into an export being assembled (the caller's folder is itself written
    atomically), returns its path."""
    where = path_in(savedmodel_dir)
    os.makedirs(os.path.dirname(where), exist_ok=True)
    with open(where, "w", encoding="utf-8") as f:
        json.dump(metadata.to_json(), f, indent=1, sort_keys=True)
        f.write("\n")
    return where
