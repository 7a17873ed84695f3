"""The prepared report: collapsed text, clauses, sections, boilerplate masks and anchor scans.

A :class:`Doc` is built once per report; every index (clause boundaries, section tiers, masks,
TNM codes, anchor hits) is computed lazily and at most once. Matching runs on a lower-case copy
that keeps every index, so :meth:`Doc.evidence` cuts from the original text.

Example:
    >>> doc = Doc("CLINICAL HISTORY: mass.  DIAGNOSIS: Carcinoma invades the. visceral pleura.")
    >>> i = doc.low.index("pleura")
    >>> doc.low[slice(*doc.clause(i, i + 6))]  # "the." is an old line break, not a sentence end
    ' diagnosis: carcinoma invades the. visceral pleura.'
    >>> doc.tier(5) == FALLBACK, doc.tier(i) == MAIN
    (True, True)
    >>> doc.evidence(i, i + 6)  # up to 60 characters each side
    'L HISTORY: mass. DIAGNOSIS: Carcinoma invades the. visceral pleura.'
"""

from __future__ import annotations

import bisect
import re
import string
from collections.abc import Iterator
from dataclasses import dataclass

from fivewsi.reports.rules.sections import FALLBACK, MAIN, find_masks, find_tiers
from fivewsi.reports.rules.text import Scan, find_all, is_glue_dot, merge_windows
from fivewsi.reports.rules.tnm import TnmCode, find_tnm_codes

__all__ = ["EVIDENCE_CHARS", "FALLBACK", "MAIN", "Doc", "Finding"]

#: Characters of context kept on each side of the deciding match.
EVIDENCE_CHARS = 60

_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
# Clause boundary candidates: sentence ends (checked for line-break dots later) and contrasts.
_BOUNDARY_WORDS = (";", "?", " - ", " but ", " however", " although ", " except ")


@dataclass(frozen=True)
class Finding:
    """One piece of evidence for a field: its value, where it is and how explicit it is."""

    value: str
    start: int
    end: int
    rank: int = 1  # higher = more explicit (a synoptic line beats a passing phrase)


