"""Report vocabulary shared by the normalizer and the rule sets: grades and residual-tumour codes.

One home for what a grade number, a grade word or an ``R`` code means, so that reading a
free-text answer (:mod:`fivewsi.reports.normalize`) and reading a raw report
(:mod:`fivewsi.reports.rules`) cannot drift apart. How a grade or code is *found* in text stays
with each reader; what it *means* lives here.

Example:
    >>> grade_level("3"), grade_level("iv")
    ('poor', 'undifferentiated')
    >>> grade_range(["moderate", "poor"]), grade_range(["well", "poor"])
    ('moderate_to_poor', 'mixed')
    >>> R_CODES["1"], R_CODES["x"]
    ('involved', 'unknown')
"""

from __future__ import annotations

from collections.abc import Iterable

from fivewsi.reports.schema import UNKNOWN

#: Categories of a present / absent finding.
PRESENCE_CATEGORIES: tuple[str, ...] = ("present", "absent", UNKNOWN)
#: Categories of surgical margins.
MARGIN_CATEGORIES: tuple[str, ...] = ("clear", "involved", UNKNOWN)
#: Differentiation levels, best to worst; grade 1-4 in that order.
GRADE_LEVELS: tuple[str, ...] = ("well", "moderate", "poor", "undifferentiated")
#: Every differentiation category: the levels, the ranges between them, mixed, unknown.
GRADE_CATEGORIES: tuple[str, ...] = (
    "well",
    "well_to_moderate",
    "moderate",
    "moderate_to_poor",
    "poor",
    "undifferentiated",
    "mixed",
    UNKNOWN,
)
#: Roman grade numerals.
ROMAN = {"i": 1, "ii": 2, "iii": 3, "iv": 4}

#: Differentiation words (lower case) and their level. "low(ly) differentiated" is poorly
#: differentiated (a translation idiom), unlike "low grade" in :data:`GRADE_ADJECTIVES`.
GRADE_WORDS = {
    "well": "well",
    "highly": "well",
    "moderately": "moderate",
    "moderate": "moderate",
    "intermediately": "moderate",
    "poor": "poor",
    "poorly": "poor",
    "low": "poor",
    "lowly": "poor",
    "un": "undifferentiated",
    "undifferentiated": "undifferentiated",
}
#: "high grade" carcinoma is poorly differentiated, "low grade" well differentiated.
GRADE_ADJECTIVES = {"high": "poor", "intermediate": "moderate", "low": "well"}

#: Residual tumour codes (R0, R1, R2, RX) → margins category.
R_CODES = {"0": "clear", "1": "involved", "2": "involved", "x": UNKNOWN}


def grade_level(number: str | int) -> str:
    """The level of grade ``number``: 1-4 as digits or Roman numerals (lower case).

    Raises:
        KeyError / ValueError: not a grade number from 1 to 4.

    Example:
        >>> grade_level(1), grade_level("ii")
        ('well', 'moderate')
    """
    value = ROMAN[number] if isinstance(number, str) and number in ROMAN else int(number)
    if not 1 <= value <= len(GRADE_LEVELS):
        raise ValueError(f"grade {number!r} is not 1-4")
    return GRADE_LEVELS[value - 1]


def grade_range(levels: Iterable[str]) -> str:
    """One differentiation category for the levels a text names (at least one).

    Neighbours make a range (well-moderate, moderate-poor); poorly to undifferentiated is the
    poorly differentiated end (G3-G4); moderate with anything worse is moderate to poor; well
    with poor or undifferentiated is mixed.

    Example:
        >>> grade_range(["well"]), grade_range(["well", "moderate"])
        ('well', 'well_to_moderate')
        >>> grade_range(["poor", "undifferentiated"]), grade_range(["moderate", "undifferentiated"])
        ('poor', 'moderate_to_poor')
        >>> grade_range(["well", "moderate", "poor"])
        'mixed'
    """
    ranks = sorted({GRADE_LEVELS.index(level) for level in levels})
    low, high = ranks[0], ranks[-1]
    if low == high:
        return GRADE_LEVELS[low]
    if (low, high) == (0, 1):
        return "well_to_moderate"
    if low == 2:
        return "poor"
    if low == 1:
        return "moderate_to_poor"
    return "mixed"
