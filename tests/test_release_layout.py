"""`make export VILA_DIR=...` on a copy of the release as the bucket lays it out (and the flat layout),
run as a user runs it, with the exported signatures checked against the fixtures' praxis goldens."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers the tokenizer ops the SavedModel holds)

from conftest import DATA, golden

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-4
# Release folder -> (fixture standing in for it, export name)
PUBLISHED = {"vila_rank_tuned": ("vila_r_tiny", "vila_r"), "vila_pretrain": ("vila_p_tiny", "vila_p"),
             "laion_pretrain": ("vila_p_tiny", "laion_coca")}
# What the real `make export` runs on: one model of each kind. The LAION stand-in would be the same
# fixture through the same export a second time (10 s of CPU); its naming and place in the layout
# are checked with the writing stubbed (test_published_layout_names_all_three).
EXPORTED_FOR_REAL = ("vila_rank_tuned", "vila_pretrain")


def _copy_checkpoint(fixture, dest):
    shutil.copytree(os.path.join(DATA, fixture, "ckpt"), dest)


def _make_export(vila_dir, out):
    """The command of docs/export.md, `make export VILA_DIR=... OUT=...`, with this interpreter's
    environment (`-o` keeps make from rebuilding the venv the tests already run in)."""
    venv = sys.prefix
    cmd = ["make", "-C", REPO, "-o", os.path.join(venv, ".installed"), "export", f"VENV={venv}",
           f"PY={sys.executable}", f"VILA_DIR={vila_dir}", f"OUT={out}"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=1200,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))


def _stub_savedmodel_write(monkeypatch) -> list:
    """Replaces the SavedModel writing with an empty `saved_model.pb` at the output, for tests of the
    orchestration around it (the real writes are checked by `test_published_layout`). Returns the
    list of (SentencePiece path, model type) each write was asked for."""
    from export.savedmodel import writer as savedmodel
    written = []

    def fake_write(params, cfg, spm_path, out, opts, log, **kwargs):
        written.append((spm_path, cfg.model_type))
        os.makedirs(out)
        open(os.path.join(out, "saved_model.pb"), "wb").close()
        return out

    monkeypatch.setattr(savedmodel, "write_savedmodel", fake_write)
    return written


def _check_goldens(savedmodel, fixture):
    """Release checkpoints decode 64 tokens; the fixtures' goldens hold 16 (greedy: a prefix)."""
    g = golden(fixture)
    m = tf.saved_model.load(savedmodel)
    x = tf.constant(g["input/image"])
    emb = m.signatures["image_embedding_pixels"](image=x)["image_embedding"].numpy()
    np.testing.assert_allclose(emb, g["pred/contrastive_img_embed_norm"], atol=TOL)
    if fixture == "vila_r_tiny":
        score = m.signatures["score_pixels"](image=x)["predictions"].numpy()
        np.testing.assert_allclose(score, g["pred/quality_scores"], atol=TOL)
    cap = m.signatures["caption_pixels"](image=x)
    ids, lengths = cap["caption_ids"].numpy(), cap["caption_length"].numpy()
    want_ids, want_len = g["decode/hyp"][:, 0], g["decode/hyplen"][:, 0]
    for row in range(len(want_ids)):
        n = int(want_len[row])
        np.testing.assert_array_equal(ids[row, :n], want_ids[row, :n])
        if n < want_ids.shape[1]:  # ended inside the golden's 16 tokens: must end at the same place
            assert lengths[row] == n


def _published_copy(vila, spm_model, folders):
    for folder in folders:
        _copy_checkpoint(PUBLISHED[folder][0], vila / "checkpoints" / folder)
    (vila / "spm_model").mkdir()
    shutil.copy(spm_model, vila / "spm_model" / "spm.model")


@pytest.mark.long
def test_published_layout(tmp_path, spm_model):
    vila = tmp_path / "vila"
    _published_copy(vila, spm_model, EXPORTED_FOR_REAL)
    out = tmp_path / "exported"
    r = _make_export(vila, out)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for folder in EXPORTED_FOR_REAL:
        fixture, name = PUBLISHED[folder]
        path = out / name / "1"
        assert (path / "saved_model.pb").is_file(), name
        assert f"{path}\t" in r.stdout  # the size report names every export
        _check_goldens(str(path), fixture)
    config = (out / "models.config").read_text()
    assert all(f'name: "{PUBLISHED[f][1]}"' in config for f in EXPORTED_FOR_REAL)
    assert str(vila / "spm_model" / "spm.model") in r.stderr


