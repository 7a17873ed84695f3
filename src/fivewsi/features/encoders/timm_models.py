"""timm-based patch encoders: ``timm:<model>``, the ``timm`` recipe builder (UNI, UNI2-h,
Virchow, Virchow2, H-optimus-0/1, Prov-GigaPath) and the timm helpers other families share.

CLAM's ResNet-50, CTransPath and CONCH are recipes built by :mod:`.clam_models`,
:mod:`.ctranspath_models` and :mod:`.conch_models` with the helpers below.

timm is imported inside the factories (it needs a torchvision matching torch), so importing this
module only registers names. Weights never come from the network: ``--weights PATH`` (a state
dict file or a folder holding ``model.safetensors`` / ``pytorch_model.bin``) or, failing that,
files already in the local Hugging Face cache. Loading is strict; only keys documented as unused
(classifier heads...) are skipped.

Every factory takes ``arch_overrides`` (extra ``timm.create_model`` keyword arguments such as
``depth``/``embed_dim``/``num_heads``), which lets tests build small stand-ins of the same family.

Example:
    >>> from fivewsi.features.registry import list_encoders
    >>> list_encoders()["uni"].dim
    1024
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fivewsi.errors import FeatureStageError
from fivewsi.features.encoders.common import (
    TorchImageEncoder,
    WeightsMismatchError,
    cached_hf_file,
    find_weights_file,
    import_timm,
    load_state_dict_file,
    load_strict,
    recipe_encoder,
)
from fivewsi.features.recipe import EncoderRecipe, list_recipes, register_builder
from fivewsi.features.registry import register_encoder

logger = logging.getLogger(__name__)

_HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_WEIGHTS_HELP = (
    "pass --weights PATH (a .safetensors/.pth/.bin state dict, or a folder holding "
    "model.safetensors or pytorch_model.bin)"
)


class MissingWeightsError(FeatureStageError, FileNotFoundError):
    """No local weights for an encoder that needs them (nothing is ever downloaded)."""


# ---------------------------------------------------------------------------------------------
# Shared helpers


def _resolve_weights(
    encoder: str,
    weights: Path | None,
    hub_ids: Sequence[str] = (),
    files: Sequence[str] = _HUB_WEIGHT_FILES,
) -> tuple[Path, str]:
    """The weights file to load and a provenance string, from ``weights`` or the HF cache."""
    if weights is not None:
        path = find_weights_file(weights, files)
        return path, str(path)
    hit = cached_hf_file(hub_ids, files) if hub_ids else None
    if hit is not None:
        return hit, f"hf-cache:{hub_ids[0]}"
    where = (
        f" or download {hub_ids[0]} into the Hugging Face cache beforehand "
        f"(`hf download {hub_ids[0]}`; gated models need an accepted licence and a token)"
        if hub_ids
        else " (this model has no Hugging Face weights known to timm)"
    )
    raise MissingWeightsError(f"no weights for encoder {encoder!r}: {_WEIGHTS_HELP}{where}")


def recipe_weights(recipe: EncoderRecipe, weights: Path | None) -> tuple[Path, str]:
    """A recipe's weights file and provenance: ``weights`` (file, or folder holding one of the
    recipe's files as the hub ships them), else the offline HF cache of its hub ids."""
    return _resolve_weights(recipe.name, weights, recipe.weights.hub, tuple(recipe.weights.files))


