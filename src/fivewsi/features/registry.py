"""The one registry of patch encoders.

An encoder is registered under a name with a factory; :func:`create_encoder` builds it, loading
local weights where the model needs them. Names of the form ``timm:<model>`` or ``hf:<path>``
reach any timm model or Hugging Face vision model. Modules that register encoders import their
heavy dependencies (timm, open_clip) inside the factory, so listing encoders never needs them.

Example:
    >>> from fivewsi.features.registry import list_encoders
    >>> list_encoders()["he-handcrafted"].needs_weights
    False
"""

from __future__ import annotations

import functools
import importlib
import os
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fivewsi.errors import FeatureStageError
from fivewsi.features.recipe import EncoderRecipe, get_builder, list_recipes

#: The package whose modules register encoders: each is imported on first lookup, so a new
#: encoder family is one new file there. They must not import timm or open_clip at top level.
_ENCODER_PACKAGE = "fivewsi.features.encoders"


class UnknownEncoderError(FeatureStageError, KeyError):
    """No encoder of that name; the message lists the registered ones."""

    def __str__(self) -> str:  # KeyError's own str() would quote the message
        return str(self.args[0]) if self.args else ""


class PatchEncoder(torch.nn.Module):
    """A frozen patch encoder: RGB uint8 patches ``[B, H, W, 3]`` to features ``[B, dim]``.

    Subclasses do their own preprocessing (resize, normalisation) inside :meth:`forward`, so the
    pipeline hands every encoder the same raw patches.
    """

    name: str = "encoder"
    dim: int = 0

    def forward(self, patches: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Facts stored with the features (``encoder`` attribute and friends)."""
        return {"encoder": self.name, "encoder_dim": self.dim}


@dataclass(frozen=True)
class EncoderSpec:
    """What the registry knows about an encoder before building it."""

    name: str
    factory: Callable[..., PatchEncoder]
    dim: int | None
    description: str
    needs_weights: bool
    extra: str | None = None  # pip extra the encoder needs, e.g. "models"
    recipe: EncoderRecipe | None = None  # the published facts, for recipe-built encoders


_REGISTRY: dict[str, EncoderSpec] = {}
_PREFIXES: dict[str, EncoderSpec] = {}
_loaded = False


def register_encoder(
    name: str,
    *,
    dim: int | None,
    description: str,
    needs_weights: bool,
    extra: str | None = None,
) -> Callable[[Callable[..., PatchEncoder]], Callable[..., PatchEncoder]]:
    """Decorator registering ``factory(weights=None, **kwargs) -> PatchEncoder`` under ``name``.

    A name ending in ``:`` registers a prefix: ``timm:`` serves every ``timm:<model>`` name and
    its factory receives the part after the colon as ``model_name``.
    """

    def wrap(factory: Callable[..., PatchEncoder]) -> Callable[..., PatchEncoder]:
        spec = EncoderSpec(name, factory, dim, description, needs_weights, extra)
        (_PREFIXES if name.endswith(":") else _REGISTRY)[name] = spec
        return factory

    return wrap


def _load_modules() -> None:
    global _loaded
    if not _loaded:
        package = importlib.import_module(_ENCODER_PACKAGE)
        for info in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{_ENCODER_PACKAGE}.{info.name}")
        for recipe in list_recipes().values():
            if recipe.name in _REGISTRY:
                raise ValueError(f"encoder {recipe.name!r} has a recipe and a factory")
            _REGISTRY[recipe.name] = EncoderSpec(
                recipe.name, functools.partial(_build_recipe, recipe), recipe.dim,
                recipe.description or recipe.title, needs_weights=True, extra=recipe.extra,
                recipe=recipe,
            )
        _loaded = True


def _build_recipe(
    recipe: EncoderRecipe, weights: Path | None = None, **kwargs: Any
) -> PatchEncoder:
    """Build a recipe's encoder with its family's builder (see :mod:`fivewsi.features.recipe`)."""
    return get_builder(recipe.builder)(recipe, weights=weights, **kwargs)


def list_encoders() -> dict[str, EncoderSpec]:
    """All registered encoders (prefix families such as ``timm:`` included), by name."""
    _load_modules()
    return {**_REGISTRY, **_PREFIXES}


def get_spec(name: str) -> EncoderSpec:
    """The spec for ``name``; :class:`UnknownEncoderError` (a ``KeyError``) with the known names
    if it is unknown."""
    _load_modules()
    if name in _REGISTRY:
        return _REGISTRY[name]
    prefix = name.split(":", 1)[0] + ":"
    if ":" in name and prefix in _PREFIXES:
        return _PREFIXES[prefix]
    known = ", ".join(sorted(list_encoders()))
    raise UnknownEncoderError(f"unknown encoder {name!r}; known encoders: {known}")


def create_encoder(
    name: str, weights: str | os.PathLike[str] | None = None, **kwargs: Any
) -> PatchEncoder:
    """Build the encoder ``name`` in eval mode with gradients off.

    Args:
        name: a registered name (``fivewsi encoders`` lists them) or ``timm:<model>`` /
            ``hf:<path>``.
        weights: local weights file or folder; encoders that need weights and get none look in
            the Hugging Face cache (offline) and otherwise raise a clear error.
        **kwargs: passed to the encoder's factory (e.g. architecture overrides).

    Example:
        >>> import torch
        >>> encoder = create_encoder("he-handcrafted")
        >>> encoder(torch.zeros(2, 256, 256, 3, dtype=torch.uint8)).shape[0]
        2
    """
    spec = get_spec(name)
    if spec.name.endswith(":"):
        kwargs["model_name"] = name.split(":", 1)[1]
    if weights is not None:
        weights = Path(weights)
        if not weights.exists():
            raise FileNotFoundError(f"weights for encoder {name!r} not found: {weights}")
    encoder = spec.factory(weights=weights, **kwargs)
    encoder.eval()
    for param in encoder.parameters():
        param.requires_grad_(False)
    return encoder
