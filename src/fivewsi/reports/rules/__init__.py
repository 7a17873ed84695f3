"""Offline rules backend: an engine that reads raw report text, and one rule set per question set.

The engine reads a report as it really is (OCR noise, old line breaks left as stray dots,
synoptic checklists, several specimens, addenda):

- :mod:`~fivewsi.reports.rules.text` — OCR-tolerant patterns, anchor words, line-break dots;
- :mod:`~fivewsi.reports.rules.sections` — main and fallback sections, TNM-definition boilerplate;
- :mod:`~fivewsi.reports.rules.tnm` — G / L / V / R / PL codes of TNM strings;
- :mod:`~fivewsi.reports.rules.document` — the prepared report (:class:`Doc`) and its findings;
- :mod:`~fivewsi.reports.rules.polarity` — label values, checklist answers, negation, hedges;
- :mod:`~fivewsi.reports.rules.engine` — :class:`RuleSet`, :class:`FieldRule` and how findings
  become answers with evidence;
- :mod:`~fivewsi.reports.rules.registry` — rule sets by question-set name; the built-in ones
  live in :mod:`fivewsi.reports.rules.sets` (``lung``).

:func:`extract_rules` answers a question set with the rule set registered under its name.

Example:
    >>> from fivewsi.reports.questions import load_question_set
    >>> a = extract_rules("Tumor invades through the visceral pleura (PL2).",
    ...                   load_question_set("lung"))
    >>> a["pleural_invasion"]
    FieldAnswer(category='present', evidence='Tumor invades through the visceral pleura (PL2).')
"""

from __future__ import annotations

from fivewsi.reports.questions import QuestionSet
from fivewsi.reports.rules.document import EVIDENCE_CHARS, Doc, Finding
from fivewsi.reports.rules.engine import (
    FieldRule,
    RuleSet,
    RuleSetMismatchError,
    by_precedence,
    by_rank,
)
from fivewsi.reports.rules.registry import (
    NoRuleSetError,
    get_rule_set,
    list_rule_sets,
    register_rule_set,
)
from fivewsi.reports.schema import FieldAnswer

__all__ = [
    "EVIDENCE_CHARS",
    "Doc",
    "FieldRule",
    "Finding",
    "NoRuleSetError",
    "RuleSet",
    "RuleSetMismatchError",
    "by_precedence",
    "by_rank",
    "extract_rules",
    "get_rule_set",
    "list_rule_sets",
    "register_rule_set",
]


def extract_rules(text: str, questions: QuestionSet) -> dict[str, FieldAnswer]:
    """Answer every question of ``questions`` from raw report ``text`` with the offline rules.

    The rule set is the one registered under ``questions.name``; a set may hold a subset of its
    keys. Never raises on the text.

    Raises:
        NoRuleSetError: no rule set for the question set; the message lists those there are.
        RuleSetMismatchError: the set has keys (or categories) the rules do not cover; the
            message names them.
    """
    return get_rule_set(questions.name).answer(text, questions)
