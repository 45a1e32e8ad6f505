"""VilaModel.stream and the streaming command line: endless inputs, the same results as the
collectors, bounded memory, per-batch rows, SIGKILL then --resume (docs/streaming.md)."""
import csv
import io
import itertools
import json
import os
import sys
import time

import numpy as np
import pytest

from vila_tf.cli import score as score_cmd
from PIL import Image

from conftest import env_without_jax, kill_after_rows, run_without_jax, vila_tf_command

VILA_TF = os.path.join(os.path.dirname(sys.executable), "vila-tf")


def _photo(seed, h=60, w=80):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([np.sin(yy / (5 + seed % 7)), np.cos(xx / 11.0), np.sin((xx + yy) / 13.0)], -1)
    return ((base + 1) * 110 + rng.uniform(0, 30, (h, w, 3))).clip(0, 255).astype(np.uint8)


def _png(arr):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_stream_takes_the_first_results_of_an_endless_generator(model, reference):
    arrays = [_photo(i) for i in range(3)]
    want = reference([_png(a) for a in arrays])
    pulled = []

    def endless():
        for i in itertools.count():
            pulled.append(i)
            yield arrays[i % 3]

    got = list(itertools.islice(model.stream("score", endless(), batch_size=4, batches_ahead=2), 10))
    assert [r.index for r in got] == list(range(10))
    assert [r.source for r in got] == [f"<array {i}>" for i in range(10)]
    assert all(r.error is None for r in got)
    np.testing.assert_allclose([r.value for r in got], [want[i % 3] for i in range(10)], atol=1e-5)
    # Back-pressure: the generator is read at most `batches_ahead` batches beyond the one in hand.
    assert len(pulled) <= 12 + 2 * 4


def test_stream_equals_score_on_good_and_bad_inputs(model, reference, tmp_path):
    arrays = [_photo(10 + i) for i in range(6)]
    folder = tmp_path / "folder"
    folder.mkdir()
    for i in (0, 1):
        (folder / f"p{i}.png").write_bytes(_png(arrays[i]))
    (folder / "p2_truncated.png").write_bytes(_png(arrays[2])[:200])
    (folder / "notes.txt").write_text("skipped by extension")
    (tmp_path / "empty.png").write_bytes(b"")
    inputs = [_png(arrays[3]), b"not an image", str(folder), str(tmp_path / "empty.png"), arrays[4],
              str(tmp_path / "missing.jpg"), str(folder / "p*.png"), np.zeros((10, 10, 5), np.uint8), arrays[5],
              str(tmp_path / "nothing*.jpg")]
    results = list(model.stream("score", (x for x in inputs), batch_size=3))
    scores, errors = model.score(inputs, batch_size=3, return_errors=True)
    assert [r.index for r in results] == list(range(len(scores))) and len(scores) == 14
    assert [(r.index, r.source, r.error) for r in results if r.error] == [tuple(e) for e in errors]
    assert [r.index for r in results if r.error] == [1, 4, 5, 7, 10, 11, 13]
    good = [r for r in results if r.error is None]
    assert all(r.value is not None for r in good) and all(r.value is None for r in results if r.error)
    np.testing.assert_array_equal([r.value for r in good], scores[[r.index for r in good]])
    assert np.isnan(scores[[e.index for e in errors]]).all()
    # and both are the SavedModel's own numbers for the good images
    order = [3, 0, 1, 4, 0, 1, 5]  # bytes, folder p0 p1, array, glob p0 p1, array
    np.testing.assert_allclose([r.value for r in good], reference([_png(arrays[i]) for i in order]), atol=1e-5)
    assert [r.source for r in results][2:5] == [str(folder / "p0.png"), str(folder / "p1.png"),
                                                 str(folder / "p2_truncated.png")]


