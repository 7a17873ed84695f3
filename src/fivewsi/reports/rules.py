"""Offline rule-based backend: the six lung-report fields read from raw report text by regexes.

The rules read a report as it really is (OCR noise, old line breaks left as stray dots, synoptic
checklists, several specimens, addenda) and follow ``report-field-definitions.md``:

- ``differentiation``: a labelled grade ("Histologic grade: G2", "Grade/Differentiation. II",
  "grade 3 of 4", "Tumor grade: 1-2 out of 3", numbered checklist answers) beats a ``G`` code in
  a TNM string ("G. 3, pT 2, pV 0") or in brackets ("(G3)"), which beats grade words
  ("moderately to poorly differentiated", OCR-damaged "DORLY DIFFERENTIATED", "high grade
  carcinoma"); then the first in the text. ``G4`` / "grade 4 of 4" is undifferentiated, ``GX``
  unknown; nuclear grade and hedged words ("could be undifferentiated") do not count.
- ``stas``: only "STAS", "spread through air spaces" or tumour cells lying free in alveoli /
  air spaces; lymphatic or vascular invasion is never STAS.
- ``vascular_invasion``: lymphovascular, angiolymphatic, lymphatic, venous, arterial, blood
  vessel invasion, tumour emboli in vessels, lymphangiosis carcinomatosa and ``L``/``V`` codes of
  a TNM string; present if any is present, absent if stated absent and none present; suspicious
  or indeterminate counts as unknown, "no definite" as absent.
- ``pleural_invasion``: visceral pleural invasion statements and ``PL0``-``PL3``, the most
  explicit statement winning; "up to but not through", "abuts", "within 1 mm of" and "pleura
  uninvolved" are absent, "into but not through" (beyond the elastic layer) is present, and
  invading the parietal pleura implies it.
- ``adjacent_invasion``: direct invasion of chest wall, parietal or mediastinal pleura,
  diaphragm, mediastinum, pericardium, heart, great vessels, oesophagus, vertebra, rib, phrenic
  nerve (``PL3`` too); absent only when the report says the tumour is confined to the lung or
  that direct / extrapulmonary extension is not identified (a single structure "not invaded"
  leaves it unknown). Lymph nodes, satellite nodules, bronchi and visceral pleura never count.
- ``margins``: margin lines and sentences and residual-tumour codes (``R0``, "Margin status:
  R1", "hence RX") but never node stations ("4R", "R2 lymph node"); involved if any surgical
  margin is involved, "close but negative" and a tumour-to-margin distance are clear, ``RX`` is
  unknown; the visceral pleural "margin" is not a surgical margin.

How it works: the text is whitespace-collapsed and cut into clauses at ``;``, sentence ends,
" - " bullets and "but" / "however"; a '.' that only marks an old line break (a lower-case word
follows in a mixed-case report, or "the", "of", "not", an adverb ... precedes) is no sentence
end. A finding's polarity is the value after its ``Label:`` (or the option a numbered checklist
answer "2. 1. yes. 2. no." picks), else a negation or hedge before it in its clause ("no
evidence of", "negative for", "suspicious for"), else a cue after it ("not identified", "is
present"). Verb phrases ("invades through the visceral pleura") are read from the noun back to
the closest verb of the same sentence. Findings inside TNM-definition boilerplate ("pT2a: Tumor
greater than 3 cm ... invades the visceral pleura") are dropped, and findings in gross,
clinical-history and frozen-section text count only where the rest of the report is silent or
agrees. For speed every rule starts from a few literal anchor words found with ``str.find``.

Example:
    >>> from fivewsi.reports.questions import load_question_set
    >>> text = ("Squamous cell carcinoma, moderately differentiated (G2). Lymphovascular "
    ...         "invasion: not identified. Margins free of tumour (R0).")
    >>> answers = extract_rules(text, load_question_set("lung"))
    >>> answers["differentiation"].category, answers["vascular_invasion"].category
    ('moderate', 'absent')
    >>> answers["margins"].category
    'clear'
"""

from __future__ import annotations

import bisect
import logging
import re
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from fivewsi.reports.questions import QuestionSet
from fivewsi.reports.schema import UNKNOWN, FieldAnswer

log = logging.getLogger(__name__)

#: The fields (question keys) these rules answer, with the categories each can give.
CATEGORIES: dict[str, tuple[str, ...]] = {
    "differentiation": (
        "well",
        "well_to_moderate",
        "moderate",
        "moderate_to_poor",
        "poor",
        "undifferentiated",
        "mixed",
        UNKNOWN,
    ),
    "stas": ("present", "absent", UNKNOWN),
    "vascular_invasion": ("present", "absent", UNKNOWN),
    "pleural_invasion": ("present", "absent", UNKNOWN),
    "adjacent_invasion": ("present", "absent", UNKNOWN),
    "margins": ("clear", "involved", UNKNOWN),
}
FIELDS: tuple[str, ...] = tuple(CATEGORIES)

#: Characters of context kept on each side of the deciding match.
EVIDENCE_CHARS = 60

# Polarity of one mention.
POS, NEG, UNC = "pos", "neg", "unc"

# Tiers: text that decides (diagnosis, microscopy, synoptic) and text that only fills a silence.
_MAIN, _FALLBACK = 2, 1

_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def _rx(pattern: str) -> re.Pattern[str]:
    """Compile a lower-case pattern where ``~`` is a word gap that tolerates OCR dots and hyphens
    (``~?``: an optional one).

    Example:
        >>> bool(_rx(r"poorly~differentiated").search("poorly. differentiated"))
        True
    """
    gap = pattern.replace("~?", r"[ .\-/]{0,3}").replace("~", r"[ .\-/]{1,3}")
    return re.compile(gap)


# ---------------------------------------------------------------------------------------------
# The prepared report: collapsed text, clauses, section tiers, boilerplate masks, anchor windows
# ---------------------------------------------------------------------------------------------

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
_GLUE_WORDS = frozenset(_GLUE_TEXT.split())
# Clause boundary candidates: sentence ends (checked for line-break dots later) and contrasts.
_BOUNDARY_WORDS = (";", "?", " - ", " but ", " however", " although ", " except ")


@dataclass(frozen=True)
class _Finding:
    """One piece of evidence for a field: its value, where it is and how explicit it is."""

    value: str
    start: int
    end: int
    rank: int = 1  # higher = more explicit (a synoptic line beats a passing phrase)


@dataclass(frozen=True)
class _Scan:
    """A pattern plus the literal anchor words it needs and how far around them it can reach."""

    pattern: re.Pattern[str]
    anchors: tuple[str, ...]
    before: int = 60
    after: int = 100


class _Doc:
    """A report prepared for matching: collapsed text, ASCII-lower copy and lazy indexes.

    Example:
        >>> d = _Doc("GROSS DESCRIPTION: tumour.  DIAGNOSIS: carcinoma")
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
        self._tnm: list[tuple[str, str, int, int]] | None = None
        self._tiers: tuple[list[int], list[int]] | None = None
        self._masks: list[tuple[int, int]] | None = None

    # --- clauses ------------------------------------------------------------------------------

    def _candidates(self) -> list[int]:
        if self._cands is None:
            low = self.low
            found = _find_all(low, ". ")
            for word in _BOUNDARY_WORDS:
                found.extend(_find_all(low, word))
            self._cands = sorted(found)
        return self._cands

    def _case_tells(self) -> bool:
        """Whether case marks sentence starts: in a report typed all in lower case a lower-case
        word after '.' says nothing."""
        if self._case is None:
            text = self.text
            after = "".join(text[i + 2 : i + 3] for i in _find_all(self.low, ". "))
            upper = sum(map(str.isupper, after))
            self._case = upper >= 0.25 * (upper + sum(map(str.islower, after)))
        return self._case

    def _is_bound(self, i: int) -> bool:
        if self.low[i] != ".":
            return True
        cached = self._glue.get(i)
        if cached is None:
            cached = self._glue[i] = _is_glue_dot(self.text, self.low, i, self._case_tells)
        return not cached

    def clause(self, start: int, end: int) -> tuple[int, int]:
        """The span of the clause(s) holding ``[start, end)``.

        Example:
            >>> d = _Doc("Pleura free. No tumor; margins clear")
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
            self._tiers = _find_tiers(self.low)
        starts, values = self._tiers
        return values[bisect.bisect_right(starts, pos) - 1]

    def masked(self, pos: int) -> bool:
        """True inside TNM-definition boilerplate."""
        if self._masks is None:
            self._masks = _find_masks(self)
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
                    words[w] = _find_all(self.low, w)
            found = self._hits[anchors] = sorted(i for w in anchors for i in words[w])
        return found

    def scan(self, scan: _Scan) -> Iterator[re.Match[str]]:
        """Matches of ``scan.pattern``, searched only in windows around its anchor words."""
        key = (scan.anchors, scan.before, scan.after)
        spans = self._spans.get(key)
        if spans is None:
            spans = self._spans[key] = _merge_windows(self.low, self.hits(scan.anchors), scan)
        for a, b in spans:
            yield from scan.pattern.finditer(self.low, a, b)

    def scan_sentences(self, scan: _Scan) -> Iterator[re.Match[str]]:
        """Like :meth:`scan`, but a match may not run across a sentence end: one that would
        is searched again from that end ("...free of tumor. Carcinoma present at margin")."""
        key = (scan.anchors, scan.before, scan.after)
        if key not in self._spans:
            self._spans[key] = _merge_windows(self.low, self.hits(scan.anchors), scan)
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

    def finding(self, value: str, start: int, end: int, rank: int = 1) -> _Finding:
        """A finding at ``[start, end)`` (its section's tier is looked up only on a conflict)."""
        return _Finding(value, start, end, rank)

    def main_text(self, findings: list[_Finding]) -> list[_Finding]:
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


