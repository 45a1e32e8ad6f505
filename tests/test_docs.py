"""The documentation resolves: section references and relative links point at what exists.

A section reference is a section sign followed by a number, optionally a range ("3-7"), written
after the page it points into: `docs/model.md` then the sign and the number. In code, tests,
notebooks and every Markdown file the page must be named (`docs/<page>.md`; inside docs/ the
sibling name `<page>.md` is enough); only a page of docs/ may cite its own sections bare. A page's
sections are its headings that start with the sign and a number (`## <sign>3 Layer conventions`).

Relative links of README.md and docs/*.md must point at an existing file (and, with a `#anchor`
into a Markdown file, at one of its headings).
"""
import json
import os
import re

import pytest

import doc_figures

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
SIGN = "\u00a7"
# Folders that are not the project's own text (environments, build outputs, VCS data).
SKIP_DIRS = {".git", ".venv", "build", "dist", "exported", "node_modules", "__pycache__", ".pytest_cache"}
SCANNED_EXTENSIONS = (".py", ".ipynb", ".md")

# [docs/]page.md, then the sign and a number or range; or the sign alone (a bare reference).
REFERENCE = re.compile(r"(?P<page>(?:docs/)?[A-Za-z0-9_][\w.-]*\.md)?[`*]?\s*" + SIGN
                       + r"\s*(?P<first>\d+)(?:\s*[-\u2013]\s*" + SIGN + r"?(?P<last>\d+))?")
SECTION_HEADING = re.compile(r"^#{1,6}\s+" + SIGN + r"(\d+)\b", re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def project_files(extensions):
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith(".")
                         and not d.endswith(".egg-info"))
        for f in sorted(files):
            if f.endswith(extensions):
                yield os.path.join(folder, f)


def sections_of(page_path):
    with open(page_path, encoding="utf-8") as f:
        return {int(n) for n in SECTION_HEADING.findall(f.read())}


def reference_problems(path, text):
    """One message per reference in `text` (the contents of `path`) that points nowhere."""
    rel = os.path.relpath(path, ROOT)
    in_docs = os.path.dirname(os.path.abspath(path)) == DOCS
    problems = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if SIGN not in line:
            continue
        if in_docs and SECTION_HEADING.match(line):
            line = SECTION_HEADING.sub("", line, count=1)  # the section's own heading defines it
        found = list(REFERENCE.finditer(line))
        if line.count(SIGN) > sum(m.group(0).count(SIGN) for m in found):
            problems.append(f"{rel}:{lineno}: a section sign without a section number: {line.strip()!r}")
        for m in found:
            page = m.group("page")
            if page is None:
                if not in_docs:
                    problems.append(f"{rel}:{lineno}: {m.group(0).strip()!r} names no docs page "
                                    f"(write docs/<page>.md {SIGN}N)")
                    continue
                target = os.path.abspath(path)
            elif page.startswith("docs/"):
                target = os.path.join(ROOT, page)
            elif in_docs:
                target = os.path.join(DOCS, page)
            else:
                problems.append(f"{rel}:{lineno}: {page!r} is not a docs page (write docs/{page})")
                continue
            if not os.path.isfile(target):
                problems.append(f"{rel}:{lineno}: {m.group(0).strip()!r}: {os.path.relpath(target, ROOT)} "
                                f"does not exist")
                continue
            first = int(m.group("first"))
            last = int(m.group("last") or first)
            missing = sorted(set(range(first, last + 1)) - sections_of(target)) if first <= last else [first]
            if missing:
                problems.append(f"{rel}:{lineno}: {m.group(0).strip()!r}: {os.path.relpath(target, ROOT)} "
                                f"has no section {', '.join(map(str, missing))}")
    return problems


