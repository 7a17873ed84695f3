"""Categories → the canonical fine-grained label text of a slide.

One short phrase per known field, in question order, joined with ``"; "``; unknown fields are
left out (as FiVE drops 'Unknown' parts from its training texts). Same categories, same text.

Example:
    >>> from fivewsi.reports.questions import load_question_set
    >>> qs = load_question_set("lung")
    >>> render_label({"differentiation": "poor", "vascular_invasion": "present",
    ...               "pleural_invasion": "absent", "margins": "clear"}, qs)
    'poorly differentiated; vascular invasion present; pleural invasion absent; margins clear'
"""

from __future__ import annotations

from collections.abc import Mapping

from fivewsi.reports.questions import QuestionSet
from fivewsi.reports.schema import UNKNOWN

SEPARATOR = "; "


def render_label(categories: Mapping[str, str], questions: QuestionSet) -> str:
    """The label text for ``categories`` (key → category); missing keys count as unknown.

    Raises:
        ValueError: a category that its question does not list.

    Example:
        >>> from fivewsi.reports.questions import load_question_set
        >>> render_label({"stas": "unknown"}, load_question_set("lung"))
        ''
    """
    phrases = []
    for question in questions.questions:
        category = categories.get(question.key) or UNKNOWN
        if category not in question.categories:
            raise ValueError(
                f"{question.key}: {category!r} is not one of {list(question.categories)}"
            )
        if category != UNKNOWN:
            phrases.append(question.render[category])
    return SEPARATOR.join(phrases)
