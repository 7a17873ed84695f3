"""Text helpers of the rules engine: OCR-tolerant patterns, anchor scans and line-break dots.

Every rule starts from a few literal anchor words found with ``str.find`` (far faster than a
regex over the whole report) and matches its pattern only in short windows around them.

Example:
    >>> low = "tumour abuts the. visceral pleura"
    >>> scan = Scan(rx(r"visceral~pleura"), ("pleura",), before=20, after=10)
    >>> merge_windows(low, find_all(low, scan.anchors[0]), scan)
    [(7, 33)]
    >>> is_glue_dot(low, low, low.index("."))  # "the." only marks an old line break
    True
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass


def rx(pattern: str) -> re.Pattern[str]:
    """Compile a lower-case pattern where ``~`` is a word gap that tolerates OCR dots and hyphens
    (``~?``: an optional one).

    Example:
        >>> bool(rx(r"poorly~differentiated").search("poorly. differentiated"))
        True
    """
    gap = pattern.replace("~?", r"[ .\-/]{0,3}").replace("~", r"[ .\-/]{1,3}")
    return re.compile(gap)


# A '.' after these words is an old line break inside a sentence, not a sentence end.
_GLUE_TEXT = (
    "a an the of to and or with by for in at from into onto is are was were be been being no "
    "not but as than that which its their this these on per via without nor both either "
    "neither has have had does do did any all very more less most also focally extends "
    "extending invades invading involves involving up down through within beyond over under "
    "near between dr mr mrs ms vs e.g i.e approx cf fig st involve invade infiltrate "
    "infiltrates extend penetrate penetrates show shows reveal reveals demonstrate "
    "demonstrates space contain contains include includes measure measures measuring "
    "visceral pleural surgical lymph invasive metastatic squamous "
)
GLUE_WORDS = frozenset(_GLUE_TEXT.split())


def is_glue_word(word: str) -> bool:
    """True for a word after which a '.' is no sentence end: a glue word, an adverb in -ly
    ("POORLY.", "FOCALLY.") or a word ending in '-' or ','.

    Example:
        >>> is_glue_word("the"), is_glue_word("focally"), is_glue_word("carcinoma")
        (True, True, False)
    """
    return word in GLUE_WORDS or word.endswith(("-", ",", "ly"))


@dataclass(frozen=True)
class Scan:
    """A pattern plus the literal anchor words it needs and how far around them it can reach."""

    pattern: re.Pattern[str]
    anchors: tuple[str, ...]
    before: int = 60
    after: int = 100


def find_all(text: str, word: str) -> list[int]:
    """Every start index of ``word`` in ``text`` (``str.find`` is far faster than a regex).

    Example:
        >>> find_all("a pleura, the pleura", "pleura")
        [2, 14]
    """
    found = []
    find = text.find
    i = find(word)
    while i != -1:
        found.append(i)
        i = find(word, i + 1)
    return found


def merge_windows(low: str, hits: list[int], scan: Scan) -> list[tuple[int, int]]:
    """Merged windows from ``scan.before`` characters before to ``scan.after`` after each hit.

    Example:
        >>> merge_windows("x " * 10 + "pleura", [20, 22], Scan(re.compile("p"), ("p",), 6, 6))
        [(14, 26)]
    """
    spans: list[tuple[int, int]] = []
    n, before, after = len(low), scan.before, scan.after
    for i in hits:
        a, b = max(0, i - before), min(n, i + after)
        if spans and a <= spans[-1][1]:
            spans[-1] = (spans[-1][0], b)
        else:
            spans.append((a, b))
    return spans


def is_glue_dot(text: str, low: str, i: int, case_tells: Callable[[], bool] = lambda: True) -> bool:
    """True for a '.' that only marks a line break: a lower-case word follows (where case tells
    sentence starts), or a glue word precedes, or the word before ends in '-' or ','.

    Example:
        >>> t = "invades through the. visceral pleura"
        >>> is_glue_dot(t, t, t.index("."))
        True
    """
    if text[i + 2 : i + 3].islower() and case_tells():
        return True
    return is_glue_word(low[low.rfind(" ", 0, i) + 1 : i])
