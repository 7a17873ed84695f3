"""The one error hierarchy: every error a user can cause derives from :class:`FivewsiError`.

The command line handles :class:`FivewsiError` once: one line on standard error and exit
status 2 (bad input or settings). Errors of single items (a broken slide, a failed report) are
recorded where they happen and the batch goes on; the command then exits 1.

Each stage has one base class, so a caller can catch a stage's errors without naming each
one; the specific classes live beside the code that raises them and also keep the builtin base
they always had (``ValueError``, ``FileNotFoundError``, ...), so older ``except`` clauses hold.

Example:
    >>> from fivewsi.cohort.table import CohortError
    >>> issubclass(CohortError, FivewsiError), issubclass(CohortError, ValueError)
    (True, True)
"""

from __future__ import annotations


class FivewsiError(Exception):
    """A user-facing error: the message says what is wrong and what to do about it."""


class SlideStageError(FivewsiError):
    """Stage 1: a slide cannot be opened, read or tiled."""


class FeatureStageError(FivewsiError):
    """Stage 1: patch encoders, their weights, feature files and preprocessing outputs."""


class ReportStageError(FivewsiError):
    """Stage 2: question sets, report tables, the LLM backend."""


class CohortStageError(FivewsiError):
    """Stage 3: cohort and classes tables."""


class ModelStageError(FivewsiError):
    """Stage 3: building a model (unknown name, bad options, missing text model)."""


class RunError(FivewsiError):
    """A run folder that cannot be used as asked (missing files, mismatched settings)."""


class TrainStageError(FivewsiError):
    """Stage 3: training cannot start or go on as asked."""


class EvaluationStageError(FivewsiError):
    """Stage 4: evaluation and the few-shot grid."""


class PredictStageError(FivewsiError):
    """Stage 5: prediction inputs and outputs."""


class DemoStageError(FivewsiError):
    """The demo cannot run as asked."""
