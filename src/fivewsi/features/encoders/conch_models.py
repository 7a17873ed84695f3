"""CONCH v1 and v1.5 image towers (MahmoodLab), built from their recipes (builder ``conch``).

CONCH's own model code is not on PyPI; both towers are rebuilt here from a timm
``VisionTransformer`` trunk plus the authors' attentional pooler, with parameter names equal to
the released checkpoints' keys so that they load strictly:

- **v1** (``conch``): MahmoodLab/CONCH ``pytorch_model.bin``, the whole CoCa model. The image tower
  is ``visual.*``: a timm ViT-B/16 trunk built at 448 px (``visual.trunk.*``), the contrastive
  attentional pooler (``visual.attn_pool_contrast.*``: one query, ``torch.nn.MultiheadAttention``
  with key/value width 768 → separate ``q/k/v_proj_weight``), ``visual.ln_contrast`` and the
  contrastive projection ``visual.proj_contrast`` (512×512). The text tower (``text.*``), the
  captioning decoder (``text_decoder.*``), the caption pooler (``visual.attn_pool_caption.*``,
  ``visual.ln_caption.*``) and ``logit_scale`` are not used.
- **v1.5** (``conch-v1.5``): MahmoodLab/conchv1_5 ``pytorch_model_vision.bin``, the image tower
  alone: a ViT-L/16 trunk with LayerScale built at 224 px (``trunk.*``), whose position
  embeddings are interpolated DINO-style (bicubic, scale factor ``(n + 0.1) / n0``) to the 448 px
  input, then an attentional pooler with bias-free ``to_q``/``to_kv``/``to_out`` projections
  (``attn_pool_contrast.*``) and ``ln_contrast`` → 768.

The embedding is the pooled, layer-normed vector *before* v1's contrastive projection, not
L2-normalised: what CONCH's README, CLAM and TRIDENT extract
(``encode_image(x, proj_contrast=False, normalize=False)``); ``project=True`` applies v1's
projection (the space shared with CONCH's text tower).

Example:
    >>> from fivewsi.features.registry import list_encoders
    >>> list_encoders()["conch"].dim, list_encoders()["conch-v1.5"].dim
    (512, 768)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fivewsi.features.encoders.common import (
    TorchImageEncoder,
    load_state_dict_file,
    load_strict,
    recipe_encoder,
)
from fivewsi.features.recipe import EncoderRecipe, register_builder

#: Keys of CONCH v1's image tower (``visual.`` removed) that the contrastive embedding does not
#: use (regexes); the rest of the checkpoint (``text.``, ``text_decoder.``, ``logit_scale``) is
#: outside ``visual.`` and never read.
CONCH_V1_UNUSED = (r"attn_pool_caption\.", r"ln_caption\.", r"trunk\.head\.")


class AttentionalPooler(nn.Module):
    """CONCH v1's attentional pooler: learned queries cross-attending to the trunk's tokens.

    ``torch.nn.MultiheadAttention`` whose key/value width is the trunk's; parameter names
    (``query``, ``attn``, ``ln_q``, ``ln_k``) follow the checkpoint.

    Example:
        >>> pool = AttentionalPooler(dim=8, context_dim=12, heads=2, queries=1)
        >>> pool(torch.zeros(3, 5, 12)).shape
        torch.Size([3, 1, 8])
    """

    def __init__(self, dim: int, context_dim: int, heads: int = 8, queries: int = 1) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(queries, dim))
        self.attn = nn.MultiheadAttention(
            dim, heads, kdim=context_dim, vdim=context_dim, batch_first=True
        )
        self.ln_q = nn.LayerNorm(dim)
        self.ln_k = nn.LayerNorm(context_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        context = self.ln_k(tokens)
        query = self.ln_q(self.query).unsqueeze(0).expand(tokens.shape[0], -1, -1)
        return self.attn(query, context, context, need_weights=False)[0]


class LinearAttentionalPooler(nn.Module):
    """CONCH v1.5's attentional pooler: bias-free ``to_q``/``to_kv``/``to_out`` projections.

    Example:
        >>> pool = LinearAttentionalPooler(dim=8, context_dim=12, heads=2, queries=1)
        >>> pool(torch.zeros(3, 5, 12)).shape
        torch.Size([3, 1, 8])
    """

    def __init__(self, dim: int, context_dim: int, heads: int = 8, queries: int = 1) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"pooler width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.query = nn.Parameter(torch.randn(queries, dim))
        self.ln_k = nn.LayerNorm(context_dim)
        self.ln_q = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(context_dim, dim * 2, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, heads = tokens.shape[0], self.heads
        q = self.to_q(self.ln_q(self.query)).expand(batch, -1, -1)
        k, v = self.to_kv(self.ln_k(tokens)).chunk(2, dim=-1)
        q, k, v = (t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in (q, k, v))
        attn = (q * self.scale) @ k.transpose(-1, -2)
        out = attn.softmax(dim=-1) @ v  # [B, heads, queries, head_dim]
        return self.to_out(out.transpose(1, 2).flatten(2))


class ConchVision(nn.Module):
    """A CONCH image tower: timm ViT trunk → attentional pooler → LayerNorm (→ projection).

    ``pooler="mha"`` is v1 (trunk's own position embeddings at its build size);
    ``pooler="linear"`` is v1.5, whose trunk is built at 224 px and sees 448 px inputs through
    DINO-style bicubic interpolation of its position embeddings (:func:`dino_pos_embed`).
    """

    def __init__(
        self,
        trunk: nn.Module,
        dim: int,
        heads: int = 8,
        pooler: str = "mha",
        project: bool = False,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.trunk = trunk
        self.pooler = pooler
        pool_class = {"mha": AttentionalPooler, "linear": LinearAttentionalPooler}[pooler]
        self.attn_pool_contrast = pool_class(dim, trunk.num_features, heads, queries=1)
        self.ln_contrast = nn.LayerNorm(dim)
        self.proj_contrast = nn.Parameter(torch.zeros(dim, dim)) if project else None

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The trunk's tokens after its final norm, ``[B, 1 + N, C]``."""
        if self.pooler == "mha":
            return self.trunk.forward_features(x)
        trunk = self.trunk
        patches = trunk.patch_embed.proj(x).flatten(2).transpose(1, 2)
        cls = trunk.cls_token.expand(x.shape[0], -1, -1)
        grid = (x.shape[-2] // trunk.patch_embed.patch_size[0],
                x.shape[-1] // trunk.patch_embed.patch_size[1])
        tokens = torch.cat([cls, patches], dim=1) + dino_pos_embed(trunk.pos_embed, grid)
        return trunk.norm(trunk.blocks(trunk.norm_pre(tokens)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.ln_contrast(self.attn_pool_contrast(self.tokens(x))[:, 0])
        return pooled @ self.proj_contrast if self.proj_contrast is not None else pooled


def dino_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Position embeddings (class token first) resampled to ``grid`` the way DINO/iBOT do.

    Bicubic ``F.interpolate`` with scale factor ``(g + 0.1) / g0`` (not a target size): the
    CONCH v1.5 tower's own interpolation, kept as published since it differs slightly from
    timm's resampling. Unchanged when the grid already matches.

    Example:
        >>> dino_pos_embed(torch.zeros(1, 1 + 4, 3), (4, 4)).shape
        torch.Size([1, 17, 3])
    """
    count = pos_embed.shape[1] - 1
    side = math.isqrt(count)
    if (side, side) == grid:
        return pos_embed
    patch_pos = pos_embed[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    patch_pos = F.interpolate(
        patch_pos,
        scale_factor=((grid[0] + 0.1) / side, (grid[1] + 0.1) / side),
        mode="bicubic",
    )
    if tuple(patch_pos.shape[-2:]) != grid:
        raise ValueError(f"position embeddings of {side}² did not resample to {grid}")
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, -1, pos_embed.shape[-1])
    return torch.cat([pos_embed[:, :1], patch_pos], dim=1)


def build_conch_tower(recipe: EncoderRecipe, arch_overrides: dict[str, Any] | None = None,
                      project: bool = False) -> ConchVision:
    """Randomly initialised image tower of a CONCH recipe.

    The recipe's ``arch_kwargs`` hold ``pooler`` (``mha`` | ``linear``), ``pool_dim``,
    ``pool_heads`` and the timm ``trunk_kwargs``; ``arch_overrides`` may override any of them
    (the timm keys directly, e.g. ``depth``), which lets tests build small stand-ins.
    """
    from fivewsi.features.encoders.timm_models import _create_timm

    kwargs = dict(recipe.arch_kwargs)
    overrides = dict(arch_overrides or {})
    pooler = overrides.pop("pooler", kwargs.pop("pooler"))
    dim = overrides.pop("pool_dim", kwargs.pop("pool_dim"))
    heads = overrides.pop("pool_heads", kwargs.pop("pool_heads"))
    trunk_kwargs = {**kwargs.pop("trunk_kwargs", {}), **overrides}
    if kwargs:
        raise ValueError(f"recipe {recipe.name}: unknown arch_kwargs {sorted(kwargs)}")
    # No random initialisation: every trunk tensor is then loaded strictly from the checkpoint.
    trunk = _create_timm(recipe.architecture, num_classes=0, global_pool="", weight_init="skip",
                         **trunk_kwargs)
    if project and pooler != "mha":
        raise ValueError(f"{recipe.name} has no contrastive projection (only CONCH v1 has one)")
    return ConchVision(trunk, dim=dim, heads=heads, pooler=pooler, project=project)


def _vision_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The image tower of a full CoCa checkpoint (``visual.*``, prefix removed)."""
    if any(k.startswith("visual.") for k in state):
        return {k.removeprefix("visual."): v for k, v in state.items()
                if k.startswith("visual.")}
    return dict(state)  # already a vision-only state dict


def _fit_trunk_pos_embed(model: ConchVision, state: dict[str, torch.Tensor]) -> None:
    """v1.5: resample a checkpoint's position embeddings to the trunk's build grid, as the
    published loader does (timm ``resample_abs_pos_embed``, bilinear, no antialiasing)."""
    own = model.trunk.pos_embed
    ckpt = state.get("trunk.pos_embed")
    if ckpt is None or ckpt.shape == own.shape or ckpt.shape[-1] != own.shape[-1]:
        return  # equal, or a mismatch that load_strict reports
    from timm.layers import resample_abs_pos_embed

    state["trunk.pos_embed"] = resample_abs_pos_embed(
        ckpt, new_size=list(model.trunk.patch_embed.grid_size), num_prefix_tokens=1,
        interpolation="bilinear", antialias=False, verbose=False,
    )


@register_builder("conch")
def build_conch_encoder(
    recipe: EncoderRecipe,
    weights: Path | None = None,
    *,
    arch_overrides: dict[str, Any] | None = None,
    project: bool = False,
    amp: bool = True,
) -> TorchImageEncoder:
    """A CONCH recipe's encoder from its released checkpoint (file, folder or HF cache).

    Loading is strict: every image-tower tensor must be present with its released shape; only
    :data:`CONCH_V1_UNUSED` keys of v1 (and, without ``project``, ``proj_contrast``) are
    skipped, besides everything outside v1's ``visual.`` (text tower, decoder, logit scale).
    """
    from fivewsi.features.encoders.timm_models import recipe_weights

    model = build_conch_tower(recipe, arch_overrides, project=project)
    path, source = recipe_weights(recipe, weights)
    state = _vision_state(load_state_dict_file(path))
    unused = list(CONCH_V1_UNUSED) if model.pooler == "mha" else []
    unused += [] if project else [r"proj_contrast$"]
    if model.pooler == "linear":
        _fit_trunk_pos_embed(model, state)
    load_strict(model, state, ignore_unexpected=unused, what=f"{recipe.title} weights {path.name}")
    return recipe_encoder(model, recipe, dim=model.dim, source=source, amp=amp, input_size=448)
