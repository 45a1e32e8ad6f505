"""Every command on every backend: each cell gives the rows the other backend gives (same columns,
values within the tolerances of docs/on_device.md) or exits 2 with one line, never a traceback.

The matrix is checked for completeness against the command line's own parser and the model core's
backends, so a new command or backend cannot leave a cell untested."""
import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from conftest import LITERT_PROMPTS, vila_tf_command

# LiteRT float32 against the SavedModel on the same photos (measured on the tiny fixtures: score and
# zero-shot columns within 2e-5, embeddings' cosine above 0.99999; docs/on_device.md).
SCORE_TOLERANCE = 1e-3
EMBEDDING_MIN_COSINE = 0.999
BACKENDS = ("savedmodel", "litert")
OWN_PAIR = LITERT_PROMPTS["vila_r_tiny"][0]

# command -> (arguments after MODEL, with {photos} and {out}; the output file, or None for stdout;
#             what each backend does: "rows" or "refused")
CELLS = {
    "score": (["{photos}", "-o", "{out}/r.csv"], "r.csv", {"savedmodel": "rows", "litert": "rows"}),
    "score --with-captions": (["{photos}", "--with-captions", "-o", "{out}/r.csv"], "r.csv",
                              {"savedmodel": "rows", "litert": "refused"}),
    "zero-shot": (["{photos}", "-o", "{out}/r.csv"], "r.csv", {"savedmodel": "rows", "litert": "rows"}),
    "zero-shot --prompt (baked in)": (["{photos}", "--prompt", OWN_PAIR, "-o", "{out}/r.csv"], "r.csv",
                                      {"savedmodel": "rows", "litert": "rows"}),
    "zero-shot --prompt (not baked in)": (["{photos}", "--prompt", "warm light|cold light", "-o", "{out}/r.csv"],
                                          "r.csv", {"savedmodel": "rows", "litert": "refused"}),
    "caption": (["{photos}", "-o", "{out}/r.csv"], "r.csv", {"savedmodel": "rows", "litert": "refused"}),
    "embed": (["{photos}", "-o", "{out}/r.jsonl"], "r.jsonl", {"savedmodel": "rows", "litert": "rows"}),
    "info": ([], None, {"savedmodel": "rows", "litert": "rows"}),
    "rank": (["a photo", "{photos}", "-o", "{out}/r.csv"], "r.csv", {"savedmodel": "rows", "litert": "refused"}),
    "evaluate": (["--labels", "{photos}/labels.csv", "--output", "{out}/eval", "--bootstrap", "0"],
                 "eval/scores.jsonl", {"savedmodel": "rows", "litert": "rows"}),
    # The personal export is a SavedModel made from one: a LiteRT MODEL is refused (convert OUT/1 after).
    "fit": (["--labels", "{photos}_fit/labels.csv", "--output", "{out}/fit", "--folds", "2", "--bootstrap", "0"],
            "fit/features.jsonl", {"savedmodel": "rows", "litert": "refused"}),
    # --dry-run: the matrix's photos get no sidecars. A LiteRT export has no caption: its reasons are
    # the SavedModel's without it (the `reason` check in test_cell).
    "cull": (["{photos}", "--dry-run", "-o", "{out}/r.csv"], "r.csv", {"savedmodel": "rows", "litert": "rows"}),
}
# Text columns both backends write alike (a cull's pick, where its sidecar goes, its capture time).
TEXT_COLUMNS = ("pick", "sidecar", "captured")


def _command(cell: str) -> str:
    return cell.split(" ")[0]


