"""Free-text answers → categories: split an answer line, then read each part's verdict.

An answer part usually reads ``<verdict>, as <reason>`` or ``<evidence>, indicating <verdict>``.
Each part is cut into clauses (commas, semicolons, brackets, ``as`` / ``because`` / ``due to``)
and the first clause that says something decides: hedges make it ``unknown``, negation makes
it ``absent`` / ``clear``, any statement of finding makes it ``present`` / ``involved``. Hedges
that cast doubt on the whole answer (``suspicious``, ``indeterminate``) win wherever they are.

Three field kinds are understood from a question's categories: present/absent, margins
(clear/involved) and grade (well … undifferentiated). Other question sets fall back to matching
category names, render phrases and ``synonyms`` from their YAML.

Example:
    >>> from fivewsi.reports.questions import load_question_set
    >>> qs = load_question_set("lung")
    >>> normalize_field("vascular_invasion", "No lymphovascular invasion identified", qs)
    'absent'
    >>> normalize_field("differentiation", "grade 3 of 4", qs)
    'poor'
    >>> normalize_field("margins", "close but negative (R0)", qs)
    'clear'
"""

from __future__ import annotations

import re
from collections.abc import Callable

from fivewsi.reports.questions import Question, QuestionSet
from fivewsi.reports.schema import (
    STATUS_FAILED,
    STATUS_NEEDS_REVIEW,
    STATUS_OK,
    UNKNOWN,
    FieldAnswer,
    unknown_answers,
)
from fivewsi.reports.vocabulary import (
    GRADE_LEVELS,
    MARGIN_CATEGORIES,
    PRESENCE_CATEGORIES,
    R_CODES,
    grade_level,
    grade_range,
)

# A verdict: (category, confident). Not confident means "no cue found": flag for review.
Verdict = tuple[str, bool]

_FENCE = re.compile(r"```[a-zA-Z]*")
_PREFIX = re.compile(
    r"^\s*(?:\*\*)?(?:final\s+)?(?:answers?|output|response|summary|result|labels?)(?:\*\*)?"
    r"\s*[:=-]\s*",
    re.IGNORECASE,
)
_NUMBERING = re.compile(r"^\s*(?:\(\s*\d+\s*\)|\[\s*\d+\s*\]|\d+\s*[.):]|[-*•])\s*")
_QUOTES = "\"'`“”‘’«»*"

# Whole answer is "no information".
_UNKNOWN_START = re.compile(
    r"^\W*(?:unknown|unk|n/?a|none given|not (?:applicable|available|provided)|no information"
    r"|none reported|not mentioned|not stated|not specified|not reported|not assessed)\b"
)
# Doubt anywhere in the answer: the definitions send these to unknown.
_HEDGE = re.compile(
    r"\b(?:suspicious|suspicion|suspect(?:ed)?|indeterminate|equivocal|possible|pending"
    r"|questionable|uncertain|cannot be (?:excluded|ruled out)|can ?not be (?:excluded|ruled out)"
    r"|not (?:be )?(?:excluded|ruled out))\b"
)
# A clause that says the report does not tell.
_UNKNOWN_CLAUSE = re.compile(
    r"\b(?:unknown|not (?:mentioned|stated|specified|reported|described|addressed|documented"
    r"|provided|available|evaluable|assessable|applicable|assessed|determined)"
    r"|cannot be (?:assessed|determined|evaluated)|can ?not be (?:assessed|determined|evaluated)"
    r"|unable to (?:assess|determine|evaluate)|no information|unclear|unspecified)\b"
)
_NEGATION = re.compile(
    r"\b(?:no|not|none|nor|neither|without|negative|absent|absence|free|uninvolved|lacks?"
    r"|lacking|nil|never|confined|limited (?:to|in|within)|ruled out|p?pl0|p?v0|p?l0)\b|n't\b"
)
# Staging codes stating a finding (L1, V1, pV2, PL2): one positive code makes it present.
_POSITIVE_CODE = re.compile(r"\bp?(?:l1|v[12]|pl[123])\b")
# Touching without invading: absent unless the clause also states a finding.
_WEAK_NEGATION = re.compile(r"\b(?:abut\w*|approach\w*|close to|up to)\b")
_FINDING = re.compile(
    r"\b(?:present|presence|identified|seen|noted|observed|found|detected|confirmed|positive"
    r"|yes|evident|evidence|indicat\w*|invad\w*|invasion|involv\w*|infiltrat\w*|extend\w*"
    r"|extension|penetrat\w*|spread\w*|through|metasta\w*|permeat\w*|emboli|propagat\w*"
    r"|incursion|grow\w*|expand\w*|cross\w*|transcend\w*|breach\w*|erod\w*|destroy\w*"
    r"|affect\w*|reach\w*)\b"
)
# Clause boundaries: punctuation, and "as" / "because" introducing a reason (but not "reported
# as absent", where "as" carries the verdict).
_CLAUSE_SPLIT = re.compile(
    r"[,;()\[\]]|\s(?:because|since|due to|given that|whereas|while)\s"
    r"|(?<!reported)(?<!described)(?<!noted)(?<!stated)(?<!regarded)(?<!classified)"
    r"(?<!considered)(?<!indicated)(?<!identified)(?<!graded)(?<!interpreted)(?<!such)"
    r"(?<!as far)(?<!as well)(?<!so)\sas\s(?!(?:far|well|much|long|soon|many)\s+as\b)"
)