def _find_all(text: str, word: str) -> list[int]:
    """Every start index of ``word`` in ``text`` (``str.find`` is far faster than a regex).

    Example:
        >>> _find_all("a pleura, the pleura", "pleura")
        [2, 14]
    """
    found = []
    find = text.find
    i = find(word)
    while i != -1:
        found.append(i)
        i = find(word, i + 1)
    return found


def _merge_windows(low: str, hits: list[int], scan: _Scan) -> list[tuple[int, int]]:
    """Merged windows from ``scan.before`` characters before to ``scan.after`` after each hit.

    Example:
        >>> _merge_windows("x " * 10 + "pleura", [20, 22], _Scan(re.compile("p"), ("p",), 6, 6))
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


def _is_glue_dot(
    text: str, low: str, i: int, case_tells: Callable[[], bool] = lambda: True
) -> bool:
    """True for a '.' that only marks a line break: a lower-case word follows (where case tells
    sentence starts), or a glue word precedes, or the word before ends in '-' or ','.

    Example:
        >>> t = "invades through the. visceral pleura"
        >>> _is_glue_dot(t, t, t.index("."))
        True
    """
    if text[i + 2 : i + 3].islower() and case_tells():
        return True
    word = low[low.rfind(" ", 0, i) + 1 : i]
    # Adverbs ("POORLY.", "FOCALLY.") never end a report sentence either.
    return word in _GLUE_WORDS or word.endswith(("-", ",", "ly"))


# A header ends at ':' / '.' / ';' / ' -' ("GROSS DESCRIPTION.", "Diagnosis:", "Comment (s):").
_HEADER_END = r"(?=\s?(?:\([^)]{0,20}\)\s?)?(?:[:.;]| -))"

# Section headers by anchor word: (anchor, pattern matched at the anchor, tier).
_HEADERS: tuple[tuple[str, re.Pattern[str], int], ...] = tuple(
    (anchor, re.compile(pattern + _HEADER_END), tier)
    for anchor, pattern, tier in (
        ("gross", r"gross(?: description| examination)?", _FALLBACK),
        ("macroscop", r"macroscop(?:ic description|y|ic)", _FALLBACK),
        (
            "clinical",
            r"clinical (?:history|information|notes|data|diagnosis(?: and question)?)"
            r"(?:/\w+)?",
            _FALLBACK,
        ),
        ("history", r"history", _FALLBACK),
        ("frozen", r"frozen section(?: diagnosis)?", _FALLBACK),
        ("intra", r"intra-? ?op(?:erative)? (?:consult\w*|diagnosis)(?: diagnosis)?", _FALLBACK),
        ("f/s", r"f/s(?: tat)?", _FALLBACK),
        ("fs", r"fs[a-z]?\d{0,2}", _FALLBACK),
        ("summary of sections", r"summary of sections", _FALLBACK),
        ("summary", r"summary(?: statement)?", _MAIN),
        ("submitted as follows", r"submitted as follows", _FALLBACK),
        ("block summary", r"block summary", _FALLBACK),
        ("cassette summary", r"cassette summary", _FALLBACK),
        ("received", r"received", _FALLBACK),
        ("diagnos", r"diagnos[ie]s(?:/diagnoses)?", _MAIN),
        ("microscop", r"microscop(?:ic description|ic examination|y|ic)(?: and comment)?", _MAIN),
        ("comment", r"comments?(?:/supplementary remark)?", _MAIN),
        ("note", r"notes?", _MAIN),
        ("synop", r"synop(?:tic\w*|sis)(?: report(?:ing form)?| data| worksheet)?", _MAIN),
        ("checklist", r"checklist", _MAIN),
        ("addend", r"addend(?:um|a)(?: report)?", _MAIN),
    )
)
_FALLBACK_DIAGNOSIS = re.compile(
    r"(?:pre|post)[- ]?op(?:erative)?\.? $|frozen section $|clinical $"
)


def _find_tiers(low: str) -> tuple[list[int], list[int]]:
    """Section starts and their tiers, from the header words of the report.

    Example:
        >>> _find_tiers("clinical history: mass. final diagnosis: carcinoma")
        ([0, 0, 30], [2, 1, 2])
    """
    marks: list[tuple[int, int, int]] = []
    for anchor, pattern, tier in _HEADERS:
        for i in _find_all(low, anchor):
            m = pattern.match(low, i)
            if not m or (i and low[i - 1].isalpha()):
                continue
            if anchor == "diagnos" and _FALLBACK_DIAGNOSIS.search(low, max(0, i - 16), i):
                tier = _FALLBACK
            elif anchor == "diagnos":
                tier = _MAIN
            marks.append((i, m.end(), tier))
    marks.sort()
    starts, tiers, last_end = [0], [_MAIN], -1
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
_BOILERPLATE_SCAN = _Scan(
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


def _find_masks(doc: _Doc) -> list[tuple[int, int]]:
    """Spans of TNM-definition boilerplate, where findings are ignored."""
    masks: list[tuple[int, int]] = []
    low = doc.low
    for m in doc.scan(_BOILERPLATE_SCAN):
        if masks and m.start() < masks[-1][1]:
            continue
        limit = min(len(low), m.end() + _BOILERPLATE_MAX)
        end = _BOILERPLATE_END.search(low, m.end(), limit)
        masks.append((m.start(), end.start() if end else limit))
    return masks


# ---------------------------------------------------------------------------------------------
# Polarity: label values, numbered checklist answers, negation and hedges within a clause
# ---------------------------------------------------------------------------------------------

_UNC_WORDS = (
    r"suspicious|suspicion|indeterminate|equivocal|cannot|can not|can't|unable|unknown"
    r"|undetermined|uncertain|questionabl\w*|possibl\w*|probabl\w*|pending|n/?a\b|\?"
    r"|not (?:specified|applicable|assessed|assessable|evaluated|evaluable|determined|reported"
    r"|known|certain|sampled|submitted)|suggest\w*"
)
_NEG_WORDS = (
    r"not[ .]{1,2}(?:(?:definitively|definitely|convincingly)[ .]{1,2})?(?:identified"
    r"|identifided|seen|present|detected|observed|evident|found|noted|involved|invaded"
    r"|appreciated|infiltrated|demonstrated)|absent|negative|none"
    r"|no\b|nil\b|uninvolved|free\b|without|intact"
)
_POS_WORDS = (
    r"present|identified|seen|positive|yes|noted|detected|observed|found|involved|extensive"
    r"|focal|focally|multifocal|minimal|\+"
)
# First cue inside a label's value ("Venous invasion: Not identified").
# (A stray OCR letter may stick to "not": "fNOT IDENTIFIED".)
_VALUE_CUE = re.compile(
    rf"\b(?:(?P<unc>{_UNC_WORDS})|[a-z]?(?P<neg>{_NEG_WORDS})|(?P<pos>{_POS_WORDS}))"
)
_VALUE_HEDGE = re.compile(r"\b(?:suspicious|suggestive|equivocal|indeterminate|possibl\w*)\b")
# A cue right after a prose mention ("invasion is not identified", "INVASION PRESENT").
_AFTER_CUE = re.compile(
    r"[\s.]*(?:\([^)]{0,25}\)[\s.]?)?(?:(?:is|are|was|were|has been|have been|by tumou?r is"
    r"|by tumou?r are|by tumou?r|is also|are also|appears?)[ .]{1,2})?"
    rf"(?:(?P<unc>{_UNC_WORDS})|(?P<neg>{_NEG_WORDS})|(?P<pos>{_POS_WORDS}))"
)
# A label: optional "(V)" / "(small vessel)" then ':' (or '-', '=').
_LABEL_COLON = re.compile(r"\s?(?:\([^)]{0,30}\)\s?)?(?:[:=]|(?P<dash>\.?\s?- ))")
# Negation or hedge before a mention in its clause; the closest one decides.
_BEFORE_CUE = re.compile(
    r"\b(?:(?P<neg>no|not|without|negative for|free of|absence of|absent|neither|nor|lack of"
    r"|lacks|lacking|unassociated with|rather than|instead of)"
    r"|(?P<unc>suspicious|suspicion|possibl\w*|probabl\w*|questionabl\w*|equivocal|indeterminate"
    r"|cannot|can not|unable|uncertain|may|might|could|suggestive|suggest\w*"
    r"|evaluat\w+ for|assess\w* for|to (?:assess|evaluate|rule out)|rule out|r/o))\b|(?P<q>\?)"
)
_DEFINITE = re.compile(
    r"\b(?:no|not|without) (?:\w+ )?(?:definite|definitive|unequivocal|convincing)"
)
# A negation whose object is a tumour noun ("negative for tumor, ...") does not reach further.
_OTHER_OBJECT = re.compile(
    r"\W*(?:evidence of |definite |any )?(?:tumou?r|carcinoma|malignan\w*|metasta\w*|neoplas\w*"
    r"|lymph node\w*|nodes?)\b[^,]*,"
)
# "2. 1. yes. 2. no." after a label picks option 2.
_CHECKLIST = re.compile(
    r"\s*(?:\([^)]{0,60}\))?\s*[:.]?\s*(\d{1,2})[.,]\s?((?:\d{1,2}[.,]?\s?[a-z][^.:]{0,40}?[.,]\s?){2,})"
)
_CHECK_OPTION = re.compile(r"(\d{1,2})[.,]?\s?([a-z][^.:]{0,40}?)[.,]")


_CUE_GROUPS = {"unc": UNC, "neg": NEG, "pos": POS, "q": UNC, "": None}


def _cue(m: re.Match[str] | None) -> str | None:
    """The polarity named by a cue match (its named group), or None."""
    return _CUE_GROUPS[m.lastgroup or ""] if m else None


def _checklist_answer(low: str, pos: int) -> str | None:
    """The option text a numbered checklist answer at ``pos`` picks, else None.

    Example:
        >>> _checklist_answer(": 2. 1. yes. 2. no. K. Next", 0)
        'no'
    """
    m = _CHECKLIST.match(low, pos, pos + 160)
    if not m:
        return None
    chosen = dict(_CHECK_OPTION.findall(m.group(2))).get(m.group(1))
    return chosen.strip() if chosen else None


def _label_value(doc: _Doc, end: int, clause_end: int) -> str | None:
    """Polarity of the value after a ``Label:``; a bare label may take its value from a short
    next clause ("PLEURAL INVASION. Not identified.").

    Example:
        >>> d = _Doc("Venous invasion: Not identified. Next")
        >>> _label_value(d, 15, d.clause(0, 15)[1])
        'neg'
    """
    low = doc.low
    value = _VALUE_CUE.search(low, end, min(clause_end, end + 90))
    if value:
        if value.lastgroup == "pos" and _VALUE_HEDGE.search(low, value.end(), value.end() + 40):
            return UNC  # "Findings present suspicious for lymphovascular invasion"
        return _cue(value)
    if clause_end < len(low) and clause_end - end < 40:
        nxt_end = doc.clause(clause_end + 2, clause_end + 3)[1]
        if nxt_end - clause_end < 45:
            return _cue(_AFTER_CUE.match(low, clause_end + 1, nxt_end))
    return None


def _negation_start(low: str, a: int, start: int) -> int:
    """Where a negation may start: after the last '.' in ``[a, start)`` that only the case of
    the next word marked as a line break ("... not through pleura. tumor identified within");
    a negation reaches over a '.' only right after a glue word ("no evidence of. vascular").

    Example:
        >>> t = "not through pleura. tumor identified within vessels"
        >>> _negation_start(t, 0, t.index("within"))
        19
    """
    i = low.rfind(". ", a, start)
    while i != -1:
        word = low[low.rfind(" ", 0, i) + 1 : i]
        if not (word in _GLUE_WORDS or word.endswith(("-", ",", "ly"))):
            return i + 1
        i = low.rfind(". ", a, i)
    return a


def _before_cue(doc: _Doc, clause_start: int, start: int) -> str | None:
    """NEG / UNC from the closest negation or hedge before a mention in its clause."""
    low = doc.low
    a = _negation_start(low, max(clause_start, start - 70), start)
    last = None
    for m in _BEFORE_CUE.finditer(low, a, start):
        last = m
    if last is None:
        return None
    if last.group("neg"):
        if _OTHER_OBJECT.match(low, last.end(), start):
            return None  # "negative for tumor, vascular invasion ..."
        return NEG
    if _DEFINITE.search(low, a, start):
        return NEG  # "no definite vascular invasion" reads as absent
    return UNC


# A hedge or negation later in the clause ("... vascular invasion ... is not identified").
_LATER_CUE = re.compile(
    r"\b(?:(?P<unc>suspicious|indeterminate|equivocal|cannot be|can not be|not (?:specified"
    r"|assessed|evaluated|determined)|questionabl\w*|possibl\w*|uncertain)"
    r"|(?P<neg>not[ .]{1,2}(?:identified|seen|present|detected|observed|evident|found|noted"
    r"|involved|appreciated|demonstrated)|absent|negative))\b"
)


def _polarity(doc: _Doc, start: int, end: int, *, label: bool) -> str | None:
    """Polarity of a mention at ``[start, end)`` from its clause (None: says nothing).

    ``label`` marks a bare noun ("vascular invasion") that asserts nothing by itself: without a
    value or cue, it is only positive inside a clause that says more than the noun.

    Example:
        >>> d = _Doc("There is no evidence of vascular invasion.")
        >>> i = d.low.index("vascular")
        >>> _polarity(d, i, i + 18, label=True)
        'neg'
    """
    low = doc.low
    cs, ce = doc.clause(start, end)
    answer = _checklist_answer(low, end)
    if answer is not None:
        return _cue(_VALUE_CUE.search(answer)) or POS
    colon = _LABEL_COLON.match(low, end)
    if colon:
        value_start = colon.end()
        value_end = doc.clause(value_start, value_start + 1)[1]
        # "Invasion (V). - Absent" is a label; "... pleura. - margins free" is the next bullet.
        if not colon.group("dash") or (label and _AFTER_CUE.match(low, value_start, value_end)):
            return _label_value(doc, value_start, value_end)
    before = _before_cue(doc, cs, start)
    if before:
        return before
    cue = _cue(_AFTER_CUE.match(low, end, ce))
    if cue:
        return cue
    if label and ce - cs <= end - start + 4:
        # A heading ("VENOUS INVASION.") takes its value from the next clause, if any.
        return _label_value(doc, end, ce)
    later = _LATER_CUE.search(low, end, min(ce, end + 70))
    if later:
        return _cue(later)
    return POS


def _polar(
    doc: _Doc, span: tuple[int, int], *, label: bool, yes: str, no: str, rank: int = 1
) -> Iterator[_Finding]:
    """A finding for the mention at ``span`` unless it is boilerplate or its clause says
    nothing."""
    start, end = span
    if doc.masked(start):
        return
    polarity = _polarity(doc, start, end, label=label)
    if polarity == POS:
        yield doc.finding(yes, start, end, rank)
    elif polarity == NEG:
        yield doc.finding(no, start, end, rank)


def _verb_before(
    doc: _Doc, verbs: re.Pattern[str], start: int, reach: int = 110, words: int = 8
) -> re.Match[str] | None:
    """The closest of ``verbs`` before ``start`` in the same sentence, at most ``words`` words
    away ("invades through the visceral | pleura"); taking the closest one means a phrase never
    reaches back over another verb ("invades the bronchus and abuts | the pleura").

    Example:
        >>> d = _Doc("It invades the bronchus and abuts the pleura.")
        >>> _verb_before(d, re.compile(r"\\b(?:invades|abuts)\\b"), d.low.index("pleura")).group()
        'abuts'
    """
    a = max(doc.sentence_start(start), start - reach)
    last = None
    for m in verbs.finditer(doc.low, a, start):
        last = m
    if last is None or doc.low.count(" ", last.end(), start) > words:
        return None
    return last


# ---------------------------------------------------------------------------------------------
# TNM strings: "pT2 pN0 L1 V0 R0", "G. 3, pT 2, pV 0", "pT2, pNo (0/37), pMx, G2"
# ---------------------------------------------------------------------------------------------

_TNM_TOKEN = (
    r"(?:[pcyr]{0,2}t ?[0-4x][a-d]?|[pcy]?n ?[0-3xo]|[pcy]?m ?[01x][a-c]?|g\.? ?[1-4x]"
    r"(?:-g?[2-4])?|p?l ?[01x]|p?v ?[0-2x]|pn ?[01x]|r ?[0-2x]|pl ?[0-3x]"
    r"|stage ?[0iv]{1,4} ?[abc]?|\(\d{1,2}/\d{1,3}\)|\([a-z/]{1,12}\)|c ?\d\d[.,]\d"
    r"|m-? ?\d{4}/\d)(?![a-z0-9])"
)
_TNM_RUN = re.compile(r"(?<![a-z0-9])" + _TNM_TOKEN + r"(?:[ ,.;/]{1,3}" + _TNM_TOKEN + r")+")
_TNM_ANCHOR = re.compile(
    r"(?<![a-z0-9])(?:[pcyr]{0,2}t ?[0-4x][a-d]?|[pcy]?n ?[0-3xo]|m-? ?\d{4}/\d|c ?\d\d[.,]\d)"
    r"(?![a-z0-9])"
)
_TNM_CODE = re.compile(
    r"(?<![a-z0-9])(?:(?P<g>g)\.? ?(?P<gv>[1-4x](?:-g?[2-4])?)|(?P<pl>pl) ?(?P<plv>[0-3])"
    r"|p?(?P<l>l) ?(?P<lv>[01])|p?(?P<v>v) ?(?P<vv>[0-2])|(?P<r>r) ?(?P<rv>[0-2x]))(?![a-z0-9])"
)
# Cheap literal-led patterns that find where a TNM string may be ("pT2", "T2 N1", "8255/3").
_TNM_HINTS = (re.compile(r"p[tn] ?[0-4xo]"), re.compile(r"t ?[0-4x]"), re.compile(r"/3"))


def _tnm_codes(doc: _Doc) -> list[tuple[str, str, int, int]]:
    """``(kind, value, start, end)`` of G/L/V/R/PL codes inside TNM strings.

    A run counts only with a T, N or ICD token in it, so block labels ("L1- Level X node") and
    node stations ("R2 lymph node") never pass for codes.

    Example:
        >>> [c[:2] for c in _tnm_codes(_Doc("pT2 pN0 L1 V0 R0, stage IB"))]
        [('l', '1'), ('v', '0'), ('r', '0')]
    """
    if doc._tnm is not None:
        return doc._tnm
    low = doc.low
    hits = sorted(
        m.start()
        for hint in _TNM_HINTS
        for m in hint.finditer(low)
        if not (m.start() and low[m.start() - 1].isalnum())
    )
    codes: list[tuple[str, str, int, int]] = []
    last = -1
    for i in hits:
        if i < last:
            continue
        for run in _TNM_RUN.finditer(low, max(0, i - 50), min(len(low), i + 60)):
            if run.start() < last or not _TNM_ANCHOR.search(run.group()):
                continue
            last = run.end()
            for m in _TNM_CODE.finditer(run.group()):
                kind = next(k for k in ("g", "l", "v", "r", "pl") if m.group(k))
                codes.append(
                    (kind, m.group(kind + "v"), run.start() + m.start(), run.start() + m.end())
                )
    doc._tnm = codes
    return codes


# ---------------------------------------------------------------------------------------------
# differentiation
# ---------------------------------------------------------------------------------------------

_GRADE_WORD = r"well|highly|moderately|moderate|intermediately|[pd]?o{1,2}rl[yi]|poor|low|lowly|un"
_GRADE_CAT = {
    "well": "well",
    "highly": "well",
    "moderately": "moderate",
    "moderate": "moderate",
    "intermediately": "moderate",
    "poor": "poor",
    "low": "poor",
    "lowly": "poor",
    "un": "undifferentiated",
}
_ORDER = ("well", "moderate", "poor", "undifferentiated")
_RANGES = {
    ("well", "moderate"): "well_to_moderate",
    ("moderate", "poor"): "moderate_to_poor",
    ("poor", "undifferentiated"): "poor",
    ("well", "poor"): "mixed",
    ("well", "undifferentiated"): "mixed",
    ("moderate", "undifferentiated"): "moderate_to_poor",
}
_DIFF_WORDS = _rx(
    r"(?<![a-z])(?P<a>"
    + _GRADE_WORD
    + r")(?:(?:~(?:to|and|or)~|~|-)(?P<b>"
    + _GRADE_WORD
    + r"|well))?~?-?d?if{1,2}er[a-z]*"
)
_HIGH_GRADE = _rx(
    r"\b(?P<a>high|low|intermediate)~?-?grade(?=~(?:[a-z]+~){0,2}?(?:carcinoma|adenocarcinoma"
    r"|neoplasm|tumou?r|malignan|squamous|non-?small|large)|~?\(|,|\.)"
)
_GRADE_LABEL = _rx(
    r"\b(?:histologic(?:al)?~grade|tumou?r~(?:histologic~)?grade"
    r"|(?<!nuclear )grade(?:/differentiation)?|grading|differentiation)"
    r"(?:~?\((?:who|g)\))?(?:~of~differentiation)?~?[:.]?~?"
)
_GRADE_NUM = re.compile(
    r"(?:g\.? ?)?(?P<n>[1-4x]|i{1,3}|iv)(?:\s?(?:-|to|and)\s?(?:g\.? ?)?(?P<m>[2-4]|i{2,3}|iv))?"
    r"(?:\s?\(?(?:of|out of|/)\s?(?P<of>[34]|iii|iv)\)?)?(?![a-z0-9])"
)
_GRADE_LABEL_WORD = re.compile(
    r"(?P<a>well|moderately|moderate|[pd]?o{1,2}rl[yi]|poor|high|low|intermediate)\b"
)
_DIFF_UNKNOWN = re.compile(r"\s?(?:gx|x|cannot be (?:assessed|determined)|not applicable)\b")
_GRADE_LABEL_SCAN = _Scan(_GRADE_LABEL, ("grad", "iffer"), 30, 50)
_DIFF_WORDS_SCAN = _Scan(_DIFF_WORDS, ("iffer", "ifer"), 45, 25)
_POORLY = re.compile(r"[pd]?o{1,2}rl[yi]")
_HIGH_GRADE_SCAN = _Scan(_HIGH_GRADE, ("grad",), 20, 60)
# "mixed differentiation (G3)", "well differentiated mixed adenocarcinoma (G1)".
_G_IN_BRACKETS = re.compile(r"\(\s?g\.? ?([1-4x])(?:\s?-\s?g?([2-4]))?\s?\)")
_ROMAN = {"i": 1, "ii": 2, "iii": 3, "iv": 4}
# "high grade" is poorly differentiated, "low grade" well differentiated.
_HIGH_LOW = {"high": "poor", "intermediate": "moderate", "low": "well"}
_GRADE_OF_NUM = {1: "well", 2: "moderate", 3: "poor", 4: "undifferentiated"}
_NODE_CONTEXT = re.compile(r"metasta|lymph node|\bnodes?\b")


def _grade_word(word: str) -> str:
    """Category of one grade word, OCR-damaged "poorly" included ("dorly", "poorli").

    Example:
        >>> _grade_word("dorly"), _grade_word("moderately")
        ('poor', 'moderate')
    """
    return "poor" if _POORLY.fullmatch(word) else _GRADE_CAT.get(word, UNKNOWN)


def _grade_pair(a: str, b: str | None) -> str:
    """Category from one or two grade words ("moderately" and "poorly", "moderately well").

    Example:
        >>> _grade_pair("moderately", "poorly"), _grade_pair("moderately", "well")
        ('moderate_to_poor', 'well_to_moderate')
    """
    first = _grade_word(a)
    second = _grade_word(b) if b else first
    if second == first or UNKNOWN in (first, second):
        return first
    pair = tuple(sorted((first, second), key=_ORDER.index))
    return _RANGES.get(pair, first)


def _grade_numbers(n: str, m: str | None, of: str | None) -> str:
    """Category from grade numbers: "3", "2-3", "III", "2/4", "3 of 4" (unknown for X).

    Example:
        >>> _grade_numbers("3", None, "4"), _grade_numbers("2", "3", None)
        ('poor', 'moderate_to_poor')
    """
    if n == "x":
        return UNKNOWN
    lo = _GRADE_OF_NUM[int(_ROMAN.get(n, n))]
    if not m:
        if of in ("3", "iii") and lo == "poor":
            return "poor"
        if of in ("3", "iii") and n in ("1", "i"):
            return "well"
        return lo
    hi = _GRADE_OF_NUM[int(_ROMAN.get(m, m))]
    if hi == lo:
        return lo
    return _RANGES.get(tuple(sorted((lo, hi), key=_ORDER.index)), lo)


def _differentiation_findings(doc: _Doc) -> Iterator[_Finding]:
    """Grade findings: labelled grades rank 3, TNM ``G`` codes 2, grade words 1 (0 near nodes).

    Example:
        >>> [f.value for f in _differentiation_findings(_Doc("Histologic grade: G3"))]
        ['poor']
    """
    low = doc.low
    for m in doc.scan(_GRADE_LABEL_SCAN):
        found = _labelled_grade(doc, m)
        if found:
            yield found
    for kind, value, start, end in _tnm_codes(doc):
        if kind == "g":
            n, _, hi = value.partition("-")
            yield doc.finding(_grade_numbers(n, hi.lstrip("g") or None, None), start, end, 2)
    for m in _G_IN_BRACKETS.finditer(low):
        yield doc.finding(_grade_numbers(m.group(1), m.group(2), None), m.start(), m.end(), 2)
    for m in doc.scan(_DIFF_WORDS_SCAN):
        # "not poorly differentiated", "it could also be an undifferentiated carcinoma"
        if not doc.masked(m.start()) and not _before_cue(
            doc, doc.clause(m.start(), m.end())[0], m.start()
        ):
            rank = 0 if _NODE_CONTEXT.search(low, max(0, m.start() - 40), m.end() + 40) else 1
            yield doc.finding(_grade_pair(m.group("a"), m.group("b")), m.start(), m.end(), rank)
    for m in doc.scan(_HIGH_GRADE_SCAN):
        yield doc.finding(_HIGH_LOW[m.group("a")], m.start(), m.end(), 0)


def _labelled_grade(doc: _Doc, m: re.Match[str]) -> _Finding | None:
    """The grade a ``Grade:`` label gives: number, words or a checklist option."""
    low, end, label = doc.low, m.end(), m.group()
    num = _GRADE_NUM.match(low, end)
    if num and ("grad" in label):  # a bare "differentiation" label takes no number
        value = _grade_numbers(num.group("n"), num.group("m"), num.group("of"))
        return doc.finding(value, m.start(), num.end(), 3 if value != UNKNOWN else -1)
    answer = _checklist_answer(low, end - 2)
    if answer:
        word = _GRADE_LABEL_WORD.match(answer)
        if word:
            return doc.finding(_grade_pair(word.group("a"), None), m.start(), end, 3)
    words = _DIFF_WORDS.match(low, end) or _HIGH_GRADE.match(low, end)
    if words:
        a = words.group("a")
        value = _HIGH_LOW.get(a) or _grade_pair(a, words.group("b"))
        return doc.finding(value, m.start(), words.end(), 3)
    word = _GRADE_LABEL_WORD.match(low, end)
    if word and (":" in label or "/" in label):  # "Tumor grade: Poorly." (OCR lost a word)
        a = word.group("a")
        value = _HIGH_LOW.get(a) or _grade_pair(a, None)
        return doc.finding(value, m.start(), word.end(), 3)
    if _DIFF_UNKNOWN.match(low, end):
        return doc.finding(UNKNOWN, m.start(), end, -1)
    return None


def _decide_differentiation(doc: _Doc) -> _Finding | None:
    """Best grade: highest tier, then highest rank, then first in the text.

    Example:
        >>> _decide_differentiation(_Doc("poorly differentiated, pT2 pN0 G2")).value
        'moderate'
    """
    findings = doc.main_text(list(_differentiation_findings(doc)))
    return max(findings, key=lambda f: (f.rank, -f.start), default=None)


# ---------------------------------------------------------------------------------------------
# STAS
# ---------------------------------------------------------------------------------------------

_STAS = _rx(
    r"\bstas\b|spread~through~(?:the~)?air~?spaces?|aerogenous~(?:spread|dissemination)"
    r"|(?:tumou?r|neoplastic|carcinoma|malignant)~(?:cells?|cell~nests|clusters)~(?:[a-z]+~){0,4}?"
    r"(?:lying~)?(?:freely~|free~)?(?:in|within|into)~(?:the~)?(?:adjacent~|surrounding~"
    r"|neighbou?ring~|distant~)?(?:air~?spaces|alveol(?:i|ar~spaces))"
    r"|(?:free~?floating|(?:lying|lie|lies)~freely|dissociated~(?:tumou?r~)?(?:cell~)?clusters)"
    r"~(?:[a-z]+~){0,8}?(?:air~?spaces|alveol(?:i|ar~spaces))"
)
_STAS_SCAN = _Scan(_STAS, ("stas", "air", "alveol", "aerogen"), 110, 40)


def _stas_findings(doc: _Doc) -> Iterator[_Finding]:
    """STAS only where the report names it or describes tumour cells lying in air spaces.

    Example:
        >>> [f.value for f in _stas_findings(_Doc("STAS: not identified."))]
        ['absent']
    """
    for m in doc.scan_sentences(_STAS_SCAN):
        named = "stas" in m.group() or "spread" in m.group()
        yield from _polar(doc, m.span(), label=named, yes="present", no="absent")


# ---------------------------------------------------------------------------------------------
# vascular invasion
# ---------------------------------------------------------------------------------------------

_VASC_KIND = (
    r"(?:lympho?~?vascular|lymph~vascular|lymphatic~?/?~?vascular|vascular~?/?~?lymphatic"
    r"|angio~?lymphatic|vascular|venous|arterial|lymphatic|blood~vessel|large~vessel"
    r"|small~vessel|(?:lymph~)?vessels?|vein|venular|blood/lymphatic~vessel)"
)
# Read from the first word of the kind: "Lymph-vascular invasion", "Venous (large vessel)
# invasion", "vascular, lymphatic or perineural invasion", "Lymphovascular space status".
_VASC_LABEL = _rx(
    _VASC_KIND + r"(?P<mid>[a-z ,/()\-]{0,45}?)~?(?:\(?(?:space|channel)s?\)?~)?"
    r"(?:invasione?|permeation|involvement|infiltration|propagation|spread|emboli)\b"
    r"|" + _VASC_KIND + r"~(?:space~)?status(?=~?:)"
    r"|(?:lvi|lvsi|(?:hem)?angio~?invasion)\b"
)
# "Invasion: angiolymphatic - not identified. perineural - present."
_VASC_KIND_AT = _rx(_VASC_KIND + r"(?=~?-|~not\b|~(?:present|absent|identified)\b)")
_INVASION_COLON = _rx(r"\binvasion~?:~?\Z")
_VASC_EVENT = _rx(
    r"\b(?:invasion|infiltration|permeation|penetration)~(?:of|into)~(?:the~)?(?:[a-z]+~){0,3}?"
    r"(?:blood~vessels?|vessels?|veins?|venous~wall|arter(?:y|ies)|lymphatics?|lymph~vessels?)\b"
    r"|\b(?:tumou?r|carcinoma|neoplastic|malignant|carcinomatous)(?:~(?:emboli|thrombi|cells?|plugs?"
    r"|nests?))?~(?:[a-z]+~){0,3}?(?:in|within|into|involv\w*|fill\w*)~(?:the~)?(?:[a-z]+~){0,3}?"
    r"(?:lymphatics?|vessels?|veins?|vascular|lymphatic|lymphovascular|angiolymphatic"
    r"|capillar\w+)(?:~(?:spaces?|channels?|lumens?))?\b"
    r"|\b(?:involv\w*|fill\w*)~(?:the~)?(?:[a-z]+~){0,1}?(?:angiolymphatic|lymphovascular"
    r"|lymphatic|vascular)~(?:channels|spaces)\b"
    r"|\blymphangi(?:osis|tis|tic)~carcinomatos[ai]s?\b|\blymphangitic~(?:spread|carcinomatosis"
    r"|pattern)|\b(?:infiltrat|invad|penetrat)\w*~(?:[a-z]+~){0,2}?(?:the~)?(?:pulmonary~)?"
    r"(?:venous|arterial|vessel|vascular)~wall|\bgrowth~into~(?:a|the)~(?:[a-z]+~){0,3}?"
    r"(?:blood~)?vessel|\bintra-?(?:vascular|lymphatic)~(?:tumou?r|carcinoma|growth|spread)"
)
# "vascul" also finds lymphovascular and lymph-vascular, "lymphatic" angiolymphatic.
_VASC_ANCHORS = (
    "vascul", "lymphatic", "lymphang", "vessel", "venous", "arterial", "vein", "lvi", "lvsi",
    "angioinv",
)  # fmt: skip
_VASC_EVENT_SCAN = _Scan(_VASC_EVENT, _VASC_ANCHORS, 100, 50)
# Words that show a label's middle ran into another statement ("vascular margins ... pleural
# invasion", "capillary vessels, without tumoral infiltration").
_VASC_MID_STOP = re.compile(r"margin|node|\d|:|resection|stain|without|\bno\b")


def _vascular_label(doc: _Doc, i: int) -> tuple[int, int] | None:
    """The span of the vascular-invasion label whose kind word holds position ``i``, tried from
    the word before ("blood vessel invasion") and from its own word ("lymph-vascular")."""
    low = doc.low
    sub = i  # the part after a hyphen: "yymph-vascular" (OCR), "-angiolymphatic" (a bullet)
    while sub and low[sub - 1].isalpha():
        sub -= 1
    start = sub
    while start > 1 and low[start - 1] == "-" and low[start - 2].isalpha():
        start -= 1
        while start and low[start - 1].isalpha():
            start -= 1
    previous = low.rfind(" ", 0, max(0, start - 1)) + 1
    starts = [previous, start, sub]
    if "ymp" in low[sub:i] or "lym" in low[sub:i]:
        starts.append(i)  # "LYMIPHOVASCULAR" (OCR): read from "vascular"
    for at in dict.fromkeys(starts):
        m = _VASC_LABEL.match(low, at)
        if m is None or doc.crosses(m.start(), m.end()):
            continue
        mid = m.group("mid")
        if not (mid and _VASC_MID_STOP.search(mid)):
            return m.span()
    kind = _VASC_KIND_AT.match(low, sub)
    colon = kind and _INVASION_COLON.search(low, max(0, sub - 14), sub)
    return (colon.start(), kind.end()) if kind and colon else None


def _vascular_findings(doc: _Doc) -> Iterator[_Finding]:
    """Vascular-invasion findings from labels, prose events and TNM ``L``/``V`` codes.

    Example:
        >>> [f.value for f in _vascular_findings(_Doc("pT2 pN0 L0 V1 R0"))]
        ['absent', 'present']
    """
    last = -1
    for i in doc.hits(_VASC_ANCHORS):
        if i < last:
            continue
        span = _vascular_label(doc, i)
        if span:
            last = span[1]
            yield from _polar(doc, span, label=True, yes="present", no="absent")
    for m in doc.scan_sentences(_VASC_EVENT_SCAN):
        yield from _polar(doc, m.span(), label=False, yes="present", no="absent")
    for kind, value, start, end in _tnm_codes(doc):
        if kind in ("l", "v"):
            yield doc.finding("present" if value != "0" else "absent", start, end, 2)


# ---------------------------------------------------------------------------------------------
# pleural invasion
# ---------------------------------------------------------------------------------------------

# A pleura phrase, read from its first word ("pleura", "pleural surface", "elastic layer").
_PLEURA_HEAD = _rx(
    r"(?:pleura[le]?(?:~surface|~elastic~layer|~elastica|~visceralis)?|elastic~(?:layer|lamina)\w*)\b"
)
# "Visceral pleural invasion: ...", "Pleura: uninvolved", "pleural and angiolymphatic invasion".
_PLEURA_LABEL = _rx(
    r"pleura[le]?(?P<mid>(?:,|~and|~or)~(?:[a-z]+~){1,3}?)?~?(?:invasion|involvement|infiltration"
    r"|extension|surface~status)(?:~through~elastica)?|pleura(?:l~surface)?(?=~?:)"
)
_PLEURA_LABEL_BEFORE = _rx(r"(?:\bvisceral~|viscera\)~)?\Z|\bexten[st]ion~to~\Z")
_PLEURA_VERBS = re.compile(
    r"\b(?:invad\w*|infiltrat\w*|penetrat\w*|breach\w*|perforat\w*|break\w*|cross\w*|involv\w*"
    r"|extend\w*|extension|spread\w*|grow\w*|reach\w*|abut\w*|approach\w*|close|disrupt\w*"
    r"|invasion|infiltration|involvement|puncture\w*)\b"
)
# Value words just before the phrase: "negative pleura", "tumor present at the pleura".
_PLEURA_BEFORE = _rx(
    r"\b(?:(?P<neg>negative|uninvolved|intact)|(?P<pos>(?:tumou?r|carcinoma)~(?:is~)?present~"
    r"(?:at|on)|tumou?r~extent~?:(?:~to)?))(?:~for~(?:tumou?r|carcinoma|malignancy))?"
    r"(?:~(?:the|visceral|overlying))*~?\Z"
)
# A value right after the phrase: "The pleural surface is negative", "pleura is infiltrated".
_PLEURA_AFTER = _rx(
    r"~(?:is~|are~|appears~)?(?:focally~|also~)?(?:(?P<neg>not~(?:involved|infiltrated|invaded)"
    r"|negative|free|uninvolved|intact)|(?P<pos>involved|positive|infiltrated|invaded|breached"
    r"|penetrated))"
)
_PLEURA_NEAR = re.compile(
    r"abut|approach|close|beneath|below|under|\bup to\b|\bwithin \d|\d ?(?:cm|mm)|deep to|toward"
    r"|adjacent to"
)
_PLEURA_STRONG = re.compile(
    r"through|into|invad|infiltr|penetr|breach|perforat|invasion|involv|disrupt|break|cross"
)
_PLEURA_NOT_THROUGH = re.compile(
    r"\bbut\W+not\b|\bnot\W+(?:into|through|beyond|breach|invad|involv)"
)
# "invades into but not through the pleura" is beyond the elastic layer (PL1): present.
_PLEURA_INTO_NOT_THROUGH = re.compile(r"\binto\W+but\W+not\W+(?:through|to the surface)")
_INNER_NEG = re.compile(r"\b(?:not|no|never)\b")
_PLEURA_ANCHORS = ("pleur", "elastic")
_PL_CODE = re.compile(r"pl ?-?([0-3])(?![a-z0-9])")
_PARIETAL_BEFORE = _rx(r"\b(?:parietal|mediastinal)~\Z")
_VISCERAL_NOT_PARIETAL = _rx(r"\bvisceral~(?:but~)?not~(?:the~)?parietal~\Z")
_PLEURA_DISTANCE = re.compile(r"\b(?:distance|relationship)\b[^:.;]{0,40}$")
_PLEURA_LABEL_NEAR = re.compile(
    r"\W*(?:[a-z]+\W+){0,2}?(?:abut|close|not invad|no invasion|approach|distance"
    r"|\d+(?:\.\d+)? ?(?:cm|mm))"
)
_PLEURA_NOT_STATEMENT = re.compile(
    r"[ \-,]{0,2}(?:effusion|adhesion|biopsy|fluid|thicken|fibros|plaque|pleuritis|nodule|lavage"
    r"|margin|defect|pucker)"
)


def _pleural_findings(doc: _Doc) -> Iterator[_Finding]:
    """Visceral-pleura findings around every pleura phrase, plus ``PL`` codes; "abuts" and "up
    to but not through" the pleura read as absent.

    Ranks: synoptic lines and ``PL`` codes 2, invasion verbs 1, "extends to" the pleura 0.

    Example:
        >>> [f.value for f in _pleural_findings(_Doc("Carcinoma abuts the pleura."))]
        ['absent']
    """
    low = doc.low
    for i in doc.hits(_PLEURA_ANCHORS):
        if (i and low[i - 1].isalpha()) or doc.masked(i):
            continue  # "subpleural"; TNM-definition boilerplate
        head = _PLEURA_HEAD.match(low, i)
        if head is None or _PLEURA_NOT_STATEMENT.match(low, head.end(), head.end() + 14):
            continue
        yield from _pleura_label(doc, i)
        found = list(_pleura_values(doc, i, head.end()))
        verb = _verb_before(doc, _PLEURA_VERBS, i)
        if verb:
            found.extend(_pleura_event(doc, verb.start(), head.end()))
        if _PARIETAL_BEFORE.search(low, max(0, i - 45), i):
            # Invading the parietal pleura (PL3) goes through the visceral one; not invading
            # it says nothing about the visceral pleura ("the visceral but not the parietal").
            found = [f for f in found if f.value == "present"]
            if _VISCERAL_NOT_PARIETAL.search(low, max(0, i - 45), i):
                found.append(doc.finding("present", max(0, i - 45), head.end()))
        yield from found
    for m in _PL_CODE.finditer(low):
        if m.start() and low[m.start() - 1].isalnum():
            continue
        if not doc.masked(m.start()) and not re.match(r"\s?or\s?pl", low[m.end() : m.end() + 6]):
            yield doc.finding("present" if m.group(1) != "0" else "absent", m.start(), m.end(), 2)


def _pleura_label(doc: _Doc, i: int) -> Iterator[_Finding]:
    """A pleura label ("Visceral pleural invasion: not identified"), read like a synoptic line."""
    low = doc.low
    m = _PLEURA_LABEL.match(low, i)
    if m is None or doc.crosses(m.start(), m.end()):
        return
    if m.group("mid") and _VASC_MID_STOP.search(m.group("mid")):
        return
    before = _PLEURA_LABEL_BEFORE.search(low, max(0, i - 16), i)
    start = before.start() if before else i
    colon = _LABEL_COLON.match(low, m.end())
    distance = _PLEURA_DISTANCE.search(low, max(doc.sentence_start(i), i - 45), i)
    if colon and (distance or _PLEURA_LABEL_NEAR.match(low, m.end() + 1, m.end() + 60)):
        # "Tumor distance from pleural surface: in contact but not through", "... pleura: 2 mm"
        yield doc.finding("absent", start, m.end(), 2)
        return
    yield from _polar(doc, (start, m.end()), label=True, yes="present", no="absent", rank=2)


def _pleura_values(doc: _Doc, i: int, end: int) -> Iterator[_Finding]:
    """A value word right before ("negative pleura") or after ("pleura is uninvolved")."""
    low = doc.low
    before = _PLEURA_BEFORE.search(low, max(doc.sentence_start(i), i - 50), i)
    if before and not (before.group("pos") and _before_cue(doc, doc.clause(i, end)[0], i)):
        # ("No tumour is present on the pleural surface" says nothing about the elastic layer.)
        yield doc.finding("absent" if before.group("neg") else "present", before.start(), end)
    after = _PLEURA_AFTER.match(low, end)
    if after:
        cue = _before_cue(doc, doc.clause(i, end)[0], i)
        value = "absent" if after.group("neg") or cue == NEG else "present"
        if cue != UNC:
            yield doc.finding(value, i, after.end())


def _pleura_event(doc: _Doc, start: int, end: int) -> Iterator[_Finding]:
    """A verb + pleura phrase: not-through and near-words are absent, else its clause decides."""
    text = doc.low[start:end]
    if _PLEURA_INTO_NOT_THROUGH.search(text):
        yield from _polar(doc, (start, end), label=False, yes="present", no="absent")
        return
    if _PLEURA_NOT_THROUGH.search(text) or _INNER_NEG.search(text):
        yield doc.finding("absent", start, end)
        return
    strong = bool(_PLEURA_STRONG.search(text))
    if _PLEURA_NEAR.search(text) and not re.search(r"through|into", text):
        if _before_cue(doc, doc.clause(start, end)[0], start) != NEG:
            yield doc.finding("absent", start, end)
        return
    rank = 1 if strong else 0
    yield from _polar(doc, (start, end), label=False, yes="present", no="absent", rank=rank)


# ---------------------------------------------------------------------------------------------
# adjacent structures
# ---------------------------------------------------------------------------------------------

_STRUCTURE = (
    r"(?:chest~wall|parietal~pleural?|diaphragm(?!atic~surface)\w*|mediastin(?:um|al~(?:fat|soft~tissue|structures"
    r"|pleura|tissue))|pericardi(?:um|al~(?:sac|fat))|pericardium|heart|myocardium|aorta|aortic~wall"
    r"|great~vessels|vena~cava|o?esophag(?:us|eal~wall)|vertebra\w*|phrenic~nerve|ribs?|\d+(?:st|nd|rd|th)~rib"
    r"|intercostal~muscles?|trachea|carina|recurrent~laryngeal~nerve|atrium|thymus"
    r"|(?:skeletal~muscle|soft~tissue)~of~(?:the~)?chest~wall)"
)
_ADJ_VERBS = re.compile(
    r"\b(?:invad\w*|infiltrat\w*|penetrat\w*|involv\w*|extend\w*|extension|spread\w*|grow\w*"
    r"|invasion|abut\w*|approach\w*|adheren\w*|adhesion)\b"
)
# After a structure: "chest wall invasion", "parietal pleura infiltrated by carcinoma".
_ADJ_AFTER = _rx(
    r"~(?:invasion|involvement|infiltration)\b"
    r"|~(?:is~|are~)?(?:focally~)?(?:infiltrated|invaded|involved)~by\b"
)
# Before a structure: "carcinoma is present in the diaphragm".
_ADJ_PRESENT_IN = _rx(
    r"\b(?:carcinoma|tumou?r|neoplasm)(?:~cells)?~(?:is~|are~)?(?:present|seen|identified)~"
    r"(?:in|within)~(?:the~)?\Z"
)
_ADJ_LABEL = _rx(
    r"\b(?:direct~extension(?:~of~(?:the~)?tumou?r)?|tumou?r~extension(?:~into~extra-?~?pulmonary"
    r"~structures)?|extra-?~?pulmonary~(?:parenchymal~)?extension(?:/invasion~of~tumou?r)?"
    r"|contiguous~structures|invasion~of~adjacent~structures|extent~of~invasion"
    r"|exten[ts]ion~to~pleura/other~structures(?:~\(specify\))?)(?=~?[:.])"
)
_ADJ_GENERIC_NEG = _rx(
    r"\b(?:confined|limited|restricted)~to~(?:the~)?(?:[a-z]+~){0,3}?(?:lung|lobe|pulmonary"
    r"~parenchyma|parenchyma)\b"
    r"|\bno~(?:evidence~of~)?(?:direct~extension|extension~beyond~the~lung|invasion~of~(?:the~)?"
    r"(?:[a-z]+~){0,3}?adjacent~structures|extrapulmonary~extension)"
)
_ADJ_STRUCTURE_ANCHORS = (
    "chest", "parietal", "diaphragm", "mediastin", "pericard", "heart", "aort", "vessels",
    "cava", "sophag", "vertebra", "phrenic", " rib", "intercostal", "trachea", "carina",
    "laryngeal", "thymus",
)  # fmt: skip
_STRUCTURE_AT = _rx(_STRUCTURE + r"\b")
_ADJ_WORDS = (
    "confined", "limited", "restricted", "exten", "extrapulmonary", "contiguous", "structures",
)  # fmt: skip
_ADJ_GENERIC_SCAN = _Scan(_ADJ_GENERIC_NEG, _ADJ_WORDS, 50, 80)
_ADJ_LABEL_SCAN = _Scan(_ADJ_LABEL, _ADJ_WORDS, 50, 80)
_ADJ_SKIP_VALUE = re.compile(
    r"visceral|pleur|bronch|lung|parenchym|lymph|node|lobe|fissure|hilar|hilum|vascul|perineural"
)
_ADJ_GAP_STOP = re.compile(
    r"\b(?:not|no|without|distal|proximal|close|toward|towards)\b|\d ?(?:cm|mm)\b"
)
_ADJ_NOT_STATEMENT = re.compile(r"\W*margin")  # "chest wall margin" is a surgical margin


def _adjacent_findings(doc: _Doc) -> Iterator[_Finding]:
    """Findings about direct invasion of structures outside the lung.

    Example:
        >>> [f.value for f in _adjacent_findings(_Doc("Tumor invades the chest wall."))]
        ['present']
    """
    low = doc.low
    last = -1
    for i in doc.hits(_ADJ_STRUCTURE_ANCHORS):
        structure = _structure_at(low, i + (low[i] == " "))
        if structure is None or structure.start() < last:
            continue
        last = structure.end()
        if not _ADJ_NOT_STATEMENT.match(low, structure.end(), structure.end() + 8):
            yield from _structure_findings(doc, structure)
    for m in doc.scan_sentences(_ADJ_GENERIC_SCAN):
        if (
            not doc.masked(m.start())
            and _before_cue(doc, doc.clause(m.start(), m.end())[0], m.start()) is None
        ):
            yield doc.finding("absent", m.start(), m.end(), 2)
    for m in doc.scan(_ADJ_LABEL_SCAN):
        if not doc.masked(m.start()):
            yield from _adjacent_label(doc, m)
    for kind, value, start, end in _tnm_codes(doc):
        if kind == "pl" and value == "3":
            yield doc.finding("present", start, end, 2)


def _structure_at(low: str, i: int) -> re.Match[str] | None:
    """The outside structure whose name holds position ``i`` ("chest wall", "great vessels",
    "5th rib"), tried from its word and from the word before.

    Example:
        >>> _structure_at("into the great vessels", 15).group()
        'great vessels'
    """
    start = i
    while start and low[start - 1].isalpha():
        start -= 1
    found = _STRUCTURE_AT.match(low, start)
    if found is None and start > 1:
        previous = low.rfind(" ", 0, start - 1) + 1
        found = _STRUCTURE_AT.match(low, previous)
    return found


def _structure_findings(doc: _Doc, structure: re.Match[str]) -> Iterator[_Finding]:
    """Invasion of one structure: "invades the chest wall", "chest wall invasion", "carcinoma
    present in the diaphragm"; touching ("abuts", "adherent to") is no invasion, and a negation
    ("does not invade the chest wall") leaves the field unknown, not absent."""
    low, start, end = doc.low, structure.start(), structure.end()
    after = _ADJ_AFTER.match(low, end)
    if after:
        yield from _polar(doc, (start, after.end()), label=False, yes="present", no=UNKNOWN)
    present_in = _ADJ_PRESENT_IN.search(low, max(doc.sentence_start(start), start - 60), start)
    if present_in:
        yield from _polar(doc, (present_in.start(), end), label=False, yes="present", no=UNKNOWN)
    verb = _verb_before(doc, _ADJ_VERBS, start)
    if verb is None or verb.group().startswith(("abut", "approach", "adhe")):
        return
    if _ADJ_GAP_STOP.search(low, verb.end(), start):
        return  # "involves the visceral but not the parietal pleura", "2 cm distal to the carina"
    yield from _polar(doc, (verb.start(), end), label=False, yes="present", no=UNKNOWN)


def _adjacent_label(doc: _Doc, m: re.Match[str]) -> Iterator[_Finding]:
    """A "Direct extension of tumor: ..." line: a named outside structure is present, a generic
    "not identified / none" absent; values about the pleura, bronchi or lung say nothing here."""
    low = doc.low
    ce = doc.clause(m.start(), m.end())[1]
    value_end = min(ce, m.end() + 90)
    answer = _checklist_answer(low, m.end())
    if answer is not None:
        polarity = _cue(_VALUE_CUE.search(answer))
    else:
        polarity = _label_value(doc, m.end(), ce)
    if polarity == NEG:
        if not _ADJ_SKIP_VALUE.search(low, m.end(), value_end) or re.search(
            r"adjacent|other structures", low[m.end() : value_end]
        ):
            yield doc.finding("absent", m.start(), m.end(), 2)
        return
    if polarity == UNC:
        return
    s = _ADJ_EVENT_VALUE.search(low, m.end(), value_end)
    if s:
        yield doc.finding("present", m.start(), s.end(), 2)


_ADJ_EVENT_VALUE = _rx(r"\b" + _STRUCTURE + r"\b")


# ---------------------------------------------------------------------------------------------
# margins
# ---------------------------------------------------------------------------------------------

# The head noun of a margin mention; its modifiers ("bronchial resection") come before it.
_MARGIN_NOUN = _rx(
    r"(?:margins?|resection~(?:lines?|surfaces?|edges?)|stump|stapled?~lines?|excision~lines?)\b"
)
# What may follow the noun of a margin label: "Margin(s) of resection (R): ", "Margin
# involvement by invasive carcinoma: " (an inverted question), "Bronchial margin - negative".
_MARGIN_TAIL = _rx(
    r"(?:~of~(?:resection|excision))?(?:~(?:status|evaluation))?(?:~\(r\))?"
    r"(?P<inv>~involve(?:ment|d)(?:~by~(?:invasive~)?carcinoma)?)?"
    r"(?: ?(?:\([^)]{0,40}\) ?)?(?P<colon>:| - ))?"  # ". - " after a sentence is a new bullet
)
# Value words just before the noun: "negative bronchial and vascular margins", "free margins".
_MARGIN_PRE_VALUE = _rx(
    r"\b(?P<v>negative|free|clear|uninvolved|tumou?r-?~?free|positive|involved)~(?:[a-z]+~){0,4}?$"
)
# "carcinoma present at (the) inked staple margin", "tumor extends to the bronchial margin".
_MARGIN_AT = _rx(
    r"\b(?:tumou?r|carcinoma|neoplasm|malignancy)~(?:[a-z]+~){0,3}?(?:extends|extending|is~present"
    r"|present|reaches|reaching|is~seen|seen|identified|involves|involving)~(?:[a-z]+~){0,2}?"
    r"(?:to|at|into|in|the)~(?:the~)?(?:[a-z]+~){0,4}?$"
)
# "0.5 cm from the bronchial margin": a distance, so the margin is clear (a weak hint).
_MARGIN_DISTANCE = _rx(
    r"(?<![\d.])(?P<d>\d+(?:\.\d+)?)~?(?:cm|mm)~(?:from|to|of)~(?:the~)?(?:[a-z]+~){0,4}?$"
)
_MARGIN_NUMBER = re.compile(
    r"\W{0,4}(?:[a-z]+\W+){0,6}?(?<![\d.])(?P<d>\d+(?:\.\d+)?) ?(?:cm|mm)\b"
)
_CLEAR_CUE = (
    r"negative|free\b|clear\b|uninvolved|not~involved|not~identified|no~(?:[a-z]+~){0,3}?"
    r"(?:tumou?r|carcinoma|malignan\w*|neoplas\w*|invasive|cancer)|r0\b|tumou?r-?~?free|benign"
    r"|without~(?:[a-z]+~){0,2}?(?:tumou?r|carcinoma)"
)
_INVOLVED_CUE = (
    r"positive|involved|(?:tumou?r|carcinoma)~(?:is~)?(?:present|seen|identified)|r[12]\b"
    r"|focally~involve"
)
_MARGIN_VALUE = _rx(
    rf"\b(?:(?P<unc>not~applicable|n/?a\b|cannot|can~not|not~assessed|pending|rx\b|indeterminate"
    rf"|see~(?:below|comment|note))|(?P<clear>{_CLEAR_CUE})|(?P<inv>{_INVOLVED_CUE})"
    rf"|(?P<yes>yes|present|identified)|(?P<no>none|no\b|absent))"
)
# "Margins: Bronchial: negative" names the margin before its value.
_MARGIN_KIND = _rx(
    r"[ .\-]*(?:(?:bronchial|vascular|parenchymal|pleural|soft~tissue|chest~wall|stapled?|hilar"
    r"|all|other|and|margins?|resection)[ .\-/,]*)+"
)
_NOT_SURGICAL_PRE = re.compile(r"(?<!parietal )(?<!/)pleural? $")
_NOT_SURGICAL = re.compile(r"visceral pleura|pleural surface")
_R_STATUS = re.compile(
    r"(?:margin status|margins?|residual tumou?r(?: status)?|resection|\(r\))[\s:(r).,]{0,8}"
    r"r ?([0-2x])(?![a-z0-9])|(?:hence|thus|a category of|the) r ?([0-2x])(?![a-z0-9])"
    r"|(?<![a-z0-9])r ?([0-2x]) (?:classification|category|situation|resection|status)"
)
_MARGIN_ANCHORS = ("margin", "resection", "stump", "excision line", "staple")
_R_CODE = re.compile(r"r ?[0-2x](?![a-z0-9])")


def _margin_findings(doc: _Doc) -> Iterator[_Finding]:
    """Margin findings around every margin noun, plus residual-tumour codes.

    Example:
        >>> [f.value for f in _margin_findings(_Doc("Bronchial margin: negative for tumor."))]
        ['clear']
    """
    low = doc.low
    last = -1
    for i in doc.hits(_MARGIN_ANCHORS):
        if i < last or (i and low[i - 1].isalpha()):
            continue
        noun = _MARGIN_NOUN.match(low, i)
        if noun is None:
            continue
        last = noun.end()
        if _NOT_SURGICAL_PRE.search(low, max(0, i - 24), i):
            continue  # the visceral pleural "margin" is no surgical margin
        tail = _MARGIN_TAIL.match(low, noun.end())
        if tail.group("colon"):
            yield from _margin_label(doc, i, tail)
        else:
            yield from _margin_sentence(doc, i, tail.end())
    yield from _residual_codes(doc)


def _residual_codes(doc: _Doc) -> Iterator[_Finding]:
    """``R0`` / ``R1`` / ``R2`` / ``RX`` from TNM strings and "Margin status: R0" style phrases
    (node stations such as "R2 lymph node" or "level 4R" never match)."""
    names = {"0": "clear", "1": "involved", "2": "involved", "x": UNKNOWN}
    for kind, value, start, end in _tnm_codes(doc):
        if kind == "r":
            yield doc.finding(names[value], start, end, 2)
    low = doc.low
    for hit in _R_CODE.finditer(low):
        if hit.start() and low[hit.start() - 1].isalnum():
            continue
        m = _R_STATUS.search(low, max(0, hit.start() - 40), min(len(low), hit.end() + 30))
        if m:
            yield doc.finding(names[m.group(1) or m.group(2) or m.group(3)], m.start(), m.end(), 2)


def _margin_value(doc: _Doc, start: int, end: int, *, inverted: bool) -> str | None:
    """clear / involved from the first margin cue in ``[start, end)`` (None: no answer).

    ``inverted`` labels ask "involved?", so a bare yes / no answers them.

    Example:
        >>> d = _Doc(": uninvolved by invasive carcinoma")
        >>> _margin_value(d, 0, len(d.low), inverted=False)
        'clear'
    """
    low = doc.low
    answer = _checklist_answer(low, start)
    text, offset = (answer, 0) if answer is not None else (low, start)
    m = _MARGIN_VALUE.search(text, offset, len(text) if answer is not None else end)
    if not m or m.group("unc"):
        return None
    if _NOT_SURGICAL.search(low, start, end) and m.group("inv"):
        return None  # "MARGINS: TUMOR PRESENT AT VISCERAL PLEURAL SURFACE"
    if m.group("clear"):
        return "clear"
    if m.group("inv"):
        return "involved"
    if inverted:
        return "involved" if m.group("yes") else "clear"
    return None


def _margin_label(doc: _Doc, start: int, tail: re.Match[str]) -> Iterator[_Finding]:
    """A ``... margin(s):`` line; "margin involvement: no" reads the other way round; a bare
    distance ("closest margin: 2 mm") is a weak clear."""
    value_start = tail.end()
    ce = doc.clause(value_start, value_start + 1)[1]
    end = min(ce, value_start + 100)
    colon = doc.low.find(":", value_start, end)
    if colon != -1 and not _MARGIN_KIND.fullmatch(doc.low, value_start, colon):
        end = colon  # "Bronchial margin: Lymph nodes: 0/1 positive" (a column ran into the next)
    value = _margin_value(doc, value_start, end, inverted=bool(tail.group("inv")))
    if value:
        yield doc.finding(value, start, tail.end(), 2)
        return
    distance = _MARGIN_NUMBER.match(doc.low, value_start, end)
    if distance and float(distance.group("d")) > 0:
        yield doc.finding("clear", start, distance.end(), 0)


def _margin_sentence(doc: _Doc, start: int, end: int) -> Iterator[_Finding]:
    """A margin named in prose: a value word before it ("negative margins"), "carcinoma present
    at the ... margin", a distance to it, else the first cue after it ("... are tumor-free")."""
    low = doc.low
    cs, ce = doc.clause(start, end)
    pre = _MARGIN_PRE_VALUE.search(low, max(cs, start - 60), start)
    if pre:
        clear = pre.group("v") not in ("positive", "involved")
        # Only a "not" right before the value word flips it ("not free margins").
        flip = bool(re.search(r"\bnot\W{1,2}$", low[max(0, pre.start() - 6) : pre.start()]))
        yield doc.finding("clear" if clear != flip else "involved", pre.start(), end)
        return
    at = _MARGIN_AT.search(low, max(cs, start - 90), start)
    if at:
        cue = _before_cue(doc, cs, at.start()) or _before_cue(doc, at.start(), start)
        if re.search(r"\bappears? to\b", at.group()):
            cue = UNC  # "tumour appears to be present at a diathermied margin"
        if cue != UNC:
            yield doc.finding("clear" if cue == NEG else "involved", at.start(), end)
        return
    value = _margin_value(doc, end, min(ce, end + 200), inverted=False)
    if value is not None:
        if _before_cue(doc, cs, start) == NEG and value == "involved":
            value = "clear"  # "no tumor at the bronchial margin ... is seen"
        yield doc.finding(value, start, end)
        return
    distance = _MARGIN_DISTANCE.search(low, max(cs, start - 60), start)
    if distance and float(distance.group("d")) > 0:
        yield doc.finding("clear", distance.start(), end, 0)


