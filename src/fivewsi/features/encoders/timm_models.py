"""timm-based patch encoders: ``timm:<model>``, CLAM's ResNet-50, CTransPath, CONCH, and the
``timm`` recipe builder (UNI, UNI2-h, Virchow, Virchow2, H-optimus-0/1, Prov-GigaPath).

timm is imported inside the factories (it needs a torchvision matching torch), so importing this
module only registers names. Weights never come from the network: ``--weights PATH`` (a state
dict file or a folder holding ``model.safetensors`` / ``pytorch_model.bin``) or, failing that,
files already in the local Hugging Face cache. Loading is strict; only keys documented as unused
(classifier heads, CONCH's text tower...) are skipped.

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
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fivewsi.errors import FeatureStageError
from fivewsi.features.encoders.common import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    TorchImageEncoder,
    WeightsMismatchError,
    cached_hf_file,
    find_weights_file,
    import_timm,
    load_state_dict_file,
    load_strict,
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
# resnet50-trunc (CLAM)


def build_resnet50_trunc(arch_overrides: dict[str, Any] | None = None) -> nn.Module:
    """Randomly initialised timm ResNet-50 whose ``layer4`` is removed (pooled layer3 output)."""
    model = _create_timm("resnet50.tv_in1k", num_classes=0, **(arch_overrides or {}))
    # Identity keeps timm's forward (stem → layers → pool → flatten) while stopping at layer3.
    model.layer4 = nn.Identity()
    model.num_features = next(f["num_chs"] for f in model.feature_info if f["module"] == "layer3")
    return model


@register_encoder(
    "resnet50-trunc",
    dim=1024,
    description=(
        "ResNet-50 (ImageNet, torchvision weights) cut after layer3 + average pooling, as in "
        "CLAM; 224 px"
    ),
    needs_weights=True,
    extra="models",
)
def resnet50_trunc_encoder(
    weights: Path | None = None,
    *,
    arch_overrides: dict[str, Any] | None = None,
    amp: bool = True,
) -> TorchImageEncoder:
    """CLAM's baseline encoder: ResNet-50 up to ``layer3`` then global average pooling → 1024-d.

    Takes torchvision's ``resnet50`` state dict (IMAGENET1K_V1) or ``timm/resnet50.tv_in1k``;
    their ``layer4``/``fc`` tensors are unused.
    """
    model = build_resnet50_trunc(arch_overrides)
    dim = model.num_features
    path, source = _resolve_weights("resnet50-trunc", weights, ["timm/resnet50.tv_in1k"])
    _load_timm_weights(
        model, load_state_dict_file(path), what=f"weights {path.name}", ignore=[r"layer4\."]
    )
    return TorchImageEncoder(
        model, name="resnet50-trunc", dim=dim, input_size=224, amp=amp, source=source
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
    path, source = _resolve_weights(recipe.name, weights, recipe.weights.hub, recipe.weights.files)
    vit = build_timm_recipe(recipe, arch_overrides)
    _load_timm_weights(vit, load_state_dict_file(path), what=f"{recipe.title} weights {path.name}")
    width = vit.num_features
    dim = 2 * width if recipe.embedding == "cls+mean-patches" else width
    if not arch_overrides and dim != recipe.dim:
        raise ValueError(
            f"recipe {recipe.name}: the model gives {dim}-d features, not {recipe.dim}"
        )
    return TorchImageEncoder(
        TokenEmbedding(vit, recipe.embedding),
        name=recipe.name,
        dim=dim,
        input_size=recipe.preprocess.input_size or 224,
        transform=recipe.preprocess,
        amp=amp,
        source=source,
    )


def build_uni(arch_overrides: dict[str, Any] | None = None) -> nn.Module:
    """Randomly initialised UNI architecture (the ``uni`` recipe: timm ViT-L/16, LayerScale)."""
    return build_timm_recipe(list_recipes()["uni"], arch_overrides)


# ---------------------------------------------------------------------------------------------
# CTransPath


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


def _ctranspath_to_timm(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map TransPath's (timm 0.5) Swin layout onto current timm.

    Old Swin put each stage's downsampling at its end (``layers.0.downsample``), current timm at
    the start of the next stage (``layers.1.downsample``); ``relative_position_index`` and
    ``attn_mask`` are rebuilt buffers, not weights.
    """
    old_layout = "layers.0.downsample.reduction.weight" in state
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


def build_ctranspath(arch_overrides: dict[str, Any] | None = None) -> nn.Module:
    """Randomly initialised CTransPath architecture (Swin-T + :class:`ConvStem`, 224 px)."""
    kwargs = {"img_size": 224, "embed_layer": ConvStem, **(arch_overrides or {})}
    return _create_timm("swin_tiny_patch4_window7_224", num_classes=0, **kwargs)


