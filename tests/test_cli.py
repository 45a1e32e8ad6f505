"""The `vila-tf` commands. The first test runs the installed console script as a user does (a fresh
process in which `import jax` fails); the others call its entry point in this process
(`conftest.vila_tf_command`), which spares each command the 4-5 s a new process spends importing
TensorFlow."""
import csv
import io
import json
import os
import shlex
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import env_without_jax, vila_tf_command as run

VILA_TF = os.path.join(os.path.dirname(sys.executable), "vila-tf")
ATTRIBUTES = ("image", "lighting", "content", "background", "foreground", "composition")


def run_installed(*args):
    """The console script in a fresh process, as a user's terminal runs it (no TF_CPP_MIN_LOG_LEVEL)."""
    env = env_without_jax()
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return subprocess.run([VILA_TF, *map(str, args)], capture_output=True, text=True, env=env, timeout=600)


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
    r = run_installed("score", exported["vila_r_tiny"], folder, "--format", "csv")
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
    # A quiet terminal: vila-tf's own lines only, none of TensorFlow's native start-up log.
    assert all(line.startswith("vila-tf") for line in r.stderr.splitlines() if line.strip()), r.stderr


def test_all_good_exit_0_jsonl_and_output_file(exported, folder, expected_scores, tmp_path):
    out = tmp_path / "scores.jsonl"
    r = run("score", exported["vila_r_tiny"], folder / "img*.png", folder / "img0.jpg", "--format", "jsonl",
            "--output", out, "--batch-size", "2", "--progress")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [os.path.basename(x["input"]) for x in rows] == ["img1.png", "img3.png", "img5.png", "img0.jpg"]
    for x in rows:
        assert abs(x["score"] - expected_scores[os.path.basename(x["input"])]) < 1e-5
    assert "score:" in r.stderr and "4/4" in r.stderr  # the progress bar


def test_table_format(exported, folder, references):
    r = run("zero-shot", exported["vila_p_tiny"], folder / "img1.png", "--format", "table")
    assert r.returncode == 0, r.stderr
    header, row = r.stdout.splitlines()
    assert header.split() == ["input", "score"] + list(ATTRIBUTES) and row.split()[0].endswith("img1.png")
    [want] = references["vila_p_tiny"].zero_shot([(folder / "img1.png").read_bytes()])
    assert float(row.split()[1]) == pytest.approx(float(want), abs=1e-5)
    assert all(0.0 < float(v) < 1.0 for v in row.split()[2:])


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
    from vila_tf.cli import contact_sheet
    sheet = tmp_path / "sheet.png"
    r = run("score", exported["vila_r_tiny"], folder, "--contact-sheet", sheet, "--with-captions", "--format", "csv")
    assert r.returncode == 1  # the corrupt file is still reported
    img = Image.open(sheet)
    # one bar per attribute under each score: the caption and the attributes explain it
    assert img.format == "PNG" and img.size == contact_sheet.sheet_size(6, with_captions=True, attribute_rows=6)
    assert r.stdout.splitlines()[0] == ",".join(["input", "score", "caption", *ATTRIBUTES, "error"])
    assert np.asarray(img).std() > 10  # thumbnails were drawn, not a blank page


@pytest.fixture(scope="module")
def expected_zero_shot(references, folder):
    """The good images' zero-shot scores by the reference path (tests/reference.py): the release's
    score and attributes, and two pairs of your own with their mean."""
    files = sorted(str(folder / p) for p in os.listdir(folder) if p.startswith("img"))
    ref = references["vila_p_tiny"]
    encoded = [open(f, "rb").read() for f in files]
    attributes, own = ref.zero_shot_attributes(encoded), ref.pair_scores(encoded, [p.split("|") for p in OWN_PAIRS])
    return files, (ref.zero_shot(encoded), attributes), (own.mean(1), own)


OWN_PAIRS = ["sharp photo|blurry photo", "warm light|cold light"]


def _rows_by_input(text):
    return {os.path.basename(r["input"]): r for r in csv.DictReader(io.StringIO(text))}


def test_zero_shot_attribute_and_prompt_columns(exported, folder, expected_zero_shot):
    files, attributes, own = expected_zero_shot
    r = run("zero-shot", exported["vila_p_tiny"], folder, "--format", "csv")
    assert r.returncode == 1, r.stderr  # broken.jpg
    assert r.stdout.splitlines()[0] == ",".join(["input", "score", *ATTRIBUTES, "error"])
    rows = _rows_by_input(r.stdout)
    assert rows["broken.jpg"]["image"] == "" and "JPEG" in rows["broken.jpg"]["error"]
    for i, f in enumerate(files):
        row = rows[os.path.basename(f)]
        assert float(row["score"]) == pytest.approx(float(attributes[0][i]), abs=1e-5)
        assert [float(row[a]) for a in ATTRIBUTES] == pytest.approx(attributes[1][i].tolist(), abs=1e-5)
    r = run("zero-shot", exported["vila_p_tiny"], *files, "--prompt", OWN_PAIRS[0], "--prompt", OWN_PAIRS[1],
            "--format", "jsonl")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert list(rows[0]) == ["input", "score", *OWN_PAIRS]
    for i, row in enumerate(rows):
        assert row["score"] == pytest.approx(float(own[0][i]), abs=1e-5)
        assert [row[p] for p in OWN_PAIRS] == pytest.approx(own[1][i].tolist(), abs=1e-5)


