"""Nothing lost at the edges (docs/reliability.md, "Real folders, shared outputs"): names that are
not UTF-8 or hold line breaks, link loops, FIFOs, huge files, decode memory, two runs on one
output, --resume across commands, outputs that are not ours, and errors as one line with exit 2.

Most cases run `vila_tf.cli.main.main` in this process (the tiny export loads in a second once
TensorFlow is imported); the three that need a process of their own (a real second run, a file
size limit, Ctrl-C) start the console script.
"""
import contextlib
import csv
import fcntl
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from vila_tf.cli import score as score_cmd
from PIL import Image

from conftest import env_without_jax, vila_tf_command

VILA_TF = os.path.join(os.path.dirname(sys.executable), "vila-tf")
LATIN1 = os.fsdecode(b"caf\xe9.png")  # a Latin-1 name: not valid UTF-8


def _png(h, w, seed):
    arr = (np.random.default_rng(seed).uniform(0, 1, (h, w, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def cli(*args):
    """`vila-tf ARGS` in this process: (exit code, its non-blank stderr lines)."""
    r = vila_tf_command(*args)
    return r.returncode, [line for line in r.stderr.splitlines() if line.strip()]


def rows_of(path):
    return list(csv.DictReader(io.StringIO(open(path, encoding="utf-8", newline="").read())))


@contextlib.contextmanager
def model_never_loaded(monkeypatch):
    """Fails the test if the CLI gets as far as loading the model."""
    import vila_tf

    def load(*a, **k):
        raise AssertionError("the model was loaded before the refusal")
    monkeypatch.setattr(vila_tf, "load", load)
    yield


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    """Three photos, and a finished score run over them: its CSV and record."""
    d = tmp_path_factory.mktemp("three")
    photos = d / "photos"
    photos.mkdir()
    for i in range(3):
        (photos / f"p{i}.png").write_bytes(_png(40 + 8 * i, 50, i))
    return photos


@pytest.fixture(scope="module")
def finished(exported, three, tmp_path_factory):
    """A results file of `vila-tf score` on `three`, with its record."""
    out = tmp_path_factory.mktemp("finished") / "scores.csv"
    assert cli("score", exported["vila_r_tiny"], three, "--output", out)[0] == 0
    return out


def copy_results(finished, tmp_path):
    out = tmp_path / "scores.csv"
    shutil.copy(finished, out)
    shutil.copy(str(finished) + ".vila-tf.json", str(out) + ".vila-tf.json")
    return out


# --- names: not UTF-8, line breaks, spreadsheet formulas (items 1, 7, formula injection) ----------

TRICKY = [LATIN1, "x\ry.png", "two\nlines.png", 'q"uote,comma.png', "=HYPERLINK(1).png", "-minus.png",
          "+plus.png", "@at.png", "\ttab.png", "'=quoted.png", "caf\\xe9.png", "é.png", "back\\\\slash.png"]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_every_name_is_written_readably_and_resume_reads_it_back(tmp_path, fmt):
    from vila_tf.cli import main as cli
    from vila_tf.inputs import items as inputs
    from vila_tf.output import results_file
    cols = results_file.columns("score")
    sources = [str(tmp_path / n) for n in TRICKY]
    path = tmp_path / f"r.{fmt}"
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = results_file.RowWriter(f, fmt, cols, header=True)
        for k, s in enumerate(sources):
            w.write(results_file.make_row("score", s, -0.5 + k, None))
    text = path.read_bytes().decode("utf-8")  # valid UTF-8 throughout
    if fmt == "csv":
        cells = list(csv.reader(io.StringIO(text, newline="")))
        assert len(cells) == 1 + len(sources)  # no row split by \r or \n
        assert cells[1][1] == "-0.5"  # numbers are never touched
    got = [r["input"] for r in results_file.read_rows(str(path), fmt, cols)]
    assert len(set(got)) == len(sources)  # lossless: every name distinct
    from vila_tf.inputs import names
    assert [names.source_of(g) for g in got] == sources  # and maps back to its file
    assert results_file.repair(str(path), fmt, cols) == len(sources)  # --resume accepts its own file
    skipper = score_cmd._Skipper(str(path), fmt, cols, "score", None)
    assert list(skipper.filter(inputs.Item(s) for s in sources)) == [] and skipper.skipped == len(sources)


def test_formula_cells_are_guarded_and_read_back(tmp_path):
    from vila_tf.output import results_file
    cols = results_file.columns("score", with_captions=True)
    path = tmp_path / "f.csv"
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = results_file.RowWriter(f, "csv", cols, header=True)
        w.write({"input": "=1+1", "score": -0.25, "caption": "@mention"})
        w.write({"input": "+x", "error": "-bad"})
    cells = list(csv.reader(io.StringIO(path.read_text(), newline="")))
    assert cells[1] == ["'=1+1", "-0.25", "'@mention", ""] and cells[2] == ["'+x", "", "", "'-bad"]
    rows = list(results_file.read_rows(str(path), "csv", cols))
    assert rows == [{"input": "=1+1", "score": "-0.25", "caption": "@mention"}, {"input": "+x", "error": "-bad"}]


# --- folder walks: link loops, FIFOs, sockets, devices (items 8, 9) --------------------------------

@pytest.fixture()
def messy(tmp_path):
    """root/photos with link loops, links in and out, a hard link, a FIFO, a socket and a device."""
    root = tmp_path / "root"
    photos, sub, ext = root / "photos", root / "photos" / "sub", tmp_path / "ext"
    for d in (sub, ext):
        d.mkdir(parents=True)
    for k, p in enumerate([photos / "a.png", sub / "b.png", ext / "e.png", root / "outside.png"]):
        p.write_bytes(_png(20, 30, k))
    os.symlink(".", photos / "x")
    os.symlink(".", photos / "y")
    os.symlink("..", photos / "up")
    os.symlink("sub", photos / "best")  # a folder already in the walk
    os.symlink(os.path.join("..", "..", "ext"), photos / "ext")  # a folder outside: walked once
    os.symlink(os.path.join("sub", "b.png"), photos / "fav.png")
    os.link(photos / "a.png", photos / "hard.png")
    os.symlink(os.path.join("..", "..", "..", "ext", "e.png"), sub / "e2.png")
    os.mkfifo(photos / "pipe.png")
    os.mkfifo(photos / "pipe")
    os.symlink("/dev/zero", photos / "zero.png")
    sock = socket.socket(socket.AF_UNIX)
    cwd = os.getcwd()
    os.chdir(photos)  # a relative name: socket paths are limited to 108 bytes
    try:
        sock.bind("sock.png")
    finally:
        os.chdir(cwd)
    yield photos
    sock.close()


def _in_thread(fn, timeout=30):
    """fn() in a thread; fails the test instead of hanging it."""
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("v", fn()), daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "hung"
    return out["v"]


def test_walk_visits_each_real_file_once_and_never_opens_fifos(messy):
    from vila_tf.inputs import image_formats
    from vila_tf.inputs import items as inputs
    report = image_formats.SkipReport()
    items = _in_thread(lambda: list(inputs.iter_items([str(messy), str(messy / "sub")], report)))
    got = sorted(os.path.relpath(it.source, messy) for it in items)
    assert got == ["a.png", "ext/e.png", "sub/b.png"] and all(it.error is None for it in items)
    assert sorted(os.path.basename(p) for p in report.special) == ["pipe", "pipe.png", "sock.png", "zero.png"]
    assert sorted(os.path.basename(p) for p in report.loops) == ["sub", "up", "x", "y"]
    assert sorted(os.path.basename(p) for p in report.other_names) == ["best", "e2.png", "fav.png", "hard.png"]
    lines = report.lines()
    assert any("not a regular file" in line and "pipe.png" in line for line in lines)
    assert any("a second time" in line for line in lines)


def test_glob_star_star_ends_loops_and_skips_fifos(messy):
    from vila_tf.inputs import image_formats
    from vila_tf.inputs import items as inputs
    report = image_formats.SkipReport()
    items = _in_thread(lambda: list(inputs.iter_items([str(messy / "**" / "*.png")], report)))
    real = [os.path.realpath(it.source) for it in items]
    assert len(real) == len(set(real))  # each real file once
    assert sorted(os.path.basename(r) for r in real) == ["a.png", "b.png", "e.png"]  # up -> .. is a loop too
    assert {"up", "x", "y"} <= {os.path.basename(p) for p in report.loops}
    assert {os.path.basename(p) for p in report.special} >= {"pipe.png", "sock.png", "zero.png"}


def test_named_fifo_and_socket_are_errors_not_hangs(messy):
    from vila_tf.inputs import items as inputs
    items = list(inputs.iter_items([str(messy / "pipe.png"), str(messy / "sock.png"), str(messy / "zero.png")]))
    loaded = _in_thread(lambda: [inputs.load(it) for it in items], timeout=10)
    assert [it.error for it in loaded] == ["not a regular file (a FIFO): not read",
                                           "not a regular file (a socket): not read",
                                           "not a regular file (a character device): not read"]


def _bytes_read() -> int:
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("rchar:")).split()[1])


def test_huge_file_refused_before_it_is_read(tmp_path):
    from vila_tf.inputs import decode_budget
    from vila_tf.inputs import items as inputs
    big = tmp_path / "big.jpg"
    with open(big, "wb") as f:
        f.write(b"\xff\xd8\xff\xe0")
        f.truncate(10**9)  # 1 GB, sparse: costs no disk
    item = inputs.Item(str(big), path=str(big))
    before = _bytes_read()
    got = inputs.load(item)
    assert decode_budget.cost(item, inputs.DEFAULT_MAX_FILE_BYTES, 50_000_000) == 0
    assert _bytes_read() - before < 1_000_000  # not read (rchar counts every byte read)
    assert got.data is None and got.error.startswith("file of 1.0 GB, more than the 500.0 MB")
    os.truncate(big, 2000)
    assert inputs.load(item).data == b"\xff\xd8\xff\xe0" + bytes(1996)  # the size is the only reason


# --- decode memory (item 10) ------------------------------------------------------------------------

def test_decode_budget_bounds_pixels_held_across_threads():
    from vila_tf.inputs import decode_budget
    budget = decode_budget.DecodeBudget(100)
    held, lock, over = [0], threading.Lock(), []

    def work(cost):
        with budget.hold(cost):
            with lock:
                held[0] += min(cost, 100)
                over.append(held[0])
            time.sleep(0.01)
            with lock:
                held[0] -= min(cost, 100)

    costs = [49, 49, 49, 10, 80, 250, 5, 5, 60, 40] * 3  # 250: more than the budget, runs alone
    threads = [threading.Thread(target=work, args=(c,)) for c in costs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not any(t.is_alive() for t in threads)  # no deadlock, none starved
    assert max(over) <= 100 and budget.peak <= 100 and budget.in_use == 0
    assert budget.peak > 49  # small ones do share it


def test_decode_cost_is_read_from_the_header_before_the_file(tmp_path):
    """Full weight for what is decoded on the host (TIFF) or turned upright (EXIF orientation 6),
    a quarter for what the graph decodes as stored; the bytes count when they are more."""
    from vila_tf.inputs import decode_budget
    from vila_tf.inputs import items as inputs
    im = Image.fromarray(np.zeros((300, 400, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    im.save(tmp_path / "a.tiff")
    im.save(tmp_path / "a.jpg")
    im.save(tmp_path / "r.jpg", exif=exif)
    (tmp_path / "junk.jpg").write_bytes(b"not an image" * 1000)

    def cost(name, upright=True):
        p = str(tmp_path / name)
        return decode_budget.cost(inputs.Item(p, path=p), 10**9, 50_000_000, upright)
    assert cost("a.tiff") == 120_000 and cost("a.jpg") == 30_000 and cost("r.jpg") == 120_000
    assert cost("r.jpg", upright=False) == 30_000  # scored as stored: the graph decodes it
    assert cost("junk.jpg") == 50_000_000  # header unreadable: as much as the pixel limit allows
    data = (tmp_path / "a.tiff").read_bytes()
    assert decode_budget.cost(inputs.Item("<bytes 0>", data), 10**9, 50_000_000) == \
        max(120_000, len(data) // decode_budget.BYTES_PER_PIXEL)


@pytest.mark.slow
def test_decode_memory_of_large_tiffs_stays_within_the_budget(exported, tmp_path):
    """Three 49-megapixel TIFFs, eight decode threads: resident memory grows by about one TIFF's
    decode (1.2-1.6 GB measured), not three (2.1-3.3 GB measured without the budget)."""
    for k in range(3):
        arr = np.random.default_rng(k).integers(0, 256, (7000, 7000, 3), dtype=np.uint8)
        Image.fromarray(arr).save(tmp_path / f"t{k}.tiff")
    script = tmp_path / "peak.py"
    script.write_text(PEAK_RSS)
    r = subprocess.run([sys.executable, str(script), exported["vila_r_tiny"], str(tmp_path)], capture_output=True,
                       text=True, env=env_without_jax(), timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.splitlines()[-1])
    assert got["budget_peak"] == 49_000_000 and all(np.isfinite(got["scores"]))
    assert got["rss_growth"] < 2.0e9, got


PEAK_RSS = """
import json, sys, threading, time
import numpy as np, psutil, vila_tf
m = vila_tf.load(sys.argv[1], max_workers=8)
m.score([np.zeros((8, 8, 3), np.uint8)])  # traced and compiled before measuring
proc, stop = psutil.Process(), threading.Event()
base = peak = proc.memory_info().rss
def sample():
    global peak
    while not stop.is_set():
        peak = max(peak, proc.memory_info().rss)
        time.sleep(0.002)
t = threading.Thread(target=sample)
t.start()
scores = m.score([sys.argv[2]])
stop.set()
t.join()
print(json.dumps({"rss_growth": peak - base, "budget_peak": m.decode_budget.peak, "scores": scores.tolist()}))
"""


def test_model_decodes_within_its_budget(exported, reference, tmp_path):
    import vila_tf
    from vila_tf.inputs import decode_budget
    from vila_tf.inputs import items as inputs
    photos = [_png(60, 80, k) for k in range(8)]
    for k, p in enumerate(photos):
        (tmp_path / f"{k:02d}.png").write_bytes(p)
    first = str(tmp_path / "00.png")
    one = decode_budget.cost(inputs.Item(first, path=first), inputs.DEFAULT_MAX_FILE_BYTES, 50_000_000)
    assert one == 60 * 80 // 4  # a PNG the graph decodes as stored: a quarter of its header's pixels
    m = vila_tf.load(exported["vila_r_tiny"], max_workers=8, decode_budget_pixels=3 * one)
    try:
        got = m.score([str(tmp_path)])
    finally:
        m.close()
    np.testing.assert_allclose(got, reference(photos), atol=2e-6)
    assert one <= m.decode_budget.peak <= 3 * one and m.decode_budget.in_use == 0


# --- the results file: lock, record, refusals (items 2, 3, 4; read-only, folder) --------------------

def test_resume_of_another_command_or_options_is_refused(finished, tmp_path, exported, monkeypatch):
    out = copy_results(finished, tmp_path)
    before = out.read_bytes()
    m = exported["vila_r_tiny"]
    with model_never_loaded(monkeypatch):
        for args, says in [(["caption", m], "holds `score` results, this run is `caption`"),
                           (["zero-shot", m], "holds `score` results, this run is `zero-shot`"),
                           (["score", m, "--format", "jsonl"], "it is csv, this run writes jsonl (--format jsonl): "
                                                               "resume with --format csv"),
                           (["score", m, "--release-exact-orientation"], "--release-exact-orientation"),
                           (["score", exported["vila_p_tiny"]], "this run uses"),
                           (["score", m, "--with-captions"], "--with-captions")]:
            rc, err = cli(*args, tmp_path, "--output", out, "--resume")
            assert rc == 2 and len(err) == 1 and says in err[0] and err[0].startswith("vila-tf: --resume:"), err
    assert out.read_bytes() == before


def test_records_identify_the_model(exported, tmp_path):
    """A SavedModel by the SHA-256 of its fingerprint.pb; a LiteRT export by its variant's recorded
    SHA-256; both without loading anything."""
    import hashlib
    from vila_tf.output import output_file
    from vila_tf.litert import format as litert_format
    got = output_file.model_record(exported["vila_r_tiny"])
    fingerprint = hashlib.sha256(open(os.path.join(exported["vila_r_tiny"], "fingerprint.pb"), "rb").read())
    assert got["identity"] == f"fingerprint.pb sha256 {fingerprint.hexdigest()}" and "VILA-R" in got["kind"]
    assert output_file.model_record(exported["vila_p_tiny"])["identity"] != got["identity"]
    lite = tmp_path / "lite"
    lite.mkdir()
    for variant in ("float32", "int8"):
        (lite / litert_format.model_file(variant)).write_bytes(variant.encode())
    (lite / litert_format.METADATA_FILE).write_text(json.dumps({"format": litert_format.FORMAT, "model_type": "vila_r",
        "variants": {v: {"file": litert_format.model_file(v), "sha256": f"sha-of-{v}"} for v in ("float32", "int8")}}))
    assert output_file.model_record(str(lite))["identity"] == "vila_image_float32.tflite sha256 sha-of-float32"
    assert output_file.model_record(str(lite), "int8")["identity"] == "vila_image_int8.tflite sha256 sha-of-int8"


def test_output_that_is_not_ours_is_never_touched(three, tmp_path, exported, monkeypatch):
    m = exported["vila_r_tiny"]
    photo = three / "p0.png"
    before = photo.read_bytes()
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    with model_never_loaded(monkeypatch):
        for out, says in [(photo, "is also one of the inputs"),
                          (tmp_path, "is a folder: give a file name"),
                          (notes, "exists and is not a results file of vila-tf (it starts with 'my notes')")]:
            rc, err = cli("score", m, photo, "--output", out)
            assert rc == 2 and len(err) == 1 and says in err[0], err
        other = tmp_path / "other.png"
        other.write_bytes(before)
        rc, err = cli("score", m, three, "--output", other)  # a photo that is not an input
        assert rc == 2 and "it is a PNG image): not overwritten" in err[0]
        rc, err = cli("score", m, three, "--contact-sheet", other)
        assert rc == 2 and "is not a contact sheet of vila-tf" in err[0]
    assert photo.read_bytes() == before and other.read_bytes() == before and notes.read_text() == "my notes\n"


def test_read_only_folders_are_found_before_the_model_loads(three, tmp_path, exported, monkeypatch):
    """Root writes anywhere, so the read-only folder is simulated: creating a file in it fails as
    it does for everyone else (EACCES)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    real_open = os.open

    def os_open(path, flags, *a, **k):
        if os.path.dirname(os.path.abspath(path)) == str(ro) and flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR):
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, flags, *a, **k)
    monkeypatch.setattr(os, "open", os_open)
    ro.chmod(0o555)
    try:
        with model_never_loaded(monkeypatch):
            rc, err = cli("score", exported["vila_r_tiny"], three, "--output", ro / "s.csv")
            assert rc == 2 and err == [f"vila-tf: cannot write --output {ro / 's.csv'}: Permission denied (in {ro}): "
                                       "choose a folder you can write to"]
            rc, err = cli("score", exported["vila_r_tiny"], three, "--contact-sheet", ro / "sheet.png",
                          "--output", tmp_path / "s.csv")
            assert rc == 2 and len(err) == 1 and "cannot write --contact-sheet" in err[0]
    finally:
        ro.chmod(0o755)
    assert not (tmp_path / "s.csv").exists()  # the refused run left nothing behind


def test_a_second_run_on_a_locked_output_is_refused_naming_the_first(three, tmp_path, exported, monkeypatch):
    out = tmp_path / "s.csv"
    out.write_text("input,score,error\n")
    with open(out, "r+") as held, model_never_loaded(monkeypatch):
        fcntl.flock(held, fcntl.LOCK_EX)  # as a run writing it holds it
        for extra in ([], ["--resume"]):
            rc, err = cli("score", exported["vila_r_tiny"], three, "--output", out, *extra)
            assert rc == 2 and err == [f"vila-tf: --output {out} is being written by another vila-tf run "
                                       f"(process {os.getpid()}): wait for it to finish (then --resume continues it), "
                                       "or choose another --output"]
    assert out.read_text() == "input,score,error\n"


# `vila-tf score ...` in a fresh process whose reads of one named photo are patched (scripts below).
PATCHED_RUN = """
import os, sys, threading, time
from vila_tf.inputs import items as inputs
real = inputs.load
def load(item, *a, **k):
    if item.source.endswith(os.environ["PATCHED_NAME"]):
        %s
    return real(item, *a, **k)
inputs.load = load
from vila_tf.cli import main as cli
sys.argv = ["vila-tf"] + sys.argv[1:]
sys.exit(cli.main())
"""
SLOW_READ = "while not os.path.exists(os.environ['GO']): time.sleep(0.02)"  # a slow disk: waits for the test
HUNG_READ = "threading.Event().wait()"  # a hung network mount: the read never returns


def start_patched_run(read, name, model, photos, out, rows, env=None, **popen):
    """Starts `vila-tf score MODEL PHOTOS --output OUT --batch-size 1` with the read of the photo
    `name` patched (`read`), and returns it once OUT holds its header and `rows` rows."""
    proc = subprocess.Popen([sys.executable, "-c", PATCHED_RUN % read, "score", model, photos, "--output", out,
                             "--batch-size", "1"], stderr=subprocess.PIPE, text=True,
                            env=dict(env or env_without_jax(), PATCHED_NAME=name), **popen)
    deadline = time.time() + 300
    while proc.poll() is None and not (out.exists() and out.read_text().count("\n") > rows) and time.time() < deadline:
        time.sleep(0.02)
    return proc


@pytest.mark.long
def test_two_runs_at_once_never_interleave(exported, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    names = [f"{k:03d}.png" for k in range(6)] + ["wait.png"]
    for k, name in enumerate(names):
        (photos / name).write_bytes(_png(30 + k, 40, k))
    out, go = tmp_path / "s.csv", tmp_path / "go"
    # Six rows written: the first run now waits on its last read, holding the file.
    first = start_patched_run(SLOW_READ, "wait.png", exported["vila_r_tiny"], photos, out, 6,
                              env=dict(env_without_jax(), GO=str(go)))
    assert first.poll() is None, first.stderr.read()
    rc, err = cli("score", exported["vila_r_tiny"], photos, "--output", out)
    assert rc == 2 and err == [f"vila-tf: --output {out} is being written by another vila-tf run (process "
                               f"{first.pid}): wait for it to finish (then --resume continues it), or choose another "
                               "--output"]
    go.touch()
    assert first.wait(300) == 0, first.stderr.read()
    rows = rows_of(out)  # the first run's file, untouched by the second: every input once, in order
    assert [os.path.basename(r["input"]) for r in rows] == names
    assert all(np.isfinite(float(r["score"])) and r["error"] == "" for r in rows)


def test_resume_of_a_damaged_file_keeps_each_input_once(finished, three, tmp_path, exported):
    """What two runs of an older version or a machine crash leave: NUL bytes, rows twice, a row
    cut short mid-file. --resume drops the damage and scores the lost inputs once more."""
    out = copy_results(finished, tmp_path)
    header, r0, r1, r2 = out.read_text().splitlines(keepends=True)
    out.write_bytes((header + r0 + r1 + r0 + "\0" * 4096 + r1[:9] + "\n" + r1 + r2[:7]).encode())
    rc, err = cli("score", exported["vila_r_tiny"], three, "--output", out, "--resume")
    assert rc == 0, err
    assert any("dropped 1 damaged row" in e and "2 repeated rows" in e for e in err), err
    assert out.read_text() == header + r0 + r1 + r2  # exactly the uninterrupted run's file


def test_incompatible_tensorflow_is_one_line(exported, tmp_path, three):
    model = tmp_path / "model"
    shutil.copytree(exported["vila_r_tiny"], model)
    meta_path = model / "assets.extra" / "vila_tf.json"
    meta = json.loads(meta_path.read_text())
    meta["tensorflow_support"]["minimum"] = "9.0"
    meta_path.write_text(json.dumps(meta))
    rc, err = cli("score", model, three)
    assert rc == 2 and len(err) == 1 and err[0].startswith("vila-tf: cannot load model: ") and "9.0" in err[0]


def test_messy_folder_through_the_command(exported, messy, tmp_path):
    """The folder with loops and FIFOs, plus names that are not UTF-8, hold line breaks or look
    like formulas, a 1 GB file and a broken AVIF, written to CSV, then --resume on the finished
    file: every real image once, readable names, nothing scored twice."""
    for k, name in enumerate([LATIN1, "x\ry.png", "two\nlines.png", "=1+1.png"]):
        (messy / name).write_bytes(_png(24, 24, 10 + k))
    with open(messy / "big.jpg", "wb") as f:
        f.truncate(10**9)
    (messy / "broken.avif").write_bytes(b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf" + bytes(40))
    out = tmp_path / "s.csv"
    args = ["score", exported["vila_r_tiny"], messy, "--output", out, "--contact-sheet", tmp_path / "sheet.png"]
    rc, err = _in_thread(lambda: cli(*args), timeout=300)
    assert rc == 1, err  # two inputs failed: the huge file, the broken AVIF
    rows = rows_of(out)
    names = [r["input"][len(str(messy)) + 1:] for r in rows]
    assert sorted(names) == sorted(["=1+1.png", "a.png", "big.jpg", "broken.avif", "caf\\xe9.png", "ext/e.png",
                                    "sub/b.png", "two\nlines.png", "x\ry.png"])
    errors = {n: r["error"] for n, r in zip(names, rows) if r["error"]}
    assert errors == {"big.jpg": "file of 1.0 GB, more than the 500.0 MB an image may have (max_file_bytes; "
                                 "vila-tf --max-file-size): not read",
                      "broken.avif": "AVIF image that cannot be read: its header is broken or not one Pillow reads"}
    assert any("not a regular file" in e for e in err) and any("a second time" in e for e in err)
    assert Image.open(tmp_path / "sheet.png").info["Software"] == "vila-tf contact sheet"
    before = out.read_bytes()
    rc, err = cli(*args, "--resume")
    assert rc == 1 and any("resuming" in e and "9 rows already there" in e for e in err), err
    assert out.read_bytes() == before  # its own file read back: nothing scored again


# --- errors a user can act on: disk full, Ctrl-C with a hung read -----------------------------------

@pytest.mark.long
def test_disk_full_is_one_line_and_resume_continues(exported, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    arrays = [_png(30 + k, 40, k) for k in range(16)]
    for k, p in enumerate(arrays):
        (photos / f"{k:03d}.png").write_bytes(p)
    out = tmp_path / "s.csv"
    limit = 1000  # bytes per file: the record, the header and some rows fit, then the kernel refuses (EFBIG)
    cmd = [VILA_TF, "score", exported["vila_r_tiny"], photos, "--output", out, "--batch-size", "4"]
    env = env_without_jax()
    env.pop("TF_XLA_FLAGS", None)  # no compilation cache: its files would hit the limit too
    small_files = (f"import os, resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
                   "os.execv(sys.argv[1], sys.argv[1:])")
    r = subprocess.run([sys.executable, "-c", small_files, *map(str, cmd)], capture_output=True, text=True, env=env,
                       timeout=300)
    ours = [line for line in r.stderr.splitlines() if line.startswith("vila-tf")]
    assert r.returncode == 2 and len(ours) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert ours[0].startswith(f"vila-tf: cannot write {out}: File too large; the ") and \
        ours[0].endswith("rows written before it are kept: free some space, then rerun the same command with "
                         "--resume to continue")
    assert 0 < out.stat().st_size <= limit
    rc, err = cli(*cmd[1:], "--resume")
    assert rc == 0, err
    rows = rows_of(out)  # every input once, in order, the row the full disk cut short repaired
    assert [os.path.basename(x["input"]) for x in rows] == [f"{k:03d}.png" for k in range(16)]
    assert all(np.isfinite(float(r["score"])) and r["error"] == "" for r in rows)


@pytest.mark.long
def test_ctrl_c_ends_the_run_even_with_a_hung_read(exported, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for k in range(3):
        (photos / f"{k}.png").write_bytes(_png(20, 20, k))
    (photos / "hung.png").write_bytes(_png(20, 20, 9))
    out = tmp_path / "s.csv"
    # The three good photos are written; the fourth read hangs. Ctrl-C as at a terminal: a run started
    # in the background (`make test &`) ignores SIGINT, and its children would inherit that.
    proc = start_patched_run(HUNG_READ, "hung.png", exported["vila_r_tiny"], photos, out, 3,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    try:
        rc = proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("Ctrl-C did not end the run")
    assert rc == 130 and "interrupted" in proc.stderr.read()
    assert [os.path.basename(r["input"]) for r in rows_of(out)] == ["0.png", "1.png", "2.png"]


# --- safety: file modes, messages --------------------------------------------------------------------

def test_atomic_writes_get_the_usual_modes(tmp_path):
    from vila_tf.core.atomic import atomic_dir, atomic_file
    old = os.umask(0o022)
    try:
        with atomic_file(str(tmp_path / "model.sha256")) as f:
            f.write("x")
        with atomic_dir(str(tmp_path / "1")) as d:
            open(os.path.join(d, "saved_model.pb"), "w").close()
    finally:
        os.umask(old)
    assert (tmp_path / "model.sha256").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "1").stat().st_mode & 0o777 == 0o755


def test_broken_avif_header_message_names_no_buffer():
    from vila_tf.inputs import image_formats
    with pytest.raises(image_formats.ImageFormatError) as e:
        image_formats.decode_host_format(b"\x00\x00\x00\x1cftypavif" + bytes(40), "avif", 50_000_000, True)
    assert str(e.value) == "AVIF image that cannot be read: its header is broken or not one Pillow reads"