def _create_timm(name: str, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, pretrained=False, ...)`` with a readable error for bad names."""
    timm = import_timm()
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise ValueError(
                f"timm has no model {name!r}; `timm.list_models('*pattern*')` lists them"
            ) from exc
        raise


def _classifier_patterns(model: nn.Module) -> list[str]:
    """Regexes for the classifier keys a pooled-feature (``num_classes=0``) model drops."""
    classifier = getattr(model, "pretrained_cfg", {}).get("classifier") or ("head", "fc")
    names = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    return [re.escape(n) + r"\." for n in names]


def _load_timm_weights(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    what: str,
    ignore: Sequence[str] = (),
    convert: bool = False,
) -> None:
    """Strict load, classifier keys ignored.

    With ``convert``, a mismatch is retried through timm's ``checkpoint_filter_fn`` for the
    model, which converts original (non-timm) layouts such as official ViT or Swin checkpoints.
    Named encoders do not convert: their checkpoints are known, and the filters would also
    silently resample resized position embeddings.
    """
    ignore = [*_classifier_patterns(model), *ignore]
    try:
        load_strict(model, state, ignore_unexpected=ignore, what=what)
        return
    except WeightsMismatchError as first_error:
        filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
        if not convert or filter_fn is None:
            raise
        try:
            converted = filter_fn(dict(state), model)
            load_strict(model, converted, ignore_unexpected=ignore, what=what)
        except Exception:
            raise first_error from None
        logger.info(
            "%s: converted with timm's checkpoint filter for %s", what, type(model).__name__
        )


def _data_config(model: nn.Module) -> tuple[tuple[int, int], Sequence[float], Sequence[float]]:
    """Input size and mean/std from the model's pretrained config (timm's eval data config)."""
    config = import_timm().data.resolve_model_data_config(model)
    _, height, width = config["input_size"]
    return (height, width), config["mean"], config["std"]


# ---------------------------------------------------------------------------------------------
# timm:<model>


def _hub_timm_config(repo_id: str, weights: Path | None) -> dict[str, Any]:
    """The timm ``config.json`` of ``hf-hub:<repo>``: next to ``--weights`` or in the HF cache."""
    candidates = [weights / "config.json"] if weights is not None and weights.is_dir() else []
    cached = cached_hf_file(repo_id, ["config.json"])
    candidates += [cached] if cached else []
    for file in candidates:
        if file.is_file():
            config = json.loads(file.read_text())
            if "architecture" not in config:
                raise ValueError(f"{file} is not a timm model config (no 'architecture' key)")
            return config
    raise MissingWeightsError(
        f"no timm config.json for hf-hub:{repo_id}: pass --weights DIR holding config.json and "
        f"the weights, or download {repo_id} into the Hugging Face cache beforehand"
    )


@register_encoder(
    "timm:",
    dim=None,
    description=(
        "any timm model, pooled features (num_classes=0): timm:<model>[.<tag>] or "
        "timm:hf-hub:<org>/<repo>; weights from --weights or the HF cache"
    ),
    needs_weights=True,
    extra="models",
)
def timm_encoder(
    weights: Path | None = None,
    *,
    model_name: str,
    arch_overrides: dict[str, Any] | None = None,
    amp: bool = True,
) -> TorchImageEncoder:
    """Any timm model as a pooled-feature encoder; preprocessing from its pretrained config.

    Example:
        >>> from fivewsi.features.registry import create_encoder
        >>> enc = create_encoder("timm:resnet18", weights="r18.safetensors")  # doctest: +SKIP
    """
    if not model_name:
        raise ValueError("name the timm model: timm:<model>, e.g. timm:resnet50.tv_in1k")
    overrides = dict(arch_overrides or {})
    if model_name.startswith("hf-hub:"):
        repo_id = model_name.removeprefix("hf-hub:")
        config = _hub_timm_config(repo_id, weights)
        kwargs = {**config.get("model_args", {}), **overrides}
        if "pretrained_cfg" in config:
            kwargs["pretrained_cfg"] = {**config["pretrained_cfg"], "hf_hub_id": repo_id}
        model = _create_timm(config["architecture"], num_classes=0, **kwargs)
        hub_ids: list[str] = [repo_id]
    else:
        model = _create_timm(model_name, num_classes=0, **overrides)
        hub_id = model.pretrained_cfg.get("hf_hub_id")
        hub_ids = [hub_id] if hub_id else []
    path, source = _resolve_weights(f"timm:{model_name}", weights, hub_ids)
    state = load_state_dict_file(path)
    _load_timm_weights(model, state, what=f"weights {path.name}", convert=True)
    input_size, mean, std = _data_config(model)
    return TorchImageEncoder(
        model,
        name=f"timm:{model_name}",
        dim=model.num_features,
        input_size=input_size,
        mean=mean,
        std=std,
        amp=amp,
        source=source,
    )


# ---------------------------------------------------------------------------------------------
# Recipes built with timm (UNI, UNI2-h, Virchow, Virchow2, H-optimus-0/1, Prov-GigaPath...)

#: Modules whose classes a recipe may name as ``arch_kwargs`` values (e.g.
#: ``mlp_layer: timm.layers.SwiGLUPacked``, ``act_layer: torch.nn.SiLU``): YAML holds no Python
#: objects, and nothing outside these modules is ever imported from a recipe.
_ARCH_OBJECT_MODULES = ("timm.layers", "torch.nn")


def _arch_value(value: Any) -> Any:
    """A recipe's ``arch_kwargs`` value, with ``timm.layers.X`` / ``torch.nn.X`` made classes."""
    if isinstance(value, str):
        module, _, attr = value.rpartition(".")
        if module in _ARCH_OBJECT_MODULES:
            import importlib

            if module.startswith("timm"):
                import_timm()
            try:
                return getattr(importlib.import_module(module), attr)
            except AttributeError:
                raise ValueError(f"{module} has no {attr!r} (recipe arch_kwargs)") from None
    return value