def test_stream_several_tasks_decode_once(model, references):
    """A tuple of tasks gives each single task's values, and those are the reference's (the
    release's preprocessing, the golden-checked pixel signatures, Python SentencePiece)."""
    arrays = [_photo(20 + i) for i in range(3)]
    got = list(model.stream(("score", "caption"), arrays + [b"junk"], batch_size=4))
    np.testing.assert_array_equal([r.value[0] for r in got[:3]], model.score(arrays))
    assert [r.value[1] for r in got[:3]] == model.caption(arrays)
    ref = references["vila_r_tiny"]
    np.testing.assert_allclose([r.value[0] for r in got[:3]], ref.score([_png(a) for a in arrays]), atol=1e-5)
    assert [r.value[1] for r in got[:3]] == ref.caption([_png(a) for a in arrays])
    assert got[3].value is None and "not a JPEG" in got[3].error
    with pytest.raises(ValueError, match="unknown task 'aesthetics'"):
        next(model.stream("aesthetics", arrays))


def test_ctrl_c_while_reading_inputs_stops_the_stream(model, reference):
    """A KeyboardInterrupt (Ctrl-C) raised while inputs are read ends the stream at once; the
    queued decodes are cancelled and the model keeps working."""
    arrays = [_photo(i) for i in range(3)]

    def interrupted():
        for i in range(1000):
            if i == 13:
                raise KeyboardInterrupt
            yield arrays[i % 3]

    seen = []
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        for r in model.stream("score", interrupted(), batch_size=4, batches_ahead=2):
            seen.append(r.index)
    assert time.monotonic() - t0 < 60 and seen == list(range(len(seen))) and len(seen) <= 12
    np.testing.assert_allclose(model.score(arrays), reference([_png(a) for a in arrays]), atol=1e-5)


def test_folders_are_walked_without_reading_files(tmp_path):
    from vila_tf.inputs import items as inputs
    (tmp_path / "b").mkdir()
    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "b" / "c.png").write_bytes(b"x")
    (tmp_path / ".hidden.jpg").write_bytes(b"x")
    items = inputs.iter_items([str(tmp_path), str(tmp_path / "**" / "*.png")])
    first = next(items)  # lazily: one item at a time, its file not read yet
    assert first.source == str(tmp_path / "a.jpg") and first.data is None and first.path == first.source
    assert [it.source for it in items] == [str(tmp_path / "b" / "c.png")] * 2
    assert inputs.load(first).data == b"x"


@pytest.mark.long
def test_memory_stays_flat_as_inputs_grow(exported, tmp_path):
    """Peak RSS after 400 images is that after 50 (the old collect-everything runtime held about
    0.7 MB per image, encoded and decoded: 0.25 GB more here, 0.7 GB at the benchmark's 1000). In a
    fresh process, so that the peak covers this alone."""
    if not os.path.exists("/proc/self/status"):
        pytest.skip("peak RSS is read from /proc/self/status (Linux)")
    # The very measurement `benchmarks/stream_memory.py` publishes, here with jax blocked.
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
    import stream_memory
    script = tmp_path / "rss.py"
    script.write_text(stream_memory.SCRIPT)
    r = run_without_jax(str(script), exported["vila_r_tiny"], "stream", 400)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["jpeg_mb"] > 0.15
    assert out["50"]["scored"] == 50 and out["400"]["scored"] == 400
    growth = out["400"]["peak_rss_mb"] - out["50"]["peak_rss_mb"]
    print(f"peak RSS: {out['50']['peak_rss_mb']:.0f} MB after 50, {out['400']['peak_rss_mb']:.0f} MB after 400")
    assert growth < 100, out


# --- the command line -----------------------------------------------------------------------------

