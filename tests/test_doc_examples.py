"""Every example of README.md and docs/ runs as written: each `$ vila-tf ...` line and each
```python block, in a folder laid out as the examples assume (exported/vila_r, litert/vila_r/1,
holiday/, shots/, library/, AVA.txt, ...), with the tiny exports standing in for the full-size
ones. A command's exit status is the documented one (`echo "exit $?"` or `$ echo $?` after it),
else 0. Examples that need what a test machine does not have (a TF Serving server, a web URL)
are listed in NOT_RUN with the reason. Beam's examples (`vila-tf beam`, `import apache_beam`) are not run
here: each starts a pipeline; tests/test_beam*.py run those commands.

Slow suite: about 40 commands and a dozen Python blocks, ~2 CPU-minutes with the tiny exports."""
import contextlib
import glob
import io
import os
import re
import runpy
import shlex

import numpy as np
import pytest
from PIL import Image

from conftest import vila_tf_command

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md"] + sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))
# A Python block is not run when its text holds one of these: why, in the value.
NOT_RUN = {
    "https://models.example.com": "loads from a web server (docs/publishing.md's address is an example)",
    "grpc.insecure_channel": "talks to a running TF Serving server (checked by tests/test_serving.py's requests)",
    "emb/train-results": "reads what the `vila-tf beam embed` example above it writes (Beam's examples are not run)",
}
BEAM = ("import apache_beam", "vila-tf beam")

pytestmark = pytest.mark.slow


def _blocks(text: str):
    """(language, body) of each fenced block, in order."""
    for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
        yield m.group(1), m.group(2)


def _commands(body: str):
    """(command line, expected exit status) of each `$ vila-tf` line of a shell block."""
    lines = body.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.startswith("$ vila-tf"):
            i += 1
            continue
        cmd = line[2:]
        while cmd.rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
            cmd = cmd.rstrip()[:-1] + " " + lines[i].strip()
        expected = 0
        m = re.search(r';\s*echo "exit \$\?"', cmd)
        rest = lines[i + 1:]
        if m:
            cmd = cmd[:m.start()]
            shown = next((x for x in rest if x.startswith("exit ")), "exit 0")
            expected = int(shown.split()[1])
        else:
            upto = []
            for x in rest:
                if x.startswith("$ ") and not x.startswith("$ echo $?"):
                    break
                upto.append(x)
            if "$ echo $?" in upto and upto.index("$ echo $?") + 1 < len(upto):
                expected = int(upto[upto.index("$ echo $?") + 1])
        yield cmd.split("  #")[0].split(" # ")[0].strip(), expected
        i += 1


def _examples(page: str):
    with open(os.path.join(ROOT, page), encoding="utf-8") as f:
        text = f.read()
    for lang, body in _blocks(text):
        if lang == "python":
            yield "python", body, 0
        elif lang in ("", "sh", "bash", "console"):
            for cmd, expected in _commands(body):
                yield "command", cmd, expected


WITH_EXAMPLES = [p for p in PAGES if list(_examples(p))]


def _jpeg(path, seed):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    rng = np.random.RandomState(seed)
    Image.fromarray((rng.rand(48, 64, 3) * 255).astype(np.uint8)).save(path)


@pytest.fixture(scope="module")
def layout(exported, litert_exported):
    """What the examples' user has: {alias: real folder} of the models, created per page."""
    return {"exported/vila_r/1": exported["vila_r_tiny"], "exported/vila_p/1": exported["vila_p_tiny"],
            "exported/vila_demo/1": exported["vila_r_tiny"], "exported/vila_r_tiny/1": exported["vila_r_tiny"],
            "exported/vila_p_tiny/1": exported["vila_p_tiny"], "litert/vila_r/1": litert_exported["vila_r_tiny"]}