def test_the_matrix_covers_every_command_and_backend():
    from vila_tf.cli import main as cli
    from vila_tf.core.model import Model
    from vila_tf.litert.model import LiteRTModel  # noqa: F401  (the backends register as Model's subclasses)
    from vila_tf.savedmodel.model import VilaModel  # noqa: F401
    parser = cli._parser()
    commands = set(parser._subparsers._group_actions[0].choices)
    assert commands == {_command(c) for c in CELLS}, "a command without a cell in the matrix"
    assert {c.backend for c in Model.__subclasses__()} == {"SavedModel", "LiteRT"} and len(BACKENDS) == 2
    assert all(set(expect) == set(BACKENDS) for _, _, expect in CELLS.values())


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("matrix_photos")
    rng = np.random.RandomState(7)
    rows = ["path,score"]
    for k in range(3):
        Image.fromarray((rng.rand(40 + 10 * k, 56, 3) * 255).astype(np.uint8)).save(folder / f"p{k}.png")
        rows.append(f"p{k}.png,{k + 1}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    fit = folder.parent / (folder.name + "_fit")  # `fit` needs ten labels; the other cells score three photos
    fit.mkdir()
    rows = ["path,score"]
    for k in range(10):
        Image.fromarray((rng.rand(32, 32, 3) * 255).astype(np.uint8)).save(fit / f"f{k}.png")
        rows.append(f"f{k}.png,{k % 5 + 1}")
    (fit / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder


@pytest.fixture(scope="module")
def backends(exported, litert_exported):
    return {"savedmodel": exported["vila_r_tiny"], "litert": litert_exported["vila_r_tiny"]}


def _rows(path: str) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as f:
        if path.endswith(".jsonl"):
            return [json.loads(line) for line in f]
        return list(csv.DictReader(f))


def _run(cell: str, backend: str, backends: dict, photos, out) -> tuple:
    args, output, _ = CELLS[cell]
    os.makedirs(out, exist_ok=True)
    argv = [_command(cell), backends[backend]] + [a.format(photos=photos, out=out) for a in args]
    r = vila_tf_command(*argv)
    return r, (os.path.join(out, output) if output else None)


@pytest.mark.parametrize("cell", list(CELLS))
def test_cell(cell, backends, photos, tmp_path):
    results = {}
    for backend in BACKENDS:
        r, output = _run(cell, backend, backends, photos, tmp_path / backend)
        assert "Traceback" not in r.stderr, r.stderr[-2000:]
        if CELLS[cell][2][backend] == "refused":
            lines = [line for line in r.stderr.splitlines() if line.strip()]
            assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("vila-tf"), r.stderr
            assert "SavedModel" in lines[0] or "--prompt" in lines[0], lines[0]  # says what to use instead
            assert output is None or not os.path.exists(output)
            continue
        assert r.returncode == 0, r.stderr
        results[backend] = _rows(output) if output else r.stdout
    if len(results) < 2:
        return
    if CELLS[cell][1] is None:  # info: each backend describes itself
        assert all(text.startswith("model: ") for text in results.values())
        return
    saved, lite = results["savedmodel"], results["litert"]
    assert [list(row) for row in saved] == [list(row) for row in lite], "the columns differ between the backends"
    assert [row.get("input") for row in saved] == [row.get("input") for row in lite]
    for a, b in zip(saved, lite):
        for key, value in a.items():
            if key in ("input", "error") + TEXT_COLUMNS:
                assert value == b[key], key
            elif key == "reason":  # the SavedModel's ends with the caption, which a LiteRT export lacks
                assert value == b[key] or value.startswith(b[key] + '; "'), (value, b[key])
            elif key == "embedding":
                x, y = np.asarray(value, np.float64), np.asarray(b[key], np.float64)
                assert x @ y / np.linalg.norm(x) / np.linalg.norm(y) >= EMBEDDING_MIN_COSINE
            else:
                assert float(value) == pytest.approx(float(b[key]), abs=SCORE_TOLERANCE), key


def test_python_api_matrix(backends, photos):
    """The same seams in Python: what one backend cannot do is one UnsupportedTaskError naming the
    alternative; zero_shot(attributes=True) and own baked pairs give the same columns on both."""
    import vila_tf
    files = sorted(str(p) for p in photos.glob("*.png"))
    models = {b: vila_tf.load(p) for b, p in backends.items()}
    try:
        attrs = {b: m.zero_shot(files, attributes=True) for b, m in models.items()}
        assert attrs["savedmodel"].names == attrs["litert"].names
        np.testing.assert_allclose(attrs["savedmodel"].pairs, attrs["litert"].pairs, atol=SCORE_TOLERANCE)
        own = {b: m.zero_shot(files, prompts=[OWN_PAIR]) for b, m in models.items()}
        np.testing.assert_allclose(own["savedmodel"].score, own["litert"].score, atol=SCORE_TOLERANCE)
        for call in (lambda m: m.caption(files), lambda m: m.text_embedding("a"), lambda m: m.similarity(files, ["a"]),
                     lambda m: m.zero_shot(files, prompts=["warm light|cold light"])):
            with pytest.raises(vila_tf.UnsupportedTaskError) as e:
                call(models["litert"])
            assert "\n" not in str(e.value) and ("SavedModel" in str(e.value))
    finally:
        for m in models.values():
            m.close()


@pytest.mark.parametrize("command", ["score", "zero-shot", "caption", "embed"])
def test_beam_commands_on_a_litert_export_are_one_line(command, backends, photos, tmp_path, capsys):
    """Beam runs the SavedModel (batched on TensorFlow workers): on a LiteRT folder each of its
    commands stops before any pipeline starts, in one line naming what to use instead. (On the
    SavedModel, tests/test_beam*.py run them.)"""
    from vila_tf.beam import cli as beam_cli
    from vila_tf.beam.handler import TASKS
    assert set(TASKS) == {"score", "zero-shot", "caption", "embed"}  # a new Beam command needs its cell here
    rc = beam_cli.main([command, backends["litert"], "--input", f"{photos}/*.png", "--output", str(tmp_path / "r")])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc == 2 and len(err) == 1 and "LiteRT export" in err[0] and "vila-tf score" in err[0], err
    assert not list(tmp_path.iterdir())