def github_anchor(heading):
    """The anchor GitHub gives a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors_of(md_path):
    with open(md_path, encoding="utf-8") as f:
        text = re.sub(r"```.*?```", "", f.read(), flags=re.S)
    return {github_anchor(h) for h in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", text, re.M)}


def link_problems(path):
    rel = os.path.relpath(path, ROOT)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # links inside code blocks are examples
    text = re.sub(r"`[^`\n]*`", "", text)
    problems = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
            continue  # URLs, mailto:, anchors within the page
        file_part, _, anchor = target.partition("#")
        resolved = os.path.normpath(os.path.join(os.path.dirname(path), file_part))
        if not os.path.exists(resolved):
            problems.append(f"{rel}: link {target!r}: {os.path.relpath(resolved, ROOT)} does not exist")
        elif anchor and resolved.endswith(".md") and anchor not in anchors_of(resolved):
            problems.append(f"{rel}: link {target!r}: no heading with anchor #{anchor}")
    return problems


def test_section_references_name_existing_docs_sections():
    problems, scanned = [], 0
    for path in project_files(SCANNED_EXTENSIONS):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        scanned += 1
        problems += reference_problems(path, text)
    assert scanned > 50  # the walk really covered the project
    assert not problems, "section references that point nowhere:\n" + "\n".join(problems)


def test_code_cites_the_model_notes():
    """The model code's references are there and resolve (the check above sees them)."""
    with open(os.path.join(ROOT, "export", "model", "modules.py"), encoding="utf-8") as f:
        assert "docs/model.md " + SIGN in f.read()
    assert sections_of(os.path.join(DOCS, "model.md")) == set(range(1, 13))


@pytest.mark.parametrize("text, bad", [
    ("see spec " + SIGN + "2", "names no docs page"),
    ("docs/nowhere.md " + SIGN + "1", "does not exist"),
    ("docs/model.md " + SIGN + "99", "has no section 99"),
    ("docs/model.md " + SIGN + "11-13", "has no section 13"),
    ("model.md " + SIGN + "2", "is not a docs page"),
    ("the " + SIGN + " sign alone", "without a section number"),
])
def test_the_check_catches_broken_references(text, bad):
    problems = reference_problems(os.path.join(ROOT, "export", "example.py"), text)
    assert len(problems) == 1 and bad in problems[0], problems


def test_the_check_accepts_good_references():
    code = os.path.join(ROOT, "export", "example.py")
    assert reference_problems(code, "docs/model.md " + SIGN + "3-7 and `docs/model.md " + SIGN + "9`") == []
    page = os.path.join(DOCS, "model.md")  # a docs page may cite its own sections bare
    assert reference_problems(page, "see " + SIGN + "2 and [model.md " + SIGN + "10](model.md)") == []


def test_relative_links_resolve():
    pages = [os.path.join(ROOT, "README.md")] + sorted(
        os.path.join(DOCS, f) for f in os.listdir(DOCS) if f.endswith(".md"))
    assert len(pages) > 5
    problems = [p for page in pages for p in link_problems(page)]
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_the_link_check_catches_broken_links(tmp_path):
    """A missing file and a missing anchor are both reported; URLs are not followed."""
    page = tmp_path / "page.md"
    page.write_text("[a](docs/missing-page.md) [b](README.md#no-such-heading) [c](https://example.com)\n")
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n")
    problems = link_problems(str(page))
    assert len(problems) == 2, problems


# --- figures from benchmarks (tests/doc_figures.py) ----------------------------------------------

def test_benchmark_figures_match_their_json():
    """Every figure marked `<!-- bench FILE: EXPR -->` in README.md and docs/ is what the
    benchmark's JSON says, to the precision the page writes it (bounds hold and are tight)."""
    figures, problems = doc_figures.check_pages()
    assert len(figures) > 250  # the pages really were read (290 marked figures)
    assert not problems, "figures that differ from their benchmark's JSON:\n" + "\n".join(problems)


def test_every_benchmark_json_is_quoted_by_the_docs():
    """A benchmark whose JSON no page quotes is either unreported or quoted without a marker."""
    quoted = {f.source.split()[0].split("#")[0].rstrip(":") for f in doc_figures.check_pages()[0]}
    stored = {f"benchmarks/{f}" for f in os.listdir(doc_figures.BENCHMARKS) if f.endswith(".json")}
    assert stored - quoted == set(), "benchmark results no page quotes with a marker"


BENCH = {"export": {"ratio": 1.209, "seconds": 25.4, "bytes": 1466126336},
         "rows": [{"dtype": "float32", "speed": 1.0}, {"dtype": "bfloat16", "speed": 0.7707}],
         "accuracy": {"2.16": {"a_embedding": 1.6106e-3, "b_embedding": 7.2e-4}},
         "runs": {"1": {"median": 1.68, "best": 1.73}, "8": {"median": 1.84, "best": 1.88}}}


