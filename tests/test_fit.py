"""`vila-tf fit`: a synthetic taste that a linear head on the embedding can learn, fitted on the tiny
VILA-R export from generated photos. The cross-validated numbers are checked against a reference
scikit-learn fit computed here and against the taste itself; the export against the head applied
by hand to the base model's own outputs; then the label forms (pairs, XMP star ratings), and the
one-line refusals that leave nothing in OUT."""
import hashlib
import json
import os

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from conftest import vila_tf_command as run

N_PHOTOS, FIRST, SECOND = 40, 28, 32  # photos; labelled in the first fit; in the second (the last 8 held out)
FIT_ARGS = ["--bootstrap", "40", "--folds", "4"]


def _photo(rng, size: int = 48) -> np.ndarray:
    """Photo-like: smooth structure of random frequency, contrast, grain and colour cast."""
    yy, xx = np.mgrid[0:size, 0:size]
    f = rng.uniform(2, 12, 3)
    base = np.stack([np.sin(xx / f[0] + rng.uniform(0, 6)), np.cos(yy / f[1]), np.sin((xx + yy) / f[2])], -1)
    grain = rng.normal(0, rng.uniform(2, 30), (size, size, 3))
    img = 128 + rng.uniform(20, 110) * base + grain + rng.uniform(-60, 60, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


def _labels(path, files, values):
    path.write_text("path,score\n" + "".join(f"{os.path.basename(f)},{v:.6f}\n" for f, v in zip(files, values)))
    return path


def _base_outputs(exported_path, files):
    """The base export's own signatures on the photos' bytes: (features in vila_tf.core.personal's
    order, base score), never through vila_tf."""
    import tensorflow as tf
    import tensorflow_text  # noqa: F401
    from vila_tf.core import personal
    m = tf.saved_model.load(exported_path)
    features, scores = [], []
    for start in range(0, len(files), 8):  # batches of 8, a bucket the runtime compiles for too
        data = tf.constant([open(f, "rb").read() for f in files[start:start + 8]])
        emb = m.signatures["image_embedding"](image_bytes=data)["image_embedding"].numpy()
        zs = m.signatures["zero_shot"](image_bytes=data)
        score = m.signatures["serving_default"](image_bytes=data)["predictions"].numpy()
        features.append(np.concatenate([emb] + [zs[k].numpy()[:, None] for k in personal.ATTRIBUTES] + [score], 1))
        scores.append(score[:, 0])
    return np.concatenate(features).astype(np.float64), np.concatenate(scores).astype(np.float64)


@pytest.fixture(scope="module")
def taste(tmp_path_factory, exported):
    """Generated photos and a taste linear in the base model's embedding (1 to 5 stars, continuous):
    what a linear head can learn."""
    root = tmp_path_factory.mktemp("taste")
    rng = np.random.default_rng(3)
    files = []
    for i in range(N_PHOTOS):
        files.append(str(root / f"p{i:03d}.jpg"))
        Image.fromarray(_photo(rng)).save(files[-1], quality=92)
    features, base = _base_outputs(exported["vila_r_tiny"], files)
    direction = np.random.default_rng(5).normal(size=64)
    t = features[:, :64] @ direction
    true = 1 + 4 * (t - t.min()) / (t.max() - t.min())
    return {"root": root, "files": files, "true": true, "features": features, "base": base,
            "labels": _labels(root / "labels.csv", files[:FIRST], true[:FIRST]),
            "more": _labels(root / "more.csv", files[:SECOND], true[:SECOND])}


@pytest.fixture(scope="module")
def fitted(exported, taste, tmp_path_factory):
    """Two fits into one OUT: FIRST labels, then SECOND with --resume (OUT/2/)."""
    out = tmp_path_factory.mktemp("fit") / "my_taste"
    first = run("fit", exported["vila_r_tiny"], "--labels", taste["labels"], "--output", out, *FIT_ARGS)
    assert first.returncode == 0, first.stderr
    report_1 = json.loads((out / "report" / "metrics.json").read_text())
    second = run("fit", exported["vila_r_tiny"], "--labels", taste["more"], "--output", out, "--resume", *FIT_ARGS)
    assert second.returncode == 0, second.stderr
    return {"out": out, "first": first, "second": second, "report_1": report_1,
            "report": json.loads((out / "report" / "metrics.json").read_text())}


def test_cross_validated_correlations_equal_a_reference_fit(fitted, taste):
    """metrics.json's `personal` is the nested cross-validation a plain scikit-learn pipeline gives
    on the same features, and the taste is learned; `base` is the base score's own correlation."""
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import KFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from vila_tf.personal import learn
    rec = fitted["report_1"]
    x, y = taste["features"][:FIRST], taste["true"][:FIRST]
    reference = cross_val_predict(make_pipeline(StandardScaler(), RidgeCV(alphas=learn.ALPHAS)), x, y,
                                  cv=KFold(4, shuffle=True, random_state=0))
    assert rec["personal"]["n"] == FIRST
    assert rec["personal"]["srcc"] == pytest.approx(stats.spearmanr(reference, y)[0], abs=0.01)
    assert rec["personal"]["plcc"] == pytest.approx(stats.pearsonr(reference, y)[0], abs=0.01)
    assert rec["personal"]["srcc"] > 0.9 and rec["personal"]["ci95"]["srcc"][0] > 0.7
    assert rec["base"]["srcc"] == pytest.approx(stats.spearmanr(taste["base"][:FIRST], y)[0], abs=1e-3)
    assert set(rec["personal"]) >= {"srcc", "plcc", "krcc", "ci95", "bootstrap", "n"}  # evaluate's shape
    curve = rec["learning_curve"]["points"]
    assert [p["labels"] for p in curve] == sorted(p["labels"] for p in curve) and curve[-1]["labels"] == FIRST
    assert curve[-1]["mean"] == pytest.approx(rec["personal"]["srcc"])
    summary = (fitted["out"] / "report" / "summary.md").read_text()
    assert "## How many labels" in summary and "50 more labels" in summary
    assert {"scatter.png", "learning_curve.png"} <= set(os.listdir(fitted["out"] / "report"))


def test_the_export_serves_the_head_on_held_out_photos(fitted, taste, exported):
    """OUT/1's serving_default is the head applied by hand to the base model's outputs, learns the
    taste on photos it never saw, and keeps every base signature (the base score as base_score)."""
    import tensorflow as tf
    import tensorflow_text  # noqa: F401
    import vila_tf
    from vila_tf.core import personal
    from vila_tf.core.signatures import ALL_SIGNATURES
    version = fitted["out"] / "1"
    held = taste["files"][SECOND:]
    meta = json.loads((version / "assets.extra" / "vila_tf.json").read_text())
    head = meta["personal"]
    assert head["labels"]["count"] == FIRST and head["labels"]["format"] == "csv"
    assert head["labels"]["sha256"] == hashlib.sha256(taste["labels"].read_bytes()).hexdigest()
    assert head["cross_validation"]["srcc"] == pytest.approx(fitted["report_1"]["personal"]["srcc"])
    assert head["scale"]["min"] == pytest.approx(taste["true"][:FIRST].min(), abs=1e-6)
    card = (version / "assets.extra" / "model_card.md").read_text()
    assert head["labels"]["sha256"] in card and "base_score" in card
    reader = tf.train.load_checkpoint(str(version / "variables" / "variables"))
    weights = reader.get_tensor(f"{personal.WEIGHTS_VARIABLE}/.ATTRIBUTES/VARIABLE_VALUE")
    bias = reader.get_tensor(f"{personal.BIAS_VARIABLE}/.ATTRIBUTES/VARIABLE_VALUE")
    by_hand = personal.apply(weights, bias, taste["features"][SECOND:])
    m = tf.saved_model.load(str(version))
    data = tf.constant([open(f, "rb").read() for f in held])
    served = m.signatures["serving_default"](image_bytes=data)["predictions"].numpy()[:, 0]
    np.testing.assert_allclose(served, by_hand, atol=1e-4)
    assert m.signatures["serving_default"](image_bytes=data[0])["predictions"].shape == (1, 1)  # TF Hub's call
    np.testing.assert_allclose(m.signatures["base_score"](image_bytes=data)["predictions"].numpy()[:, 0],
                               taste["base"][SECOND:], atol=1e-5)
    assert set(m.signatures) == set(ALL_SIGNATURES) | {"base_score", "base_score_pixels"}
    assert stats.spearmanr(served, taste["true"][SECOND:])[0] > 0.9  # photos it never saw
    with vila_tf.load(str(fitted["out"] / "1")) as model:
        from vila_tf.savedmodel.saved_functions import SavedFunctions
        assert isinstance(model._module, SavedFunctions)  # the runtime's own loader takes it too
        np.testing.assert_allclose(model.score(held), served, atol=1e-5)
    from vila_tf.serving import read_warmup
    warm = {r.predict_log.request.model_spec.signature_name for r in read_warmup(str(version))}
    assert warm == set(m.signatures)


def test_fitting_again_with_more_labels_resumes_and_writes_the_next_version(fitted, taste):
    assert "resuming" in fitted["second"].stderr and f"{FIRST} rows already there" in fitted["second"].stderr
    assert sorted(os.listdir(fitted["out"])) == ["1", "2", "features.jsonl", "features.jsonl.vila-tf.json", "report"]
    rows = [json.loads(line) for line in (fitted["out"] / "features.jsonl").read_text().splitlines()]
    assert len(rows) == SECOND  # the first fit's photos were not scored again
    assert fitted["report"]["personal"]["n"] == SECOND and fitted["report"]["model"]["version"] == 2
    r = run("score", str(fitted["out"]), *taste["files"][SECOND:], "--format", "jsonl")
    served = [json.loads(line)["score"] for line in r.stdout.splitlines()]
    meta = json.loads((fitted["out"] / "2" / "assets.extra" / "vila_tf.json").read_text())
    assert meta["personal"]["labels"]["count"] == SECOND
    assert stats.spearmanr(served, taste["true"][SECOND:])[0] > 0.9  # `vila-tf score OUT`: the newest version


# -- the labels ---------------------------------------------------------------------------------------

def test_pairwise_preferences_against_a_reference_logistic_fit():
    """Bradley-Terry on comparisons of a known utility: the exported head is the one a plain
    scikit-learn logistic regression on the standardized differences gives at the chosen C (the
    fit in the photos' span changes nothing), and it orders held-out comparisons."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from vila_tf.personal import learn
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 12))
    utility = x @ rng.normal(size=12)
    i = rng.integers(0, 40, (200, 2))
    i = i[i[:, 0] != i[:, 1]]
    pairs = np.where((utility[i[:, 0]] + rng.normal(0, 0.3, len(i)) > utility[i[:, 1]])[:, None], i, i[:, ::-1])
    fit = learn.fit_pairs(x, pairs, 4, 0)
    z = StandardScaler().fit_transform(x)
    d = z[pairs[:, 0]] - z[pairs[:, 1]]
    ref = LogisticRegression(C=fit.regularization["C"], fit_intercept=False, tol=1e-10, max_iter=10000).fit(
        np.vstack([d, -d]), np.r_[np.ones(len(d)), np.zeros(len(d))])
    np.testing.assert_allclose(x @ fit.weights + fit.bias, z @ ref.coef_[0], atol=1e-3)
    assert learn.pair_accuracy(fit.cv, pairs[fit.held_out]).mean() > 0.8
    assert stats.spearmanr(x @ fit.weights, utility)[0] > 0.9
    assert abs(np.mean(x @ fit.weights + fit.bias)) < 1e-9  # the average labelled photo is 0


def test_label_forms(tmp_path):
    """path,score with agreeing duplicates, better,worse with or without its header, AVA.txt."""
    from vila_tf.personal import labels
    (tmp_path / "s.csv").write_text("path,score\na.jpg,3\nb.jpg,4\na.jpg,3\n./c.jpg,1\n")
    got = labels.read(str(tmp_path / "s.csv"))
    assert got.kind == "scores" and [os.path.basename(p) for p in got.photos] == ["a.jpg", "b.jpg", "c.jpg"]
    assert list(got.scores) == [3, 4, 1]
    for text in ("better,worse\na.jpg,b.png\nb.png,c.jpg\n", "a.jpg,b.png\nb.png,c.jpg\n"):
        (tmp_path / "p.csv").write_text(text)
        got = labels.read(str(tmp_path / "p.csv"), images="/photos")
        assert got.kind == "pairs" and got.photos == ["/photos/a.jpg", "/photos/b.png", "/photos/c.jpg"]
        assert got.pairs.tolist() == [[0, 1], [1, 2]]
    kept = got.subset(np.array([True, True, False]))
    assert kept.photos == ["/photos/a.jpg", "/photos/b.png"] and kept.pairs.tolist() == [[0, 1]]


def test_xmp_star_ratings_from_sidecars_and_embedded(tmp_path):
    """darktable's NAME.EXT.xmp first, then Lightroom's NAME.xmp, then the photo's own XMP; -1
    (rejected) is 0 stars, 0 is unrated; the sidecars are written by pyexiv2 here."""
    import pyexiv2
    from vila_tf.personal import labels
    skeleton = ('<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
                '</x:xmpmeta><?xpacket end="w"?>')

    def sidecar(path, rating):
        path.write_text(skeleton)
        with pyexiv2.Image(str(path)) as x:
            x.modify_xmp({"Xmp.xmp.Rating": rating})

    for name in ("a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"):
        Image.fromarray(np.full((8, 8, 3), 100, np.uint8)).save(tmp_path / name)
    sidecar(tmp_path / "a.jpg.xmp", "4")
    sidecar(tmp_path / "a.xmp", "1")  # darktable's sidecar wins over Lightroom's
    sidecar(tmp_path / "b.xmp", "-1")  # Lightroom's (beside a RAW file of the same name): rejected
    with pyexiv2.Image(str(tmp_path / "c.jpg")) as x:
        x.modify_xmp({"Xmp.xmp.Rating": "5"})
    sidecar(tmp_path / "d.jpg.xmp", "0")  # unrated
    got = labels.read(str(tmp_path))
    assert got.format == "xmp" and {os.path.basename(p): s for p, s in zip(got.photos, got.scores)} == \
        {"a.jpg": 4, "b.jpg": 0, "c.jpg": 5}
    assert got.notes == [f"2 unrated photos of {tmp_path} left out"]
    sidecar(tmp_path / "e.jpg.xmp", "great")
    with pytest.raises(labels.LabelsError, match=r"e\.jpg\.xmp: xmp:Rating 'great' is not a star rating"):
        labels.read(str(tmp_path))


# -- refusals -------------------------------------------------------------------------------------------

def _refused(tmp_path, *args):
    out = tmp_path / "out"
    r = run("fit", *args, "--output", out)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("vila-tf fit: "), r.stderr
    assert not out.exists()  # nothing half-written
    return lines[0]


def test_bad_labels_are_one_line_and_leave_nothing(exported, litert_exported, taste, fitted, tmp_path):
    model = exported["vila_r_tiny"]
    names = [os.path.basename(f) for f in taste["files"]]

    def labels(name, rows):
        path = taste["root"] / name
        path.write_text("\n".join(rows) + "\n")
        return path
    cases = [
        (labels("few.csv", ["path,score"] + [f"{n},{k}" for k, n in enumerate(names[:5])]),
         "too few to cross-validate"),
        (labels("equal.csv", [f"{n},3" for n in names[:20]]), "have the same score (3): nothing to learn from"),
        (labels("none.csv", [f"gone{k}.jpg,{k}" for k in range(20)]), "none of the 20 labelled photos"),
        (labels("dup.csv", [f"{n},{k}" for k, n in enumerate(names[:20])] + [f"{names[3]},1"]),
         "is listed twice with different scores"),
        (labels("nan.csv", [f"{n},{k}" for k, n in enumerate(names[:20])] + [f"{names[20]},good"]), "is not a number"),
        (labels("self.csv", ["better,worse", f"{names[0]},{names[0]}"]), "is preferred to itself"),
    ]
    for path, expected in cases:
        assert expected in _refused(tmp_path, model, "--labels", path), path
    assert "LiteRT export" in _refused(tmp_path, litert_exported["vila_r_tiny"], "--labels", taste["labels"])
    assert "personal export" in _refused(tmp_path, str(fitted["out"]), "--labels", taste["labels"])
    assert "--folds 1" in _refused(tmp_path, model, "--labels", taste["labels"], "--folds", "1")
    r = run("fit", model, "--labels", taste["labels"], "--output", os.path.dirname(model))  # the base's own folder
    assert r.returncode == 2 and "which is not a personal export" in r.stderr
    assert "holds the features of an earlier run" in run(
        "fit", model, "--labels", taste["labels"], "--output", fitted["out"]).stderr


# -- make test-slow ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_the_personal_export_passes_the_model_server_check(fitted):
    """TF Serving loads OUT/1 as it loads any export: every signature, the personal and the base
    score included, at every bucket of the regenerated warmup."""
    from vila_tf import serving
    from vila_tf.core.buckets import BUCKETS
    r = serving.check(str(fitted["out"] / "1"))
    assert r["ok"] and r["unregistered_ops"] == [] and r["xla_enabled"]["failures"] == []
    assert r["xla_enabled"]["batch_sizes"]["serving_default"] == list(BUCKETS)
    assert r["xla_enabled"]["batch_sizes"]["base_score"] == list(BUCKETS)


@pytest.mark.slow
def test_litert_conversion_gives_the_personal_score(fitted, taste, tmp_path):
    """`python -m export litert OUT/1`: the LiteRT `predictions` is the personal score, within 1e-4
    of the SavedModel's, and `vila-tf info` says it is one."""
    import vila_tf
    from conftest import export_command
    r = export_command("litert", str(fitted["out"] / "1"), "--out", tmp_path / "lite", "--variants", "float32")
    assert r.returncode == 0, r.stderr[-3000:]
    held = taste["files"][SECOND:]
    with vila_tf.load(str(fitted["out"] / "1")) as saved, vila_tf.load(str(tmp_path / "lite")) as lite:
        np.testing.assert_allclose(lite.score(held), saved.score(held), atol=1e-4)
    assert "personal head: ridge" in run("info", tmp_path / "lite").stdout


@pytest.mark.slow
def test_comparisons_and_star_ratings_from_the_command_line(exported, taste, tmp_path):
    """The other label forms end to end: noisy comparisons of the taste (a Bradley-Terry head whose
    export orders held-out photos), and XMP star ratings of a folder (sidecars written by pyexiv2)."""
    import shutil
    import pyexiv2
    import tensorflow as tf
    rng = np.random.default_rng(4)
    files, true = taste["files"], taste["true"]
    i = rng.integers(0, SECOND, (160, 2))
    i = i[i[:, 0] != i[:, 1]]
    better = np.where((true[i[:, 0]] + rng.normal(0, 0.2, len(i)) > true[i[:, 1]])[:, None], i, i[:, ::-1])
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("better,worse\n" + "".join(f"{files[a]},{files[b]}\n" for a, b in better))
    r = run("fit", exported["vila_r_tiny"], "--labels", pairs, "--output", tmp_path / "pairs", *FIT_ARGS)
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "pairs" / "report" / "metrics.json").read_text())
    assert rec["pairs"]["personal"]["accuracy"] > 0.8 and rec["fit"]["scale"]["kind"] == "log-odds"
    m = tf.saved_model.load(str(tmp_path / "pairs" / "1"))
    served = m.signatures["serving_default"](image_bytes=tf.constant([open(f, "rb").read() for f in
                                                                      files[SECOND:]]))["predictions"].numpy()[:, 0]
    assert stats.spearmanr(served, true[SECOND:])[0] > 0.8
    rated = tmp_path / "rated"
    rated.mkdir()
    for f, stars in zip(files[:FIRST], np.round(true[:FIRST])):
        shutil.copy(f, rated)
        sidecar = rated / (os.path.basename(f) + ".xmp")  # darktable's NAME.EXT.xmp
        sidecar.write_text('<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
                           '</x:xmpmeta><?xpacket end="w"?>')
        with pyexiv2.Image(str(sidecar)) as x:
            x.modify_xmp({"Xmp.xmp.Rating": str(int(stars))})
    r = run("fit", exported["vila_r_tiny"], "--labels", rated, "--output", tmp_path / "stars", *FIT_ARGS)
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "stars" / "report" / "metrics.json").read_text())
    assert rec["labels"]["format"] == "xmp" and rec["personal"]["n"] == FIRST and rec["personal"]["srcc"] > 0.8
