"""The documentation resolves: section references and relative links point at what exists.

A section reference is a section sign followed by a number, optionally a range ("3-7"), written
after the page it points into: `docs/model.md` then the sign and the number. In code, tests,
notebooks and every Markdown file the page must be named (`docs/<page>.md`; inside docs/ the
sibling name `<page>.md` is enough); only a page of docs/ may cite its own sections bare. A page's
sections are its headings that start with the sign and a number (`## <sign>3 Layer conventions`).

Relative links of README.md and docs/*.md must point at an existing file (and, with a `#anchor`
into a Markdown file, at one of its headings).
"""
import os
import re

import pytest

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
