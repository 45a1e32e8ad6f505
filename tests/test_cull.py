"""`vila-tf cull` (docs/culling.md) on a generated shoot: bursts with capture times, a single frame,
a RAW file (a DNG the test writes), photos without a capture time, a sidecar a photographer
already wrote and a broken one.

Ground truth: exiftool (a reader nobody here wrote) reads the sidecars back; the photos' bytes and
times; the scores are the SavedModel's own serving_default on the photos' bytes (on the DNG's
preview as exiftool extracts it); the groups are the bursts the test shot; picks and ratings are
recomputed here from the documented rule."""
import argparse
import csv
import hashlib
import io
import json
import os
import pathlib
import shutil
import stat
import subprocess

import numpy as np
import pytest
from PIL import Image

import raw_files
from conftest import build_once, shared_dir, vila_tf_command

pytest.importorskip("pyexiv2")  # the dev extra: `make test` has it
pytest.importorskip("rawpy")
EXIFTOOL = shutil.which("exiftool")
needs_exiftool = pytest.mark.skipif(EXIFTOOL is None, reason="exiftool (apt install libimage-exiftool-perl; "
                                                             ".ci/run installs it) reads the sidecars back")

# The photographer's own sidecar: keywords, darktable's edit history, Lightroom's keyword tree and a
# namespace no tool here knows. Everything but the rating must survive.
PHOTOGRAPHER_XMP = b"""<?xml version="1.0" encoding="UTF-8"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="Adobe XMP Core 7.0-c000 1.000000">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:dc="http://purl.org/dc/elements/1.1/"
    xmlns:lr="http://ns.adobe.com/lightroom/1.0/"
    xmlns:darktable="http://darktable.sf.net/"
    xmlns:studio="http://example.com/studio/1.0/"
   xmp:Rating="2"
   darktable:xmp_version="5"
   darktable:history_end="2"
   studio:Client="Ana &amp; Bo">
   <dc:subject><rdf:Bag><rdf:li>wedding</rdf:li><rdf:li>first dance</rdf:li></rdf:Bag></dc:subject>
   <lr:hierarchicalSubject><rdf:Bag><rdf:li>events|wedding</rdf:li></rdf:Bag></lr:hierarchicalSubject>
   <darktable:history>
    <rdf:Seq>
     <rdf:li darktable:num="0" darktable:operation="exposure" darktable:enabled="1" darktable:params="0000803f"/>
     <rdf:li darktable:num="1" darktable:operation="crop" darktable:enabled="1" darktable:params="cdcccc3d"/>
    </rdf:Seq>
   </darktable:history>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
"""
BROKEN_XMP = PHOTOGRAPHER_XMP[:700]  # cut short: not well-formed XML
# Batches of 4: the bucket the other command tests compile (the XLA cache is shared by the run), not one of its own.
BATCH = ("--batch-size", "4")


