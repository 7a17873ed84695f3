"""fivewsi: slide classifiers from whole-slide images and their pathology reports (FiVE).

The package follows the pipeline's stages, one subpackage each:

- :mod:`fivewsi.slides` — open slides of any format, find tissue, tile it into patches.
- :mod:`fivewsi.features` — embed patches with a frozen patch encoder into bags of features.
- :mod:`fivewsi.reports` — pathology reports → fine-grained labels (LLM or offline rules).
- :mod:`fivewsi.cohort` — cohort and class tables, label parsing.
- :mod:`fivewsi.model` — FiVE (text encoder, prompts, TFS aggregator) and the MIL baselines.
- :mod:`fivewsi.runs` — a trained run: its record, weights, ``load_model`` and predictions.
- :mod:`fivewsi.training` — report pretraining and few-shot fine-tuning (Lightning).
- :mod:`fivewsi.evaluation` — metrics with bootstrap intervals, the few-shot grid.
- :mod:`fivewsi.predict` — predictions, heatmaps, GeoJSON and the HTML report.
- :mod:`fivewsi.synthetic` — synthetic data with a known answer: pixel slides, feature-level
  and pixel cohorts, their reports (for tests, benchmarks and ``fivewsi demo``).

Example:
    >>> import fivewsi
    >>> "he-handcrafted" in fivewsi.list_encoders()
    True
"""

from __future__ import annotations

__version__ = "0.1.0"

import importlib
from typing import TYPE_CHECKING, Any

# Public names, imported on first use so that `fivewsi --version` does not load torch.
_EXPORTS = {
    "Bag": "fivewsi.features.bags",
    "load_bag": "fivewsi.features.bags",
    "save_bag": "fivewsi.features.bags",
    "create_encoder": "fivewsi.features.registry",
    "list_encoders": "fivewsi.features.registry",
    "SlideError": "fivewsi.slides.readers",
    "open_slide": "fivewsi.slides.readers",
    "load_model": "fivewsi.runs.classifier",
    "SlideClassifier": "fivewsi.runs.classifier",
    "SlidePrediction": "fivewsi.runs.classifier",
    "create_model": "fivewsi.model.registry",
    "list_models": "fivewsi.model.registry",
}

if TYPE_CHECKING:
    from fivewsi.features.bags import Bag, load_bag, save_bag
    from fivewsi.features.registry import create_encoder, list_encoders
    from fivewsi.model.registry import create_model, list_models
    from fivewsi.runs.classifier import SlideClassifier, SlidePrediction, load_model
    from fivewsi.slides.readers import SlideError, open_slide


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fivewsi' has no attribute {name!r}")


__all__ = [
    "Bag",
    "SlideClassifier",
    "SlideError",
    "SlidePrediction",
    "__version__",
    "create_encoder",
    "create_model",
    "list_encoders",
    "list_models",
    "load_bag",
    "load_model",
    "open_slide",
    "save_bag",
]
