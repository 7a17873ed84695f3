"""Training: ``fivewsi train`` (a trained run is loaded back with :func:`fivewsi.load_model`).

- :mod:`fivewsi.training.config` — :class:`TrainConfig`, the settings of a run.
- :mod:`fivewsi.training.train` — :func:`train`, pretraining on reports or fine-tuning on classes.
- :mod:`fivewsi.training.folder` — the run folder (new, resumed, finished, refused), its record.
- :mod:`fivewsi.training.plan` — cohort → training and validation slides (no torch).
- :mod:`fivewsi.training.fit` — Lightning: loaders, Trainer, checkpoints.
- :mod:`fivewsi.training.items`, :mod:`~fivewsi.training.data`,
  :mod:`~fivewsi.training.losses`, :mod:`~fivewsi.training.module` — the parts.

Example:
    >>> from fivewsi.training import TrainConfig, train  # doctest: +SKIP
    >>> run = train(TrainConfig(features="f", cohort="c.csv", out="runs/r0")).run  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

# Imported on first use: torch and Lightning load only when training.
_EXPORTS = {
    "TrainConfig": "fivewsi.training.config",
    "TrainError": "fivewsi.training.config",
    "TrainResult": "fivewsi.training.train",
    "train": "fivewsi.training.train",
}

if TYPE_CHECKING:
    from fivewsi.training.config import TrainConfig, TrainError
    from fivewsi.training.train import TrainResult, train


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
    "TrainConfig",
    "TrainError",
    "TrainResult",
    "train",
]