def test_published_layout_names_all_three(tmp_path, spm_model, monkeypatch, capsys):
    """All three released checkpoints, in the release's order, each under its export name and in
    models.config. (In-process, with the SavedModel writing stubbed: the real writes of both model
    kinds are checked by `test_published_layout`.)"""
    from export import __main__ as cli
    vila = tmp_path / "vila"
    _published_copy(vila, spm_model, PUBLISHED)
    written = _stub_savedmodel_write(monkeypatch)
    out = tmp_path / "exported"
    assert cli.main(["all", "--vila-dir", str(vila), "--out", str(out)]) == 0
    report = capsys.readouterr().out
    spm_path = str(vila / "spm_model" / "spm.model")
    assert written == [(spm_path, "vila_r"), (spm_path, "vila_p"), (spm_path, "vila_p")]
    names = [name for _, name in PUBLISHED.values()]
    assert sorted(os.listdir(out)) == sorted(["batching_parameters.txt", "models.config", *names])
    assert all((out / n / "1" / "saved_model.pb").is_file() for n in names)
    config = (out / "models.config").read_text()
    assert all(f'name: "{n}"' in config for n in names)
    assert all(f"{out / n / '1'}\t" in report for n in names)  # the size report names every export


def test_flat_layout_and_checkpoints_folder(tmp_path, spm_model, monkeypatch, capsys):
    """A flat copy (model folders beside spm_model/) and VILA_DIR = checkpoints/ itself. (In-process,
    with the SavedModel writing stubbed: what is checked here is how the layout is found; the
    published layout above runs the real `make export` and checks its goldens.)"""
    from export import __main__ as cli
    flat = tmp_path / "flat"
    _copy_checkpoint("vila_r_tiny", flat / "vila_rank_tuned")
    (flat / "spm_model").mkdir()
    shutil.copy(spm_model, flat / "spm_model" / "spm.model")
    written = _stub_savedmodel_write(monkeypatch)
    out = tmp_path / "exported"
    assert cli.main(["all", "--vila-dir", str(flat), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert sorted(os.listdir(out)) == ["batching_parameters.txt", "models.config", "vila_r"]
    assert (out / "vila_r" / "1" / "saved_model.pb").is_file()
    assert "not in this copy (skipped): vila_pretrain, laion_pretrain" in err
    assert written == [(str(flat / "spm_model" / "spm.model"), "vila_r")]  # the VILA-R checkpoint, read

    from export.checkpoints import release
    published = tmp_path / "vila"
    _published_copy(published, spm_model, ["vila_pretrain"])
    found = release.find(str(published / "checkpoints"))
    assert found.models == (("vila_p", str(published / "checkpoints" / "vila_pretrain")),)
    assert found.spm_path == str(published / "spm_model" / "spm.model")


def test_empty_tree_lists_what_was_looked_for(tmp_path):
    empty = tmp_path / "vila"
    empty.mkdir()
    r = _make_export(empty, tmp_path / "exported")
    assert r.returncode != 0
    err = r.stderr
    for folder in PUBLISHED:
        assert str(empty / "checkpoints" / folder) in err and str(empty / folder) in err, err
    assert str(empty / "spm_model" / "spm.model") in err
    assert not (tmp_path / "exported").exists()


def test_unreadable_model_stops_after_reporting_complete_ones(tmp_path, spm_model, monkeypatch, capsys):
    """VILA-R reads, VILA-P is corrupt: the reader's error, VILA-R reported, nothing of VILA-P.
    (In-process, with the SavedModel writing stubbed: what is checked here is the orchestration;
    the real writes are covered above.)"""
    from export import __main__ as cli
    from export.checkpoints import paxml as checkpoint
    vila = tmp_path / "vila"
    _published_copy(vila, spm_model, ["vila_rank_tuned", "vila_pretrain"])
    state = vila / "checkpoints" / "vila_pretrain" / "checkpoint_0" / "state" / "checkpoint"
    data = state.read_bytes()
    state.write_bytes(data[: len(data) // 3])

    _stub_savedmodel_write(monkeypatch)
    out = tmp_path / "exported"
    assert cli.main(["all", "--vila-dir", str(vila), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    with pytest.raises(checkpoint.CheckpointError) as e:  # the reader's own message is what is shown
        checkpoint.load(str(vila / "checkpoints" / "vila_pretrain"))
    assert f"error: {e.value}" in err and str(state) in err, err
    assert f"complete exports: {out / 'vila_r' / '1'}" in err
    assert sorted(os.listdir(out)) == ["batching_parameters.txt", "models.config", "vila_r"]
    assert 'name: "vila_r"' in (out / "models.config").read_text()
    assert 'name: "vila_p"' not in (out / "models.config").read_text()


@pytest.mark.parametrize("layout", ["published", "flat"])
def test_missing_tokenizer_is_named(tmp_path, layout):
    from export.checkpoints import release
    vila = tmp_path / "vila"
    (vila / ("checkpoints/vila_rank_tuned" if layout == "published" else "vila_rank_tuned")).mkdir(parents=True)
    with pytest.raises(release.ReleaseLayoutError) as e:
        release.find(str(vila))
    assert "no SentencePiece model found" in str(e.value)
    assert str(vila / "spm_model" / "spm.model") in str(e.value)
    assert "no released checkpoint folder" not in str(e.value)