class TokenEmbedding(nn.Module):
    """A timm ViT whose embedding is chosen from its final-norm tokens by a recipe's rule.

    ``cls``: the class token; ``cls+mean-patches``: the class token concatenated with the mean
    of the patch tokens (``tokens[num_prefix_tokens:]``, so register tokens are left out);
    ``mean-patches``: that mean alone; ``pooled``: the model's own forward (``num_classes=0``).
    ``state_dict`` keys are the timm model's (``vit.`` is not a prefix of the checkpoint: load
    into :attr:`vit`).

    Example:
        >>> class Toy(nn.Module):
        ...     num_prefix_tokens = 2
        ...     def forward_features(self, x):
        ...         return x
        >>> tokens = torch.arange(8.0).view(1, 4, 2)  # class, register, two patches
        >>> TokenEmbedding(Toy(), "cls+mean-patches")(tokens)
        tensor([[0., 1., 5., 6.]])
    """

    def __init__(self, vit: nn.Module, rule: str) -> None:
        super().__init__()
        if rule not in ("cls", "pooled", "cls+mean-patches", "mean-patches"):
            raise ValueError(f"unknown embedding rule {rule!r}")
        self.vit = vit
        self.rule = rule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rule == "pooled":
            return self.vit(x)
        tokens = self.vit.forward_features(x)  # [B, prefix + N, C], after the final norm
        patches = tokens[:, self.vit.num_prefix_tokens :]
        if self.rule == "mean-patches":
            return patches.mean(dim=1)
        if self.rule == "cls":
            return tokens[:, 0]
        return torch.cat([tokens[:, 0], patches.mean(dim=1)], dim=-1)


def build_timm_recipe(
    recipe: EncoderRecipe, arch_overrides: dict[str, Any] | None = None
) -> nn.Module:
    """Randomly initialised timm model of ``recipe``: ``timm.create_model(architecture,
    pretrained=False, num_classes=0, **arch_kwargs, **arch_overrides)``."""
    kwargs = {key: _arch_value(value) for key, value in recipe.arch_kwargs.items()}
    kwargs.update({key: _arch_value(value) for key, value in (arch_overrides or {}).items()})
    kwargs.pop("num_classes", None)
    return _create_timm(recipe.architecture, num_classes=0, **kwargs)


@register_builder("timm")
def timm_recipe_encoder(
    recipe: EncoderRecipe,
    weights: Path | None = None,
    *,
    arch_overrides: dict[str, Any] | None = None,
    amp: bool = True,
) -> TorchImageEncoder:
    """A recipe's timm model, weights loaded strictly, embedding per ``recipe.embedding``.

    Weights: ``weights`` (a file, or a folder holding one of ``recipe.weights.files``), else the
    offline Hugging Face cache of ``recipe.weights.hub``. Pixels go through the recipe's
    published transform (:class:`~fivewsi.features.recipe.Preprocess`).
    """
    import_timm()  # the missing extra is said first: weights alone would not make it run
    path, source = recipe_weights(recipe, weights)
    vit = build_timm_recipe(recipe, arch_overrides)
    _load_timm_weights(vit, load_state_dict_file(path), what=f"{recipe.title} weights {path.name}")
    width = vit.num_features
    dim = 2 * width if recipe.embedding == "cls+mean-patches" else width
    if not arch_overrides and dim != recipe.dim:
        raise ValueError(
            f"recipe {recipe.name}: the model gives {dim}-d features, not {recipe.dim}"
        )
    return recipe_encoder(TokenEmbedding(vit, recipe.embedding), recipe, dim=dim, source=source,
                          amp=amp)


def build_uni(arch_overrides: dict[str, Any] | None = None) -> nn.Module:
    """Randomly initialised UNI architecture (the ``uni`` recipe: timm ViT-L/16, LayerScale)."""
    return build_timm_recipe(list_recipes()["uni"], arch_overrides)