def split_answer(line: str, n: int) -> list[str] | None:
    """The ``n`` semicolon-separated parts of an answer, or None when there are not exactly n.

    Tolerates code fences, an ``Answer:`` prefix, surrounding quotes, prose lines around the
    answer line, numbering (``1.``, ``(1)``) and one answer per line.

    Example:
        >>> split_answer("Answer: 1. Poorly; 2. Unknown", 2)
        ['Poorly', 'Unknown']
        >>> split_answer("only; two", 3) is None
        True
    """
    if not isinstance(line, str) or n < 1:
        return None
    lines = [_clean_line(s) for s in _FENCE.sub("\n", line).splitlines()]
    lines = [s for s in lines if s]
    if not lines:
        return None
    for candidate in _candidates(lines):
        parts = _split_parts(candidate, n)
        if parts is not None:
            return parts
    # One answer per line ("1. Poorly differentiated" ...), without semicolons.
    if len(lines) == n and all(";" not in s for s in lines):
        return [_strip_part(s) for s in lines]
    return None


def _candidates(lines: list[str]) -> list[str]:
    # Prefer a single line holding the answer; then everything joined (answer wrapped).
    return [*lines, " ".join(lines)]


def _clean_line(text: str) -> str:
    text = text.strip().strip(_QUOTES).strip()
    return _PREFIX.sub("", text, count=1).strip().strip(_QUOTES).strip()


def _split_parts(text: str, n: int) -> list[str] | None:
    parts = [_strip_part(p) for p in text.split(";")]
    if len(parts) == n + 1 and not parts[-1]:
        parts = parts[:-1]  # a trailing semicolon
    if len(parts) != n or not all(parts):
        return None
    return parts


def _strip_part(part: str) -> str:
    return _NUMBERING.sub("", part.strip(), count=1).strip().strip(_QUOTES).strip()


def normalize_field(key: str, text: str, questions: QuestionSet) -> str:
    """The category of ``questions``' field ``key`` that a free-text answer ``text`` states.

    Never raises on arbitrary text; a key not in the set raises KeyError.

    Example:
        >>> from fivewsi.reports.questions import load_question_set
        >>> qs = load_question_set("lung")
        >>> normalize_field("pleural_invasion", "Tumour abuts but does not invade the pleura", qs)
        'absent'
        >>> normalize_field("stas", "Not mentioned", qs)
        'unknown'
    """
    return classify_field(key, text, questions)[0]


def classify_field(key: str, text: str, questions: QuestionSet) -> Verdict:
    """Like :func:`normalize_field`, plus whether a cue was found (False: needs review).

    Example:
        >>> from fivewsi.reports.questions import load_question_set
        >>> classify_field("margins", "lorem ipsum", load_question_set("lung"))
        ('unknown', False)
    """
    question = questions.question(key)
    cleaned = _clean_text(text)
    if not cleaned or _UNKNOWN_START.match(cleaned):
        return UNKNOWN, True
    by_synonym = _match_synonyms(question, cleaned)
    if by_synonym is not None:
        return by_synonym, True
    return _classifier_for(question)(question, cleaned)


def normalize_answer(line: str, questions: QuestionSet) -> tuple[dict[str, FieldAnswer], str]:
    """Every field's category from one answer line, and a status.

    Status ``failed`` when the line does not split into one part per question (every field is
    then unknown), ``needs_review`` when some part has no recognisable verdict, else ``ok``.
    The evidence of each field is its answer part.

    Example:
        >>> from fivewsi.reports.questions import load_question_set
        >>> qs = load_question_set("lung")
        >>> fields, status = normalize_answer("Unknown; Unknown; V1; PL0; Unknown; R1", qs)
        >>> [fields[k].category for k in qs.keys], status
        (['unknown', 'unknown', 'present', 'absent', 'unknown', 'involved'], 'ok')
    """
    parts = split_answer(line, len(questions.keys))
    if parts is None:
        return unknown_answers(questions.keys), STATUS_FAILED
    fields: dict[str, FieldAnswer] = {}
    confident = True
    for key, part in zip(questions.keys, parts, strict=True):
        category, sure = classify_field(key, part, questions)
        fields[key] = FieldAnswer(category, part)
        confident = confident and sure
    return fields, STATUS_OK if confident else STATUS_NEEDS_REVIEW