# ---------------------------------------------------------------------------------------------
# Combining findings
# ---------------------------------------------------------------------------------------------

# The first category with a finding in the best tier wins.
_PRECEDENCE = {
    "stas": ("present", "absent"),
    "vascular_invasion": ("present", "absent"),
    "pleural_invasion": ("present", "absent"),
    "adjacent_invasion": ("present", "absent"),
    "margins": ("involved", "clear", UNKNOWN),
}

# Fields about one structure, where the most explicit statement decides.
_BY_RANK = frozenset({"pleural_invasion"})

_FINDERS: dict[str, Callable[[_Doc], Iterator[_Finding]]] = {
    "stas": _stas_findings,
    "vascular_invasion": _vascular_findings,
    "pleural_invasion": _pleural_findings,
    "adjacent_invasion": _adjacent_findings,
    "margins": _margin_findings,
}


def _decide_present_absent(key: str, doc: _Doc) -> _Finding | None:
    """The deciding finding: the main text over fallback text, explicit over weak findings,
    then the field's precedence ("any vessel type present" wins). For the pleura, one structure,
    the most explicit statement wins outright ("extends to the pleura; however, does not
    disrupt it" is absent).

    Example:
        >>> doc = _Doc("LVI: absent. Venous invasion: present.")
        >>> _decide_present_absent("vascular_invasion", doc).value
        'present'
    """
    findings = list(_FINDERS[key](doc))
    if key == "margins":
        findings = _apply_rx(findings)
    else:
        findings = [f for f in findings if f.value != UNKNOWN]
    if not findings:
        return None
    tiered = doc.main_text(findings)
    if key in _BY_RANK:
        best = max(f.rank for f in tiered)
        tiered = [f for f in tiered if f.rank == best]
    else:
        tiered = [f for f in tiered if f.rank > 0] or tiered
    for category in _PRECEDENCE[key]:
        hits = [f for f in tiered if f.value == category]
        if hits:
            return min(hits, key=lambda f: (-f.rank, f.start))
    return None


