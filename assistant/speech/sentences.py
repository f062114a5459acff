"""Where sentences end: the one rule that speech, generation and answers all follow.

A sentence ends at ``.``, ``!`` or ``?`` (a run of them, then any closing quotes or
brackets) followed by white space or the end of the text, and at a line break. A full
stop after a common abbreviation ("Dr.", "p.m.") or a single initial does not end one;
decimals ("21.5") never do.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

_ABBREVIATIONS = frozenset({
    "mr", "mrs", "ms", "dr", "prof", "st", "sr", "jr", "vs", "etc", "e.g", "i.e", "approx",
    "no", "a.m", "p.m", "fig", "mt", "ft", "min", "max", "dept", "inc", "ltd",
})
_END = re.compile(r"[.!?]+[\"')\]]*(?=\s|$)")
_SPEAKABLE = re.compile(r"\w")


def _ends(line: str) -> Iterator[int]:
    """The positions just after each sentence end in one line."""
    start = 0
    for end in _END.finditer(line):
        words = line[start : end.start()].split()
        last = words[-1].lower().rstrip(".") if words else ""
        if last in _ABBREVIATIONS or (len(last) == 1 and last.isalpha() and
                                      line[end.start()] == "."):
            continue
        yield end.end()
        start = end.end()


def split_sentences(text: str) -> list[str]:
    """``text`` as sentences, in order, each with its white space collapsed; pieces with
    nothing to say (no letter or digit) are dropped."""
    sentences: list[str] = []
    for line in text.splitlines():
        start = 0
        for end in _ends(line):
            sentences.append(line[start:end])
            start = end
        sentences.append(line[start:])
    return [" ".join(s.split()) for s in sentences if _SPEAKABLE.search(s)]


def whole_sentences(text: str) -> str:
    """``text`` up to the end of its last complete sentence ("" if it has none)."""
    last = 0
    offset = 0
    for line in text.splitlines(keepends=True):
        for end in _ends(line.rstrip("\r\n")):
            last = offset + end
        offset += len(line)
    return text[:last].strip()


def ends_sentence(text: str) -> bool:
    """Does ``text`` end with sentence punctuation (a trailing abbreviation's counts too)?"""
    stripped = text.rstrip()
    ends = list(_END.finditer(stripped))
    return bool(ends) and ends[-1].end() == len(stripped)


def join_sentences(parts: Iterable[str]) -> str:
    """Pieces of text joined into one, each that does not end a sentence ending with ``.``."""
    out: list[str] = []
    for part in (p.strip() for p in parts):
        if not part:
            continue
        if out and not ends_sentence(out[-1]):
            out[-1] += "."
        out.append(part)
    return " ".join(out)
