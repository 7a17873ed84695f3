"""Report sections and boilerplate: which text decides and which text only fills a silence.

Gross description, clinical history, block summaries and frozen-section text are *fallback*
sections; diagnosis, microscopy, synoptic lines, comments and addenda are the *main* text. TNM
definitions copied into a report ("pT2a: Tumor greater than 3 cm ... invades the visceral
pleura") are masked, so that no finding is read from them.

Example:
    >>> starts, tiers = find_tiers("gross description: mass. diagnosis: carcinoma")
    >>> [t == FALLBACK for t in tiers]
    [False, True, False]
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from fivewsi.reports.rules.text import Scan, find_all

if TYPE_CHECKING:
    from fivewsi.reports.rules.document import Doc

# Tiers: text that decides (diagnosis, microscopy, synoptic) and text that only fills a silence.
MAIN, FALLBACK = 2, 1

# A header ends at ':' / '.' / ';' / ' -' ("GROSS DESCRIPTION.", "Diagnosis:", "Comment (s):").
_HEADER_END = r"(?=\s?(?:\([^)]{0,20}\)\s?)?(?:[:.;]| -))"

# Section headers by anchor word: (anchor, pattern matched at the anchor, tier).
_HEADERS: tuple[tuple[str, re.Pattern[str], int], ...] = tuple(
    (anchor, re.compile(pattern + _HEADER_END), tier)
    for anchor, pattern, tier in (
        ("gross", r"gross(?: description| examination)?", FALLBACK),
        ("macroscop", r"macroscop(?:ic description|y|ic)", FALLBACK),
        (
            "clinical",
            r"clinical (?:history|information|notes|data|diagnosis(?: and question)?)"
            r"(?:/\w+)?",
            FALLBACK,
        ),
        ("history", r"history", FALLBACK),
        ("frozen", r"frozen section(?: diagnosis)?", FALLBACK),
        ("intra", r"intra-? ?op(?:erative)? (?:consult\w*|diagnosis)(?: diagnosis)?", FALLBACK),
        ("f/s", r"f/s(?: tat)?", FALLBACK),
        ("fs", r"fs[a-z]?\d{0,2}", FALLBACK),
        ("summary of sections", r"summary of sections", FALLBACK),
        ("summary", r"summary(?: statement)?", MAIN),
        ("submitted as follows", r"submitted as follows", FALLBACK),
        ("block summary", r"block summary", FALLBACK),
        ("cassette summary", r"cassette summary", FALLBACK),
        ("received", r"received", FALLBACK),
        ("diagnos", r"diagnos[ie]s(?:/diagnoses)?", MAIN),
        ("microscop", r"microscop(?:ic description|ic examination|y|ic)(?: and comment)?", MAIN),
        ("comment", r"comments?(?:/supplementary remark)?", MAIN),
        ("note", r"notes?", MAIN),
        ("synop", r"synop(?:tic\w*|sis)(?: report(?:ing form)?| data| worksheet)?", MAIN),
        ("checklist", r"checklist", MAIN),
        ("addend", r"addend(?:um|a)(?: report)?", MAIN),
    )
)
_FALLBACK_DIAGNOSIS = re.compile(
    r"(?:pre|post)[- ]?op(?:erative)?\.? $|frozen section $|clinical $"
)


def find_tiers(low: str) -> tuple[list[int], list[int]]:
    """Section starts and their tiers, from the header words of the report.

    Example:
        >>> find_tiers("clinical history: mass. final diagnosis: carcinoma")
        ([0, 0, 30], [2, 1, 2])
    """
    marks: list[tuple[int, int, int]] = []
    for anchor, pattern, tier in _HEADERS:
        for i in find_all(low, anchor):
            m = pattern.match(low, i)
            if not m or (i and low[i - 1].isalpha()):
                continue
            if anchor == "diagnos" and _FALLBACK_DIAGNOSIS.search(low, max(0, i - 16), i):
                tier = FALLBACK
            elif anchor == "diagnos":
                tier = MAIN
            marks.append((i, m.end(), tier))
    marks.sort()
    starts, tiers, last_end = [0], [MAIN], -1
    for i, end, tier in marks:
        if i < last_end:
            continue  # "notes" inside "clinical notes", "summary" inside "block summary"
        starts.append(i)
        tiers.append(tier)
        last_end = end
    return starts, tiers


# TNM-definition boilerplate: "pT2a: Tumor greater than 3 cm ... invades the visceral pleura".
_BOILERPLATE_START = re.compile(
    r": ?(?:tumou?rs? (?:greater|more|larger|of any size|\d|that|which|with|less|size|>|<|≤"
    r"|measuring|in the|in a)|metastas[ie]s in|no regional|carcinoma in situ)"
    r"|any of the following|tumou?rs? of any size (?:that|with|in)"
)
_BOILERPLATE_SCAN = Scan(
    _BOILERPLATE_START,
    (": tumo", ":tumo", ": metast", ": no regional", "following", "any size"),
    30,
    60,
)
_BOILERPLATE_END = re.compile(
    r"regional lymph|\(pn\)|\bp?n ?[0-3x]\b|distant metasta|\(pm\)|number (?:of|examined)"
    r"|nodes examined|specify|margins?\b|lymph-vascular|additional|stage grouping"
)
_BOILERPLATE_MAX = 700


def find_masks(doc: Doc) -> list[tuple[int, int]]:
    """Spans of TNM-definition boilerplate, where findings are ignored.

    Example:
        >>> from fivewsi.reports.rules.document import Doc
        >>> find_masks(Doc("pT2a: tumor greater than 3 cm that invades the visceral pleura. pN0"))
        [(4, 64)]
    """
    masks: list[tuple[int, int]] = []
    low = doc.low
    for m in doc.scan(_BOILERPLATE_SCAN):
        if masks and m.start() < masks[-1][1]:
            continue
        limit = min(len(low), m.end() + _BOILERPLATE_MAX)
        end = _BOILERPLATE_END.search(low, m.end(), limit)
        masks.append((m.start(), end.start() if end else limit))
    return masks