def _apply_rx(findings: list[_Finding]) -> list[_Finding]:
    """``RX`` (residual tumour cannot be assessed) leaves margins unknown unless one is involved:
    the explicit RX replaces every clear finding.

    Example:
        >>> [f.value for f in _apply_rx([_Finding("clear", 0, 1), _Finding(UNKNOWN, 5, 7)])]
        ['unknown']
    """
    rx = [f for f in findings if f.value == UNKNOWN]
    if not rx:
        return findings
    return [f for f in findings if f.value == "involved"] or rx[:1]


def _decide(key: str, doc: _Doc) -> FieldAnswer:
    """One field's answer with the evidence that decided it."""
    if key == "differentiation":
        finding = _decide_differentiation(doc)
    else:
        finding = _decide_present_absent(key, doc)
    if finding is None:
        return FieldAnswer(UNKNOWN)
    return FieldAnswer(finding.value, doc.evidence(finding.start, finding.end))


def _check_questions(questions: QuestionSet) -> tuple[str, ...]:
    """The question keys, after checking that the rules cover every key and category."""
    keys = tuple(q.key for q in questions.questions)
    missing = [k for k in keys if k not in CATEGORIES]
    if missing:
        raise ValueError(
            f"rules backend cannot answer question set {questions.name!r}: no rules for keys "
            f"{missing} (rules cover {list(FIELDS)})"
        )
    for q in questions.questions:
        extra = sorted(set(CATEGORIES[q.key]) - set(q.categories))
        if extra:
            raise ValueError(
                f"question {q.key!r} of set {questions.name!r} lacks categories {extra} "
                "that the rules backend gives"
            )
    return keys


def extract_rules(text: str, questions: QuestionSet) -> dict[str, FieldAnswer]:
    """Answer every question of ``questions`` from raw report ``text`` with the offline rules.

    Raises:
        ValueError: the set has keys (or categories) the rules do not cover; the message names
            them.

    Example:
        >>> from fivewsi.reports.questions import load_question_set
        >>> a = extract_rules("Tumor invades through the visceral pleura (PL2).",
        ...                   load_question_set("lung"))
        >>> a["pleural_invasion"]
        FieldAnswer(category='present', evidence='Tumor invades through the visceral pleura (PL2).')
    """
    keys = _check_questions(questions)
    if not isinstance(text, str):
        log.debug("report of type %s read as text", type(text).__name__)
        text = "" if text is None else str(text)
    doc = _Doc(text)
    return {key: _decide(key, doc) for key in keys}
