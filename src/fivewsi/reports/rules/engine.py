"""Rule sets: one field rule per question, and how a field's findings become its answer.

A :class:`RuleSet` answers the questions of the question set with the same name. Each
:class:`FieldRule` names the categories it can give and a *decide* function that reads a
prepared report (:class:`~fivewsi.reports.rules.document.Doc`) and returns the deciding
:class:`~fivewsi.reports.rules.document.Finding`, or None when the report says nothing (the
answer is then ``unknown``). The two usual ways to decide are built here:
:func:`by_precedence` (present / absent fields: the main text over fallback text, explicit over
weak findings, then a category order) and :func:`by_rank` (the most explicit finding, then the
first in the text).

Example:
    >>> import re
    >>> from fivewsi.reports.rules.polarity import polar
    >>> def necrosis(doc):
    ...     for m in re.finditer(r"necrosis", doc.low):
    ...         yield from polar(doc, m.span(), label=True, yes="present", no="absent")
    >>> rule = FieldRule(("present", "absent", "unknown"),
    ...                  by_precedence(necrosis, ("present", "absent")))
    >>> toy = RuleSet("toy", {"necrosis": rule})
    >>> toy.answer_text("Necrosis: not identified.")["necrosis"]
    FieldAnswer(category='absent', evidence='Necrosis: not identified.')
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from fivewsi.errors import ReportStageError
from fivewsi.reports.questions import QuestionSet
from fivewsi.reports.rules.document import Doc, Finding
from fivewsi.reports.schema import UNKNOWN, FieldAnswer

log = logging.getLogger(__name__)

#: Every finding a field's rules read in a report.
Finder = Callable[[Doc], Iterable[Finding]]
#: The finding that decides a field, or None when the report says nothing about it.
Decider = Callable[[Doc], Finding | None]


class RuleSetMismatchError(ReportStageError, ValueError):
    """A question set asks for keys or categories its rule set does not cover."""


@dataclass(frozen=True)
class FieldRule:
    """How one question is answered: the categories it can give and how it decides."""

    categories: tuple[str, ...]
    decide: Decider


@dataclass(frozen=True)
class RuleSet:
    """The rules of one question set, registered under the question set's ``name``.

    ``fields`` maps each question key to its :class:`FieldRule`. A question set may hold a
    subset of the keys; every key it holds needs a rule, and every category a rule can give
    must be one of its question's categories.
    """

    name: str
    fields: Mapping[str, FieldRule]
    description: str = field(default="", compare=False)

    @property
    def keys(self) -> tuple[str, ...]:
        """The question keys these rules answer."""
        return tuple(self.fields)

    def check(self, questions: QuestionSet) -> tuple[str, ...]:
        """The keys of ``questions``, after checking that the rules cover every key and category.

        Raises:
            RuleSetMismatchError: keys without rules, or categories a rule gives that the
                question lacks; the message names them.
        """
        keys = questions.keys
        missing = [k for k in keys if k not in self.fields]
        if missing:
            raise RuleSetMismatchError(
                f"rules backend cannot answer question set {questions.name!r}: no rules for keys "
                f"{missing} (rule set {self.name!r} covers {list(self.fields)})"
            )
        for q in questions.questions:
            extra = sorted(set(self.fields[q.key].categories) - set(q.categories))
            if extra:
                raise RuleSetMismatchError(
                    f"question {q.key!r} of set {questions.name!r} lacks categories {extra} "
                    "that the rules backend gives"
                )
        return keys

    def answer(self, text: str, questions: QuestionSet) -> dict[str, FieldAnswer]:
        """Every question of ``questions`` answered from raw report ``text``, with evidence."""
        return self.answer_text(text, self.check(questions))

    def answer_text(self, text: str, keys: Iterable[str] | None = None) -> dict[str, FieldAnswer]:
        """The answers for ``keys`` (default: all) without a question set; never raises on text."""
        if not isinstance(text, str):
            log.debug("report of type %s read as text", type(text).__name__)
            text = "" if text is None else str(text)
        doc = Doc(text)
        wanted = self.fields if keys is None else keys
        return {key: _answer(self.fields[key], doc) for key in wanted}


def _answer(rule: FieldRule, doc: Doc) -> FieldAnswer:
    finding = rule.decide(doc)
    if finding is None:
        return FieldAnswer(UNKNOWN)
    return FieldAnswer(finding.value, doc.evidence(finding.start, finding.end))


def drop_unknown(findings: list[Finding]) -> list[Finding]:
    """The findings that state a category (the default ``prepare`` of :func:`by_precedence`)."""
    return [f for f in findings if f.value != UNKNOWN]


def by_precedence(
    find: Finder,
    precedence: tuple[str, ...],
    *,
    most_explicit: bool = False,
    prepare: Callable[[list[Finding]], list[Finding]] = drop_unknown,
) -> Decider:
    """Decide by the main text over fallback text, explicit over weak (rank 0) findings, then
    the first category of ``precedence`` with a finding ("any vessel type present" wins); among
    its findings the highest rank, then the first in the text.

    ``most_explicit`` keeps only the highest-ranked findings before the precedence, for a field
    about one structure where the most explicit statement wins outright ("extends to the pleura;
    however, does not disrupt it" is absent). ``prepare`` filters the findings first.

    Example:
        >>> find = lambda doc: [Finding("absent", 0, 3, 2), Finding("present", 10, 12)]
        >>> by_precedence(find, ("present", "absent"))(Doc("LVI: absent. V1 present")).value
        'present'
        >>> by_precedence(find, ("present", "absent"), most_explicit=True)(Doc("")).value
        'absent'
    """

    def decide(doc: Doc) -> Finding | None:
        findings = prepare(list(find(doc)))
        if not findings:
            return None
        tiered = doc.main_text(findings)
        if most_explicit:
            best = max(f.rank for f in tiered)
            tiered = [f for f in tiered if f.rank == best]
        else:
            tiered = [f for f in tiered if f.rank > 0] or tiered
        for category in precedence:
            hits = [f for f in tiered if f.value == category]
            if hits:
                return min(hits, key=lambda f: (-f.rank, f.start))
        return None

    return decide


def by_rank(find: Finder) -> Decider:
    """Decide by the main text over fallback text, then the highest rank, then the first in
    the text (a labelled grade beats a grade word).

    Example:
        >>> find = lambda doc: [Finding("poor", 0, 4), Finding("moderate", 9, 11, 2)]
        >>> by_rank(find)(Doc("")).value
        'moderate'
    """

    def decide(doc: Doc) -> Finding | None:
        findings = doc.main_text(list(find(doc)))
        return max(findings, key=lambda f: (f.rank, -f.start), default=None)

    return decide