def _scene(seed, h=48, w=64):
    """A picture: stripes of a random angle, frequency and two colours (the tiny model's embeddings
    of two such scenes are at most 0.91 alike, of two frames of one scene 0.999)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    angle, freq = rng.uniform(0, np.pi), rng.uniform(0.1, 0.6)
    stripes = (np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * freq) > 0)[..., None]
    return np.where(stripes, rng.uniform(0, 255, 3), rng.uniform(0, 255, 3))


def _frame(scene, seed):
    """One frame of a burst: the scene with a little sensor noise."""
    return (scene + np.random.default_rng(1000 + seed).normal(0, 6, scene.shape)).clip(0, 255).astype(np.uint8)


def _jpeg(pixels, when=None, subsec=None):
    exif = Image.Exif()
    if when:
        ifd = exif.get_ifd(0x8769)
        ifd[0x9003] = when  # DateTimeOriginal
        if subsec:
            ifd[0x9291] = subsec  # SubSecTimeOriginal
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90, exif=exif.tobytes())
    return buf.getvalue()


# (file, scene, capture time, sub-seconds): the shoot, and the groups it must fall into.
SHOT = [("A1.jpg", 0, "10:00:00", "00"), ("A2.jpg", 0, "10:00:00", "20"), ("A3.jpg", 0, "10:00:00", "40"),
        ("A4.jpg", 0, "10:00:00", "60"),
        ("B1.jpg", 1, "10:02:00", "0"), ("B2.jpg", 1, "10:02:00", "3"), ("B3.jpg", 1, "10:02:00", "6"),
        ("C1.jpg", 2, "10:05:00", None),
        ("E1.dng", 3, "10:08:00", "0"), ("E2.jpg", 3, "10:08:00", "5"),
        ("T1.jpg", 4, None, None), ("T2.jpg", 4, None, None), ("T3.jpg", 5, None, None)]
GROUPS = [{"A1.jpg", "A2.jpg", "A3.jpg", "A4.jpg"}, {"B1.jpg", "B2.jpg", "B3.jpg"}, {"C1.jpg"},
          {"E1.dng", "E2.jpg"}, {"T1.jpg", "T2.jpg"}, {"T3.jpg"}]


def write_shoot(folder):
    os.makedirs(folder, exist_ok=True)
    scenes = {s: _scene(s) for s in {s for _, s, _, _ in SHOT}}
    for k, (name, scene, when, subsec) in enumerate(SHOT):
        when = f"2024:05:01 {when}" if when else None
        pixels = _frame(scenes[scene], k)
        if name.endswith(".dng"):  # the camera's preview inside, as LibRaw and exiftool read it
            data = raw_files.dng(_jpeg(pixels), (pixels.shape[1], pixels.shape[0]), captured=when, subsec=subsec)
        else:
            data = _jpeg(pixels, when, subsec)
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)


def _state(folder):
    """Every photo's bytes (sha256) and modification time."""
    out = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        with open(path, "rb") as f:
            out[name] = [hashlib.sha256(f.read()).hexdigest(), os.stat(path).st_mtime_ns]
    return out


def _rows(path):
    with open(path, encoding="utf-8", newline="") as f:
        return {os.path.basename(r["input"]): r for r in csv.DictReader(f)}


def _exiftool(*paths):
    r = subprocess.run([EXIFTOOL, "-j", "-n", "-G1", "-struct", *map(str, paths)], capture_output=True, text=True,
                       timeout=120)
    return {os.path.basename(d["SourceFile"]): d for d in json.loads(r.stdout)}


def _expected_ratings(scores: dict, picks: set) -> dict:
    """docs/culling.md's rule, written again here: percentile among the shoot's scores (ties half),
    stars at 0.1 / 0.3 / 0.7 / 0.9, reject below 0.1 unless the group's pick."""
    names = list(scores)
    out = {}
    for n in names:
        others = [scores[m] for m in names if m != n]
        q = (sum(s < scores[n] for s in others) + 0.5 * sum(s == scores[n] for s in others)) / len(others)
        stars = 1 + sum(q >= c for c in (0.1, 0.3, 0.7, 0.9))
        out[n] = -1 if q < 0.1 and n not in picks else stars
    return out


@pytest.fixture(scope="module")
def culled(tmp_path_factory, exported, worker_id):
    """The shoot culled twice by the SavedModel (darktable sidecars, an HTML report), once per test
    run: the xdist workers share it (`build_once`)."""
    root = shared_dir(tmp_path_factory, worker_id) / "cull"

    def build(folder):
        folder = pathlib.Path(folder)
        shoot = folder / "shoot"
        write_shoot(shoot)
        (shoot / "A2.jpg.xmp").write_bytes(PHOTOGRAPHER_XMP)
        (shoot / "B1.jpg.xmp").write_bytes(BROKEN_XMP)
        states = {"before": _state(shoot)}
        photographer = _exiftool(shoot / "A2.jpg.xmp")["A2.jpg.xmp"] if EXIFTOOL else None
        args = ["cull", exported["vila_r_tiny"], shoot, *BATCH, "-o", folder / "out" / "cull.csv", "--report",
                folder / "out" / "report.html"]
        runs = []
        for state in ("after_first", "after_second"):
            r = vila_tf_command(*args)
            runs.append({"returncode": r.returncode, "stderr": r.stderr})
            states[state] = _state(shoot)
        (folder / "runs.json").write_text(json.dumps({"runs": runs, "states": states, "photographer": photographer}))

    build_once(str(root), build)
    saved = json.loads((root / "runs.json").read_text())
    first, second = (argparse.Namespace(**r) for r in saved["runs"])
    return dict(root=root, shoot=root / "shoot", first=first, second=second, photographer=saved["photographer"],
                rows=_rows(root / "out" / "cull.csv"), **saved["states"])