class Doc:
    """A report prepared for matching: collapsed text, ASCII-lower copy and lazy indexes.

    Example:
        >>> d = Doc("GROSS DESCRIPTION: tumour.  DIAGNOSIS: carcinoma")
        >>> d.tier(5), d.tier(40)
        (1, 2)
    """

    __slots__ = (
        "_cands",
        "_case",
        "_glue",
        "_hits",
        "_masks",
        "_spans",
        "_tiers",
        "_tnm",
        "_words",
        "low",
        "text",
    )

    def __init__(self, raw: str) -> None:
        self.text = " ".join(raw.split())
        low = self.text.lower()
        # A few characters ('İ') grow when lowered; then lower ASCII only, so indexes match.
        self.low = low if len(low) == len(self.text) else self.text.translate(_LOWER)
        self._cands: list[int] | None = None
        self._case: bool | None = None
        self._glue: dict[int, bool] = {}
        self._hits: dict[tuple[str, ...], list[int]] = {}
        self._words: dict[str, list[int]] = {}
        self._spans: dict[tuple[tuple[str, ...], int, int], list[tuple[int, int]]] = {}
        self._tnm: list[TnmCode] | None = None
        self._tiers: tuple[list[int], list[int]] | None = None
        self._masks: list[tuple[int, int]] | None = None

    # --- clauses ------------------------------------------------------------------------------

    def _candidates(self) -> list[int]:
        if self._cands is None:
            low = self.low
            found = find_all(low, ". ")
            for word in _BOUNDARY_WORDS:
                found.extend(find_all(low, word))
            self._cands = sorted(found)
        return self._cands

    def _case_tells(self) -> bool:
        """Whether case marks sentence starts: in a report typed all in lower case a lower-case
        word after '.' says nothing."""
        if self._case is None:
            text = self.text
            after = "".join(text[i + 2 : i + 3] for i in find_all(self.low, ". "))
            upper = sum(map(str.isupper, after))
            self._case = upper >= 0.25 * (upper + sum(map(str.islower, after)))
        return self._case

    def _is_bound(self, i: int) -> bool:
        if self.low[i] != ".":
            return True
        cached = self._glue.get(i)
        if cached is None:
            cached = self._glue[i] = is_glue_dot(self.text, self.low, i, self._case_tells)
        return not cached

    def clause(self, start: int, end: int) -> tuple[int, int]:
        """The span of the clause(s) holding ``[start, end)``.

        Example:
            >>> d = Doc("Pleura free. No tumor; margins clear")
            >>> d.low[slice(*d.clause(14, 16))]
            ' no tumor'
        """
        cands = self._candidates()
        i = bisect.bisect_left(cands, start) - 1
        while i >= 0 and not self._is_bound(cands[i]):
            i -= 1
        left = cands[i] + 1 if i >= 0 else 0
        j = bisect.bisect_left(cands, max(end, start + 1))
        while j < len(cands) and not self._is_bound(cands[j]):
            j += 1
        right = cands[j] if j < len(cands) else len(self.low)
        return left, right

    def last_stop(self, start: int, end: int) -> int | None:
        """The last sentence end (not a mere "but") inside ``[start, end)``, else None."""
        cands = self._candidates()
        i = bisect.bisect_left(cands, end) - 1
        while i >= 0 and cands[i] >= start:
            if self.low[cands[i]] in ".;!?" and self._is_bound(cands[i]):
                return cands[i]
            i -= 1
        return None

    def sentence_start(self, pos: int) -> int:
        """Where the sentence holding ``pos`` starts (a "but" does not start one)."""
        cands = self._candidates()
        i = bisect.bisect_left(cands, pos) - 1
        while i >= 0 and not (self.low[cands[i]] in ".;?" and self._is_bound(cands[i])):
            i -= 1
        return cands[i] + 1 if i >= 0 else 0

    def crosses(self, start: int, end: int) -> bool:
        """True if a sentence end (not a mere "but") lies inside ``[start, end)``."""
        return self.last_stop(start, end) is not None

    # --- sections and boilerplate -------------------------------------------------------------

    def tier(self, pos: int) -> int:
        """The tier of the section holding ``pos`` (gross / history / frozen are fallback)."""
        if self._tiers is None:
            self._tiers = find_tiers(self.low)
        starts, values = self._tiers
        return values[bisect.bisect_right(starts, pos) - 1]

    def tnm_codes(self) -> list[TnmCode]:
        """The G/L/V/R/PL codes of the report's TNM strings (see :mod:`~.tnm`).

        Example:
            >>> Doc("Stage: pT2 pN0 L1 V0 R0.").tnm_codes()[0]
            ('l', '1', 15, 17)
        """
        if self._tnm is None:
            self._tnm = find_tnm_codes(self.low)
        return self._tnm

    def masked(self, pos: int) -> bool:
        """True inside TNM-definition boilerplate."""
        if self._masks is None:
            self._masks = find_masks(self)
        i = bisect.bisect_right(self._masks, (pos, len(self.low) + 1)) - 1
        return i >= 0 and self._masks[i][0] <= pos < self._masks[i][1]

    # --- anchors ------------------------------------------------------------------------------

    def hits(self, anchors: tuple[str, ...]) -> list[int]:
        """Sorted start indexes of every anchor word."""
        found = self._hits.get(anchors)
        if found is None:
            words = self._words
            for w in anchors:
                if w not in words:
                    words[w] = find_all(self.low, w)
            found = self._hits[anchors] = sorted(i for w in anchors for i in words[w])
        return found

    def scan(self, scan: Scan) -> Iterator[re.Match[str]]:
        """Matches of ``scan.pattern``, searched only in windows around its anchor words."""
        key = (scan.anchors, scan.before, scan.after)
        spans = self._spans.get(key)
        if spans is None:
            spans = self._spans[key] = merge_windows(self.low, self.hits(scan.anchors), scan)
        for a, b in spans:
            yield from scan.pattern.finditer(self.low, a, b)

    def scan_sentences(self, scan: Scan) -> Iterator[re.Match[str]]:
        """Like :meth:`scan`, but a match may not run across a sentence end: one that would
        is searched again from that end ("...free of tumor. Carcinoma present at margin")."""
        key = (scan.anchors, scan.before, scan.after)
        if key not in self._spans:
            self._spans[key] = merge_windows(self.low, self.hits(scan.anchors), scan)
        for a, b in self._spans[key]:
            pos = a
            while pos < b:
                m = scan.pattern.search(self.low, pos, b)
                if m is None:
                    break
                stop = self.last_stop(m.start(), m.end())
                if stop is None:
                    yield m
                    pos = max(m.end(), m.start() + 1)
                else:
                    pos = stop + 1

    def finding(self, value: str, start: int, end: int, rank: int = 1) -> Finding:
        """A finding at ``[start, end)`` (its section's tier is looked up only on a conflict)."""
        return Finding(value, start, end, rank)

    def main_text(self, findings: list[Finding]) -> list[Finding]:
        """The findings of the best tier present: fallback text (gross, history, frozen
        section) counts only where the main text is silent. Tiers are only looked up when the
        findings disagree, since they cannot change a unanimous answer."""
        if len({f.value for f in findings}) < 2:
            return findings
        tiers = [self.tier(f.start) for f in findings]
        top = max(tiers)
        return [f for f, t in zip(findings, tiers, strict=True) if t == top]

    def evidence(self, start: int, end: int) -> str:
        """The matched words with up to ``EVIDENCE_CHARS`` of context on each side."""
        a = max(0, start - EVIDENCE_CHARS)
        b = min(len(self.text), end + EVIDENCE_CHARS)
        return self.text[a:b].strip()
