"""CTransPath (Wang et al. 2022): Swin-T with a convolutional stem, built from its recipe.

Builder ``ctranspath``: timm's ``swin_tiny_patch4_window7_224`` whose patch embedding is
:class:`ConvStem`. The released ``ctranspath.pth`` (Xiyue-Wang/TransPath; also MahmoodLab's
hest-bench ``CHIEF_CTransPath.pth``) is ``{"model": state_dict}`` in timm 0.5's Swin layout:
each stage's patch merging sits at the end of the stage (``layers.0.downsample``), relative
position indices and attention masks are stored, and there is no classifier head.
:func:`ctranspath_to_timm` maps it onto current timm, then the load is strict.

Example:
    >>> from fivewsi.features.registry import list_encoders
    >>> list_encoders()["ctranspath"].dim
    768
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fivewsi.features.encoders.common import (
    TorchImageEncoder,
    load_state_dict_file,
    load_strict,
    recipe_encoder,
)
from fivewsi.features.recipe import EncoderRecipe, register_builder


class ConvStem(nn.Module):
    """CTransPath's patch embedding: two stride-2 3×3 conv/BN/ReLU stages and a 1×1 projection.

    Replaces Swin's 4×4 patchify convolution. The layer indices inside ``proj`` (0, 1, 3, 4, 6)
    follow the released checkpoint's key names. Outputs NHWC, as timm's Swin expects.

    Example:
        >>> stem = ConvStem(img_size=32, patch_size=4, embed_dim=16)
        >>> stem(torch.zeros(1, 3, 32, 32)).shape
        torch.Size([1, 8, 8, 16])
    """

    def __init__(
        self,
        img_size: int | Sequence[int] = 224,
        patch_size: int | Sequence[int] = 4,
        in_chans: int = 3,
        embed_dim: int = 96,
        norm_layer: Callable[[int], nn.Module] | None = None,
        **_: Any,  # timm passes strict_img_size, output_fmt, device, dtype: not needed here
    ) -> None:
        super().__init__()
        if _pair(patch_size) != (4, 4) or embed_dim % 8:
            raise ValueError("ConvStem needs patch_size 4 and embed_dim divisible by 8")
        self.patch_size = (4, 4)
        self.set_input_size(img_size)
        width = embed_dim // 8
        layers: list[nn.Module] = []
        for in_ch, out_ch in ((in_chans, width), (width, width * 2)):
            layers += [
                nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(out_ch),
                nn.ReLU(inplace=True),
            ]
        layers.append(nn.Conv2d(width * 2, embed_dim, kernel_size=1))
        self.proj = nn.Sequential(*layers)
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def set_input_size(self, img_size: int | Sequence[int] | None = None, **_: Any) -> None:
        """Record the input size and token grid (timm's Swin reads ``grid_size``)."""
        if img_size is not None:
            self.img_size = _pair(img_size)
            self.grid_size = (self.img_size[0] // 4, self.img_size[1] // 4)
            self.num_patches = self.grid_size[0] * self.grid_size[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def ctranspath_to_timm(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map TransPath's (timm 0.5) Swin layout onto current timm.

    Old Swin put each stage's downsampling at its end (``layers.0.downsample``), current timm at
    the start of the next stage (``layers.1.downsample``); ``relative_position_index`` and
    ``attn_mask`` are rebuilt buffers, not weights.

    Example:
        >>> sorted(ctranspath_to_timm({"layers.0.downsample.reduction.weight": torch.zeros(1),
        ...                            "layers.0.blocks.1.attn_mask": torch.zeros(1)}))
        ['layers.1.downsample.reduction.weight']
    """
    old_layout = any(re.match(r"layers\.0\.downsample\.", k) for k in state)
    out = {}
    for key, value in state.items():
        if key.endswith(("relative_position_index", "attn_mask")):
            continue
        if old_layout:
            key = re.sub(r"^layers\.(\d+)\.downsample", _next_stage, key)
        out[key] = value
    return out


def _next_stage(match: re.Match[str]) -> str:
    return f"layers.{int(match.group(1)) + 1}.downsample"


def build_ctranspath(
    recipe: EncoderRecipe, arch_overrides: dict[str, Any] | None = None
) -> nn.Module:
    """Randomly initialised CTransPath architecture (timm Swin-T + :class:`ConvStem`)."""
    from fivewsi.features.encoders.timm_models import _create_timm

    kwargs = {**recipe.arch_kwargs, "embed_layer": ConvStem, **(arch_overrides or {})}
    return _create_timm(recipe.architecture, num_classes=0, **kwargs)


@register_builder("ctranspath")
def build_ctranspath_encoder(
    recipe: EncoderRecipe,
    weights: Path | None = None,
    *,
    arch_overrides: dict[str, Any] | None = None,
    amp: bool = True,
) -> TorchImageEncoder:
    """CTransPath from ``ctranspath.pth`` (file or folder); a fine-tuned ``head.*`` is skipped."""
    from fivewsi.features.encoders.timm_models import recipe_weights

    model = build_ctranspath(recipe, arch_overrides)
    path, source = recipe_weights(recipe, weights)
    state = ctranspath_to_timm(load_state_dict_file(path))
    load_strict(model, state, ignore_unexpected=[r"head\."], what=f"CTransPath weights {path.name}")
    return recipe_encoder(model, recipe, dim=model.num_features, source=source, amp=amp)
