"""`vila-tf beam` at the edges of real folders and datasets (docs/reliability.md, "Beam and datasets"):
file and member names that are not UTF-8, names over 100 characters, unsafe and link members,
a TFRecord length of 2^40, outputs that would overwrite inputs, relative patterns, the temporary
folders of a failed job, and the model cache on the workers.

Each case was first reproduced by its test against the code before the fix.
"""
import glob
import io
import json
import os
import pathlib
import shutil
import stat
import struct
import tarfile
import time
import uuid

import numpy as np
import pytest

from vila_tf.inputs import names as file_names
from PIL import Image

pytest.importorskip("apache_beam")
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from apache_beam.io.filesystem import FileMetadata, MatchResult  # noqa: E402
from apache_beam.io.localfilesystem import LocalFileSystem  # noqa: E402

from vila_tf import beam as vila_beam  # noqa: E402
from vila_tf.beam import handler as beam_handler, overlap, shards  # noqa: E402


def _png(seed, size=(32, 40)):
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray((rng.uniform(0, 255, size + (3,))).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _write(folder, name: bytes, data: bytes) -> bytes:
    path = os.path.join(os.fsencode(str(folder)), name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def _jsonl(pattern):
    """The records of JSON Lines files, each line checked to be valid UTF-8 (strict)."""
    files = sorted(glob.glob(pattern))
    assert files, pattern
    out = []
    for f in files:
        with open(f, "rb") as fh:
            for line in fh.read().decode("utf-8").splitlines():
                out.append(json.loads(line))
    return out


def _score(model, data):
    return float(model.score([data])[0])


# -- file names that are not UTF-8 ----------------------------------------------------------------------

def test_non_utf8_file_names_are_scored_and_written_losslessly(exported, model, tmp_path, capsys):
    """A name like b'caf\\xe9.png' (Latin-1) failed the whole job (UnicodeEncodeError in Beam's coder);
    a FIFO among the files hung it."""
    photos = tmp_path / "photos"
    photos.mkdir()
    good, other = _png(1), _png(2)
    paths = {_write(photos, b"caf\xe9.png", good): good, _write(photos, b"ok.png", other): other,
             _write(photos, b"\xff\xfe-notes.jpg", b"not an image"): None}
    fifo = os.path.join(os.fsencode(str(photos)), b"pipe.jpg")
    os.mkfifo(fifo)  # reading it would block the job forever
    prefix = str(tmp_path / "out" / "run")
    rc = vila_beam.main(["score", exported["vila_r_tiny"], "--input", f"{photos}/*", "--output", prefix])
    err = capsys.readouterr().err
    assert rc == 1, err  # one input is not an image
    results, errors = _jsonl(f"{prefix}-results-*.jsonl"), _jsonl(f"{prefix}-errors-*.jsonl")
    # The documented form, as `vila-tf score` writes it: source_of gives the exact name, each input once.
    exact = lambda r: os.fsencode(file_names.source_of(r["input"]))  # noqa: E731
    assert sorted(exact(r) for r in results + errors) == sorted([*paths, fifo])
    for r in results:
        assert r["score"] == pytest.approx(_score(model, paths[exact(r)]), abs=1e-5)
    errors = {os.path.basename(exact(e)): e["error"] for e in errors}
    assert "not a JPEG" in errors[b"\xff\xfe-notes.jpg"]
    assert errors[b"pipe.jpg"] == f"{photos}/pipe.jpg is a FIFO, not a regular file: not read"
    with open(glob.glob(f"{prefix}-results-*.jsonl")[0], "rb") as f:
        assert b'caf\\\\xe9.png"' in f.read()  # the undecodable byte as `vila-tf score` writes it


# -- WebDataset: long, non-UTF-8, unsafe and link members; a non-UTF-8 shard name; Parquet results --------

def _raw_tar(members):
    """A tar written by tarfile itself (pax), so that it can hold what vila-tf's own writer refuses."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, kind, link in members:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, link
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return buf.getvalue()


def test_webdataset_edges_and_the_filtered_copy(exported, model, tmp_path, capsys):
    """A member name over 100 characters failed the job in the copy's tar writer (ustar); unsafe
    names were copied as they were; link members were dropped silently."""
    long_key = "k" * 120
    images = {"good1": _png(3), long_key: _png(4), "caf\udce9": _png(5), "good2": _png(6)}
    reg = tarfile.REGTYPE
    members = [("good1.png", images["good1"], reg, ""), ("good1.cls", b"1", reg, ""),
               (f"{long_key}.png", images[long_key], reg, ""),
               ("caf\udce9.png", images["caf\udce9"], reg, ""), ("caf\udce9.txt", b"latin-1 name", reg, ""),
               ("../evil.png", _png(7), reg, ""), ("/abs.png", _png(8), reg, ""),
               ("sub/../../x.png", _png(9), reg, ""),
               ("link.png", b"", tarfile.SYMTYPE, "good1.png"), ("hard.png", b"", tarfile.LNKTYPE, "good1.png"),
               ("good2.png", images["good2"], reg, "")]
    d = tmp_path / "shards"
    d.mkdir()
    _write(d, b"shard-\xe9.tar", _raw_tar(members))
    prefix, kept = str(tmp_path / "run"), str(tmp_path / "kept" / "s")
    rc = vila_beam.main(["score", exported["vila_r_tiny"], "--input", f"{d}/*.tar", "--output", prefix,
                         "--output-format", "parquet", "--min-score", "-100", "--filtered-output", kept])
    err = capsys.readouterr().err
    assert rc == 1, err
    table = pq.read_table(sorted(glob.glob(f"{prefix}-results-*.parquet")))
    got = {r["id"]: r["score"] for r in table.to_pylist()}
    # Parquet strings must be UTF-8: the undecodable byte as `vila-tf score` writes it, \xe9 (documented).
    assert set(got) == {"good1", long_key, "caf\\xe9", "good2"}
    for key, data in images.items():
        assert got[key.replace("\udce9", "\\xe9")] == pytest.approx(_score(model, data), abs=1e-5)
    errors = {e["id"]: e["error"] for e in _jsonl(f"{prefix}-errors-*.jsonl")}
    assert set(errors) == {"../evil", "/abs", "sub/../../x", "link", "hard"}
    for key in ("../evil", "/abs", "sub/../../x"):
        assert "is unsafe (an absolute path or a '..' part)" in errors[key]
    assert "is a symbolic link to 'good1.png': links are neither followed nor copied" in errors["link"]
    assert "is a hard link to 'good1.png'" in errors["hard"]

    # The copy: every scored sample with its members as they were (names byte for byte) and its score.
    copied = {}
    for f in glob.glob(f"{kept}-*.tar"):
        with tarfile.open(f) as tar:
            for info in tar:
                assert info.isfile() and not shards.unsafe_name(info.name)
                copied[os.fsencode(info.name)] = tar.extractfile(info).read()
    want = {os.fsencode(n): data for n, data, kind, _ in members if kind == reg and not shards.unsafe_name(n)}
    assert {k: v for k, v in copied.items() if not k.endswith(b".vila_score")} == want
    assert {k for k in copied if k.endswith(b".vila_score")} == {os.fsencode(k) + b".vila_score" for k in images}


def test_tar_writer_refuses_unsafe_names():
    writer = shards.TarShardWriter(io.BytesIO())
    for name in ("../x", "/etc/x", "a/../../x", "..\\x", "C:x"):
        with pytest.raises(ValueError, match="unsafe tar member name"):
            writer.write(name, [("jpg", b"x")])
    writer.write("a/b..c/d", [("jpg", b"x")])  # '..' inside a name is no parent folder


# -- TFRecord: a length of 2^40 with a valid checksum ------------------------------------------------------

def _example(i):
    from tensorflow.core.example import example_pb2
    ex = example_pb2.Example()
    ex.features.feature["image/encoded"].bytes_list.value.append(bytes([i]) * 20)
    return ex.SerializeToString()


def _bogus_header(length):
    head = struct.pack("<Q", length)
    return head + struct.pack("<I", shards.masked_crc32c(head))


def test_tfrecord_length_of_2_to_the_40(tmp_path):
    """The reader allocated the 2^40 bytes the header claims (MemoryError: the whole job failed)."""
    path = str(tmp_path / "x.tfrecord")
    with open(path, "wb") as f:
        f.write(shards.tfrecord_frame(_example(0)) + _bogus_header(1 << 40) + b"\0" * 5000)
    with open(path, "rb") as f:  # a real file: BufferedReader.read(2**40) allocates what it is asked for
        samples = list(shards.read_tfrecord(f, path))
    assert [(s.id, s.image) for s in samples][:1] == [(f"{path}:0", bytes([0]) * 20)]
    assert [s.id for s in samples[1:]] == [f"{path}:1"]
    assert samples[1].error == (f"corrupt shard: record 1 (byte {len(shards.tfrecord_frame(_example(0)))} of {path}) "
                                f"claims {1 << 40} bytes, more than the rest of the shard holds; nothing after "
                                "it can be read")


@pytest.mark.parametrize("gzipped", [False, True])
def test_tfrecord_over_the_limit_is_skipped_and_the_shard_read_on(tmp_path, gzipped):
    import gzip
    big = shards.tfrecord_frame(b"\1" * 5000)
    data = shards.tfrecord_frame(b"a") + big + shards.tfrecord_frame(b"bc")
    stream = io.BytesIO(gzip.compress(data) if gzipped else data)
    got = list(shards.tfrecord_payloads(stream, "x", max_bytes=1000))
    assert [(n, p) for n, p, _ in got] == [(0, b"a"), (1, None), (2, b"bc")]
    assert got[1][2] == "record 1 (byte 17 of x) is 5000 bytes, over the limit of 1000 bytes: skipped"


def test_webdataset_member_over_the_limit(monkeypatch):
    monkeypatch.setattr(shards, "MAX_RECORD_BYTES", 100)
    data = _raw_tar([("a.png", b"x" * 50, tarfile.REGTYPE, ""), ("b.png", b"y" * 500, tarfile.REGTYPE, ""),
                     ("c.png", b"z" * 60, tarfile.REGTYPE, "")])
    got = [(s.id, s.image, s.error) for s in shards.read_webdataset(io.BytesIO(data), "x.tar")]
    assert got == [("a", b"x" * 50, None), ("b", None, "member 'b.png' is 500 bytes, over the limit of 100 bytes"),
                   ("c", b"z" * 60, None)]


# -- outputs that would overwrite inputs -------------------------------------------------------------------

@pytest.fixture
def dataset(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    data = _raw_tar([("a.png", _png(1), tarfile.REGTYPE, "")])
    for name in ("train-00000-of-00001.tar", "other.tar"):
        (d / name).write_bytes(data)
    os.symlink(d, tmp_path / "link")
    return d


@pytest.mark.parametrize("argv, message", [
    # The case: the filtered copy gets the input's own name.
    (["--input", "{d}/train-00000-of-00001.tar", "--filtered-output", "{d}/train"],
     "--filtered-output {d}/train would overwrite the input {d}/train-00000-of-00001.tar"),
    (["--input", "{d}/other.tar", "--input", "{d}/train-*", "--filtered-output", "{t}/link/train"],
     "--filtered-output {t}/link/train would overwrite the input {d}/train-00000-of-00001.tar"),
    # No such file yet, but the pattern matches what the copy will be named: the next run reads it and replaces it.
    (["--input", "{d}/*.tar", "--filtered-output", "{d}/kept"],
     "--filtered-output {d}/kept would write {d}/kept-00000-of-0000N.tar files, which --input {d}/*.tar matches"),
    (["--input", "{d}/*", "--output", "{d}/scores"],
     "--output {d}/scores would write {d}/scores-results-00000-of-0000N.jsonl files, which --input {d}/* matches"),
    (["--input", "{d}/**", "--output", "{d}/sub/scores", "--output-format", "parquet"],
     "--output {d}/sub/scores would write {d}/sub/scores-results-00000-of-0000N.parquet files"),
])
def test_outputs_that_could_overwrite_inputs_are_refused(argv, message, exported, dataset, tmp_path, capsys):
    before = {p: p.read_bytes() for p in dataset.iterdir()}
    full = ["score", exported["vila_r_tiny"]] + [a.format(d=dataset, t=tmp_path) for a in argv]
    if "--filtered-output" in argv:
        full += ["--min-score", "0"]
    if "--output" not in argv:
        full += ["--output", str(tmp_path / "scores" / "run")]
    assert vila_beam.main(full) == 2
    err = capsys.readouterr().err
    assert err.startswith("vila-tf beam: ") and err.count("\n") == 1, err  # one line
    assert message.format(d=dataset, t=tmp_path) in err
    assert {p: p.read_bytes() for p in dataset.iterdir()} == before
    assert not list(tmp_path.glob("scores*")) and not list(dataset.glob("beam-temp-*"))


def test_output_prefix_that_is_not_utf8_is_refused(exported, dataset, tmp_path, capsys):
    out = os.fsdecode(os.path.join(os.fsencode(str(tmp_path)), b"caf\xe9", b"run"))
    assert vila_beam.main(["score", exported["vila_r_tiny"], "--input", f"{dataset}/*.tar", "--output", out]) == 2
    err = capsys.readouterr().err
    assert err == (f"vila-tf beam: --output {tmp_path}/caf\\xe9/run: Beam cannot write file names that are not "
                   "UTF-8; choose a UTF-8 prefix (inputs may have any names)\n")


def test_glob_against_output_names():
    can = overlap.glob_can_match
    assert can("/d/*.tar", "/d/kept", ".tar") and can("/d/**", "/d/x/y", ".tar")
    assert can("/d/train-0000[0-4]-of-*.tar", "/d/train", ".tar") and can("/d/train-?????-of-?????.tar", "/d/train", ".tar")
    assert can("/d/train-00000-of-00001.tar", "/d/train", ".tar")
    assert not can("/d/*", "/d/x/y", ".tar")  # '*' does not cross folders
    assert not can("/d/train-*.tar", "/e/train", ".tar") and not can("/d/*.tar", "/d/kept", ".tfrecord")
    assert not can("/d/train-????.tar", "/d/train", ".tar")  # shard numbers have five digits or more
    assert not can("/d/train-[!0-9]*.tar", "/d/train", ".tar")


# -- a relative pattern -----------------------------------------------------------------------------------

def test_relative_pattern_without_a_folder(exported, model, tmp_path, monkeypatch, capsys):
    """`--input '*.parquet'` said "matches no files": Beam lists the folder '' for it."""
    images = [_png(11), _png(12)]
    pq.write_table(pa.table({"image": images}), str(tmp_path / "a.parquet"))
    monkeypatch.chdir(tmp_path)
    rc = vila_beam.main(["score", exported["vila_r_tiny"], "--input", "*.parquet", "--output", "out/run"])
    assert rc == 0, capsys.readouterr().err
    got = {r["id"]: r["score"] for r in _jsonl(str(tmp_path / "out" / "run-results-*.jsonl"))}
    assert got == pytest.approx({f"./a.parquet:{i}": _score(model, b) for i, b in enumerate(images)}, abs=1e-5)


# -- a failed job leaves no temporary folders ---------------------------------------------------------------

def test_a_failed_job_leaves_no_temporary_folders(exported, tmp_path, capsys):
    # A model whose metadata is fine but whose graph does not parse: the job starts, then fails.
    (tmp_path / "broken" / "1" / "assets.extra").mkdir(parents=True)
    (tmp_path / "broken" / "1" / "saved_model.pb").write_bytes(b"not a SavedModel")
    shutil.copy(os.path.join(exported["vila_r_tiny"], "assets.extra", "vila_tf.json"),
                tmp_path / "broken" / "1" / "assets.extra" / "vila_tf.json")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(_png(1))
    out = tmp_path / "out"
    out.mkdir()
    # Another job's temporary folder from before: not this job's to remove.
    older = out / f"beam-temp-run-results-{uuid.uuid1().hex}"
    older.mkdir()
    rc = vila_beam.main(["score", str(tmp_path / "broken"), "--input", str(tmp_path / "in" / "*"),
                         "--output", str(out / "run")])
    assert rc == 2 and "the job failed" in capsys.readouterr().err
    assert sorted(os.listdir(out)) == [older.name]


def test_temporary_folders_of_jobs_started_earlier_are_kept(tmp_path):
    from vila_tf.beam.leftovers import TempFolders
    temp = TempFolders([str(tmp_path / "run-results")])
    old = tmp_path / f"beam-temp-run-results-{uuid.uuid1(clock_seq=1).hex}"  # made "now", but...
    start = time.time() + 3600  # ...an hour before this job started: not this job's
    old.mkdir()
    assert temp.remove_new(start) == [] and old.exists()
    assert temp.remove_new(time.time() - 5) == [str(old)] and not old.exists()


# -- the model cache on the workers ------------------------------------------------------------------------

class _EdgeFileSystem(LocalFileSystem):
    """`vilaedge:///abs/path` -> /abs/path, listing EXTRA objects too: a remote store with odd names."""
    PREFIX = "vilaedge://"
    EXTRA: list = []

    @classmethod
    def scheme(cls):
        return "vilaedge"

    def _local(self, path):
        return path[len(self.PREFIX):] if path.startswith(self.PREFIX) else path

    def match(self, patterns, limits=None):
        out = []
        for r in super().match([self._local(p) for p in patterns], limits):
            found = [FileMetadata(self.PREFIX + m.path, m.size_in_bytes, m.last_updated_in_seconds)
                     for m in r.metadata_list]
            if r.pattern.endswith("/**"):
                found += [FileMetadata(self.PREFIX + r.pattern[:-3] + "/" + name, 1, 0) for name in self.EXTRA]
            out.append(MatchResult(self.PREFIX + r.pattern, found))
        return out

    def open(self, path, *args, **kwargs):
        return super().open(self._local(path), *args, **kwargs)

    def exists(self, path):
        return super().exists(self._local(path))


@pytest.fixture
def remote_model(exported, tmp_path, monkeypatch):
    import tempfile
    base = tmp_path / "bucket" / "vila_r" / "1"
    shutil.copytree(exported["vila_r_tiny"], base)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    os.makedirs(tempfile.tempdir)
    monkeypatch.setattr(_EdgeFileSystem, "EXTRA", [])
    return base


def test_model_cache_is_private_and_follows_the_source(remote_model, tmp_path):
    cache = tmp_path / "tmp" / f"vila_tf-models-{os.getuid()}"
    first = beam_handler.fetch_savedmodel(f"vilaedge://{remote_model}")
    assert first.startswith(str(cache) + "/")
    assert stat.S_IMODE(os.stat(cache).st_mode) == 0o700
    assert beam_handler.fetch_savedmodel(f"vilaedge://{remote_model}") == first  # reused
    # The model at the source changes (a re-export in place): a new copy, with the new content.
    card = remote_model / "assets.extra" / "vila_tf.json"
    meta = json.loads(card.read_text())
    meta["note"] = "re-exported"
    card.write_text(json.dumps(meta))
    second = beam_handler.fetch_savedmodel(f"vilaedge://{remote_model}")
    assert second != first and os.path.dirname(second) == str(cache)
    assert json.loads((open(os.path.join(second, "assets.extra", "vila_tf.json")).read()))["note"] == "re-exported"


@pytest.mark.parametrize("planted", ["open to others", "another user's"])
def test_model_cache_planted_by_someone_else_is_not_used(planted, remote_model, tmp_path, monkeypatch):
    """The copy was looked up in the shared temporary folder by the source's name alone: anyone on
    the machine could put a model there first."""
    import hashlib
    source = f"vilaedge://{remote_model}"
    # The name this source's copy gets (learned from a fetch into a folder of the test's own).
    name = os.path.basename(beam_handler.fetch_savedmodel(source, cache_dir=str(tmp_path / "mine")))
    uid = os.getuid() + (1 if planted == "another user's" else 0)
    monkeypatch.setattr(os, "getuid", lambda: uid)
    cache = tmp_path / "tmp" / f"vila_tf-models-{uid}"
    before_the_fix = tmp_path / "tmp" / "vila_tf-models" / hashlib.sha256(source.encode()).hexdigest()[:16]
    for fake in (cache / name, before_the_fix):
        fake.mkdir(parents=True)
        (fake / "saved_model.pb").write_bytes(b"planted")
    if planted == "open to others":
        os.chmod(cache, 0o777)
    got = beam_handler.fetch_savedmodel(source)
    # By path component: a private folder made beside it may share the name's first characters.
    assert not pathlib.Path(got).is_relative_to(cache)
    with open(os.path.join(got, "saved_model.pb"), "rb") as f:
        assert f.read() == (remote_model / "saved_model.pb").read_bytes()


@pytest.mark.parametrize("name", ["../../evil", "variables/../../../evil", "a//b"])
def test_model_fetch_refuses_unsafe_object_names(name, remote_model, tmp_path, monkeypatch):
    monkeypatch.setattr(_EdgeFileSystem, "EXTRA", [name])
    with pytest.raises(ValueError, match="has an unsafe name"):
        beam_handler.fetch_savedmodel(f"vilaedge://{remote_model}")
    assert not (tmp_path / "evil").exists() and not (tmp_path / "tmp" / "evil").exists()
