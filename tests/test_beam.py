"""`vila-tf beam`: the Apache Beam batch job, on the DirectRunner, run as docs/beam.md says.

The README's runs use docs/beam.md's command lines (placeholders swapped for the test's folders):
the two-process run through the installed `vila-tf` console script in a subprocess, the others
through its entry point in this process; the smaller checks call `vila_tf.beam` directly.
"""
import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("apache_beam")
from apache_beam.io.filesystem import FileMetadata, MatchResult  # noqa: E402
from apache_beam.io.localfilesystem import LocalFileSystem  # noqa: E402

from vila_tf import beam as vila_beam  # noqa: E402
from vila_tf.beam import cli as beam_cli, handler as beam_handler  # noqa: E402

from conftest import env_without_jax, vila_tf_command  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
README_SECTION = "# Batch scoring with Apache Beam"  # the title of docs/beam.md: the whole page
# The README's placeholders: model, input pattern, output prefix.
README_MODEL, README_PATTERN, README_PREFIX = "exported/vila_r", "photos/*", "scores/run1"
GOOD, BAD = 52, ("truncated.jpg", "random.jpg", "empty.jpg", "notes.txt")


# -- fixtures ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """52 small images in five formats and four inputs that are not images."""
    d = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(7)
    for i in range(GOOD):
        h, w = 48 + (i * 7) % 43, 64 + (i * 11) % 57  # 64x48 .. 120x90
        arr = (rng.uniform(0, 1, (h, w, 3)) * 255).astype(np.uint8)
        arr[: h // 2] //= 2  # some structure, so the images differ beyond noise
        image = Image.fromarray(arr)
        if i % 13 == 3:
            image = image.convert("L")
        elif i % 13 == 4:
            image = image.convert("RGBA")
        ext = ("jpg", "png", "gif", "bmp", "jpeg")[i % 5] if image.mode == "RGB" else "png"
        image.save(d / f"img{i:02d}.{ext}")
    (d / "truncated.jpg").write_bytes((d / "img00.jpg").read_bytes()[:400])
    (d / "random.jpg").write_bytes(rng.bytes(700))
    (d / "empty.jpg").write_bytes(b"")
    (d / "notes.txt").write_text("these are not pixels")
    return d


@pytest.fixture(scope="module")
def expected(model, references, photos):
    """{name: score} of the images by the reference path (tests/reference.py: the release's
    preprocessing and the golden-checked pixel signatures) and {name: reason} of the files that are
    not images, as `vila_tf` words them."""
    good = sorted(p for p in os.listdir(photos) if p.startswith("img"))
    scores = references["vila_r_tiny"].score([(photos / f).read_bytes() for f in good])
    scores = {f: float(s) for f, s in zip(good, scores)}
    reasons = {}
    for name in BAD:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # the failure is what we ask for
                _, errors = model.score([str(photos / name)], return_errors=True)
            reasons[name] = errors[0].reason
        except Exception:  # noqa: BLE001  (if vila_tf ever raises on some bytes, the job must not)
            reasons[name] = beam_handler.FAILED_ON_IMAGE
    return scores, reasons


def readme_commands():
    """Every `vila-tf beam` command line of docs/beam.md, as argument lists."""
    with open(os.path.join(ROOT, "docs", "beam.md")) as f:
        text = f.read()
    assert README_SECTION in text
    section = text.split(README_SECTION, 1)[1].replace("\\\n", " ")
    lines = [line.strip().removeprefix("$ ") for line in section.splitlines()]
    return [shlex.split(line, comments=True) for line in lines if line.startswith("vila-tf beam ")]


def readme_command(*runner_flags):
    """The README's local command with exactly these runner flags, placeholders swapped by `run_cli`."""
    base = ["vila-tf", "beam", "score", README_MODEL, "--input", README_PATTERN, "--output", README_PREFIX]
    for cmd in readme_commands():
        if cmd == base + list(runner_flags):
            return cmd
    raise AssertionError(f"README has no `{shlex.join(base + list(runner_flags))}`")


def run_cli(cmd, model_dir, pattern, prefix, timeout=600, in_process=False):
    swap = {README_MODEL: model_dir, README_PATTERN: pattern, README_PREFIX: prefix}
    args = [swap.get(a, a) for a in cmd[1:]]
    if in_process:
        return vila_tf_command(*args)
    return subprocess.run([os.path.join(BIN, cmd[0]), *args], capture_output=True, text=True, timeout=timeout,
                          env=env_without_jax())


def read_jsonl(pattern):
    files = sorted(glob.glob(pattern))
    assert files, f"no files match {pattern}"
    return [json.loads(line) for f in files for line in open(f, encoding="utf-8") if line.strip()]


def check_outputs(prefix, photos, expected):
    """Every good image scored as the reference scores it, every bad one in the errors, none missing or twice."""
    scores, reasons = expected
    results, errors = read_jsonl(f"{prefix}-results-*.jsonl"), read_jsonl(f"{prefix}-errors-*.jsonl")
    names = [os.path.basename(r["input"]) for r in results + errors]
    assert sorted(names) == sorted(os.listdir(photos))  # nothing missing, nothing twice
    assert len(results) == GOOD and len(errors) == len(BAD)
    for r in results:
        assert set(r) == {"input", "score"}
        assert r["score"] == pytest.approx(scores[os.path.basename(r["input"])], abs=1e-5), r
    for e in errors:
        assert set(e) == {"input", "error"}
        assert e["error"].startswith(reasons[os.path.basename(e["input"])]), e
    assert all(r["input"].startswith(str(photos)) for r in results + errors)


# -- the README's runs ---------------------------------------------------------------------------------

def test_score_folder_on_the_direct_runner(exported, photos, expected, tmp_path):
    prefix = str(tmp_path / "out" / "run1")
    r = run_cli(readme_command(), exported["vila_r_tiny"], f"{photos}/*", prefix, in_process=True)
    assert r.returncode == 1, r.stderr  # some inputs failed, the job did not
    check_outputs(prefix, photos, expected)
    assert f"{GOOD} images -> {prefix}-results-*.jsonl, {len(BAD)} failed -> {prefix}-errors-*.jsonl" in r.stderr


def test_two_worker_processes_same_result(exported, photos, expected, tmp_path):
    prefix = str(tmp_path / "run-mp")
    r = run_cli(readme_command("--direct_num_workers=2", "--direct_running_mode=multi_processing"),
                exported["vila_r_tiny"], f"{photos}/*", prefix)
    assert r.returncode == 1, r.stderr
    check_outputs(prefix, photos, expected)
    # Two worker processes, each loading the model once.
    loads = re.findall(r"vila_tf\.beam: process (\d+) loads", r.stderr)
    assert len(loads) == len(set(loads)) == 2, r.stderr[-3000:]


def test_readme_commands_parse():
    """Every README command line (Dataflow, Flink, Spark included) is valid for vila-tf beam and Beam."""
    commands = readme_commands()
    assert len(commands) >= 4
    for cmd in commands:
        args, beam_args = beam_cli._parser().parse_known_args(cmd[2:])
        beam_cli._pipeline_options(beam_args)  # raises UsageError on a flag Beam does not know
        assert args.task in vila_beam.TASKS and args.input and args.output


# -- the other heads, in this process ------------------------------------------------------------------

@pytest.mark.parametrize("task, fixture", [("zero-shot", "vila_p_tiny"), ("caption", "vila_r_tiny"),
                                           ("embed", "vila_r_tiny")])
def test_other_tasks_match_the_reference(task, fixture, exported, references, photos, tmp_path):
    ref = references[fixture]
    files = sorted(str(p) for p in photos.glob("img0*.png"))
    method = {"zero-shot": ref.zero_shot, "caption": ref.caption, "embed": ref.image_embedding}[task]
    want = dict(zip(files, method([open(f, "rb").read() for f in files])))
    prefix = str(tmp_path / task)
    # Overlapping patterns: every file still comes out once.
    rc = vila_beam.main([task, exported[fixture], "--input", f"{photos}/img0*.png", "--input", files[0],
                         "--output", prefix, "--batch-size", "4"])
    assert rc == 0
    results = read_jsonl(f"{prefix}-results-*.jsonl")
    assert read_jsonl(f"{prefix}-errors-*.jsonl") == []
    assert sorted(r["input"] for r in results) == files
    for r in results:
        if task == "caption":
            assert r["caption"] == want[r["input"]]
        elif task == "embed":
            np.testing.assert_allclose(r["embedding"], want[r["input"]], atol=1e-5)
        else:
            assert r["score"] == pytest.approx(float(want[r["input"]]), abs=1e-5)


@pytest.mark.parametrize("output_format", ["jsonl", "parquet"])
def test_zero_shot_attributes_and_own_prompts(exported, references, photos, tmp_path, output_format):
    """zero-shot records hold the release's six attribute columns, or with --prompt a column per
    pair of your own, as the reference path computes them (tests/reference.py; JSON Lines rounded to
    6 decimals, Parquet float32)."""
    ref = references["vila_p_tiny"]
    files = sorted(str(p) for p in photos.glob("img0*.png"))
    encoded = [open(f, "rb").read() for f in files]
    pairs = ["sharp photo|blurry photo", "warm light|cold light"]
    attributes = ("image", "lighting", "content", "background", "foreground", "composition")
    own = ref.pair_scores(encoded, [p.split("|") for p in pairs])
    cases = ((None, attributes, ref.zero_shot(encoded), ref.zero_shot_attributes(encoded)),
             (pairs, tuple(pairs), own.mean(1), own))
    for prompts, names, want_score, want_pairs in cases:
        prefix = str(tmp_path / f"zs-{bool(prompts)}")
        argv = ["zero-shot", exported["vila_p_tiny"], "--input", f"{photos}/img0*.png", "--output", prefix,
                "--batch-size", "4", "--output-format", output_format]
        assert vila_beam.main(argv + [a for p in prompts or () for a in ("--prompt", p)]) == 0
        if output_format == "parquet":
            import pyarrow.parquet as pq
            table = pq.read_table(glob.glob(f"{prefix}-results-*.parquet"))
            assert table.schema.names == ["input", "score", *names]
            assert all(str(table.schema.field(n).type) == "float" for n in ("score", *names))
            results = table.to_pylist()
        else:
            results = read_jsonl(f"{prefix}-results-*.jsonl")
            assert all(list(r) == ["input", "score", *names] for r in results)
        by_input = {r["input"]: r for r in results}
        assert sorted(by_input) == files
        for i, f in enumerate(files):
            assert [by_input[f][n] for n in ("score", *names)] == pytest.approx(
                [float(want_score[i]), *want_pairs[i].tolist()], abs=1e-5)


def test_prompt_usage_errors(exported, photos, tmp_path, capsys):
    base = ["--input", f"{photos}/img0*.png", "--output", str(tmp_path / "x")]
    assert vila_beam.main(["score", exported["vila_r_tiny"], *base, "--prompt", "a|b"]) == 2
    assert "--prompt is for zero-shot, not score" in capsys.readouterr().err
    assert vila_beam.main(["zero-shot", exported["vila_p_tiny"], *base, "--prompt", "a"]) == 2
    assert "--prompt: prompt pair 'a': expected 'GOOD PROMPT|BAD PROMPT'" in capsys.readouterr().err


def test_python_dash_m_entry_point(exported, photos, tmp_path):
    r = subprocess.run([sys.executable, "-m", "vila_tf.beam", "score", exported["vila_r_tiny"],
                        "--input", str(photos / "*.nothing"), "--output", str(tmp_path / "x")],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 2 and "matches no files" in r.stderr, r.stderr


# -- usage errors, before any job starts -----------------------------------------------------------------

@pytest.mark.parametrize("extra, message", [
    (["--input", "{photos}/*.nothing"], "matches no files"),
    (["--input", "{photos}"], "is a folder: give a pattern"),
    (["--input", "{photos}/*", "--ouput", "x"], "unrecognized arguments: --ouput"),
    (["--input", "{photos}/*", "{photos}/img00.jpg"], "unrecognized arguments: "),
])
def test_usage_errors(extra, message, exported, photos, tmp_path, capsys):
    argv = ["score", exported["vila_r_tiny"], "--output", str(tmp_path / "x")] + [a.format(photos=photos)
                                                                                   for a in extra]
    assert vila_beam.main(argv) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.glob("x-*"))


def test_missing_model_is_a_usage_error(photos, tmp_path, capsys):
    assert vila_beam.main(["score", str(tmp_path / "nope"), "--input", f"{photos}/*",
                           "--output", str(tmp_path / "x")]) == 2
    assert "cannot use model" in capsys.readouterr().err


def test_a_model_that_does_not_load_fails_the_job(exported, photos, tmp_path, capsys):
    (tmp_path / "broken" / "1" / "assets.extra").mkdir(parents=True)
    (tmp_path / "broken" / "1" / "saved_model.pb").write_bytes(b"not a SavedModel")
    # Without its metadata record: refused before any worker starts, in one line.
    assert vila_beam.main(["score", str(tmp_path / "broken"), "--input", f"{photos}/img0*",
                           "--output", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vila-tf beam: cannot use model: ") and err.count("\n") == 1 and "vila_tf.json is missing" in err
    # With it, the graph itself does not parse: the job fails on the workers and says why.
    shutil.copy(os.path.join(exported["vila_r_tiny"], "assets.extra", "vila_tf.json"),
                tmp_path / "broken" / "1" / "assets.extra" / "vila_tf.json")
    assert vila_beam.main(["score", str(tmp_path / "broken"), "--input", f"{photos}/img0*",
                           "--output", str(tmp_path / "x")]) == 2
    assert "vila-tf beam: the job failed: OSError: Cannot parse file" in capsys.readouterr().err


def test_batch_size_must_be_a_bucket(photos, tmp_path):
    with pytest.raises(SystemExit) as e:
        vila_beam.main(["score", "m", "--input", f"{photos}/*", "--output", "x", "--batch-size", "12"])
    assert e.value.code == 2
    with pytest.raises(ValueError, match="buckets"):
        vila_beam.VilaModelHandler("m", batch_size=12)
    with pytest.raises(ValueError, match="unknown task"):
        vila_beam.VilaModelHandler("m", task="aesthetics")


# -- the model handler -------------------------------------------------------------------------------------

def test_handler_batches_are_the_buckets():
    h = vila_beam.VilaModelHandler("m", batch_size=16)
    assert h.batch_elements_kwargs() == {"min_batch_size": 16, "max_batch_size": 16}
    assert not h.share_model_across_processes()  # one copy per worker process
    assert h.get_num_bytes([b"abc", b"de"]) == 5


class _FlakyModel:
    """Scores len(bytes); raises on b"boom" (as vila_tf does on some corrupt bytes) or on everything."""

    def __init__(self, always=False):
        self.always = always

    def score(self, images, batch_size, return_errors):
        if self.always or b"boom" in images:
            raise RuntimeError("cannot handle this")
        return np.array([len(b) for b in images], np.float32), []


def test_an_image_that_raises_fails_alone():
    h = vila_beam.VilaModelHandler("m")
    out = h.run_inference([b"aa", b"boom", b"cccc"], _FlakyModel())
    assert [r.inference for r in out] == [
        {"score": 2.0}, {"error": f"{beam_handler.FAILED_ON_IMAGE}: RuntimeError: cannot handle this"}, {"score": 4.0}]
    assert [r.example for r in out] == [b"aa", b"boom", b"cccc"]
    with pytest.raises(RuntimeError):  # every image fails alone too: the model is broken, not the images
        h.run_inference([b"aa", b"bb"], _FlakyModel(always=True))


class _PrefixedLocalFileSystem(LocalFileSystem):
    """`vilatest:///abs/path` -> /abs/path: a remote-looking filesystem for the model download."""
    PREFIX = "vilatest://"

    @classmethod
    def scheme(cls):
        return "vilatest"

    def _local(self, path):  # LocalFileSystem calls these methods with local paths too
        return path[len(self.PREFIX):] if path.startswith(self.PREFIX) else path

    def match(self, patterns, limits=None):
        return [MatchResult(self.PREFIX + r.pattern, [FileMetadata(self.PREFIX + m.path, m.size_in_bytes)
                                                       for m in r.metadata_list])
                for r in super().match([self._local(p) for p in patterns], limits)]

    def open(self, path, *args, **kwargs):
        return super().open(self._local(path), *args, **kwargs)

    def exists(self, path):
        return super().exists(self._local(path))


def test_remote_model_is_copied_once_per_machine(exported, references, photos, tmp_path, monkeypatch):
    import shutil
    import tempfile
    base = tmp_path / "models" / "vila_r"  # a TF Serving base folder: the newest version wins
    shutil.copytree(exported["vila_p_tiny"], base / "3")
    shutil.copytree(exported["vila_r_tiny"], base / "12")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    os.makedirs(tempfile.tempdir)
    handler = vila_beam.VilaModelHandler(f"vilatest://{base}")
    m = handler.load_model()
    cache = tmp_path / "tmp" / f"vila_tf-models-{os.getuid()}"  # this user's own
    assert m.path.startswith(str(cache)) and m.model_type == "vila_r"
    assert handler.load_model().path == m.path  # the second process reuses the copy
    assert len(os.listdir(cache)) == 1  # no partial copies left behind
    image = (photos / "img01.png").read_bytes()
    [r] = handler.run_inference([image], m)
    assert r.inference["score"] == pytest.approx(float(references["vila_r_tiny"].score([image])[0]), abs=1e-5)
    with pytest.raises(FileNotFoundError, match="not a SavedModel folder"):
        vila_beam.fetch_savedmodel(f"vilatest://{tmp_path / 'models'}")


def test_vila_tf_works_without_beam(jaxless):
    """`import vila_tf` and the plain CLI never need Beam; `vila-tf beam` says what to install, in
    one line. (In the `jaxless` fixture's process, where Beam and jax cannot be imported.)"""
    for got in jaxless.values():
        assert int(got["cli/info_returncode"]) == 0, str(got["cli/info_stderr"])
        assert int(got["cli/beam_returncode"]) == 2
        err = str(got["cli/beam_stderr"])
        assert err.count("\n") == 1 and "needs Apache Beam: pip install 'vila-tf[beam]'" in err, err
