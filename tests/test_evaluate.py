"""`vila-tf evaluate`: labels (AVA.txt, path,score CSV), metrics against scipy on the same scores,
the plots, --resume and --scores, and the one-line user errors."""
import csv
import json
import os

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from conftest import vila_tf_command as run
from vila_tf.evaluation import metrics as evaluation
from vila_tf.evaluation import labels as labels_lib

# AVA.txt's first line (image 953619): 699 points from 124 votes.
AVA_FIRST_LINE = "1 953619 0 1 5 17 38 36 15 6 5 1 1 22 1396"
N_GOOD, MISSING_IDS, BROKEN_ID, NO_VOTES_ID = 14, ["700001", "700002"], "700003", "700004"
BOOTSTRAP = ["--bootstrap", "200", "--seed", "3"]


def _photo(seed: int) -> np.ndarray:
    """Photo-like images of different brightness, colour and texture (so the scores spread)."""
    rng = np.random.default_rng(seed)
    h, w = 96 + 8 * (seed % 5), 128
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([np.sin(yy / (3 + seed)), np.cos(xx / (5 + 2 * seed)), np.sin((xx + yy) / 7.0)], -1)
    gain = rng.uniform(20, 120, 3)
    return (base * gain + rng.uniform(40, 200, 3) + rng.normal(0, 4 + 3 * seed, (h, w, 3))).clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def ava(tmp_path_factory):
    """An AVA-format dataset: N_GOOD images with synthetic votes (the first with AVA's own first
    line), two labelled images with no file, one broken file, one line without votes."""
    root = tmp_path_factory.mktemp("ava")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(7)
    lines, votes = [AVA_FIRST_LINE], {"953619": np.array([0, 1, 5, 17, 38, 36, 15, 6, 5, 1])}
    ids = ["953619"] + [str(800000 + 37 * i) for i in range(1, N_GOOD)]
    for i, image_id in enumerate(ids):
        Image.fromarray(_photo(i)).save(images / f"{image_id}.jpg", quality=90)
        if i:
            votes[image_id] = rng.integers(0, 40, 10) * (rng.uniform(size=10) < 0.8)
            votes[image_id][rng.integers(0, 10)] += 1  # never all zero
    for image_id in MISSING_IDS + [BROKEN_ID]:
        votes[image_id] = rng.integers(1, 20, 10)
    (images / f"{BROKEN_ID}.jpg").write_bytes((images / f"{ids[1]}.jpg").read_bytes()[:200])
    for n, image_id in enumerate(list(votes)[1:], 2):
        lines.append(f"{n} {image_id} " + " ".join(map(str, votes[image_id])) + f" {n % 7} 0 {1000 + n}")
    lines.append(f"{len(lines) + 1} {NO_VOTES_ID} " + " ".join(["0"] * 10) + " 1 2 3")
    (root / "AVA.txt").write_text("\n".join(lines) + "\n")
    # By hand: sum(k * count_k) / sum(count_k).
    mos = {i: float((np.arange(1, 11) * v).sum() / v.sum()) for i, v in votes.items()}
    return {"root": root, "images": images, "labels": root / "AVA.txt", "ids": ids, "mos": mos}


@pytest.fixture(scope="module")
def evaluated(exported, ava, tmp_path_factory):
    """One `vila-tf evaluate` run of the tiny VILA-R export on the AVA-format set."""
    out = tmp_path_factory.mktemp("eval") / "out"
    r = run("evaluate", exported["vila_r_tiny"], "--labels", ava["labels"], "--images", ava["images"],
            "--output", out, "--progress", *BOOTSTRAP)
    assert r.returncode == 0, r.stderr
    return out, r


def _scores(path) -> dict:
    """image id -> score (float) or error (str) from a scores.jsonl."""
    out = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        key = os.path.splitext(os.path.basename(row["input"]))[0]
        assert key not in out, f"{key} scored twice"
        out[key] = row.get("score", row.get("error"))
    return out


def _reference_metrics(pred, mos, threshold=5.0):
    """The metrics straight from scipy (and, for accuracy and AUC, by counting)."""
    pred, mos = np.asarray(pred), np.asarray(mos)
    high = mos >= threshold
    k = int(high.sum())
    cut = np.sort(pred)[::-1][k - 1]  # the k-th highest score: as many called high as there are
    pairs = [(p, q) for p in pred[high] for q in pred[~high]]
    return {"srcc": stats.spearmanr(pred, mos)[0], "plcc": stats.pearsonr(pred, mos)[0],
            "krcc": stats.kendalltau(pred, mos)[0], "accuracy": np.mean((pred >= cut) == high),
            "auc": np.mean([1.0 if p > q else 0.5 if p == q else 0.0 for p, q in pairs]), "score_threshold": cut}


