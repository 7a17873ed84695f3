"""Training: ``fivewsi train`` and loading trained runs as slide classifiers.

- :mod:`fivewsi.training.config` — :class:`TrainConfig`, the settings of a run.
- :mod:`fivewsi.training.train` — :func:`train`, pretraining on reports or fine-tuning on classes.
- :mod:`fivewsi.training.run` — :func:`load_model` → :class:`SlideClassifier`.
- :mod:`fivewsi.training.data`, :mod:`~fivewsi.training.losses`,
  :mod:`~fivewsi.training.module` — the parts.

Example:
    >>> from fivewsi.training import TrainConfig, train, load_model  # doctest: +SKIP
    >>> run = train(TrainConfig(features="f", cohort="c.csv", out="runs/r0")).run  # doctest: +SKIP
    >>> load_model(run, classes="classes.csv").classes  # doctest: +SKIP
    ['LUAD', 'LUSC']
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

# Imported on first use: torch and Lightning load only when training or loading a model.
_EXPORTS = {
    "TrainConfig": "fivewsi.training.config",
    "TrainError": "fivewsi.training.train",
    "TrainResult": "fivewsi.training.train",
    "train": "fivewsi.training.train",
    "RunError": "fivewsi.training.run",
    "SlideClassifier": "fivewsi.training.run",
    "SlidePrediction": "fivewsi.training.run",
    "load_model": "fivewsi.training.run",
}

if TYPE_CHECKING:
    from fivewsi.training.config import TrainConfig
    from fivewsi.training.run import RunError, SlideClassifier, SlidePrediction, load_model
    from fivewsi.training.train import TrainError, TrainResult, train


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fivewsi.training' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


class _Package(types.ModuleType):
    """Keeps ``fivewsi.training.train`` the function once its submodule has been imported.

    Importing a submodule sets it as an attribute of its package, which would shadow the
    function of the same name; the submodule itself stays reachable through ``sys.modules``.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


__all__ = [
    "RunError",
    "SlideClassifier",
    "SlidePrediction",
    "TrainConfig",
    "TrainError",
    "TrainResult",
    "load_model",
    "train",
]
