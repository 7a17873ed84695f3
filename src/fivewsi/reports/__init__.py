"""Pathology reports → fine-grained labels: question sets, backends, normalizer, evaluation.

Each report is answered question by question (a rule-based backend offline, or an
OpenAI-compatible LLM), every answer is mapped onto a fixed category, and the known
categories are rendered into one short fine-grained label text per slide.

- :mod:`fivewsi.reports.questions` — question sets as YAML data (bundled ``lung``).
- :mod:`fivewsi.reports.normalize` — free-text answers → categories.
- :mod:`fivewsi.reports.vocabulary` — what grades and R codes mean (normalizer and rules).
- :mod:`fivewsi.reports.render` — categories → label text.
- :mod:`fivewsi.reports.evaluate` — agreement with reference labels.
- :mod:`fivewsi.reports.pipeline` — CSV in, LABELS.csv out.

Backends (``rules``: an engine plus one rule set per question set; ``llm``) are imported
only when used.

Example:
    >>> from fivewsi.reports import load_question_set, normalize_answer, render_label
    >>> qs = load_question_set("lung")
    >>> fields, status = normalize_answer(
    ...     "Poorly differentiated; Unknown; Vascular invasion present; No pleural invasion; "
    ...     "Unknown; Margins clear (R0)", qs)
    >>> status
    'ok'
    >>> render_label({k: a.category for k, a in fields.items()}, qs)
    'poorly differentiated; vascular invasion present; pleural invasion absent; margins clear'
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Everything loads on first use, so `fivewsi --help` does not pay for pydantic or YAML.
_LAZY = {
    "STATUS_FAILED": "fivewsi.reports.schema",
    "STATUS_NEEDS_REVIEW": "fivewsi.reports.schema",
    "STATUS_OK": "fivewsi.reports.schema",
    "UNKNOWN": "fivewsi.reports.schema",
    "FieldAnswer": "fivewsi.reports.schema",
    "Question": "fivewsi.reports.questions",
    "QuestionSet": "fivewsi.reports.questions",
    "QuestionSetError": "fivewsi.reports.questions",
    "list_question_sets": "fivewsi.reports.questions",
    "load_question_set": "fivewsi.reports.questions",
    "normalize_answer": "fivewsi.reports.normalize",
    "normalize_field": "fivewsi.reports.normalize",
    "split_answer": "fivewsi.reports.normalize",
    "render_label": "fivewsi.reports.render",
    "evaluate_labels": "fivewsi.reports.evaluate",
    "ExtractSummary": "fivewsi.reports.pipeline",
    "extract_reports": "fivewsi.reports.pipeline",
    "normalize_file": "fivewsi.reports.pipeline",
    "evaluate_files": "fivewsi.reports.pipeline",
}

if TYPE_CHECKING:
    from fivewsi.reports.evaluate import evaluate_labels
    from fivewsi.reports.normalize import normalize_answer, normalize_field, split_answer
    from fivewsi.reports.pipeline import (
        ExtractSummary,
        evaluate_files,
        extract_reports,
        normalize_file,
    )
    from fivewsi.reports.questions import (
        Question,
        QuestionSet,
        QuestionSetError,
        list_question_sets,
        load_question_set,
    )
    from fivewsi.reports.render import render_label
    from fivewsi.reports.schema import (
        STATUS_FAILED,
        STATUS_NEEDS_REVIEW,
        STATUS_OK,
        UNKNOWN,
        FieldAnswer,
    )


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fivewsi.reports' has no attribute {name!r}")


__all__ = [
    "STATUS_FAILED",
    "STATUS_NEEDS_REVIEW",
    "STATUS_OK",
    "UNKNOWN",
    "ExtractSummary",
    "FieldAnswer",
    "Question",
    "QuestionSet",
    "QuestionSetError",
    "evaluate_files",
    "evaluate_labels",
    "extract_reports",
    "list_question_sets",
    "load_question_set",
    "normalize_answer",
    "normalize_field",
    "normalize_file",
    "render_label",
    "split_answer",
]
