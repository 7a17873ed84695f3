"""Lung rules: FiVE's six lung-report fields read from raw report text (question set ``lung``).

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

The reading machinery (clauses, sections, polarity, TNM strings) is the engine's
(:mod:`fivewsi.reports.rules`); this module holds only what is about the lung fields. Every
field starts from a few literal anchor words found with ``str.find``, for speed.

Example:
    >>> from fivewsi.reports.questions import load_question_set
    >>> text = ("Squamous cell carcinoma, moderately differentiated (G2). Lymphovascular "
    ...         "invasion: not identified. Margins free of tumour (R0).")
    >>> answers = LUNG.answer(text, load_question_set("lung"))
    >>> answers["differentiation"].category, answers["vascular_invasion"].category
    ('moderate', 'absent')
    >>> answers["margins"].category
    'clear'
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from fivewsi.reports.rules.document import Doc, Finding
from fivewsi.reports.rules.engine import FieldRule, RuleSet, by_precedence, by_rank
from fivewsi.reports.rules.polarity import (
    LABEL_COLON,
    NEG,
    UNC,
    VALUE_CUE,
    before_cue,
    checklist_answer,
    cue_polarity,
    label_value,
    polar,
    verb_before,
)
from fivewsi.reports.rules.registry import register_rule_set
from fivewsi.reports.rules.text import Scan, rx
from fivewsi.reports.schema import UNKNOWN
from fivewsi.reports.vocabulary import (
    GRADE_ADJECTIVES,
    GRADE_CATEGORIES,
    GRADE_WORDS,
    MARGIN_CATEGORIES,
    PRESENCE_CATEGORIES,
    R_CODES,
    grade_level,
    grade_range,
)

# ---------------------------------------------------------------------------------------------
# differentiation
# ---------------------------------------------------------------------------------------------

_GRADE_WORD = r"well|highly|moderately|moderate|intermediately|[pd]?o{1,2}rl[yi]|poor|low|lowly|un"
_DIFF_WORDS = rx(
    r"(?<![a-z])(?P<a>"
    + _GRADE_WORD
    + r")(?:(?:~(?:to|and|or)~|~|-)(?P<b>"
    + _GRADE_WORD
    + r"|well))?~?-?d?if{1,2}er[a-z]*"
)
_HIGH_GRADE = rx(
    r"\b(?P<a>high|low|intermediate)~?-?grade(?=~(?:[a-z]+~){0,2}?(?:carcinoma|adenocarcinoma"
    r"|neoplasm|tumou?r|malignan|squamous|non-?small|large)|~?\(|,|\.)"
)
_GRADE_LABEL = rx(
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
_GRADE_LABEL_SCAN = Scan(_GRADE_LABEL, ("grad", "iffer"), 30, 50)
_DIFF_WORDS_SCAN = Scan(_DIFF_WORDS, ("iffer", "ifer"), 45, 25)
_POORLY = re.compile(r"[pd]?o{1,2}rl[yi]")
_HIGH_GRADE_SCAN = Scan(_HIGH_GRADE, ("grad",), 20, 60)
# "mixed differentiation (G3)", "well differentiated mixed adenocarcinoma (G1)".
_G_IN_BRACKETS = re.compile(r"\(\s?g\.? ?([1-4x])(?:\s?-\s?g?([2-4]))?\s?\)")
_NODE_CONTEXT = re.compile(r"metasta|lymph node|\bnodes?\b")


def _grade_word(word: str) -> str:
    """Category of one grade word, OCR-damaged "poorly" included ("dorly", "poorli").

    Example:
        >>> _grade_word("dorly"), _grade_word("moderately")
        ('poor', 'moderate')
    """
    return "poor" if _POORLY.fullmatch(word) else GRADE_WORDS.get(word, UNKNOWN)


def _grade_pair(a: str, b: str | None) -> str:
    """Category from one or two grade words ("moderately" and "poorly", "moderately well").

    Example:
        >>> _grade_pair("moderately", "poorly"), _grade_pair("moderately", "well")
        ('moderate_to_poor', 'well_to_moderate')
    """
    first = _grade_word(a)
    second = _grade_word(b) if b else first
    if UNKNOWN in (first, second):
        return first
    return grade_range((first, second))


def _grade_numbers(n: str, m: str | None) -> str:
    """Category from a grade number or a range of two: "3", "2-3", "III" (unknown for X). The
    scale ("3 of 4", "1/3") does not change it: grade 3 is poor and grade 4 undifferentiated
    either way.

    Example:
        >>> _grade_numbers("3", None), _grade_numbers("2", "3"), _grade_numbers("iv", None)
        ('poor', 'moderate_to_poor', 'undifferentiated')
    """
    if n == "x":
        return UNKNOWN
    if not m:
        return grade_level(n)
    return grade_range((grade_level(n), grade_level(m)))


def _differentiation_findings(doc: Doc) -> Iterator[Finding]:
    """Grade findings: labelled grades rank 3, TNM ``G`` codes 2, grade words 1 (0 near nodes).

    Example:
        >>> [f.value for f in _differentiation_findings(Doc("Histologic grade: G3"))]
        ['poor']
    """
    low = doc.low
    for m in doc.scan(_GRADE_LABEL_SCAN):
        found = _labelled_grade(doc, m)
        if found:
            yield found
    for kind, value, start, end in doc.tnm_codes():
        if kind == "g":
            n, _, hi = value.partition("-")
            yield doc.finding(_grade_numbers(n, hi.lstrip("g") or None), start, end, 2)
    for m in _G_IN_BRACKETS.finditer(low):
        yield doc.finding(_grade_numbers(m.group(1), m.group(2)), m.start(), m.end(), 2)
    for m in doc.scan(_DIFF_WORDS_SCAN):
        # "not poorly differentiated", "it could also be an undifferentiated carcinoma"
        if not doc.masked(m.start()) and not before_cue(
            doc, doc.clause(m.start(), m.end())[0], m.start()
        ):
            rank = 0 if _NODE_CONTEXT.search(low, max(0, m.start() - 40), m.end() + 40) else 1
            yield doc.finding(_grade_pair(m.group("a"), m.group("b")), m.start(), m.end(), rank)
    for m in doc.scan(_HIGH_GRADE_SCAN):
        yield doc.finding(GRADE_ADJECTIVES[m.group("a")], m.start(), m.end(), 0)


def _labelled_grade(doc: Doc, m: re.Match[str]) -> Finding | None:
    """The grade a ``Grade:`` label gives: number, words or a checklist option."""
    low, end, label = doc.low, m.end(), m.group()
    num = _GRADE_NUM.match(low, end)
    if num and ("grad" in label):  # a bare "differentiation" label takes no number
        value = _grade_numbers(num.group("n"), num.group("m"))
        return doc.finding(value, m.start(), num.end(), 3 if value != UNKNOWN else -1)
    answer = checklist_answer(low, end - 2)
    if answer:
        word = _GRADE_LABEL_WORD.match(answer)
        if word:
            return doc.finding(_grade_pair(word.group("a"), None), m.start(), end, 3)
    words = _DIFF_WORDS.match(low, end) or _HIGH_GRADE.match(low, end)
    if words:
        a = words.group("a")
        value = GRADE_ADJECTIVES.get(a) or _grade_pair(a, words.group("b"))
        return doc.finding(value, m.start(), words.end(), 3)
    word = _GRADE_LABEL_WORD.match(low, end)
    if word and (":" in label or "/" in label):  # "Tumor grade: Poorly." (OCR lost a word)
        a = word.group("a")
        value = GRADE_ADJECTIVES.get(a) or _grade_pair(a, None)
        return doc.finding(value, m.start(), word.end(), 3)
    if _DIFF_UNKNOWN.match(low, end):
        return doc.finding(UNKNOWN, m.start(), end, -1)
    return None


# ---------------------------------------------------------------------------------------------
# STAS
# ---------------------------------------------------------------------------------------------

_STAS = rx(
    r"\bstas\b|spread~through~(?:the~)?air~?spaces?|aerogenous~(?:spread|dissemination)"
    r"|(?:tumou?r|neoplastic|carcinoma|malignant)~(?:cells?|cell~nests|clusters)~(?:[a-z]+~){0,4}?"
    r"(?:lying~)?(?:freely~|free~)?(?:in|within|into)~(?:the~)?(?:adjacent~|surrounding~"
    r"|neighbou?ring~|distant~)?(?:air~?spaces|alveol(?:i|ar~spaces))"
    r"|(?:free~?floating|(?:lying|lie|lies)~freely|dissociated~(?:tumou?r~)?(?:cell~)?clusters)"
    r"~(?:[a-z]+~){0,8}?(?:air~?spaces|alveol(?:i|ar~spaces))"
)
_STAS_SCAN = Scan(_STAS, ("stas", "air", "alveol", "aerogen"), 110, 40)


def _stas_findings(doc: Doc) -> Iterator[Finding]:
    """STAS only where the report names it or describes tumour cells lying in air spaces.

    Example:
        >>> [f.value for f in _stas_findings(Doc("STAS: not identified."))]
        ['absent']
    """
    for m in doc.scan_sentences(_STAS_SCAN):
        named = "stas" in m.group() or "spread" in m.group()
        yield from polar(doc, m.span(), label=named, yes="present", no="absent")


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
_VASC_LABEL = rx(
    _VASC_KIND + r"(?P<mid>[a-z ,/()\-]{0,45}?)~?(?:\(?(?:space|channel)s?\)?~)?"
    r"(?:invasione?|permeation|involvement|infiltration|propagation|spread|emboli)\b"
    r"|" + _VASC_KIND + r"~(?:space~)?status(?=~?:)"
    r"|(?:lvi|lvsi|(?:hem)?angio~?invasion)\b"
)
# "Invasion: angiolymphatic - not identified. perineural - present."
_VASC_KIND_AT = rx(_VASC_KIND + r"(?=~?-|~not\b|~(?:present|absent|identified)\b)")
_INVASION_COLON = rx(r"\binvasion~?:~?\Z")
_VASC_EVENT = rx(
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
_VASC_EVENT_SCAN = Scan(_VASC_EVENT, _VASC_ANCHORS, 100, 50)
# Words that show a label's middle ran into another statement ("vascular margins ... pleural
# invasion", "capillary vessels, without tumoral infiltration").
_VASC_MID_STOP = re.compile(r"margin|node|\d|:|resection|stain|without|\bno\b")


def _vascular_label(doc: Doc, i: int) -> tuple[int, int] | None:
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


def _vascular_findings(doc: Doc) -> Iterator[Finding]:
    """Vascular-invasion findings from labels, prose events and TNM ``L``/``V`` codes.

    Example:
        >>> [f.value for f in _vascular_findings(Doc("pT2 pN0 L0 V1 R0"))]
        ['absent', 'present']
    """
    last = -1
    for i in doc.hits(_VASC_ANCHORS):
        if i < last:
            continue
        span = _vascular_label(doc, i)
        if span:
            last = span[1]
            yield from polar(doc, span, label=True, yes="present", no="absent")
    for m in doc.scan_sentences(_VASC_EVENT_SCAN):
        yield from polar(doc, m.span(), label=False, yes="present", no="absent")
    for kind, value, start, end in doc.tnm_codes():
        if kind in ("l", "v"):
            yield doc.finding("present" if value != "0" else "absent", start, end, 2)


# ---------------------------------------------------------------------------------------------
# pleural invasion
# ---------------------------------------------------------------------------------------------

# A pleura phrase, read from its first word ("pleura", "pleural surface", "elastic layer").
_PLEURA_HEAD = rx(
    r"(?:pleura[le]?(?:~surface|~elastic~layer|~elastica|~visceralis)?|elastic~(?:layer|lamina)\w*)\b"
)
# "Visceral pleural invasion: ...", "Pleura: uninvolved", "pleural and angiolymphatic invasion".
_PLEURA_LABEL = rx(
    r"pleura[le]?(?P<mid>(?:,|~and|~or)~(?:[a-z]+~){1,3}?)?~?(?:invasion|involvement|infiltration"
    r"|extension|surface~status)(?:~through~elastica)?|pleura(?:l~surface)?(?=~?:)"
)
_PLEURA_LABEL_BEFORE = rx(r"(?:\bvisceral~|viscera\)~)?\Z|\bexten[st]ion~to~\Z")
_PLEURA_VERBS = re.compile(
    r"\b(?:invad\w*|infiltrat\w*|penetrat\w*|breach\w*|perforat\w*|break\w*|cross\w*|involv\w*"
    r"|extend\w*|extension|spread\w*|grow\w*|reach\w*|abut\w*|approach\w*|close|disrupt\w*"
    r"|invasion|infiltration|involvement|puncture\w*)\b"
)
# Value words just before the phrase: "negative pleura", "tumor present at the pleura".
_PLEURA_BEFORE = rx(
    r"\b(?:(?P<neg>negative|uninvolved|intact)|(?P<pos>(?:tumou?r|carcinoma)~(?:is~)?present~"
    r"(?:at|on)|tumou?r~extent~?:(?:~to)?))(?:~for~(?:tumou?r|carcinoma|malignancy))?"
    r"(?:~(?:the|visceral|overlying))*~?\Z"
)
# A value right after the phrase: "The pleural surface is negative", "pleura is infiltrated".
_PLEURA_AFTER = rx(
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
_PARIETAL_BEFORE = rx(r"\b(?:parietal|mediastinal)~\Z")
_VISCERAL_NOT_PARIETAL = rx(r"\bvisceral~(?:but~)?not~(?:the~)?parietal~\Z")
_PLEURA_DISTANCE = re.compile(r"\b(?:distance|relationship)\b[^:.;]{0,40}$")
_PLEURA_LABEL_NEAR = re.compile(
    r"\W*(?:[a-z]+\W+){0,2}?(?:abut|close|not invad|no invasion|approach|distance"
    r"|\d+(?:\.\d+)? ?(?:cm|mm))"
)
_PLEURA_NOT_STATEMENT = re.compile(
    r"[ \-,]{0,2}(?:effusion|adhesion|biopsy|fluid|thicken|fibros|plaque|pleuritis|nodule|lavage"
    r"|margin|defect|pucker)"
)


def _pleural_findings(doc: Doc) -> Iterator[Finding]:
    """Visceral-pleura findings around every pleura phrase, plus ``PL`` codes; "abuts" and "up
    to but not through" the pleura read as absent.

    Ranks: synoptic lines and ``PL`` codes 2, invasion verbs 1, "extends to" the pleura 0.

    Example:
        >>> [f.value for f in _pleural_findings(Doc("Carcinoma abuts the pleura."))]
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
        verb = verb_before(doc, _PLEURA_VERBS, i)
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


