"""Evaluation of trained slide classifiers.

- :mod:`fivewsi.evaluation.metrics` — accuracy, balanced accuracy, macro F1 and AUC with
  percentile-bootstrap intervals over slides; prediction = most probable class.
- :mod:`fivewsi.evaluation.evaluate` — :func:`evaluate_run`: a run on a cohort's test split →
  ``metrics.json`` and ``predictions.csv``.
- :mod:`fivewsi.evaluation.fewshot` — :func:`run_fewshot`: models × k shots × seeds, resumable,
  tables of mean ± sd.
- :mod:`fivewsi.evaluation.figures` — the PNG figures (ROC, confusion, reliability, metric
  against k, cross-validation folds) in one fixed matplotlib style.

Example:
    >>> from fivewsi.evaluation import classification_metrics
    >>> import numpy as np
    >>> classification_metrics(["a", "b"], np.eye(2), ["a", "b"], n_bootstrap=0)["n"]
    2
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Imported on first use: evaluation and the grid pull in torch and the training stack.
_EXPORTS = {
    "METRICS": "fivewsi.evaluation.metrics",
    "classification_metrics": "fivewsi.evaluation.metrics",
    "EvaluationError": "fivewsi.evaluation.evaluate",
    "EvaluationResult": "fivewsi.evaluation.evaluate",
    "SlideOutcome": "fivewsi.evaluation.evaluate",
    "evaluate_run": "fivewsi.evaluation.evaluate",
    "FewshotCell": "fivewsi.evaluation.fewshot",
    "FewshotConfig": "fivewsi.evaluation.fewshot",
    "FewshotError": "fivewsi.evaluation.fewshot",
    "FewshotResult": "fivewsi.evaluation.fewshot",
    "run_fewshot": "fivewsi.evaluation.fewshot",
}

if TYPE_CHECKING:
    from fivewsi.evaluation.evaluate import (
        EvaluationError,
        EvaluationResult,
        SlideOutcome,
        evaluate_run,
    )
    from fivewsi.evaluation.fewshot import (
        FewshotCell,
        FewshotConfig,
        FewshotError,
        FewshotResult,
        run_fewshot,
    )
    from fivewsi.evaluation.metrics import METRICS, classification_metrics


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fivewsi.evaluation' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [
    "METRICS",
    "EvaluationError",
    "EvaluationResult",
    "FewshotCell",
    "FewshotConfig",
    "FewshotError",
    "FewshotResult",
    "SlideOutcome",
    "classification_metrics",
    "evaluate_run",
    "run_fewshot",
]
