"""The one registry of slide aggregators: FiVE's TFS model and the label-only MIL baselines.

A model is registered under a name with a factory. ``kind`` says how it classifies:
``"text"`` models (FiVE) score classes by similarity to class descriptions and can learn from
reports; ``"label"`` models (mean, max, ABMIL, DSMIL, TransMIL, CLAM-SB) have a linear head over
class indices and learn from labelled slides only, as in the paper's comparison.

Example:
    >>> from fivewsi.model.registry import list_models
    >>> sorted(list_models())[:3]
    ['abmil', 'clam-sb', 'dsmil']
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

#: Modules whose import registers models.
_MODEL_MODULES = ("fivewsi.model.five", "fivewsi.model.baselines")

Kind = Literal["text", "label"]


@dataclass(frozen=True)
class ModelSpec:
    """What the registry knows about a model before building it."""

    name: str
    factory: Callable[..., nn.Module]
    kind: Kind
    description: str


_REGISTRY: dict[str, ModelSpec] = {}
_loaded = False


def register_model(
    name: str, *, kind: Kind, description: str
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a model factory (a class or a function) under ``name``.

    Label models are built as ``factory(in_dim=..., n_classes=..., **options)``; text models as
    ``factory(in_dim=..., questions=..., text_encoder=..., **options)``.
    """

    def decorate(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY and _REGISTRY[name].factory is not factory:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = ModelSpec(name, factory, kind, description)
        return factory

    return decorate


def _load_all() -> None:
    global _loaded
    if not _loaded:
        for module in _MODEL_MODULES:
            importlib.import_module(module)
        _loaded = True


def list_models() -> dict[str, ModelSpec]:
    """Every registered model, by name."""
    _load_all()
    return dict(sorted(_REGISTRY.items()))


def get_model_spec(name: str) -> ModelSpec:
    """The spec of ``name``; a clear error listing the known names otherwise."""
    models = list_models()
    if name not in models:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(models)}")
    return models[name]


def create_model(name: str, **options: Any) -> nn.Module:
    """Build the model registered as ``name`` with ``options`` passed to its factory."""
    return get_model_spec(name).factory(**options)