def _pleura_label(doc: Doc, i: int) -> Iterator[Finding]:
    """A pleura label ("Visceral pleural invasion: not identified"), read like a synoptic line."""
    low = doc.low
    m = _PLEURA_LABEL.match(low, i)
    if m is None or doc.crosses(m.start(), m.end()):
        return
    if m.group("mid") and _VASC_MID_STOP.search(m.group("mid")):
        return
    before = _PLEURA_LABEL_BEFORE.search(low, max(0, i - 16), i)
    start = before.start() if before else i
    colon = LABEL_COLON.match(low, m.end())
    distance = _PLEURA_DISTANCE.search(low, max(doc.sentence_start(i), i - 45), i)
    if colon and (distance or _PLEURA_LABEL_NEAR.match(low, m.end() + 1, m.end() + 60)):
        # "Tumor distance from pleural surface: in contact but not through", "... pleura: 2 mm"
        yield doc.finding("absent", start, m.end(), 2)
        return
    yield from polar(doc, (start, m.end()), label=True, yes="present", no="absent", rank=2)


def _pleura_values(doc: Doc, i: int, end: int) -> Iterator[Finding]:
    """A value word right before ("negative pleura") or after ("pleura is uninvolved")."""
    low = doc.low
    before = _PLEURA_BEFORE.search(low, max(doc.sentence_start(i), i - 50), i)
    if before and not (before.group("pos") and before_cue(doc, doc.clause(i, end)[0], i)):
        # ("No tumour is present on the pleural surface" says nothing about the elastic layer.)
        yield doc.finding("absent" if before.group("neg") else "present", before.start(), end)
    after = _PLEURA_AFTER.match(low, end)
    if after:
        cue = before_cue(doc, doc.clause(i, end)[0], i)
        value = "absent" if after.group("neg") or cue == NEG else "present"
        if cue != UNC:
            yield doc.finding(value, i, after.end())


