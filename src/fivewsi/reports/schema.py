"""Plain data types shared by every report backend (rules, LLM, normalizer).

Example:
    >>> FieldAnswer("present", "angiolymphatic invasion identified").category
    'present'
    >>> worst_status(["ok", "needs_review", "ok"])
    'needs_review'
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from fivewsi.errors import ReportStageError


class ReportsInputError(ReportStageError, ValueError):
    """An input CSV the pipeline cannot use: missing columns, blank or duplicate ids."""


#: Every field answers ``unknown`` when the report does not tell.
UNKNOWN: Final = "unknown"

#: Row statuses, from best to worst.
STATUS_OK: Final = "ok"
STATUS_NEEDS_REVIEW: Final = "needs_review"
STATUS_FAILED: Final = "failed"
STATUSES: Final = (STATUS_OK, STATUS_NEEDS_REVIEW, STATUS_FAILED)


@dataclass(frozen=True)
class FieldAnswer:
    """One field's answer: a category of its question plus the text it was read from.

    Example:
        >>> FieldAnswer("unknown")
        FieldAnswer(category='unknown', evidence='')
    """

    category: str
    evidence: str = ""


def worst_status(statuses: Iterable[str]) -> str:
    """The worst of several statuses (``ok`` for none).

    Example:
        >>> worst_status(["ok", "failed", "needs_review"])
        'failed'
    """
    rank = {status: i for i, status in enumerate(STATUSES)}
    return max(statuses, key=lambda s: rank.get(s, len(STATUSES)), default=STATUS_OK)


def unknown_answers(keys: Iterable[str]) -> dict[str, FieldAnswer]:
    """Every key answered ``unknown`` (the row of a failed report).

    Example:
        >>> unknown_answers(["stas"])
        {'stas': FieldAnswer(category='unknown', evidence='')}
    """
    return {key: FieldAnswer(UNKNOWN) for key in keys}