# -- labels ------------------------------------------------------------------------------------------

def test_ava_mean_opinion_scores_by_hand(ava):
    fmt, labels = labels_lib.read_labels(str(ava["labels"]), str(ava["images"]))
    assert fmt == "ava"
    got = {label.key: label.mos for label in labels}
    assert got["953619"] == pytest.approx(699 / 124, abs=1e-12)
    assert NO_VOTES_ID not in got  # no votes, no mean
    assert set(got) == set(ava["mos"]) and all(got[k] == pytest.approx(v, abs=1e-12) for k, v in ava["mos"].items())
    assert labels[0].path == os.path.join(str(ava["images"]), "953619.jpg")


def test_label_file_errors_name_the_line(tmp_path):
    bad = tmp_path / "AVA.txt"
    bad.write_text(AVA_FIRST_LINE + "\n2 953619 1 1 1 1 1 1 1 1 1 1 0 0 5\n")
    with pytest.raises(labels_lib.LabelsError, match=r"AVA.txt:2: image 953619 is listed twice \(also on line 1\)"):
        labels_lib.read_labels(str(bad))
    bad.write_text(AVA_FIRST_LINE + "\n2 953620 1 1 1 1 1 1 1 1 1 1 0 0\n")
    with pytest.raises(labels_lib.LabelsError, match=r"AVA.txt:2: not an AVA.txt line"):
        labels_lib.read_labels(str(bad))
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text("path,score\na.jpg,3.5\nb.jpg,high\n")
    with pytest.raises(labels_lib.LabelsError, match=r"labels.csv:3: the score 'high' of 'b.jpg' is not a number"):
        labels_lib.read_labels(str(csv_file))


def test_csv_labels_header_optional_paths_relative(tmp_path):
    (tmp_path / "sub").mkdir()
    with_header = tmp_path / "sub" / "a.csv"
    with_header.write_text("image,mos\nx/1.jpg,4.5\n/abs/2.jpg,7\n")
    fmt, labels = labels_lib.read_labels(str(with_header))
    assert fmt == "csv"
    assert [(label.key, label.path, label.mos) for label in labels] == [
        ("x/1.jpg", str(tmp_path / "sub" / "x" / "1.jpg"), 4.5), ("/abs/2.jpg", "/abs/2.jpg", 7.0)]
    no_header = tmp_path / "b.csv"
    no_header.write_text("x/1.jpg,4.5\n")
    _, labels = labels_lib.read_labels(str(no_header), images="/photos")
    assert labels == [labels_lib.Label("x/1.jpg", "/photos/x/1.jpg", 4.5)]


# -- metrics -----------------------------------------------------------------------------------------

def test_metrics_equal_scipy_with_ties():
    rng = np.random.default_rng(1)
    mos = np.round(rng.normal(5.3, 0.8, 300), 1)  # ties, as AVA's means have
    pred = np.round(0.1 * mos + rng.normal(0, 0.08, 300), 2)  # ties too
    got, want = evaluation.metrics(pred, mos), _reference_metrics(pred, mos)
    for k in want:
        assert got[k] == pytest.approx(want[k], abs=1e-12), k
    assert evaluation.metrics(pred, mos, rule="median")["score_threshold"] == np.median(pred)
    fixed = evaluation.metrics(pred, mos, threshold=5.5, rule=0.55)
    assert fixed["accuracy"] == pytest.approx(np.mean((pred >= 0.55) == (mos >= 5.5)), abs=1e-12)


def test_bootstrap_intervals_are_seeded_and_shrink_with_more_images():
    rng = np.random.default_rng(2)
    mos = rng.normal(5, 1, 2000)
    pred = mos + rng.normal(0, 1, 2000)
    a = evaluation.bootstrap_intervals(pred[:200], mos[:200], n_resamples=300, seed=5)
    assert a == evaluation.bootstrap_intervals(pred[:200], mos[:200], n_resamples=300, seed=5)
    assert a != evaluation.bootstrap_intervals(pred[:200], mos[:200], n_resamples=300, seed=6)
    assert a.undefined == {}
    point = evaluation.metrics(pred[:200], mos[:200])
    for k in evaluation.METRICS:
        assert a.intervals[k][0] < point[k] < a.intervals[k][1], k
    big = evaluation.bootstrap_intervals(pred, mos, n_resamples=300, seed=5).intervals
    for k in ("srcc", "plcc", "krcc"):  # ten times the images: about a third of the width
        assert big[k][1] - big[k][0] < 0.5 * (a.intervals[k][1] - a.intervals[k][0]), k