def test_zero_shot_resume_and_sheet_with_prompts(exported, folder, expected_zero_shot, tmp_path):
    """--resume continues a --prompt run (its contact sheet draws the kept rows' bars too) and
    refuses a file written with other pairs."""
    from vila_tf.cli import contact_sheet
    files, _, own = expected_zero_shot
    out, sheet = tmp_path / "zs.jsonl", tmp_path / "zs.png"
    prompts = ["--prompt", OWN_PAIRS[0], "--prompt", OWN_PAIRS[1]]
    assert run("zero-shot", exported["vila_p_tiny"], *files[:2], *prompts, "--output", out).returncode == 0
    r = run("zero-shot", exported["vila_p_tiny"], *files, *prompts, "--output", out, "--resume",
            "--contact-sheet", sheet)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [x["input"] for x in rows] == files
    np.testing.assert_allclose([[x[p] for p in OWN_PAIRS] for x in rows], own[1], atol=1e-5)
    assert Image.open(sheet).size == contact_sheet.sheet_size(len(files), False, attribute_rows=2)
    # a run with other pairs cannot continue this file (checked in-process: the CLI reports it as exit 2)
    from vila_tf.output import results_file
    with pytest.raises(results_file.ResumeError, match="not this run's"):
        results_file.repair(str(out), "jsonl", results_file.columns("zero-shot", False, OWN_PAIRS[:1]))


@pytest.mark.parametrize("prompt, message", [("sharp photo", "expected 'GOOD PROMPT|BAD PROMPT'"),
                                             ("a|b|c", "joined by one '|'")])
def test_bad_prompt_is_a_usage_error(tmp_path, prompt, message):
    # refused before the model is loaded: the model path need not even exist
    r = run("zero-shot", tmp_path / "no-model", tmp_path / "x.jpg", "--prompt", prompt)
    assert r.returncode == 2 and "vila-tf: --prompt: prompt pair" in r.stderr and message in r.stderr


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


DOCS_RUNTIME = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "runtime.md")


def _doc_session():
    """docs/runtime.md's terminal session on a folder: {command: its output lines}."""
    text = open(DOCS_RUNTIME).read().split("### What you see on a folder", 1)[1]
    block = text.split("```\n", 2)[1]
    session, command = {}, None
    for line in block.splitlines():
        if line.startswith("$ "):
            command = line[2:]
            session[command] = []
        else:
            session[command].append(line)
    return session


def _table(lines):
    """The rows of a `--format table` printout, cut at the header's column starts."""
    import re
    header = next(i for i, line in enumerate(lines) if line.startswith("input "))
    starts = [m.start() for m in re.finditer(r"(?:^|(?<=  ))\S", lines[header])]
    names = [lines[header][a:b].strip() for a, b in zip(starts, starts[1:] + [None])]
    rows = [line for line in lines[header + 1:] if line.startswith("holiday/")]
    return names, [{n: line[a:b].strip() for n, a, b in zip(names, starts, starts[1:] + [None])} for line in rows]


@pytest.mark.long
def test_the_documented_folder_session(exported, tmp_path):
    """docs/runtime.md's session, rerun on the same folder with the same tiny models: the same
    columns, values, captions, messages and contact sheet size."""
    import skimage.data
    holiday = tmp_path / "holiday"
    holiday.mkdir()
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        Image.fromarray(getattr(skimage.data, name)()).save(holiday / f"{name}.jpg", quality=90)
    (holiday / "broken.jpg").write_bytes((holiday / "coffee.jpg").read_bytes()[:2000])
    (holiday / "notes.txt").write_text("packing list")
    (tmp_path / "exported").mkdir()
    for name, path in exported.items():
        os.symlink(os.path.dirname(path), tmp_path / "exported" / name)
    session = _doc_session()
    assert session.pop("ls holiday/") == ["  ".join(sorted(os.listdir(holiday)))]
    assert len(session) == 2
    for command, doc_lines in session.items():
        argv = shlex.split(command)
        assert argv[0] == "vila-tf"
        r = run(*argv[1:], cwd=tmp_path)
        assert r.returncode == 1, r.stderr  # the truncated JPEG
        names, doc_rows = _table(doc_lines)
        got = list(csv.DictReader(io.StringIO(r.stdout)))
        assert list(got[0]) == names and [row["input"] for row in got] == [row["input"] for row in doc_rows]
        for want, row in zip(doc_rows, got):
            for name in names:
                if want[name] and name not in ("input", "caption", "error"):
                    assert float(row[name]) == pytest.approx(float(want[name]), abs=2e-6), (command, name)
                else:
                    assert row[name] == want[name], (command, name)
        messages = [line for line in doc_lines if line.startswith("vila-tf: ")]
        assert messages == [line for line in r.stderr.splitlines() if line.startswith("vila-tf: ")]
    sheet = Image.open(tmp_path / "sheet.png")
    assert f"`sheet.png` is {sheet.size[0]} × {sheet.size[1]} pixels" in open(DOCS_RUNTIME).read()