@register_encoder(
    "ctranspath",
    dim=768,
    description="CTransPath: Swin-T with a convolutional stem, SRCL-trained on TCGA/PAIP; 224 px",
    needs_weights=True,
    extra="models",
)
def ctranspath_encoder(
    weights: Path | None = None,
    *,
    arch_overrides: dict[str, Any] | None = None,
    amp: bool = True,
) -> TorchImageEncoder:
    """CTransPath: timm ``swin_tiny_patch4_window7_224`` whose patch embedding is :class:`ConvStem`.

    Weights: TransPath's ``ctranspath.pth`` (``{"model": state_dict}``; head keys dropped).
    """
    model = build_ctranspath(arch_overrides)
    files = ("ctranspath.pth", "pytorch_model.bin", "model.safetensors")
    path, source = _resolve_weights("ctranspath", weights, files=files)
    state = _ctranspath_to_timm(load_state_dict_file(path))
    # The released file has no head, but a fine-tuned one would have the old "head." name.
    load_strict(model, state, ignore_unexpected=[r"head\."], what=f"CTransPath weights {path.name}")
    return TorchImageEncoder(
        model,
        name="ctranspath",
        dim=model.num_features,
        input_size=model.patch_embed.img_size,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        amp=amp,
        source=source,
    )


# ---------------------------------------------------------------------------------------------
# CONCH


class AttentionalPooler(nn.Module):
    """Learned queries cross-attending to the image tokens (CoCa-style attentional pooling).

    Parameter names (``query``, ``attn``, ``ln_q``, ``ln_k``) follow the CONCH checkpoint.

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


class ConchVision(nn.Module):
    """CONCH v1's image tower: a timm ViT-B/16 trunk (448 px) + contrastive attentional pooling.

    ``forward`` returns the pooled, layer-normed 512-d embedding *before* ``proj_contrast`` (what
    CONCH's ``encode_image(proj_contrast=False, normalize=False)`` gives); ``project=True`` also
    applies ``proj_contrast`` (the space shared with CONCH's text tower).
    """

    def __init__(
        self, trunk: nn.Module, dim: int = 512, heads: int = 8, project: bool = False
    ) -> None:
        super().__init__()
        self.dim = dim
        self.trunk = trunk
        self.attn_pool_contrast = AttentionalPooler(dim, trunk.num_features, heads, queries=1)
        self.ln_contrast = nn.LayerNorm(dim)
        self.proj_contrast = nn.Parameter(torch.zeros(dim, dim)) if project else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.trunk.forward_features(x)  # [B, 1 + N, C], after the trunk's final norm
        pooled = self.ln_contrast(self.attn_pool_contrast(tokens)[:, 0])
        return pooled @ self.proj_contrast if self.proj_contrast is not None else pooled


def _conch_visual_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The image-tower tensors of a full CONCH checkpoint (``visual.*``), prefix removed."""
    visual = {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}
    return visual or dict(state)  # already a vision-only state dict


def build_conch(arch_overrides: dict[str, Any] | None = None, project: bool = False) -> ConchVision:
    """Randomly initialised CONCH v1 image tower (ViT-B/16 at 448 px + contrastive pooler).

    ``arch_overrides`` go to the timm trunk, except ``output_dim`` (512) and ``pool_heads`` (8).
    """
    overrides = dict(arch_overrides or {})
    dim = overrides.pop("output_dim", 512)
    heads = overrides.pop("pool_heads", 8)
    kwargs = {"img_size": 448, "global_pool": "", **overrides}
    trunk = _create_timm("vit_base_patch16_224", num_classes=0, **kwargs)
    return ConchVision(trunk, dim=dim, heads=heads, project=project)


@register_encoder(
    "conch",
    dim=512,
    description=(
        "CONCH v1 (MahmoodLab) image tower: ViT-B/16 + attentional pooling, 512-d before the "
        "contrastive projection; 448 px"
    ),
    needs_weights=True,
    extra="models",
)
def conch_encoder(
    weights: Path | None = None,
    *,
    arch_overrides: dict[str, Any] | None = None,
    project: bool = False,
    amp: bool = True,
) -> TorchImageEncoder:
    """CONCH v1 image embeddings from MahmoodLab/CONCH's ``pytorch_model.bin``.

    ``arch_overrides``: see :func:`build_conch`. The checkpoint's text tower, caption pooler
    and logit scale are unused.
    """
    model = build_conch(arch_overrides, project=project)
    path, source = _resolve_weights(
        "conch", weights, ["MahmoodLab/CONCH", "MahmoodLab/conch"], ("pytorch_model.bin",)
    )
    unused = [r"attn_pool_caption\.", r"ln_caption\.", r"trunk\.head\."]
    unused += [] if project else [r"proj_contrast$"]
    load_strict(
        model,
        _conch_visual_state(load_state_dict_file(path)),
        ignore_unexpected=unused,
        what=f"CONCH weights {path.name}",
    )
    return TorchImageEncoder(
        model,
        name="conch",
        dim=model.dim,
        input_size=model.trunk.patch_embed.img_size,
        mean=CLIP_MEAN,
        std=CLIP_STD,
        amp=amp,
        source=source,
    )
