"""Numbers, units and fractions written the way the sentence library reads them.

Speech recognition writes what it heard in its own way ("21.5°C", "a 1.5-hour timer",
"an hour and a half"), and people type the same. The library's sentences read degrees as a
word, halves of a timer as "and a half", and digits without separators. Each rule below
rewrites one such spelling; a sentence none of them touches is returned as it came.
"""

from __future__ import annotations

import re
from collections.abc import Callable

_UNITS = "hour|minute|second"


def _half_of(match: re.Match[str]) -> str:
    whole, unit = match.group("whole"), match.group("unit")
    if match.groupdict().get("timer"):  # "a 1.5 hour timer": 90 minute timer
        smaller = {"hour": "minute", "minute": "second"}.get(unit)
        if smaller is not None:
            return f"{int(whole) * 60 + 30} {smaller} timer"
    return f"{whole} and a half {unit}s"


def _fraction_of(match: re.Match[str]) -> str:
    """'1.25 hours' and the like: in the next smaller unit, which the library can say."""
    value = float(match.group("number"))
    unit = match.group("unit")
    smaller = {"hour": ("minute", 60), "minute": ("second", 60)}.get(unit)
    if smaller is None:
        return match.group(0)
    name, factor = smaller
    amount = value * factor
    if amount != int(amount):
        return match.group(0)
    return f"{int(amount)} {name}s"


_RULES: tuple[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]], ...] = (
    # 1,000 -> 1000 (a thousands separator, not a list: three digits follow)
    (re.compile(r"(?<=\d),(?=\d{3}\b)"), ""),
    # "80 7" -> 87: "eighty seven" written as its two words' numbers
    (re.compile(r"(?<![\d.,])\b(?P<tens>[2-9]0) (?P<unit>[1-9])\b(?![.,]?\d)"),
     lambda m: str(int(m.group("tens")) + int(m.group("unit")))),
    # 21°C, 21 ° F, 21º -> 21 degrees
    (re.compile(r"\s*[°º]\s*(?:[CF]\b)?", re.IGNORECASE), " degrees "),
    (re.compile(r"(?<=\d)\s*(?:deg|degs)\b\.?", re.IGNORECASE), " degrees"),
    # ½ -> and a half
    (re.compile(r"(?<=\d)\s*½"), " and a half"),
    # an hour and a half / a minute and a half -> 1 and a half hours
    (re.compile(rf"\b(?:an|a|one)\s+(?P<unit>{_UNITS})\s+and\s+a\s+half\b", re.IGNORECASE),
     lambda m: f"1 and a half {m.group('unit')}s"),
    # 2 hours and a half -> 2 and a half hours
    (re.compile(rf"\b(?P<whole>\d+)\s+(?P<unit>{_UNITS})s?\s+and\s+a\s+half\b",
                re.IGNORECASE), _half_of),
    # half an hour / a half hour / half a minute -> 30 minutes / 30 seconds
    (re.compile(r"\b(?:half\s+an?|a\s+half)\s+hour\b", re.IGNORECASE), "30 minutes"),
    (re.compile(r"\b(?:half\s+a|a\s+half)\s+minute\b", re.IGNORECASE), "30 seconds"),
    # 1.5 hours -> 1 and a half hours; 1.25 hours -> 75 minutes
    (re.compile(rf"\b(?P<whole>\d+)\.5\s*-?\s*(?P<unit>{_UNITS})s?\b(?P<timer>\s+timer\b)?",
                re.IGNORECASE), _half_of),
    (re.compile(rf"\b(?P<number>\d+\.\d+)\s*-?\s*(?P<unit>{_UNITS})s?\b", re.IGNORECASE),
     _fraction_of),
    # an hour / a minute -> 1 hour (after a timer word or "for"/"in")
    (re.compile(rf"\b(?P<lead>for|in|after|of)\s+(?:an|a|one)\s+(?P<unit>{_UNITS})\b",
                re.IGNORECASE), lambda m: f"{m.group('lead')} 1 {m.group('unit')}"),
    (re.compile(rf"\b(?:an|a)\s+(?P<unit>{_UNITS})\s+timer\b", re.IGNORECASE),
     lambda m: f"a 1 {m.group('unit')} timer"),
)


_SPACE_BEFORE_STOP = re.compile(r"\s+([.,!?;:])")


def normalise(text: str) -> str:
    """``text`` with numbers, units and fractions spelled the way the library reads them."""
    out = text
    for pattern, replacement in _RULES:
        out = pattern.sub(replacement, out)
    if out == text:
        return text
    return _SPACE_BEFORE_STOP.sub(r"\1", " ".join(out.split()))