def _pleura_event(doc: Doc, start: int, end: int) -> Iterator[Finding]:
    """A verb + pleura phrase: not-through and near-words are absent, else its clause decides."""
    text = doc.low[start:end]
    if _PLEURA_INTO_NOT_THROUGH.search(text):
        yield from polar(doc, (start, end), label=False, yes="present", no="absent")
        return
    if _PLEURA_NOT_THROUGH.search(text) or _INNER_NEG.search(text):
        yield doc.finding("absent", start, end)
        return
    strong = bool(_PLEURA_STRONG.search(text))
    if _PLEURA_NEAR.search(text) and not re.search(r"through|into", text):
        if before_cue(doc, doc.clause(start, end)[0], start) != NEG:
            yield doc.finding("absent", start, end)
        return
    rank = 1 if strong else 0
    yield from polar(doc, (start, end), label=False, yes="present", no="absent", rank=rank)


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
_ADJ_AFTER = rx(
    r"~(?:invasion|involvement|infiltration)\b"
    r"|~(?:is~|are~)?(?:focally~)?(?:infiltrated|invaded|involved)~by\b"
)
# Before a structure: "carcinoma is present in the diaphragm".
_ADJ_PRESENT_IN = rx(
    r"\b(?:carcinoma|tumou?r|neoplasm)(?:~cells)?~(?:is~|are~)?(?:present|seen|identified)~"
    r"(?:in|within)~(?:the~)?\Z"
)
_ADJ_LABEL = rx(
    r"\b(?:direct~extension(?:~of~(?:the~)?tumou?r)?|tumou?r~extension(?:~into~extra-?~?pulmonary"
    r"~structures)?|extra-?~?pulmonary~(?:parenchymal~)?extension(?:/invasion~of~tumou?r)?"
    r"|contiguous~structures|invasion~of~adjacent~structures|extent~of~invasion"
    r"|exten[ts]ion~to~pleura/other~structures(?:~\(specify\))?)(?=~?[:.])"
)
_ADJ_GENERIC_NEG = rx(
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
_STRUCTURE_AT = rx(_STRUCTURE + r"\b")
_ADJ_WORDS = (
    "confined", "limited", "restricted", "exten", "extrapulmonary", "contiguous", "structures",
)  # fmt: skip
_ADJ_GENERIC_SCAN = Scan(_ADJ_GENERIC_NEG, _ADJ_WORDS, 50, 80)
_ADJ_LABEL_SCAN = Scan(_ADJ_LABEL, _ADJ_WORDS, 50, 80)
_ADJ_SKIP_VALUE = re.compile(
    r"visceral|pleur|bronch|lung|parenchym|lymph|node|lobe|fissure|hilar|hilum|vascul|perineural"
)
_ADJ_GAP_STOP = re.compile(
    r"\b(?:not|no|without|distal|proximal|close|toward|towards)\b|\d ?(?:cm|mm)\b"
)
_ADJ_NOT_STATEMENT = re.compile(r"\W*margin")  # "chest wall margin" is a surgical margin


def _adjacent_findings(doc: Doc) -> Iterator[Finding]:
    """Findings about direct invasion of structures outside the lung.

    Example:
        >>> [f.value for f in _adjacent_findings(Doc("Tumor invades the chest wall."))]
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
            and before_cue(doc, doc.clause(m.start(), m.end())[0], m.start()) is None
        ):
            yield doc.finding("absent", m.start(), m.end(), 2)
    for m in doc.scan(_ADJ_LABEL_SCAN):
        if not doc.masked(m.start()):
            yield from _adjacent_label(doc, m)
    for kind, value, start, end in doc.tnm_codes():
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


def _structure_findings(doc: Doc, structure: re.Match[str]) -> Iterator[Finding]:
    """Invasion of one structure: "invades the chest wall", "chest wall invasion", "carcinoma
    present in the diaphragm"; touching ("abuts", "adherent to") is no invasion, and a negation
    ("does not invade the chest wall") leaves the field unknown, not absent."""
    low, start, end = doc.low, structure.start(), structure.end()
    after = _ADJ_AFTER.match(low, end)
    if after:
        yield from polar(doc, (start, after.end()), label=False, yes="present", no=UNKNOWN)
    present_in = _ADJ_PRESENT_IN.search(low, max(doc.sentence_start(start), start - 60), start)
    if present_in:
        yield from polar(doc, (present_in.start(), end), label=False, yes="present", no=UNKNOWN)
    verb = verb_before(doc, _ADJ_VERBS, start)
    if verb is None or verb.group().startswith(("abut", "approach", "adhe")):
        return
    if _ADJ_GAP_STOP.search(low, verb.end(), start):
        return  # "involves the visceral but not the parietal pleura", "2 cm distal to the carina"
    yield from polar(doc, (verb.start(), end), label=False, yes="present", no=UNKNOWN)


def _adjacent_label(doc: Doc, m: re.Match[str]) -> Iterator[Finding]:
    """A "Direct extension of tumor: ..." line: a named outside structure is present, a generic
    "not identified / none" absent; values about the pleura, bronchi or lung say nothing here."""
    low = doc.low
    ce = doc.clause(m.start(), m.end())[1]
    value_end = min(ce, m.end() + 90)
    answer = checklist_answer(low, m.end())
    if answer is not None:
        polarity = cue_polarity(VALUE_CUE.search(answer))
    else:
        polarity = label_value(doc, m.end(), ce)
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


_ADJ_EVENT_VALUE = rx(r"\b" + _STRUCTURE + r"\b")


# ---------------------------------------------------------------------------------------------
# margins
# ---------------------------------------------------------------------------------------------

# The head noun of a margin mention; its modifiers ("bronchial resection") come before it.
_MARGIN_NOUN = rx(
    r"(?:margins?|resection~(?:lines?|surfaces?|edges?)|stump|stapled?~lines?|excision~lines?)\b"
)
# What may follow the noun of a margin label: "Margin(s) of resection (R): ", "Margin
# involvement by invasive carcinoma: " (an inverted question), "Bronchial margin - negative".
_MARGIN_TAIL = rx(
    r"(?:~of~(?:resection|excision))?(?:~(?:status|evaluation))?(?:~\(r\))?"
    r"(?P<inv>~involve(?:ment|d)(?:~by~(?:invasive~)?carcinoma)?)?"
    r"(?: ?(?:\([^)]{0,40}\) ?)?(?P<colon>:| - ))?"  # ". - " after a sentence is a new bullet
)
# Value words just before the noun: "negative bronchial and vascular margins", "free margins".
_MARGIN_PRE_VALUE = rx(
    r"\b(?P<v>negative|free|clear|uninvolved|tumou?r-?~?free|positive|involved)~(?:[a-z]+~){0,4}?$"
)
# "carcinoma present at (the) inked staple margin", "tumor extends to the bronchial margin".
_MARGIN_AT = rx(
    r"\b(?:tumou?r|carcinoma|neoplasm|malignancy)~(?:[a-z]+~){0,3}?(?:extends|extending|is~present"
    r"|present|reaches|reaching|is~seen|seen|identified|involves|involving)~(?:[a-z]+~){0,2}?"
    r"(?:to|at|into|in|the)~(?:the~)?(?:[a-z]+~){0,4}?$"
)
# "0.5 cm from the bronchial margin": a distance, so the margin is clear (a weak hint).
_MARGIN_DISTANCE = rx(
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
_MARGIN_VALUE = rx(
    rf"\b(?:(?P<unc>not~applicable|n/?a\b|cannot|can~not|not~assessed|pending|rx\b|indeterminate"
    rf"|see~(?:below|comment|note))|(?P<clear>{_CLEAR_CUE})|(?P<inv>{_INVOLVED_CUE})"
    rf"|(?P<yes>yes|present|identified)|(?P<no>none|no\b|absent))"
)
# "Margins: Bronchial: negative" names the margin before its value.
_MARGIN_KIND = rx(
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


def _margin_findings(doc: Doc) -> Iterator[Finding]:
    """Margin findings around every margin noun, plus residual-tumour codes.

    Example:
        >>> [f.value for f in _margin_findings(Doc("Bronchial margin: negative for tumor."))]
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


def _residual_codes(doc: Doc) -> Iterator[Finding]:
    """``R0`` / ``R1`` / ``R2`` / ``RX`` from TNM strings and "Margin status: R0" style phrases
    (node stations such as "R2 lymph node" or "level 4R" never match)."""
    for kind, value, start, end in doc.tnm_codes():
        if kind == "r":
            yield doc.finding(R_CODES[value], start, end, 2)
    low = doc.low
    for hit in _R_CODE.finditer(low):
        if hit.start() and low[hit.start() - 1].isalnum():
            continue
        m = _R_STATUS.search(low, max(0, hit.start() - 40), min(len(low), hit.end() + 30))
        if m:
            code = m.group(1) or m.group(2) or m.group(3)
            yield doc.finding(R_CODES[code], m.start(), m.end(), 2)


def _margin_value(doc: Doc, start: int, end: int, *, inverted: bool) -> str | None:
    """clear / involved from the first margin cue in ``[start, end)`` (None: no answer).

    ``inverted`` labels ask "involved?", so a bare yes / no answers them.

    Example:
        >>> d = Doc(": uninvolved by invasive carcinoma")
        >>> _margin_value(d, 0, len(d.low), inverted=False)
        'clear'
    """
    low = doc.low
    answer = checklist_answer(low, start)
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


def _margin_label(doc: Doc, start: int, tail: re.Match[str]) -> Iterator[Finding]:
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


def _margin_sentence(doc: Doc, start: int, end: int) -> Iterator[Finding]:
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
        cue = before_cue(doc, cs, at.start()) or before_cue(doc, at.start(), start)
        if re.search(r"\bappears? to\b", at.group()):
            cue = UNC  # "tumour appears to be present at a diathermied margin"
        if cue != UNC:
            yield doc.finding("clear" if cue == NEG else "involved", at.start(), end)
        return
    value = _margin_value(doc, end, min(ce, end + 200), inverted=False)
    if value is not None:
        if before_cue(doc, cs, start) == NEG and value == "involved":
            value = "clear"  # "no tumor at the bronchial margin ... is seen"
        yield doc.finding(value, start, end)
        return
    distance = _MARGIN_DISTANCE.search(low, max(cs, start - 60), start)
    if distance and float(distance.group("d")) > 0:
        yield doc.finding("clear", distance.start(), end, 0)


# ---------------------------------------------------------------------------------------------
# The rule set
# ---------------------------------------------------------------------------------------------


def _apply_rx(findings: list[Finding]) -> list[Finding]:
    """``RX`` (residual tumour cannot be assessed) leaves margins unknown unless one is involved:
    the explicit RX replaces every clear finding.

    Example:
        >>> [f.value for f in _apply_rx([Finding("clear", 0, 1), Finding(UNKNOWN, 5, 7)])]
        ['unknown']
    """
    unassessed = [f for f in findings if f.value == UNKNOWN]
    if not unassessed:
        return findings
    return [f for f in findings if f.value == "involved"] or unassessed[:1]


_PRESENT_FIRST = ("present", "absent")  # any present finding wins ("one vessel type is enough")

#: The lung rule set, for question set ``lung`` (``reports/question_sets/lung.yaml``).
LUNG = register_rule_set(
    RuleSet(
        "lung",
        {
            # A labelled grade beats a TNM G code beats grade words; then the first.
            "differentiation": FieldRule(GRADE_CATEGORIES, by_rank(_differentiation_findings)),
            "stas": FieldRule(PRESENCE_CATEGORIES, by_precedence(_stas_findings, _PRESENT_FIRST)),
            "vascular_invasion": FieldRule(
                PRESENCE_CATEGORIES, by_precedence(_vascular_findings, _PRESENT_FIRST)
            ),
            # One structure: the most explicit statement wins outright ("extends to the
            # pleura; however, does not disrupt it" is absent).
            "pleural_invasion": FieldRule(
                PRESENCE_CATEGORIES,
                by_precedence(_pleural_findings, _PRESENT_FIRST, most_explicit=True),
            ),
            "adjacent_invasion": FieldRule(
                PRESENCE_CATEGORIES, by_precedence(_adjacent_findings, _PRESENT_FIRST)
            ),
            # Any involved margin wins; RX leaves the field unknown unless one is involved.
            "margins": FieldRule(
                MARGIN_CATEGORIES,
                by_precedence(_margin_findings, ("involved", "clear", UNKNOWN), prepare=_apply_rx),
            ),
        },
        description="FiVE's six lung-resection fields, offline (docs/reports-rules.md)",
    )
)