def test_groups_picks_ratings_and_scores(culled, reference):
    r, rows = culled["first"], culled["rows"]
    assert r.returncode == 1, r.stderr  # B1's broken sidecar was left untouched, and said so
    assert "Traceback" not in r.stderr
    assert set(rows) == {name for name, *_ in SHOT}
    groups = {}
    for name, row in rows.items():
        groups.setdefault(row["group"], set()).add(name)
    assert sorted(groups.values(), key=sorted) == sorted(GROUPS, key=sorted)
    # The scores are the SavedModel's own on each photo's bytes (the DNG: its preview, as exiftool extracts it).
    shoot = culled["shoot"]
    data = [(shoot / n).read_bytes() if not n.endswith(".dng") else
            subprocess.run([EXIFTOOL, "-b", "-PreviewImage", str(shoot / n)], capture_output=True).stdout
            for n in rows] if EXIFTOOL else None
    if data is not None:
        np.testing.assert_allclose([float(x["score"]) for x in rows.values()], reference(data), atol=2e-5)
    scores = {n: float(x["score"]) for n, x in rows.items()}
    picks = {max(g, key=lambda n: scores[n]) for g in GROUPS}
    assert {n for n, x in rows.items() if x["pick"] == "yes"} == picks
    assert {n: int(x["rating"]) for n, x in rows.items()} == _expected_ratings(scores, picks)
    assert rows["A1.jpg"]["captured"] == "2024-05-01T10:00:00.00" and rows["T1.jpg"]["captured"] == ""
    assert rows["E1.dng"]["captured"] == "2024-05-01T10:08:00.0"
    for name, row in rows.items():  # the reason: the decision, the standing, the attributes, the caption
        assert ("pick of" in row["reason"] or "single frame" in row["reason"]) == (name in picks), row["reason"]
        assert "strongest: " in row["reason"] and "weakest: " in row["reason"] and row["reason"].count('"') == 2
    assert "13 photos in 6 groups: 6 picks" in r.stderr


@needs_exiftool
def test_sidecars_read_back_by_exiftool_keep_what_they_held(culled):
    shoot, rows = culled["shoot"], culled["rows"]
    read = _exiftool(*sorted(shoot.glob("*.xmp")))
    assert set(read) == {n + ".xmp" for n in rows}
    for name, row in rows.items():
        if name == "B1.jpg":
            continue
        tags = read[name + ".xmp"]
        assert tags["XMP-xmp:Rating"] == int(row["rating"]), name
        assert tags["XMP-digiKam:PickLabel"] == (3 if row["pick"] == "yes" else 1 if row["rating"] == "-1" else 0)
        assert tags["XMP-vilatf:Reason"] == row["reason"] and str(tags["XMP-vilatf:Group"]) == row["group"]
    # The photographer's sidecar: every tag it held is still there with its value, but the rating.
    now = read["A2.jpg.xmp"]
    ours = {"XMP-xmp:Rating", "XMP-digiKam:PickLabel"}
    kept = {k: v for k, v in culled["photographer"].items() if k not in ours and not k.startswith(("System:", "File:", "ExifTool:"))}
    assert {k: now.get(k) for k in kept} == kept
    assert now["XMP-dc:Subject"] == ["wedding", "first dance"] and len(now["XMP-darktable:History"]) == 2
    # The broken one: left as it was, reported in one line and in its row.
    assert (shoot / "B1.jpg.xmp").read_bytes() == BROKEN_XMP
    assert rows["B1.jpg"]["sidecar"].startswith("not written: cannot be parsed")
    assert [line for line in culled["first"].stderr.splitlines() if "B1.jpg.xmp" in line] == [
        f"vila-tf: {shoot}/B1.jpg.xmp cannot be parsed: {rows['B1.jpg']['sidecar'][len('not written: cannot be parsed: '):]}"]


def test_photos_untouched_and_a_second_run_identical(culled):
    photos = lambda state: {k: v for k, v in state.items() if not k.endswith(".xmp")}  # noqa: E731
    assert photos(culled["before"]) == photos(culled["after_first"]) == photos(culled["after_second"])
    assert culled["after_first"] == culled["after_second"]  # sidecars: not even rewritten (same bytes, same time)
    assert culled["second"].returncode == 1 and "sidecars: 0 written, 12 unchanged, 1 left untouched" in \
        culled["second"].stderr
    report = (culled["root"] / "out" / "report.html").read_text()
    assert report.count("<section>") == 6 and report.count('class="badge">PICK') == 6