@pytest.mark.parametrize("line", [
    "peak 1.21x<!-- bench b.json: export.ratio -->",
    "1.47 GB, 25 s<!-- bench b.json#export: bytes / 1e9; seconds -->",
    "| 8 | 1.84 (1.88) |<!-- bench b.json#runs.8.{median,best}: $.runs.8.median; $.runs.8.best -->",
    "batch 1 and 8: 1.68 (1.73), 1.84 (1.88)<!-- bench b.json: runs.{1,8}.{median,best} -->",
    "embeddings ≤ 1.7e-3<!-- bench b.json: max(accuracy.\"2.16\".*_embedding) -->",
    "at least 7.2e-4<!-- bench b.json: min(accuracy.\"2.16\".*_embedding) -->",
    "0.77x slower, 77%<!-- bench b.json: rows[dtype=bfloat16].speed; rows[dtype=bfloat16].speed * 100 -->",
    "9.5% faster<!-- bench b.json: (runs.8.median / runs.1.median - 1) * 100 -->",
])
def test_the_figure_check_accepts_true_figures(line):
    figures, problems = doc_figures.figures_of("page.md", line, load=lambda name: BENCH)
    assert figures and not problems and [f.problem() for f in figures] == [None] * len(figures)


@pytest.mark.parametrize("line, bad", [
    ("peak 1.22x<!-- bench b.json: export.ratio -->", "rounded to the written precision (0.01)"),  # README's old figure
    ("peak 1.2x<!-- bench b.json: export.ratio -->", None),  # a coarser figure is still the value rounded
    ("peak 1.210x<!-- bench b.json: export.ratio -->", "rounded to the written precision (0.001)"),
    ("embeddings ≤ 1.6e-3<!-- bench b.json: max(accuracy.\"2.16\".*_embedding) -->", "upper bound that holds"),
    ("at most 3.0e-3<!-- bench b.json: max(accuracy.\"2.16\".*_embedding) -->", "upper bound that holds and is tight"),
    ("cos ≥ 8e-4<!-- bench b.json: min(accuracy.\"2.16\".*_embedding) -->", "lower bound that holds"),
    ("| 8 | 1.84 (1.87) |<!-- bench b.json: runs.8.{median,best} -->", "'1.87' but"),
    ("| 1.84 |<!-- bench b.json: runs.8.{median,best} -->", "only 1 figures are written"),
    ("2 s<!-- bench b.json: export.second -->", "no key 'second' (keys: ratio, seconds, bytes)"),
    ("2 s<!-- bench b.json: rows[dtype=int8].speed -->", "matches 0 elements"),
    ("2 s<!-- bench b.json: export -->", "not a number"),
    ("2 s<!-- bench b.json: export.seconds +* 2 -->", "unexpected"),
    ("2 s<!-- bench b.json: -->", "without an expression"),
])
def test_the_figure_check_catches_drift(line, bad):
    figures, problems = doc_figures.figures_of("page.md", line, load=lambda name: BENCH)
    problems += [p for p in (f.problem() for f in figures) if p]
    if bad is None:
        assert not problems, problems
    else:
        assert len(problems) == 1 and bad in problems[0] and problems[0].startswith("page.md:1"), problems


def test_the_figure_check_reads_the_real_files():
    with pytest.raises(doc_figures.MarkerError, match="benchmarks/nowhere.json does not exist"):
        doc_figures._load_benchmark("nowhere.json")
    [fig], problems = doc_figures.figures_of("p.md", "1.21x<!-- bench export_memory.json: latest.sources.checkpoint.ratio -->")
    assert not problems and fig.value == json.load(open(os.path.join(ROOT, "benchmarks", "export_memory.json"))
                                                   )["latest"]["sources"]["checkpoint"]["ratio"]


# --- the test map in docs/testing.md ----------------------------------------------------------------

def test_testing_page_lists_every_test_file():
    """docs/testing.md names every tests/test_*.py and helper module, and names no file that is gone."""
    with open(os.path.join(DOCS, "testing.md"), encoding="utf-8") as f:
        page = f.read()
    tests_dir = os.path.join(ROOT, "tests")
    present = {f for f in os.listdir(tests_dir) if f.endswith(".py") and f != "__init__.py"}
    named = set(re.findall(r"`(?:tests/)?(\w+\.py)`", page))
    missing = sorted(present - named)
    assert not missing, f"docs/testing.md does not list: {', '.join(missing)}"
    gone = sorted(n for n in named - present if n.startswith("test_"))
    assert not gone, f"docs/testing.md lists test files that do not exist: {', '.join(gone)}"
