"""Embeddings a user already computed with `vila-tf embed MODEL PHOTOS -o emb.jsonl`, looked up by
photo instead of computed again.

One pass indexes the file (where each row starts, by a 64-bit hash of its input: 16 bytes a
photo); a row is read back only when its photo is culled. A photo is found under the name the
embed run wrote for it, or under the same absolute path (`./shoot/a.jpg` and `shoot/a.jpg` from
the same folder). The file's record (`emb.jsonl.vila-tf.json`, written by `vila-tf embed`) names
the model that computed it: embeddings of another model are refused.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Optional

from vila_tf.inputs import names


class EmbeddingsFileError(ValueError):
    """The file cannot be used; the message (one line) says why and what to do."""


def _key(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")


def _absolute(name: str) -> str:
    return names.written(os.path.abspath(names.source_of(name)))


class EmbeddingsFile:
    def __init__(self, path: str, model: dict, dims: Optional[int] = None):
        """`model`: this run's model record (vila_tf.output.output_file.model_record)."""
        self.path = path
        self.notes: list[str] = []
        self._check_record(model)
        self._index: dict[int, int] = {}
        self.rows = 0
        try:
            self._f = open(path, "rb")
        except OSError as e:
            raise EmbeddingsFileError(f"--embeddings {path}: {e.strerror or e}") from None
        offset = 0
        for n, line in enumerate(self._f):
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            if not isinstance(row, dict) or not isinstance(row.get("input"), str):
                if line.endswith(b"\n") or line.strip():
                    self._f.close()
                    raise EmbeddingsFileError(f"--embeddings {path}: line {n + 1} is not a row of `vila-tf embed` "
                                              "(JSON Lines with input and embedding): give the file embed wrote")
            elif "error" in row:  # a photo embed could not read: known, and culled without an embedding
                for name in {row["input"], _absolute(row["input"])}:
                    self._index.setdefault(_key(name), -1)
            elif isinstance(row.get("embedding"), list):
                if dims is not None and len(row["embedding"]) != dims:
                    self._f.close()
                    raise EmbeddingsFileError(f"--embeddings {path}: its embeddings have {len(row['embedding'])} "
                                              f"numbers, this model's have {dims}: computed by another model")
                for name in {row["input"], _absolute(row["input"])}:
                    self._index.setdefault(_key(name), offset)
                self.rows += 1
            offset += len(line)

    def _check_record(self, model: dict) -> None:
        record_path = self.path + ".vila-tf.json"
        try:
            with open(record_path, encoding="utf-8") as f:
                record = json.load(f)
        except FileNotFoundError:
            self.notes.append(f"--embeddings {self.path} has no record of the model that computed it "
                              f"({os.path.basename(record_path)}): make sure it was this one")
            return
        except (OSError, ValueError) as e:
            raise EmbeddingsFileError(f"--embeddings: cannot read {record_path}: {getattr(e, 'strerror', None) or e}"
                                      ) from None
        if not isinstance(record, dict) or record.get("command") != "embed":
            raise EmbeddingsFileError(f"--embeddings {self.path} was not written by `vila-tf embed` "
                                      f"({record_path}): give the output of vila-tf embed")
        theirs = (record.get("model") or {}).get("identity")
        if theirs != model.get("identity"):
            raise EmbeddingsFileError(f"--embeddings {self.path} was computed by {(record.get('model') or {}).get('path')}"
                                      f" ({str(theirs)[:40]}), not by this model ({model.get('identity', '')[:40]}): "
                                      "embed the photos with this model, or leave --embeddings out")

    def find(self, name: str) -> Optional[list]:
        """The embedding of the photo written as `name`, or None when the file has none for it."""
        for candidate in (name, _absolute(name)):
            offset = self._index.get(_key(candidate))
            if offset is None or offset < 0:
                continue
            self._f.seek(offset)
            row = json.loads(self._f.readline())
            if row.get("input") in (name, candidate) or _absolute(row.get("input", "")) == _absolute(name):
                return row["embedding"]
        return None

    def __contains__(self, name: str) -> bool:
        return any(_key(c) in self._index for c in (name, _absolute(name)))

    def close(self) -> None:
        self._f.close()