def test_litert_same_groups_and_rule_reason_without_caption(culled, litert_exported):
    """The LiteRT export: the same groups, picks and ratings by its own scores, the reasons without
    the caption (it has no caption head); --dry-run writes no sidecar."""
    out = culled["root"] / "lite" / "cull.csv"
    before = _state(culled["shoot"])
    r = vila_tf_command("cull", litert_exported["vila_r_tiny"], culled["shoot"], "--dry-run", "-o", out)
    assert r.returncode == 0, r.stderr
    assert _state(culled["shoot"]) == before and "no sidecar written (--dry-run)" in r.stderr
    lite, saved = _rows(out), culled["rows"]
    assert {n: x["group"] for n, x in lite.items()} == {n: x["group"] for n, x in saved.items()}
    scores = {n: float(x["score"]) for n, x in lite.items()}
    picks = {max(g, key=lambda n: scores[n]) for g in GROUPS}
    assert {n for n, x in lite.items() if x["pick"] == "yes"} == picks
    assert {n: int(x["rating"]) for n, x in lite.items()} == _expected_ratings(scores, picks)
    for n, x in lite.items():
        assert '"' not in x["reason"] and "strongest: " in x["reason"]
        assert x["sidecar"] == saved[n]["sidecar"] or n == "B1.jpg"  # where each would go
        if x["pick"] == saved[n]["pick"] == "yes":
            assert saved[n]["reason"].split("; ")[-1].startswith('"')


def test_resume_scores_only_the_photos_left(culled):
    """An interrupted run (its scores file cut after 5 rows and half a sixth) continued with
    --resume: the photos scored already are not scored again, and the decisions are the same."""
    first = culled["root"] / "out"
    out = culled["root"] / "resumed"
    out.mkdir()
    lines = (first / "cull.scores.jsonl").read_bytes().splitlines(keepends=True)
    (out / "cull.scores.jsonl").write_bytes(b"".join(lines[:5]) + lines[5][:40])
    shutil.copy(first / "cull.scores.jsonl.vila-tf.json", out / "cull.scores.jsonl.vila-tf.json")
    r = vila_tf_command("cull", _model(culled), culled["shoot"], *BATCH, "--resume", "--dry-run", "-o", out / "cull.csv")
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stderr and "5 photos scored already" in r.stderr
    again = _rows(out / "cull.csv")
    for n, row in culled["rows"].items():
        for key in ("group", "score", "rating", "pick", "reason", "captured"):
            assert again[n][key] == row[key], (n, key)


def _model(culled):
    with open(culled["root"] / "out" / "cull.scores.jsonl.vila-tf.json") as f:
        return json.load(f)["model"]["path"]


def test_embeddings_of_vila_tf_embed_are_used_not_computed(culled, monkeypatch):
    from vila_tf.core import model as model_lib
    model, shoot, root = _model(culled), culled["shoot"], culled["root"]
    emb = root / "emb" / "emb.jsonl"
    assert vila_tf_command("embed", model, shoot, *BATCH, "-o", emb).returncode == 0
    ran = []
    original = model_lib.Model._values

    def spy(self, run, pixels):
        ran.extend(self._signature(t) for t in run)
        return original(self, run, pixels)
    monkeypatch.setattr(model_lib.Model, "_values", spy)
    r = vila_tf_command("cull", model, shoot, *BATCH, "--embeddings", emb, "--dry-run", "-o", root / "emb" / "cull.csv")
    assert r.returncode == 0, r.stderr
    assert ran and "image_embedding_pixels" not in ran
    assert {n: x["group"] for n, x in _rows(root / "emb" / "cull.csv").items()} == \
        {n: x["group"] for n, x in culled["rows"].items()}
    # Another model's embeddings, or a file lacking photos: refused in one line before any work.
    record = json.loads((root / "emb" / "emb.jsonl.vila-tf.json").read_text())
    record["model"]["identity"] = "fingerprint.pb sha256 0000"
    (root / "emb" / "other.jsonl").write_bytes(emb.read_bytes())
    (root / "emb" / "other.jsonl.vila-tf.json").write_text(json.dumps(record))
    (root / "emb" / "part.jsonl").write_bytes(b"".join(emb.read_bytes().splitlines(keepends=True)[:3]))
    for name, says in (("other.jsonl", "not by this model"), ("part.jsonl", "has no row for 10 of the 13 photos")):
        r = vila_tf_command("cull", model, shoot, "--embeddings", root / "emb" / name, "--dry-run")
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and says in r.stderr, r.stderr