def test_bootstrap_leaves_out_resamples_where_a_metric_is_undefined():
    """Four images, one of them below the threshold: a resample without it has no AUC."""
    pred, mos = np.array([0.1, 0.4, 0.5, 0.9]), np.array([4.0, 6.0, 5.5, 7.0])
    boot = evaluation.bootstrap_intervals(pred, mos, n_resamples=400, seed=0)
    # P(no draw of the low image in 4) = (3/4)^4: about 127 of 400. The correlations are undefined
    # only when all four draws are one image: 4 * (1/4)^4, about 6 of 400.
    assert 80 < boot.undefined["auc"] < 180 and boot.undefined["srcc"] < 20
    assert all(np.isfinite(boot.intervals["auc"])) and boot.intervals["auc"][1] <= 1.0


# -- the command, with a model -------------------------------------------------------------------------

def test_evaluate_reports_scipy_metrics_on_the_scores_it_wrote(evaluated, ava, reference):
    out, r = evaluated
    scores = _scores(out / "scores.jsonl")
    assert set(scores) == set(ava["ids"]) | {BROKEN_ID}  # every image on disk, none twice
    # The scores are the SavedModel's own serving_default on the files' bytes.
    want = reference([(ava["images"] / f"{i}.jpg").read_bytes() for i in ava["ids"]])
    np.testing.assert_allclose([scores[i] for i in ava["ids"]], want, atol=1e-5)
    m = json.loads((out / "metrics.json").read_text())
    pred = [scores[i] for i in ava["ids"]]
    mos = [ava["mos"][i] for i in ava["ids"]]
    assert np.ptp(pred) > 0 and m["n"] == N_GOOD
    ref = _reference_metrics(pred, mos)
    for k in ("srcc", "plcc", "krcc", "accuracy", "auc", "score_threshold"):
        assert m[k] == pytest.approx(ref[k], abs=1e-6), k
    assert sorted(m["missing"]["images"]) == MISSING_IDS and m["missing"]["count"] == 2
    assert m["failed"]["count"] == 1 and m["failed"]["images"][0]["image"] == BROKEN_ID
    assert "JPEG" in m["failed"]["images"][0]["error"]
    for k in evaluation.METRICS:
        low, high = m["ci95"][k]
        assert -1 <= low <= high <= 1, k
    b = m["bootstrap"]
    assert (b["resamples"], b["seed"], b["method"], b["confidence"]) == (200, 3, "percentile", 0.95)
    assert m["threshold"] == 5.0 and m["score_threshold_rule"] == "matched"
    for name in ("scatter.png", "histograms.png"):
        with Image.open(out / name) as im:
            im.load()
            assert im.format == "PNG" and im.width > 300 and im.height > 300
            assert len(np.unique(np.asarray(im.convert("L")))) > 10  # something is drawn
    summary = (out / "summary.md").read_text()
    assert f"| {m['srcc']:.3f} |" in summary and "![scatter](scatter.png)" in summary and BROKEN_ID in summary
    assert f"SRCC {m['srcc']:.4f}" in r.stdout
    assert "evaluate:" in r.stderr and f"{N_GOOD + 1}/{N_GOOD + 1}" in r.stderr  # the progress bar


def test_resume_continues_without_duplicating(evaluated, ava, exported, tmp_path):
    out, _ = evaluated
    again = tmp_path / "out"
    again.mkdir()
    lines = (out / "scores.jsonl").read_text().splitlines(keepends=True)
    (again / "scores.jsonl").write_text("".join(lines[:5]) + lines[5][:20])  # five rows and a torn one
    model = exported["vila_r_tiny"]
    r = run("evaluate", model, "--labels", ava["labels"], "--images", ava["images"], "--output", again,
            "--progress", *BOOTSTRAP)
    assert r.returncode == 2 and "add --resume" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run("evaluate", model, "--labels", ava["labels"], "--images", ava["images"], "--output", again,
            "--resume", "--progress", *BOOTSTRAP)
    assert r.returncode == 0, r.stderr
    assert "5 rows already there" in r.stderr and f"{N_GOOD + 1}/{N_GOOD + 1}" in r.stderr
    first, resumed = _scores(out / "scores.jsonl"), _scores(again / "scores.jsonl")  # _scores: no duplicates
    assert set(first) == set(resumed)
    for k in ava["ids"]:
        assert resumed[k] == pytest.approx(first[k], abs=1e-5)
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (out, again))
    assert m2["n"] == m1["n"] and m2["srcc"] == pytest.approx(m1["srcc"], abs=1e-6)


# -- the command, on the scores of an earlier run ----------------------------------------------------------