def _user_folder(root, layout: dict) -> None:
    for alias, real in layout.items():
        os.makedirs(os.path.dirname(os.path.join(root, alias)), exist_ok=True)
        os.symlink(real, os.path.join(root, alias))
    photos = ["a.jpg", "b.png", "photo.jpg", "photo1.jpg", "photo2.jpg", "holiday/h1.jpg", "holiday/h2.jpg",
              "shots/s1.jpg", "shots/s2.png", "library/l1.jpg", "library/l2.jpg", "library/l3.jpg",
              "photos/IMG_0001.jpg", "photos/IMG_0002.jpg"]
    for k, p in enumerate(photos):
        _jpeg(os.path.join(root, p), k)
    ids = ["700001", "700002", "700003"]
    for k, i in enumerate(ids):
        _jpeg(os.path.join(root, "ava", "images", f"{i}.jpg"), 40 + k)
    with open(os.path.join(root, "AVA.txt"), "w") as f:
        for k, i in enumerate(ids):
            votes = [0] * 10
            votes[3 + 2 * k], votes[5] = 5, 3
            f.write(" ".join(map(str, [k + 1, i, *votes, 0, 0, 1])) + "\n")
    for name in ("generic_test.jpgl", "aesthetics_image_lists/generic_test.jpgl"):
        os.makedirs(os.path.dirname(os.path.join(root, name)) or root, exist_ok=True)
        with open(os.path.join(root, name), "w") as f:
            f.write("\n".join(ids[:2]) + "\n")
    with open(os.path.join(root, "scores.csv"), "w") as f:  # an earlier `vila-tf score` of the AVA photos
        f.write("input,score,error\n" + "".join(f"ava/images/{i}.jpg,0.{k + 4},\n" for k, i in enumerate(ids)))
    with open(os.path.join(root, "my_labels.csv"), "w") as f:
        f.write("path,score\n" + "".join(f"{p},{k + 1}\n" for k, p in enumerate(photos[5:12])))
    _rated(root)


def _rated(root) -> None:
    """docs/personal.md's labels: rated/ (a dozen photos with darktable's NAME.EXT.xmp sidecars,
    written by pyexiv2), ratings.csv (path,score) and choices.csv (better,worse)."""
    import pyexiv2
    names = [f"rated/r{k:02d}.jpg" for k in range(12)]
    stars = [1, 2, 3, 4, 5, -1, 2, 3, 4, 5, 1, 3]
    for k, (name, rating) in enumerate(zip(names, stars)):
        _jpeg(os.path.join(root, name), 60 + k)
        sidecar = os.path.join(root, name + ".xmp")
        with open(sidecar, "w") as f:
            f.write('<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
                    '</x:xmpmeta><?xpacket end="w"?>')
        with pyexiv2.Image(sidecar) as x:
            x.modify_xmp({"Xmp.xmp.Rating": str(rating)})
    with open(os.path.join(root, "ratings.csv"), "w") as f:
        f.write("path,score\n" + "".join(f"{n},{k % 7 + 1}\n" for k, n in enumerate(names)))
    rng = np.random.default_rng(0)
    with open(os.path.join(root, "choices.csv"), "w") as f:
        f.write("better,worse\n")
        for _ in range(48):
            a, b = rng.choice(len(names), 2, replace=False)
            f.write(f"{names[a]},{names[b]}\n")


def _namespace() -> dict:
    import vila_tf
    paths = ["a.jpg", "photo.jpg", "holiday/h1.jpg"]

    def photo_generator():
        yield from paths

    return {"vila_tf": vila_tf, "np": np, "paths": paths, "photos": paths, "photo_generator": photo_generator,
            "more_photos_generator": photo_generator,
            "pil_images": [Image.open(p).convert("RGB") for p in paths],
            "arrays": [np.asarray(Image.open(p).convert("RGB")) for p in paths]}


@pytest.mark.parametrize("page", WITH_EXAMPLES)
def test_examples_run_as_written(page, layout, tmp_path):
    examples = list(_examples(page))
    _user_folder(tmp_path, layout)
    with contextlib.chdir(tmp_path):
        namespace = _namespace()
        for kind, text, expected in examples:
            if kind == "python":
                why = next((reason for marker, reason in NOT_RUN.items() if marker in text), None)
                if why or any(b in text for b in BEAM):
                    continue
                script = tmp_path / f"example_{len(namespace)}.py"
                script.write_text(text)
                with contextlib.redirect_stdout(io.StringIO()):  # the page's blocks share one namespace
                    namespace = runpy.run_path(str(script), init_globals=namespace)
                continue
            argv = shlex.split(text)[1:]
            if argv[:1] == ["beam"]:
                continue
            r = vila_tf_command(*argv)
            assert "Traceback" not in r.stderr, f"{page}: {text}\n{r.stderr[-2000:]}"
            assert r.returncode == expected, f"{page}: {text}: exit {r.returncode}, documented {expected}\n{r.stderr}"