def test_lightroom_names_and_sidecar_dir(tmp_path, exported):
    """`--sidecars lightroom`: NAME.xmp, under --sidecar-dir at the photo's path; a RAW file and the
    JPEG the camera saved beside it (named alike) share one: the RAW's."""
    shoot = tmp_path / "card"
    shoot.mkdir()
    pixels = _frame(_scene(7), 0)
    (shoot / "IMG_1.dng").write_bytes(raw_files.dng(_jpeg(pixels), (64, 48), captured="2024:05:01 12:00:00"))
    (shoot / "IMG_1.jpg").write_bytes(_jpeg(pixels, "2024:05:01 12:00:00"))
    side = tmp_path / "sidecars"
    r = vila_tf_command("cull", exported["vila_r_tiny"], shoot, *BATCH, "--sidecars", "lightroom", "--sidecar-dir", side,
                        "-o", tmp_path / "cull.csv", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = _rows(tmp_path / "cull.csv")
    assert rows["IMG_1.dng"]["sidecar"] == os.path.join(str(side), "card", "IMG_1.xmp")
    assert f"not written: the sidecar of {shoot}/IMG_1.dng, named alike" in rows["IMG_1.jpg"]["sidecar"]
    assert sorted(os.listdir(side / "card")) == ["IMG_1.xmp"] and sorted(os.listdir(shoot)) == ["IMG_1.dng", "IMG_1.jpg"]
    if EXIFTOOL:
        assert _exiftool(side / "card" / "IMG_1.xmp")["IMG_1.xmp"]["XMP-xmp:Rating"] == int(rows["IMG_1.dng"]["rating"])


def test_refusals_before_any_work(tmp_path, exported, monkeypatch):
    """Every option honoured or refused in one line (exit 2) before the model loads; a read-only
    photo folder is found before anything is scored."""
    shoot = tmp_path / "shoot"
    shoot.mkdir()
    (shoot / "a.jpg").write_bytes(_jpeg(_frame(_scene(1), 0)))
    (tmp_path / "theirs.csv").write_text("name,stars\na.jpg,5\n")
    model = exported["vila_r_tiny"]
    cases = [(["-o", tmp_path / "c.txt"], "cull writes CSV"),
             (["--report", tmp_path / "r.jpg"], "give a name ending in .html"),
             (["-o", tmp_path / "theirs.csv"], "is not a file vila-tf cull wrote"),
             (["--resume"], "--resume needs --output"),
             (["--burst-similarity", "2"], "a cosine similarity"),
             (["--reject-below", "-0.5"], "--reject-below"),
             (["--sidecar-dir", tmp_path / "theirs.csv" / "x"], "cannot write sidecars under --sidecar-dir")]
    for extra, says in cases:
        r = vila_tf_command("cull", model, shoot, *extra)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and says in r.stderr, (extra, r.stderr)
    assert (tmp_path / "theirs.csv").read_text() == "name,stars\na.jpg,5\n"
    # A read-only folder (root may write anywhere: the kernel's refusal is played for it).
    os.chmod(shoot, 0o555)
    try:
        if os.geteuid() == 0:
            import tempfile
            real = tempfile.mkstemp

            def mkstemp(*a, dir=None, **k):
                if dir and not os.stat(dir).st_mode & stat.S_IWUSR:
                    raise PermissionError(13, "Permission denied")
                return real(*a, dir=dir, **k)
            monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
        r = vila_tf_command("cull", model, shoot, "-o", tmp_path / "out" / "cull.csv")
    finally:
        os.chmod(shoot, 0o755)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "cannot write sidecars in" in r.stderr and "--sidecar-dir" in r.stderr
    assert not (tmp_path / "out" / "cull.scores.jsonl").exists() and sorted(os.listdir(shoot)) == ["a.jpg"]
