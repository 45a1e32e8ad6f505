"""Benchmark figures in the docs, checked against the JSON the benchmark wrote.

A figure taken from a benchmark carries a marker right after it, on the same line:

    peaks at 1.47 GB<!-- bench export_memory.json: latest.sources.checkpoint.peak_rss_bytes / 1e9 -->

The marker names a file under benchmarks/ and one or more expressions separated by `;`. Each
expression gives one or more values; the marker checks that many numbers written just before it
(since the start of the line or the previous marker), in order. A table row therefore carries one
marker at its end for all its figures (the row's label, before them, is not checked):

    | 8 | 1.84 (1.88) | 2.13 (2.22) |<!-- bench results.json#scoring.8.{median,best}: images_per_s.native; images_per_s.pixels -->

`#PREFIX` is put in front of every path of the marker's expressions (a path written `$.a.b` starts
from the top of the file instead). An expression is arithmetic (`+ - * /`, parentheses, numbers,
`max(...)`, `min(...)`) over paths into the JSON: keys joined by dots (`"2.16"` quoted where a key
holds a dot, a space or a slash; a list's elements by number), `{a,b}` for several keys in turn (a
path then gives several values, and arithmetic works value by value), `*` in a key as a glob (so
write a multiplication with spaces: `share * 100`), and `[field=value,...]` to pick the one
element of a list whose fields match.

How a written figure must relate to its value (`precision` = one unit in the figure's last written
digit, so 1.21 has 0.01, 9e-8 has 1e-8 and 25 has 1):
- plain (`1.21x`, `25 s`, `0.4%`): the value rounds to it, |value - figure| <= precision / 2;
- an upper bound (`≤ 1.1e-3`, `at most 2.1e-7`, `< 3`): it holds and is tight,
  figure - precision < value <= figure;
- a lower bound (`≥ 0.99998`, `at least 0.95`): it holds and is tight, figure <= value < figure + precision.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = os.path.join(ROOT, "benchmarks")

MARKER = re.compile(r"<!--\s*bench\s+(?P<file>[\w.-]+\.json)(?:#(?P<prefix>[^:]+?))?\s*:(?P<exprs>.*?)-->")
# A written number: not glued to a word or a decimal point before it (float32, x86_64, v2.0),
# thousands separators allowed (28,243), a sign, decimals and an exponent (-0.06, 1.0e-3).
NUMBER = re.compile(r"(?<![\w.])[-\u2212]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+\u2212]?\d+)?(?!\d)")
UPPER = ("\u2264", "<=", "<", "at most", "up to")
LOWER = ("\u2265", ">=", ">", "at least")


class MarkerError(ValueError):
    """A marker that cannot be evaluated (unknown file, key, syntax): the message says which."""


@dataclasses.dataclass(frozen=True)
class Figure:
    page: str        # path relative to the repository
    line: int
    written: str     # the number as the page writes it
    relation: str    # "=", "<=" or ">="
    value: float     # what the JSON gives
    source: str      # file and expression, for messages

    def precision(self) -> float:
        mantissa, _, exponent = self.written.replace("\u2212", "-").replace(",", "").lower().partition("e")
        decimals = len(mantissa.partition(".")[2])
        return 10.0 ** (int(exponent or 0) - decimals)

    def number(self) -> float:
        return float(self.written.replace("\u2212", "-").replace(",", ""))

    def problem(self) -> str | None:
        """None when the figure agrees with the value, else what is wrong."""
        written, value, unit = self.number(), self.value, self.precision()
        slack = 1e-9 * max(abs(written), abs(value), unit)  # float noise in the JSON and the scaling
        if self.relation == "<=":
            ok = written - unit + slack < value <= written + slack
            want = "an upper bound that holds and is tight (figure - precision < value <= figure)"
        elif self.relation == ">=":
            ok = written - slack <= value < written + unit - slack
            want = "a lower bound that holds and is tight (figure <= value < figure + precision)"
        else:
            ok = abs(value - written) <= unit / 2 + slack
            want = f"the value rounded to the written precision ({unit:g})"
        if ok:
            return None
        return (f"{self.page}:{self.line}: {self.written!r} but {self.source} gives {value!r}; "
                f"the page must state {want}")


# --- expressions ------------------------------------------------------------------------------------

_TOKEN = re.compile(r"""\s*(?:
    (?P<number>\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)(?![\w.])
  | (?P<func>max|min)\s*\(
  | (?P<path>(?:\$\.)?(?:"[^"]*"|\{[^}]*\}|[A-Za-z_][\w*]*|\*[\w*]*(?=[\w.\[]))(?:\[[^\]]*\])*(?:\.(?:"[^"]*"|\{[^}]*\}|[\w*]+)(?:\[[^\]]*\])*)*)
  | (?P<op>[-+*/(),])
)""", re.X)
_SEGMENT = re.compile(r'(?P<key>"[^"]*"|\{[^}]*\}|[\w*]+)(?P<selectors>(?:\[[^\]]*\])*)')


def _tokens(text: str, where: str) -> list[tuple[str, str]]:
    out, pos, text = [], 0, text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise MarkerError(f"{where}: cannot read {text[pos:]!r} in expression {text!r}")
        kind = m.lastgroup
        out.append((kind, m.group(kind)))
        pos = m.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return out


def _split_path(path: str) -> list[str]:
    """Dots outside quotes, braces and brackets separate keys."""
    parts, depth, quoted, current = [], 0, False, ""
    for ch in path:
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch in "{[":
            depth += 1
        elif not quoted and ch in "}]":
            depth -= 1
        if ch == "." and not quoted and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return parts + [current]


def _keys(node, key: str, where: str) -> list:
    if key.startswith('"'):
        wanted = [key[1:-1]]
    elif key.startswith("{"):
        wanted = [k.strip() for k in key[1:-1].split(",")]
    else:
        wanted = [key]
    found = []
    for k in wanted:
        if isinstance(node, list):
            if not k.isdigit() or int(k) >= len(node):
                raise MarkerError(f"{where}: {k!r} is not an index of a list of {len(node)}")
            found.append(node[int(k)])
        elif not isinstance(node, dict):
            raise MarkerError(f"{where}: {k!r} under a {type(node).__name__}, not an object")
        elif "*" in k:
            matches = [v for name, v in node.items() if fnmatch.fnmatchcase(name, k)]
            if not matches:
                raise MarkerError(f"{where}: no key matches {k!r} (keys: {', '.join(node)})")
            found += matches
        elif k in node:
            found.append(node[k])
        else:
            raise MarkerError(f"{where}: no key {k!r} (keys: {', '.join(node)})")
    return found


def _select(node, selector: str, where: str):
    if not isinstance(node, list):
        raise MarkerError(f"{where}: [{selector}] needs a list, found a {type(node).__name__}")
    if selector.isdigit():
        return node[int(selector)]
    conditions = dict(c.split("=", 1) for c in selector.split(",") if "=" in c)
    if len(conditions) != selector.count(",") + 1:
        raise MarkerError(f"{where}: [{selector}]: write [N] or [field=value,...] (no commas in values)")
    hits = [x for x in node if isinstance(x, dict) and all(str(x.get(k)) == v for k, v in conditions.items())]
    if len(hits) != 1:
        raise MarkerError(f"{where}: [{selector}] matches {len(hits)} elements, not one")
    return hits[0]


def resolve(data, path: str, where: str) -> list[float]:
    """The values `path` names in `data`, in order."""
    nodes = [data]
    for part in _split_path(path):
        m = _SEGMENT.fullmatch(part)
        if not m:
            raise MarkerError(f"{where}: cannot read the key {part!r}")
        nodes = [child for node in nodes for child in _keys(node, m.group("key"), where)]
        for selector in re.findall(r"\[([^\]]*)\]", m.group("selectors")):
            nodes = [_select(node, selector, where) for node in nodes]
    for node in nodes:
        if isinstance(node, bool) or not isinstance(node, (int, float)):
            raise MarkerError(f"{where}: {path!r} is {node!r}, not a number")
    return [float(n) for n in nodes]


def _combine(a: list[float], b: list[float], op: str, where: str) -> list[float]:
    if len(a) != len(b) and 1 not in (len(a), len(b)):
        raise MarkerError(f"{where}: {len(a)} values {op} {len(b)} values")
    n = max(len(a), len(b))
    a, b = (a * n if len(a) == 1 else a), (b * n if len(b) == 1 else b)
    return [{"+": x + y, "-": x - y, "*": x * y, "/": x / y if y else float("nan")}[op] for x, y in zip(a, b)]


def evaluate(expression: str, data, prefix: str = "", where: str = "") -> list[float]:
    """The values of one marker expression (arithmetic over paths; see the module docstring)."""
    tokens = _tokens(expression, where)
    pos = 0

    def peek():
        return tokens[pos] if pos < len(tokens) else (None, None)

    def take(kind=None, text=None):
        nonlocal pos
        tok = peek()
        if tok[0] is None or (kind and tok[0] != kind) or (text and tok[1] != text):
            raise MarkerError(f"{where}: expression {expression!r}: expected {text or kind}, found {tok[1]!r}")
        pos += 1
        return tok

    def factor():
        kind, text = peek()
        if kind == "number":
            take()
            return [float(text)]
        if kind == "path":
            take()
            if text.startswith("$."):  # from the top of the file, not under the prefix
                return resolve(data, text[2:], where)
            return resolve(data, f"{prefix}.{text}" if prefix else text, where)
        if kind == "func":
            take()
            values = expr()
            while peek() == ("op", ","):
                take()
                values = values + expr()
            take("op", ")")
            return [max(values) if text == "max" else min(values)]
        if (kind, text) == ("op", "("):
            take()
            values = expr()
            take("op", ")")
            return values
        if (kind, text) == ("op", "-"):
            take()
            return [-v for v in factor()]
        raise MarkerError(f"{where}: expression {expression!r}: unexpected {text!r}")

    def term():
        values = factor()
        while peek()[0] == "op" and peek()[1] in "*/":
            op = take()[1]
            values = _combine(values, factor(), op, where)
        return values

    def expr():
        values = term()
        while peek()[0] == "op" and peek()[1] in "+-":
            op = take()[1]
            values = _combine(values, term(), op, where)
        return values

    values = expr()
    if pos != len(tokens):
        raise MarkerError(f"{where}: expression {expression!r}: unexpected {tokens[pos][1]!r}")
    return values


# --- pages -----------------------------------------------------------------------------------------

def _relation(before: str) -> str:
    before = before.rstrip(" *(~\u00a0").lower()
    if before.endswith(UPPER):
        return "<="
    if before.endswith(LOWER):
        return ">="
    return "="


def figures_of(page: str, text: str, load=None) -> tuple[list[Figure], list[str]]:
    """Every marked figure of a page and the problems found while reading the markers.

    `load(name)` gives a benchmark file's parsed JSON (default: benchmarks/<name>)."""
    load = load or _load_benchmark
    figures, problems = [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        start = 0
        for m in MARKER.finditer(line):
            where = f"{page}:{lineno}"
            span = line[start:m.start()]
            start = m.end()
            try:
                data = load(m.group("file"))
                exprs = [e for e in m.group("exprs").split(";") if e.strip()]
                if not exprs:
                    raise MarkerError(f"{where}: a marker without an expression")
                values = [v for e in exprs for v in evaluate(e, data, (m.group("prefix") or "").strip(), where)]
            except MarkerError as e:
                problems.append(str(e))
                continue
            written = list(NUMBER.finditer(span))
            if len(written) < len(values):
                problems.append(f"{where}: the marker gives {len(values)} values but only {len(written)} "
                                f"figures are written before it: {span.strip()!r}")
                continue
            prefix = f"#{m.group('prefix').strip()}" if m.group("prefix") else ""
            source = f"benchmarks/{m.group('file')}{prefix}: {m.group('exprs').strip()}"
            for w, value in zip(written[len(written) - len(values):], values):
                figures.append(Figure(page, lineno, w.group(0), _relation(span[:w.start()]), value, source))
    return figures, problems


_CACHE: dict = {}


def _load_benchmark(name: str):
    if name not in _CACHE:
        path = os.path.join(BENCHMARKS, name)
        if not os.path.isfile(path):
            raise MarkerError(f"benchmarks/{name} does not exist")
        with open(path, encoding="utf-8") as f:
            _CACHE[name] = json.load(f)
    return _CACHE[name]


def pages() -> list[str]:
    docs = os.path.join(ROOT, "docs")
    return [os.path.join(ROOT, "README.md")] + sorted(
        os.path.join(docs, f) for f in os.listdir(docs) if f.endswith(".md"))


def check_pages(paths=None) -> tuple[list[Figure], list[str]]:
    """All marked figures of README.md and docs/*.md and every problem with them."""
    figures, problems = [], []
    for path in paths or pages():
        with open(path, encoding="utf-8") as f:
            found, marker_problems = figures_of(os.path.relpath(path, ROOT), f.read())
        figures += found
        problems += marker_problems + [p for p in (fig.problem() for fig in found) if p]
    return figures, problems
