"""Polarity of a mention: label values, checklist answers, negations and hedges in a clause.

A mention of a finding ("vascular invasion") is read, in this order, from the option a numbered
checklist answer picks ("2. 1. yes. 2. no." → no), the value after its ``Label:``, the closest
negation or hedge before it in its clause ("no evidence of", "suspicious for"), a cue right after
it ("is not identified") and a hedge or negation later in the clause. Each gives ``POS``,
``NEG`` or ``UNC`` (hedged: the field stays unknown); None means the clause says nothing.

Example:
    >>> from fivewsi.reports.rules.document import Doc
    >>> doc = Doc("Lymphovascular invasion: not identified. Suspicious for venous invasion.")
    >>> [mention_polarity(doc, doc.low.index(w), doc.low.index(w) + 8, label=True)
    ...  for w in ("lymphovascular", "venous")]
    ['neg', 'unc']
    >>> [f.value for f in polar(doc, (0, 23), label=True, yes="present", no="absent")]
    ['absent']
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from fivewsi.reports.rules.document import Doc, Finding
from fivewsi.reports.rules.text import is_glue_word

#: Polarity of one mention: stated, negated, hedged.
POS, NEG, UNC = "pos", "neg", "unc"

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
VALUE_CUE = re.compile(
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
LABEL_COLON = re.compile(r"\s?(?:\([^)]{0,30}\)\s?)?(?:[:=]|(?P<dash>\.?\s?- ))")
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


def cue_polarity(m: re.Match[str] | None) -> str | None:
    """The polarity named by a cue match (its named group), or None."""
    return _CUE_GROUPS[m.lastgroup or ""] if m else None


def checklist_answer(low: str, pos: int) -> str | None:
    """The option text a numbered checklist answer at ``pos`` picks, else None.

    Example:
        >>> checklist_answer(": 2. 1. yes. 2. no. K. Next", 0)
        'no'
    """
    m = _CHECKLIST.match(low, pos, pos + 160)
    if not m:
        return None
    chosen = dict(_CHECK_OPTION.findall(m.group(2))).get(m.group(1))
    return chosen.strip() if chosen else None


def label_value(doc: Doc, end: int, clause_end: int) -> str | None:
    """Polarity of the value after a ``Label:``; a bare label may take its value from a short
    next clause ("PLEURAL INVASION. Not identified.").

    Example:
        >>> d = Doc("Venous invasion: Not identified. Next")
        >>> label_value(d, 15, d.clause(0, 15)[1])
        'neg'
    """
    low = doc.low
    value = VALUE_CUE.search(low, end, min(clause_end, end + 90))
    if value:
        if value.lastgroup == "pos" and _VALUE_HEDGE.search(low, value.end(), value.end() + 40):
            return UNC  # "Findings present suspicious for lymphovascular invasion"
        return cue_polarity(value)
    if clause_end < len(low) and clause_end - end < 40:
        nxt_end = doc.clause(clause_end + 2, clause_end + 3)[1]
        if nxt_end - clause_end < 45:
            return cue_polarity(_AFTER_CUE.match(low, clause_end + 1, nxt_end))
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
        if not is_glue_word(word):
            return i + 1
        i = low.rfind(". ", a, i)
    return a


def before_cue(doc: Doc, clause_start: int, start: int) -> str | None:
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


def mention_polarity(doc: Doc, start: int, end: int, *, label: bool) -> str | None:
    """Polarity of a mention at ``[start, end)`` from its clause (None: says nothing).

    ``label`` marks a bare noun ("vascular invasion") that asserts nothing by itself: without a
    value or cue, it is only positive inside a clause that says more than the noun.

    Example:
        >>> d = Doc("There is no evidence of vascular invasion.")
        >>> i = d.low.index("vascular")
        >>> mention_polarity(d, i, i + 18, label=True)
        'neg'
    """
    low = doc.low
    cs, ce = doc.clause(start, end)
    answer = checklist_answer(low, end)
    if answer is not None:
        return cue_polarity(VALUE_CUE.search(answer)) or POS
    colon = LABEL_COLON.match(low, end)
    if colon:
        value_start = colon.end()
        value_end = doc.clause(value_start, value_start + 1)[1]
        # "Invasion (V). - Absent" is a label; "... pleura. - margins free" is the next bullet.
        if not colon.group("dash") or (label and _AFTER_CUE.match(low, value_start, value_end)):
            return label_value(doc, value_start, value_end)
    before = before_cue(doc, cs, start)
    if before:
        return before
    cue = cue_polarity(_AFTER_CUE.match(low, end, ce))
    if cue:
        return cue
    if label and ce - cs <= end - start + 4:
        # A heading ("VENOUS INVASION.") takes its value from the next clause, if any.
        return label_value(doc, end, ce)
    later = _LATER_CUE.search(low, end, min(ce, end + 70))
    if later:
        return cue_polarity(later)
    return POS


def polar(
    doc: Doc, span: tuple[int, int], *, label: bool, yes: str, no: str, rank: int = 1
) -> Iterator[Finding]:
    """A finding for the mention at ``span`` unless it is boilerplate or its clause says
    nothing."""
    start, end = span
    if doc.masked(start):
        return
    polarity = mention_polarity(doc, start, end, label=label)
    if polarity == POS:
        yield doc.finding(yes, start, end, rank)
    elif polarity == NEG:
        yield doc.finding(no, start, end, rank)


def verb_before(
    doc: Doc, verbs: re.Pattern[str], start: int, reach: int = 110, words: int = 8
) -> re.Match[str] | None:
    """The closest of ``verbs`` before ``start`` in the same sentence, at most ``words`` words
    away ("invades through the visceral | pleura"); taking the closest one means a phrase never
    reaches back over another verb ("invades the bronchus and abuts | the pleura").

    Example:
        >>> d = Doc("It invades the bronchus and abuts the pleura.")
        >>> verb_before(d, re.compile(r"\\b(?:invades|abuts)\\b"), d.low.index("pleura")).group()
        'abuts'
    """
    a = max(doc.sentence_start(start), start - reach)
    last = None
    for m in verbs.finditer(doc.low, a, start):
        last = m
    if last is None or doc.low.count(" ", last.end(), start) > words:
        return None
    return last