def _clean_text(text: object) -> str:
    if not isinstance(text, str):
        return ""
    text = text.replace("\u2013", "-").replace("\u2014", "-").replace("’", "'")
    return re.sub(r"\s+", " ", text).strip().strip(_QUOTES + ".").strip().lower()


def _clauses(text: str) -> list[str]:
    return [c.strip() for c in _CLAUSE_SPLIT.split(text) if c and c.strip()]


def _classifier_for(question: Question) -> Callable[[Question, str], Verdict]:
    cats = set(question.categories)
    if cats == set(PRESENCE_CATEGORIES):
        return _presence
    if cats == set(MARGIN_CATEGORIES):
        return _margins
    if set(GRADE_LEVELS[:3]) <= cats:
        return _grade
    return _generic


# --- present / absent ---------------------------------------------------------------------


def _presence(question: Question, text: str) -> Verdict:
    """Present / absent / unknown from the first clause that says something."""
    if _HEDGE.search(text):
        return UNKNOWN, True
    for clause in _clauses(text):
        if _UNKNOWN_CLAUSE.search(clause):
            return UNKNOWN, True
        if _POSITIVE_CODE.search(clause):
            return "present", True
        if _NEGATION.search(clause):
            return "absent", True
        if _FINDING.search(clause):
            return "present", True
        if _WEAK_NEGATION.search(clause):
            return "absent", True
    if _mentions_subject(question, text):
        # "Tumour cells in air spaces (STAS)": a finding stated without a verb; worth a look.
        return "present", False
    return UNKNOWN, False


def _mentions_subject(question: Question, text: str) -> bool:
    """Whether ``text`` names what the question is about (words of its key and phrases)."""
    phrases = [question.key.replace("_", " "), *question.render.values()]
    words = {w for p in phrases for w in re.findall(r"[a-z]{3,}", p.lower())}
    words -= {"present", "absent", "the", "and", "through", *question.categories}
    return any(re.search(rf"\b{w}", text) for w in words)


# --- margins --------------------------------------------------------------------------------

_MARGIN_UNKNOWN = re.compile(
    r"\b(?:rx|r x|unclear|suspicious|suspicion|indeterminate|equivocal|possible|pending"
    r"|cannot be (?:assessed|determined|evaluated)|can ?not be (?:assessed|determined)"
    r"|not (?:assessed|assessable|evaluable|mentioned|stated|specified|reported|determined"
    r"|described|provided|available|applicable))\b"
)
# "No margin involvement", "involvement: not identified": negated involvement means clear.
_MARGIN_NOT_INVOLVED = re.compile(
    r"\b(?:no|without)\s+(?:\w+\s+){0,2}(?:involvement|tumou?r|carcinoma|malignancy|disease)\b"
    r"|\b(?:involvement|involved|positive)\W+(?:\w+\W+){0,2}?(?:not|none|absent|negative)\b"
)
_MARGIN_INVOLVED = re.compile(
    r"\bnot (?:entirely |completely |all )?(?:clear|free|negative)\b"
    r"|(?<!not )(?<!un)\b(?:involved|involving|involvement|positive)\b"
    r"|\b(?:tumou?r|carcinoma|malignancy|neoplasm|disease|cancer)\s+(?:is\s+)?(?:present\s+)?"
    r"(?:at|on|in)\s+(?:the\s+)?(?:\w+\s+){0,3}(?:margin|resection line|staple line|surface)"
    r"|\bpresent at\b|\bextends? (?:in)?to the (?:\w+ ){0,3}margin|\bdisease presence\b"
    r"|\bnot (?:been )?(?:completely|fully|entirely) (?:excised|resected)\b|\bincomplete"
)
_MARGIN_CLEAR = re.compile(
    r"\b(?:clear|negative|free|uninvolved|not involved|clean|tumou?r-free|complete(?:ly)? "
    r"(?:excised|resected)|well away)\b"
    r"|\bno (?:residual |invasive )?(?:tumou?r|carcinoma|malignancy|neoplasm|disease|cancer)\b"
)
_R_CODE = re.compile(
    r"(?<![\w-])r\s?([012x])\b(?!\s*(?:lymph|node|station|level|hilar|paratracheal))"
)


