"""`vila-tf beam` over datasets in shards (TFRecord, WebDataset, Parquet) on the DirectRunner.

One generated collection of 216 samples (small PNG and JPEG images, some not images, some without
an image) is written in each format, with damage of the format's own kind: a record whose checksum
fails and a GZIP shard (TFRecord), a truncated shard (all three). One job per format checks the
scores against the SavedModel on the same bytes, the errors, that nothing is lost or doubled, and
the filtered copy read back with the format's ordinary reader (tf.data, tarfile, pyarrow).
"""
import glob
import io
import json
import os
import shlex
import tarfile
import warnings

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("apache_beam")
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from vila_tf import beam as vila_beam  # noqa: E402
from vila_tf.beam import cli as beam_cli  # noqa: E402
from vila_tf.beam import shards  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N, PER_SHARD = 216, 72
BAD = {7, 40, 101, 150, 190, 211}  # bytes that are not an image
MISSING = {3, 77, 120, 170, 200}  # a sample without its image
CRC_BROKEN = 5  # TFRecord shard 0: this record's data fails its checksum
CUT_AT = 60  # the last shard of each format ends inside this sample


def sample_id(i):
    return f"s{i:03d}"


# -- the collection ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def collection():
    """[(id, image bytes or None)]: 32x32 PNGs and JPEGs (a few other sizes), bad bytes, missing images."""
    rng = np.random.default_rng(14)
    out = []
    for i in range(N):
        if i in MISSING:
            out.append((sample_id(i), None))
            continue
        if i in BAD:
            data = rng.bytes(300) if i % 2 else b"\xff\xd8\xff\xe0" + rng.bytes(200)  # noise; a JPEG header only
            out.append((sample_id(i), data))
            continue
        h, w = (32, 32) if i % 9 else (24, 40)
        arr = (rng.uniform(0, 1, (h, w, 3)) * 255).astype(np.uint8)
        arr[: h // 2, :, i % 3] //= 3  # structure, so the scores spread
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG" if i % 2 else "JPEG")
        out.append((sample_id(i), buf.getvalue()))
    return out


@pytest.fixture(scope="module")
def truth(model, references, collection):
    """{id: score} of the good images by the reference path (tests/reference.py: the release's
    preprocessing and the golden-checked pixel signatures), {id: reason} of the damaged ones as
    vila_tf words them, and a score threshold between two samples."""
    present = [(k, b) for k, b in collection if b is not None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the failures are what we ask for
        _, errors = model.score([b for _, b in present], return_errors=True)
    reasons = {present[e.index][0]: e.reason for e in errors}
    assert set(reasons) == {sample_id(i) for i in BAD}
    good = [(k, b) for k, b in present if k not in reasons]
    scores = {k: float(v) for (k, _), v in zip(good, references["vila_r_tiny"].score([b for _, b in good]))}
    ordered = sorted(scores.values())
    # A threshold halfway between two neighbouring scores near the median: no sample sits on it.
    gaps = [(ordered[j + 1] - ordered[j], j) for j in range(len(ordered) // 3, 2 * len(ordered) // 3)]
    _, j = max(gaps)
    return scores, reasons, (ordered[j] + ordered[j + 1]) / 2


def shard_slices():
    return [range(s, min(N, s + PER_SHARD)) for s in range(0, N, PER_SHARD)]


def run_job(argv, capsys):
    rc = vila_beam.main(argv)
    err = capsys.readouterr().err
    return rc, err


def read_jsonl(pattern):
    files = sorted(glob.glob(pattern))
    assert files, f"no files match {pattern}"
    return [json.loads(line) for f in files for line in open(f, encoding="utf-8") if line.strip()]


def check_results(results, errors, truth, expected_errors, lost=()):
    """Every good image scored as the SavedModel scores it; every error where expected; none lost or twice."""
    scores, reasons, _ = truth
    ids = [r["id"] for r in results] + [e["id"] for e in errors]
    assert len(ids) == len(set(ids)), "an id came out twice"
    want_scored = {k for k in scores if k not in expected_errors and k not in lost}
    assert {r["id"] for r in results} == want_scored
    for r in results:
        assert float(r["score"]) == pytest.approx(scores[r["id"]], abs=1e-5), r
    got_errors = {e["id"]: e["error"] for e in errors}
    assert set(got_errors) == set(expected_errors)
    for k, reason in expected_errors.items():
        assert reason in got_errors[k], (k, got_errors[k])
    return want_scored


def expected_image_errors(truth, lost=(), missing_reason="no image"):
    _, reasons, _ = truth
    out = {k: reason for k, reason in reasons.items() if k not in lost}
    out.update({sample_id(i): missing_reason for i in MISSING if sample_id(i) not in lost})
    return out


# -- TFRecord ------------------------------------------------------------------------------------------

def tf_example(key, image, extra):
    from tensorflow.core.example import example_pb2
    ex = example_pb2.Example()
    ex.features.feature["id"].bytes_list.value.append(key.encode())
    ex.features.feature["label"].int64_list.value.append(extra)
    if image is not None:
        ex.features.feature["image/encoded"].bytes_list.value.append(image)
    return ex.SerializeToString()


@pytest.fixture(scope="module")
def tfrecord_shards(tmp_path_factory, collection):
    """Shard 0 plain with one broken checksum, shard 1 GZIP, shard 2 cut inside record CUT_AT."""
    import gzip
    d = tmp_path_factory.mktemp("tfrecord")
    paths = []
    for s, idx in enumerate(shard_slices()):
        frames = [shards.tfrecord_frame(tf_example(*collection[i], i)) for i in idx]
        if s == 0:
            f = bytearray(frames[CRC_BROKEN])
            f[-10] ^= 0xFF  # a byte of the data: the data checksum fails, the framing holds
            frames[CRC_BROKEN] = bytes(f)
        data = b"".join(frames)
        if s == 2:
            data = b"".join(frames[:CUT_AT]) + frames[CUT_AT][: len(frames[CUT_AT]) // 2]
        path = d / (f"train-{s:05d}.tfrecord" + (".gz" if s == 1 else ""))
        path.write_bytes(gzip.compress(data) if s == 1 else data)
        paths.append(str(path))
    return paths


def test_tfrecord_scores_errors_and_filtered_copy(exported, tfrecord_shards, truth, collection, tmp_path, capsys):
    scores, _, threshold = truth
    folder = os.path.dirname(tfrecord_shards[0])
    prefix, filtered = str(tmp_path / "run"), str(tmp_path / "kept" / "train")
    rc, err = run_job(["score", exported["vila_r_tiny"], "--input", f"{folder}/*.tfrecord*", "--output", prefix,
                       "--id-key", "id", "--min-score", str(threshold), "--filtered-output", filtered], capsys)
    assert rc == 1, err  # some records failed, the job did not
    last = shard_slices()[2]
    lost = {sample_id(i) for i in last[CUT_AT:]} | {sample_id(CRC_BROKEN)}
    expected = expected_image_errors(truth, lost, "no image feature 'image/encoded'")
    expected[f"{tfrecord_shards[0]}:{CRC_BROKEN}"] = "corrupt record: its data fails its checksum"
    expected[f"{tfrecord_shards[2]}:{CUT_AT}"] = f"shard truncated: {tfrecord_shards[2]} ends inside record {CUT_AT}"
    scored = check_results(read_jsonl(f"{prefix}-results-*.jsonl"), read_jsonl(f"{prefix}-errors-*.jsonl"),
                           truth, expected, lost)
    passing = {k for k in scored if scores[k] >= threshold}
    assert 0 < len(passing) < len(scored)
    assert f"{len(scored)} images -> {prefix}-results-*.jsonl, {len(expected)} failed" in err
    assert f"{len(passing)} scoring >= {threshold:g} -> {filtered}-*.tfrecord*" in err

    # The filtered copy, read back by tf.data: exactly the passing records, all their features, the score.
    import tensorflow as tf
    files = sorted(glob.glob(f"{filtered}-*.tfrecord*"))
    assert files
    by_id = dict(collection)
    seen = []
    for f in files:
        for raw in tf.data.TFRecordDataset(f, compression_type="GZIP" if f.endswith(".gz") else ""):
            ex = tf.train.Example.FromString(raw.numpy())
            feats = ex.features.feature
            key = feats["id"].bytes_list.value[0].decode()
            seen.append(key)
            assert feats["image/encoded"].bytes_list.value[0] == by_id[key]
            assert feats["label"].int64_list.value[0] == int(key[1:])
            assert feats[shards.SCORE_KEY].float_list.value[0] == pytest.approx(scores[key], abs=1e-6)
    assert sorted(seen) == sorted(passing)


def test_tfrecord_reader_without_id_key_and_gzip_detection(tfrecord_shards):
    """Default ids are <file>:<record>; a GZIP shard is recognised by its bytes, not its name."""
    renamed = tfrecord_shards[1] + ".renamed"
    os.link(tfrecord_shards[1], renamed)
    with open(renamed, "rb") as f:
        samples = list(shards.read_tfrecord(f, renamed))
    assert [s.id for s in samples] == [f"{renamed}:{n}" for n in range(PER_SHARD)]
    assert sum(s.error is None for s in samples) == PER_SHARD - sum(i in MISSING for i in shard_slices()[1])


def test_tfrecord_reader_damage_of_every_kind(tmp_path):
    """A length failing its checksum ends the shard; a payload that is no Example fails alone; int ids."""
    from tensorflow.core.example import example_pb2

    def example(i, with_image=True):
        ex = example_pb2.Example()
        ex.features.feature["n"].int64_list.value.append(100 + i)
        if with_image:
            ex.features.feature["image/encoded"].bytes_list.value.append(bytes([i]) * 10)
        return ex.SerializeToString()

    frames = [shards.tfrecord_frame(example(0)), shards.tfrecord_frame(b"\xff\xff not a proto"),
              shards.tfrecord_frame(example(2)), shards.tfrecord_frame(example(3))]
    broken = bytearray(frames[3])
    broken[0] ^= 0x01  # the length: its checksum fails, nothing after can be framed
    data = b"".join(frames[:3]) + bytes(broken) + shards.tfrecord_frame(example(4))
    got = [(s.id, s.image, (s.error or "").split(":")[0]) for s in shards.read_tfrecord(io.BytesIO(data), "x",
                                                                                         id_key="n")]
    assert got == [("100", bytes([0]) * 10, ""), ("x:1", None, "not a tf.train.Example"),
                   ("102", bytes([2]) * 10, ""), ("x:3", None, "corrupt shard")]


# -- WebDataset ----------------------------------------------------------------------------------------

def webdataset_members(i, key, image):
    members = [("json", json.dumps({"i": i}).encode()), ("cls", str(i % 5).encode())]
    if image is not None:
        members.insert(0, ("png" if image.startswith(b"\x89PNG") else "jpg", image))
    return members


@pytest.fixture(scope="module")
def webdataset_shards(tmp_path_factory, collection):
    """Three tar shards; the last one cut inside sample CUT_AT's image."""
    d = tmp_path_factory.mktemp("wds")
    paths = []
    for s, idx in enumerate(shard_slices()):
        buf = io.BytesIO()
        writer = shards.TarShardWriter(buf)
        for i in idx:
            writer.write(collection[i][0], webdataset_members(i, *collection[i]))
        writer.close()
        data = buf.getvalue()
        if s == 2:  # cut inside the data of sample CUT_AT's first member (its image)
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                first = next(m for m in tar.getmembers() if m.name.startswith(sample_id(idx[CUT_AT]) + "."))
            data = data[: first.offset_data + 100]
        path = d / f"shard-{s:05d}.tar"
        path.write_bytes(data)
        paths.append(str(path))
    # The tar writer the filtered copy uses makes shards that the tarfile module reads back as written.
    with tarfile.open(paths[0]) as tar:
        assert tar.getnames()[:3] == ["s000.jpg", "s000.json", "s000.cls"]
    return paths


def test_webdataset_scores_errors_and_filtered_copy(exported, webdataset_shards, truth, collection, tmp_path,
                                                     capsys):
    scores, _, threshold = truth
    prefix, filtered = str(tmp_path / "run"), str(tmp_path / "kept" / "shard")
    rc, err = run_job(["score", exported["vila_r_tiny"], "--input", os.path.dirname(webdataset_shards[0]) + "/*.tar",
                       "--output", prefix, "--min-score", str(threshold), "--filtered-output", filtered], capsys)
    assert rc == 1, err
    last = shard_slices()[2]
    lost = {sample_id(i) for i in last[CUT_AT:]}
    expected = expected_image_errors(truth, lost, "no .jpg, .jpeg or .png member (members: .json, .cls)")
    expected[sample_id(last[CUT_AT])] = (f"shard truncated or damaged: {webdataset_shards[2]} ends inside sample "
                                         f"'{sample_id(last[CUT_AT])}' after {CUT_AT} complete samples")
    scored = check_results(read_jsonl(f"{prefix}-results-*.jsonl"), read_jsonl(f"{prefix}-errors-*.jsonl"),
                           truth, expected, lost)
    passing = {k for k in scored if scores[k] >= threshold}
    assert 0 < len(passing) < len(scored)

    # The filtered copy, read back with tarfile: the passing samples, every member as it was, plus the score.
    files = sorted(glob.glob(f"{filtered}-*.tar"))
    assert files
    samples = {}
    for f in files:
        with tarfile.open(f) as tar:
            for info in tar:
                key, ext = info.name.split(".", 1)
                samples.setdefault(key, []).append((ext, tar.extractfile(info).read()))
    assert sorted(samples) == sorted(passing)
    for key, members in samples.items():
        i = int(key[1:])
        assert members[:-1] == webdataset_members(i, *collection[i])
        assert members[-1][0] == shards.SCORE_KEY
        assert float(members[-1][1]) == pytest.approx(scores[key], abs=1e-6)


@pytest.mark.parametrize("gzipped", [False, True])
def test_webdataset_cut_between_members_is_reported(tmp_path, gzipped):
    """tarfile ends quietly when a shard is cut at a header: the reader must not."""
    import gzip
    buf = io.BytesIO()
    writer = shards.TarShardWriter(buf)
    for k in range(4):
        writer.write(f"k{k}", [("png", bytes([k]) * 700), ("txt", b"t")])
    writer.close()
    whole = buf.getvalue()
    with tarfile.open(fileobj=io.BytesIO(whole)) as tar:
        at = tar.getmember("k2.png").offset  # the header of sample k2's first member
    # Cut before k2 or inside its header: k0 complete; k1 may have lost members, so it is an error.
    for data, ids in ((whole, ["k0", "k1", "k2", "k3"]), (whole[:at], ["k0"]), (whole[:at + 200], ["k0"])):
        data = gzip.compress(data) if gzipped else data
        samples = list(shards.read_webdataset(io.BytesIO(data), "x.tar"))
        assert [s.id for s in samples if s.error is None] == ids
        assert [s.image for s in samples if s.error is None] == [bytes([k]) * 700 for k in range(len(ids))]
        errors = [s for s in samples if s.error]
        if len(ids) == 4:
            assert not errors
        else:
            assert [(s.id, s.error.split(" (")[0]) for s in errors] == [
                ("k1", "shard truncated or damaged: x.tar ends inside sample 'k1' after 1 complete samples")]


# -- Parquet -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def parquet_files(tmp_path_factory, collection):
    """Two files of row groups of 40 (id, image, label) and one truncated file."""
    d = tmp_path_factory.mktemp("parquet")
    schema = pa.schema([("id", pa.string()), ("image", pa.binary()), ("label", pa.int64())])
    paths = []
    half = N // 2
    for s, idx in enumerate((range(0, half), range(half, N))):
        table = pa.table({"id": [collection[i][0] for i in idx], "image": [collection[i][1] for i in idx],
                          "label": list(idx)}, schema=schema)
        path = str(d / f"part-{s}.parquet")
        pq.write_table(table, path, row_group_size=40)
        paths.append(path)
    truncated = str(d / "part-2.parquet")
    with open(paths[1], "rb") as f:
        data = f.read()
    with open(truncated, "wb") as f:
        f.write(data[: len(data) // 2])
    return paths, truncated


def test_parquet_scores_errors_and_filtered_copy(exported, parquet_files, truth, collection, tmp_path, capsys):
    scores, _, threshold = truth
    paths, truncated = parquet_files
    prefix, filtered = str(tmp_path / "run"), str(tmp_path / "kept" / "part")
    rc, err = run_job(["score", exported["vila_r_tiny"], "--input", os.path.dirname(paths[0]) + "/*.parquet",
                       "--output", prefix, "--output-format", "parquet", "--id-key", "id",
                       "--min-score", str(threshold), "--filtered-output", filtered], capsys)
    assert rc == 1, err
    expected = expected_image_errors(truth, (), "image column 'image' is null")
    expected[truncated] = f"cannot read {truncated} as Parquet (truncated or not Parquet?): nothing in it was read"
    results_files = sorted(glob.glob(f"{prefix}-results-*.parquet"))
    table = pq.read_table(results_files)
    assert table.schema == pa.schema([pa.field("id", pa.string(), nullable=False), ("score", pa.float32())])
    scored = check_results(table.to_pylist(), read_jsonl(f"{prefix}-errors-*.jsonl"), truth, expected)
    for r in table.to_pylist():  # float32 as the model gives it, not rounded text
        assert r["score"] == pytest.approx(scores[r["id"]], abs=1e-6)
    passing = {k for k in scored if scores[k] >= threshold}

    kept = pq.read_table(sorted(glob.glob(f"{filtered}-*.parquet")))
    assert kept.schema.names == ["id", "image", "label", shards.SCORE_KEY]
    assert kept.schema.field(shards.SCORE_KEY).type == pa.float32()
    by_id = dict(collection)
    rows = kept.to_pylist()
    assert sorted(r["id"] for r in rows) == sorted(passing)
    for r in rows:
        assert r["image"] == by_id[r["id"]] and r["label"] == int(r["id"][1:])
        assert r[shards.SCORE_KEY] == pytest.approx(scores[r["id"]], abs=1e-6)


def test_parquet_embeddings_equal_the_reference(exported, references, parquet_files, collection, tmp_path, capsys):
    """Embeddings as a fixed-size float32 list column, equal to the reference's image embeddings."""
    good = [(k, b) for k, b in collection[:24] if b is not None and int(k[1:]) not in BAD]
    source = str(tmp_path / "few.parquet")
    pq.write_table(pa.table({"image": [b for _, b in good]}), source)
    prefix = str(tmp_path / "emb")
    rc, err = run_job(["embed", exported["vila_r_tiny"], "--input", source, "--output", prefix,
                       "--output-format", "parquet", "--batch-size", "8"], capsys)
    assert rc == 0, err
    table = pq.read_table(sorted(glob.glob(f"{prefix}-results-*.parquet")))
    want = references["vila_r_tiny"].image_embedding([b for _, b in good])
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), want.shape[1])
    got = {r["id"]: r["embedding"] for r in table.to_pylist()}
    assert set(got) == {f"{source}:{n}" for n in range(len(good))}
    np.testing.assert_allclose(np.array([got[f"{source}:{n}"] for n in range(len(good))], np.float32), want,
                               rtol=0, atol=1e-6)


# -- the command line --------------------------------------------------------------------------------

@pytest.mark.parametrize("extra, message", [
    (["--input", "{d}/a.tfrecord", "--input", "{d}/b.tar"], "name different formats"),
    (["--input", "{d}/a.png", "--image-key", "x"], "--image-key and --id-key are for datasets"),
    (["--input", "{d}/b.tar", "--id-key", "x"], "WebDataset samples are named by their __key__"),
    (["--input", "{d}/a.tfrecord", "--min-score", "0.5"], "--min-score and --filtered-output go together"),
    (["--input", "{d}/a.png", "--min-score", "0.5", "--filtered-output", "k"], "copies records of a dataset"),
])
def test_dataset_usage_errors(extra, message, exported, tmp_path, capsys):
    for name in ("a.tfrecord", "b.tar", "a.png"):
        (tmp_path / name).write_bytes(b"x")
    argv = ["score", exported["vila_r_tiny"], "--output", str(tmp_path / "x")] + [a.format(d=tmp_path)
                                                                                  for a in extra]
    assert vila_beam.main(argv) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.glob("x-*"))


def test_caption_cannot_filter(exported, tmp_path, capsys):
    (tmp_path / "a.parquet").write_bytes(b"x")
    assert vila_beam.main(["caption", exported["vila_r_tiny"], "--input", str(tmp_path / "a.parquet"),
                           "--output", str(tmp_path / "x"), "--min-score", "1", "--filtered-output", "k"]) == 2
    assert "use score or zero-shot, not caption" in capsys.readouterr().err


def test_format_inference():
    assert shards.format_of("gs://b/train-*.tfrecord.gz") == "tfrecord"
    assert shards.format_of("data/{000..099}.tar") == "webdataset"
    assert shards.format_of("s3://b/part-*.parquet") == "parquet"
    assert shards.format_of("photos/*.jpg") is None and shards.format_of("photos/**") is None


def test_docs_commands_parse():
    """Every `vila-tf beam` command line in docs/datasets.md is valid for vila-tf beam and for Beam."""
    with open(os.path.join(ROOT, "docs", "datasets.md")) as f:
        text = f.read().replace("\\\n", " ")
    lines = [line.strip().removeprefix("$ ") for line in text.splitlines()]
    commands = [shlex.split(line, comments=True) for line in lines if line.startswith("vila-tf beam ")]
    assert len(commands) >= 5
    for cmd in commands:
        args, beam_args = beam_cli._parser().parse_known_args(cmd[2:])
        beam_cli._pipeline_options(beam_args)
        assert args.task in vila_beam.TASKS and args.input and args.output
        assert (args.min_score is None) == (args.filtered_output is None)
        formats = {shards.format_of(p) for p in args.input}
        assert args.input_format or len(formats) == 1, cmd


def test_masked_crc_matches_tensorflow(tmp_path):
    """Our TFRecord framing is TensorFlow's: tf.io.TFRecordWriter writes the same bytes."""
    import tensorflow as tf
    path = str(tmp_path / "x.tfrecord")
    payloads = [b"", b"abc", bytes(range(256)) * 7]
    with tf.io.TFRecordWriter(path) as w:
        for p in payloads:
            w.write(p)
    with open(path, "rb") as f:
        assert f.read() == b"".join(shards.tfrecord_frame(p) for p in payloads)
