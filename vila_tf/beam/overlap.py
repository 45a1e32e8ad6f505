"""Refuses, before a job starts, outputs that could overwrite an input (docs/beam.md).

A Beam output `PREFIX` becomes files `PREFIX-00000-of-00004.tar` (Beam's shard template, five or
more digits each, then the suffix); the number of shards is only known when the job ends. So an
output is refused when

- a file an input pattern matches now has such a name (a `--filtered-output data/train` next to
  `data/train-00000-of-00001.tar`: the filtered subset replaced the input), or
- the input pattern itself could match such a name (`--input 'data/*.tar' --filtered-output
  data/kept`: not an overwrite today, but the next run of the same command reads the copy as
  input and then replaces it).

Local paths are compared after resolving symbolic links and `..` in their folders, so another
spelling of the same folder is caught too.
"""
from __future__ import annotations

import os
import re
from collections import deque
from typing import Callable, Iterable, NamedTuple, Optional, Sequence

from apache_beam.io.filesystems import FileSystems

_DIGITS = "0123456789"
_SHARD_DIGITS = 5  # Beam's default shard name template: -SSSSS-of-NNNNN, wider when there are more


class Output(NamedTuple):
    flag: str  # the command-line flag and its value, for the message: "--output scores/run1"
    prefix: str  # what Beam adds the shard names to: "scores/run1-results"
    suffixes: tuple  # the endings Beam may give its files: (".tar",), (".tfrecord", ".tfrecord.gz"), ...


def _is_local(path: str) -> bool:
    return FileSystems.get_scheme(path) in (None, "file")


def _resolved(path: str) -> str:
    """A local path with its folder's links and '..' resolved (the last part kept: it may not exist)."""
    if not _is_local(path):
        return path
    path = os.path.abspath(path)
    folder, name = os.path.split(path)
    return os.path.join(os.path.realpath(folder), name)


def _resolved_pattern(pattern: str) -> str:
    """The pattern with the folders before its first wildcard resolved like `_resolved`."""
    if not _is_local(pattern):
        return pattern
    pattern = os.path.abspath(pattern)
    literal = re.split(r"[*?[]", pattern, 1)[0]
    folder = os.path.dirname(literal)
    return os.path.join(os.path.realpath(folder), pattern[len(folder):].lstrip("/"))


def output_regex(output: Output) -> re.Pattern:
    prefix = re.escape(_resolved(output.prefix))
    endings = "|".join(re.escape(s) for s in output.suffixes)
    return re.compile(rf"{prefix}-\d{{{_SHARD_DIGITS},}}-of-\d{{{_SHARD_DIGITS},}}(?:{endings})\Z", re.S)


# -- can a glob match a name of the output's form? -------------------------------------------------------
# Both are small automata over characters: the glob as Beam reads it (`*`: any run without '/',
# `**`: any run, `?`: any character, `[...]`: a class) and the output names (the prefix, five or
# more digits, '-of-', five or more digits, a suffix). They intersect when the product automaton
# reaches both ends.

class _Token(NamedTuple):
    accepts: Callable[[str], bool]
    loop: bool  # matches any number of characters (each accepted), else exactly one
    chars: str = ""  # the characters it can produce (output tokens only)


def _literal(c: str) -> _Token:
    return _Token(lambda x, c=c: x == c, False, c)


def _glob_tokens(pattern: str) -> list:
    """Tokens of a Beam glob, following apache_beam.io.filesystem.FileSystem.translate_pattern."""
    tokens, i, n = [], 0, len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c == "*":
            if i < n and pattern[i] == "*":
                tokens.append(_Token(lambda x: True, True))
                i += 1
            else:
                tokens.append(_Token(lambda x: x not in "/\\", True))
        elif c == "?":
            tokens.append(_Token(lambda x: True, False))
        elif c == "[":
            j = i
            if j < n and pattern[j] == "!":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:
                tokens.append(_literal("["))
                continue
            stuff = pattern[i:j].replace("\\", "\\\\")
            i = j + 1
            if stuff[0] == "!":
                stuff = "^" + stuff[1:]
            elif stuff[0] == "^":
                stuff = "\\" + stuff
            cls = re.compile(f"[{stuff}]", re.S)
            tokens.append(_Token(lambda x, cls=cls: cls.fullmatch(x) is not None, False))
        else:
            tokens.append(_literal(c))
    return tokens


def _output_tokens(prefix: str, suffix: str) -> list:
    digit = _Token(lambda x: x in _DIGITS, False, _DIGITS)
    more = _Token(lambda x: x in _DIGITS, True, _DIGITS)
    number = [digit] * _SHARD_DIGITS + [more]
    return [_literal(c) for c in prefix + "-"] + number + [_literal(c) for c in "-of-"] + number + \
        [_literal(c) for c in suffix]


def glob_can_match(pattern: str, prefix: str, suffix: str) -> bool:
    """Whether some name PREFIX-<5+ digits>-of-<5+ digits>SUFFIX matches the glob `pattern`."""
    g, o = _glob_tokens(pattern), _output_tokens(prefix, suffix)
    seen, todo = {(0, 0)}, deque([(0, 0)])
    while todo:
        i, j = todo.popleft()
        if i == len(g) and j == len(o):
            return True
        steps = []
        if i < len(g) and g[i].loop:
            steps.append((i + 1, j))
        if j < len(o) and o[j].loop:
            steps.append((i, j + 1))
        if i < len(g) and j < len(o) and any(g[i].accepts(c) for c in o[j].chars):
            steps.append((i if g[i].loop else i + 1, j if o[j].loop else j + 1))
        for step in steps:
            if step not in seen:
                seen.add(step)
                todo.append(step)
    return False


# -- the check -----------------------------------------------------------------------------------------

def _shown(path: str) -> str:
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def overwritten_input(patterns: Sequence[str], outputs: Iterable[Output],
                      matched: Callable[[str], Iterable[str]]) -> Optional[str]:
    """Why an output could overwrite an input (one line naming both), or None. `matched(pattern)`
    lists the paths a pattern matches now (the local ones are enough: object stores have no links,
    so there the pattern check covers every name)."""
    outputs = list(outputs)
    regexes = [(out, output_regex(out)) for out in outputs]
    for pattern in patterns:
        for path in matched(pattern):
            for out, regex in regexes:
                if regex.match(_resolved(path)) or (_is_local(path) and regex.match(os.path.realpath(path))):
                    return (f"{_shown(out.flag)} would overwrite the input {_shown(path)}: give an output prefix "
                            "outside what --input matches")
    for pattern in patterns:
        resolved = _resolved_pattern(pattern)
        for out in outputs:
            for suffix in out.suffixes:
                if glob_can_match(resolved, _resolved(out.prefix), suffix):
                    return (f"{_shown(out.flag)} would write {_shown(out.prefix)}-00000-of-0000N{suffix} files, "
                            f"which --input {_shown(pattern)} matches: a run would overwrite its own inputs (or "
                            "the next run read its outputs as inputs); give an output prefix outside what --input "
                            "matches")
    return None
