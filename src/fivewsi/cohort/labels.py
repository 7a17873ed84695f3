"""Fine-grained labels as parts (one per question), and FiVE's label augmentation.

A slide's ``report_label`` comes in one of two forms, and :func:`parse_report_label` reads both:

- fivewsi's rendered label (``fine_grained_label`` of LABELS.csv): the known fields' render
  phrases joined by ``"; "``, unknown fields left out, e.g. ``"poorly differentiated; margins
  clear"``. Each part is matched to its question by the set's render phrases, ignoring case.
- a raw LLM answer: exactly one semicolon-separated part per question, in question order,
  ``Unknown`` parts included (``"Poorly differentiated; Unknown; V1; ..."``). The raw text of
  each part is kept; :mod:`fivewsi.reports.normalize` decides which parts say the report does
  not tell (those are flagged ``unknown``). A part it cannot read at all stays known: it still
  says something the text encoder can learn from.

Anything else is read part by part: render phrases find their question, other parts keep the
key ``""`` (they still train the text side). Parsing never raises on odd text.

FiVE's augmentation (:func:`augment_label`) drops some questions' parts together with their
prompts, drops ``Unknown`` parts and shuffles the rest; :func:`sample_drop_keys` draws the
questions to drop at each step.

Example:
    >>> import numpy as np
    >>> from fivewsi.reports.questions import load_question_set
    >>> qs = load_question_set("lung")
    >>> parts = parse_report_label("poorly differentiated; vascular invasion present", qs)
    >>> [p.key for p in parts]
    ['differentiation', 'vascular_invasion']
    >>> augment_label(parts, np.random.default_rng(0), drop_keys={"differentiation"})
    'vascular invasion present'
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from fivewsi.reports.normalize import classify_field, split_answer
from fivewsi.reports.questions import QuestionSet
from fivewsi.reports.schema import UNKNOWN

log = logging.getLogger(__name__)

SEPARATOR = "; "

# A stand-alone part that only says "no information" (used where no question is known).
_UNKNOWN_PART = re.compile(
    r"\W*(?:unknown|unk|n/?a|not (?:mentioned|stated|specified|reported|applicable|available))"
    r"\W*",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class LabelPart:
    """One part of a fine-grained label.

    Attributes:
        key: the question key it answers, or ``""`` when no question could be matched.
        text: the part's text as written (whitespace collapsed).
        unknown: True when the part says the report does not tell (FiVE drops these).

    Example:
        >>> LabelPart("margins", "margins clear", False).text
        'margins clear'
    """

    key: str
    text: str
    unknown: bool = False


def parse_report_label(text: str, questions: QuestionSet) -> list[LabelPart]:
    """The parts of a report label, rendered or raw LLM answer (see the module docstring).

    Never raises: ``None``, non-strings and empty text give no parts.

    Example:
        >>> from fivewsi.reports.questions import load_question_set
        >>> qs = load_question_set("lung")
        >>> parse_report_label("Margins Clear; pleural invasion absent", qs)[0]
        LabelPart(key='margins', text='Margins Clear', unknown=False)
        >>> raw = "Poorly differentiated; Unknown; V1; PL0; Unknown; R0"
        >>> [(p.key, p.unknown) for p in parse_report_label(raw, qs)][:3]
        [('differentiation', False), ('stas', True), ('vascular_invasion', False)]
        >>> parse_report_label("", qs)
        []
    """
    if not isinstance(text, str) or not text.strip():
        return []
    phrase_keys = _phrase_index(questions)
    parts = [p for p in (_collapse(s) for s in text.split(";")) if p]
    matched = [phrase_keys.get(p.lower()) for p in parts]
    if parts and all(matched):
        return [LabelPart(k, p) for k, p in zip(matched, parts, strict=True) if k]
    raw = _parse_raw(text, questions, phrase_keys)
    if raw is not None:
        return raw
    return [
        LabelPart(k or "", p, unknown=not k and _UNKNOWN_PART.fullmatch(p) is not None)
        for k, p in zip(matched, parts, strict=True)
    ]


def augment_label(
    parts: Sequence[LabelPart],
    rng: np.random.Generator,
    *,
    drop_keys: set[str] | frozenset[str],
    drop_unknown: bool = True,
    shuffle: bool = True,
) -> str:
    """FiVE's training text: parts of ``drop_keys`` and (by default) unknown parts left out,
    the rest shuffled with ``rng`` and joined by ``"; "``. Empty parts are skipped.

    Example:
        >>> import numpy as np
        >>> parts = [LabelPart("a", "x"), LabelPart("b", "y"), LabelPart("c", "z", True)]
        >>> augment_label(parts, np.random.default_rng(0), drop_keys={"b"})
        'x'
        >>> augment_label(parts, np.random.default_rng(0), drop_keys=set(), shuffle=False)
        'x; y'
    """
    kept = [
        p.text.strip()
        for p in parts
        if p.key not in drop_keys and not (drop_unknown and p.unknown) and p.text.strip()
    ]
    if shuffle and len(kept) > 1:
        kept = [kept[i] for i in rng.permutation(len(kept))]
    return SEPARATOR.join(kept)


def sample_drop_keys(
    keys: Iterable[str], rng: np.random.Generator, max_fraction: float = 0.5
) -> set[str]:
    """A random subset of ``keys`` to drop this step: its size uniform in
    ``0 .. floor(max_fraction * len(keys))``, its members uniform without replacement.

    Raises:
        ValueError: ``max_fraction`` outside ``[0, 1]``.

    Example:
        >>> import numpy as np
        >>> keys = ["a", "b", "c", "d"]
        >>> dropped = sample_drop_keys(keys, np.random.default_rng(1))
        >>> len(dropped) <= 2 and dropped <= set(keys)
        True
    """
    if not 0.0 <= max_fraction <= 1.0:
        raise ValueError(f"max_fraction must lie in [0, 1], got {max_fraction}")
    unique = list(dict.fromkeys(keys))
    most = int(np.floor(max_fraction * len(unique) + 1e-9))
    if most == 0:
        return set()
    n = int(rng.integers(0, most + 1))
    chosen = rng.choice(len(unique), size=n, replace=False) if n else []
    return {unique[int(i)] for i in chosen}


# --- helpers -------------------------------------------------------------------------------


def _collapse(text: str) -> str:
    return " ".join(text.split())


def _phrase_index(questions: QuestionSet) -> dict[str, str]:
    """Lower-cased render phrase → question key (first question wins a shared phrase)."""
    index: dict[str, str] = {}
    for question in questions.questions:
        for category, phrase in question.render.items():
            if category != UNKNOWN and phrase.strip():
                index.setdefault(_collapse(phrase).lower(), question.key)
    return index


def _parse_raw(
    text: str, questions: QuestionSet, phrase_keys: dict[str, str]
) -> list[LabelPart] | None:
    """Parts of a raw one-part-per-question answer, or None when ``text`` is not one."""
    keys = questions.keys
    try:
        split = split_answer(text, len(keys))
    except Exception:  # the splitter is a heuristic; odd text must never break training
        log.debug("split_answer failed on %r", text, exc_info=True)
        return None
    if split is None:
        return None
    parts = [_collapse(p) for p in split]
    # A part that is another question's render phrase means the parts are not in question order
    # (a rendered label that happens to have one part per question, plus free text).
    for key, part in zip(keys, parts, strict=True):
        other = phrase_keys.get(part.lower())
        if other is not None and other != key:
            return None
    out = []
    for key, part in zip(keys, parts, strict=True):
        try:
            category, sure = classify_field(key, part, questions)
        except Exception:
            log.debug("classify_field failed on %r", part, exc_info=True)
            category, sure = UNKNOWN, False
        # Unknown only when the part says so (or hedges); a part the normalizer cannot read
        # still carries words worth training on.
        out.append(LabelPart(key, part, unknown=category == UNKNOWN and sure))
    return out
