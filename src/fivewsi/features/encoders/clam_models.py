"""CLAM's baseline encoder ``resnet50-trunc``: ImageNet ResNet-50 cut after ``layer3``.

Builder ``clam-resnet``: a timm ``resnet50`` (the same key names as torchvision's ``resnet50``)
whose ``layer4`` is removed, followed by global average pooling → 1024-d. It takes torchvision's
IMAGENET1K_V1 state dict (``resnet50-0676ba61.pth``) or timm's ``resnet50.tv_in1k`` (the same
weights as ``model.safetensors`` / ``pytorch_model.bin``); ``layer4.*`` and ``fc.*`` are unused.

Example:
    >>> from fivewsi.features.registry import list_encoders
    >>> list_encoders()["resnet50-trunc"].dim
    1024
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from fivewsi.features.encoders.common import (
    TorchImageEncoder,
    load_state_dict_file,
    load_strict,
    recipe_encoder,
)
from fivewsi.features.recipe import EncoderRecipe, register_builder


def build_resnet50_trunc(
    recipe: EncoderRecipe, arch_overrides: dict[str, Any] | None = None
) -> nn.Module:
    """Randomly initialised ResNet whose ``layer4`` is an identity (pooled layer3 output)."""
    from fivewsi.features.encoders.timm_models import _create_timm

    kwargs = {**recipe.arch_kwargs, **(arch_overrides or {})}
    model = _create_timm(recipe.architecture, num_classes=0, **kwargs)
    # Identity keeps timm's forward (stem → layers → pool → flatten) while stopping at layer3.
    model.layer4 = nn.Identity()
    model.num_features = next(f["num_chs"] for f in model.feature_info if f["module"] == "layer3")
    return model


@register_builder("clam-resnet")
def build_resnet50_trunc_encoder(
    recipe: EncoderRecipe,
    weights: Path | None = None,
    *,
    arch_overrides: dict[str, Any] | None = None,
    amp: bool = True,
) -> TorchImageEncoder:
    """``resnet50-trunc`` from a torchvision or timm ResNet-50 state dict (strict up to layer3)."""
    from fivewsi.features.encoders.timm_models import recipe_weights

    model = build_resnet50_trunc(recipe, arch_overrides)
    path, source = recipe_weights(recipe, weights)
    load_strict(
        model, load_state_dict_file(path), ignore_unexpected=[r"layer4\.", r"fc\."],
        what=f"weights {path.name}",
    )
    return recipe_encoder(model, recipe, dim=model.num_features, source=source, amp=amp)
