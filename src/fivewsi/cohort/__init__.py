"""Cohorts: which slides there are, their class labels, fine-grained labels and splits.

- :mod:`fivewsi.cohort.table` — ``cohort.csv`` and ``classes.csv`` (read, write, check).
- :mod:`fivewsi.cohort.labels` — fine-grained labels as parts, and FiVE's label augmentation.

Example:
    >>> from fivewsi.cohort import CohortRow
    >>> CohortRow("s1", "LUAD", None, "train").split
    'train'
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Imported on first use, so that importing one module does not load the others.
_EXPORTS = {
    "ClassDescription": "fivewsi.cohort.table",
    "CohortError": "fivewsi.cohort.table",
    "CohortRow": "fivewsi.cohort.table",
    "check_labels": "fivewsi.cohort.table",
    "check_patient_labels": "fivewsi.cohort.table",
    "read_classes": "fivewsi.cohort.table",
    "read_cohort": "fivewsi.cohort.table",
    "write_classes": "fivewsi.cohort.table",
    "write_cohort": "fivewsi.cohort.table",
    "LabelPart": "fivewsi.cohort.labels",
    "augment_label": "fivewsi.cohort.labels",
    "parse_report_label": "fivewsi.cohort.labels",
    "sample_drop_keys": "fivewsi.cohort.labels",
}

if TYPE_CHECKING:
    from fivewsi.cohort.labels import (
        LabelPart,
        augment_label,
        parse_report_label,
        sample_drop_keys,
    )
    from fivewsi.cohort.table import (
        ClassDescription,
        CohortError,
        CohortRow,
        check_labels,
        check_patient_labels,
        read_classes,
        read_cohort,
        write_classes,
        write_cohort,
    )


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fivewsi.cohort' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [
    "ClassDescription",
    "CohortError",
    "CohortRow",
    "LabelPart",
    "augment_label",
    "check_labels",
    "check_patient_labels",
    "parse_report_label",
    "read_classes",
    "read_cohort",
    "sample_drop_keys",
    "write_classes",
    "write_cohort",
]