def test_sigkill_mid_run_then_resume(exported, reference, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    arrays = {f"{i:03d}.png": _photo(30 + i, 40, 50) for i in range(60)}
    for name, a in arrays.items():
        (photos / name).write_bytes(_png(a))
    (photos / "000-broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")  # sorts first
    out = tmp_path / "scores.csv"
    out.write_text("input,score,error\nold.jpg,0.5,\n")  # a fresh run (no --resume) starts its file over
    cmd = [VILA_TF, "score", exported["vila_r_tiny"], str(photos), "--output", str(out), "--batch-size", "1"]
    assert kill_after_rows(cmd, out, 11, env_without_jax())  # the header and 11 rows written
    before = out.read_text()
    kept = before.count("\n")
    assert before.startswith("input,score,error\n") and 12 <= kept < 62, before[-500:]  # killed mid-run
    # A write cut short leaves a torn row; --resume must repair it.
    with open(out, "a") as f:
        f.write(f"{photos / '059.png'},0.12")
    r = vila_tf_command(*cmd[1:], "--resume", "--batch-size", "8")  # the batch size may change
    assert r.returncode == 1, r.stderr  # exit 1: an input failed, in the rows kept from the killed run
    assert "1 of 61 inputs failed" in r.stderr and "rows already there" in r.stderr
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    # every input exactly once, in the order of an uninterrupted run
    assert [os.path.basename(x["input"]) for x in rows] == ["000-broken.jpg"] + sorted(arrays)
    assert rows[0]["score"] == "" and rows[0]["error"]
    want = reference([_png(a) for a in arrays.values()])
    np.testing.assert_allclose([float(x["score"]) for x in rows[1:]], want, atol=2e-6)
    assert all(x["error"] == "" for x in rows[1:])


# --- results files ----------------------------------------------------------------------------------

def test_repair_keeps_complete_rows_only(tmp_path):
    from vila_tf.output import results_file
    cols = results_file.columns("score", with_captions=True)
    rows = [{"input": "a.jpg", "score": 0.5, "caption": 'two\nlines, "quoted"'},
            {"input": "b.jpg", "error": "not an image"}, {"input": "c.jpg", "score": 0.25, "caption": "é"}]
    for fmt in ("csv", "jsonl"):
        path = tmp_path / f"r.{fmt}"
        with open(path, "w", encoding="utf-8", newline="") as f:
            w = results_file.RowWriter(f, fmt, cols, header=True)
            for row in rows:
                w.write(row)
        whole = path.read_bytes()
        assert results_file.repair(str(path), fmt, cols) == 3 and path.read_bytes() == whole
        got = list(results_file.read_rows(str(path), fmt, cols))
        assert [g["input"] for g in got] == ["a.jpg", "b.jpg", "c.jpg"]
        assert got[0]["caption"] == rows[0]["caption"] and got[1]["error"] == "not an image"
        third = whole.index(b"\n", whole.index(b"b.jpg")) + 1  # where the third row starts
        for cut in range(third, len(whole)):  # every torn third row -> the first two rows
            path.write_bytes(whole[:cut])
            assert results_file.repair(str(path), fmt, cols) == 2, (fmt, cut)
            assert path.read_bytes() == whole[:third]
        # cut inside the first row's quoted two-line caption
        path.write_bytes(whole[:whole.index(b"lines")])
        assert results_file.repair(str(path), fmt, cols) == 0
    path = tmp_path / "other.csv"
    path.write_text("input,embedding,error\n")
    with pytest.raises(results_file.ResumeError, match="not this run's"):
        results_file.repair(str(path), "csv", cols)


def test_resume_with_changed_inputs_appends_what_is_missing(tmp_path):
    """Inputs added since the interrupted run: rows are found by source, the new inputs appended."""
    from vila_tf.cli import main as cli
    from vila_tf.inputs import items as inputs
    from vila_tf.output import results_file
    cols = results_file.columns("score")
    path = tmp_path / "s.csv"
    path.write_text("input,score,error\na,0.1,\nc,,broken\nd,0.4,\n")
    best = score_cmd._Best(2)
    skipper = score_cmd._Skipper(str(path), "csv", cols, "score", best)
    todo = [it.source for it in skipper.filter(inputs.Item(s) for s in ["a", "b", "c", "d", "e"])]
    assert todo == ["b", "e"] and skipper.skipped == 3 and skipper.failed == 1
    assert sorted(e[2] for e in best.heap) == ["a", "d"]
