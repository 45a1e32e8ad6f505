"""The `vila-tf` console script, run as a user runs it (subprocess, where `import jax` fails)."""
import csv
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import env_without_jax

VILA_TF = os.path.join(os.path.dirname(sys.executable), "vila-tf")


def run(*args):
    return subprocess.run([VILA_TF, *map(str, args)], capture_output=True, text=True, env=env_without_jax(),
                          timeout=600)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("shots")
    rng = np.random.default_rng(0)
    for i in range(6):
        arr = (rng.uniform(0, 1, (90 + 10 * i, 120, 3)) * 255).astype(np.uint8)
        Image.fromarray(arr).save(d / f"img{i}.{'png' if i % 2 else 'jpg'}")
    (d / "broken.jpg").write_bytes((d / "img0.jpg").read_bytes()[:300])
    (d / "notes.txt").write_text("not an image: skipped by extension")
    return d


@pytest.fixture(scope="module")
def expected_scores(references, folder):
    """{file: score} by the reference path (tests/reference.py), not by vila_tf."""
    files = sorted(p for p in os.listdir(folder) if p.startswith("img"))
    scores = references["vila_r_tiny"].score([(folder / f).read_bytes() for f in files])
    return {f: float(s) for f, s in zip(files, scores)}


def test_score_csv_with_a_corrupt_file(exported, folder, expected_scores):
    r = run("score", exported["vila_r_tiny"], folder, "--format", "csv")
    assert r.returncode == 1, r.stderr  # some inputs failed
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert [os.path.basename(x["input"]) for x in rows] == sorted(["broken.jpg"] + list(expected_scores))
    for row in rows:
        name = os.path.basename(row["input"])
        if name == "broken.jpg":
            assert row["score"] == "" and "JPEG" in row["error"]
        else:
            assert abs(float(row["score"]) - expected_scores[name]) < 1e-5 and row["error"] == ""
    assert "broken.jpg" in r.stderr and "1 of 7 inputs failed" in r.stderr


def test_all_good_exit_0_jsonl_and_output_file(exported, folder, expected_scores, tmp_path):
    out = tmp_path / "scores.jsonl"
    r = run("score", exported["vila_r_tiny"], folder / "img*.png", folder / "img0.jpg", "--format", "jsonl",
            "--output", out, "--batch-size", "2", "--progress")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [os.path.basename(x["input"]) for x in rows] == ["img1.png", "img3.png", "img5.png", "img0.jpg"]
    for x in rows:
        assert abs(x["score"] - expected_scores[os.path.basename(x["input"])]) < 1e-5
    assert "score [" in r.stderr and "4/4" in r.stderr  # the progress bar


def test_table_format(exported, folder, references):
    r = run("zero-shot", exported["vila_p_tiny"], folder / "img1.png", "--format", "table")
    assert r.returncode == 0, r.stderr
    header, row = r.stdout.splitlines()
    assert header.split() == ["input", "score"] and row.split()[0].endswith("img1.png")
    [want] = references["vila_p_tiny"].zero_shot([(folder / "img1.png").read_bytes()])
    assert float(row.split()[1]) == pytest.approx(float(want), abs=1e-5)


def test_caption_and_embed(exported, folder, references):
    """The caption is the reference's (caption_pixels on the release's pixels, detokenized by the
    Python SentencePiece library); the embeddings are image_embedding_pixels' to JSON's 7 decimals."""
    ref = references["vila_r_tiny"]
    photos = [folder / "img1.png", folder / "img2.jpg", folder / "img3.png"]
    r = run("caption", exported["vila_r_tiny"], *photos, "--format", "jsonl")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [x["input"] for x in rows] == [str(p) for p in photos]
    assert [x["caption"] for x in rows] == ref.caption([p.read_bytes() for p in photos])
    r = run("embed", exported["vila_r_tiny"], photos[0], photos[2])
    assert r.returncode == 0, r.stderr
    embs = np.array([json.loads(line)["embedding"] for line in r.stdout.splitlines()])
    np.testing.assert_allclose(embs, ref.image_embedding([photos[0].read_bytes(), photos[2].read_bytes()]),
                               atol=1e-6)


def test_contact_sheet(exported, folder, tmp_path):
    from vila_tf import contact_sheet
    sheet = tmp_path / "sheet.png"
    r = run("score", exported["vila_r_tiny"], folder, "--contact-sheet", sheet, "--with-captions", "--format", "csv")
    assert r.returncode == 1  # the corrupt file is still reported
    img = Image.open(sheet)
    assert img.format == "PNG" and img.size == contact_sheet.sheet_size(6, with_captions=True)
    assert "caption" in r.stdout.splitlines()[0]
    assert np.asarray(img).std() > 10  # thumbnails were drawn, not a blank page


def test_usage_and_model_errors(exported, tmp_path):
    r = run("score", tmp_path, "x.jpg")
    assert r.returncode == 2 and "cannot load model" in r.stderr
    r = run("frobnicate", exported["vila_r_tiny"])
    assert r.returncode == 2 and "invalid choice" in r.stderr
    r = run("score")
    assert r.returncode == 2
    r = run("score", exported["vila_r_tiny"], tmp_path / "nothing*.jpg")
    assert r.returncode == 1 and "pattern matches no files" in r.stderr


@pytest.mark.parametrize("command", ["score", "zero-shot", "caption", "embed", "info"])
def test_help(command):
    r = run(command, "--help")
    assert r.returncode == 0 and "usage: vila-tf " + command in r.stdout
    if command != "info":  # no device is set by default: TensorFlow places the model (a GPU when it sees one)
        assert "--device" in r.stdout and "TensorFlow's placement: its first GPU" in " ".join(r.stdout.split())


def test_info(exported):
    r = run("info", exported["vila_r_tiny"])
    assert r.returncode == 0, r.stderr
    assert "VILA-R" in r.stdout and "serving_default(image_bytes" in r.stdout and "vocab_size=1000" in r.stdout
