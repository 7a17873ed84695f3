"""Trained runs: the layer below training, evaluation and predict.

- :mod:`fivewsi.runs.record` — :class:`RunRecord` (``run.json``) and the run folder's file names.
- :mod:`fivewsi.runs.weights` — ``model.safetensors`` and ``texts.safetensors``.
- :mod:`fivewsi.runs.classifier` — :func:`load_model` → :class:`SlideClassifier`.
- :mod:`fivewsi.runs.loop` — :func:`predict_files`, the one prediction loop.

Nothing here imports Lightning; a text-aligned run loads its text model only for new texts.

Example:
    >>> from fivewsi.runs import load_model  # doctest: +SKIP
    >>> load_model("runs/ft16").classes  # doctest: +SKIP
    ['LUAD', 'LUSC']
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Imported on first use: reading a record needs no torch model code.
_EXPORTS = {
    "RunRecord": "fivewsi.runs.record",
    "read_record": "fivewsi.runs.record",
    "write_record": "fivewsi.runs.record",
    "SlideClassifier": "fivewsi.runs.classifier",
    "SlidePrediction": "fivewsi.runs.classifier",
    "load_model": "fivewsi.runs.classifier",
    "predict_files": "fivewsi.runs.loop",
}

if TYPE_CHECKING:
    from fivewsi.runs.classifier import SlideClassifier, SlidePrediction, load_model
    from fivewsi.runs.loop import predict_files
    from fivewsi.runs.record import RunRecord, read_record, write_record


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fivewsi.runs' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [
    "RunRecord",
    "SlideClassifier",
    "SlidePrediction",
    "load_model",
    "predict_files",
    "read_record",
    "write_record",
]
