"""The one registry of slide aggregators: FiVE's TFS model and the label-only MIL baselines.

A model is registered under a name with its class (a :class:`~fivewsi.model.interfaces.SlideModel`)
and its options (a pydantic model, ``extra="forbid"``, whose defaults are the model's training
defaults). :class:`~fivewsi.model.interfaces.TextAlignedModel` models (FiVE) score classes by
similarity to class descriptions and can learn from reports;
:class:`~fivewsi.model.interfaces.LabelModel` models (mean, max, ABMIL, DSMIL, TransMIL, CLAM-SB)
have a head over class indices and learn from labelled slides only, as in the paper's comparison.

Example:
    >>> from fivewsi.model.registry import get_model_spec, list_models
    >>> sorted(list_models())[:3]
    ['abmil', 'clam-sb', 'dsmil']
    >>> get_model_spec("abmil").validate_options({"dim": 256})["dim"]
    256
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict

from fivewsi.errors import ModelStageError
from fivewsi.model.interfaces import ModelTask, Objective, SlideModel

#: The package whose modules register models: every module in it is imported on first lookup,
#: so a new model is one new file (``fivewsi/model/<name>.py``) and nothing else to edit.
_MODEL_PACKAGE = "fivewsi.model"

M = TypeVar("M", bound=type[SlideModel])


class ModelOptions(BaseModel):
    """Base of every model's options: unknown (misspelt) options are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class ModelSpec:
    """What the registry knows about a model before building it."""

    name: str
    model: type[SlideModel]
    options: type[ModelOptions]
    description: str

    @property
    def objectives(self) -> tuple[Objective, ...]:
        """What the model can learn from (``"reports"``, ``"classes"``)."""
        return self.model.objectives

    @property
    def text_aligned(self) -> bool:
        """Whether the model scores classes by their descriptions."""
        return self.model.text_aligned

    def validate_options(self, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``options`` over the defaults, validated (a ValidationError names a bad one)."""
        return self.options.model_validate(dict(options or {})).model_dump(mode="json")

    def build(
        self, task: ModelTask, options: Mapping[str, Any] | None = None, *, lazy: bool = False
    ) -> SlideModel:
        """The model for ``task`` with ``options`` over the defaults."""
        return self.model.build(task, self.options.model_validate(dict(options or {})), lazy=lazy)


_REGISTRY: dict[str, ModelSpec] = {}
_loaded = False


def register_model(
    name: str, *, options: type[ModelOptions], description: str
) -> Callable[[M], M]:
    """Class decorator registering a :class:`SlideModel` under ``name`` with its options."""

    def decorate(model: M) -> M:
        if name in _REGISTRY and _REGISTRY[name].model is not model:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = ModelSpec(name, model, options, description)
        return model

    return decorate


class UnknownModelError(ModelStageError, KeyError):
    """No model of that name; the message lists the registered ones."""

    def __str__(self) -> str:  # KeyError's own str() would quote the message
        return str(self.args[0]) if self.args else ""


def _load_all() -> None:
    global _loaded
    if not _loaded:
        package = importlib.import_module(_MODEL_PACKAGE)
        for info in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{_MODEL_PACKAGE}.{info.name}")
        _loaded = True


def list_models() -> dict[str, ModelSpec]:
    """Every registered model, by name."""
    _load_all()
    return dict(sorted(_REGISTRY.items()))


def get_model_spec(name: str) -> ModelSpec:
    """The spec of ``name``; a clear error listing the known names otherwise."""
    models = list_models()
    if name not in models:
        raise UnknownModelError(f"unknown model {name!r}; known models: {', '.join(models)}")
    return models[name]


def create_model(
    name: str,
    *,
    in_dim: int,
    n_classes: int = 0,
    questions: list[str] | tuple[str, ...] = (),
    lazy: bool = False,
    **options: Any,
) -> SlideModel:
    """Build the model registered as ``name`` for a task, with ``options`` over its defaults.

    Example:
        >>> model = create_model("abmil", in_dim=16, n_classes=3, dim=32)
        >>> model.n_classes, model.dim
        (3, 32)
    """
    task = ModelTask(int(in_dim), int(n_classes), tuple(questions))
    return get_model_spec(name).build(task, options, lazy=lazy)