def test_scores_file_without_a_model_gives_the_same_metrics(evaluated, ava, tmp_path):
    out, _ = evaluated
    m1 = json.loads((out / "metrics.json").read_text())
    r = run("evaluate", "--scores", out / "scores.jsonl", "--labels", ava["labels"], "--output", tmp_path / "a",
            *BOOTSTRAP)
    assert r.returncode == 0, r.stderr
    m2 = json.loads((tmp_path / "a" / "metrics.json").read_text())
    for k in ("n", "srcc", "plcc", "krcc", "accuracy", "auc", "ci95", "missing"):
        assert m2[k] == m1[k], k
    # The same rows as a `vila-tf score` CSV, from another folder: matched by <image id>.jpg.
    rows = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    with open(tmp_path / "scores.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["input", "score", "error"], lineterminator="\n")
        w.writeheader()
        for row in rows:
            w.writerow({**row, "input": "elsewhere/" + os.path.basename(row["input"])})
    r = run("evaluate", "--scores", tmp_path / "scores.csv", "--labels", ava["labels"], "--output", tmp_path / "b",
            *BOOTSTRAP)
    assert r.returncode == 0, r.stderr
    m3 = json.loads((tmp_path / "b" / "metrics.json").read_text())
    for k in ("n", "srcc", "plcc", "krcc", "accuracy", "ci95"):
        assert m3[k] == m1[k], k  # the CSV holds the same decimal scores


def test_csv_labels_and_subset(evaluated, ava, tmp_path):
    out, _ = evaluated
    scores = _scores(out / "scores.jsonl")
    chosen = ava["ids"][:10]
    labels = tmp_path / "labels.csv"  # paths relative to the CSV's folder
    rel = os.path.relpath(ava["images"], tmp_path)
    labels.write_text("path,score\n" + "".join(f"{rel}/{i}.jpg,{ava['mos'][i]}\n" for i in chosen))
    r = run("evaluate", "--scores", out / "scores.jsonl", "--labels", labels, "--output", tmp_path / "c",
            "--bootstrap", "0", "--score-threshold", "median")
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "c" / "metrics.json").read_text())
    pred, mos = [scores[i] for i in chosen], [ava["mos"][i] for i in chosen]
    assert m["n"] == 10 and m["ci95"] == {} and m["score_threshold"] == pytest.approx(np.median(pred))
    assert m["srcc"] == pytest.approx(stats.spearmanr(pred, mos)[0], abs=1e-6)
    assert m["plcc"] == pytest.approx(stats.pearsonr(pred, mos)[0], abs=1e-6)
    # --subset: AVA's test lists hold one image id per line.
    subset = tmp_path / "test.jpgl"
    subset.write_text("\n".join(ava["ids"][3:9] + [MISSING_IDS[0]]) + "\n")
    r = run("evaluate", "--scores", out / "scores.jsonl", "--labels", ava["labels"], "--subset", subset,
            "--output", tmp_path / "d", "--bootstrap", "0")
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "d" / "metrics.json").read_text())
    assert m["n"] == 6 and m["missing"]["images"] == [MISSING_IDS[0]] and m["labels"]["count"] == 7
    pred, mos = [scores[i] for i in ava["ids"][3:9]], [ava["mos"][i] for i in ava["ids"][3:9]]
    assert m["krcc"] == pytest.approx(stats.kendalltau(pred, mos)[0], abs=1e-6)


@pytest.mark.parametrize("case", ["no labels file", "no image found", "not labels", "not a score file",
                                  "model and scores", "AVA without images", "score column with a model"])
def test_user_errors_are_one_line_exit_2(case, ava, evaluated, exported, tmp_path):
    out, model = evaluated[0], exported["vila_r_tiny"]
    junk = tmp_path / "junk.txt"
    junk.write_text("hello world\n")
    captions = tmp_path / "captions.jsonl"
    captions.write_text(json.dumps({"input": "x/953619.jpg", "caption": "nice"}) + "\n")
    args, expect = {
        "no labels file": (["--scores", out / "scores.jsonl", "--labels", tmp_path / "nope.txt"], "no such file"),
        "no image found": ([model, "--labels", ava["labels"], "--images", tmp_path], "none of the"),
        "not labels": (["--scores", out / "scores.jsonl", "--labels", junk], "junk.txt:1"),
        "not a score file": (["--scores", captions, "--labels", ava["labels"]], "'score'"),
        "model and scores": ([model, "--scores", out / "scores.jsonl", "--labels", ava["labels"]], "not both"),
        "AVA without images": ([model, "--labels", ava["labels"]], "--images"),
        "score column with a model": ([model, "--labels", ava["labels"], "--images", ava["images"],
                                       "--score-column", "composition"], "--score-column"),
    }[case]
    r = run("evaluate", *args, "--output", tmp_path / "o")
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and expect in r.stderr, r.stderr
    assert not (tmp_path / "o" / "metrics.json").exists()