def _margins(question: Question, text: str) -> Verdict:
    """Clear / involved / unknown from the first clause with a cue, then R0/R1/R2/Rx codes."""
    for clause in _clauses(text):
        if _MARGIN_UNKNOWN.search(clause):
            return UNKNOWN, True
        if _MARGIN_NOT_INVOLVED.search(clause):
            return "clear", True
        if _MARGIN_INVOLVED.search(clause):
            return "involved", True
        if _MARGIN_CLEAR.search(clause):
            return "clear", True
        code = _r_code(clause)
        if code is not None:
            return code, True
    return UNKNOWN, False


def _r_code(clause: str) -> str | None:
    if re.search(r"\b(?:station|level|node)\b", clause):
        return None  # lymph-node station names such as "R2" or "4R" are not R codes
    found = {R_CODES[m.group(1)] for m in _R_CODE.finditer(clause)}
    return found.pop() if len(found) == 1 else None


# --- grade ----------------------------------------------------------------------------------

_LEVEL_WORDS = {
    "well": re.compile(
        r"(?<!as )\bwell\b(?![- ](?:circumscribed|defined|demarcated|delineated|as\b))"
    ),
    "moderate": re.compile(r"\bmoderate(?:ly)?\b"),
    "poor": re.compile(
        r"\bpoor(?:ly)?\b(?![- ](?:circumscribed|defined|demarcated|preserved))"
        r"|\bhigh[- ]grade\b"
    ),
    "undifferentiated": re.compile(r"\bundifferentiated\b|\banaplastic\b"),
}
_NUM = r"([1-4]|iv|i{1,3})"
_GRADE_NUMBER = re.compile(
    rf"\bg\s?([1-4x])\b(?:\s*(?:-|to|/)\s*g?\s?([1-4])\b)?"
    rf"|\bgrade\s*(?:is\s*|of\s*)?(?:{_NUM}|(x))\b(?:\s*(?:-|to|and)\s*{_NUM}\b)?"
)
_GRADE_FRACTION = re.compile(r"\b([1-4])\s*(?:-\s*([1-4]))?\s*(?:/|of)\s*[34]\b")


def _grade(question: Question, text: str) -> Verdict:
    """A grade category from grade words, then grade numbers (G3, grade III, 3/4), then 'mixed'."""
    levels = _word_levels(text)
    if not levels:
        levels = _number_levels(text)
    if levels:
        return _combine_levels(levels, question), True
    if re.search(r"\bmixed\b|\bheterogeneous\b|\bvariable\b", text) and "mixed" in question.render:
        return "mixed", True
    if _UNKNOWN_CLAUSE.search(text) or re.search(r"\bgx\b|\bgrade x\b|\b(?:un|not )graded", text):
        return UNKNOWN, True
    return UNKNOWN, False


def _word_levels(text: str) -> set[str]:
    levels = {level for level, pattern in _LEVEL_WORDS.items() if pattern.search(text)}
    if "poor" in levels and "undifferentiated" in levels:
        # "poorly or largely undifferentiated": one poorly differentiated tumour.
        levels.discard("undifferentiated")
    return levels


def _number_levels(text: str) -> set[str]:
    # Every captured number is 1-4 (digits or Roman numerals) by the patterns' construction.
    levels: set[str] = set()
    for match in _GRADE_NUMBER.finditer(text):
        levels.update(grade_level(g) for g in match.groups() if g and g != "x")
    if not levels and re.search(r"grade|differentiat", text):
        for match in _GRADE_FRACTION.finditer(text):
            levels.update(grade_level(g) for g in match.groups() if g)
    return levels


def _combine_levels(levels: set[str], question: Question) -> str:
    category = grade_range(levels)
    return category if category in question.categories else UNKNOWN


# --- any other question set -------------------------------------------------------------------


def _generic(question: Question, text: str) -> Verdict:
    """The category whose name or render phrase occurs in the text (longest match wins)."""
    if _HEDGE.search(text) or _UNKNOWN_CLAUSE.search(text):
        return UNKNOWN, True
    best, best_len = None, 0
    for category in question.categories:
        if category == UNKNOWN:
            continue
        for phrase in (category.replace("_", " "), question.render.get(category, "")):
            phrase = phrase.strip().lower()
            if phrase and len(phrase) > best_len and _contains_phrase(text, phrase):
                best, best_len = category, len(phrase)
    return (best, True) if best is not None else (UNKNOWN, False)


def _match_synonyms(question: Question, text: str) -> str | None:
    best, best_len = None, 0
    for category, words in question.synonyms.items():
        for word in words:
            word = word.strip().lower()
            if word and len(word) > best_len and _contains_phrase(text, word):
                best, best_len = category, len(word)
    return best


def _contains_phrase(text: str, phrase: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", text) is not None
