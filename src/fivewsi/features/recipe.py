"""Encoder recipes: what the authors of a patch encoder publish, kept as data.

A recipe is one YAML file in ``fivewsi/features/encoders/recipes/`` (``<name>.yaml``): the
architecture and its arguments, how pixels are resized, cropped and normalised, which tokens
form the embedding, the output size, the magnification the model was trained at, where its
weights come from and how their keys are laid out, the licence, and the source of each fact.
The registry registers every recipe under its ``name``; the recipe's ``builder`` (a function
registered with :func:`register_builder` by a module of ``fivewsi.features.encoders``) turns
it and a weights path into a :class:`~fivewsi.features.registry.PatchEncoder`.

Adding an encoder of a known family is therefore one YAML file plus its parity test;
``docs/encoders.md`` and ``fivewsi encoders`` read the same facts.

Example:
    >>> recipe = EncoderRecipe.model_validate({
    ...     "name": "toy", "title": "Toy", "dim": 8, "builder": "timm", "architecture": "vit_tiny",
    ...     "embedding": "cls", "magnification": 20, "licence": "MIT",
    ...     "preprocess": {"resize": 224, "crop": 224, "mean": [0.5] * 3, "std": [0.5] * 3},
    ...     "weights": {"hub": ["org/toy"], "files": ["model.safetensors"], "layout": "timm"},
    ...     "sources": {"architecture": "the toy paper"}})
    >>> recipe.mpp, recipe.preprocess.input_size
    (0.5, 224)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fivewsi.errors import FeatureStageError

if TYPE_CHECKING:
    from fivewsi.features.registry import PatchEncoder

#: Where the recipe files live (package data: shipped in the wheel).
RECIPE_FOLDER = Path(__file__).resolve().parent / "encoders" / "recipes"

#: Which tokens form the embedding.
#: ``cls``: the class token after the final norm; ``pooled``: what the model's own forward with
#: no classifier returns (timm ``num_classes=0``, a transformers pooler, a CLIP projection...);
#: ``cls+mean-patches``: the class token concatenated with the mean of the patch tokens, register
#: tokens left out (Virchow, Virchow2); ``mean-patches``: the mean of the patch tokens.
Embedding = Literal["cls", "pooled", "cls+mean-patches", "mean-patches"]

Interpolation = Literal["nearest", "bilinear", "bicubic", "lanczos"]


class RecipeError(FeatureStageError, ValueError):
    """A recipe file that does not parse or does not validate (names the file)."""


class Preprocess(BaseModel):
    """The authors' eval transform, as torchvision would apply it to a PIL image.

    ``Resize(resize, interpolation)`` (an int resizes the shorter side, keeping the aspect
    ratio), then ``CenterCrop(crop)``, ``ToTensor()`` and ``Normalize(mean, std)``. fivewsi
    resizes the uint8 patch with PIL exactly as torchvision's ``Resize`` does on a PIL image
    (its antialiasing included), so features match the authors' pipeline pixel for pixel.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    resize: int | None = Field(None, ge=1, description="shorter side after Resize (None: none)")
    interpolation: Interpolation = "bicubic"
    crop: int | None = Field(None, ge=1, description="CenterCrop side (None: no crop)")
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def input_size(self) -> int | None:
        """The side the network sees (the crop, else the resize), None if neither is set."""
        return self.crop or self.resize


class Weights(BaseModel):
    """Where the weights come from and how they are laid out."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hub: list[str] = Field(default_factory=list, description="Hugging Face repo ids, first wins")
    files: list[str] = Field(min_length=1, description="file names as the hub ships them")
    format: Literal["state-dict", "transformers", "open_clip"] = "state-dict"
    layout: str = Field(description="key layout, e.g. 'timm VisionTransformer, no prefix'")
    url: str | None = Field(None, description="where to get them (model card, release page)")


class EncoderRecipe(BaseModel):
    """One published patch encoder, as data (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9.\-]*$")
    title: str
    description: str = ""
    dim: int = Field(ge=1)
    builder: str = Field(description="registered builder family, e.g. 'timm', 'transformers'")
    architecture: str = Field(description="the defining library's model name or class")
    arch_kwargs: dict[str, Any] = Field(default_factory=dict)
    embedding: Embedding
    preprocess: Preprocess
    magnification: float = Field(gt=0, description="objective magnification trained at (×)")
    mpp: float | None = Field(None, gt=0, description="µm per pixel trained at (default 10/mag)")
    tile_size: int | None = Field(
        None, ge=1, description="tile side (px at ``mpp``) the authors feed to ``preprocess``; "
        "with the resize it fixes the µm per pixel the network sees (None: not published)"
    )
    licence: str
    weights: Weights
    sources: dict[str, str] = Field(min_length=1, description="fact → where it is published")
    parity: str = Field("", description="what checks this recipe against the published model")
    extra: str | None = Field("models", description="pip extra the builder needs")

    @model_validator(mode="after")
    def _default_mpp(self) -> EncoderRecipe:
        if self.mpp is None:
            object.__setattr__(self, "mpp", round(10.0 / self.magnification, 4))
        return self


def load_recipe(path: str | Path) -> EncoderRecipe:
    """Read and validate one recipe file; :class:`RecipeError` naming the file otherwise."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        recipe = EncoderRecipe.model_validate(data)
    except (OSError, yaml.YAMLError, ValidationError) as exc:
        raise RecipeError(f"encoder recipe {path.name}: {exc}") from exc
    if recipe.name != path.stem:
        raise RecipeError(f"encoder recipe {path.name}: its name is {recipe.name!r}, "
                          f"not the file's stem {path.stem!r}")
    return recipe


@functools.cache
def list_recipes() -> dict[str, EncoderRecipe]:
    """Every recipe shipped with fivewsi, by name (read once)."""
    return {r.name: r for r in map(load_recipe, sorted(RECIPE_FOLDER.glob("*.yaml")))}


Builder = Callable[..., "PatchEncoder"]
_BUILDERS: dict[str, Builder] = {}


def register_builder(family: str) -> Callable[[Builder], Builder]:
    """Register ``builder(recipe, weights=None, **kwargs) -> PatchEncoder`` for ``family``."""

    def wrap(builder: Builder) -> Builder:
        _BUILDERS[family] = builder
        return builder

    return wrap


def get_builder(family: str) -> Builder:
    """The builder registered for ``family`` (modules of the encoders package are imported)."""
    from fivewsi.features.registry import list_encoders

    list_encoders()  # imports every encoder module, which registers the builders
    try:
        return _BUILDERS[family]
    except KeyError:
        raise RecipeError(f"no encoder builder {family!r}; known: {sorted(_BUILDERS)}") from None
